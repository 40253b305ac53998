"""Worker of tests/test_properties.py: random calls of one family against the ops' contract.

    python tests/property_worker.py FAMILY SEED COUNT [--trace FILE]
    python tests/property_worker.py replay 'SPEC-JSON'

FAMILY is one of dense (ApplyRMSpropX), sparse (SparseApplyRMSpropX), multi
(ApplyRMSpropXMulti) or optimizer (tf_rmsprop_ops.RMSpropX and tf_rmsprop_ops.keras.RMSpropX).
COUNT calls are generated from SEED; a share of them (TF_RMSPROP_OPS_PROPERTY_HYPOTHESIS_SHARE,
default 0.1) is drawn by hypothesis (its boundary-seeking floats and integers), the rest by a
seeded NumPy generator (hypothesis costs 1-5 ms per example here, as much as the call it
generates). Both draw through the same generator, so every case is a JSON "spec" from which
`replay` rebuilds the exact call. The last line of stdout is `PROPERTY_SUMMARY {json}`; the exit status is 1 when a
call violated the contract, 0 otherwise. `--trace FILE` keeps the spec of the call in
progress in FILE, so that a crash (signal, abort, CHECK failure) can be traced to its case.

The contract ("oracle") of every call: either
  (a) it succeeds, and var and every slot equal the float64 reference
      (tf_rmsprop_ops.reference, on the dtype-rounded inputs) within the rounding error of
      the kernel's compute type: an error bound is carried through the formula beside the
      float64 value (unit roundoff and underflow of float32 for float16/bfloat16/float32,
      of float64 for float64; the result rounded to the variable's dtype), times 4; NaN must
      be NaN and inf the same inf. Elements whose value the bound cannot determine (a
      denominator that rounding may make 0) are counted as `unverified_elements`; so are
      elements whose computation may leave the compute type's range (`overflow_elements`:
      there the result depends on how the compiler fused a*b + c, e.g. fma(-mg, mg, inf) is
      inf where unfused inf - inf is NaN).
      TensorFlow runs its kernels with flush-to-zero and denormals-are-zero: results that
      match only when subnormals are read or written as 0 are counted as `ftz_only` (a
      note, not a violation, unless TF_RMSPROP_OPS_PROPERTY_STRICT_SUBNORMALS=1).
  (b) it raises InvalidArgumentError / FailedPreconditionError (ValueError / TypeError from
      Python or at graph construction) naming one of the problems the case holds, and var
      and every slot are bit-identical to before. A message that names the problem only in
      TensorFlow's generic words (e.g. a graph-mode shape mismatch, or the eager "input #7
      was expected to be a float tensor") is a note (`generic_message`).
Cases where either outcome is right: a negative subnormal hyperparameter (denormals-are-zero
reads it as -0: `negative_subnormal_accepted` when the op accepts it), a handle passed to
DestroyResourceOp while the eager variable still holds the resource. The optimizer family
also checks that constructor arguments outside the documented ranges raise ValueError
naming them, that the slots start at initial_scale and 0 in the variable's dtype
(`slot_initial_value`), and that a step that raises leaves every variable, slot and
`iterations` unchanged; elements whose var an earlier step made inf/NaN are checked too
(the kernels select away the terms a variant lacks, so IEEE propagation holds).

Violation kinds: mismatch, accepted_invalid, unexpected_rejection, wrong_error_type,
message_missing_name, state_changed, slot_initial_value, harness_error (a bug here).
"""
import bisect
import collections
import functools
import itertools
import json
import math
import os
import re
import sys
import time
import traceback
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.python.ops import resource_variable_ops  # noqa: E402

import tf_rmsprop_ops  # noqa: E402
from tf_rmsprop_ops import ops as tfx_ops  # noqa: E402
from tf_rmsprop_ops import reference  # noqa: E402
from tf_rmsprop_ops import keras as tfx_keras  # noqa: E402
import keras  # noqa: E402
from tf_rmsprop_ops._library import ops as raw  # noqa: E402

np.seterr(all="ignore")  # NaN, inf and underflow are the point here: no warnings
tf.get_logger().setLevel("ERROR")  # e.g. graph-mode cases' retracing warnings

FAMILIES = ("dense", "sparse", "multi", "optimizer")
HYPER_NAMES = ("lr", "rho", "momentum", "epsilon", "weight_decay")
EPS_PLACEMENTS = reference.EPSILON_PLACEMENTS
LR_PLACEMENTS = reference.LR_PLACEMENTS
WD_MODES = reference.WEIGHT_DECAY_MODES
SAFETY = 4.0  # the error bound is first-order rigorous; this covers what it neglects

IA = tf.errors.InvalidArgumentError
FP = tf.errors.FailedPreconditionError
STRICT_SUBNORMALS = os.environ.get("TF_RMSPROP_OPS_PROPERTY_STRICT_SUBNORMALS") == "1"
# Sabotage switches, to check that the oracle is not vacuous (tests/test_properties.py
# documents them): the reference's lr times (1 + x); a rejected call's first variable
# written (+1) before the unchanged-state check, as a half-applied update would.
SABOTAGE_LR = float(os.environ.get("TF_RMSPROP_OPS_PROPERTY_SABOTAGE_LR", "0"))
SABOTAGE_UNCHANGED = os.environ.get("TF_RMSPROP_OPS_PROPERTY_SABOTAGE_UNCHANGED") == "1"


# ---- dtypes ----------------------------------------------------------------------------------

class DType:
    def __init__(self, name, tf_dtype, storage, compute):
        self.name, self.tf, self.np, self.compute = name, tf_dtype, storage, compute
        fi = ml_dtypes.finfo(storage) if storage is ml_dtypes.bfloat16 else np.finfo(storage)
        self.max = float(fi.max)
        self.tiny = float(fi.smallest_normal)
        self.subnormal = float(fi.smallest_subnormal)
        self.nmant = int(fi.nmant)
        self.minexp = int(fi.minexp)

    def round(self, x):
        """x (float64) rounded to this dtype, as float64 (what the op really sees)."""
        return np.asarray(x, np.float64).astype(self.np).astype(np.float64)

    def array(self, x):
        return np.asarray(x, np.float64).astype(self.np)

    def ulp(self, y):
        a = np.abs(y)
        ex = np.where(a > 0, np.floor(np.log2(np.where(a > 0, a, 1.0))), self.minexp)
        ex = np.maximum(ex, self.minexp)
        return np.where(np.isfinite(a), np.exp2(ex - self.nmant), 0.0)


DTYPES = {
    "float32": DType("float32", tf.float32, np.float32, np.float32),
    "float64": DType("float64", tf.float64, np.float64, np.float64),
    "float16": DType("float16", tf.float16, np.float16, np.float32),
    "bfloat16": DType("bfloat16", tf.bfloat16, ml_dtypes.bfloat16, np.float32),
}
DTYPE_NAMES = tuple(DTYPES)


# ---- drawing ---------------------------------------------------------------------------------

NASTY_FLOATS = (0.0, -0.0, 1.0, -1.0, 0.5, 1e-45, 1.4e-45, 5e-324, 1.1754944e-38, 2.2250738585072014e-308,
                6.1e-5, 5.96e-8, 65504.0, 65520.0, 3.4028235e38, 3.4e38, 1.7976931348623157e308,
                1e-300, 1e300, math.inf, -math.inf, math.nan, 1e5, -1e5, 1e-7, 2.0 ** -24)


@functools.lru_cache(maxsize=None)
def _cumulative(weights):
    return list(itertools.accumulate(weights))


class NumpyDrawer:
    """Draws from a seeded NumPy generator (fast)."""

    def __init__(self, rng):
        self.rng = rng

    def integer(self, lo, hi):
        return int(self.rng.integers(lo, hi + 1))

    def boolean(self, p=0.5):
        return bool(self.rng.random() < p)

    def uniform(self, lo, hi):
        return float(self.rng.uniform(lo, hi))

    def choice(self, options, weights=None):
        options = list(options)
        if weights is None:
            return options[int(self.rng.integers(len(options)))]
        cum = _cumulative(tuple(weights))
        return options[bisect.bisect_right(cum, self.rng.random() * cum[-1])]

    def any_float(self):
        r = self.rng.random()
        if r < 0.4:
            return float(self.rng.choice(NASTY_FLOATS))
        if r < 0.7:  # any bit pattern of a double
            return float(np.frombuffer(self.rng.bytes(8), np.float64)[0])
        if r < 0.85:  # any bit pattern of a float
            return float(np.frombuffer(self.rng.bytes(4), np.float32)[0])
        return float(self.rng.choice([-1, 1]) * 10.0 ** self.rng.uniform(-320, 308))

    def seed(self):
        return int(self.rng.integers(2 ** 32))


class HypothesisDrawer:
    """Draws through hypothesis' `data()` (boundary values, nasty floats)."""

    def __init__(self, data):
        from hypothesis import strategies as st
        self.data, self.st = data, st

    def integer(self, lo, hi):
        return self.data.draw(self.st.integers(lo, hi))

    def boolean(self, p=0.5):
        return self.data.draw(self.st.integers(0, 999)) < int(p * 1000)

    def uniform(self, lo, hi):
        return self.data.draw(self.st.floats(lo, hi))

    def choice(self, options, weights=None):
        options = list(options)
        if weights is None:
            return self.data.draw(self.st.sampled_from(options))
        cum, total = np.cumsum(weights), int(sum(weights))
        r = self.data.draw(self.st.integers(0, total - 1))
        return options[int(np.searchsorted(cum, r, side="right"))]

    def any_float(self):
        return self.data.draw(self.st.floats(allow_nan=True, allow_infinity=True))

    def seed(self):
        return self.data.draw(self.st.integers(0, 2 ** 32 - 1))


# ---- generating specs ------------------------------------------------------------------------

def gen_attrs(d):
    momentum = d.boolean(0.5)
    return dict(centered=d.boolean(0.4), use_momentum=momentum,
                nesterov=momentum and d.boolean(0.4),
                epsilon_placement=d.choice(EPS_PLACEMENTS), lr_placement=d.choice(LR_PLACEMENTS),
                weight_decay_mode=d.choice(WD_MODES), use_locking=d.boolean(0.15))


def gen_hyper_value(d, name, dt, attrs):
    r = d.integer(0, 999)
    if r < 850:  # typical
        if name == "lr":
            return 10.0 ** d.uniform(-4, 0)
        if name == "rho":
            return d.choice([0.9, 0.99, 0.0, 1.0, d.uniform(0, 1), d.uniform(0.8, 1.0)])
        if name == "momentum":
            return d.uniform(0, 0.99) if attrs["use_momentum"] else d.choice([0.0, 0.0, 0.9])
        if name == "epsilon":
            return d.choice([1e-7, 1e-8, 1e-6, 1e-3, 1e-10, 0.1, 0.0])
        return d.uniform(0, 0.1) if attrs["weight_decay_mode"] != "none" else d.choice([0.0, 0.01])
    if r < 965:  # valid special values (rho > 1 among them is invalid)
        kind = d.choice(["zero", "negzero", "one", "subnormal", "tiny", "huge", "max"])
        return {"zero": 0.0, "negzero": -0.0, "one": 1.0,
                "subnormal": dt.subnormal * d.integer(1, 1000),
                "tiny": dt.tiny * d.uniform(1, 4), "huge": dt.max * 10.0 ** d.uniform(-6, -1),
                "max": dt.max}[kind]
    kind = d.choice(["negative", "nan", "inf", "-inf", "overflow", "any"])
    return {"negative": -(10.0 ** d.uniform(-8, 1)), "nan": math.nan, "inf": math.inf,
            "-inf": -math.inf, "overflow": dt.max * d.uniform(1.5, 3.0) if dt.max < 1e300 else math.inf,
            "any": d.any_float()}[kind]


