"""Shared test helpers: the variants, random states, running the ops, tolerances."""
import dataclasses
import itertools

import numpy as np
import tensorflow as tf

import tf_rmsprop_ops
from tf_rmsprop_ops import reference

DTYPES = [tf.float16, tf.bfloat16, tf.float32, tf.float64]
# Relative tolerances: float32/float64 per the project's standard; half types are bounded
# by one rounding of the float32 result to 11 (half) or 8 (bfloat16) mantissa bits.
RTOL = {tf.float16: 1e-3, tf.bfloat16: 8e-3, tf.float32: 1e-6, tf.float64: 1e-12}


@dataclasses.dataclass(frozen=True)
class Variant:
    centered: bool = False
    momentum: bool = False
    nesterov: bool = False
    epsilon_placement: str = "inside_sqrt"
    lr_placement: str = "inside_momentum"
    weight_decay_mode: str = "none"

    def __str__(self):
        parts = ["centered" if self.centered else "plain"]
        if self.momentum:
            parts.append("nesterov" if self.nesterov else "momentum")
            parts.append("lr_" + self.lr_placement.split("_")[0])
        parts.append("eps_" + self.epsilon_placement.split("_")[0])
        parts.append("wd_" + self.weight_decay_mode)
        return "-".join(parts)

    def op_kwargs(self):
        return dict(nesterov=self.nesterov, epsilon_placement=self.epsilon_placement,
                    lr_placement=self.lr_placement, weight_decay_mode=self.weight_decay_mode)


def all_variants():
    out = []
    for centered, mode, eps, wd in itertools.product(
            (False, True), ("off", "on", "nesterov"), reference.EPSILON_PLACEMENTS,
            reference.WEIGHT_DECAY_MODES):
        lr_placements = reference.LR_PLACEMENTS if mode != "off" else ("inside_momentum",)
        for lr in lr_placements:
            out.append(Variant(centered, mode != "off", mode == "nesterov", eps, lr, wd))
    return out


VARIANTS = all_variants()


def round_to(x, dtype):
    """x rounded to `dtype`, returned as float64 (what the op really sees)."""
    return tf.cast(tf.constant(np.asarray(x, np.float64)), dtype).numpy().astype(np.float64)


def as_op_sees(hyper, dtype):
    """Python-float hyperparameters as an op on `dtype` variables sees them, as float64
    (TensorFlow converts a Python float to a 16-bit dtype through float32)."""
    via = np.float32 if dtype in (tf.float16, tf.bfloat16) else np.float64
    return {k: float(round_to(via(v), dtype)) for k, v in hyper.items()}


def random_hyper(rng, dtype, variant):
    hyper = dict(lr=rng.uniform(0.01, 0.1), rho=rng.uniform(0.8, 0.99),
                 momentum=rng.uniform(0.5, 0.95) if variant.momentum else 0.0,
                 epsilon=rng.choice([1e-7, 1e-3]) if dtype != tf.float16 else 1e-3,
                 weight_decay=rng.uniform(0.001, 0.1) if variant.weight_decay_mode != "none" else 0.0)
    return as_op_sees(hyper, dtype)


def random_state(rng, shape, dtype, variant):
    """var, grad and the enabled slots; the centered variance is kept well away from 0 so
    the comparison measures the kernel, not cancellation."""
    state = {
        "var": rng.uniform(-2, 2, shape),
        "grad": rng.uniform(-1, 1, shape),
        "mom": rng.uniform(-0.1, 0.1, shape) if variant.momentum else None,
        "mg": rng.uniform(-0.3, 0.3, shape) if variant.centered else None,
    }
    mg2 = state["mg"] ** 2 if variant.centered else 0.0
    state["ms"] = mg2 + rng.uniform(0.1, 1.0, shape)
    return {k: None if v is None else round_to(v, dtype) for k, v in state.items()}


SLOTS = ("ms", "mom", "mg")


def make_variables(state, dtype):
    return {k: tf.Variable(tf.cast(state[k], dtype)) for k in ("var",) + SLOTS
            if state.get(k) is not None}


def values(variables):
    return {k: v.numpy().astype(np.float64) for k, v in variables.items()}


def slot_kwargs(variables):
    return {k: variables[k] for k in ("ms", "mom", "mg") if k in variables}


def apply_dense(variables, grad, variant, hyper, dtype, **extra):
    slots = slot_kwargs(variables)
    ms = slots.pop("ms")
    return tf_rmsprop_ops.apply_rmsprop_x(variables["var"], ms, tf.cast(grad, dtype), **slots,
                                          **hyper, **variant.op_kwargs(), **extra)


def apply_sparse(variables, grad, indices, variant, hyper, dtype, **extra):
    slots = slot_kwargs(variables)
    ms = slots.pop("ms")
    return tf_rmsprop_ops.sparse_apply_rmsprop_x(variables["var"], ms, tf.cast(grad, dtype),
                                                 indices, **slots, **hyper,
                                                 **variant.op_kwargs(), **extra)


def reference_dense(state, variant, hyper):
    return reference.rmsprop_x_step(state["var"], state["grad"], state["ms"], state.get("mom"),
                                    state.get("mg"), **hyper, **variant.op_kwargs())


def reference_sparse(state, grad, indices, variant, hyper):
    return reference.sparse_rmsprop_x_step(state["var"], grad, indices, state["ms"],
                                           state.get("mom"), state.get("mg"), **hyper,
                                           **variant.op_kwargs())


def assert_matches(got, want, dtype, rtol=None, what="", before=None):
    """Elementwise relative error below rtol, with an absolute floor of rtol times the
    array's scale. The scale is the largest magnitude in the expected array and, when
    `before` (the state the step started from) is given, in that array before the step:
    an element computed as a difference of terms of that size (mom = momentum * mom +
    step, mg = rho * mg + (1 - rho) * g, var - step) carries rounding errors of their size
    even where the result is small, which a one-element array cannot show by itself."""
    rtol = RTOL[dtype] if rtol is None else rtol
    for name, expected in want.items():
        if expected is None:
            assert name not in got, f"{what}{name}: a slot for a disabled feature exists"
            continue
        actual = got[name]
        scale = float(np.max(np.abs(expected))) if expected.size else 0.0
        prior = None if before is None else before.get(name)
        if prior is not None and np.size(prior):
            scale = max(scale, float(np.max(np.abs(prior))))
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * max(scale, 1e-30),
                                   err_msg=f"{what}{name}")
