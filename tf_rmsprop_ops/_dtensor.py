"""DTensor support for RMSpropX: slots with their variable's layout, updates that keep
sharded variables sharded.

DTensor has no layout rule for custom ops. Three paths, chosen by `apply`:

* Replicated layout: our op runs as it is (the per-op opt-in set in `_library`), eagerly or
  inside `tf.function`.
* Sharded layout, eager: the fallback would all-gather, so each local device's component
  handle is updated by our op with its local gradient shard (`dtensor.unpack`). The update
  is elementwise (dense) or row-wise (sparse, tables sharded by rows), so per-shard
  application is exact and nothing is gathered.
* Sharded layout inside `tf.function`: per-device component handles do not exist in a
  DTensor function (DTensor expands the whole function itself), so the step is written with
  TensorFlow elementwise ops (`_tf_ops_step`, mirroring `tf_rmsprop_ops.reference`) and
  DTensor's own SPMD expansion keeps every operand sharded. A sparse gradient there is
  segment-summed into a dense row buffer and applied under a row mask: rows not named are
  unchanged (the ops' lazy semantics) but the work is proportional to the table, not to
  the indices. BENCHMARKS.md compares the two paths.
"""
import tensorflow as tf
from tensorflow.experimental import dtensor
from tensorflow.python.eager import context


def is_dvariable(var):
    return isinstance(var, dtensor.DVariable)


def layout_of(var):
    # A DVariable knows its layout (fetch_layout only works eagerly).
    layout = getattr(var, "layout", None)
    return layout if layout is not None else dtensor.fetch_layout(var)


def variable_like(var, value, name):
    """A DVariable of var's shape, dtype and layout, filled with `value`."""
    layout = layout_of(var)
    init = dtensor.call_with_layout(tf.fill, layout, dims=var.shape,
                                    value=tf.cast(value, var.dtype))
    return dtensor.DVariable(init, name=name, trainable=False)


def replicated_variable(mesh, value, name, dtype):
    init = dtensor.copy_to_mesh(tf.constant(value, dtype=dtype),
                                dtensor.Layout.replicated(mesh, rank=0))
    return dtensor.DVariable(init, name=name, trainable=False)


def on_mesh_of(x, var):
    """x as a replicated DTensor on var's mesh (DTensor only auto-broadcasts scalars)."""
    if x is None or not tf.executing_eagerly():
        return x
    x = tf.convert_to_tensor(x)
    if dtensor.is_dtensor(x):
        return x
    return dtensor.copy_to_mesh(x, dtensor.Layout.replicated(layout_of(var).mesh, rank=x.shape.rank))


def is_sharded(var):
    return not layout_of(var).is_fully_replicated()


def apply(call_op, var, slots, values, indices, structure, scalars):
    """Updates a DVariable and its slots (see the module docstring for the paths)."""
    if not is_sharded(var):
        values, indices = on_mesh_of(values, var), on_mesh_of(indices, var)
        return call_op(var, slots, values, indices, structure, **scalars)
    if tf.inside_function():
        return _tf_ops_step(var, slots, values, indices, structure, scalars)
    return _apply_on_shards(call_op, var, slots, values, indices, structure, scalars)


def _component(x, i):
    """The i-th local component of a DTensor, or x itself for ordinary values."""
    if isinstance(x, tf.Variable):
        x = x.read_value()
    if isinstance(x, tf.Tensor) and dtensor.is_dtensor(x):
        return dtensor.unpack(x)[i]
    return x


