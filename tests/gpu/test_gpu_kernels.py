"""The CUDA kernels without TensorFlow (tests/gpu/harness.cu.cc via ctypes) against the
float64 reference: every variant and dtype, dense, multi-tensor and sparse (heavy duplicates,
empty batches, out-of-range indices: reported, nothing written), and canaries after every
array (nothing written outside it).

On a GPU (CuPy arrays) where there is one; elsewhere, as in CI, the same kernel sources run on
the CPU emulation of CUDA (tests/gpu/emu/cuda_emu.h: what it shows and what only a GPU can).
`GPU_HARNESS_BACKEND=cuda|emulated` chooses; GPU_HARNESS_REQUIRED=1 makes a missing GPU an
error rather than a fallback."""
import ctypes
import itertools
import os
import sys

import numpy as np
import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
# The harness and, two levels up, the checkout (tf_rmsprop_ops.reference, NumPy only): the
# GPU machine runs this from a copy of the tree, with nothing installed.
sys.path[:0] = [_HERE, os.path.dirname(os.path.dirname(_HERE))]
import gpu_lib  # noqa: E402

from tf_rmsprop_ops import reference  # noqa: E402  (NumPy only: no TensorFlow needed)

BACKEND, REASON = gpu_lib.test_backend()
# A skip here is over tests/conftest.py's skip budget: the run fails, with this reason.
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"GPU harness ({BACKEND}): {REASON}")

# Each element's error relative to its update's operands (see _assert_matches).
RTOL = {"float32": 1e-6, "float64": 1e-12, "float16": 1e-3, "bfloat16": 8e-3}
# Absolute floor for 16-bit storage only: the rounding of results in its subnormal range,
# where RTOL's relative bound runs out. Half a float16 subnormal step (2^-24) is 2^-25; a
# normal result rounds within 2^-11 of its magnitude, under RTOL. bfloat16's subnormals are
# float32's (below 1.2e-38), which these draws never reach: 0.
ATOL = {"float32": 0.0, "float64": 0.0, "float16": 2.0 ** -25, "bfloat16": 0.0}
# Elements after each array that must keep their bits. Under ASan (the sanitizer stage) none:
# every array is then its own allocation with ASan's redzone right after it, so a read past
# its end is reported too, not only a write.
CANARY = 0 if os.environ.get("GPU_HARNESS_SANITIZE") == "address" else 7


Variant = gpu_lib.Variant


VARIANTS = [Variant(c, m != "off", m == "nesterov", e, l, w)
            for c, m, e, l, w in itertools.product(
                (False, True), ("off", "on", "nesterov"), reference.EPSILON_PLACEMENTS,
                reference.LR_PLACEMENTS, reference.WEIGHT_DECAY_MODES)
            if m != "off" or l == "inside_momentum"]
HYPER = dict(lr=0.01, rho=0.9, momentum=0.8, epsilon=1e-4, weight_decay=0.03)


_HARNESS = []


def _harness():
    if not _HARNESS:
        _HARNESS.append(gpu_lib.open_harness(BACKEND))
    return _HARNESS[0]


@pytest.fixture(scope="module")
def harness():
    return _harness()


CANARY_VALUE = -1536.0  # exact in every dtype; an update computed from it is something else


def _bits(x, dtype):
    """x in `dtype`'s storage (bfloat16: uint16 bits, the top half of float32, nearest even)."""
    if dtype == "bfloat16":
        u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
        return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.asarray(x, dtype)


def _to_device(x, dtype):
    """A device array holding x in `dtype` followed by CANARY poison elements."""
    return _harness().arrays.asarray(np.concatenate([_bits(x, dtype).ravel(),
                                        _bits(np.full(CANARY, CANARY_VALUE), dtype)]))


