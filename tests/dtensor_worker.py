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


def run_case(rng, mesh, layout, in_function, kwargs, dim=DIM, table_dim=None):
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

    if in_function:
        dstep = tf.function(step)
    else:  # the gradients in a function (eager DTensor tapes miss broadcasts), the update eager
        grads_fn = tf.function(grads_of)

        def dstep(opt, w, t, x, i):
            gw, gt = grads_fn(w, t, x, i)
            opt.apply_gradients([(gw, w), (gt, t)])
            return gt
    sparse_seen = []
    for x, i in zip(xs, ids):
        gt = dstep(dopt, dvar, dtable, on_layout(x, rep(2)),
                   dtensor.copy_to_mesh(tf.constant(i), rep(1)))
        sparse_seen.append(isinstance(gt, tf.IndexedSlices))
        step(opt, var, table, tf.constant(x), tf.constant(i))
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
    """8-bit state on the mesh against 8-bit state on plain variables (same gradients up to
    the sharded matmul's rounding): the variables, the dequantized slots, the codes, and the
    codes' and absmax's layouts."""
    out, (dvar, dtable, dopt, var, table, opt, *_) = run_case(
        rng, mesh, layout, in_function, kwargs, dim, table_dim)
    slots = [(name, dv, pv) for dv, pv in ((dvar, var), (dtable, table))
             for name in dopt.slot_names]
    codes = {}
    for name, dv, pv in slots:
        d8, p8 = dopt.slot_state(dv, name), opt.slot_state(pv, name)
        codes.setdefault("equal", []).append(
            float(np.mean(full(d8.codes, mesh) == p8.codes.numpy())))
        codes.setdefault("layouts", []).append(
            [dtensor.fetch_layout(d8.codes.read_value()).sharding_specs,
             dtensor.fetch_layout(d8.absmax.read_value()).sharding_specs])
        scale = float(np.abs(opt.get_slot(pv, name).numpy()).max())
        codes.setdefault("slot_err", []).append(
            float(np.abs(full(dopt.get_slot(dv, name), mesh) -
                         opt.get_slot(pv, name).numpy()).max()) / scale)
    out.update(codes_equal=min(codes["equal"]), state_layouts=codes["layouts"],
               slot_err=max(codes["slot_err"]), eight_bit=all(
                   type(dopt.slot_state(dv, n)).__name__ == "State8" for n, dv, _ in slots))
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
