"""Numerical edge cases (issue 17 item 3) and hyperparameter validation (item 2).

a. The centered variance ms - mg**2 rounds below zero in float32: clamped to 0, never NaN.
b. float16 / bfloat16 gradients near the dtype's maximum: float32 intermediates, one
   rounding at the end (ms may round to inf in storage).
c. inf / NaN gradients: IEEE propagation per element, every other element unaffected
   (and an infinite step from finite inputs, epsilon = 0 and ms = 0: -inf, not NaN).
d. Hyperparameter values: NaN/inf, lr/momentum/epsilon/weight_decay < 0 and rho outside
   [0, 1] are InvalidArgumentError on CPU (nothing written) and at compile time under XLA
   for constants; a bad run-time value under XLA makes var NaN and keeps the slots. Valid
   edge values (0, -0, rho = 1, subnormal, huge) follow the reference. A negative
   subnormal counts as 0 on every backend (the CPU kernels read it as -0); the smallest
   negative normal is rejected. The optimizer raises ValueError naming the argument.

CPU and XLA (tf.function(jit_compile=True)) both. To keep XLA compilations few, one
function updates a separate set of variables for every variant, and XLA runs a covering
subset of the variants (COVERING); test_nonfinite_every_variant_under_xla (slow) runs all.
"""
import math
import re

import numpy as np
import pytest
import tensorflow as tf

from helpers import (RTOL, VARIANTS, Variant, make_variables, random_hyper, random_state,
                     reference_dense, reference_sparse, round_to, slot_kwargs, values)
import tf_rmsprop_ops
from tf_rmsprop_ops import RMSpropX, ops, reference

F32 = np.float32


# ---- running many cases (one variant each) on CPU or in one XLA computation ------------------

def _apply(kind, variables, case, dtype, hyper=None):
    """One op call of `kind` on a case's variables (var, ms[, mom][, mg]) or, for "multi",
    on a list of them."""
    variant, hyper = case["variant"], hyper or case["hyper"]
    if kind == "dense":
        slots = slot_kwargs(variables)
        return tf_rmsprop_ops.apply_rmsprop_x(
            variables["var"], slots.pop("ms"), tf.constant(case["grad"], dtype), **slots,
            **hyper, **variant.op_kwargs())
    if kind == "sparse":
        slots = slot_kwargs(variables)
        return tf_rmsprop_ops.sparse_apply_rmsprop_x(
            variables["var"], slots.pop("ms"), tf.constant(case["grad"], dtype),
            tf.constant(case["indices"]), **slots, **hyper, **variant.op_kwargs())
    return ops.apply_rmsprop_x_multi(
        [v["var"] for v in variables],
        [[v[k] for k in ("ms", "mom", "mg") if k in v] for v in variables],
        [tf.constant(g, dtype) for g in case["grad"]], use_momentum=variant.momentum,
        centered=variant.centered, **hyper, **variant.op_kwargs())


def _jit(fn):
    """fn (no arguments) as one XLA computation."""
    @tf.function(jit_compile=True, autograph=False)
    def run():
        fn()
    return run


def _make(kind, case, dtype):
    if kind == "multi":
        return [make_variables(s, dtype) for s in case["states"]]
    return make_variables(case["state"], dtype)


def _read(kind, variables):
    return [values(v) for v in variables] if kind == "multi" else values(variables)


def _run_cases(kind, cases, dtype, jit):
    """Applies every case to its own fresh variables: eagerly, or all in one XLA function.
    Returns each case's variables' values after the update."""
    all_vars = [_make(kind, c, dtype) for c in cases]
    if jit:
        _jit(lambda: [_apply(kind, variables, case, dtype)
                      for variables, case in zip(all_vars, cases)])()
    else:
        for variables, case in zip(all_vars, cases):
            _apply(kind, variables, case, dtype)
    return [_read(kind, v) for v in all_vars]


def _reference(kind, case):
    with np.errstate(all="ignore"):  # NaN and inf inputs are the point of some cases
        return _reference_unchecked(kind, case)


def _reference_unchecked(kind, case):
    if kind == "dense":
        return reference_dense(case["state"], case["variant"], case["hyper"])
    if kind == "sparse":
        return reference_sparse(case["state"], case["grad"], case["indices"], case["variant"],
                                case["hyper"])
    return [reference_dense(s, case["variant"], case["hyper"]) for s in case["states"]]


def _scale(*states):
    """The magnitude of a case's state (not its gradient; finite values): the absolute
    floor of the tolerance, as an element where two terms cancel keeps their rounding."""
    mags = [1.0]
    for st in states:
        for k in ("var", "ms", "mom", "mg"):
            x = st.get(k)
            if x is not None and np.size(x):
                x = np.abs(np.asarray(x, np.float64))
                mags.append(float(np.max(x, where=np.isfinite(x), initial=0.0)))
    return max(mags)


