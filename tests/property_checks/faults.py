"""The broken calls. The fault catalogues (kind -> weight of drawing it, beside "none") and
the draws of a fault's details (the family generators in generators.py call these); and
what counts as reporting a fault: a Problem lists the error types and the message words
that report it (MISSING: a variable that does not exist; GENERIC_*: TensorFlow's own vague
words, a note rather than a violation); hyper_problems and optimizer_ctor_problems list the
invalid hyperparameters and optimizer constructor arguments of a spec."""
import math

import numpy as np
import tensorflow as tf

from .spec import DTYPE_NAMES, EPS_PLACEMENTS, HYPER_NAMES, LR_PLACEMENTS, slot_names


IA = tf.errors.InvalidArgumentError
FP = tf.errors.FailedPreconditionError


# ---- the catalogue ---------------------------------------------------------------------------

# Structural faults: name -> weight (out of the "none" weight and the others).
COMMON_FAULTS = {"none": 640, "grad_shape": 30, "grad_dtype": 20, "hyper_dtype": 15, "var_dtype": 20,
                 "slot_dtype": 20, "slot_shape": 30, "alias": 35, "slot_count": 30,
                 "nesterov_without_momentum": 15, "uninitialised": 15, "never_assigned": 12,
                 "destroyed": 12, "destroyed_eager": 6, "hyper_nonscalar": 20, "not_resource": 10}


# The sparse op's own (beside the common ones).
SPARSE_FAULTS = {"oob": 45, "indices_rank": 10, "grad_rows": 15, "grad_row_shape": 15,
                 "grad_scalar": 5, "scalar_var": 8}


# The multi op's own (beside the common ones).
MULTI_FAULTS = {"duplicate_var": 25, "var_as_slot": 15, "shared_slot": 15, "grads_count": 15,
                "slots_count": 15}


# One step's fault in the optimizer family: a NaN/inf gradient element (accepted: it
# propagates into that element only), a gradient of the wrong shape or dtype (ValueError naming
# the variable; the Keras optimizer casts another dtype, as Keras does), an IndexedSlices index
# outside the variable (InvalidArgumentError), or a setter given an invalid value (ValueError
# naming it; the value and the next step unchanged).
OPTIMIZER_FAULTS = ("grad_nonfinite", "grad_shape", "grad_dtype", "oob", "setter")
SETTER_NAMES = ("learning_rate", "rho", "momentum", "epsilon", "weight_decay")


# ---- drawing a fault's details ---------------------------------------------------------------

def perturb_shape(d, shape):
    shape = list(shape)
    if not shape:
        return [d.integer(1, 3)]
    k = d.choice(["dim", "append", "drop", "reshape"])
    if k == "dim":
        i = d.integer(0, len(shape) - 1)
        shape[i] = shape[i] + 1 if shape[i] == 0 or d.boolean() else shape[i] - 1
        return shape
    if k == "append":
        return shape + [d.integer(1, 2)]
    if k == "drop" and len(shape) > 1:
        return shape[:-1]
    n = int(np.prod(shape))
    return [n] if len(shape) > 1 else ([1, n] if n else [2, 0])


def other_dtype(d, dtname):
    return d.choice([n for n in DTYPE_NAMES if n != dtname])


def gen_common_fault(d, kind, attrs, dtname, shape):
    names = slot_names(attrs)
    f = {"kind": kind}
    if kind in ("grad_shape", "slot_shape"):
        f["shape"] = perturb_shape(d, shape)
        if kind == "slot_shape":
            f["slot"] = d.integer(0, len(names) - 1)
    elif kind in ("grad_dtype", "hyper_dtype", "var_dtype", "slot_dtype"):
        f["dtype"] = other_dtype(d, dtname)
        if kind == "slot_dtype":
            f["slot"] = d.integer(0, len(names) - 1)
        if kind == "hyper_dtype":
            f["name"] = d.choice(HYPER_NAMES)
    elif kind == "alias":
        f["slot"] = d.integer(0, len(names) - 1)
        f["target"] = d.choice(["var"] + [n for i, n in enumerate(names) if i != f["slot"]])
    elif kind == "slot_count":
        f["delta"] = -1 if len(names) > 1 and d.boolean() else 1
        if len(names) == 1 and f["delta"] < 0:
            f["delta"] = 1
    elif kind in ("uninitialised", "never_assigned", "destroyed", "destroyed_eager", "not_resource"):
        f["which"] = d.choice(["var"] + names)
    elif kind == "hyper_nonscalar":
        f["name"] = d.choice(HYPER_NAMES)
        f["shape"] = d.choice([[1], [2], [1, 1], [0]])
    return f


