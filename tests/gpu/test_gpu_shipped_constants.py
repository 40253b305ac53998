"""The CUDA kernels with the launch constants they ship with, on sizes where those constants
matter, against the float64 reference.

test_gpu_kernels.py runs the emulation (tests/gpu/emu/) built with smaller constants (at most
3 blocks per launch, multi-tensor chunks of 1024 elements: build.build_emulated), so that
small tensors take the grid-stride loops and span many chunks. Those builds never run the
values a GPU build has: 8192 blocks of 256 threads, 65536-element chunks. Here the emulated
harness is built a second time with the headers' defaults (libharness_emu_shipped.so, about
13 s of g++ on 2 cores, once) and each kernel runs past one full grid or chunk:

- dense: more than 8192 x 256 vectors (128-bit path) or elements (scalar path), so every
  thread goes round its grid-stride loop, and a scalar tail;
- multi-tensor: tensors of several 65536-element chunks, ending inside a chunk or on its
  boundary, one of them misaligned, more tensors than one launch carries;
- sparse: more than 8192 x 256 indices (the index check's and the position fill's
  grid-stride loops; the first bad index lies in the second round) and more than 8192
  unique rows (the row kernel's grid-stride loop).

On a GPU (the cuda backend) the harness has these constants already and the same tests run
on it. Slow (about 40 s on the emulation on 2 cores, most of it the float64 reference)."""
import os
import re
import sys

import numpy as np
import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(os.path.dirname(_HERE))
sys.path[:0] = [_HERE, _ROOT]
import gpu_lib  # noqa: E402
import test_gpu_kernels as tgk  # noqa: E402  (its helpers, tolerances and backend choice)

from tf_rmsprop_ops import reference  # noqa: E402

pytestmark = [tgk.pytestmark, pytest.mark.slow]

Variant = gpu_lib.Variant


def _shipped_default(header, macro):
    """The value `header` gives `macro` when nothing overrides it (a GPU build's)."""
    with open(os.path.join(_ROOT, "cc", "cuda", header)) as f:
        return int(re.search(rf"#define {macro} (\d+)", f.read()).group(1))


SHIPPED_MAX_BLOCKS = _shipped_default("rmsprop_x_cuda_device.cuh", "RMSPROPX_CUDA_MAX_BLOCKS")
SHIPPED_MULTI_CHUNK = _shipped_default("rmsprop_x_cuda.h", "RMSPROPX_CUDA_MULTI_CHUNK")


@pytest.fixture(scope="module")
def shipped():
    h = (tgk._harness() if tgk.BACKEND == "cuda"
         else gpu_lib.open_harness("emulated", shipped_constants=True))
    assert (h.max_blocks, h.multi_chunk) == (SHIPPED_MAX_BLOCKS, SHIPPED_MULTI_CHUNK), (
        "the harness does not have the shipped launch constants")
    return h


@pytest.fixture
def harness(shipped, monkeypatch):
    # test_gpu_kernels' helpers (_to_device, _to_host, _rounded) allocate through its
    # harness; an emulated harness only accepts its own device memory.
    monkeypatch.setattr(tgk, "_HARNESS", [shipped])
    return shipped


def _vec_size(dtype):
    return 16 // np.dtype("uint16" if dtype == "bfloat16" else dtype).itemsize