def _matches(actual, expected, rtol, scale):
    """Per element: both NaN, the same infinity, or both finite and within rtol (relative,
    with an absolute floor of rtol * scale)."""
    with np.errstate(invalid="ignore"):
        close = (np.isfinite(expected) & np.isfinite(actual) &
                 (np.abs(actual - expected) <= rtol * (np.abs(expected) + scale)))
        both_nan = np.isnan(actual) & np.isnan(expected)
        return both_nan | (np.isinf(expected) & (actual == expected)) | close


def _assert_ieee_equal(got, want, rtol, scale, what="", alternative=None):
    """Every output equals the reference per element in the IEEE sense of `_matches` (NaN
    where it has NaN, its infinities, its finite values within rtol). With `alternative`
    (another reference), an element may instead match that one (all its outputs jointly).
    `scale`: a number, or one per output."""
    names = [k for k, v in want.items() if v is not None]
    assert sorted(got) == sorted(names), f"{what}outputs {sorted(got)} != {sorted(names)}"

    def joint(ref):
        ok = np.ones(np.shape(got["var"]), bool)
        for k in names:
            ok &= _matches(got[k], ref[k], rtol, scale[k] if isinstance(scale, dict) else scale)
        return ok

    ok = joint(want) | (joint(alternative) if alternative is not None else False)
    if not ok.all():
        i = np.unravel_index(np.flatnonzero(~ok)[0], ok.shape)
        detail = {k: (got[k][i], want[k][i]) + ((alternative[k][i],) if alternative else ())
                  for k in names}
        raise AssertionError(f"{what}{int((~ok).sum())} of {ok.size} elements differ from the "
                             f"reference, e.g. element {i} (got, want): {detail}")


# ---- a. the centered variance clamp -----------------------------------------------------------

RHO32 = F32(0.9)


def _negative_variance_inputs(rng, n):
    """float32 (ms0, mg0, g) of a consistent state (ms0 >= mg0**2 exactly) and g within
    2**-10 of mg0, where the header's float32 order ms = rho*ms + (1-rho)*(g*g); mg = rho*mg
    + (1-rho)*g; v = ms - mg*mg gives v < 0. Kept only where a compiler's fused
    multiply-adds would give the same ms and mg bits (either product fused into either sum)
    and a negative v too (mg*mg fused into the subtraction: v = ms - exact mg**2), so the
    expected bits do not depend on the build. Returns ms0, mg0, g, ms, mg, v."""
    def f64(x):
        return np.asarray(x, np.float64)

    rho, omr = RHO32, F32(1) - RHO32
    picked, count = [], 0
    while count < n:
        size = 8192
        mg0 = (rng.choice([-1, 1], size) * rng.uniform(0.1, 8, size)).astype(F32)
        exact = f64(mg0) ** 2
        ms0 = exact.astype(F32)
        ms0 = np.where(f64(ms0) < exact, np.nextafter(ms0, F32(np.inf)), ms0)
        g = (f64(mg0) * (1 + rng.uniform(-1, 1, size) * 2.0 ** -rng.integers(10, 16, size))
             ).astype(F32)
        ms_terms, mg_terms = (rho * ms0, omr * (g * g)), (rho * mg0, omr * g)
        ms, mg = ms_terms[0] + ms_terms[1], mg_terms[0] + mg_terms[1]
        fused_ms = [(f64(rho) * f64(ms0) + f64(ms_terms[1])).astype(F32),
                    (f64(omr) * f64(g * g) + f64(ms_terms[0])).astype(F32)]
        fused_mg = [(f64(rho) * f64(mg0) + f64(mg_terms[1])).astype(F32),
                    (f64(omr) * f64(g) + f64(mg_terms[0])).astype(F32)]
        same = np.all([x == ms for x in fused_ms] + [x == mg for x in fused_mg], axis=0)
        v = ms - mg * mg
        keep = same & (v < 0) & (f64(ms) - f64(mg) ** 2 < 0)
        picked.append((ms0[keep], mg0[keep], g[keep], ms[keep], mg[keep], v[keep]))
        count += int(keep.sum())
    return [np.concatenate(parts)[:n] for parts in zip(*picked)]