def _assert_matches(got, want, old, dtype, err_msg, factor=1.0, slack=0.0):
    """Every element within factor x RTOL of its update's operands: each state array is
    updated as x_new = a * x_old + b with 0 <= a <= 1, so |b| <= |x_old| + |x_new| and the
    float rounding of the terms is relative to |x_old| + |x_new|, not to x_new alone (which
    may cancel to ~0: relative to it, float32's own rounding of an O(1) term is unbounded).
    `slack` (from _slack) adds what RTOL of every input moves the exact result by: where an
    intermediate cancels (the L2-decayed gradient, a momentum sum), its rounding is relative
    to its own operands, and every later value inherits it. No absolute allowance for
    float32/float64; 16-bit storage adds ATOL for its subnormals."""
    got, want, old = (np.asarray(a, np.float64) for a in (got, want, old))
    bound = factor * (RTOL[dtype] * (np.abs(want) + np.abs(old)) + slack) + ATOL[dtype]
    error = np.abs(got - want)
    bad = ~(error <= bound)  # NaN fails too
    if np.any(bad):
        i = np.flatnonzero(bad.ravel())
        worst = i[np.argmax((error.ravel()[i] / bound.ravel()[i]))]
        pytest.fail(f"{err_msg}: {i.size} of {got.size} elements beyond {factor} x RTOL "
                    f"({RTOL[dtype]:g}) of |old| + |new|; worst at {worst}: got "
                    f"{got.ravel()[worst]!r}, want {want.ravel()[worst]!r}, old "
                    f"{old.ravel()[worst]!r}, error {error.ravel()[worst]:.3g} > bound "
                    f"{bound.ravel()[worst]:.3g}")


def _slack(step, inputs, dtype, base):
    """{output: slack} for _assert_matches: the exact (float64) result's response to each
    input array in turn scaled by 1 + RTOL, summed in absolute value (a first-order bound of
    what float rounding of that size anywhere upstream can do). `step(**inputs)` returns the
    reference's arrays, `base` (the caller's) those of `inputs`; inputs that are None
    (disabled slots) are left alone. Empty for 16-bit storage, whose RTOL already exceeds it
    (float32 compute, 16-bit rounding)."""
    if dtype in ("float16", "bfloat16"):
        return {}
    with np.errstate(all="ignore"):
        total = {k: 0.0 for k, v in base.items() if v is not None}
        for name, x in inputs.items():
            if x is None:
                continue
            moved = step(**dict(inputs, **{name: x * (1.0 + RTOL[dtype])}))
            for k in total:
                total[k] = total[k] + np.nan_to_num(np.abs(moved[k] - base[k]), nan=0.0,
                                                    posinf=0.0)
    return total


def _shifted_to_device(value, dtype, shift, lead=0.0):
    """(buffer, view): a device buffer of `shift` elements of `lead`, then `value`, then the
    canaries; the view is `value`'s part only (a tensor that starts `shift` elements into its
    allocation, as a TensorFlow slice can)."""
    n = np.size(value)
    buf = _to_device(np.concatenate([np.full(shift, lead), np.ravel(value)]), dtype)
    return buf, buf[shift:shift + n]


def _to_host(a, dtype, n):
    host = a.get()
    canary_ok = np.array_equal(host[n:].view(np.uint8),
                               _bits(np.full(host.size - n, CANARY_VALUE), dtype).view(np.uint8))
    if dtype == "bfloat16":
        values = (host[:n].astype(np.uint32) << 16).view(np.float32)
    else:
        values = host[:n]
    return values.astype(np.float64), canary_ok


def _rounded(x, dtype):
    if dtype == "bfloat16":
        return _to_host(_to_device(x, dtype), dtype, np.size(x))[0].reshape(np.shape(x))
    return np.asarray(x, dtype).astype(np.float64)


def _state(rng, shape, dtype):
    state = dict(var=rng.normal(size=shape), ms=rng.uniform(0.5, 2.0, size=shape),
                 mom=rng.normal(size=shape), mg=rng.normal(size=shape) * 0.3)
    state["ms"] = state["ms"] + state["mg"] ** 2  # a well-conditioned centered variance
    return {k: _rounded(v, dtype) for k, v in state.items()}


def _formula(variant, dtype):
    """The reference's keyword arguments for `variant`: HYPER as the kernel computes with it
    (the harness converts it to the compute type: float32 but for float64)."""
    hyper = HYPER if dtype == "float64" else {k: float(np.float32(v)) for k, v in HYPER.items()}
    return dict(hyper, nesterov=variant.nesterov, epsilon_placement=variant.epsilon_placement,
                lr_placement=variant.lr_placement, weight_decay_mode=variant.weight_decay_mode)


def _dense_inputs(state, grad, variant):
    return dict(grad=grad, var=state["var"], ms=state["ms"],
                mom=state["mom"] if variant.momentum else None,
                mg=state["mg"] if variant.centered else None)


def _dense_step(variant, dtype):
    def step(grad, var, ms, mom, mg):
        return reference.rmsprop_x_step(var, grad, ms, mom, mg, **_formula(variant, dtype))
    return step


def _reference_dense(state, grad, variant, dtype):
    """The float64 reference step of `variant` (disabled slots: None)."""
    return _dense_step(variant, dtype)(**_dense_inputs(state, grad, variant))


