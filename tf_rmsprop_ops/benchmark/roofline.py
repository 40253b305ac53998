"""The memory-bandwidth bound: bytes an update must move / bandwidth this machine grants.

The bandwidth comes from an in-process probe (cc/bench/stream_probe.cc): one fused,
vectorised, multi-threaded pass with the same number of arrays read and written in place
as the update, over the same number of bytes. For sparse updates a second probe,
`random_rows_ms`, moves the same random rows without the arithmetic: what random access
allows, as opposed to the streaming bound.
"""
import ctypes
import mmap
import os

import numpy as np

from tf_rmsprop_ops.benchmark.timing import median_ms

_PROBE_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "_stream_probe.so")


def _probe_library():
    lib = ctypes.CDLL(_PROBE_PATH)
    lib.stream_probe.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int,
                                 ctypes.c_int64, ctypes.c_int]
    lib.stream_probe.restype = ctypes.c_int
    lib.row_probe.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_void_p,
                              ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int]
    lib.row_probe.restype = ctypes.c_int
    return lib


def os_pages_array(shape):
    """A float32 array in anonymous memory from mmap, as TensorFlow's CPU allocator gets
    its large buffers (glibc malloc -> mmap): the same page size as the tensors under test
    (4 KiB where transparent huge pages are `madvise`-only). NumPy's own allocation
    asks for huge pages, which changed random row access by 1.7x on one VM (BENCHMARKS.md)."""
    count = int(np.prod(shape))
    buffer = mmap.mmap(-1, max(1, count) * 4)
    return np.frombuffer(buffer, dtype=np.float32, count=count).reshape(shape)


def _filled(shape, seed):
    a = os_pages_array(shape)
    a[...] = np.random.default_rng(seed).random(shape, dtype=np.float32)
    return a


def make_probe(num_bytes_per_array, reads, writes, threads):
    """A zero-argument callable: one probe pass over `reads` arrays (writing `writes` of
    them). The benchmark times it round-robin with the implementations, so that the bound
    and the updates see the same machine (a shared VM's bandwidth drifts within seconds).
    Runs one pass here: an unsupported pattern fails now, not as a missing timing."""
    lib = _probe_library()
    n = max(1, num_bytes_per_array // 4)
    arrays = [_filled(n, i) for i in range(reads)]
    pointers = (ctypes.c_void_p * reads)(*[a.ctypes.data for a in arrays])

    def run():
        if lib.stream_probe(pointers, reads, writes, n, threads) != 0:
            raise ValueError(f"probe has no ({reads} reads, {writes} writes) pattern")

    run.arrays = arrays  # the buffers live as long as the callable
    run()
    return run


def probe_ms(num_bytes_per_array, reads, writes, threads, repeats=9):
    """Median ms of one probe pass over `reads` arrays (writing `writes` of them)."""
    return median_ms({"probe": make_probe(num_bytes_per_array, reads, writes, threads)},
                     repeats)["probe"]


def bandwidth_gbs(num_bytes_per_array, reads, writes, threads):
    ms = probe_ms(num_bytes_per_array, reads, writes, threads)
    return (reads + writes) * num_bytes_per_array / (ms * 1e-3) / 1e9


def random_rows_ms(num_rows, dim, row_batches, num_tables, threads, repeats):
    """Median ms of reading and writing, in place, the rows of each batch (arrays of row
    numbers, used in turn) in `num_tables` float32 [num_rows, dim] tables, reading a
    gradient row for each: a sparse update's memory traffic without its arithmetic."""
    lib = _probe_library()
    tables = [_filled((num_rows, dim), i) for i in range(num_tables)]
    pointers = (ctypes.c_void_p * num_tables)(*[t.ctypes.data for t in tables])
    batches = [np.ascontiguousarray(b, dtype=np.int64) for b in row_batches]
    grad = np.random.default_rng(99).random((max(b.size for b in batches), dim), dtype=np.float32)
    state = {"i": 0}

    def run():
        rows = batches[state["i"] % len(batches)]
        state["i"] += 1
        lib.row_probe(pointers, num_tables, grad.ctypes.data, rows.ctypes.data, rows.size, dim,
                      threads)

    return median_ms({"rows": run}, repeats)["rows"]