@pytest.mark.parametrize("epsilon_placement", ["inside_sqrt", "outside_sqrt"])
@pytest.mark.parametrize("jit", [False, True], ids=["cpu", "xla"])
def test_centered_variance_rounding_below_zero_is_clamped(epsilon_placement, jit, rng):
    ms0, mg0, g, ms_want, mg_want, v32 = _negative_variance_inputs(rng, 257)
    assert np.all(v32 < 0)
    var0 = rng.uniform(-2, 2, g.shape).astype(F32)
    # Denominators with v clamped to 0: sqrt(0 + 2**-40) = 2**-20, or sqrt(0) + 2**-10.
    # Both exact; lr makes lr * g / denom = g * 2**-10 exact, so var has one rounding.
    if epsilon_placement == "inside_sqrt":
        eps, lr, denom = 2.0 ** -40, 2.0 ** -30, F32(2.0 ** -20)
        # Without the clamp: v + eps < 0, sqrt gives NaN.
        with np.errstate(invalid="ignore"):
            assert np.all(np.isnan(np.sqrt(v32 + F32(eps))))
    else:
        eps, lr, denom = 2.0 ** -10, 2.0 ** -20, F32(2.0 ** -10)
        with np.errstate(invalid="ignore"):
            assert np.all(np.isnan(np.sqrt(v32)))
    var_want = var0 - F32(lr) * (g / denom)
    hyper = dict(lr=lr, rho=float(RHO32), epsilon=eps)
    variables = {"var": tf.Variable(var0), "ms": tf.Variable(ms0), "mg": tf.Variable(mg0)}

    @tf.function(jit_compile=jit, autograph=False)
    def step():
        tf_rmsprop_ops.apply_rmsprop_x(variables["var"], variables["ms"], tf.constant(g),
                                       mg=variables["mg"], epsilon_placement=epsilon_placement,
                                       **hyper)

    step()
    got = {k: v.numpy() for k, v in variables.items()}
    assert not np.any(np.isnan(got["var"]))
    np.testing.assert_array_equal(got["ms"], ms_want)
    np.testing.assert_array_equal(got["mg"], mg_want)
    np.testing.assert_array_equal(got["var"], var_want)
    # The float64 reference: the same inputs have a variance >= 0 (it is rounding that
    # made float32's negative).
    ref = reference.rmsprop_x_step(var0, g, ms0, mg=mg0, epsilon_placement=epsilon_placement,
                                   **hyper)
    assert np.all(ref["ms"] - ref["mg"] ** 2 >= 0)


# ---- b. float16 / bfloat16 near their maximum --------------------------------------------------

def _reference_f32(state, variant, hyper, fused_variance=False):
    """reference.rmsprop_x_step's formula in float32 arithmetic (the kernels' compute type
    for 16-bit storage): inputs as stored, float32 intermediates, float32 results.
    `fused_variance`: ms - mg*mg with one rounding (a fused multiply-add, as XLA may compute
    it; the CPU build does not fuse, -ffp-contract=off), which differs where mg*mg overflows float32 but the difference
    does not (inf - inf = NaN unfused, inf fused)."""
    var, g, ms = (np.asarray(state[k], F32) for k in ("var", "grad", "ms"))
    mom = None if state.get("mom") is None else np.asarray(state["mom"], F32)
    mg = None if state.get("mg") is None else np.asarray(state["mg"], F32)
    h = {k: F32(v) for k, v in hyper.items()}
    one = F32(1)
    with np.errstate(all="ignore"):
        if variant.weight_decay_mode == "coupled":
            g = g + h["weight_decay"] * var
        ms = h["rho"] * ms + (one - h["rho"]) * (g * g)
        if mg is not None:
            mg = h["rho"] * mg + (one - h["rho"]) * g
            v = ((ms.astype(np.float64) - mg.astype(np.float64) ** 2).astype(F32)
                 if fused_variance else ms - mg * mg)
            v = np.maximum(v, F32(0))
        else:
            v = ms
        if variant.epsilon_placement == "inside_sqrt":
            denom = np.sqrt(v + h["epsilon"])
        else:
            denom = np.sqrt(v) + h["epsilon"]
        step = g / denom
        if mom is not None:
            a = h["lr"] if variant.lr_placement == "inside_momentum" else one
            mom = h["momentum"] * mom + a * step
            upd = h["momentum"] * mom + a * step if variant.nesterov else mom
            if variant.lr_placement == "outside_momentum":
                upd = h["lr"] * upd
        else:
            upd = h["lr"] * step
        if variant.weight_decay_mode == "decoupled":
            var = var - h["lr"] * h["weight_decay"] * var
        var = var - upd
    return {"var": var, "ms": ms, "mom": mom, "mg": mg}


def _stored(x, dtype):
    """float32 values as the variable of `dtype` stores them (overflow -> inf), as float64."""
    return None if x is None else tf.cast(tf.constant(x, tf.float32), dtype).numpy().astype(
        np.float64)