def gen_fault(d, api, extra=None, exclude=()):
    """The kind of structural fault of a call (\"none\" mostly), given what the API can express."""
    table = dict(COMMON_FAULTS)
    table.update(extra or {})
    for k in exclude:
        table.pop(k, None)
    if api != "raw":
        for k in ("slot_count", "hyper_dtype"):
            table.pop(k, None)
    if api != "wrapper":
        table.pop("not_resource", None)
    if api == "graph":
        for k in ("uninitialised", "never_assigned", "destroyed", "destroyed_eager"):
            table.pop(k, None)
    return d.choice(list(table), list(table.values()))


def gen_fault_detail(d, kind, attrs, dtname, shape):
    if kind == "nesterov_without_momentum":
        attrs["use_momentum"] = False
        attrs["nesterov"] = True
        return {"kind": kind}
    return gen_common_fault(d, kind, attrs, dtname, shape)


# ---- problems and errors ---------------------------------------------------------------------

class Problem:
    """Something wrong with a call: the errors and message words that report it. `generic`
    words are TensorFlow's own, which name the problem only vaguely."""

    def __init__(self, kind, words, errors=(IA, ValueError, TypeError), generic=(), note=None):
        self.kind, self.words, self.errors, self.generic = kind, tuple(words), tuple(errors), tuple(generic)
        self.note = note  # for kind "maybe" (either outcome is right): a note when accepted

    def __repr__(self):
        return f"{self.kind}{list(self.words)}"


MISSING = (FP,)
GENERIC_SHAPE = ("must be equal", "Shapes must be", "must be rank", "must be at least rank",
                 "Dimension", "incompatible", "Incompatible")
GENERIC_TYPE = ("expected to be a", "Tensor conversion requested dtype", "cannot compute",
                "must match", "do not match", "not in the list of allowed values")


def hyper_problems(spec_hyper, dt):
    """The invalid hyperparameters, judged as the op's dtype holds them (1e5 is inf in half)."""
    out = []
    tiny = float(np.finfo(dt.compute).smallest_normal)
    for name in HYPER_NAMES:
        x = float(dt.round(spec_hyper[name]))
        if x < 0 and -x < tiny:
            # A negative subnormal (of the compute type): TensorFlow runs kernels with
            # denormals-are-zero, so the kernel's check (and its arithmetic) read it as -0.
            out.append(Problem("maybe", [f"{name} must"], note="negative_subnormal_accepted"))
        elif not math.isfinite(x) or x < 0 or (name == "rho" and x > 1):
            out.append(Problem(f"hyper:{name}", [f"{name} must"]))
    return out


def message_of(exc):
    msg = getattr(exc, "message", None) or str(exc)
    # TF wraps kernel errors: drop the function prefix and the op suffix; drop the op-def
    # signature, which lists every argument name.
    if "}}" in msg and msg.startswith("{{function_node"):
        msg = msg.split("}}", 1)[1]
    for cut in ("\n\t; NodeDef", "; NodeDef", "Op<name="):
        msg = msg.split(cut)[0]
    return msg.strip()


def optimizer_ctor_problems(c):
    """The constructor arguments that are invalid (the ValueError must name one of them)."""
    bad = []

    def finite(x):
        return isinstance(x, (int, float)) and math.isfinite(x)

    def nonneg(x):  # a negative subnormal (of float64, the number's type) counts as 0
        return finite(x) and (x >= 0 or -np.finfo(np.float64).smallest_normal < x)

    if not nonneg(c["learning_rate"]):
        bad.append("learning_rate")
    if not (nonneg(c["rho"]) and c["rho"] <= 1):
        bad.append("rho")
    if not nonneg(c["momentum"]):
        bad.append("momentum")
    if not nonneg(c["epsilon"]):
        bad.append("epsilon")
    if c["weight_decay"] is not None and not nonneg(c["weight_decay"]):
        bad.append("weight_decay")
    if c["epsilon_placement"] not in EPS_PLACEMENTS:
        bad.append("epsilon_placement")
    if c["lr_placement"] not in LR_PLACEMENTS:
        bad.append("lr_placement")
    if c["weight_decay_mode"] not in ("decoupled", "coupled"):
        bad.append("weight_decay_mode")
    use_momentum = (finite(c["momentum"]) and c["momentum"] > 0) or c["nesterov"]
    if c["bias_correction"] and (c["centered"] or (use_momentum and c["lr_placement"] == "outside_momentum")):
        bad.append("bias_correction")
    elif (c["bias_correction"] and nonneg(c["rho"]) and c["rho"] <= 1
          and not np.float32(c["rho"]) < 1):  # the correction 1 - rho**t would be 0
        bad.append("bias_correction")
    return bad
