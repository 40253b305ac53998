"""The one place that turns (variable, slots, gradient) into op calls.

Both optimizers (the `tf.Module` `RMSpropX` and the Keras 3 adapter) call `apply_updates`
with every variable of a step, its slots and its (already reduced, clipped) gradient: dense
gradients of equal dtype and formula go to one multi-tensor call, the rest to
`apply_update`, which picks the dense or the sparse op and routes DTensor variables to
`_dtensor`. A new formula
variant is an attr of the ops (cc/ops) and a field of `Structure`; nothing else here
changes.
"""
import dataclasses

import numpy as np
import tensorflow as tf

from tf_rmsprop_ops import _dtensor, _flat_state, _hyper, ops
from tf_rmsprop_ops.ops import (apply_rmsprop_x, apply_rmsprop_x_multi,
                                apply_rmsprop_x_multi_flat, sparse_apply_rmsprop_x)
from tf_rmsprop_ops.state8 import State8


@dataclasses.dataclass(frozen=True)
class Structure:
    """The ops' structural attrs: which slots exist and where eps, lr and wd go."""
    use_momentum: bool = False
    centered: bool = False
    nesterov: bool = False
    epsilon_placement: str = "inside_sqrt"
    lr_placement: str = "inside_momentum"
    weight_decay_mode: str = "none"
    use_locking: bool = False

    def op_attrs(self):
        return dict(nesterov=self.nesterov, epsilon_placement=self.epsilon_placement,
                    lr_placement=self.lr_placement, weight_decay_mode=self.weight_decay_mode,
                    use_locking=self.use_locking)


@dataclasses.dataclass(frozen=True)
class Slots:
    """A variable's optimizer state: `ms` always, `mom` / `mg` when enabled (else None)."""
    ms: object
    mom: object = None
    mg: object = None

    def present(self):
        return [s for s in (self.ms, self.mom, self.mg) if s is not None]

    def quantized(self):
        """Whether the state is 8-bit (`state8.State8` slots)."""
        return isinstance(self.ms, State8)

    def flat(self):
        """Whether the state is ranges of flat buffers (`_flat_state.FlatSlot`)."""
        return _flat_state.is_flat(self.ms)


def _call_flat(group, structure, scalars):
    """One ApplyRMSpropXMulti over `group` ((grad, var, slots) with FlatSlots of the same
    buffers), in the buffers' order."""
    group = sorted(group, key=lambda item: item[2].ms.offset)
    first = group[0][2]
    return apply_rmsprop_x_multi_flat(
        [var for _, var, _ in group], [slot.buffer for slot in first.present()],
        [slots.ms.offset for _, _, slots in group], [grad for grad, _, _ in group],
        use_momentum=structure.use_momentum, centered=structure.centered, **scalars,
        **structure.op_attrs())


def call_op(var, slots, values, indices, structure, **scalars):
    """One op call on `var` (a variable or a resource handle) and its slots."""
    ms, mom, mg = slots.ms, slots.mom, slots.mg
    if slots.flat():
        if indices is not None:  # the sparse op on var's range of each buffer
            return sparse_apply_rmsprop_x(
                var, ms.buffer, values, indices, mom=mom.buffer if mom is not None else None,
                mg=mg.buffer if mg is not None else None, slot_offset=ms.offset, **scalars,
                **structure.op_attrs())
        return _call_flat([(values, var, slots)], structure, scalars)
    if indices is not None:
        return sparse_apply_rmsprop_x(var, ms, values, indices, mom=mom, mg=mg, **scalars,
                                      **structure.op_attrs())
    return apply_rmsprop_x(var, ms, values, mom=mom, mg=mg, **scalars, **structure.op_attrs())


def check_bias_correction(structure, rho):
    """ValueError unless Optax-style bias correction can be folded into the scalars."""
    _hyper.check_rho_for_bias_correction(rho)
    if structure.centered:
        raise ValueError("bias_correction=True is not supported with centered=True (the "
                         "corrected variance ms/c - (mg/c)**2 is not a rescaling of the op's).")
    if structure.use_momentum and structure.lr_placement == "outside_momentum":
        raise ValueError("bias_correction=True needs lr_placement='inside_momentum' (as Optax).")