NEAR_MAX = {tf.float16: 60000.0, tf.bfloat16: 1e38}
# Under XLA every variant is a compilation of its own (about 0.1-0.5 s each): a covering
# subset there, every option of every attribute, plain and centered (CPU: all variants).
COVERING = [Variant(centered=c, momentum=m, nesterov=n, epsilon_placement=e, lr_placement=lr,
                    weight_decay_mode=wd)
            for c in (False, True)
            for m, n, e, lr, wd in [
                (False, False, "inside_sqrt", "inside_momentum", "none"),
                (False, False, "outside_sqrt", "inside_momentum", "decoupled"),
                (True, False, "outside_sqrt", "inside_momentum", "coupled"),
                (True, False, "inside_sqrt", "outside_momentum", "none"),
                (True, True, "inside_sqrt", "outside_momentum", "decoupled"),
                (True, True, "outside_sqrt", "inside_momentum", "coupled")]]
assert all(v in VARIANTS for v in COVERING)


def _variants(jit, centered=None):
    chosen = COVERING if jit else VARIANTS
    return [v for v in chosen if centered is None or v.centered == centered]


@pytest.mark.parametrize("jit", [False, True], ids=["cpu", "xla"])
@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16], ids=lambda d: d.name)
def test_half_types_with_gradients_near_the_maximum(dtype, jit, rng):
    """Half of the elements get |g| in [0.8, 1] * NEAR_MAX (g*g overflows the storage type;
    for float16 not float32, for bfloat16 float32 too), the others ordinary gradients. The
    result is the reference formula in float32 from the stored inputs, rounded once to the
    storage type (ms of a huge gradient: inf)."""
    cases = []
    for variant in _variants(jit):
        state = random_state(rng, (40,), dtype, variant)
        huge = rng.random(40) < 0.5
        g = np.where(huge, rng.choice([-1, 1], 40) * rng.uniform(0.8, 1.0, 40) * NEAR_MAX[dtype],
                     rng.uniform(-1, 1, 40))
        state["grad"] = round_to(g, dtype)
        cases.append(dict(variant=variant, state=state, grad=state["grad"],
                          hyper=random_hyper(rng, dtype, variant)))
    results = _run_cases("dense", cases, dtype, jit)
    for case, got in zip(cases, results):
        state, variant, hyper = case["state"], case["variant"], case["hyper"]
        want, fused = ({k: _stored(v, dtype) for k, v in
                        _reference_f32(state, variant, hyper, fused_variance=f).items()}
                       for f in (False, True))
        what = f"{variant}: "
        # Elements whose ms - mg*mg is fused or not may follow either (they differ only
        # where mg*mg overflows float32: bfloat16's centered variants).
        _assert_ieee_equal(got, want, RTOL[dtype], _scale(state), what, alternative=fused)
        assert np.all(np.isinf(got["ms"][np.abs(state["grad"]) >= 0.8 * NEAR_MAX[dtype]])), what
        if dtype == tf.float16:
            # float32 does not overflow here: the float64 reference rounded to float16 says
            # the same.
            with np.errstate(over="ignore"):
                ref = {k: _stored(v, dtype) for k, v in reference_dense(state, variant,
                                                                        hyper).items()}
            _assert_ieee_equal(got, ref, RTOL[dtype], _scale(state),
                               what + "float64 reference: ")
        if not variant.centered or dtype == tf.float16:
            assert not np.any(np.isnan(got["var"])), what


# ---- c. inf and NaN gradients --------------------------------------------------------------------

def _nonfinite(rng, shape):
    """Random gradients with about a quarter of the elements NaN, +inf or -inf."""
    g = rng.uniform(-1, 1, shape)
    flat = g.reshape(-1)
    which = rng.random(flat.size)
    flat[which < 0.08] = np.nan
    flat[(which >= 0.08) & (which < 0.16)] = np.inf
    flat[(which >= 0.16) & (which < 0.24)] = -np.inf
    if flat.size >= 3:  # each kind at least once
        flat[:3] = [np.nan, np.inf, -np.inf]
    return g


SPARSE_ROWS = 12


def _nonfinite_case(kind, variant, rng):
    dtype = tf.float32
    hyper = random_hyper(rng, dtype, variant)
    if kind == "dense":
        state = random_state(rng, (9, 7), dtype, variant)
        state["grad"] = _nonfinite(rng, (9, 7))
        return dict(variant=variant, hyper=hyper, state=state, grad=state["grad"])
    if kind == "sparse":
        state = random_state(rng, (SPARSE_ROWS, 5), dtype, variant)
        indices = rng.integers(0, SPARSE_ROWS, 15)  # duplicates, and some rows not named
        return dict(variant=variant, hyper=hyper, state=state, indices=indices,
                    grad=_nonfinite(rng, (15, 5)))
    states = [random_state(rng, s, dtype, variant) for s in [(5,), (3, 4), (1,)]]
    for s in states:
        s["grad"] = _nonfinite(rng, s["var"].shape)
    return dict(variant=variant, hyper=hyper, states=states, grad=[s["grad"] for s in states])


