"""Python wrappers of the ApplyRMSpropX and SparseApplyRMSpropX ops.

A feature is on when its slot is passed: `mom` enables momentum, `mg` enables the centered
variant. The math is in `tf_rmsprop_ops.reference` (float64 NumPy) and docs/design.md section 1.1 (the op contract: section 2).
"""
import numpy as np
import tensorflow as tf

from tf_rmsprop_ops._library import ops as _ops
from tf_rmsprop_ops.state8 import State8


def _handle(variable, what):
    handle = getattr(variable, "handle", variable)
    if not isinstance(handle, (tf.Tensor, tf.Variable)) or handle.dtype != tf.resource:
        raise TypeError(f"{what} must be a resource variable (tf.Variable) or its handle, "
                        f"got {type(variable).__name__}")
    return handle


def _dtype_of(variable, grad):
    """The op's T: the variable's dtype, or for a bare handle, the gradient's."""
    dtype = getattr(variable, "dtype", tf.resource)
    if dtype == tf.resource:
        dtype = tf.convert_to_tensor(grad).dtype
    return tf.as_dtype(dtype).base_dtype


def round_number(x, dtype):
    """A Python number as `as_scalar` gives it to an op: rounded once, straight to `dtype`
    (a NumPy scalar)."""
    return np.asarray(x, dtype=dtype.as_numpy_dtype)


def as_scalar(x, dtype):
    """`x` as a scalar tensor of `dtype`. A Python number is rounded once, straight to
    `dtype` with NumPy: TensorFlow converts Python floats to half types through float32, a
    double rounding (0.7873535216811611 becomes 0.787109375 instead of 0.78759765625)."""
    if isinstance(x, (int, float, np.floating, np.integer)) and not isinstance(x, bool):
        return tf.constant(round_number(x, dtype))
    return tf.cast(tf.convert_to_tensor(x, dtype_hint=dtype), dtype)


def _slot_inputs(ms, mom, mg):
    """(flat slot handles, state_bits): 32-bit slots are variables; 8-bit ones are
    `state8.State8` pairs (codes, absmax), two inputs each. All of one kind."""
    given = [(name, s) for name, s in (("ms", ms), ("mom", mom), ("mg", mg)) if s is not None]
    eight = [isinstance(s, State8) for _, s in given]
    if any(eight) and not all(eight):
        raise TypeError("slots must be all 32-bit variables or all State8 (8-bit state): got "
                        + ", ".join(f"{n}={'State8' if e else 'variable'}"
                                    for (n, _), e in zip(given, eight)))
    if not all(eight):
        return [_handle(s, name) for name, s in given], 32
    return [h for name, s in given for h in (_handle(s.codes, f"{name}.codes"),
                                             _handle(s.absmax, f"{name}.absmax"))], 8


def _common_args(var, ms, mom, mg, grad, lr, rho, momentum, epsilon, weight_decay, nesterov,
                 epsilon_placement, lr_placement, weight_decay_mode, use_locking):
    slots, state_bits = _slot_inputs(ms, mom, mg)
    dtype = _dtype_of(var, grad)

    def scalar(x):
        return as_scalar(x, dtype)

    return dict(
        var=_handle(var, "var"), slots=slots, lr=scalar(lr), rho=scalar(rho),
        momentum=scalar(momentum), epsilon=scalar(epsilon), weight_decay=scalar(weight_decay),
        grad=tf.convert_to_tensor(grad, dtype=dtype), centered=mg is not None,
        use_momentum=mom is not None, nesterov=nesterov, epsilon_placement=epsilon_placement,
        lr_placement=lr_placement, weight_decay_mode=weight_decay_mode, use_locking=use_locking,
        state_bits=state_bits)


def apply_rmsprop_x(var, ms, grad, *, lr, rho=0.9, momentum=0.0, epsilon=1e-7,
                    weight_decay=0.0, mom=None, mg=None, nesterov=False,
                    epsilon_placement="inside_sqrt", lr_placement="inside_momentum",
                    weight_decay_mode="none", use_locking=False, name=None):
    """Applies one RMSpropX step to `var` in place, in one fused pass.

    Args:
      var: the variable to update (a resource `tf.Variable` or its handle).
      ms: slot of the mean square, same shape and dtype as `var`; or, for 8-bit state, a
        `tf_rmsprop_ops.state8.State8` (codes, absmax), and then `mom` and `mg` too
        (docs/design.md 1.7; half, bfloat16 and float32 variables, on the CPU so far).
      grad: the gradient, same shape as `var`.
      lr, rho, momentum, epsilon, weight_decay: scalars (Python numbers or tensors; tensors
        let a schedule change them without retracing).
      mom: momentum slot; passing it enables momentum.
      mg: mean-gradient slot; passing it enables the centered variant.
      nesterov: Nesterov momentum (needs `mom`).
      epsilon_placement: "inside_sqrt" (Keras/TF/Optax) or "outside_sqrt" (PyTorch).
      lr_placement: "inside_momentum" (Keras/TF/Optax) or "outside_momentum" (PyTorch).
      weight_decay_mode: "none", "decoupled" (var -= lr*wd*var, Keras 3) or "coupled"
        (g += wd*var, PyTorch).
      use_locking: hold the variables' locks exclusively during the update.

    Returns:
      The op (graph mode) or None (eager).
    """
    return _ops.apply_rm_sprop_x(
        **_common_args(var, ms, mom, mg, grad, lr, rho, momentum, epsilon, weight_decay,
                       nesterov, epsilon_placement, lr_placement, weight_decay_mode,
                       use_locking), name=name)