def _dense_slack(state, grad, variant, dtype, want):
    """_slack of the dense step; `want` is _reference_dense's result for the same inputs."""
    return _slack(_dense_step(variant, dtype), _dense_inputs(state, grad, variant), dtype, want)


@pytest.mark.parametrize("disabled", ["null", "buffer"])
@pytest.mark.parametrize("dtype", list(RTOL))
@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_dense_matches_reference(harness, rng, variant, dtype, disabled):
    # Odd: a scalar tail for every vector width. Over 2 x 768 vectors of every dtype: the
    # emulation's 3 blocks of 256 threads go round the grid-stride loop.
    n = 12289 + 2 * int(rng.integers(0, 8))
    state = _state(rng, (n,), dtype)
    grad = _rounded(rng.normal(size=n) * 10.0 ** rng.uniform(-4, 0, size=n), dtype)
    dev = {k: _to_device(v, dtype) for k, v in state.items()}
    # A disabled slot is passed as null (as the TensorFlow kernels do) or as a buffer: the
    # variant alone says which slots are used (a disabled one's pointer must be ignored, so
    # it keeps its bits).
    def slot(name, enabled):
        return dev[name] if enabled or disabled == "buffer" else None
    harness.dense(dtype, variant, HYPER, _to_device(grad, dtype), dev["var"], dev["ms"],
                  slot("mom", variant.momentum), slot("mg", variant.centered), n=n)
    want = _reference_dense(state, grad, variant, dtype)
    slack = _dense_slack(state, grad, variant, dtype, want)
    for name in ("var", "ms", "mom", "mg"):
        got, canary_ok = _to_host(dev[name], dtype, n)
        assert canary_ok, f"{name}: written past its end"
        if want[name] is None:
            np.testing.assert_array_equal(got, state[name])  # a disabled slot keeps its bits
        else:
            _assert_matches(got, want[name], state[name], dtype, name,
                            slack=slack.get(name, 0.0))


@pytest.mark.parametrize("dtype", list(RTOL))
@pytest.mark.parametrize("misaligned", ["grad", "var", "ms", "mom", "mg"])
@pytest.mark.parametrize("op", ["dense", "multi"])
def test_one_misaligned_array_takes_the_scalar_path(harness, rng, op, misaligned, dtype):
    """The 128-bit path needs every array 16-byte aligned: one array one element into its
    buffer (a TensorFlow slice can start anywhere) must send the whole tensor down the scalar
    path. On a GPU a misaligned 128-bit access faults; on the emulation it crashes or UBSan
    reports it (gpu_lib turns the report into a failure)."""
    variant = Variant(True, True, False, "inside_sqrt", "inside_momentum", "decoupled")
    n = 2000 + int(rng.integers(0, 37))  # more than the emulation's 3 x 256 threads
    state = _state(rng, (n,), dtype)
    grad = _rounded(rng.normal(size=n) * 10.0 ** rng.uniform(-4, 0, size=n), dtype)
    buffers, views = {}, {}
    for name, value in [("grad", grad)] + list(state.items()):
        shift = 1 if name == misaligned else 0
        buffers[name], views[name] = _shifted_to_device(value, dtype, shift, lead=1.0)
    if op == "dense":
        harness.dense(dtype, variant, HYPER, views["grad"], views["var"], views["ms"],
                      views["mom"], views["mg"], n=n)
    else:
        harness.multi(dtype, variant, HYPER, *[[views[k]] for k in
                                               ("grad", "var", "ms", "mom", "mg")])
    harness.arrays.synchronize()
    want = _reference_dense(state, grad, variant, dtype)
    slack = _dense_slack(state, grad, variant, dtype, want)
    for name in ("var", "ms", "mom", "mg"):
        shift = 1 if name == misaligned else 0
        got, canary_ok = _to_host(buffers[name], dtype, n + shift)
        assert canary_ok, f"{name}: written past its end"
        if shift:
            assert got[0] == 1.0, f"{name}: the element before the tensor was written"
        _assert_matches(got[shift:], want[name], state[name], dtype, name,
                        slack=slack.get(name, 0.0))