def _check_nonfinite(kind, cases, results):
    for case, got in zip(cases, results):
        what = f"{case['variant']}: "
        if kind == "multi":
            for i, (g, w, st) in enumerate(zip(got, _reference(kind, case), case["states"])):
                _assert_ieee_equal(g, w, RTOL[tf.float32], _scale(st), f"{what}vars[{i}] ")
            continue
        _assert_ieee_equal(got, _reference(kind, case), RTOL[tf.float32], _scale(case["state"]),
                           what)
        if kind == "sparse":  # rows not named: their bits
            untouched = np.setdiff1d(np.arange(SPARSE_ROWS), case["indices"])
            for name, value in got.items():
                np.testing.assert_array_equal(value[untouched], case["state"][name][untouched],
                                              err_msg=what + name)
        else:  # the reference's inputs are moderate: a finite gradient gives a finite var
            assert np.all(np.isfinite(got["var"][np.isfinite(case["grad"])])), what


@pytest.mark.parametrize("centered", [False, True], ids=["plain", "centered"])
@pytest.mark.parametrize("jit", [False, True], ids=["cpu", "xla"])
@pytest.mark.parametrize("kind", ["dense", "sparse", "multi"])
def test_nonfinite_gradients_propagate_per_element(kind, jit, centered, rng):
    """Elements with a NaN or inf gradient get the reference's (IEEE) values, NaN included;
    all other elements equal the reference; rows not named keep their bits. Every variant
    on CPU, the covering subset under XLA (test_nonfinite_every_variant_under_xla: all)."""
    cases = [_nonfinite_case(kind, v, rng) for v in _variants(jit, centered)]
    _check_nonfinite(kind, cases, _run_cases(kind, cases, tf.float32, jit))


@pytest.mark.parametrize("jit", [False, True], ids=["cpu", "xla"])
def test_infinite_step_from_a_zero_denominator_follows_the_reference(jit, rng):
    """Finite inputs, epsilon = 0 (valid) and ms = 0 (mg = 0) with rho = 1: step = g / 0 =
    +-inf in half of the elements. Momentum variants: mom = momentum*mom + lr*inf = inf and
    var = var - inf, as the reference says (not NaN); the other elements as usual."""
    cases = []
    for variant in _variants(jit):
        if not variant.momentum:
            continue
        state = random_state(rng, (30,), tf.float32, variant)
        zero = np.arange(30) < 15
        state["ms"] = np.where(zero, 0.0, state["ms"])
        if variant.centered:
            state["mg"] = np.where(zero, 0.0, state["mg"])
            state["ms"] = np.where(zero, 0.0, state["mg"] ** 2 + 0.5)
        hyper = dict(random_hyper(rng, tf.float32, variant), rho=1.0, epsilon=0.0)
        cases.append(dict(variant=variant, state=state, grad=state["grad"], hyper=hyper))
    results = _run_cases("dense", cases, tf.float32, jit)
    for case, got in zip(cases, results):
        want = _reference("dense", case)
        assert np.all(np.isinf(want["var"][:15])) and np.all(np.isfinite(want["var"][15:]))
        _assert_ieee_equal(got, want, RTOL[tf.float32], _scale(case["state"]),
                           f"{case['variant']}: ")


@pytest.mark.slow
def test_nonfinite_every_variant_under_xla(rng):
    """All 60 variants under XLA, dense, sparse and multi (one compilation per kind, about
    25 s together on 2 cores)."""
    for kind in ("dense", "sparse", "multi"):
        cases = [_nonfinite_case(kind, v, rng) for v in VARIANTS]
        _check_nonfinite(kind, cases, _run_cases(kind, cases, tf.float32, jit=True))


# ---- d. hyperparameter validation ---------------------------------------------------------------

FULL = Variant(centered=True, momentum=True, weight_decay_mode="decoupled")
PLAIN = Variant()
TINY = float(np.nextafter(F32(0), F32(1)))  # the smallest float32 subnormal
ABOVE_ONE = float(np.nextafter(F32(1), F32(2)))
BAD = {
    "lr": [math.nan, math.inf, -math.inf, -0.5],
    "rho": [math.nan, math.inf, -math.inf, -0.1, 1.5, ABOVE_ONE],
    "momentum": [math.nan, math.inf, -math.inf, -0.1],
    "epsilon": [math.nan, math.inf, -math.inf, -1e-8],
    "weight_decay": [math.nan, math.inf, -math.inf, -1.0],
}
BAD_CASES = [(name, x) for name, xs in BAD.items() for x in xs]
GOOD = {
    "lr": [0.0, -0.0, 1e-40, 1e30],
    "rho": [0.0, -0.0, 1.0, 1e-40],
    "momentum": [0.0, -0.0, 1e-40, 1e30],
    "epsilon": [0.0, -0.0, 1e-40, 1e30],
    "weight_decay": [0.0, -0.0, 1e-40, 1e30],
}
GOOD_CASES = [(name, x) for name, xs in GOOD.items() for x in xs]


