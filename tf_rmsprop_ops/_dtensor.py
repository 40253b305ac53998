"""DTensor support for RMSpropX: slots with their variable's layout, updates that keep
sharded variables sharded.

DTensor has no layout rule for custom ops. A replicated layout runs our op directly (the
per-op opt-in set in `_library`). A sharded layout would be all-gathered by that fallback,
so instead each local device's component handle is updated by our op with its local
gradient shard: the update is elementwise (dense) or row-wise (sparse, for tables sharded
by rows), so per-shard application is exact and nothing is gathered.
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


def _component(x, i):
    """The i-th local component of a DTensor, or x itself for ordinary values."""
    if isinstance(x, tf.Variable):
        x = x.read_value()
    if isinstance(x, tf.Tensor) and dtensor.is_dtensor(x):
        return dtensor.unpack(x)[i]
    return x


def apply_on_shards(apply_fn, var, slots, grad, scalars, indices=None):
    """Runs `apply_fn(var_handle, slot_handles, grad, indices, **scalars)` once per local
    device on the components of a sharded DVariable (and its slots, which share its layout).

    Dense: `grad` is relaid out to var's layout so each device gets its own shard. Sparse:
    `indices` are global rows; a table sharded by rows gives each shard the entries in its
    range, shifted to local offsets.
    """
    if tf.inside_function():
        raise NotImplementedError(
            "RMSpropX: updating a sharded DTensor variable runs eagerly (per-device component "
            "handles are not available inside tf.function); call the optimizer eagerly or "
            "use a replicated layout.")
    context.async_wait()  # DTensor writes (init, assign, restore) must land first
    layout = layout_of(var)
    mesh = layout.mesh
    handles = [dtensor.unpack(v.handle) for v in [var] + list(slots)]
    devices = mesh.local_devices()
    if indices is None:
        grads = dtensor.unpack(dtensor.relayout(grad, layout))
        for i, device in enumerate(devices):
            with tf.device(device):
                apply_fn(handles[0][i], [h[i] for h in handles[1:]], grads[i], None,
                         **{k: _component(v, i) for k, v in scalars.items()})
        return
    row_dim = layout.sharding_specs[0]
    if any(spec != dtensor.UNSHARDED for spec in layout.sharding_specs[1:]):
        raise NotImplementedError(
            f"RMSpropX: sparse updates support tables sharded by rows only; got layout "
            f"{layout.sharding_specs}")
    local_rows = var.shape[0] // (mesh.dim_size(row_dim) if row_dim != dtensor.UNSHARDED else 1)
    for i, device in enumerate(devices):
        shard = mesh.local_device_locations()[i][row_dim] if row_dim != dtensor.UNSHARDED else 0
        with tf.device(device):
            idx = tf.convert_to_tensor(_component(indices, i))
            values = tf.convert_to_tensor(_component(grad, i))
            lo = tf.cast(shard * local_rows, idx.dtype)
            mine = tf.where((idx >= lo) & (idx < lo + local_rows))[:, 0]
            apply_fn(handles[0][i], [h[i] for h in handles[1:]], tf.gather(values, mine),
                     tf.gather(idx, mine) - lo, **{k: _component(v, i) for k, v in scalars.items()})
