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

from tf_rmsprop_ops import _dtensor, _hyper
from tf_rmsprop_ops.ops import apply_rmsprop_x, apply_rmsprop_x_multi, sparse_apply_rmsprop_x


@dataclasses.dataclass(frozen=True)
class Structure:
    """The ops' structural attrs: which slots exist and where eps, lr and wd go."""
    use_momentum: bool = False
    centered: bool = False
    nesterov: bool = False
    epsilon_placement: str = "inside_sqrt"
    lr_placement: str = "inside_momentum"
    weight_decay_mode: str = "none"

    def op_attrs(self):
        return dict(nesterov=self.nesterov, epsilon_placement=self.epsilon_placement,
                    lr_placement=self.lr_placement, weight_decay_mode=self.weight_decay_mode)


@dataclasses.dataclass(frozen=True)
class Slots:
    """A variable's optimizer state: `ms` always, `mom` / `mg` when enabled (else None)."""
    ms: object
    mom: object = None
    mg: object = None

    def present(self):
        return [s for s in (self.ms, self.mom, self.mg) if s is not None]


def call_op(var, slots, values, indices, structure, **scalars):
    """One op call on `var` (a variable or a resource handle) and its slots."""
    ms, mom, mg = slots.ms, slots.mom, slots.mg
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


def apply_update(grad, var, slots, structure, *, lr, rho, momentum, epsilon, weight_decay,
                 bias_correction_step=None):
    """Updates `var` and `slots` in place with `grad` (a dense tensor or IndexedSlices).
    `bias_correction_step`: the update's 1-based step for Optax-style bias correction."""
    scalars = _op_scalars(structure, bias_correction_step, lr=lr, rho=rho, momentum=momentum,
                          epsilon=epsilon, weight_decay=weight_decay)
    sparse = isinstance(grad, tf.IndexedSlices)
    values = grad.values if sparse else grad
    indices = grad.indices if sparse else None
    if _dtensor.is_dvariable(var):
        return _dtensor.apply(call_op, var, slots, values, indices, structure, scalars)
    return call_op(var, slots, values, indices, structure, **scalars)


def _multi_tensor_key(grad, var, structure):
    """The group of a (grad, var) pair for ApplyRMSpropXMulti, or None for the one-variable
    ops: IndexedSlices (the sparse op) and DTensor variables (their own paths) stay per
    variable. Groups are per device (CPU kernel, GPU chunk-list kernel, XLA lowering)."""
    if isinstance(grad, tf.IndexedSlices) or _dtensor.is_dvariable(var):
        return None
    return (var.dtype.base_dtype, structure, getattr(var, "device", "") or "")


def _rule(name):
    return "in [0, 1]" if name == "rho" else ">= 0"


def _invalid_message(name, dtype):
    return (f"{name} must be finite and {_rule(name)} in {dtype.name} (the dtype of some "
            f"variables of this step): nothing was updated; got")


def _compute_dtype(dtype):
    return tf.float64 if dtype == tf.float64 else tf.float32  # half types widen


def _valid_in(dtype, name, value):
    """The ops' rule (CheckHyperParams) on a NumPy value as an op of `dtype` reads it:
    finite; rho in [0, 1], the others >= 0, a negative subnormal of the compute type
    counting as 0."""
    compute = _compute_dtype(dtype).as_numpy_dtype
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is what is detected
        x = np.asarray(value).astype(dtype.as_numpy_dtype).astype(compute)
    ok = np.isfinite(x) & (x > -np.finfo(compute).tiny)
    return bool(np.all(ok & (x <= 1))) if name == "rho" else bool(np.all(ok))


def _graph_check(dtype, name, tensor):
    """The same rule in a graph, on a value known only when the step runs: an Assert
    (InvalidArgumentError naming the value and the dtype)."""
    compute = _compute_dtype(dtype)
    x = tf.cast(tf.cast(tensor, dtype), compute)
    valid = tf.math.is_finite(x) & (x > -np.finfo(compute.as_numpy_dtype).tiny)
    if name == "rho":
        valid &= x <= 1
    return tf.debugging.Assert(valid, [_invalid_message(name, dtype), tensor], summarize=1)


