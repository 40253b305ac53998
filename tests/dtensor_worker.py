"""Runs RMSpropX on a 2-device DTensor CPU mesh and on plain variables with the same
gradients; prints one JSON line of results. Run by test_dtensor.py in its own process
(logical devices must be configured before TensorFlow starts)."""
import json
import os
import sys
import tempfile

import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from tensorflow.experimental import dtensor  # noqa: E402

from tf_rmsprop_ops import RMSpropX  # noqa: E402

ROWS, DIM = 8, 4


def on_layout(value, layout):
    replicated = dtensor.Layout.replicated(layout.mesh, rank=layout.rank)
    return dtensor.relayout(dtensor.copy_to_mesh(tf.constant(value), replicated), layout)


def full(dv, mesh):
    """The global value of a (possibly sharded) DVariable or DTensor."""
    value = dv.read_value() if hasattr(dv, "read_value") else dv
    return dtensor.relayout(value, dtensor.Layout.replicated(mesh, rank=value.shape.rank)).numpy()


def run_case(rng, mesh, layout, in_function, kwargs, dim=DIM, table_dim=None, each_step=None):
    """Three steps on the mesh and on plain variables, the plain run on the mesh's own
    gradients. `each_step(objects)`, when given, runs after each step and before the
    next (state8_case compares there and restarts the plain run from the mesh's state)."""
    table_dim = table_dim or dim
    init = rng.normal(size=(ROWS, dim)).astype(np.float32)
    tinit = rng.normal(size=(ROWS, table_dim)).astype(np.float32)
    xs = [rng.normal(size=(5, ROWS)).astype(np.float32) for _ in range(3)]
    ids = [rng.integers(0, ROWS, 6) for _ in range(3)]
    dvar, dtable = dtensor.DVariable(on_layout(init, layout)), dtensor.DVariable(on_layout(tinit, layout))
    var, table = tf.Variable(init), tf.Variable(tinit)
    dopt, opt = RMSpropX(mesh=mesh, **kwargs), RMSpropX(**kwargs)
    rep = lambda rank: dtensor.Layout.replicated(mesh, rank=rank)  # noqa: E731

    def loss_fn(w, t, x, i):
        # dense: x @ w (a dense gradient); sparse: a gather of the table (IndexedSlices;
        # DTensor has no ResourceGather on a row-sharded variable: gather its value).
        return tf.reduce_sum(tf.sin(x @ w)) * 1e-2 + tf.reduce_sum(tf.gather(tf.convert_to_tensor(t), i) ** 2) * 1e-3

    def grads_of(w, t, x, i):
        with tf.GradientTape() as tape:
            loss = loss_fn(w, t, x, i)
        return tape.gradient(loss, [w, t])

    def step(opt, w, t, x, i):
        gw, gt = grads_of(w, t, x, i)
        opt.apply_gradients([(gw, w), (gt, t)])
        return gt

    def mesh_step(opt, w, t, x, i):
        gw, gt = grads_of(w, t, x, i)
        opt.apply_gradients([(gw, w), (gt, t)])
        return gw, gt

    if in_function:
        dstep = tf.function(mesh_step)
    else:  # the gradients in a function (eager DTensor tapes miss broadcasts), the update eager
        grads_fn = tf.function(grads_of)

        def dstep(opt, w, t, x, i):
            gw, gt = grads_fn(w, t, x, i)
            opt.apply_gradients([(gw, w), (gt, t)])
            return gw, gt

    def plain_grad(g):
        """The mesh's gradient as a plain tensor: the plain run applies the mesh's own
        gradients (a sharded matmul sums in another order), so any difference left is the
        update's."""
        if isinstance(g, tf.IndexedSlices):
            return tf.IndexedSlices(tf.constant(full(g.values, mesh)),
                                    tf.constant(full(g.indices, mesh)), g.dense_shape)
        return tf.constant(full(g, mesh))

    sparse_seen = []
    for x, i in zip(xs, ids):
        gw, gt = dstep(dopt, dvar, dtable, on_layout(x, rep(2)),
                       dtensor.copy_to_mesh(tf.constant(i), rep(1)))
        sparse_seen.append(isinstance(gt, tf.IndexedSlices))
        opt.apply_gradients([(plain_grad(gw), var), (plain_grad(gt), table)])
        if each_step:
            each_step((dvar, dtable, dopt, var, table, opt))
    components = [c.shape.as_list() for c in dtensor.unpack(dvar.read_value())]
    return dict(
        dense_err=float(np.max(np.abs(full(dvar, mesh) - var.numpy()))),
        sparse_err=float(np.max(np.abs(full(dtable, mesh) - table.numpy()))),
        untouched_rows_kept=bool(np.all(
            full(dtable, mesh)[np.setdiff1d(np.arange(ROWS), np.concatenate(ids))] ==
            tinit[np.setdiff1d(np.arange(ROWS), np.concatenate(ids))])),
        moved=float(np.max(np.abs(full(dvar, mesh) - init))),
        var_layout_kept=dtensor.fetch_layout(dvar) == layout and
        dtensor.fetch_layout(dtable) == layout,
        shard_shapes=components,
        slot_layouts_match=all(dtensor.fetch_layout(dopt.get_slot(v, s)) == layout
                               for v in (dvar, dtable) for s in dopt.slot_names),
        iterations=int(dopt.iterations.numpy()),
        sparse_gradient=all(sparse_seen) if in_function else None,
    ), (dvar, dtable, dopt, var, table, opt, step, dstep, rep)


