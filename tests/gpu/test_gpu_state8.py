"""The 8-bit-state CUDA kernel (cc/cuda/rmsprop_x_cuda8.cu.cc) without TensorFlow, through the
harness: the same bits as the CPU kernel for every variant, half / bfloat16 / float32 and
shapes with partial blocks, several rows and more blocks than one grid (grid-stride); NaN,
inf and all-zero blocks; canaries after every array (nothing written outside it).

The oracle is a kernel computing the same float32 operations, so the comparison is bit for
bit: where TensorFlow is installed (CI), the CPU op ApplyRMSpropX(state_bits=8); on the GPU
machine (no TensorFlow), the same kernel source on the CPU emulation of CUDA, whose block
reduction (__shared__ memory, __syncthreads) runs each block's threads as concurrent OS
threads (tests/gpu/emu/cuda_emu.h)."""
import importlib.util
import itertools
import os
import sys

import numpy as np
import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.dirname(os.path.dirname(_HERE))]
import gpu_lib  # noqa: E402

from tf_rmsprop_ops import reference  # noqa: E402  (NumPy only)

BACKEND, REASON = gpu_lib.test_backend()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"GPU harness ({BACKEND}): {REASON}")
HAVE_TF = importlib.util.find_spec("tensorflow") is not None

Variant = gpu_lib.Variant
VARIANTS = [Variant(c, m != "off", m == "nesterov", e, l, w)
            for c, m, e, l, w in itertools.product(
                (False, True), ("off", "on", "nesterov"), reference.EPSILON_PLACEMENTS,
                reference.LR_PLACEMENTS, reference.WEIGHT_DECAY_MODES)
            if m != "off" or l == "inside_momentum"]
NP_DTYPES = {"float32": np.float32, "float16": np.float16}
CANARY = 0 if os.environ.get("GPU_HARNESS_SANITIZE") == "address" else 5
_HARNESSES = {}


def _harness(which):
    if which not in _HARNESSES:
        _HARNESSES[which] = gpu_lib.open_harness(which)
    return _HARNESSES[which]


def _round(x, dtype):
    """float64 values of x rounded to `dtype` (bfloat16: float32's top half, nearest even)."""
    x = np.asarray(x, np.float64)
    if dtype == "bfloat16":
        u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
        u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
        return u.astype(np.uint32).view(np.float32).astype(np.float64)
    return x.astype(NP_DTYPES[dtype]).astype(np.float64)