# How far past the bound test_dense_matches_torch_rmsprop lets its few elements go. Measured
# on the emulated backend: 150 runs of every configuration, and 1,550 (the equivalent in
# elements) of each of the two with momentum and weight decay, whose `mom` held every element
# past the bound: 29 runs with one such element, none with two, the worst at 6.1 x the bound.
# They are ill-conditioned elements (L2 decay cancelling the gradient), where error / bound is
# mostly ours over the float32 peer's independent error (`spread`): a long tail, P(worst > x)
# ~ 0.01 / x^2 per configuration and run fits the 29. 500 x puts that below 1e-7 per run and
# still fails a NaN, an inf, or any element off by more than 500 x its bound (>= 0.4% of the
# array's largest magnitude).
TORCH_FAR_CAP = 500


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("centered", [False, True])
def test_dense_matches_torch_rmsprop(harness, rng, centered, momentum, weight_decay):
    """The peer: torch.optim.RMSprop (on the CPU) over 4 steps from its own initial state
    (zero slots), against the float32 kernel in the variant that is PyTorch's form
    (tf_rmsprop_ops.presets "pytorch": epsilon outside the sqrt, lr outside the momentum,
    L2 weight decay). A tenth of the gradients are ~1e-7, where epsilon (1e-8) matters.

    Float32 alone is ill-conditioned in places (L2 weight decay cancelling the gradient,
    momentum sums cancelling): PyTorch's own float32 run strays up to ~1e-4 from its float64
    run there, and two float32 computations in different orders can stray further from each
    other than either does from float64 (seen: 1 element in 3001, 2 seeds in 40). So an
    element may differ from the float64 peer by a few float32 roundings plus the float32
    peer's own deviation (x4), and at most 0.2% of the elements by more. A different formula
    (epsilon inside the sqrt, lr inside the momentum) moves most of them."""
    import torch  # a peer the README's test command installs: missing is an error, not a skip
    n, steps = 3001, 4
    variant = Variant(centered, momentum > 0, False, "outside_sqrt",
                      "outside_momentum" if momentum > 0 else "inside_momentum",
                      "coupled" if weight_decay else "none")
    hyper = dict(lr=0.01, rho=0.99, momentum=momentum, epsilon=1e-8, weight_decay=weight_decay)
    var0 = _rounded(rng.normal(size=n), "float32")
    peers = {}
    for dtype in (torch.float64, torch.float32):
        param = torch.tensor(var0, dtype=dtype, requires_grad=True)
        peers[dtype] = param, torch.optim.RMSprop(
            [param], lr=hyper["lr"], alpha=hyper["rho"], eps=1e-8, weight_decay=weight_decay,
            momentum=momentum, centered=centered)
    dev = {"var": _to_device(var0, "float32")}
    for name in ("ms", "mom", "mg"):
        dev[name] = _to_device(np.zeros(n), "float32")
    for _ in range(steps):
        scale = np.where(rng.uniform(size=n) < 0.1, 1e-7, 1e-3)
        grad = _rounded(rng.normal(size=n) * scale, "float32")
        for dtype, (param, opt) in peers.items():
            param.grad = torch.tensor(grad, dtype=dtype)
            opt.step()
        harness.dense("float32", variant, hyper, _to_device(grad, "float32"), dev["var"],
                      dev["ms"], dev["mom"] if variant.momentum else None,
                      dev["mg"] if centered else None, n=n)

    def peer_state(dtype):
        param, opt = peers[dtype]
        state = opt.state[param]
        return {"var": param.detach(), "ms": state["square_avg"],
                "mom": state["momentum_buffer"] if momentum else None,
                "mg": state["grad_avg"] if centered else None}
    want, want32 = peer_state(torch.float64), peer_state(torch.float32)
    for name, expected in want.items():
        if expected is None:
            continue
        expected = expected.numpy()
        spread = np.abs(want32[name].double().numpy() - expected)  # float32's own error
        got, canary_ok = _to_host(dev[name], "float32", n)
        assert canary_ok, f"{name}: written past its end"
        # The slots' own scales: ms ~ g^2 (down to 1e-16), mom and mg ~ 1e-3 or less.
        # and a few float32 roundings of the array's largest element (its terms' scale).
        bound = (8e-6 * np.max(np.abs(expected))
                 + 4 * RTOL["float32"] * np.abs(expected) + 4 * spread)
        error = np.abs(got - expected)
        bad = ~(error <= bound)  # NaN fails too
        # The elements allowed past the bound must stay within TORCH_FAR_CAP x the bound.
        far = ~(error <= TORCH_FAR_CAP * bound)
        worst = np.max(error / bound)  # NaN where an element is NaN
        assert bad.sum() <= n // 500 and not far.any(), (
            f"{name}: {bad.sum()} of {n} elements beyond the bound ({far.sum()} beyond "
            f"{TORCH_FAR_CAP} x it; worst error / bound {worst:.3g}); first at "
            f"{np.argmax(bad)}: ours {got[bad][0]!r}, torch float64 {expected[bad][0]!r}, "
            f"torch float32 {want32[name].double().numpy()[bad][0]!r}")