def state8_case(rng, mesh, layout, in_function, kwargs, dim, table_dim):
    """8-bit state on the mesh against 8-bit state on plain variables, each step from the
    same state and on the same gradients (the plain run restarts from the mesh's variables,
    codes and absmax before each step): the variables, the dequantized slots, the codes, and
    the codes' and absmax's layouts after each step. From the same state a difference in
    rounding moves a code at most to a neighbour and never reaches the variable (which
    moves with the unquantized state); across steps it would compound through the codes."""
    seen = {"dense_err": 0.0, "sparse_err": 0.0, "codes_equal": 1.0, "code_step": 0,
            "slot_err": 0.0, "layouts": []}

    def compare_and_sync(objects):
        dvar, dtable, dopt, var, table, opt = objects
        seen["dense_err"] = max(seen["dense_err"], float(np.abs(full(dvar, mesh) - var.numpy()).max()))
        seen["sparse_err"] = max(seen["sparse_err"],
                                 float(np.abs(full(dtable, mesh) - table.numpy()).max()))
        seen["layouts"] = []
        for dv, pv in ((dvar, var), (dtable, table)):
            for name in dopt.slot_names:
                d8, p8 = dopt.slot_state(dv, name), opt.slot_state(pv, name)
                dcodes, pcodes = full(d8.codes, mesh), p8.codes.numpy()
                seen["codes_equal"] = min(seen["codes_equal"], float(np.mean(dcodes == pcodes)))
                seen["code_step"] = max(seen["code_step"], int(np.abs(
                    dcodes.astype(np.int64) - pcodes.astype(np.int64)).max()))
                seen["layouts"].append([dtensor.fetch_layout(d8.codes.read_value()).sharding_specs,
                                        dtensor.fetch_layout(d8.absmax.read_value()).sharding_specs])
                # relative to the slot's largest value: a neighbouring code is at most 1.41%
                scale = float(np.abs(opt.get_slot(pv, name).numpy()).max())
                seen["slot_err"] = max(seen["slot_err"], float(np.abs(
                    full(dopt.get_slot(dv, name), mesh) - opt.get_slot(pv, name).numpy()).max()) / scale)
                p8.codes.assign(dcodes)
                p8.absmax.assign(full(d8.absmax, mesh))
        var.assign(full(dvar, mesh))
        table.assign(full(dtable, mesh))

    out, (dvar, dtable, dopt, var, table, opt, *_) = run_case(
        rng, mesh, layout, in_function, kwargs, dim, table_dim, each_step=compare_and_sync)
    out.update(dense_err=seen["dense_err"], sparse_err=seen["sparse_err"],
               codes_equal=seen["codes_equal"], code_step=seen["code_step"],
               slot_err=seen["slot_err"], state_layouts=seen["layouts"], eight_bit=all(
                   type(dopt.slot_state(dv, n)).__name__ == "State8"
                   for dv in (dvar, dtable) for n in dopt.slot_names))
    out.pop("slot_layouts_match")
    return out


