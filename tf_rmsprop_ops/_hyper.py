"""The hyperparameters' valid values, checked in Python where the values are numbers.

The ops check the same rules on every call (`CheckHyperParams` in cc/ops/rmsprop_x_attrs.cc:
InvalidArgument, nothing written; under XLA a compile-time constant fails to compile and a
run-time value makes var NaN, see docs/design.md "Hyperparameter values"). Checking here
too names the bad argument at the line that set it, before any step runs. Tensors,
variables and schedules are checked by the op when it runs.
"""
import math
import numbers
import sys

import numpy as np

# name -> (lowest, highest), both inclusive; every value must also be finite.
RANGES = {
    "learning_rate": (0.0, math.inf),
    "rho": (0.0, 1.0),
    "momentum": (0.0, math.inf),
    "epsilon": (0.0, math.inf),
    "weight_decay": (0.0, math.inf),
}


def _is_number(value):
    return isinstance(value, (numbers.Real, np.floating, np.integer)) and not isinstance(
        value, bool)


def check(name, value):
    """ValueError naming `name` when `value` is a number outside its range (or not finite).
    Anything else (a tensor, a variable, a schedule, None) is left to the op."""
    if not _is_number(value):
        return
    low, high = RANGES[name]
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(f"Argument `{name}` must be finite; received {value!r}.")
    if -sys.float_info.min < x < 0:
        x = 0.0  # a negative subnormal counts as 0, as in the ops (CheckHyperParams)
    if not low <= x <= high:
        where = f"in [{low:g}, {high:g}]" if math.isfinite(high) else f">= {low:g}"
        raise ValueError(f"Argument `{name}` must be {where}; received {value!r}.")


def _as_number(value):
    """A Python float from a number, a 0-d array or an eager scalar tensor; else None."""
    if _is_number(value):
        return float(value)
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return float(value)
    numpy = getattr(value, "numpy", None)  # an eager tensor or variable
    if callable(numpy) and getattr(value, "shape", None) is not None and not value.shape:
        try:
            return float(numpy())
        except (TypeError, ValueError, AttributeError):
            return None
    return None


def require_number(name, value):
    """`value` as a Python float, checked by `check`; TypeError naming `name` and what is
    accepted otherwise (tf_keras took callables for these; Keras 3 takes numbers)."""
    number = _as_number(value)
    if number is None:
        hint = (": a callable (tf_keras' hyperparameter functions) is not accepted; pass its "
                "value" if callable(value) else "")
        raise TypeError(f"Argument `{name}` must be a number (a Python or NumPy scalar, or an "
                        f"eager scalar tensor); received {value!r}{hint}.")
    check(name, number)
    return number


class Checked:
    """A float attribute checked by `check` on every assignment (constructor and setter).
    `optional=True` also allows None (weight_decay: off); `also(obj, value)` runs further
    checks that depend on the object (rho with bias correction)."""

    def __init__(self, optional=False, also=None):
        self.optional, self.also = optional, also

    def __set_name__(self, owner, name):
        self.name, self.key = name, f"_checked_{name}"

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        try:
            return obj.__dict__[self.key]
        except KeyError:
            raise AttributeError(self.name) from None

    def __set__(self, obj, value):
        if value is None and self.optional:
            obj.__dict__[self.key] = None
            return
        number = require_number(self.name, value)
        if self.also is not None:
            self.also(obj, number)
        obj.__dict__[self.key] = number


def check_rho_for_bias_correction(rho):
    """Bias correction divides by 1 - rho**t, computed in float32: rho must stay below 1
    there (0.99999999 is 1.0 in float32)."""
    if not np.float32(rho) < 1:
        raise ValueError(f"bias_correction=True needs rho < 1 in float32 (the correction "
                         f"1 - rho**t is 0 otherwise); received rho={rho!r}.")


def rho_with_bias_correction(obj, rho):
    """Checked's `also` for rho: setting rho later must keep bias correction valid."""
    if getattr(obj, "bias_correction", False):
        check_rho_for_bias_correction(rho)