def _apply_on_shards(call_op, var, slots, grad, indices, structure, scalars):
    """Runs `call_op` once per local device on the components of a sharded DVariable (and
    its slots, which share its layout).

    Dense: `grad` is relaid out to var's layout so each device gets its own shard. Sparse:
    `indices` are global rows; a table sharded by rows gives each shard the entries in its
    range, shifted to local offsets.
    """
    context.async_wait()  # DTensor writes (init, assign, restore) must land first
    layout = layout_of(var)
    mesh = layout.mesh
    var_handles = dtensor.unpack(var.handle)
    slot_handles = [None if s is None else dtensor.unpack(s.handle)
                    for s in (slots.ms, slots.mom, slots.mg)]

    def local(i):
        return type(slots)(*[None if h is None else h[i] for h in slot_handles])

    devices = mesh.local_devices()
    if indices is None:
        grads = dtensor.unpack(dtensor.relayout(grad, layout))
        for i, device in enumerate(devices):
            with tf.device(device):
                call_op(var_handles[i], local(i), grads[i], None, structure,
                        **{k: _component(v, i) for k, v in scalars.items()})
        return
    row_dim = layout.sharding_specs[0]
    if any(spec != dtensor.UNSHARDED for spec in layout.sharding_specs[1:]):
        raise NotImplementedError(
            f"RMSpropX: sparse updates support tables sharded by rows only; got layout "
            f"{layout.sharding_specs}")
    local_rows = var.shape[0] // mesh.dim_size(row_dim)
    for i, device in enumerate(devices):
        shard = mesh.local_device_locations()[i][row_dim]
        with tf.device(device):
            idx = tf.convert_to_tensor(_component(indices, i))
            values = tf.convert_to_tensor(_component(grad, i))
            lo = tf.cast(shard * local_rows, idx.dtype)
            mine = tf.where((idx >= lo) & (idx < lo + local_rows))[:, 0]
            call_op(var_handles[i], local(i), tf.gather(values, mine),
                    tf.gather(idx, mine) - lo, structure,
                    **{k: _component(v, i) for k, v in scalars.items()})


def _tf_ops_step(var, slots, values, indices, structure, scalars):
    """The RMSpropX step in TensorFlow elementwise ops, for sharded DVariables inside a
    DTensor function (DTensor's SPMD expansion keeps every operand in var's layout).
    Mirrors `tf_rmsprop_ops.reference.rmsprop_x_step`; tests pin the two together."""
    dtype = var.dtype
    compute = tf.float32 if dtype in (tf.float16, tf.bfloat16) else dtype
    c = {k: tf.cast(v, compute) for k, v in scalars.items()}
    lr, rho, momentum, eps, wd = c["lr"], c["rho"], c["momentum"], c["epsilon"], c["weight_decay"]
    old = {name: tf.cast(s.read_value(), compute) for name, s in
           (("var", var), ("ms", slots.ms), ("mom", slots.mom), ("mg", slots.mg)) if s is not None}
    mask = None
    if indices is None:
        g = tf.cast(values, compute)
    else:
        rows = var.shape[0]
        g = tf.math.unsorted_segment_sum(tf.cast(values, compute), indices, rows)
        hit = tf.math.unsorted_segment_sum(tf.ones_like(indices, dtype=compute), indices, rows)
        mask = tf.reshape(hit > 0, [rows] + [1] * (var.shape.rank - 1))
    w = old["var"]
    if structure.weight_decay_mode == "coupled":
        g = g + wd * w
    new = {"ms": rho * old["ms"] + (1 - rho) * g * g}
    v = new["ms"]
    if slots.mg is not None:
        new["mg"] = rho * old["mg"] + (1 - rho) * g
        v = tf.maximum(v - new["mg"] * new["mg"], 0)
    denom = (tf.sqrt(v + eps) if structure.epsilon_placement == "inside_sqrt"
             else tf.sqrt(v) + eps)
    step = g / denom
    if slots.mom is not None:
        if structure.lr_placement == "inside_momentum":
            new["mom"] = momentum * old["mom"] + lr * step
            upd = momentum * new["mom"] + lr * step if structure.nesterov else new["mom"]
        else:
            new["mom"] = momentum * old["mom"] + step
            upd = lr * (momentum * new["mom"] + step if structure.nesterov else new["mom"])
    else:
        upd = lr * step
    if structure.weight_decay_mode == "decoupled":
        w = w - lr * wd * w
    new["var"] = w - upd
    targets = {"var": var, "ms": slots.ms, "mom": slots.mom, "mg": slots.mg}
    for name, value in new.items():
        if mask is not None:
            value = tf.where(mask, value, old[name])
        targets[name].assign(tf.cast(value, dtype))