# Large gradients whose square the compute type holds: float16's maximum (its square
# overflows half storage, not the float32 the kernel computes in); for float32 and bfloat16
# (float32's range) and float64, large values whose square stays finite.
LARGE = {"float16": 65504.0, "bfloat16": 1e18, "float32": 1e18, "float64": 1e150}


@pytest.mark.parametrize("dtype", list(RTOL))
@pytest.mark.parametrize("variant", VARIANTS[::7], ids=str)
def test_nonfinite_and_extreme_gradients_follow_the_reference(harness, rng, variant, dtype):
    """NaN and +-inf gradient elements propagate into their own element only; large
    gradients (half: near its maximum, so g*g overflows the storage type but not float32)
    give the reference's values, rounded to the storage type as the kernel stores them; and
    subnormal gradients (the kernels are built without -ftz) follow the reference too."""
    n = 517
    state = _state(rng, (n,), dtype)
    g = rng.normal(size=n)
    kind = rng.integers(0, 5, size=n)  # 0 normal, 1 NaN, 2 +inf, 3 -inf, 4 large
    kind[:5] = np.arange(5)  # every kind at least once
    g = np.where(kind == 1, np.nan, np.where(kind == 2, np.inf, np.where(kind == 3, -np.inf, g)))
    large = np.sign(g) * LARGE[dtype] * rng.uniform(0.25, 0.5, size=n)
    g = np.where(kind == 4, large, g)
    tiny = {"float16": 2.0 ** -14, "bfloat16": 2.0 ** -126, "float32": 2.0 ** -126,
            "float64": 2.0 ** -1022}[dtype]  # the smallest normal of the storage type
    g[5:15] = tiny * rng.uniform(0.01, 0.9, size=10) * np.sign(rng.normal(size=10))  # subnormal
    grad = _rounded(g, dtype)
    dev = {k: _to_device(v, dtype) for k, v in state.items()}
    harness.dense(dtype, variant, HYPER, _to_device(grad, dtype), dev["var"], dev["ms"],
                  dev["mom"] if variant.momentum else None,
                  dev["mg"] if variant.centered else None, n=n)
    with np.errstate(all="ignore"):
        want = _reference_dense(state, grad, variant, dtype)
    slack = _dense_slack(state, grad, variant, dtype, want)
    for name in ("var", "ms", "mom", "mg"):
        got, canary_ok = _to_host(dev[name], dtype, n)
        assert canary_ok, f"{name}: written past its end"
        if want[name] is None:
            continue
        with np.errstate(all="ignore"):
            expected = _rounded(want[name], dtype)  # the stored value (inf beyond the max)
        finite = np.isfinite(expected)
        # NaN where the reference is NaN, the same inf where it is inf, nowhere else.
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected), err_msg=name)
        np.testing.assert_array_equal(got[np.isinf(expected)], expected[np.isinf(expected)],
                                      err_msg=name)
        _assert_matches(got[finite], expected[finite], state[name][finite], dtype, name,
                        factor=4, slack=np.broadcast_to(slack.get(name, 0.0), n)[finite])
    # A NaN gradient element poisons its own element of var, not its neighbours.
    var, _ = _to_host(dev["var"], dtype, n)
    assert np.isnan(var[1]) and np.all(np.isfinite(var[kind == 0]))


def _summed_in_order(grad, indices, dtype):
    """The unique indices (ascending) and each one's gradient rows summed in input order in
    the kernel's compute type (float64 for float64, else float32), as float64."""
    compute = np.float64 if dtype == "float64" else np.float32
    unique = np.unique(indices)
    summed = np.zeros((unique.size,) + grad.shape[1:], compute)
    where = np.searchsorted(unique, indices)
    for p in range(len(indices)):
        summed[where[p]] = summed[where[p]] + grad[p].astype(compute)
    return unique, summed.astype(np.float64)


# Every variant, int32/int64 indices by turns. Under ASan (CI's sanitizer stage, which looks
# for memory errors, not numbers) every 5th: all six centered x momentum kinds, the only
# options that change which arrays a kernel touches.
_SPARSE_CASES = [(v, (np.int32, np.int64)[i % 2]) for i, v in enumerate(VARIANTS)][
    ::5 if os.environ.get("GPU_HARNESS_SANITIZE") == "address" else 1]


@pytest.mark.parametrize("dtype", list(RTOL))
@pytest.mark.parametrize("pattern", ["unique", "heavy_duplicates", "empty"])
@pytest.mark.parametrize("variant, index_dtype", _SPARSE_CASES,
                         ids=[f"{v}-{np.dtype(i).name}" for v, i in _SPARSE_CASES])