def state8_main(seed):
    rng = np.random.default_rng(seed)
    mesh = dtensor.create_mesh([("x", 2)], device_type="CPU")
    kwargs = dict(learning_rate=0.05, momentum=0.9, centered=True, weight_decay=0.01,
                  epsilon=1e-6, state_bits=8, min_8bit_size=0)
    layouts = {"replicated": dtensor.Layout.replicated(mesh, rank=2),
               "row_sharded": dtensor.Layout(["x", dtensor.UNSHARDED], mesh),
               "col_sharded": dtensor.Layout([dtensor.UNSHARDED, "x"], mesh)}
    out = {}
    for name, layout in layouts.items():
        for in_function in (False, True):
            if name == "col_sharded" and not in_function:
                continue  # eager sparse updates need tables sharded by rows
            # [8, 512]: a column shard is 256 elements, one whole block per row; the
            # row-sharded table's rows of 300 end in a partial block.
            table_dim = 512 if name == "col_sharded" else 300
            out[f"{name}-{'function' if in_function else 'eager'}"] = state8_case(
                rng, mesh, layout, in_function, kwargs, 512, table_dim)
    # A layout that cuts blocks: refused at build, by name, before any slot exists.
    bad = dtensor.DVariable(on_layout(np.ones((ROWS, 300), np.float32), layouts["col_sharded"]))
    opt = RMSpropX(mesh=mesh, **kwargs)
    try:
        opt.build([bad])
        out["refused"] = None
    except ValueError as e:
        out["refused"] = str(e)
    out["refused_nothing_built"] = not opt.built and not any(
        v.dtype == tf.uint8 for v in opt.variables)
    out["checkpoint"] = checkpoint_case(rng, mesh, layouts["row_sharded"], kwargs)
    print("RESULT " + json.dumps(out))


def checkpoint_case(rng, mesh, layout, kwargs):
    """Save a DTensor optimizer mid-training, restore into fresh DVariables, continue."""
    out, objects = run_case(rng, mesh, layout, True, kwargs)
    dvar, dtable, dopt, *_ = objects
    path = tf.train.Checkpoint(w=dvar, t=dtable, opt=dopt).write(
        os.path.join(tempfile.mkdtemp(), "ckpt"))
    zeros = np.zeros((ROWS, DIM), np.float32)
    rvar, rtable = dtensor.DVariable(on_layout(zeros, layout)), dtensor.DVariable(on_layout(zeros, layout))
    ropt = RMSpropX(mesh=mesh, **kwargs)
    ropt.build([rvar, rtable])
    tf.train.Checkpoint(w=rvar, t=rtable, opt=ropt).read(path).assert_consumed()
    x = on_layout(rng.normal(size=(5, ROWS)).astype(np.float32), objects[-1](2))
    i = dtensor.copy_to_mesh(tf.constant(rng.integers(0, ROWS, 6)), objects[-1](1))
    step = tf.function(objects[-3])
    step(dopt, dvar, dtable, x, i)
    step(ropt, rvar, rtable, x, i)
    same = all(np.array_equal(full(a, mesh), full(b, mesh))
               for a, b in [(dvar, rvar), (dtable, rtable)] +
               [(dopt.get_slot(v, s), ropt.get_slot(r, s)) for v, r in [(dvar, rvar), (dtable, rtable)]
                for s in dopt.slot_names])
    return dict(restored_continues_identically=bool(same),
                restored_iterations=int(ropt.iterations.numpy()),
                restored_layout_kept=dtensor.fetch_layout(rvar) == layout)


def main(seed):
    rng = np.random.default_rng(seed)
    mesh = dtensor.create_mesh([("x", 2)], device_type="CPU")
    layouts = {"replicated": dtensor.Layout.replicated(mesh, rank=2),
               "row_sharded": dtensor.Layout(["x", dtensor.UNSHARDED], mesh),
               "col_sharded": dtensor.Layout([dtensor.UNSHARDED, "x"], mesh)}
    kwargs = dict(learning_rate=0.05, momentum=0.9, centered=True, weight_decay=0.01,
                  epsilon=1e-6)
    out = {}
    for name, layout in layouts.items():
        for in_function in (False, True):
            if name == "col_sharded" and not in_function:
                continue  # eager sparse updates need tables sharded by rows
            out[f"{name}-{'function' if in_function else 'eager'}"] = run_case(
                rng, mesh, layout, in_function, kwargs)[0]
    out["checkpoint"] = checkpoint_case(rng, mesh, layouts["row_sharded"], kwargs)
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    (state8_main if sys.argv[2:] == ["state8"] else main)(int(sys.argv[1]))