def _edge_hyper(hyper, name, x):
    """hyper with name = x. For rho ~ 0 also epsilon = 1: the centered variance is then
    g*g - g**2, pure float32 rounding (about 1e-8 * g**2), which a small epsilon would turn
    into a large relative difference from the reference's exact 0."""
    out = dict(hyper, **{name: x})
    if name == "rho" and x < 0.5:
        out["epsilon"] = 1.0
    return out


def _status_message(error):
    """The kernel's message (TensorFlow prefixes "{{function_node ...}} " in eager mode)."""
    return re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", error.message)


def _message(name, x):
    """The start of the message for name = x (a regex)."""
    if not math.isfinite(x):
        return rf"{name} must be finite"
    return rf"{name} must be in \[0, 1\]" if name == "rho" else rf"{name} must be >= 0"


def _valid_case(kind, variant, rng, dtype=tf.float32):
    if kind == "dense":
        state = random_state(rng, (5, 4), dtype, variant)
        return dict(variant=variant, hyper=random_hyper(rng, dtype, variant), state=state,
                    grad=state["grad"])
    if kind == "sparse":
        state = random_state(rng, (10, 3), dtype, variant)
        indices = rng.integers(0, 10, 7)
        return dict(variant=variant, hyper=random_hyper(rng, dtype, variant), state=state,
                    indices=indices, grad=round_to(rng.uniform(-1, 1, (7, 3)), dtype))
    states = [random_state(rng, s, dtype, variant) for s in [(4,), (2, 3), (1,)]]
    return dict(variant=variant, hyper=random_hyper(rng, dtype, variant), states=states,
                grad=[s["grad"] for s in states])


def _flat(kind, got):
    return got if kind == "multi" else [got]


def _assert_bits_unchanged(kind, before, after, what=""):
    for b, a in zip(_flat(kind, before), _flat(kind, after)):
        for name in b:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{what}{name}")


@pytest.mark.parametrize("variant", [PLAIN, FULL], ids=str)
@pytest.mark.parametrize("kind", ["dense", "sparse", "multi"])
def test_invalid_hyperparameter_is_rejected_on_cpu_and_nothing_written(kind, variant, rng):
    case = _valid_case(kind, variant, rng)
    variables = _make(kind, case, tf.float32)
    before = _read(kind, variables)
    for name, x in BAD_CASES:
        hyper = dict(case["hyper"], **{name: x})
        with pytest.raises(tf.errors.InvalidArgumentError, match=_message(name, x)) as e:
            _apply(kind, variables, case, tf.float32, hyper)
        assert _status_message(e.value).startswith(f"{name} must be "), e.value.message
        _assert_bits_unchanged(kind, before, _read(kind, variables), f"{name}={x}: ")
    # ...and the same variables take a valid step afterwards.
    _apply(kind, variables, case, tf.float32)
    _assert_ieee_equal_all(kind, case, _read(kind, variables), RTOL[tf.float32])


def _assert_ieee_equal_all(kind, case, got, rtol, what=""):
    """got against the reference of `case`, variable by variable."""
    states = case["states"] if kind == "multi" else [case["state"]]
    for i, (g, w, st) in enumerate(zip(_flat(kind, got), _flat(kind, _reference(kind, case)),
                                       states)):
        # Per output, the state's scale or the output's own; var's also the momentum's: with
        # huge hyperparameters terms of 1e29 cancel in var = var - lr*wd*var - mom.
        scale = {k: max(_scale(st), _scale({k: w[k]})) for k in w if w[k] is not None}
        scale["var"] = max(scale["var"], scale.get("mom", 0.0))
        _assert_ieee_equal(g, w, rtol, scale, f"{what}[{i}] " if kind == "multi" else what)


@pytest.mark.parametrize("kind", ["dense", "sparse", "multi"])
def test_valid_edge_hyperparameters_follow_the_reference_on_cpu(kind, rng):
    for name, x in GOOD_CASES:
        variant = Variant(momentum=True, centered=True,
                          epsilon_placement="outside_sqrt" if x == 1e30 else "inside_sqrt",
                          weight_decay_mode="decoupled")
        case = _valid_case(kind, variant, rng)
        case["hyper"] = _edge_hyper(case["hyper"], name, x)
        variables = _make(kind, case, tf.float32)
        _apply(kind, variables, case, tf.float32)
        _assert_ieee_equal_all(kind, case, _read(kind, variables), RTOL[tf.float32],
                               f"{name}={x}: ")