@pytest.mark.parametrize("dtype, path", [("float64", "vector"), ("float32", "scalar")])
def test_dense_past_one_full_grid(harness, rng, dtype, path):
    """n beyond one grid of 8192 blocks x 256 threads: of 128-bit vectors (every array
    aligned; then a scalar tail), or of elements (grad one element into its buffer: the
    whole tensor on the scalar path). float64 for the vector path: its 2-element vectors
    need 4.2M elements (float32 would need 8.4M, 16-bit types 16.8M: the same loop, twice
    and four times the reference's time)."""
    variant = Variant(True, True, True, "inside_sqrt", "inside_momentum", "decoupled")
    grid = harness.max_blocks * harness.threads
    size = _vec_size(dtype) if path == "vector" else 1
    units = grid + int(rng.integers(1, grid // 64))  # past one grid: a second round
    n = units * size + (size - 1 if path == "vector" else 0)  # vector path: a scalar tail
    state = tgk._state(rng, (n,), dtype)
    grad = tgk._rounded(rng.normal(size=n) * 10.0 ** rng.uniform(-4, 0, size=n), dtype)
    dev = {k: tgk._to_device(v, dtype) for k, v in state.items()}
    shift = 1 if path == "scalar" else 0
    grad_buffer, grad_view = tgk._shifted_to_device(grad, dtype, shift, lead=1.0)
    harness.dense(dtype, variant, tgk.HYPER, grad_view, dev["var"], dev["ms"], dev["mom"],
                  dev["mg"], n=n)
    harness.arrays.synchronize()
    want = tgk._reference_dense(state, grad, variant, dtype)
    slack = tgk._dense_slack(state, grad, variant, dtype, want)
    for name in ("var", "ms", "mom", "mg"):
        got, canary_ok = tgk._to_host(dev[name], dtype, n)
        assert canary_ok, f"{name}: written past its end"
        tgk._assert_matches(got, want[name], state[name], dtype, f"{name} ({n} elements)",
                            slack=slack.get(name, 0.0))
    got_grad, canary_ok = tgk._to_host(grad_buffer, dtype, n + shift)
    assert canary_ok and np.array_equal(got_grad[shift:], grad), "grad was written"


@pytest.mark.parametrize("dtype", list(tgk.RTOL))
def test_multi_tensors_of_several_shipped_chunks(harness, rng, dtype):
    """40 tensors (36 fit one launch) with tensors of 2 to 4 chunks of 65536 elements:
    ending inside a chunk, on a chunk boundary, one element short of one; one misaligned
    (every chunk of it on the scalar path)."""
    variant = Variant(True, True, False, "outside_sqrt", "inside_momentum", "coupled")
    chunk = harness.multi_chunk
    sizes = [int(s) for s in rng.integers(1, 3000, size=40)]
    sizes[2] = 3 * chunk + int(rng.integers(1, chunk))  # a partial fourth chunk
    sizes[9] = chunk  # exactly one chunk
    sizes[17] = 2 * chunk + 17  # misaligned below: the scalar path over 3 chunks
    sizes[23] = 4 * chunk  # ends on a chunk boundary
    sizes[30] = chunk - 1
    sizes[35], sizes[36] = 0, 1
    tgk._multi_case(harness, rng, dtype, variant, sizes, misaligned={17}, disabled="null")


def _summed_in_order(grad, indices, dtype):
    """test_gpu_kernels._summed_in_order without its Python loop (millions of indices here):
    np.add.at adds in input order, one index at a time, in the kernel's compute type."""
    compute = np.float64 if dtype == "float64" else np.float32
    unique = np.unique(indices)
    summed = np.zeros((unique.size,) + grad.shape[1:], compute)
    np.add.at(summed, np.searchsorted(unique, indices), grad.astype(compute))
    return unique, summed.astype(np.float64)


def test_vectorised_in_order_sum_is_the_loop(rng):
    """The helper above gives test_gpu_kernels' loop's bits (float32 sums depend on order)."""
    indices = rng.integers(0, 7, size=3000)
    grad = (rng.normal(size=(3000, 3)) * 10.0 ** rng.uniform(-6, 6, size=(3000, 1)))
    for dtype in ("float32", "float64"):
        for a, b in zip(_summed_in_order(grad, indices, dtype),
                        tgk._summed_in_order(grad, indices, dtype)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype, index_dtype", [("float32", np.int32), ("float16", np.int64)],
                         ids=["float32-int32", "float16-int64"])
def test_sparse_past_one_full_grid(harness, rng, dtype, index_dtype):
    """More indices than one grid of threads and more unique rows than blocks. First with
    out-of-range indices whose first lies past one grid (reported, nothing written), then
    the same indices in range: summed in input order and applied once per row."""
    variant = Variant(True, True, False, "inside_sqrt", "inside_momentum", "decoupled")
    grid = harness.max_blocks * harness.threads
    count = grid + int(rng.integers(16, grid // 64))
    # Just over 8192 named rows (the reference loops over rows in Python) and some not named.
    named_count = harness.max_blocks + int(rng.integers(16, 256))
    rows = named_count + int(rng.integers(16, 512))
    dim = 5
    named_rows = rng.permutation(rows)[:named_count]  # each named ~250 times
    indices = named_rows[rng.integers(0, named_rows.size, size=count)].astype(index_dtype)
    state = tgk._state(rng, (rows, dim), dtype)
    grad = tgk._rounded(rng.normal(size=(count, dim)), dtype)
    dev = {k: tgk._to_device(v, dtype) for k, v in state.items()}
    dev_grad = tgk._to_device(grad, dtype)

    first = grid + int(rng.integers(0, count - grid - 2))  # a second round of the check
    bad = indices.copy()
    bad[[first, first + 1, count - 1]] = [rows, -1, rows + 7]
    assert harness.sparse(dtype, variant, tgk.HYPER, dev_grad, harness.arrays.asarray(bad),
                          rows, dim, dev["var"], dev["ms"], dev["mom"],
                          dev["mg"]) == (first, rows)
    for name in ("var", "ms", "mom", "mg"):
        np.testing.assert_array_equal(tgk._to_host(dev[name], dtype, rows * dim)[0],
                                      state[name].ravel(), err_msg=f"{name} written")

    assert harness.sparse(dtype, variant, tgk.HYPER, dev_grad, harness.arrays.asarray(indices),
                          rows, dim, dev["var"], dev["ms"], dev["mom"], dev["mg"]) is None
    unique, summed = _summed_in_order(grad, indices, dtype)
    assert unique.size > harness.max_blocks  # the row kernel's grid-stride loop ran

    def step(grad, var, ms, mom, mg):
        return reference.sparse_rmsprop_x_step(var, grad, unique, ms, mom, mg,
                                               **tgk._formula(variant, dtype))
    inputs = tgk._dense_inputs(state, summed, variant)
    want = step(**inputs)
    slack = tgk._slack(step, inputs, dtype, want)
    named = np.zeros(rows, bool)
    named[unique] = True
    for name in ("var", "ms", "mom", "mg"):
        got, canary_ok = tgk._to_host(dev[name], dtype, rows * dim)
        assert canary_ok, f"{name}: written past its end"
        got = got.reshape(rows, dim)
        np.testing.assert_array_equal(got[~named], state[name][~named],
                                      err_msg=f"{name}: a row no index names was written")
        tgk._assert_matches(got[named], want[name][named], state[name][named], dtype, name,
                            factor=4,
                            slack=np.broadcast_to(slack.get(name, 0.0), got.shape)[named])
