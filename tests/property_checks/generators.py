"""The random calls. Two drawers behind one interface: NumpyDrawer (a seeded NumPy generator,
fast) and HypothesisDrawer (hypothesis' `data()`: boundary-seeking floats and integers); the
draws of a spec's parts (attrs, hyperparameters, values, shapes); the spec of each family
(GENERATORS: gen_dense, gen_sparse, gen_multi, gen_optimizer; their faults drawn with
faults.py); and the arrays a spec stands for (build_state, build_grad, build_indices: seeded
by the spec's values, so that `replay` rebuilds them)."""
import bisect
import functools
import itertools
import math

import numpy as np

from .faults import (MULTI_FAULTS, OPTIMIZER_FAULTS, SETTER_NAMES, SPARSE_FAULTS, gen_fault,
                     gen_fault_detail, other_dtype, perturb_shape)
from .spec import (DTYPE_NAMES, DTYPES, EPS_PLACEMENTS, HYPER_NAMES, LR_PLACEMENTS, WD_MODES,
                   slot_names)


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