def fold_bias_correction(scalars, structure, step, rho):
    """Optax's bias correction (denominator from ms / c, c = 1 - rho**step) as scalar inputs
    of the same op: sqrt(ms/c + eps) = sqrt(ms + eps*c) / sqrt(c) and sqrt(ms/c) + eps =
    (sqrt(ms) + eps*sqrt(c)) / sqrt(c), so lr -> lr*sqrt(c), eps -> eps*c (inside) or
    eps*sqrt(c) (outside), and decoupled weight decay wd -> wd/sqrt(c) keeps lr*wd."""
    c = 1.0 - tf.pow(tf.cast(rho, tf.float32), tf.cast(step, tf.float32))
    root = tf.sqrt(c)
    out = dict(scalars)
    lr = tf.convert_to_tensor(scalars["lr"])
    out["lr"] = lr * tf.cast(root, lr.dtype)
    out["epsilon"] = scalars["epsilon"] * (c if structure.epsilon_placement == "inside_sqrt"
                                           else root)
    if structure.weight_decay_mode == "decoupled":
        out["weight_decay"] = scalars["weight_decay"] / root
    return out


def _op_scalars(structure, bias_correction_step, **scalars):
    """The ops' five scalar inputs (lr, rho, momentum, epsilon, weight_decay), with Optax's
    bias correction folded in when `bias_correction_step` (1-based) is given."""
    if bias_correction_step is None:
        return scalars
    return fold_bias_correction(scalars, structure, bias_correction_step, scalars["rho"])


def apply_update(grad, var, slots, structure, scalars):
    """Updates `var` and `slots` in place with `grad` (a dense tensor or IndexedSlices);
    `scalars`: the ops' five scalar inputs (`_op_scalars`)."""
    sparse = isinstance(grad, tf.IndexedSlices)
    if sparse and slots.quantized() and var.shape.rank is not None and var.shape.rank < 2:
        # 8-bit state of a rank-1 variable is one row of blocks: the sparse op would
        # requantize neighbours it does not name, so it refuses; the update is dense (every
        # element's state decays, as Keras' RMSprop does for every IndexedSlices).
        grad, sparse = tf.convert_to_tensor(grad), False
    values = grad.values if sparse else grad
    indices = grad.indices if sparse else None
    if _dtensor.is_dvariable(var):
        return _dtensor.apply(call_op, var, slots, values, indices, structure, scalars)
    return call_op(var, slots, values, indices, structure, **scalars)


def _multi_tensor_key(grad, var, structure, slots):
    """The group of a (grad, var) pair for ApplyRMSpropXMulti, or None for the one-variable
    ops: IndexedSlices (the sparse op) and DTensor variables (their own paths) stay per
    variable. Groups are per device (CPU kernel, GPU chunk-list kernel, XLA lowering) and
    per state format (8-bit and 32-bit state are separate calls)."""
    if isinstance(grad, tf.IndexedSlices) or _dtensor.is_dvariable(var):
        return None
    return (var.dtype.base_dtype, structure, getattr(var, "device", "") or "",
            slots.quantized(), id(slots.ms.buffer) if slots.flat() else None)


def _rule(name):
    return "in [0, 1]" if name == "rho" else ">= 0"


def _invalid_message(name, dtype):
    return (f"{name} must be finite and {_rule(name)} in {dtype.name} (the dtype of some "
            f"variables of this step): nothing was updated; got")


def _rule_holds(x, name, isfinite):
    """The ops' rule (CheckHyperParams) on `x`, the value an op of `dtype` computes with
    (half types widen to float32): finite; rho in [0, 1], the others >= 0, a negative
    subnormal of the compute type counting as 0. `x` is NumPy (a value known now, with
    `np.isfinite`) or a tensor (known when the step runs, with `tf.math.is_finite`)."""
    tiny = np.finfo(getattr(x.dtype, "as_numpy_dtype", x.dtype)).tiny
    ok = isfinite(x) & (x > -tiny)
    return ok & (x <= 1) if name == "rho" else ok


def _require(valid, error, message, *data):
    """A whole-step check. Known now (a bool, or eager): `error(message data...)` raised
    unless `valid`. In a graph: an Assert (InvalidArgumentError with the same message) that
    every op of the step waits for (returned in a list)."""
    if isinstance(valid, bool) or tf.executing_eagerly():
        if not bool(valid):
            raise error(" ".join([message] + [str(np.asarray(d).tolist()) for d in data]) + ".")
        return []
    return [tf.debugging.Assert(valid, [message, *data], summarize=10)]


