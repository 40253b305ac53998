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

8-bit state (`state_bits=8`): the codes take the variable's layout and the absmax
([rows, blocks per row]) the layout of the blocks (`state8_absmax_layout`). Blocks are cut
per row of the logical variable, so a layout keeps them whole when it shards only dim 0
(each shard holds whole rows: its blocks and their absmax), or when it shards the first
dimension of the row (dim 1, or dim 0 of a rank-1 variable) into pieces of whole blocks (a
multiple of 256 elements per device). Then every path above is exact per block: the eager
sharded path runs the 8-bit op per shard on its codes and absmax, the in-function path
dequantizes, steps and requantizes with TensorFlow ops (`state8.dequantize_tensors`,
`state8.quantize`: the kernels' bits). Any other layout would cut a block between devices
(its absmax would be a cross-device max every step): ValueError at build, naming the layout.
"""
import numpy as np
import tensorflow as tf
from tensorflow.experimental import dtensor
from tensorflow.python.eager import context

from tf_rmsprop_ops import state8
from tf_rmsprop_ops.state8 import State8


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


def state8_absmax_layout(var):
    """The layout of var's 8-bit absmax (see the module docstring), or ValueError when var's
    layout would cut a block of 256 elements between devices."""
    layout = layout_of(var)
    mesh, specs, shape = layout.mesh, list(layout.sharding_specs), var.shape.as_list()

    def cut(spec):  # a dimension split between devices (a mesh dimension of size 1 is not)
        return spec != dtensor.UNSHARDED and mesh.dim_size(spec) > 1
    if not any(cut(spec) for spec in specs):
        return dtensor.Layout.replicated(mesh, rank=2)
    if len(shape) >= 2 and not any(cut(spec) for spec in specs[1:]):
        return dtensor.Layout([specs[0], dtensor.UNSHARDED], mesh)
    # The row's first dimension sharded (rank 1: dim 0; else dim 1, dim 0 as it likes).
    row_dim = 0 if len(shape) == 1 else 1
    if not any(cut(spec) for spec in specs[row_dim + 1:]):
        local = shape[row_dim] // mesh.dim_size(specs[row_dim]) * int(np.prod(shape[row_dim + 1:]))
        if local % state8.BLOCK_SIZE == 0:
            return dtensor.Layout([specs[0] if len(shape) >= 2 else dtensor.UNSHARDED,
                                   specs[row_dim]], mesh)
    raise ValueError(
        f"state_bits=8: {var.name} has layout {specs} (shape {shape}), which cuts its blocks "
        f"of {state8.BLOCK_SIZE} elements between devices; 8-bit state needs a layout that "
        "shards dim 0 only, or the row's first dimension into whole blocks (a multiple of "
        f"{state8.BLOCK_SIZE} elements per device). Use state_bits=32 for it (or "
        "exclude_from_8bit_state).")


def state8_variable_maker(var):
    """Makes the DVariables of var's 8-bit state, as `state8.full` calls it (a callable
    initial value; the name ends in `_codes` or `_absmax`): the codes in var's layout, the
    absmax in `state8_absmax_layout(var)`, each created sharded (nothing gathered)."""
    codes_layout, absmax_layout = layout_of(var), state8_absmax_layout(var)

    def make(initial_value, trainable=False, name=None):
        layout = codes_layout if name.endswith("_codes") else absmax_layout
        with tf.init_scope():
            return dtensor.DVariable(dtensor.call_with_layout(initial_value, layout),
                                     name=name, trainable=trainable)
    return make


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


def _local_handles(slot):
    """Per local device: a slot's component handle, or for 8-bit state a State8 of its
    codes' and absmax's components (None for an absent slot)."""
    if slot is None:
        return None
    if isinstance(slot, State8):
        return [State8(c, a) for c, a in zip(dtensor.unpack(slot.codes.handle),
                                             dtensor.unpack(slot.absmax.handle))]
    return dtensor.unpack(slot.handle)


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
    slot_handles = [_local_handles(s) for s in (slots.ms, slots.mom, slots.mg)]

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
    Mirrors `tf_rmsprop_ops.reference.rmsprop_x_step` in the kernels' float32 operations and
    order (cc/rmsprop_x_update.h): on float32 state it gives the kernels' bits inside a
    function too (tests pin both)."""
    dtype = var.dtype
    compute = tf.float32 if dtype in (tf.float16, tf.bfloat16) else dtype
    c = {k: tf.cast(v, compute) for k, v in scalars.items()}
    lr, rho, momentum, eps, wd = c["lr"], c["rho"], c["momentum"], c["epsilon"], c["weight_decay"]
    def read(name, s):
        if isinstance(s, State8):  # 8-bit state: its float32 values (the kernels' dequantize)
            return state8.dequantize(s, state8.SIGNED[name], var.shape)
        return tf.cast(s.read_value(), compute)
    old = {name: read(name, s) for name, s in
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
    # The kernels' float32 operations in cc/rmsprop_x_update.h's order (built with
    # -ffp-contract=off) give the kernels' bits, so an 8-bit state lands on their codes.
    # Square (not g * g): Grappler's MinimizeBroadcasts re-associates a chain of Muls
    # ((1 - rho) * (g * g) into ((1 - rho) * g) * g) inside a function.
    new = {"ms": rho * old["ms"] + (1 - rho) * tf.square(g)}
    v = new["ms"]
    if slots.mg is not None:
        new["mg"] = rho * old["mg"] + (1 - rho) * g
        v = tf.maximum(v - tf.square(new["mg"]), 0)
    # abs() of a square root is the root itself; it keeps Grappler's arithmetic optimizer
    # from rewriting g / sqrt(x) into g * rsqrt(x) inside a function (another rounding).
    denom = (tf.abs(tf.sqrt(v + eps)) if structure.epsilon_placement == "inside_sqrt"
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
        target = targets[name]
        if isinstance(target, State8):
            # Requantized from the new float32 state (the var moved with the unquantized one);
            # a sparse step keeps the rows it does not name bit for bit (rows are blocks).
            codes, absmax = state8.quantize(value, state8.SIGNED[name])
            if mask is not None:
                codes = tf.where(mask, codes, target.codes.read_value())
                absmax = tf.where(tf.reshape(mask, [-1, 1]), absmax, target.absmax.read_value())
            target.codes.assign(codes)
            target.absmax.assign(absmax)
            continue
        if mask is not None:
            value = tf.where(mask, value, old[name])
        target.assign(tf.cast(value, dtype))