def gen_hyper(d, dt, attrs):
    return {name: gen_hyper_value(d, name, dt, attrs) for name in HYPER_NAMES}


STATE_KINDS = ["normal", "scaled", "zeros", "tiny", "huge", "wild", "centered_edge"]
STATE_WEIGHTS = [50, 12, 8, 7, 6, 9, 8]
GRAD_KINDS = ["normal", "scaled", "zeros", "tiny", "huge", "wild"]
GRAD_WEIGHTS = [55, 15, 7, 7, 6, 10]
SPECIAL_GRADS = ["nan", "inf", "-inf", "zero", "negzero", "subnormal", "max"]


def gen_values(d, size):
    v = dict(state=d.choice(STATE_KINDS, STATE_WEIGHTS), grad=d.choice(GRAD_KINDS, GRAD_WEIGHTS),
             seed=d.seed())
    if d.boolean(0.12):
        v["special"] = [d.choice(SPECIAL_GRADS), d.integer(1, 3)]
    if 0 < size <= 4 and d.boolean(0.3):
        v["grad_values"] = [d.any_float() for _ in range(size)]
    return v


def gen_shape(d, max_elements=4096, large=True):
    """0-d, empty, odd and small shapes mostly; up to `max_elements`; rarely one large
    enough for the kernels to split it between threads."""
    kind = d.choice(["fixed", "small", "vector", "matrix", "large"], [30, 30, 24, 15, int(large)])
    if kind == "fixed":
        return list(d.choice([(), (0,), (1,), (3, 0), (0, 5), (7,), (17,), (2, 3, 5), (4, 33),
                              (1, 1, 1), (8,), (16,), (33,), (64,), (1, 0, 1)]))
    if kind == "small":
        return [d.integer(0, 9) for _ in range(d.integer(0, 3))]
    if kind == "vector":
        return [d.choice([d.integer(1, 100), d.integer(1, max_elements)], [75, 25])]
    if kind == "matrix":
        a = d.integer(1, 40)
        return [a, d.integer(1, max(1, d.choice([64, max_elements], [75, 25]) // a))]
    return [d.integer(16384, 70000)]


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


def slot_names(attrs):
    return ["ms"] + (["mom"] if attrs["use_momentum"] else []) + (["mg"] if attrs["centered"] else [])


# Structural faults: name -> weight (out of the "none" weight and the others).
COMMON_FAULTS = {"none": 640, "grad_shape": 30, "grad_dtype": 20, "hyper_dtype": 15, "var_dtype": 20,
                 "slot_dtype": 20, "slot_shape": 30, "alias": 35, "slot_count": 30,
                 "nesterov_without_momentum": 15, "uninitialised": 15, "never_assigned": 12,
                 "destroyed": 12, "destroyed_eager": 6, "hyper_nonscalar": 20, "not_resource": 10}


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


def gen_dense(d):
    dtname = d.choice(DTYPE_NAMES)
    dt = DTYPES[dtname]
    attrs = gen_attrs(d)
    api = d.choice(["raw", "wrapper", "graph"], [76, 23, 1])
    shape = gen_shape(d)
    spec = dict(family="dense", dtype=dtname, api=api, attrs=attrs, shape=shape,
                hyper=gen_hyper(d, dt, attrs), values=gen_values(d, int(np.prod(shape))))
    kind = gen_fault(d, api)
    if kind != "none":
        spec["fault"] = gen_fault_detail(d, kind, attrs, dtname, shape)
    return spec


def gen_fault_detail(d, kind, attrs, dtname, shape):
    if kind == "nesterov_without_momentum":
        attrs["use_momentum"] = False
        attrs["nesterov"] = True
        return {"kind": kind}
    return gen_common_fault(d, kind, attrs, dtname, shape)


SPARSE_FAULTS = {"oob": 45, "indices_rank": 10, "grad_rows": 15, "grad_row_shape": 15,
                 "grad_scalar": 5, "scalar_var": 8}


def gen_sparse(d):
    dtname = d.choice(DTYPE_NAMES)
    dt = DTYPES[dtname]
    attrs = gen_attrs(d)
    api = d.choice(["raw", "wrapper", "graph"], [76, 23, 1])
    rows = d.choice([d.integer(1, 8), d.integer(1, 200), d.integer(0, 3), d.integer(200, 3000)],
                    [40, 45, 5, 10])
    row_shape = d.choice([[], [d.integer(1, 8)], [d.integer(0, 3)], [d.integer(1, 4), d.integer(1, 5)],
                          [d.integer(1, 64)]], [25, 35, 5, 15, 20])
    row_size = int(np.prod(row_shape))
    if rows * row_size > 16384:  # a table of at most 16k elements: rows are what matters
        rows = max(1, 16384 // max(1, row_size))
    n = d.choice([0, d.integer(1, 8), d.integer(1, 64), d.integer(64, 1500)], [5, 40, 45, 10])
    pattern = d.choice(["random", "unique", "sorted", "all_same", "heavy_duplicates"])
    spec = dict(family="sparse", dtype=dtname, api=api, attrs=attrs, rows=rows, row_shape=row_shape,
                n=n, pattern=pattern, index_dtype=d.choice(["int32", "int64"]),
                hyper=gen_hyper(d, dt, attrs),
                values=gen_values(d, n * int(np.prod(row_shape))))
    kind = gen_fault(d, api, extra=SPARSE_FAULTS)
    if kind == "oob":
        bad = [-1, rows, rows + d.integer(1, 100), 2 ** 31 - 1, -2 ** 31]
        if spec["index_dtype"] == "int64":
            bad += [2 ** 63 - 1, -2 ** 63, 2 ** 31, -2 ** 31 - 1]
        spec["fault"] = {"kind": kind, "value": d.choice(bad), "at": d.integer(0, max(0, n))}
    elif kind == "grad_rows":
        spec["fault"] = {"kind": kind, "rows": n + d.choice([1, -1]) if n else 1}
    elif kind == "grad_row_shape":
        spec["fault"] = {"kind": kind, "shape": perturb_shape(d, row_shape)}
    elif kind in ("indices_rank", "grad_scalar", "scalar_var"):
        spec["fault"] = {"kind": kind}
    elif kind != "none":
        shape = [rows] + row_shape
        spec["fault"] = gen_fault_detail(d, kind, attrs, dtname, shape)
        if kind == "grad_shape":  # the gradient has n rows: perturb those
            spec["fault"]["shape"] = perturb_shape(d, [n] + row_shape)
    return spec


MULTI_FAULTS = {"duplicate_var": 25, "var_as_slot": 15, "shared_slot": 15, "grads_count": 15,
                "slots_count": 15}


def gen_multi(d):
    dtname = d.choice(DTYPE_NAMES)
    dt = DTYPES[dtname]
    attrs = gen_attrs(d)
    api = d.choice(["raw", "wrapper"], [75, 25])
    n = d.choice([1, d.integer(2, 4), d.integer(5, 9)], [20, 68, 12])
    shapes = [gen_shape(d, max_elements=1024) for _ in range(n)]
    if d.boolean(0.015):  # large enough to be split between threads
        shapes[d.integer(0, n - 1)] = [d.integer(16384, 40000)]
    spec = dict(family="multi", dtype=dtname, api=api, attrs=attrs, shapes=shapes,
                hyper=gen_hyper(d, dt, attrs),
                values=[gen_values(d, int(np.prod(s))) for s in shapes])
    kind = gen_fault(d, api, extra=MULTI_FAULTS,
                     exclude=("not_resource", "nesterov_without_momentum") if api == "wrapper" else ())
    if kind == "none":
        return spec
    i = d.integer(0, n - 1)
    if kind in ("duplicate_var", "var_as_slot", "shared_slot"):
        if n == 1 and kind != "var_as_slot":
            kind = "var_as_slot"
        j = d.integer(0, n - 1)
        if kind != "var_as_slot" and j == i:
            j = (i + 1) % n
        spec["fault"] = {"kind": kind, "i": i, "j": j,
                         "slot": d.integer(0, len(slot_names(attrs)) - 1)}
    elif kind == "grads_count":
        spec["fault"] = {"kind": kind, "delta": d.choice([1, -1]) if n > 1 else 1}
    elif kind == "slots_count":
        spec["fault"] = {"kind": kind, "delta": d.choice([1, -1])}
    else:
        spec["fault"] = gen_fault_detail(d, kind, attrs, dtname, shapes[i])
        spec["fault"]["i"] = i
    return spec


def gen_optimizer(d):
    def number(name, typical):
        r = d.integer(0, 999)
        if r < 820:
            return typical()
        if r < 900:
            return d.choice({"learning_rate": [0.0, -0.0, 1e-30, 1e30, 1e5, 1e39],
                             "rho": [0.0, 0.999999, 1e-30],
                             "momentum": [0.0, 1e5, 1e-30, 1e39],
                             "epsilon": [0.0, 1e-45, 1e-30, 1e5, 1e39],
                             "weight_decay": [0.0, 1e-30, 1e5, 1e39]}[name])
        return d.choice([-1.0, -1e-8, math.nan, math.inf, -math.inf, 1.0, 1.5, d.any_float()])

    ctor = dict(
        learning_rate=number("learning_rate", lambda: 10.0 ** d.uniform(-4, -0.5)),
        rho=number("rho", lambda: d.choice([0.9, 0.99, d.uniform(0, 0.999)])),
        momentum=number("momentum", lambda: d.choice([0.0, 0.0, 0.9, d.uniform(0, 0.99)])),
        epsilon=number("epsilon", lambda: d.choice([1e-7, 1e-8, 1e-3, 1e-6])),
        centered=d.boolean(0.4),
        weight_decay=None if d.boolean(0.5) else number("weight_decay", lambda: d.uniform(0, 0.1)),
        nesterov=d.boolean(0.2),
        epsilon_placement=d.choice(list(EPS_PLACEMENTS) + ["inside"], [48, 48, 4]),
        lr_placement=d.choice(list(LR_PLACEMENTS) + ["outside"], [48, 48, 4]),
        weight_decay_mode=d.choice(["decoupled", "coupled", "none"], [48, 48, 4]),
        initial_scale=d.choice([0.0, 0.1, 1.0]),
        bias_correction=d.boolean(0.15),
        multi_tensor=d.boolean(0.7))
    mixed = d.boolean(0.15)
    base = d.choice(DTYPE_NAMES)
    variables = []
    for _ in range(d.choice([1, 2, 3, 4], [30, 35, 25, 10])):
        shape = gen_shape(d, max_elements=512, large=False)
        sparse = bool(shape) and shape[0] > 0 and d.boolean(0.25)
        variables.append(dict(dtype=d.choice(DTYPE_NAMES) if mixed else base, shape=shape,
                              sparse=sparse))
    steps = d.integer(2, 3)
    fault = None
    if d.boolean(0.4):  # one step of the trajectory goes wrong (or sets a bad value first)
        kind = d.choice(OPTIMIZER_FAULTS)
        setter = d.choice(list(SETTER_NAMES))
        fvar = d.integer(0, len(variables) - 1)
        fault = dict(step=d.integer(1, steps), kind=kind, var=fvar,
                     special=d.choice(["nan", "inf", "-inf"]),
                     dtype=other_dtype(d, variables[fvar]["dtype"]),
                     below=d.boolean(), setter=setter,
                     value=d.choice([-1.0, -1e-3, math.nan, math.inf, -math.inf]
                                    + ([1.5, 1.0 + 1e-6] if setter == "rho" else [])))
    return dict(family="optimizer", keras=d.boolean(0.3), ctor=ctor, variables=variables,
                steps=steps, grad=d.choice(["normal", "scaled", "zeros"], [80, 15, 5]),
                fault=fault, seed=d.seed())


# One step's fault in the optimizer family: a NaN/inf gradient element (accepted: it
# propagates into that element only), a gradient of the wrong shape or dtype (ValueError naming
# the variable; the Keras optimizer casts another dtype, as Keras does), an IndexedSlices index
# outside the variable (InvalidArgumentError), or a setter given an invalid value (ValueError
# naming it; the value and the next step unchanged).
OPTIMIZER_FAULTS = ("grad_nonfinite", "grad_shape", "grad_dtype", "oob", "setter")
SETTER_NAMES = ("learning_rate", "rho", "momentum", "epsilon", "weight_decay")


GENERATORS = {"dense": gen_dense, "sparse": gen_sparse, "multi": gen_multi,
              "optimizer": gen_optimizer}


# ---- building arrays -------------------------------------------------------------------------

def _signed(rng, shape):
    return rng.choice([-1.0, 1.0], size=shape)


def _logmag(rng, shape, lo, hi):
    return 10.0 ** rng.uniform(lo, hi, shape)


def build_state(vals, shape, dt, attrs, salt=0):
    """var, ms, mom, mg (storage dtype arrays; None for disabled slots) and grad (float64)."""
    rng = np.random.default_rng([vals["seed"], salt])
    kind = vals["state"]
    lmin, lmax = math.log10(dt.subnormal), math.log10(dt.max)
    if kind == "normal":
        var, ms = rng.uniform(-2, 2, shape), rng.uniform(0.1, 1.0, shape)
        mom, mg = rng.uniform(-0.1, 0.1, shape), rng.uniform(-0.3, 0.3, shape)
        if attrs["centered"]:
            ms = ms + mg * mg
    elif kind == "scaled":
        s = 10.0 ** rng.uniform(-4, 4)
        var, ms = rng.uniform(-2, 2, shape) * s, rng.uniform(0, 1, shape) * s * s
        mom, mg = rng.uniform(-1, 1, shape) * s, rng.uniform(-0.5, 0.5, shape) * s
    elif kind == "zeros":
        var, ms, mom, mg = (np.zeros(shape) for _ in range(4))
        var = rng.uniform(-1, 1, shape) if rng.random() < 0.5 else var
    elif kind == "tiny":
        var, ms, mom, mg = (_signed(rng, shape) * _logmag(rng, shape, lmin, math.log10(dt.tiny) + 2)
                            for _ in range(4))
        ms = np.abs(ms)
    elif kind == "huge":
        var, ms, mom, mg = (_signed(rng, shape) * _logmag(rng, shape, lmax - 4, lmax - 0.3)
                            for _ in range(4))
        ms = np.abs(ms)
    elif kind == "wild":
        var, ms, mom, mg = (_signed(rng, shape) * _logmag(rng, shape, lmin, lmax - 0.3)
                            for _ in range(4))
        ms = np.abs(ms)
    else:  # centered_edge: the centered variance ms - mg**2 cancels to ~0 (or below)
        mg = rng.uniform(-1, 1, shape)
        ms = mg * mg * (1 + rng.uniform(-1e-3, 1e-3, shape))
        var, mom = rng.uniform(-1, 1, shape), rng.uniform(-0.1, 0.1, shape)
    out = {}
    for name, x in (("var", var), ("ms", ms), ("mom", mom), ("mg", mg)):
        if name == "mom" and not attrs["use_momentum"]:
            out[name] = None
        elif name == "mg" and not attrs["centered"]:
            out[name] = None
        else:
            x = np.clip(np.asarray(x, np.float64), -dt.max, dt.max)  # state stays finite
            out[name] = dt.array(x)
    return out


def build_grad(vals, shape, dt, salt=0):
    rng = np.random.default_rng([vals["seed"], salt, 1])
    kind = vals["grad"]
    lmin, lmax = math.log10(dt.subnormal), math.log10(dt.max)
    if kind == "normal":
        g = rng.uniform(-1, 1, shape)
    elif kind == "scaled":
        g = rng.uniform(-1, 1, shape) * 10.0 ** rng.uniform(-5, 5)
    elif kind == "zeros":
        g = np.zeros(shape)
    elif kind == "tiny":
        g = _signed(rng, shape) * _logmag(rng, shape, lmin, math.log10(dt.tiny) + 2)
    elif kind == "huge":
        g = _signed(rng, shape) * _logmag(rng, shape, lmax - 4, lmax - 0.3)
    else:
        g = _signed(rng, shape) * _logmag(rng, shape, lmin, lmax - 0.3)
    g = np.array(np.clip(g, -dt.max, dt.max), np.float64).reshape(shape)
    if "special" in vals and g.size:
        what, k = vals["special"]
        value = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "zero": 0.0, "negzero": -0.0,
                 "subnormal": dt.subnormal * 3, "max": dt.max}[what]
        flat = g.reshape(-1)
        flat[rng.integers(0, flat.size, k)] = value
    if "grad_values" in vals and g.size == len(vals["grad_values"]):
        g = np.asarray(vals["grad_values"], np.float64).reshape(shape)
    return dt.array(g)


# ---- the error-bounded evaluation of the formula ---------------------------------------------

def _pm(p, q):
    """p * q for (nonnegative) error terms, with 0 * inf = 0."""
    return np.fmax(np.multiply(p, q), 0.0)


class Bounded:
    """Arithmetic on (x, e, unk, ovf): x the float64 value of an expression; e a bound on the
    error of evaluating it in the compute type (unit roundoff u, underflow eta, and with
    `ftz` the flushing of subnormal operands and results); unk where the result is not
    determined (a denominator the error may make 0); ovf where an intermediate may leave the
    compute type's range (then the bound does not hold)."""

    def __init__(self, compute, ftz=False):
        fi = np.finfo(compute)
        self.u, self.eta = float(fi.eps) / 2, float(fi.smallest_subnormal)
        self.tiny = float(fi.smallest_normal) if ftz else 0.0
        self.max = float(fi.max)

    def leaf(self, x, e=0.0):
        x = np.asarray(x, np.float64)
        return self._finish(x, np.zeros_like(x) + e, np.zeros(x.shape, bool), np.zeros(x.shape, bool))

    def _finish(self, x, e, unk, ovf):
        ax = np.abs(x)
        ovf = ovf | (ax + e > self.max)
        if self.tiny:  # may be (or round to) a subnormal, flushed to 0
            e = e + np.where((x != 0) & (ax < 2 * self.tiny + e), ax, 0.0)
        return x, e, unk, ovf

    def add(self, a, b):
        x = a[0] + b[0]
        e = a[1] + b[1] + _pm(self.u, np.abs(x))
        return self._finish(x, e, a[2] | b[2], a[3] | b[3])

    def sub(self, a, b):
        return self.add(a, (-b[0], b[1], b[2], b[3]))

    def mul(self, a, b):
        x = a[0] * b[0]
        e = (_pm(np.abs(a[0]), b[1]) + _pm(np.abs(b[0]), a[1]) + _pm(a[1], b[1])
             + _pm(self.u, np.abs(x)) + np.where((a[0] != 0) & (b[0] != 0), self.eta, 0.0))
        return self._finish(x, e, a[2] | b[2], a[3] | b[3])

    def div(self, a, b):
        x = a[0] / b[0]
        ab = np.abs(b[0])
        exact_zero = (ab == 0) & (b[1] == 0)
        # 0/0 (NaN) or a/0 (inf): which one is open when a may be 0 or not
        unk = np.where(exact_zero, (a[1] >= np.abs(a[0])) & (a[1] > 0), b[1] >= ab)
        e = (a[1] + _pm(np.abs(x), b[1])) / np.where(ab > b[1], ab - b[1], 1.0) \
            + _pm(self.u, np.abs(x)) + np.where(a[0] != 0, self.eta, 0.0)
        e = np.where(np.isfinite(x), e, 0.0)
        return self._finish(x, e, a[2] | b[2] | unk, a[3] | b[3])

    def sqrt(self, a):
        x = np.sqrt(a[0])
        pos = a[0] > 0
        e = np.where(pos, np.minimum(a[1] / np.where(pos, x, 1.0), np.sqrt(a[1])), np.sqrt(a[1]))
        e = e + _pm(self.u, np.where(np.isfinite(x), x, 0.0))
        unk = (a[0] < 0) & (a[0] + a[1] >= 0)
        return self._finish(x, e, a[2] | unk, a[3])

    def maxz(self, a):
        x = np.maximum(a[0], 0.0)  # NaN stays NaN
        e = np.where(a[0] < 0, np.maximum(a[0] + a[1], 0.0), a[1])
        return x, e, a[2], a[3]


def evaluate(A, state, grad, hyper, attrs, grad_err=0.0, hyper_err=None):
    """The RMSpropX formula in the arithmetic A, in the kernel's association order
    (cc/rmsprop_x_update.h: ms = rho*ms + (1-rho)*(g*g), decoupled wd var -= (lr*wd)*var).
    `grad_err`, `hyper_err`: error bounds the inputs already carry (summed duplicate rows;
    the optimizer's float32 bias-correction folding)."""
    hyper_err = hyper_err or {}
    h = {k: A.leaf(v, hyper_err.get(k, 0.0)) for k, v in hyper.items()}
    var, ms = A.leaf(state["var"]), A.leaf(state["ms"])
    g = A.leaf(grad, grad_err)
    mom = A.leaf(state["mom"]) if state.get("mom") is not None else None
    mg = A.leaf(state["mg"]) if state.get("mg") is not None else None
    if attrs["weight_decay_mode"] == "coupled":
        g = A.add(g, A.mul(h["weight_decay"], var))
    one_minus_rho = A.sub(A.leaf(1.0), h["rho"])
    ms = A.add(A.mul(h["rho"], ms), A.mul(one_minus_rho, A.mul(g, g)))
    v = ms
    if mg is not None:
        mg = A.add(A.mul(h["rho"], mg), A.mul(one_minus_rho, g))
        v = A.maxz(A.sub(ms, A.mul(mg, mg)))
    if attrs["epsilon_placement"] == "inside_sqrt":
        denom = A.sqrt(A.add(v, h["epsilon"]))
    else:
        denom = A.add(A.sqrt(v), h["epsilon"])
    step = A.div(g, denom)
    lr = h["lr"]
    if mom is not None:
        if attrs["lr_placement"] == "inside_momentum":
            mom = A.add(A.mul(h["momentum"], mom), A.mul(lr, step))
            upd = A.add(A.mul(h["momentum"], mom), A.mul(lr, step)) if attrs["nesterov"] else mom
        else:
            mom = A.add(A.mul(h["momentum"], mom), step)
            upd = A.mul(lr, A.add(A.mul(h["momentum"], mom), step) if attrs["nesterov"] else mom)
    else:
        upd = A.mul(lr, step)
    if attrs["weight_decay_mode"] == "decoupled":
        var = A.sub(var, A.mul(A.mul(lr, h["weight_decay"]), var))
    var = A.sub(var, upd)
    return {"var": var, "ms": ms, "mom": mom, "mg": mg}


def reference_step(state, grad, hyper, attrs, bias_step=None):
    hyper = dict(hyper)
    if SABOTAGE_LR:
        hyper["lr"] = hyper["lr"] * (1 + SABOTAGE_LR)
    f64 = {k: None if v is None else np.asarray(v, np.float64) for k, v in state.items()}
    return reference.rmsprop_x_step(
        f64["var"], np.asarray(grad, np.float64), f64["ms"], f64.get("mom"), f64.get("mg"),
        **hyper, nesterov=attrs["nesterov"], epsilon_placement=attrs["epsilon_placement"],
        lr_placement=attrs["lr_placement"], weight_decay_mode=attrs["weight_decay_mode"],
        bias_correction_step=bias_step)


def _judge_elements(got, center, num, dt):
    """Elementwise: does `got` (storage dtype) lie within the bound around `center`?"""
    x, e, unk, ovf = (np.broadcast_to(a, center.shape) for a in num)
    g = np.asarray(got, np.float64)
    ok = unk.copy()
    ok |= np.isnan(center) & np.isnan(g)
    ok |= np.isinf(center) & (g == center)
    fin = np.isfinite(center) & np.isfinite(e)
    lo = dt.round(np.where(fin, center - SAFETY * e, 0.0))
    hi = dt.round(np.where(fin, center + SAFETY * e, 0.0))
    lo = lo - dt.ulp(lo)
    hi = hi + dt.ulp(hi)
    ok |= fin & (g >= lo) & (g <= hi)
    return ok, ovf | (np.isfinite(center) & ~np.isfinite(e))


class Verdict:
    def __init__(self):
        self.ok = True
        self.ftz_only = 0
        self.unverified = 0
        self.checked = 0
        self.overflow_elements = 0
        self.lost_var = 0
        self.detail = None


def check_step(got, state, grad, hyper, attrs, dt, center, grad_err=0.0, hyper_err=None,
               rows=None, verdict=None, what="", grad_err_ftz=None):
    """Checks the new state `got` (name -> storage array) of the elements in `state`
    against `center` (the reference's new state) with the error bound of the formula."""
    verdict = verdict or Verdict()
    compute = dt.compute
    names = [n for n in ("var", "ms", "mom", "mg") if center.get(n) is not None]
    strict = evaluate(Bounded(compute), state, grad, hyper, attrs, grad_err, hyper_err)
    # A var that is already inf/NaN (an earlier optimizer step overflowed) is checked like
    # any other element: the kernels select away the terms a variant lacks (no 0 * inf).
    lost = np.zeros(np.shape(state["var"]), bool)
    bad = {}
    for n in names:
        ok, ovf = _judge_elements(got[n], center[n], strict[n], dt)
        ok = ok | lost
        verdict.unverified += int(np.count_nonzero(np.broadcast_to(strict[n][2], ok.shape)))
        verdict.checked += int(ok.size)
        if not ok.all():
            bad[n] = (ok, ovf)
    if not bad:
        return verdict
    ftz = evaluate(Bounded(compute, ftz=True), state, grad, hyper, attrs,
                   grad_err if grad_err_ftz is None else grad_err_ftz, hyper_err)
    for n, (ok, ovf) in bad.items():
        ok2, ovf2 = _judge_elements(got[n], center[n], ftz[n], dt)
        ok2 = ok2 | lost
        # An intermediate may leave the compute type's range: the float64 reference does not
        # apply, and neither does the formula evaluated in the compute type in another order
        # (XLA may contract a*b + c into FMAs: fma(-mg, mg, inf) is inf where mg*mg alone
        # overflows and inf - inf is NaN). The value is implementation-defined: counted.
        fall = ~ok & ~ok2 & (ovf | ovf2)
        if fall.any():
            verdict.overflow_elements += int(np.count_nonzero(fall))
            ok = ok | fall
        only_ftz = ~ok & ok2
        if only_ftz.any():
            verdict.ftz_only += int(np.count_nonzero(only_ftz))
            if STRICT_SUBNORMALS:
                ok2 = ok2 & ~only_ftz
            ok = ok | ok2
        if not ok.all():
            verdict.ok = False
            idx = np.argwhere(~ok)[:4]
            rows_note = [] if rows is None else [int(rows[i[0]]) for i in idx]
            cases = []
            for i in idx:
                i = tuple(int(k) for k in i)
                cases.append(dict(index=i, got=_num(np.asarray(got[n], np.float64)[i]),
                                  want=_num(center[n][i]),
                                  bound=_num(SAFETY * np.broadcast_to(strict[n][1], ok.shape)[i]),
                                  inputs={k: _num(np.asarray(v, np.float64)[i]) for k, v in state.items()
                                          if v is not None} | {"grad": _num(np.asarray(grad, np.float64)[i])}))
            verdict.detail = dict(what=f"{what}{n}", bad_elements=int(np.count_nonzero(~ok)),
                                  of=int(ok.size), rows=rows_note, examples=cases)
            return verdict
    return verdict


def _num(x):
    x = float(x)
    return x if math.isfinite(x) else repr(x)


# ---- variables -------------------------------------------------------------------------------

class Pool:
    """Variables of unknown shape, per dtype, reused by assigning new values."""

    def __init__(self):
        self.vars = collections.defaultdict(list)

    def take(self, dtname, k, used):
        pool = self.vars[dtname]
        i = used.get(dtname, 0)
        while len(pool) < i + k:
            pool.append(tf.Variable(tf.zeros([0], DTYPES[dtname].tf), shape=tf.TensorShape(None)))
        used[dtname] = i + k
        return pool[i:i + k]


def assign(variable, array):
    """variable = array (TF's AssignVariableOp: 4x cheaper than Variable.assign)."""
    tf.raw_ops.AssignVariableOp(resource=variable.handle, value=array)


def read(variable):
    return tf.raw_ops.ReadVariableOp(resource=variable.handle, dtype=variable.dtype).numpy()


class Tracked:
    """A variable passed to a call, with the bytes it must still hold if the call fails."""

    def __init__(self, variable, array, readable=True, label=""):
        self.variable, self.array, self.readable, self.label = variable, array, readable, label

    @property
    def handle(self):
        return self.variable.handle if hasattr(self.variable, "handle") else self.variable


def fresh(value, dtname, graph=False):
    arr = np.asarray(value)
    if graph:
        return tf.Variable(arr, dtype=DTYPES[dtname].tf)
    return tf.Variable(arr, dtype=DTYPES[dtname].tf, shape=tf.TensorShape(None))


_counter = [0]


def special_handle(kind, dtname, shape, array=None):
    """A handle of a variable that is uninitialised / never created / destroyed."""
    dtype = DTYPES[dtname].tf
    _counter[0] += 1
    if kind == "uninitialised":
        v = resource_variable_ops.UninitializedVariable(shape=shape, dtype=dtype)
        return Tracked(v, None, readable=False, label=kind)
    if kind == "never_assigned":
        h = resource_variable_ops.var_handle_op(dtype=dtype, shape=shape,
                                                shared_name=f"property_never_{_counter[0]}")
        return Tracked(h, None, readable=False, label=kind)
    if kind == "destroyed":
        h = resource_variable_ops.var_handle_op(dtype=dtype, shape=shape,
                                                shared_name=f"property_destroyed_{_counter[0]}")
        resource_variable_ops.assign_variable_op(h, tf.constant(array, dtype))
        resource_variable_ops.destroy_resource_op(h, ignore_lookup_error=False)
        return Tracked(h, None, readable=False, label=kind)
    # destroyed_eager: an eager variable whose handle was passed to DestroyResourceOp (its
    # handle keeps the resource alive in TF2: a call may succeed)
    v = tf.Variable(array, dtype=dtype, shape=tf.TensorShape(None))
    resource_variable_ops.destroy_resource_op(v.handle, ignore_lookup_error=True)
    return Tracked(v, array, readable=True, label=kind)


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


# ---- the runner ------------------------------------------------------------------------------

class Stats:
    def __init__(self, family):
        self.family = family
        self.c = collections.Counter()
        self.violations = []
        self.notes = collections.defaultdict(list)
        self.problem_kinds = collections.Counter()
        self._seen = set()

    def violation(self, kind, spec, **detail):
        self.c["violations"] += 1
        self.c[f"violation:{kind}"] += 1
        if len(self.violations) < 25:
            self.violations.append(dict(kind=kind, spec=spec, detail=detail,
                                        replay=f"python tests/property_worker.py replay '{json.dumps(spec)}'"))

    def note(self, kind, spec, **detail):
        self.c[f"note:{kind}"] += 1
        if kind == "generic_message":  # one example per kind of message
            key = re.sub(r"[0-9]+", "N", detail["message"])[:48]
            if key not in self._seen and len(self.notes[kind]) < 12:
                self._seen.add(key)
                self.notes[kind].append(dict(spec=spec, detail=detail))
        elif len(self.notes[kind]) < 3:
            self.notes[kind].append(dict(spec=spec, detail=detail))

    def summary(self, seconds):
        c = self.c
        return dict(family=self.family, calls=c["calls"], hypothesis_calls=c["hypothesis_calls"],
                    optimizer_apply_calls=c["apply_calls"], keras_cases=c["keras_cases"],
                    module_cases=c["module_cases"],
                    succeeded_and_matched=c["matched"], rejected=c["rejected"],
                    rejected_but_state_changed=c["violation:state_changed"],
                    mismatches=c["violation:mismatch"], violations=c["violations"],
                    violation_kinds={k[10:]: v for k, v in c.items() if k.startswith("violation:")},
                    notes={k[5:]: v for k, v in c.items() if k.startswith("note:")},
                    unverified_elements=c["unverified_elements"], checked_elements=c["checked_elements"],
                    verdict_calls=c["verdict_calls"],
                    mostly_unverified_calls=c["mostly_unverified_calls"],
                    problems_generated=dict(self.problem_kinds), seconds=round(seconds, 1),
                    cpu_seconds=round(time.process_time(), 1),
                    first_violations=self.violations, note_examples=dict(self.notes))


def outcome_of(fn):
    try:
        fn()
        return None
    except (IA, FP, ValueError, TypeError, tf.errors.OpError) as e:
        return e


class Runner:
    def __init__(self, stats):
        self.stats = stats
        self.pool = Pool()

    def common_faults(self, kind, fault, problems, state_set, dt, var_shape, used, grad,
                      grad_arg):
        """The faults the dense and sparse families share (gradient dtype, hyperparameter
        dtype and rank, nesterov without momentum, slot count, not a resource): appends their
        problems and returns (the variables passed, the tracked ones, the gradient to pass)."""
        if kind == "grad_dtype":
            grad_arg = tf.constant(DTYPES[fault["dtype"]].array(np.asarray(grad, np.float64)),
                                   DTYPES[fault["dtype"]].tf)
            problems.append(Problem(kind, ["grad", "dtype"], generic=GENERIC_TYPE))
        if kind == "hyper_dtype":
            problems.append(Problem(kind, [fault["name"], "dtype"], generic=GENERIC_TYPE))
        if kind == "hyper_nonscalar":
            problems.append(Problem(kind, [f"{fault['name']} must be a scalar"],
                                    generic=GENERIC_SHAPE))
        if kind == "nesterov_without_momentum":
            problems.append(Problem(kind, ["nesterov"]))
        passed = state_set.passed()
        if kind == "slot_count":
            if fault["delta"] < 0:
                passed = passed[:-1]
            else:
                extra = self.pool.take(dt.name, 1, used)[0]
                arr = dt.array(np.full(var_shape, 0.25))
                assign(extra, arr)
                passed = passed + [Tracked(extra, arr, label="extra slot")]
            problems.append(Problem("slot_count", ["slot"], generic=("num_slots",)))
        if kind == "not_resource":
            problems.append(Problem("not_resource", [fault["which"]]))
        self.stats.problem_kinds.update(p.kind for p in problems)
        return passed, _tracked_unique(passed), grad_arg

    @staticmethod
    def wrapper_variables(kind, fault, state, names, passed):
        """(var, ms, {mom, mg}) for the Python wrappers; a `not_resource` fault passes a
        plain array in place of one of them."""
        kw = {n: t.variable for n, t in zip(names, passed[1:])}
        ms = kw.pop("ms")
        var = passed[0].variable
        if kind == "not_resource":
            if fault["which"] == "var":
                var = state["var"]
            elif fault["which"] == "ms":
                ms = state["ms"]
            else:
                kw[fault["which"]] = state[fault["which"]]
        return var, ms, kw

    def outcome(self, spec, call, graph, problems, tracked, passed, names):
        """Runs `call`: judges a rejection, or returns var and the slots as they are now
        (None when the call was rejected or its success was not allowed)."""
        exc = outcome_of(_in_graph(call) if graph else call)
        if exc is not None:
            self.judge_rejection(spec, exc, problems, tracked)
            return None
        if not self.accepted(spec, problems):
            return None
        got = {n: read(passed[i].variable) for i, n in enumerate(["var"] + names)}
        self.stats.c["checked_elements"] += sum(int(np.size(v)) for v in got.values())
        return got

    # A rejected call: the error must be one of the problems', naming it; nothing written.
    def judge_rejection(self, spec, exc, problems, tracked):
        st = self.stats
        st.c["rejected"] += 1
        msg = message_of(exc)
        if not problems:
            st.violation("unexpected_rejection", spec, error=type(exc).__name__, message=msg[:500])
        else:
            allowed = [p for p in problems if isinstance(exc, p.errors)]
            if not allowed:
                st.violation("wrong_error_type", spec, error=type(exc).__name__, message=msg[:500],
                             expected=[repr(p) for p in problems])
            else:
                low = msg.lower()
                if not any(w.lower() in low for p in allowed for w in p.words):
                    if any(w.lower() in low for p in allowed for w in p.generic):
                        st.note("generic_message", spec, message=msg[:300],
                                problems=[repr(p) for p in problems])
                    else:
                        st.violation("message_missing_name", spec, error=type(exc).__name__,
                                     message=msg[-600:],  # TF puts its text after the trace
                                     expected=[repr(p) for p in problems])
        self.check_unchanged(spec, tracked)

    def check_unchanged(self, spec, tracked):
        if SABOTAGE_UNCHANGED:  # pretend the kernel wrote before it failed
            for t in tracked:
                if t.readable and t.array is not None and t.array.size:
                    assign(t.variable, t.array + t.array.dtype.type(1))
                    break
        for t in tracked:
            if not t.readable or t.array is None:
                continue
            after = read(t.variable)
            if after.shape != t.array.shape or after.tobytes() != t.array.tobytes():
                self.stats.violation("state_changed", spec, variable=t.label,
                                     before=_preview(t.array), after=_preview(after))
                return

    def accepted(self, spec, problems):
        for p in problems:
            if p.kind == "maybe" and p.note:
                self.stats.note(p.note, spec)
        real = [p for p in problems if p.kind != "maybe"]
        if real:
            self.stats.violation("accepted_invalid", spec, problems=[repr(p) for p in real])
            return False
        return True

    def record_verdict(self, spec, v):
        st = self.stats
        st.c["unverified_elements"] += v.unverified
        st.c["verdict_calls"] += 1
        if v.checked and 2 * v.unverified > v.checked:
            st.c["mostly_unverified_calls"] += 1
        if v.ftz_only:
            st.note("ftz_only", spec, elements=v.ftz_only)
        if v.lost_var:
            st.note("nonfinite_var_input", spec, elements=v.lost_var)
        if v.overflow_elements:
            st.note("overflow_elements", spec, elements=v.overflow_elements)
        if v.ok:
            st.c["matched"] += 1
        else:
            st.violation("mismatch", spec, **v.detail)


def _preview(a):
    a = np.asarray(a)
    return dict(shape=list(a.shape), head=[_num(x) for x in a.reshape(-1)[:6].astype(np.float64)])


def hyper_tensors(spec, dt, fault):
    out = {}
    for name in HYPER_NAMES:
        value = dt.array(spec["hyper"][name])
        tdt = dt
        if fault.get("kind") == "hyper_dtype" and fault["name"] == name:
            tdt = DTYPES[fault["dtype"]]
            value = tdt.array(spec["hyper"][name])
        if fault.get("kind") == "hyper_nonscalar" and fault["name"] == name:
            value = np.full(fault["shape"], value, tdt.np)
        out[name] = tf.constant(value, tdt.tf)
    return out


def wrapper_hyper(spec, dt, fault):
    out = {}
    for name in HYPER_NAMES:
        x = spec["hyper"][name]
        r = float(dt.round(x))
        value = x if (math.isfinite(x) and not math.isfinite(r)) else r  # overflow stays a Python float
        if fault.get("kind") == "hyper_nonscalar" and fault["name"] == name:
            value = np.full(fault["shape"], dt.array(r))
        out[name] = value
    return out


def effective_hyper(spec, dt):
    return {k: float(dt.round(v)) for k, v in spec["hyper"].items()}


class StateSet:
    """The variables of one variable's update (var and its enabled slots), with faults applied.
    `passed` lists what goes to the op in order (var, slots...)."""

    def __init__(self, runner, spec, dt, attrs, shape, state, fault, used, graph=False, label=""):
        names = slot_names(attrs)
        kind = fault.get("kind")
        self.names = names
        self.tracked = {}
        if graph:
            variables = [fresh(state[n], dt.name, graph=True) for n in ["var"] + names]
        else:
            variables = runner.pool.take(dt.name, 1 + len(names), used)
            for v, n in zip(variables, ["var"] + names):
                assign(v, state[n])
        for v, n in zip(variables, ["var"] + names):
            self.tracked[n] = Tracked(v, state[n], label=f"{label}{n}")
        self.problems = []
        if kind == "slot_shape" and fault.get("i", 0) == spec.get("_i", 0):
            n = names[fault["slot"]]
            arr = dt.array(np.ones(fault["shape"]) * 0.5)
            v = fresh(arr, dt.name, graph) if graph else runner.pool.take(dt.name, 1, used)[0]
            if not graph:
                assign(v, arr)
            self.tracked[n] = Tracked(v, arr, label=f"{label}{n}(bad shape)")
            self.problems.append(Problem("slot_shape", [f"slot '{n}'", f"'{n}' of", "slot"],
                                         generic=GENERIC_SHAPE))
        if kind in ("var_dtype", "slot_dtype") and fault.get("i", 0) == spec.get("_i", 0):
            n = "var" if kind == "var_dtype" else names[fault["slot"]]
            odt = DTYPES[fault["dtype"]]
            if kind == "var_dtype" and spec["api"] in ("wrapper", "graph"):
                # the wrappers take T from the variable: the hyperparameters are checked as
                # that dtype holds them (before the variables are)
                self.problems += [Problem("maybe", p.words) for p in hyper_problems(spec["hyper"], odt)]
            arr = odt.array(np.asarray(state[n], np.float64))
            v = fresh(arr, odt.name, graph) if graph else runner.pool.take(odt.name, 1, used)[0]
            if not graph:
                assign(v, arr)
            self.tracked[n] = Tracked(v, arr, label=f"{label}{n}(dtype {odt.name})")
            self.problems.append(Problem(kind, ["dtype"], generic=GENERIC_TYPE))
        if kind == "alias" and fault.get("i", 0) == spec.get("_i", 0):
            n = names[fault["slot"]]
            self.tracked[n] = self.tracked[fault["target"]]
            self.problems.append(Problem("alias", ["same variable"]))
        if kind in ("uninitialised", "never_assigned", "destroyed", "destroyed_eager") \
                and fault.get("i", 0) == spec.get("_i", 0):
            n = fault["which"]
            t = special_handle(kind, dt.name, shape, state[n])
            t.label = f"{label}{n}({kind})"
            self.tracked[n] = t
            if kind == "uninitialised":
                self.problems.append(Problem(kind, ["uninitialised", "uninitialized"], MISSING))
            elif kind == "destroyed_eager":
                self.problems.append(Problem("maybe", ["not an existing"], MISSING))
            else:
                self.problems.append(Problem(kind, ["not an existing"], MISSING))

    def passed(self):
        return [self.tracked[n] for n in ["var"] + self.names]


def _tracked_unique(ts):
    seen, out = set(), []
    for t in ts:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


class DenseRunner(Runner):
    def run(self, spec):
        dt = DTYPES[spec["dtype"]]
        attrs, shape, fault = spec["attrs"], tuple(spec["shape"]), spec.get("fault", {})
        kind = fault.get("kind")
        api = spec["api"]
        graph = api == "graph"
        state = build_state(spec["values"], shape, dt, attrs)
        grad = build_grad(spec["values"], shape, dt)
        used = {}
        s = StateSet(self, spec, dt, attrs, shape, state, fault, used, graph=graph)
        problems = hyper_problems(spec["hyper"], dt) + s.problems
        grad_arg = grad
        if kind == "grad_shape":
            grad_arg = dt.array(np.ones(fault["shape"]))
            problems.append(Problem("grad_shape", ["grad"], generic=GENERIC_SHAPE))
        passed, tracked, grad_arg = self.common_faults(kind, fault, problems, s, dt, shape, used,
                                                       grad, grad_arg)

        def call():
            if api == "raw" or (graph and not graph_wrapper(spec)):
                h = hyper_tensors(spec, dt, fault)
                g = grad_arg if isinstance(grad_arg, tf.Tensor) else tf.constant(grad_arg, dt.tf)
                return raw.apply_rm_sprop_x(var=passed[0].handle, slots=[t.handle for t in passed[1:]],
                                            **h, grad=g, **attrs)
            var, ms, kw = self.wrapper_variables(kind, fault, state, s.names, passed)
            if not attrs["use_momentum"]:
                kw.pop("mom", None)
            return tf_rmsprop_ops.apply_rmsprop_x(
                var, ms, grad_arg, **wrapper_hyper(spec, dt, fault), **kw,
                nesterov=attrs["nesterov"], epsilon_placement=attrs["epsilon_placement"],
                lr_placement=attrs["lr_placement"], weight_decay_mode=attrs["weight_decay_mode"],
                use_locking=attrs["use_locking"])

        got = self.outcome(spec, call, graph, problems, tracked, passed, s.names)
        if got is None:
            return
        hyper = effective_hyper(spec, dt)
        center = reference_step(state, grad, hyper, attrs)
        self.record_verdict(spec, check_step(got, state, grad, hyper, attrs, dt, center))


def graph_wrapper(spec):
    """Graph-mode cases call the public wrapper (its static index check) or the raw op."""
    return spec["values"]["seed"] % 2 == 1


def _in_graph(call):
    def run():
        call()  # traced: shape functions and static checks run here (ValueError/TypeError)

    return lambda: tf.function(run, autograph=False)()


def build_indices(spec):
    rng = np.random.default_rng([spec["values"]["seed"], 7])
    rows, n, pattern = spec["rows"], spec["n"], spec["pattern"]
    if rows == 0 or n == 0:
        idx = np.zeros(n, np.int64)
    elif pattern == "random":
        idx = rng.integers(0, rows, n)
    elif pattern == "unique":
        idx = rng.permutation(max(rows, n))[:n] % rows
    elif pattern == "sorted":
        idx = np.sort(rng.integers(0, rows, n))
    elif pattern == "all_same":
        idx = np.full(n, rng.integers(0, rows))
    else:
        idx = rng.choice(rng.integers(0, rows, 3), n)
    return idx.astype(np.int64)


class SparseRunner(Runner):
    def run(self, spec):
        dt = DTYPES[spec["dtype"]]
        attrs, fault = spec["attrs"], spec.get("fault", {})
        kind = fault.get("kind")
        api = spec["api"]
        graph = api == "graph"
        rows, row_shape, n = spec["rows"], tuple(spec["row_shape"]), spec["n"]
        var_shape = (rows,) + row_shape
        if kind == "scalar_var":
            var_shape = ()
        state = build_state(spec["values"], var_shape, dt, attrs)
        grad = build_grad(spec["values"], (n,) + row_shape, dt)
        indices = build_indices(spec)
        used = {}
        s = StateSet(self, spec, dt, attrs, var_shape, state, fault, used, graph=graph)
        problems = hyper_problems(spec["hyper"], dt) + s.problems
        grad_arg, idx_arg = grad, indices
        idt = np.int32 if spec["index_dtype"] == "int32" else np.int64
        if rows == 0 and n > 0 and kind != "scalar_var":
            problems.append(Problem("oob", ["indices[0] = 0 is not in [0, 0)"]))
        if kind == "oob":
            if n == 0:
                idx_arg = np.asarray([fault["value"]], np.int64)
                grad_arg = dt.array(np.ones((1,) + row_shape))
            else:
                idx_arg = indices.copy()
                idx_arg[min(fault["at"], n - 1)] = fault["value"]
            first = int(np.flatnonzero((idx_arg < 0) | (idx_arg >= rows))[0])
            problems.append(Problem("oob", [f"indices[{first}] = {idx_arg[first]}"]))
        if kind == "indices_rank":
            idx_arg = np.asarray(indices).reshape(-1, 1) if n else np.zeros((1, 0), np.int64)
            problems.append(Problem(kind, ["indices"], generic=GENERIC_SHAPE))
        if kind == "grad_rows":
            grad_arg = dt.array(np.ones((fault["rows"],) + row_shape))
            problems.append(Problem(kind, ["grad"], generic=GENERIC_SHAPE))
        if kind == "grad_row_shape":
            grad_arg = dt.array(np.ones((n,) + tuple(fault["shape"])))
            if tuple(fault["shape"]) != row_shape:
                problems.append(Problem(kind, ["grad"], generic=GENERIC_SHAPE))
        if kind == "grad_scalar":
            grad_arg = dt.array(1.0)
            problems.append(Problem(kind, ["grad"], generic=GENERIC_SHAPE))
        if kind == "scalar_var":
            problems.append(Problem(kind, ["var must have rank"], generic=GENERIC_SHAPE))
            if n > 0 or row_shape:
                problems.append(Problem("maybe", ["grad"], generic=GENERIC_SHAPE))
        if kind == "grad_shape":
            grad_arg = dt.array(np.ones(fault["shape"]))
            gs = tuple(fault["shape"])
            if len(gs) == 0:
                problems.append(Problem(kind, ["grad"], generic=GENERIC_SHAPE))
            elif gs[0] != len(idx_arg) or gs[1:] != row_shape:
                problems.append(Problem(kind, ["grad"], generic=GENERIC_SHAPE))
        passed, tracked, grad_arg = self.common_faults(kind, fault, problems, s, dt, var_shape,
                                                       used, grad, grad_arg)
        idx_arg = np.asarray(idx_arg).astype(idt)  # (int64-only values are drawn for int64)

        def call():
            if api == "raw" or (graph and not graph_wrapper(spec)):
                h = hyper_tensors(spec, dt, fault)
                g = grad_arg if isinstance(grad_arg, tf.Tensor) else tf.constant(grad_arg, dt.tf)
                return raw.sparse_apply_rm_sprop_x(
                    var=passed[0].handle, slots=[t.handle for t in passed[1:]], **h, grad=g,
                    indices=tf.constant(idx_arg), **attrs)
            var, ms, kw = self.wrapper_variables(kind, fault, state, s.names, passed)
            return tf_rmsprop_ops.sparse_apply_rmsprop_x(
                var, ms, grad_arg, idx_arg if idx_arg.size % 2 else list(idx_arg.tolist()),
                **wrapper_hyper(spec, dt, fault), **kw,
                nesterov=attrs["nesterov"], epsilon_placement=attrs["epsilon_placement"],
                lr_placement=attrs["lr_placement"], weight_decay_mode=attrs["weight_decay_mode"],
                use_locking=attrs["use_locking"])

        got = self.outcome(spec, call, graph, problems, tracked, passed, s.names)
        if got is None:
            return
        hyper = effective_hyper(spec, dt)
        self.record_verdict(spec, check_sparse(got, state, grad, indices, hyper, attrs, dt))


def sparse_center(state, grad, indices, hyper, attrs):
    """The reference's new state: reference.sparse_rmsprop_x_step (a Python loop over the
    unique rows), or for more than 8 rows the same: rmsprop_x_step on the gathered rows
    with the duplicates' gradient rows summed (faster, vectorised)."""
    uniq = np.unique(indices)
    if len(uniq) <= 8:
        h = dict(hyper)
        if SABOTAGE_LR:
            h["lr"] = h["lr"] * (1 + SABOTAGE_LR)
        f64 = {k: None if v is None else np.asarray(v, np.float64) for k, v in state.items()}
        return reference.sparse_rmsprop_x_step(
            f64["var"], np.asarray(grad, np.float64), indices, f64["ms"], f64.get("mom"),
            f64.get("mg"), **h, nesterov=attrs["nesterov"],
            epsilon_placement=attrs["epsilon_placement"], lr_placement=attrs["lr_placement"],
            weight_decay_mode=attrs["weight_decay_mode"])
    g = np.zeros((len(uniq),) + grad.shape[1:])
    np.add.at(g, np.searchsorted(uniq, indices), np.asarray(grad, np.float64))
    rows_state = {k: None if v is None else np.asarray(v, np.float64)[uniq] for k, v in state.items()}
    new = reference_step(rows_state, g, hyper, attrs)
    out = {}
    for k, v in state.items():
        if v is None:
            out[k] = None
            continue
        full = np.asarray(v, np.float64).copy()
        full[uniq] = new[k]
        out[k] = full
    return out


def check_sparse(got, state, grad, indices, hyper, attrs, dt, verdict=None, what=""):
    verdict = verdict or Verdict()
    center = sparse_center(state, grad, indices, hyper, attrs)
    rows = state["var"].shape[0] if state["var"].ndim else 0
    untouched = np.setdiff1d(np.arange(rows), indices)
    for n, v in got.items():  # rows not named: bit-identical, slots included
        if np.asarray(v)[untouched].tobytes() != np.asarray(state[n])[untouched].tobytes():
            verdict.ok = False
            verdict.detail = dict(what=f"{what}{n}: an untouched row changed")
            return verdict
    if len(indices) == 0 or grad.size == 0:
        return verdict
    uniq, inverse, counts = np.unique(indices, return_inverse=True, return_counts=True)
    gsum = np.zeros((len(uniq),) + grad.shape[1:])
    np.add.at(gsum, inverse, np.asarray(grad, np.float64))
    gerr, gerr_ftz = _sum_errors(grad, inverse, counts, len(uniq), dt)
    sub_state = {k: None if v is None else np.asarray(v)[uniq] for k, v in state.items()}
    sub_got = {k: np.asarray(v)[uniq] for k, v in got.items()}
    sub_center = {k: None if v is None else v[uniq] for k, v in center.items()}
    return check_step(sub_got, sub_state, gsum, hyper, attrs, dt, sub_center, grad_err=gerr,
                      rows=uniq, verdict=verdict, what=what, grad_err_ftz=gerr_ftz)


def _sum_errors(grad, inverse, counts, n_unique, dt):
    """Error bounds of the kernel's sums of duplicated rows (in the compute type, in input
    order): (k - 1) u sum|g| for k rows; with flush-to-zero also every subnormal row element
    (read as 0) and a flushed partial sum per addition."""
    g64 = np.abs(np.asarray(grad, np.float64))
    fi = np.finfo(dt.compute)
    u, tiny = float(fi.eps) / 2, float(fi.smallest_normal)
    shape = (n_unique,) + grad.shape[1:]
    gabs, sub = np.zeros(shape), np.zeros(shape)
    np.add.at(gabs, inverse, g64)
    np.add.at(sub, inverse, np.where(g64 < tiny, g64, 0.0))
    k = (counts - 1).reshape((-1,) + (1,) * (grad.ndim - 1))
    err = np.where(k > 0, _pm(k * u, gabs), 0.0)
    # a partial sum may overflow where the whole does not: then the bound does not hold
    err = np.where((k > 0) & (gabs > float(fi.max)), np.inf, err)
    return err, err + np.where(k > 0, sub + k * tiny, 0.0)


class MultiRunner(Runner):
    def run(self, spec):
        dt = DTYPES[spec["dtype"]]
        attrs, fault = spec["attrs"], spec.get("fault", {})
        kind = fault.get("kind")
        api = spec["api"]
        shapes = [tuple(s) for s in spec["shapes"]]
        n = len(shapes)
        used = {}
        sets, states, grads = [], [], []
        problems = hyper_problems(spec["hyper"], dt)
        for i, shape in enumerate(shapes):
            state = build_state(spec["values"][i], shape, dt, attrs, salt=i)
            grad = build_grad(spec["values"][i], shape, dt, salt=i)
            s = StateSet(self, dict(spec, _i=i), dt, attrs, shape, state, fault, used,
                         label=f"vars[{i}]/")
            problems += s.problems
            sets.append(s)
            states.append(state)
            grads.append(grad)
        names = slot_names(attrs)
        var_list = [s.tracked["var"] for s in sets]
        slot_lists = [[s.tracked[nm] for nm in names] for s in sets]
        grad_args = list(grads)
        i = fault.get("i", 0)
        if kind == "duplicate_var":
            var_list[fault["j"]] = var_list[i]
            problems.append(Problem(kind, ["same variable"]))
        if kind == "var_as_slot":
            slot_lists[i][fault["slot"]] = var_list[fault["j"]]
            problems.append(Problem(kind, ["same variable"]))
        if kind == "shared_slot":
            slot_lists[fault["j"]][fault["slot"]] = slot_lists[i][fault["slot"]]
            problems.append(Problem(kind, ["same variable"]))
        if kind == "grad_shape":
            grad_args[i] = dt.array(np.ones(fault["shape"]))
            problems.append(Problem(kind, [f"grads[{i}]"], generic=GENERIC_SHAPE))
        if kind == "grad_dtype":
            odt = DTYPES[fault["dtype"]]
            grad_args[i] = tf.constant(odt.array(np.asarray(grads[i], np.float64)), odt.tf)
            problems.append(Problem(kind, ["grad", "dtype"], generic=GENERIC_TYPE))
        if kind == "hyper_dtype":
            problems.append(Problem(kind, [fault["name"], "dtype"], generic=GENERIC_TYPE))
        if kind == "hyper_nonscalar":
            problems.append(Problem(kind, [f"{fault['name']} must be a scalar"], generic=GENERIC_SHAPE))
        if kind == "nesterov_without_momentum":
            problems.append(Problem(kind, ["nesterov"]))
        if kind == "grads_count":
            if fault["delta"] < 0:
                grad_args = grad_args[:-1]
            else:
                grad_args = grad_args + [grads[-1]]
            problems.append(Problem(kind, ["grads", "gradient"], generic=("inputs specified",)))
        flat_slots = [t for group in slot_lists for t in group]
        num_slots_attr = len(names)
        if kind == "slots_count":
            if fault["delta"] < 0:
                flat_slots = flat_slots[:-1]
                slot_lists[-1] = slot_lists[-1][:-1]
            else:
                extra = self.pool.take(dt.name, 1, used)[0]
                arr = dt.array(np.full(shapes[-1], 0.25))
                assign(extra, arr)
                t = Tracked(extra, arr, label="extra slot")
                flat_slots = flat_slots + [t]
                slot_lists[-1] = slot_lists[-1] + [t]
            problems.append(Problem(kind, ["slots", "slot"]))
        if kind == "slot_count":  # the num_slots attr disagrees with centered/use_momentum
            num_slots_attr = len(names) + fault["delta"]
            if num_slots_attr < 1:
                num_slots_attr = len(names) + 1
            problems.append(Problem(kind, ["slot"], generic=("num_slots",)))
        tracked = _tracked_unique(var_list + flat_slots)
        self.stats.problem_kinds.update(p.kind for p in problems)

        def call():
            if api == "raw":
                h = hyper_tensors(spec, dt, fault)
                gs = [g if isinstance(g, tf.Tensor) else tf.constant(g, dt.tf) for g in grad_args]
                return raw.apply_rm_sprop_x_multi(
                    vars=[t.handle for t in var_list], slots=[t.handle for t in flat_slots], **h,
                    grads=gs, num_slots=num_slots_attr, **attrs)
            return tfx_ops.apply_rmsprop_x_multi(
                [t.variable for t in var_list], [[t.variable for t in g] for g in slot_lists],
                grad_args, **wrapper_hyper(spec, dt, fault), **attrs)

        exc = outcome_of(call)
        if exc is not None:
            return self.judge_rejection(spec, exc, problems, tracked)
        if not self.accepted(spec, problems):
            return
        hyper = effective_hyper(spec, dt)
        # Every variable, flattened and concatenated: one reference and bound evaluation.
        got, state, grad = {}, {}, []
        for nm in ["var"] + names:
            got[nm] = np.concatenate([read(s.tracked[nm].variable).reshape(-1) for s in sets])
            state[nm] = np.concatenate([st[nm].reshape(-1) for st in states])
        for nm in ("mom", "mg"):
            state.setdefault(nm, None)
        grad = np.concatenate([g.reshape(-1) for g in grads])
        self.stats.c["checked_elements"] += sum(int(np.size(v)) for v in got.values())
        center = reference_step(state, grad, hyper, attrs)
        verdict = check_step(got, state, grad, hyper, attrs, dt, center)
        if not verdict.ok:  # name the variable of the first bad element
            offsets = np.cumsum([0] + [int(np.prod(sh)) for sh in shapes])
            for ex in verdict.detail["examples"]:
                k = int(np.searchsorted(offsets, ex["index"][0], side="right")) - 1
                ex["variable"] = f"vars[{k}]"
                ex["index"] = [int(ex["index"][0] - offsets[k])]
        self.record_verdict(spec, verdict)


# ---- the optimizer ---------------------------------------------------------------------------

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


class OptimizerRunner(Runner):
    def run(self, spec):
        st = self.stats
        c = spec["ctor"]
        bad = optimizer_ctor_problems(c)
        st.problem_kinds.update(f"ctor:{b}" for b in bad)
        cls = tfx_keras.RMSpropX if spec.get("keras") else tf_rmsprop_ops.RMSpropX
        st.c["keras_cases" if spec.get("keras") else "module_cases"] += 1
        try:
            opt = cls(**c)
        except ValueError as e:
            st.c["rejected"] += 1
            if not bad:
                st.violation("unexpected_rejection", spec, error="ValueError", message=str(e)[:400])
            elif not any(b in str(e) for b in bad):
                st.violation("message_missing_name", spec, message=str(e)[:400], expected=bad)
            return
        except Exception as e:  # noqa: BLE001 - any other error type breaks the contract
            st.violation("wrong_error_type", spec, error=type(e).__name__, message=str(e)[:400],
                         expected=bad)
            return
        if bad:
            st.violation("accepted_invalid", spec, problems=[f"{b}={c[b]!r}" for b in bad])
            return
        self.trajectory(spec, opt)

    def trajectory(self, spec, opt):
        st = self.stats
        c = spec["ctor"]
        rng = np.random.default_rng(spec["seed"])
        use_momentum = c["momentum"] > 0 or c["nesterov"]
        attrs = dict(centered=c["centered"], use_momentum=use_momentum, nesterov=c["nesterov"],
                     epsilon_placement=c["epsilon_placement"], lr_placement=c["lr_placement"],
                     weight_decay_mode=c["weight_decay_mode"] if c["weight_decay"] else "none")
        variables, dts, states = [], [], []
        for k, vs in enumerate(spec["variables"]):
            dt = DTYPES[vs["dtype"]]
            init = dt.array(rng.uniform(-2, 2, vs["shape"]))
            variables.append(keras.Variable(init, dtype=dt.tf.name, name=f"v{k}")
                             if spec.get("keras") else tf.Variable(init, name=f"v{k}"))
            dts.append(dt)
            states.append({"var": init, "ms": dt.array(np.full(vs["shape"], c["initial_scale"])),
                           "mom": dt.array(np.zeros(vs["shape"])) if use_momentum else None,
                           "mg": dt.array(np.zeros(vs["shape"])) if c["centered"] else None})
        lr32 = float(np.float32(c["learning_rate"]))
        # The slots start at initial_scale (ms) and 0, as the variable's dtype holds them.
        if outcome_of(lambda: opt.build(variables)) is None:
            for k, v in enumerate(variables):
                for nm in ("ms", "mom", "mg"):
                    if states[k][nm] is None:
                        continue
                    actual = opt.get_slot(v, nm).numpy()
                    if actual.tobytes() != states[k][nm].tobytes():
                        st.violation("slot_initial_value", spec, variable=f"v{k}/{nm}",
                                     dtype=dts[k].name, expected=_preview(states[k][nm]),
                                     actual=_preview(actual))
                        states[k][nm] = actual  # go on from what the optimizer holds
        fault = spec.get("fault")
        for step in range(1, spec["steps"] + 1):
            fk = fault["kind"] if fault and fault["step"] == step else None
            fvar = fault["var"] if fk else -1
            if fk == "oob" and not spec["variables"][fvar]["sparse"]:
                sparse_ids = [k for k, vs in enumerate(spec["variables"]) if vs["sparse"]]
                fk, fvar = ("oob", sparse_ids[0]) if sparse_ids else ("grad_shape", fvar)
            if fk:
                st.problem_kinds[f"step:{fk}"] += 1
            if fk == "setter":
                self.bad_setter(spec, opt, fault["setter"], fault["value"])
            problems = []
            grads, grad_args = [], []
            for k, vs in enumerate(spec["variables"]):
                dt, shape = dts[k], tuple(vs["shape"])
                mine = fk if k == fvar else None
                scale = {"normal": 1.0, "scaled": 10.0 ** rng.uniform(-4, 4), "zeros": 0.0}[spec["grad"]]
                if vs["sparse"]:
                    m = int(rng.integers(0, 2 * shape[0] + 1))
                    idx = rng.integers(0, shape[0], m)
                    if mine == "oob":
                        bad = -1 if fault["below"] else shape[0]
                        idx = np.insert(idx, int(rng.integers(0, m + 1)), bad)
                        m += 1
                        # A step of several variables is checked whole first; one variable
                        # goes straight to the op, whose check names the index.
                        problems.append(Problem("oob", ["outside [0, rows)", "is not in [0, "]))
                    vals = dt.array(rng.uniform(-1, 1, (m,) + shape[1:]) * scale)
                else:
                    idx = None
                    vals = dt.array(rng.uniform(-1, 1, shape) * scale)
                if mine == "grad_nonfinite" and vals.size:
                    vals.reshape(-1)[int(rng.integers(0, vals.size))] = {
                        "nan": math.nan, "inf": math.inf, "-inf": -math.inf}[fault["special"]]
                grads.append((vals, idx))
                values_dt = dt
                if mine == "grad_dtype":
                    values_dt = DTYPES[fault["dtype"]]  # drawn different from dt
                    passed_vals = values_dt.array(np.asarray(vals, np.float64))
                    if spec.get("keras"):  # Keras casts the gradient to the variable's dtype
                        grads[-1] = (dt.array(np.asarray(passed_vals, np.float64)), idx)
                    else:
                        problems.append(Problem("grad_dtype", [f"variable v{k}"]))
                else:
                    passed_vals = vals
                if mine == "grad_shape":
                    wrong = tuple(shape) + (2,)
                    grad_args.append(tf.constant(dt.array(rng.uniform(-1, 1, wrong)), dt.tf))
                    problems.append(Problem("grad_shape", [f"v{k}"]))
                elif idx is not None:
                    grad_args.append(tf.IndexedSlices(tf.constant(passed_vals, values_dt.tf),
                                                      tf.constant(idx),
                                                      tf.constant(shape, tf.int64)))
                else:
                    grad_args.append(tf.constant(passed_vals, values_dt.tf))
            before = [dict(s) for s in states]
            # What each op receives, as the variable's dtype holds it (lr: the optimizer's
            # float32 variable, cast); bias correction folds c = 1 - rho**t into them.
            hypers, herrs = [], []
            for k, dt in enumerate(dts):
                h = dict(lr=float(dt.round(flushed_cast(lr32, dt))), rho=float(dt.round(c["rho"])),
                         momentum=float(dt.round(c["momentum"])), epsilon=float(dt.round(c["epsilon"])),
                         weight_decay=float(dt.round(c["weight_decay"] or 0.0)))
                herr = {name: 2 * float(dt.ulp(v)) for name, v in h.items()}
                if c["bias_correction"]:
                    # _apply.fold_bias_correction, in float32 as the optimizer computes it:
                    # c = 1 - rho**t, lr*sqrt(c), eps*c (inside) or eps*sqrt(c), wd/sqrt(c).
                    # The reference uses c from rho as T holds it: the difference of the two
                    # c (and float32's rounding of c's cancellation) goes into the bound.
                    f32 = np.float32
                    c32 = f32(1) - f32(c["rho"]) ** f32(step)
                    root = np.sqrt(c32)
                    c_ref = 1.0 - h["rho"] ** step
                    dc = (abs(c_ref - float(c32)) + 4 * 2.0 ** -24) / max(c_ref, 1e-300)
                    wd = c["weight_decay"] or 0.0
                    folded = dict(
                        lr=(f32(lr32) * root, 0.5 * dc),
                        epsilon=(f32(f32(c["epsilon"]) * (c32 if c["epsilon_placement"] == "inside_sqrt"
                                                          else root)),
                                 dc if c["epsilon_placement"] == "inside_sqrt" else 0.5 * dc))
                    if attrs["weight_decay_mode"] == "decoupled":
                        folded["weight_decay"] = (f32(wd) / root, 0.5 * dc)
                    for name, (v, rel) in folded.items():
                        r = float(dt.round(flushed_cast(float(v), dt)))
                        h[name] = r
                        herr[name] = 2 * float(dt.ulp(r)) + (rel + 2.0 ** -22) * abs(r)
                hypers.append(h)
                herrs.append(herr)
                for name in HYPER_NAMES:
                    if not math.isfinite(h[name]):
                        problems.append(Problem(f"hyper:{name}", [f"{name} must"]))
            tracked = []
            for k, v in enumerate(variables):
                tracked.append(Tracked(v, before[k]["var"], label=f"v{k}"))
                for nm in ("ms", "mom", "mg"):
                    if before[k][nm] is not None and opt.built:
                        tracked.append(Tracked(opt.get_slot(v, nm), before[k][nm], label=f"v{k}/{nm}"))
            iterations = int(opt.iterations.numpy())
            exc = outcome_of(lambda: opt.apply_gradients(zip(grad_args, variables)))
            st.c["apply_calls"] += 1
            if exc is not None:
                self.judge_rejection(spec, exc, problems, tracked)
                if int(opt.iterations.numpy()) != iterations:
                    st.violation("state_changed", spec, variable="iterations")
                return
            if not self.accepted(spec, problems):
                return
            verdict = Verdict()
            for k, v in enumerate(variables):
                got = {"var": v.numpy()}
                for nm in ("ms", "mom", "mg"):
                    if before[k][nm] is not None:
                        got[nm] = opt.get_slot(v, nm).numpy()
                g, idx = grads[k]
                what = f"step {step} v{k} "
                st.c["checked_elements"] += sum(int(np.size(x)) for x in got.values())
                bias_step = step if c["bias_correction"] else None
                if idx is None:
                    h = dict(hypers[k])
                    center = reference_step(before[k], g, self._unfolded(h, c, dts[k], lr32, attrs),
                                            attrs, bias_step)
                    check_step(got, before[k], g, h, attrs, dts[k], center, hyper_err=herrs[k],
                               verdict=verdict, what=what)
                else:
                    check_sparse_opt(got, before[k], g, idx, hypers[k], herrs[k], attrs, dts[k],
                                     self._unfolded(hypers[k], c, dts[k], lr32, attrs), bias_step,
                                     verdict, what)
                if not verdict.ok:
                    break
                states[k] = {nm: got.get(nm) for nm in ("var", "ms", "mom", "mg")}
            self.record_verdict(spec, verdict)
            if not verdict.ok:
                return

    def bad_setter(self, spec, opt, name, value):
        """A setter given an invalid value: ValueError naming it, the value unchanged."""
        st = self.stats

        def current():
            v = getattr(opt, name)
            return None if v is None else np.asarray(v, np.float64).tobytes()

        was = current()
        try:
            setattr(opt, name, value)
        except ValueError as e:
            st.c["rejected"] += 1
            if name not in str(e):
                st.violation("message_missing_name", spec, message=str(e)[:400], expected=[name])
        except Exception as e:  # noqa: BLE001 - any other error type breaks the contract
            st.violation("wrong_error_type", spec, error=type(e).__name__, message=str(e)[:400],
                         expected=[name])
        else:
            st.violation("accepted_invalid", spec, problems=[f"setter {name}={value!r}"])
        if current() != was:
            st.violation("state_changed", spec, variable=f"optimizer.{name}")

    @staticmethod
    def _unfolded(h, c, dt, lr32, attrs):
        """The hyperparameters for the reference (which applies bias correction itself).
        With bias correction the op receives the folded values (lr*sqrt(c), ...) rounded to
        T, not lr itself: the reference starts from the float32 values the optimizer folds
        (lr=1e5 is inf as a half, lr*sqrt(c) need not be)."""
        if not c["bias_correction"]:
            return dict(h)
        rnd = np.float32 if dt.compute != dt.np else dt.round  # 16-bit: the float32 values
        unfolded = dict(lr=float(rnd(lr32)), epsilon=float(rnd(c["epsilon"])),
                        weight_decay=float(rnd(c["weight_decay"] or 0.0)))
        # A folded value the cast flushed to 0 (see flushed_cast) is 0 for the reference too.
        return dict(h, **{n: 0.0 if h[n] == 0 else v for n, v in unfolded.items()})


def flushed_cast(x, dt):
    """A float32 tensor value (the learning-rate variable, a folded scalar) as tf.cast hands
    it to an op of dtype `dt`: TensorFlow's CPU kernels run with denormals-are-zero, so a
    float32 subnormal becomes (signed) 0 in any other dtype."""
    if dt.name != "float32" and x != 0 and abs(x) < float(np.finfo(np.float32).tiny):
        return math.copysign(0.0, x)
    return x


def check_sparse_opt(got, state, grad, indices, h, herr, attrs, dt, h_ref, bias_step, verdict, what):
    """A sparse optimizer step: the reference per row (bias correction included)."""
    if bias_step is None:
        return check_sparse(got, state, grad, indices, h, attrs, dt, verdict, what)
    uniq = np.unique(indices)
    rows = state["var"].shape[0]
    untouched = np.setdiff1d(np.arange(rows), indices)
    for n, v in got.items():
        if np.asarray(v)[untouched].tobytes() != np.asarray(state[n])[untouched].tobytes():
            verdict.ok = False
            verdict.detail = dict(what=f"{what}{n}: an untouched row changed")
            return verdict
    if len(indices) == 0:
        return verdict
    uniq, inverse, counts = np.unique(indices, return_inverse=True, return_counts=True)
    g = np.zeros((len(uniq),) + grad.shape[1:])
    np.add.at(g, inverse, np.asarray(grad, np.float64))
    gerr, gerr_ftz = _sum_errors(grad, inverse, counts, len(uniq), dt)
    sub = {k: None if v is None else np.asarray(v)[uniq] for k, v in state.items()}
    center = reference_step(sub, g, h_ref, attrs, bias_step)
    return check_step({k: np.asarray(v)[uniq] for k, v in got.items()}, sub, g, h, attrs, dt, center,
                      grad_err=gerr, hyper_err=herr, rows=uniq, verdict=verdict, what=what,
                      grad_err_ftz=gerr_ftz)


RUNNERS = {"dense": DenseRunner, "sparse": SparseRunner, "multi": MultiRunner,
           "optimizer": OptimizerRunner}


# ---- main ------------------------------------------------------------------------------------

class Trace:
    def __init__(self, path):
        self.f = open(path, "w") if path else None

    def write(self, spec):
        if self.f:
            self.f.seek(0)
            self.f.write(json.dumps(spec) + "\n")
            self.f.truncate()
            self.f.flush()


def run_one(runner, spec, trace, hypothesis_drawn=False):
    trace.write(spec)
    runner.stats.c["calls"] += 1
    runner.stats.c["hypothesis_calls"] += int(hypothesis_drawn)
    try:
        runner.run(spec)
    except Exception:  # noqa: BLE001 - a bug of this harness: report it, go on
        runner.stats.violation("harness_error", spec, traceback=traceback.format_exc()[-2000:])


def run_family(family, seed, count, trace_path=None):
    stats = Stats(family)
    runner = RUNNERS[family](stats)
    trace = Trace(trace_path)
    share = float(os.environ.get("TF_RMSPROP_OPS_PROPERTY_HYPOTHESIS_SHARE", "0.1"))
    n_hyp = int(round(count * share))
    start = time.time()
    gen = GENERATORS[family]
    rng = np.random.default_rng([seed, zlib.crc32(family.encode())])
    for _ in range(count - n_hyp):
        spec = gen(NumpyDrawer(rng))
        run_one(runner, spec, trace)
    if n_hyp:
        from hypothesis import HealthCheck, Phase, given, settings, strategies as st
        from hypothesis import seed as hypothesis_seed

        @hypothesis_seed(seed)
        @settings(max_examples=n_hyp, deadline=None, database=None, derandomize=False,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @given(st.data())
        def prop(data):
            run_one(runner, gen(HypothesisDrawer(data)), trace, hypothesis_drawn=True)

        prop()
    return stats.summary(time.time() - start)


def main(argv):
    if argv and argv[0] == "replay":
        spec = json.loads(argv[1])
        stats = Stats(spec["family"])
        runner = RUNNERS[spec["family"]](stats)
        run_one(runner, spec, Trace(None))
        print(json.dumps(stats.summary(0.0), indent=1, default=str))
        return 1 if stats.c["violations"] else 0
    family, seed, count = argv[0], int(argv[1]), int(argv[2])
    trace = argv[argv.index("--trace") + 1] if "--trace" in argv else None
    if family not in FAMILIES:
        raise SystemExit(f"unknown family {family!r}: one of {FAMILIES}")
    summary = run_family(family, seed, count, trace)
    print("PROPERTY_SUMMARY " + json.dumps(summary, default=str), flush=True)
    return 1 if summary["violations"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