def _check_step_scalars(calls):
    """Each op rounds its scalars to its variables' dtype and rejects a value that is not
    valid there (CheckHyperParams). When a step's op calls see a value differently (dtypes:
    weight_decay=1e5 is finite in float32, inf in float16; rho=1+1e-9 is 1 in float32; or
    bias correction folded per structure), one call could fail after the others had run: a
    half-applied step. So such a step is checked first, whole, on the values exactly as
    `ops.as_scalar` hands them to the ops. `calls`: (dtype, scalars) per op call. Values
    known now (numbers; tensors and variables when eager) raise ValueError here; in a graph,
    the returned Asserts are what every op of the step must wait for."""
    checks, seen = [], set()
    for dtype, scalars in calls:
        compute = tf.float64 if dtype == tf.float64 else tf.float32  # half types widen
        for name, value in scalars.items():
            if (dtype, name, id(value)) in seen:
                continue
            seen.add((dtype, name, id(value)))
            if _hyper._is_number(value):
                with np.errstate(over="ignore"):  # the overflow is what is detected
                    x = ops.round_number(value, dtype).astype(compute.as_numpy_dtype)
                valid = bool(np.all(_rule_holds(x, name, np.isfinite)))
            else:
                try:
                    tensor = tf.convert_to_tensor(value)
                except (TypeError, ValueError):
                    continue
                if not (tensor.dtype.is_floating or tensor.dtype.is_integer):
                    continue
                x = tf.cast(ops.as_scalar(tensor, dtype), compute)
                valid = _rule_holds(x, name, tf.math.is_finite)
            checks += _require(valid, ValueError, _invalid_message(name, dtype), value)
    return checks


def check_rows(pairs):
    """The sparse op rejects an index outside [0, rows), but only when it runs: in a step of
    several op calls the others could have written by then. So a step's IndexedSlices are
    checked first, whole (eager: InvalidArgumentError here; graph: Asserts every op waits
    for). `pairs`: (gradient, variable). DTensor variables keep their own path."""
    checks = []
    for grad, var in pairs:
        if not isinstance(grad, tf.IndexedSlices) or _dtensor.is_dvariable(var):
            continue
        indices = grad.indices
        rows = tf.shape(var, out_type=indices.dtype)[0]
        checks += _require(
            tf.reduce_all((indices >= 0) & (indices < rows)),
            lambda message: tf.errors.InvalidArgumentError(None, None, message),
            f"the gradient of {getattr(var, 'name', 'a variable')} has an index outside "
            "[0, rows): every index must name a row of the variable. Nothing was updated. "
            "rows, first indices:", rows, indices[:10])
    return checks


def apply_updates(items, *, lr, rho, momentum, epsilon, weight_decay, bias_correction_step=None,
                  multi_tensor=True):
    """Updates many variables: `items` is a list of (grad, var, slots, structure). With
    `multi_tensor`, the dense gradients go to one ApplyRMSpropXMulti call per group of equal
    (dtype, structure, device, state format; flat state: its buffers); everything else,
    and every group of one, to `apply_update`.
    The scalars are folded once per structure and are what the whole-step checks see.
    The results are the same bits either way (one formula, one kernel loop)."""
    groups, single = {}, []
    for item in items:
        key = _multi_tensor_key(item[0], item[1], item[3], item[2]) if multi_tensor else None
        (groups.setdefault(key, []) if key is not None else single).append(item)
    scalars = {structure: _op_scalars(structure, bias_correction_step, lr=lr, rho=rho,
                                      momentum=momentum, epsilon=epsilon,
                                      weight_decay=weight_decay)
               for structure in {item[3] for item in items}}
    # Calls that read the scalars differently: several dtypes, or bias correction folded
    # per structure. One dtype without it: every call sees the same values, and the first
    # op's rejection comes before any write.
    calls = {(item[1].dtype.base_dtype, item[3]) for item in items}
    checks = []
    if len({dtype for dtype, _ in calls}) > 1 or (bias_correction_step is not None
                                                   and len(calls) > 1):
        checks = _check_step_scalars([(dtype, scalars[structure])
                                      for dtype, structure in sorted(calls, key=repr)])
    if len(items) > 1:
        checks += check_rows([(grad, var) for grad, var, _, _ in items])
    with tf.control_dependencies(checks):  # a graph step runs no op before every check passed
        for key, group in groups.items():
            if len(group) == 1:
                single.extend(group)
                continue
            structure = key[1]
            if key[4] is not None:  # flat state: the group's buffers, each once
                _call_flat([item[:3] for item in group], structure, scalars[structure])
                continue
            apply_rmsprop_x_multi(
                [var for _, var, _, _ in group], [slots.present() for _, _, slots, _ in group],
                [grad for grad, _, _, _ in group], use_momentum=structure.use_momentum,
                centered=structure.centered, **scalars[structure], **structure.op_attrs())
        for grad, var, slots, structure in single:
            apply_update(grad, var, slots, structure, scalars[structure])