def test_sparse_matches_reference(harness, rng, variant, index_dtype, pattern, dtype):
    # Rows of 33 elements (a block of 64 threads) and of 300 (256 threads, some take two).
    rows, dim = 300, (300 if pattern == "heavy_duplicates" else 33)
    count = {"unique": 120, "heavy_duplicates": 500, "empty": 0}[pattern]
    # Heavy duplicates of five rows, two pairs of which share their low 8 bits (1 and 257,
    # 43 and 299): a sort on too few key bits would interleave them and split their runs.
    indices = (rng.permutation(rows)[:count] if pattern == "unique"
               else rng.choice([1, 257, 43, 299, 150], size=count)).astype(index_dtype)
    state = _state(rng, (rows, dim), dtype)
    grad = _rounded(rng.normal(size=(count, dim)), dtype)
    dev = {k: _to_device(v, dtype) for k, v in state.items()}
    bad = harness.sparse(dtype, variant, HYPER, _to_device(grad, dtype),
                         harness.arrays.asarray(indices), rows, dim, dev["var"], dev["ms"],
                         dev["mom"] if variant.momentum else None,  # disabled slots: null
                         dev["mg"] if variant.centered else None)
    assert bad is None
    # The kernel sums a row's gradients in input order in its compute type (float32 for
    # 16-bit storage): a float32 sum of 100 rows can cancel to a small value that has the
    # sum's absolute rounding error, more than the tolerance once divided by sqrt(ms).
    unique, summed = _summed_in_order(grad, indices, dtype)

    def step(grad, var, ms, mom, mg):
        return reference.sparse_rmsprop_x_step(var, grad, unique, ms, mom, mg,
                                               **_formula(variant, dtype))
    inputs = _dense_inputs(state, summed, variant)
    want = step(**inputs)
    slack = _slack(step, inputs, dtype, want)
    for name in ("var", "ms", "mom", "mg"):
        got, canary_ok = _to_host(dev[name], dtype, rows * dim)
        assert canary_ok, f"{name}: written past its end"
        got = got.reshape(rows, dim)
        if want[name] is None:  # a disabled slot keeps its bits
            np.testing.assert_array_equal(got, state[name], err_msg=name)
            continue
        named = np.zeros(rows, bool)
        named[unique] = True
        np.testing.assert_array_equal(got[~named], state[name][~named],  # rows not named
                                      err_msg=f"{name}: a row no index names was written")
        # The plain bound, as for dense: over 7,920 runs (11 seeds of every case) the worst
        # error was 0.18 of it in float32, 0.48 in 16-bit (its rounding, under half of RTOL).
        _assert_matches(got[named], want[name][named], state[name][named], dtype, name,
                        slack=np.broadcast_to(slack.get(name, 0.0), got.shape)[named])


@pytest.mark.parametrize("index_dtype", [0, 1])
def test_more_indices_than_int32_counts_are_refused_before_anything_is_touched(harness,
                                                                               index_dtype):
    """CUB's item counts and the positions are int32: the launchers refuse 2^31 indices
    (SparseWorkspaceBytes 0, SparseUpdate cudaErrorInvalidValue) instead of truncating the
    count. The arrays are null: a launcher that went on would fail on them."""
    lib = harness.lib
    limit = 2**31 - 1
    assert lib.rx_sparse_workspace_bytes(index_dtype, limit + 1, 1000) == 0
    assert lib.rx_sparse_workspace_bytes(index_dtype, limit, 1000) > 0  # sized, not allocated
    assert lib.rx_sparse_update_count_only(index_dtype, limit + 1, 1000) == 1  # InvalidValue
    assert lib.rx_sparse_update_count_only(index_dtype, 1 << 40, 1000) == 1
    assert lib.rx_sparse_update_count_only(index_dtype, 0, 1000) == 0  # nothing to do
    # SparseCheck (which rx_sparse calls first) refuses the count too.
    bad_offset, bad_value = ctypes.c_int64(-7), ctypes.c_int64(0)
    hyper = (ctypes.c_double * 5)(0.01, 0.9, 0.0, 1e-7, 0.0)
    err = lib.rx_sparse(0, index_dtype, 0, 0, 0, 0, 0, 0, hyper, None, None, limit + 1, 1000,
                        1, None, None, None, None, None, ctypes.byref(bad_offset),
                        ctypes.byref(bad_value), harness._stream(None))
    assert err == 1 and bad_offset.value == -1


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("bad_index", [-1, 300, 2**31 - 1])
@pytest.mark.parametrize("count", [5, 2000])
def test_out_of_range_index_is_reported_and_nothing_is_written(harness, rng, bad_index,
                                                               index_dtype, count):
    # 2000 indices: several blocks of the check kernel, each round its grid-stride loop on
    # the emulation; the first bad offset (900) is found by a block that is not the first
    # to see a bad index (1900, -5 at 1999).
    rows, dim = 300, 4
    if count == 5:
        indices, first = np.array([3, 7, bad_index, 9, -5], index_dtype), 2
    else:
        indices, first = rng.integers(0, rows, size=count).astype(index_dtype), 900
        indices[[900, 1900, 1999]] = [bad_index, bad_index, -5]
    variant = Variant(False, False, False, "inside_sqrt", "inside_momentum", "none")
    state = _state(rng, (rows, dim), "float32")
    dev = {k: _to_device(v, "float32") for k, v in state.items()}
    bad = harness.sparse("float32", variant, HYPER,
                         _to_device(rng.normal(size=(count, dim)), "float32"),
                         harness.arrays.asarray(indices), rows, dim, dev["var"], dev["ms"])
    assert bad == (first, bad_index)  # the first bad offset and its value
    for name in ("var", "ms"):
        np.testing.assert_array_equal(_to_host(dev[name], "float32", rows * dim)[0],
                                      state[name].ravel())