def _check_static_indices(indices, var):
    """Validates indices now when their values and var's row count are known statically.

    Under XLA the op cannot raise at run time (out-of-range rows are skipped), so this is the
    only place such a mistake can be reported there.
    """
    if tf.executing_eagerly():
        return  # eager calls run the kernel, which validates (and says the same)
    values = tf.get_static_value(indices)
    rows = getattr(var, "shape", tf.TensorShape(None))
    rows = rows[0] if rows.rank else None
    if values is None or rows is None or np.size(values) == 0:
        return
    values = np.asarray(values).reshape(-1)
    bad = np.flatnonzero((values < 0) | (values >= rows))
    if bad.size:
        i = int(bad[0])
        raise tf.errors.InvalidArgumentError(
            None, None, f"indices[{i}] = {values[i]} is not in [0, {rows}): every index must "
                        f"name a row of var. Nothing was updated.")


def sparse_apply_rmsprop_x(var, ms, grad, indices, *, lr, rho=0.9, momentum=0.0,
                           epsilon=1e-7, weight_decay=0.0, mom=None, mg=None, nesterov=False,
                           epsilon_placement="inside_sqrt", lr_placement="inside_momentum",
                           weight_decay_mode="none", use_locking=False, slot_offset=None,
                           name=None):
    """Applies one RMSpropX step to the rows `indices` of `var` (and of its slots).

    `grad` has shape `[N] + var.shape[1:]` and `indices` (int32/int64) shape `[N]`. Rows not
    named are untouched, slots included (lazy, as TF's sparse optimizers). A duplicated index
    sums its gradient rows, then applies one update. An index outside `[0, rows)` is an
    InvalidArgumentError and nothing is written. Arguments as in `apply_rmsprop_x`.
    `slot_offset` (flat state, 32-bit): `ms`/`mom`/`mg` are rank-1 flat buffers and var's
    state is their elements [slot_offset, slot_offset + size(var)), row-major (the layout
    of `apply_rmsprop_x_multi_flat`; a multiple of FLAT_ALIGNMENT).
    """
    _check_static_indices(indices, var)
    args = _common_args(var, ms, mom, mg, grad, lr, rho, momentum, epsilon, weight_decay,
                        nesterov, epsilon_placement, lr_placement, weight_decay_mode,
                        use_locking)
    indices = tf.convert_to_tensor(indices)
    if indices.dtype not in (tf.int32, tf.int64):
        indices = tf.cast(indices, tf.int64)
    if slot_offset is not None:
        args["slot_offset"] = int(slot_offset)
    return _ops.sparse_apply_rm_sprop_x(**args, indices=indices, name=name)


def apply_rmsprop_x_indexed_slices(var, ms, grad, **kwargs):
    """Applies `grad` (a `tf.IndexedSlices`, as tf.gather / embedding lookups produce) to `var`.

    The rows go to SparseApplyRMSpropX and are never densified; keyword arguments as in
    `sparse_apply_rmsprop_x`.
    """
    if not isinstance(grad, tf.IndexedSlices):
        raise TypeError(f"grad must be a tf.IndexedSlices, got {type(grad).__name__}")
    return sparse_apply_rmsprop_x(var, ms, grad.values, grad.indices, **kwargs)