def _storage(x, dtype):
    """x (already representable) in the kernel's storage: bfloat16 as uint16 bits."""
    if dtype == "bfloat16":
        return (np.asarray(x, np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return np.asarray(x, NP_DTYPES[dtype])


def _case(rng, shape, dtype, variant, odd=False):
    """var, grad, the 8-bit states (codes, absmax) and hyperparameters as the op sees them."""
    rows, row = reference._rows_of(shape)
    var = _round(rng.uniform(-2, 2, (rows, row)), dtype)
    grad = _round(rng.normal(size=(rows, row)) * 10.0 ** rng.uniform(-4, 0, (rows, row)), dtype)
    states = {}
    for k, on in (("ms", True), ("mom", variant.momentum), ("mg", variant.centered)):
        if not on:
            continue
        x = rng.normal(size=(rows, row)) * 10.0 ** rng.uniform(-6, 0, (rows, row))
        x = np.abs(x) if k == "ms" else x
        if odd and x.size > 600:
            flat = x.reshape(-1)
            flat[5] = np.nan       # poisons its block
            flat[300] = np.inf     # an infinite state: its block's other codes become 0
            flat[512:768] = 0.0    # an all-zero block (when rows are long enough)
        states[k] = reference.quantize_blockwise(x, reference.STATE_SIGNED[k])
    hyper = dict(lr=0.01, rho=0.9, momentum=0.8 if variant.momentum else 0.0, epsilon=1e-4,
                 weight_decay=0.03 if variant.weight_decay_mode != "none" else 0.0)
    via = np.float32  # a Python float reaches a 16-bit op through float32
    hyper = {k: float(_round(via(v), dtype)) for k, v in hyper.items()}
    return var, grad, states, hyper


def _with_canary(harness, a, fill):
    """A device copy of `a` (flat) followed by CANARY elements of `fill`."""
    flat = np.concatenate([np.ravel(a), np.full(CANARY, fill, a.dtype)])
    return harness.arrays.asarray(flat)


def _run_kernel(which, shape, dtype, variant, var, grad, states, hyper, indices=None):
    """The kernel's results (dense, or sparse: `grad` [len(indices), row], `indices`)."""
    harness = _harness(which)
    rows, row = reference._rows_of(shape)
    fills = {"var": _storage(np.float64(-1536.0), dtype)}
    dvar = _with_canary(harness, _storage(var, dtype), fills["var"])
    dgrad = harness.arrays.asarray(np.ravel(_storage(grad, dtype)))
    codes, absmax = [], []
    for k in ("ms", "mom", "mg"):
        if k in states:
            fills[k + " codes"], fills[k + " absmax"] = np.uint8(0xA7), np.float32(-7.0)
            codes.append(_with_canary(harness, states[k][0], fills[k + " codes"]))
            absmax.append(_with_canary(harness, states[k][1], fills[k + " absmax"]))
        else:
            codes.append(None)
            absmax.append(None)
    if indices is None:
        harness.dense8(dtype, variant, hyper, dgrad, dvar, codes, absmax, rows, row)
    else:
        bad = harness.sparse8(dtype, variant, hyper, dgrad, harness.arrays.asarray(indices),
                              rows, row, dvar, codes, absmax)
        assert bad is None, bad
    harness.arrays.synchronize()
    out = {"var": dvar.get()}
    for k, c, a in zip(("ms", "mom", "mg"), codes, absmax):
        if c is not None:
            out[k + " codes"], out[k + " absmax"] = c.get(), a.get()
    for name, x in out.items():  # the canaries keep their bits; then the arrays themselves
        tail = x[x.size - CANARY:]
        want = np.full(CANARY, fills[name], x.dtype)
        assert tail.tobytes() == want.tobytes(), f"{which} {name}: wrote past the array"
        out[name] = x[:x.size - CANARY]
    return out


def _cpu_op(shape, dtype, variant, var, grad, states, hyper, indices=None):
    """The CPU op's result (TensorFlow), in the harness's storage."""
    import tensorflow as tf
    import tf_rmsprop_ops
    from tf_rmsprop_ops.state8 import State8
    tf_dtype = {"float32": tf.float32, "float16": tf.float16, "bfloat16": tf.bfloat16}[dtype]
    v = tf.Variable(tf.cast(var.reshape(shape), tf_dtype))
    slots = {k: State8(tf.Variable(states[k][0].reshape(shape)), tf.Variable(states[k][1]))
             for k in states}
    attrs = dict(mom=slots.get("mom"), mg=slots.get("mg"), **hyper, nesterov=variant.nesterov,
                 epsilon_placement=variant.epsilon_placement, lr_placement=variant.lr_placement,
                 weight_decay_mode=variant.weight_decay_mode)
    if indices is None:
        tf_rmsprop_ops.apply_rmsprop_x(v, slots["ms"], tf.cast(grad.reshape(shape), tf_dtype),
                                       **attrs)
    else:
        tf_rmsprop_ops.sparse_apply_rmsprop_x(
            v, slots["ms"], tf.cast(grad.reshape((len(indices),) + tuple(shape[1:])), tf_dtype),
            indices, **attrs)
    out = {"var": _storage(tf.cast(v, tf.float32).numpy().astype(np.float64).ravel(), dtype)}
    for k, s in slots.items():
        out[k + " codes"] = s.codes.numpy().ravel()
        out[k + " absmax"] = s.absmax.numpy().ravel()
    return out


def _oracle(shape, dtype, variant, var, grad, states, hyper, indices=None):
    if HAVE_TF:
        return _cpu_op(shape, dtype, variant, var, grad, states, hyper, indices)
    reason = gpu_lib.unavailable("emulated")
    if reason is not None:
        pytest.fail(f"no oracle: neither TensorFlow nor the emulated harness ({reason})")
    return _run_kernel("emulated", shape, dtype, variant, var, grad, states, hyper, indices)


def _check(rng, shape, dtype, variant, odd=False, n_indices=None, index_dtype=np.int64):
    var, grad, states, hyper = _case(rng, shape, dtype, variant, odd)
    indices = None
    if n_indices is not None:  # sparse: duplicates, rows not named
        rows, row = reference._rows_of(shape)
        indices = rng.integers(0, rows, n_indices).astype(index_dtype)
        grad = _round(rng.normal(size=(n_indices, row)) * 10.0 ** rng.uniform(
            -4, 0, (n_indices, row)), dtype)
    got = _run_kernel(BACKEND, shape, dtype, variant, var, grad, states, hyper, indices)
    want = _oracle(shape, dtype, variant, var, grad, states, hyper, indices)
    assert got.keys() == want.keys()
    for k in want:  # floats by value (a NaN equals a NaN), codes exactly
        np.testing.assert_array_equal(got[k], want[k], err_msg=f"{variant} {dtype} {k}")
    return got


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_every_variant_is_the_cpu_kernel_bit_for_bit(rng, variant, dtype):
    _check(rng, (3, 300), dtype, variant)  # a full and a partial block per row


@pytest.mark.parametrize("shape", [(1,), (255,), (256,), (257,), (4, 256), (2, 3, 200),
                                   (5, 700), (9, 40)], ids=str)
def test_shapes_and_grid_stride(rng, shape):
    """(5, 700) and (9, 40) have more blocks (15, 9) than the emulation's 3-block grid: the
    kernel's grid-stride loop over blocks, with the shared memory reused per block."""
    variant = next(v for v in VARIANTS if v.centered and v.momentum and not v.nesterov)
    _check(rng, shape, "float32", variant)


def test_nan_inf_and_zero_blocks(rng):
    variant = next(v for v in VARIANTS if v.centered and v.momentum and not v.nesterov)
    got = _check(rng, (2, 1000), "float32", variant, odd=True)
    absmax = got["mom absmax"].reshape(2, 4)
    assert np.isnan(absmax[0, 0])  # the NaN poisoned its block


def test_empty_launches_nothing(rng):
    variant = VARIANTS[0]
    harness = _harness(BACKEND)
    var = harness.arrays.asarray(np.ones(3, np.float32))
    harness.dense8("float32", variant, dict(lr=0.1, rho=0.9, momentum=0.0, epsilon=1e-7,
                                            weight_decay=0.0),
                   var, var, [var, None, None], [var, None, None], 0, 7)
    np.testing.assert_array_equal(var.get(), np.ones(3, np.float32))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("variant", VARIANTS[::3], ids=str)
def test_sparse_is_the_cpu_kernel_bit_for_bit(rng, variant, dtype):
    """The sparse kernel: duplicated indices summed in input order, rows not named keep
    their codes and absmax (the oracle checks every element)."""
    _check(rng, (12, 300), dtype, variant, n_indices=10)


@pytest.mark.parametrize("shape, n", [((40, 64), 100), ((6, 2, 300), 4), ((30, 700), 50),
                                      ((8, 17), 1)], ids=str)
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64], ids=lambda d: d.__name__)
def test_sparse_shapes(rng, shape, n, index_dtype):
    variant = next(v for v in VARIANTS if v.centered and v.momentum and not v.nesterov)
    _check(rng, shape, "float32", variant, n_indices=n, index_dtype=index_dtype)


def test_sparse_out_of_range_index_writes_nothing(rng):
    variant = next(v for v in VARIANTS if v.momentum and not v.centered)
    harness = _harness(BACKEND)
    var, _, states, hyper = _case(rng, (5, 300), "float32", variant)
    dvar = harness.arrays.asarray(_storage(var, "float32"))
    codes = [harness.arrays.asarray(states["ms"][0]), harness.arrays.asarray(states["mom"][0]),
             None]
    absmax = [harness.arrays.asarray(states["ms"][1]), harness.arrays.asarray(states["mom"][1]),
              None]
    grad = harness.arrays.asarray(np.ones((3, 300), np.float32))
    bad = harness.sparse8("float32", variant, hyper, grad,
                          harness.arrays.asarray(np.array([0, 7, 2], np.int64)), 5, 300, dvar,
                          codes, absmax)
    assert bad == (1, 7)
    np.testing.assert_array_equal(dvar.get(), _storage(var, "float32"))
    np.testing.assert_array_equal(codes[0].get(), states["ms"][0])
    np.testing.assert_array_equal(absmax[1].get(), states["mom"][1])