def test_duplicate_rows_sum_in_input_order(harness, rng):
    """Deduplication keeps each row's gradients in input order (a stable sort), so float32
    sums are the CPU's, deterministically: 3e7 - 3e7 + 1 is 1 in that order and 0 in the
    reverse one, a difference the update shows far beyond rounding."""
    rows, dim = 50, 8
    variant = Variant(False, False, False, "inside_sqrt", "inside_momentum", "none")
    indices = np.array([7, 3, 7, 7, 3, 12], np.int32)
    grad = rng.normal(size=(6, dim)).astype(np.float32)
    grad[[0, 2, 3]] = np.array([[3e7], [-3e7], [1.0]], np.float32)  # row 7, input order
    assert np.all((grad[0] + grad[2]) + grad[3] == 1)
    assert np.all((grad[3] + grad[2]) + grad[0] == 0)  # reversed (float32 rounds 1 - 3e7)
    state = _state(rng, (rows, dim), "float32")
    dev = {k: _to_device(v, "float32") for k, v in state.items()}
    assert harness.sparse("float32", variant, HYPER, _to_device(grad, "float32"),
                          harness.arrays.asarray(indices), rows, dim, dev["var"],
                          dev["ms"]) is None
    named, summed = _summed_in_order(grad, indices, "float32")
    want = reference.rmsprop_x_step(state["var"][named], summed, state["ms"][named],
                                    None, None, **HYPER)
    var = _to_host(dev["var"], "float32", rows * dim)[0].reshape(rows, dim)
    _assert_matches(var[named], want["var"], state["var"][named], "float32", "var")
    others = np.setdiff1d(np.arange(rows), named)
    np.testing.assert_array_equal(var[others], state["var"][others])


# ---- multi-tensor (ApplyRMSpropXMulti's chunk-list kernel) ---------------------------------

def _multi_case(harness, rng, dtype, variant, sizes, misaligned=(), disabled="buffer"):
    """Updates tensors of `sizes` in one multi call; each compared with the reference and
    its canaries. Tensors in `misaligned` start 1 element into their buffer (scalar path)."""
    states, grads, dev = [], [], []
    for i, n in enumerate(sizes):
        state = _state(rng, (n,), dtype)
        grad = _rounded(rng.normal(size=n) * 10.0 ** rng.uniform(-4, 0, size=n), dtype)
        shift = 1 if i in misaligned else 0
        arrays = {}
        for name, value in [("grad", grad)] + list(state.items()):
            arrays[name] = _shifted_to_device(value, dtype, shift)  # the view excludes the canaries
        states.append(state)
        grads.append(grad)
        dev.append(arrays)
    view = lambda name: [d[name][1] for d in dev]  # noqa: E731
    # Disabled slots as null or as buffers (see test_dense_matches_reference).
    def slots(name, enabled):
        return view(name) if enabled or disabled == "buffer" else None
    harness.multi(dtype, variant, HYPER, view("grad"), view("var"), view("ms"),
                  slots("mom", variant.momentum), slots("mg", variant.centered))
    harness.arrays.synchronize()
    for i, n in enumerate(sizes):
        state = states[i]
        want = _reference_dense(state, grads[i], variant, dtype)
        slack = _dense_slack(state, grads[i], variant, dtype, want)
        shift = 1 if i in misaligned else 0
        for name in ("var", "ms", "mom", "mg"):
            got, canary_ok = _to_host(dev[i][name][0], dtype, n + shift)
            assert canary_ok, f"tensor {i} ({n} elements) {name}: written past its end"
            got = got[shift:]
            if want[name] is None:
                np.testing.assert_array_equal(got, state[name])
            else:
                _assert_matches(got, want[name], state[name], dtype,
                                f"tensor {i} ({n} elements) {name}", slack=slack.get(name, 0.0))