def apply_rmsprop_x_multi(variables, slots, grads, *, lr, rho=0.9, momentum=0.0, epsilon=1e-7,
                          weight_decay=0.0, use_momentum=False, centered=False, nesterov=False,
                          epsilon_placement="inside_sqrt", lr_placement="inside_momentum",
                          weight_decay_mode="none", use_locking=False, name=None):
    """Applies one RMSpropX step to every variable of `variables` in one op call.

    Args:
      variables: N resource variables (or handles) of one dtype.
      slots: N sequences, each the variable's slots in order: ms, then mom when
        `use_momentum`, then mg when `centered`; 32-bit variables, or `state8.State8`
        pairs for all of them (8-bit state, `state_bits=8`: work cut at block boundaries).
      grads: N dense gradients, each of its variable's shape.
      Other arguments as in `apply_rmsprop_x` (one value for all N variables).

    One parallel pass over all variables (small ones packed together); every input is
    validated before anything is written.
    """
    variables, grads = list(variables), list(grads)
    if not variables or len(variables) != len(grads) or len(slots) != len(variables):
        raise ValueError(f"apply_rmsprop_x_multi needs one slot list and one gradient per "
                         f"variable: got {len(variables)} variables, {len(slots)} slot lists "
                         f"and {len(grads)} gradients")
    num_slots = 1 + bool(use_momentum) + bool(centered)
    flat_slots, bits = [], set()
    for i, group in enumerate(slots):
        group = list(group)
        if len(group) != num_slots:
            raise ValueError(f"slots[{i}] holds {len(group)} slots, expected {num_slots} "
                             "(ms[, mom][, mg])")
        named = iter(group)
        ms = next(named)
        mom = next(named) if use_momentum else None
        mg = next(named) if centered else None
        handles, state_bits = _slot_inputs(ms, mom, mg)
        flat_slots += handles
        bits.add(state_bits)
    if len(bits) > 1:
        raise TypeError("apply_rmsprop_x_multi: the variables' slots must be all 32-bit or all "
                        "8-bit (State8) in one call")
    return _multi_op(variables, flat_slots, grads, lr, rho, momentum, epsilon, weight_decay,
                     num_slots=len(flat_slots) // len(variables), state_bits=bits.pop(),
                     centered=centered, use_momentum=use_momentum, nesterov=nesterov,
                     epsilon_placement=epsilon_placement, lr_placement=lr_placement,
                     weight_decay_mode=weight_decay_mode, use_locking=use_locking, name=name)


def _multi_op(variables, slot_handles, grads, lr, rho, momentum, epsilon, weight_decay,
              **attrs):
    """The ApplyRMSpropXMulti call of both wrappers: the variables' handles, the scalars
    rounded once to their dtype, the gradients in it."""
    dtype = _dtype_of(variables[0], grads[0])

    def scalar(x):
        return as_scalar(x, dtype)

    return _ops.apply_rm_sprop_x_multi(
        vars=[_handle(v, "variables") for v in variables], slots=slot_handles, lr=scalar(lr),
        rho=scalar(rho), momentum=scalar(momentum), epsilon=scalar(epsilon),
        weight_decay=scalar(weight_decay),
        grads=[tf.convert_to_tensor(g, dtype=dtype) for g in grads], **attrs)


FLAT_ALIGNMENT = 256  # elements: where each variable's state starts in a flat buffer


def flat_offsets(sizes):
    """(offsets, total) of a flat state buffer holding variables of `sizes` elements in
    order, each starting on a FLAT_ALIGNMENT-element boundary (the 8-bit state's block
    layout: every range starts aligned for vector loads)."""
    offsets, end = [], 0
    for size in sizes:
        offsets.append(end)
        end += -(-int(size) // FLAT_ALIGNMENT) * FLAT_ALIGNMENT
    return offsets, end


def apply_rmsprop_x_multi_flat(variables, buffers, offsets, grads, *, lr, rho=0.9,
                               momentum=0.0, epsilon=1e-7, weight_decay=0.0,
                               use_momentum=False, centered=False, nesterov=False,
                               epsilon_placement="inside_sqrt", lr_placement="inside_momentum",
                               weight_decay_mode="none", use_locking=False, name=None):
    """ApplyRMSpropXMulti with the state in flat buffers: half the inputs of a call.

    Args:
      variables: N resource variables (or handles) of one dtype.
      buffers: one rank-1 32-bit state variable per slot kind, in order ms, then mom when
        `use_momentum`, then mg when `centered`. Variable i's state is each buffer's
        elements [offsets[i], offsets[i] + size(variables[i])), in row-major order.
      offsets: N ascending multiples of FLAT_ALIGNMENT with disjoint ranges
        (`flat_offsets` lays them out); elements between ranges are never touched.
      grads: N dense gradients, each of its variable's shape.
      Other arguments as in `apply_rmsprop_x`.

    The same bits as `apply_rmsprop_x_multi` on per-variable slots (one kernel loop).
    """
    variables, grads, offsets = list(variables), list(grads), [int(o) for o in offsets]
    if not variables or len(variables) != len(grads) or len(offsets) != len(variables):
        raise ValueError(f"apply_rmsprop_x_multi_flat needs one offset and one gradient per "
                         f"variable: got {len(variables)} variables, {len(offsets)} offsets "
                         f"and {len(grads)} gradients")
    num_slots = 1 + bool(use_momentum) + bool(centered)
    buffers = list(buffers)
    if len(buffers) != num_slots:
        raise ValueError(f"apply_rmsprop_x_multi_flat: got {len(buffers)} buffers, expected "
                         f"{num_slots} (ms[, mom][, mg])")
    return _multi_op(variables, [_handle(b, "buffers") for b in buffers], grads, lr, rho,
                     momentum, epsilon, weight_decay, num_slots=num_slots, slot_offsets=offsets,
                     centered=centered, use_momentum=use_momentum, nesterov=nesterov,
                     epsilon_placement=epsilon_placement, lr_placement=lr_placement,
                     weight_decay_mode=weight_decay_mode, use_locking=use_locking, name=name)