def _check_scalars_fit_every_dtype(calls):
    """Each op rounds its scalars to its variables' dtype and rejects a value that is not
    valid there (CheckHyperParams). When a step's op calls see a value differently (dtypes:
    weight_decay=1e5 is finite in float32, inf in float16; rho=1+1e-9 is 1 in float32; or
    bias correction folded per structure), one call could fail after the others had run: a
    half-applied step. So such a step is checked first, whole. `calls`: (dtype, scalars)
    per op call. Values known now (numbers; tensors and variables when eager) raise
    ValueError here; in a graph, the returned Asserts are what every op of the step must
    wait for."""
    checks, seen = [], set()
    for dtype, scalars in calls:
        for name, value in scalars.items():
            if not _hyper._is_number(value):
                if not tf.executing_eagerly():
                    key = (dtype, name, id(value))
                    if key not in seen:
                        seen.add(key)
                        tensor = tf.convert_to_tensor(value)
                        if tensor.dtype.is_floating or tensor.dtype.is_integer:
                            checks.append(_graph_check(dtype, name, tensor))
                    continue
                try:
                    value = np.asarray(tf.convert_to_tensor(value))
                except (TypeError, ValueError):
                    continue
            if not _valid_in(dtype, name, value):
                raise ValueError(f"{_invalid_message(name, dtype)} {float(np.asarray(value))!r}.")
    return checks


def _check_rows(items):
    """The sparse op rejects an index outside [0, rows), but only when it runs: in a step of
    several op calls the others could have written by then. So a step's IndexedSlices are
    checked first, whole (eager: InvalidArgumentError here; graph: Asserts every op waits
    for). DTensor variables keep their own path."""
    checks = []
    for grad, var, _, _ in items:
        if not isinstance(grad, tf.IndexedSlices) or _dtensor.is_dvariable(var):
            continue
        indices = grad.indices
        rows = tf.shape(var, out_type=indices.dtype)[0]
        valid = tf.reduce_all((indices >= 0) & (indices < rows))
        message = (f"the gradient of {getattr(var, 'name', 'a variable')} has an index "
                   "outside [0, rows): every index must name a row of the variable. Nothing "
                   "was updated. rows, first indices:")
        if tf.executing_eagerly():
            if not bool(valid):
                raise tf.errors.InvalidArgumentError(
                    None, None, f"{message} {int(rows)}, {indices.numpy()[:10].tolist()}")
        else:
            checks.append(tf.debugging.Assert(valid, [message, rows, indices], summarize=10))
    return checks


def apply_updates(items, *, lr, rho, momentum, epsilon, weight_decay, bias_correction_step=None,
                  multi_tensor=True):
    """Updates many variables: `items` is a list of (grad, var, slots, structure). With
    `multi_tensor`, the dense gradients go to one ApplyRMSpropXMulti call per group of equal
    (dtype, structure, device); everything else, and every group of one, to `apply_update`.
    The results are the same bits either way (one formula, one kernel loop)."""
    groups, single = {}, []
    for item in items:
        key = _multi_tensor_key(item[0], item[1], item[3]) if multi_tensor else None
        (groups.setdefault(key, []) if key is not None else single).append(item)
    # Calls that read the scalars differently: several dtypes, or bias correction folded
    # per structure. One dtype without it: every call sees the same values, and the first
    # op's rejection comes before any write.
    calls = {(item[1].dtype.base_dtype, item[3]) for item in items}
    checks = []
    if len({dtype for dtype, _ in calls}) > 1 or (bias_correction_step is not None
                                                   and len(calls) > 1):
        checks = _check_scalars_fit_every_dtype([
            (dtype, _op_scalars(structure, bias_correction_step, lr=lr, rho=rho,
                                momentum=momentum, epsilon=epsilon, weight_decay=weight_decay))
            for dtype, structure in sorted(calls, key=repr)])
    if len(items) > 1:
        checks += _check_rows(items)
    with tf.control_dependencies(checks):  # a graph step runs no op before every check passed
        _apply_groups(groups, single, lr=lr, rho=rho, momentum=momentum, epsilon=epsilon,
                      weight_decay=weight_decay, bias_correction_step=bias_correction_step)


def _apply_groups(groups, single, *, lr, rho, momentum, epsilon, weight_decay,
                  bias_correction_step):
    for key, group in groups.items():
        if len(group) == 1:
            single.extend(group)
            continue
        structure = key[1]
        scalars = _op_scalars(structure, bias_correction_step, lr=lr, rho=rho,
                              momentum=momentum, epsilon=epsilon, weight_decay=weight_decay)
        apply_rmsprop_x_multi(
            [var for _, var, _, _ in group], [slots.present() for _, _, slots, _ in group],
            [grad for grad, _, _, _ in group], use_momentum=structure.use_momentum,
            centered=structure.centered, **scalars, **structure.op_attrs())
    for grad, var, slots, structure in single:
        apply_update(grad, var, slots, structure, lr=lr, rho=rho, momentum=momentum,
                     epsilon=epsilon, weight_decay=weight_decay,
                     bias_correction_step=bias_correction_step)