@pytest.mark.parametrize("dtype", list(RTOL))
@pytest.mark.parametrize("variant", [v for v in VARIANTS if v.weight_decay_mode != "none"
                                     and v.lr_placement == "inside_momentum"], ids=str)
@pytest.mark.parametrize("disabled", ["null", "buffer"])
def test_multi_matches_reference(harness, rng, variant, dtype, disabled):
    # More tensors than one launch carries (36), empty and odd sizes, tensors of several
    # chunks (65536 elements; 1024 on the emulation), two misaligned ones (the scalar path).
    sizes = [int(s) for s in rng.integers(1, 3000, size=40)]
    sizes[3], sizes[11] = 0, 1
    chunk = harness.multi_chunk
    sizes[5], sizes[38] = chunk * 2 + 17, chunk
    _multi_case(harness, rng, dtype, variant, sizes, misaligned={7, 20}, disabled=disabled)


@pytest.mark.parametrize("sizes", [
    # 330 chunks of one tensor: more blocks than one launch carries (320), so the tensor
    # continues in the next launch; then tensors after it.
    [(0, 100), (330, -5), (0, 3), (1, 4464)],
    # Exactly 320 chunks: the launch is full at the tensor's last chunk (nothing carried).
    [(320, 0), (0, 5), (0, 3)],
    # Nothing to do: no launch (a launch of 0 blocks is a CUDA error).
    [(0, 0), (0, 0)]], ids=["carried", "full_at_last_chunk", "empty"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_multi_launch_boundaries(harness, rng, sizes, dtype):
    """Tensor sizes as (chunks, extra elements). float16: the second tensor one element into
    its buffers (every chunk of it on the scalar path, across launches)."""
    variant = Variant(False, True, False, "inside_sqrt", "inside_momentum", "none")
    sizes = [chunks * harness.multi_chunk + extra for chunks, extra in sizes]
    _multi_case(harness, rng, dtype, variant, sizes,
                misaligned={1} if dtype == "float16" else ())


@pytest.mark.parametrize("dtype", list(RTOL))
@pytest.mark.parametrize("variant", [v for v in VARIANTS if v.weight_decay_mode == "coupled"
                                     and v.epsilon_placement == "outside_sqrt"], ids=str)
def test_multi_equals_one_dense_launch_per_tensor_bit_for_bit(harness, rng, variant, dtype):
    # The optimizers' multi_tensor switch promises the same bits either way. The multi run
    # gets tensor 0 one element into its buffer (its scalar path) and the dense run gets it
    # aligned (the 128-bit path): an element's bits must not depend on the path.
    chunk = harness.multi_chunk
    sizes = [chunk + 4465, 5, 2 * chunk + 3, 1000]
    runs, seed = [], int(rng.integers(2**31))
    for multi in (True, False):
        r = np.random.default_rng(seed)  # the same inputs for both runs
        views = []
        for i, n in enumerate(sizes):
            shift = 1 if (multi and i == 0) else 0
            state = _state(r, (n,), dtype)
            state["grad"] = _rounded(r.normal(size=n), dtype)
            tensor = {}
            for k, v in state.items():
                tensor[k] = _shifted_to_device(v, dtype, shift)[1]
            views.append(tensor)
        if multi:
            harness.multi(dtype, variant, HYPER, *[[t[k] for t in views]
                                                   for k in ("grad", "var", "ms", "mom", "mg")])
        else:
            for t, n in zip(views, sizes):
                harness.dense(dtype, variant, HYPER, t["grad"], t["var"], t["ms"], t["mom"],
                              t["mg"], n=n)
        harness.arrays.synchronize()
        runs.append([{k: a.get() for k, a in t.items()} for t in views])
    for i, (a, b) in enumerate(zip(*runs)):
        for k in a:
            np.testing.assert_array_equal(a[k].view(np.uint8), b[k].view(np.uint8),
                                          err_msg=f"tensor {i} {k}")