@pytest.mark.parametrize("kind", ["dense", "sparse", "multi"])
def test_invalid_constant_hyperparameter_fails_to_compile_under_xla(kind, rng):
    case = _valid_case(kind, FULL, rng)
    variables = _make(kind, case, tf.float32)
    before = _read(kind, variables)
    for name, x in [("lr", math.nan), ("lr", -0.5), ("rho", 1.5), ("rho", -math.inf),
                    ("momentum", math.inf), ("momentum", -0.1), ("epsilon", math.nan),
                    ("epsilon", -1e-8), ("weight_decay", -math.inf), ("weight_decay", -1.0)]:
        hyper = dict(case["hyper"], **{name: x})

        @tf.function(jit_compile=True, autograph=False)
        def step():
            _apply(kind, variables, case, tf.float32, hyper)  # Python numbers: constants

        with pytest.raises(tf.errors.InvalidArgumentError, match=_message(name, x)):
            step()
        _assert_bits_unchanged(kind, before, _read(kind, variables), f"{name}={x}: ")


# The other placements: the run-time guard sits inside the chain (each output where it is
# computed), so both forms of each link are checked. (Not Nesterov or coupled decay: at the
# edge values momentum = 1e30 and weight_decay = 1e30 they overflow float32 where the
# float64 reference does not.)
OTHER = Variant(momentum=True, epsilon_placement="outside_sqrt",
                lr_placement="outside_momentum")


@pytest.mark.parametrize("variant", [FULL, OTHER], ids=str)
@pytest.mark.parametrize("kind", ["dense", "sparse", "multi"])
def test_invalid_runtime_hyperparameter_under_xla_makes_var_nan(kind, variant, rng):
    """Hyperparameters read from variables inside the XLA function (run-time values): a bad
    one makes var NaN (sparse: the named rows) and keeps every slot's bits; good ones,
    edge values included, follow the reference. One compilation for all values."""
    case = _valid_case(kind, variant, rng)
    variables = _make(kind, case, tf.float32)
    start = _read(kind, variables)
    hyper_vars = {k: tf.Variable(v, dtype=tf.float32) for k, v in case["hyper"].items()}

    @tf.function(jit_compile=True, autograph=False)
    def step():
        _apply(kind, variables, case, tf.float32, dict(hyper_vars))

    def reset():
        for got, init in zip(_flat(kind, variables), _flat(kind, start)):
            for name, var in got.items():
                var.assign(init[name].astype(np.float32))

    named = np.zeros(10, bool)
    if kind == "sparse":
        named[case["indices"]] = True
    for name, x in BAD_CASES + GOOD_CASES:
        reset()
        hyper = (dict(case["hyper"], **{name: x}) if (name, x) in BAD_CASES
                 else _edge_hyper(case["hyper"], name, x))
        for k, v in hyper.items():
            hyper_vars[k].assign(v)
        step()
        after = _read(kind, variables)
        what = f"{name}={x}: "
        if (name, x) in BAD_CASES:
            for a, b in zip(_flat(kind, after), _flat(kind, start)):
                if kind == "sparse":
                    assert np.all(np.isnan(a["var"][named])), what
                    np.testing.assert_array_equal(a["var"][~named], b["var"][~named],
                                                  err_msg=what)
                else:
                    assert np.all(np.isnan(a["var"])), what
                for slot in (s for s in ("ms", "mom", "mg") if s in a):
                    np.testing.assert_array_equal(a[slot], b[slot], err_msg=what + slot)
        else:
            want_case = dict(case, hyper=hyper)
            _assert_ieee_equal_all(kind, want_case, after, RTOL[tf.float32], what)
    assert step.experimental_get_tracing_count() == 1


def _run_backend(backend, variables, case, hyper):
    """One dense step; under xla_runtime the hyperparameters are variables read in the
    function (run-time values), under xla_constant Python numbers (compile-time)."""
    if backend == "xla_runtime":
        hyper_vars = {k: tf.Variable(v, dtype=tf.float32) for k, v in hyper.items()}
        return _jit(lambda: _apply("dense", variables, case, tf.float32, hyper_vars))()
    call = lambda: _apply("dense", variables, case, tf.float32, hyper)  # noqa: E731
    return (call if backend == "cpu" else _jit(call))()


