"""The hyperparameters' valid values, checked in Python where the values are numbers.

The ops check the same rules on every call (`CheckHyperParams` in cc/ops/rmsprop_x_attrs.cc:
InvalidArgument, nothing written; under XLA a compile-time constant fails to compile and a
run-time value makes var NaN, see docs/design.md "Hyperparameter values"). Checking here
too names the bad argument at the line that set it, before any step runs. Tensors,
variables and schedules are checked by the op when it runs.
"""
import math
import numbers

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
    if not low <= x <= high:
        where = f"in [{low:g}, {high:g}]" if math.isfinite(high) else f">= {low:g}"
        raise ValueError(f"Argument `{name}` must be {where}; received {value!r}.")


class Checked:
    """A float attribute checked by `check` on every assignment (constructor and setter).
    `optional=True` also allows None (weight_decay: off)."""

    def __init__(self, optional=False):
        self.optional = optional

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
        if not _is_number(value):
            raise TypeError(f"Argument `{self.name}` must be a number; received {value!r}.")
        check(self.name, value)
        obj.__dict__[self.key] = float(value)