@pytest.mark.parametrize("backend", ["cpu", "xla_constant", "xla_runtime"])
def test_negative_subnormal_hyperparameter_counts_as_zero_everywhere(backend, rng):
    """-2**-149 is what TensorFlow's CPU kernels read as -0 (denormals-are-zero): every
    backend accepts it and updates as with 0. The smallest negative normal, -2**-126, is
    rejected by every backend (an error; under XLA at run time, var becomes NaN)."""
    case = _valid_case("dense", FULL, rng)
    for name in ("lr", "momentum", "epsilon", "weight_decay", "rho"):
        # A negative subnormal: the same result as 0 (to float32 rounding).
        got = _make("dense", case, tf.float32)
        _run_backend(backend, got, case, dict(case["hyper"], **{name: -TINY}))
        want = _make("dense", case, tf.float32)
        _run_backend(backend, want, case, dict(case["hyper"], **{name: 0.0}))
        got, want = _read("dense", got), _read("dense", want)
        for slot in want:
            assert not np.any(np.isnan(got[slot])), f"{name}=-2**-149: NaN in {slot}"
            np.testing.assert_allclose(got[slot], want[slot], rtol=1e-6, atol=1e-30,
                                       err_msg=f"{name}=-2**-149 vs 0: {slot}")
        # The smallest negative normal number: rejected.
        smallest_normal = float(np.finfo(F32).tiny)
        variables = _make("dense", case, tf.float32)
        before = _read("dense", variables)
        hyper = dict(case["hyper"], **{name: -smallest_normal})
        if backend == "xla_runtime":
            _run_backend(backend, variables, case, hyper)
            after = _read("dense", variables)
            assert np.all(np.isnan(after["var"])), f"{name}=-2**-126 accepted under XLA"
            for slot in ("ms", "mom", "mg"):
                np.testing.assert_array_equal(after[slot], before[slot], err_msg=slot)
            continue
        with pytest.raises(tf.errors.InvalidArgumentError, match=f"^(.*}} )?{name} must"):
            _run_backend(backend, variables, case, hyper)
        _assert_bits_unchanged("dense", before, _read("dense", variables), f"{name}: ")


# ---- d. the optimizer ----------------------------------------------------------------------------

@pytest.mark.parametrize("argument, value", [
    ("learning_rate", -1.0), ("learning_rate", math.nan), ("learning_rate", math.inf),
    ("rho", 1.5), ("rho", -0.1), ("rho", math.nan),
    ("epsilon", -1.0), ("epsilon", math.nan),
    ("momentum", -0.1), ("momentum", math.nan),
    ("weight_decay", -1.0), ("weight_decay", math.nan)])
def test_optimizer_rejects_invalid_numbers(argument, value):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        RMSpropX(**{argument: value})


def test_optimizer_learning_rate_setter_rejects_negative(rng):
    var = tf.Variable(rng.uniform(-1, 1, (3,)).astype(F32))
    opt = RMSpropX(learning_rate=0.1)
    for bad in (-1, -1e-3, math.nan, math.inf):
        with pytest.raises(ValueError, match="`learning_rate`"):
            opt.learning_rate = bad
    assert float(opt.learning_rate.numpy()) == F32(0.1)
    init, g = var.numpy().astype(np.float64), rng.uniform(-1, 1, (3,)).astype(F32)
    opt.apply_gradients([(tf.constant(g), var)])  # lr still 0.1: a normal step
    want = reference.rmsprop_x_step(init, g, np.zeros(3), lr=float(F32(0.1)), epsilon=1e-7)
    np.testing.assert_allclose(var.numpy(), want["var"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("lr", ["schedule", "callable"])
def test_negative_scheduled_learning_rate_is_rejected_by_the_step(lr, rng):
    class Negative(tf.keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return 0.1 - 0.2 * tf.cast(step >= 1, tf.float32)  # 0.1, then -0.1

    init = rng.uniform(-1, 1, (4, 3)).astype(F32)
    var = tf.Variable(init)
    opt = RMSpropX(learning_rate=Negative() if lr == "schedule" else (lambda: -0.1),
                   momentum=0.5)
    g = tf.constant(rng.uniform(-1, 1, (4, 3)), tf.float32)
    if lr == "schedule":  # step 0: lr 0.1, a normal update
        opt.apply_gradients([(g, var)])
        want = reference.rmsprop_x_step(init, g.numpy(), np.zeros((4, 3)), np.zeros((4, 3)),
                                        lr=float(F32(0.1)), momentum=0.5, epsilon=1e-7)
        np.testing.assert_allclose(var.numpy(), want["var"], rtol=1e-6, atol=1e-6)
    opt.build([var])
    state = [var, opt.get_slot(var, "ms"), opt.get_slot(var, "mom")]
    before = [v.numpy().copy() for v in state]
    with pytest.raises(tf.errors.InvalidArgumentError, match="lr must be >= 0"):
        opt.apply_gradients([(g, var)])
    for v, b in zip(state, before):
        np.testing.assert_array_equal(v.numpy(), b)
