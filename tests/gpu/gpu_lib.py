"""ctypes bindings of the GPU harness (libharness: the CUDA launchers without TensorFlow).

Two backends run the same kernel sources:
  - "cuda": built with nvcc, on a GPU, arrays in CuPy device memory;
  - "emulated": built with the host compiler against tests/gpu/emu/ (a CPU emulation of
    the CUDA execution model, see cuda_emu.h), arrays in the emulation's device memory
    (pages the host cannot touch; ordinary heap arrays in the ASan build).
`GPU_HARNESS_BACKEND` picks one; by default "cuda" where a GPU, CuPy and nvcc are present,
else "emulated". `unavailable(backend)` says why a backend cannot run here (or None)."""
import ctypes
import dataclasses
import os

import numpy as np

DTYPES = {"float32": 0, "float64": 1, "float16": 2, "bfloat16": 3}
WD_MODES = {"none": 0, "decoupled": 1, "coupled": 2}
BACKENDS = ("cuda", "emulated")


@dataclasses.dataclass(frozen=True)
class Variant:
    """The structural options of one kernel instantiation (the hyperparameters are values)."""
    centered: bool
    momentum: bool
    nesterov: bool
    epsilon_placement: str
    lr_placement: str
    weight_decay_mode: str

    def __str__(self):
        return "-".join([("centered" if self.centered else "plain"),
                         ("nesterov" if self.nesterov else "momentum" if self.momentum else "nomom"),
                         self.epsilon_placement, self.lr_placement, self.weight_decay_mode])


def _cuda_unavailable():
    try:
        import cupy
    except ImportError as e:
        return f"CuPy is not installed ({e}): the GPU harness drives the kernels with CuPy"
    try:
        if cupy.cuda.runtime.getDeviceCount() == 0:
            return "no CUDA device"
    except Exception as e:  # noqa: BLE001 (no driver, no device)
        return f"no usable CUDA device ({type(e).__name__}: {e})"
    import build
    if build.nvcc() is None:
        return "nvcc not found"
    return None


def backend():
    """The backend this process tests: $GPU_HARNESS_BACKEND, else cuda where it can run."""
    chosen = os.environ.get("GPU_HARNESS_BACKEND")
    if chosen:
        if chosen not in BACKENDS:
            raise ValueError(f"GPU_HARNESS_BACKEND must be one of {BACKENDS}, got {chosen!r}")
        return chosen
    return "cuda" if _cuda_unavailable() is None else "emulated"


def test_backend():
    """(backend, why it cannot run here or None) for a test module: the GPU where
    GPU_HARNESS_REQUIRED=1 (then unavailable is an error, not a skip), else `backend()`."""
    which = "cuda" if os.environ.get("GPU_HARNESS_REQUIRED") else backend()
    reason = unavailable(which)
    if reason is not None and os.environ.get("GPU_HARNESS_REQUIRED"):
        raise RuntimeError(f"GPU harness required but unavailable: {reason}")
    return which, reason


def unavailable(which="cuda"):
    if which == "cuda":
        return _cuda_unavailable()
    import build
    if build.cxx() is None:
        return "no C++ compiler (g++ or $CXX) for the CPU emulation"
    return None


class HostArray(np.ndarray):
    """The ASan build's "device" array: heap memory (ASan bounds each array exactly) with
    CuPy's `.data.ptr` and `.get()`. Slices are views (their pointer is their first
    element's address)."""

    class _Pointer:
        def __init__(self, ptr):
            self.ptr = ptr

    @property
    def data(self):
        return HostArray._Pointer(self.ctypes.data if self.size else 0)

    def get(self):
        return np.array(self.view(np.ndarray), copy=True)


class HostArrays:
    """The few CuPy calls the tests make, on heap memory (the ASan build)."""

    @staticmethod
    def asarray(a):
        return np.array(a, copy=True).view(HostArray)

    @staticmethod
    def empty(shape, dtype):
        a = np.empty(shape, dtype)
        a.view(np.uint8)[...] = 0xA5  # poison, like memory nobody wrote
        return a.view(HostArray)

    @staticmethod
    def synchronize():
        pass


class EmulatedDeviceArray(HostArray):
    """The emulated backend's device array: pages of the emulation's device memory
    (tests/gpu/emu/device_memory.cc), which the host cannot read or write. Like a CuPy array:
    `.data.ptr` (HostArray's), and `.get()` copies to the host through the emulated
    cudaMemcpy. Slices are views of the same allocation."""

    def __array_finalize__(self, obj):
        self._allocation = getattr(obj, "_allocation", None)

    def __repr__(self):  # without reading the pages (pytest shows arguments in tracebacks)
        return f"<device array {self.dtype}{list(self.shape)} at {self.ctypes.data:#x}>"

    __str__ = __repr__

    def get(self):
        out = np.empty(self.shape, self.dtype)
        if self.size:
            if not self.flags.c_contiguous:
                raise ValueError("get(): a contiguous view only")
            lib = self._allocation.lib
            err = lib.rx_emu_memcpy(out.ctypes.data, self.ctypes.data, self.nbytes, 2)
            if err:
                raise RuntimeError(f"rx_emu_memcpy (device to host): CUDA error {err}")
        return out


class _DeviceAllocation:
    def __init__(self, lib, nbytes):
        self.lib = lib
        self.ptr = lib.rx_emu_malloc(max(1, nbytes))
        if not self.ptr:
            raise MemoryError(f"rx_emu_malloc({nbytes}) failed")

    def __del__(self):
        self.lib.rx_emu_free(self.ptr)


class EmulatedDeviceArrays:
    """The few CuPy calls the tests make, on the emulation's device memory: the host touches
    it only through the emulated cudaMemcpy / cudaMemset."""

    def __init__(self, lib):
        self.lib = lib
        p, size = ctypes.c_void_p, ctypes.c_size_t
        lib.rx_emu_malloc.argtypes, lib.rx_emu_malloc.restype = [size], p
        lib.rx_emu_free.argtypes = [p]
        lib.rx_emu_memcpy.argtypes = [p, p, size, ctypes.c_int]
        lib.rx_emu_memset.argtypes = [p, ctypes.c_int, size]

    def _allocate(self, shape, dtype):
        dtype = np.dtype(dtype)
        shape = (shape,) if np.isscalar(shape) else tuple(shape)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        allocation = _DeviceAllocation(self.lib, nbytes)
        # A NumPy view of the pages without reading them (the host may not).
        raw = (ctypes.c_char * max(1, nbytes)).from_address(allocation.ptr)
        a = np.frombuffer(raw, np.uint8, count=nbytes).view(dtype).reshape(shape)
        a = a.view(EmulatedDeviceArray)
        a._allocation = allocation
        return a

    def asarray(self, a):
        a = np.ascontiguousarray(a)
        out = self._allocate(a.shape, a.dtype)
        if a.nbytes:
            err = self.lib.rx_emu_memcpy(out.ctypes.data, a.ctypes.data, a.nbytes, 1)
            if err:
                raise RuntimeError(f"rx_emu_memcpy (host to device): CUDA error {err}")
        return out

    def empty(self, shape, dtype):
        out = self._allocate(shape, dtype)
        if out.nbytes:
            self.lib.rx_emu_memset(out.ctypes.data, 0xA5, out.nbytes)  # like unwritten memory
        return out

    @staticmethod
    def synchronize():
        pass


class CupyArrays:
    @staticmethod
    def asarray(a):
        import cupy
        return cupy.asarray(a)

    @staticmethod
    def empty(shape, dtype):
        import cupy
        a = cupy.empty(shape, dtype=dtype)
        a.reshape(-1).view(cupy.uint8).fill(0xA5)  # poison, like the other backends
        return a

    @staticmethod
    def synchronize():
        import cupy
        cupy.cuda.Device().synchronize()


class UBSanReports:
    """The emulated harness's UBSan log of this process: a call after which it grew raises
    with the new reports (the emulated kernel did something a GPU would fault on or that is
    undefined). One per log (`for_log`): every emulated harness of a process writes to the
    same file (the UBSan runtime takes its options from the first one loaded), so a second
    harness's planted self-test report must be consumed for the first one too."""

    _by_path = {}

    @classmethod
    def for_log(cls, prefix):
        path = f"{prefix}.{os.getpid()}"
        if path not in cls._by_path:
            cls._by_path[path] = cls(prefix)
        return cls._by_path[path]

    def __init__(self, prefix):
        self.path = f"{prefix}.{os.getpid()}"
        self.seen = self._size()

    def _size(self):
        return os.path.getsize(self.path) if os.path.exists(self.path) else 0

    def __call__(self, what):
        size = self._size()
        if size > self.seen:
            with open(self.path, errors="replace") as f:
                f.seek(self.seen)
                report = f.read()
            self.seen = size
            raise AssertionError(f"{what}: UBSan in the emulated kernels:\n{report}")


# The emulated backend's stream: not null, as TensorFlow's never is (the emulation rejects a
# null stream: code that dropped its caller's stream fails there).
EMULATED_STREAM = 0x5EED0


_OPEN = {}


def open_harness(which, shipped_constants=False):
    """The harness library of `which` backend, built if needed, and its array module; one
    per process and kind (a library loads once, and UBSan reports the planted self-test
    load once per process). `shipped_constants`: on the emulation, the build with a GPU
    build's launch constants (build.build_emulated); the cuda build always has them. Each
    emulated harness has its own device memory: arrays are allocated through the harness
    that uses them."""
    key = (which, shipped_constants)
    if key not in _OPEN:
        _OPEN[key] = _open_harness(which, shipped_constants)
    return _OPEN[key]


def _open_harness(which, shipped_constants):
    import build
    if which == "cuda":
        return Harness(build.build(), CupyArrays())
    path = build.build_emulated(shipped_constants=shipped_constants)
    if build.sanitized():  # ASan's run: UBSAN_OPTIONS sends reports elsewhere and halts;
        # heap arrays, so that ASan knows where each one ends
        return Harness(path, HostArrays(), default_stream=EMULATED_STREAM)
    reports = UBSanReports.for_log(build.ubsan_log())
    harness = Harness(path, None, reports, default_stream=EMULATED_STREAM)
    harness.arrays = EmulatedDeviceArrays(harness.lib)
    # The check can fail: a planted misaligned 128-bit load must reach the log.
    harness.lib.rx_emu_ubsan_selftest()
    try:
        reports("the planted misaligned load")
    except AssertionError as e:
        if "misaligned" not in str(e):
            raise
    else:
        raise RuntimeError("UBSan's log did not receive the planted misaligned load: the "
                           "emulated harness cannot report its kernels' undefined behaviour")
    return harness


class Harness:
    def __init__(self, path, arrays, after_call=None, default_stream=0):
        self.lib = ctypes.CDLL(path)
        self.arrays = arrays  # asarray / empty / synchronize on this backend's memory
        self.after_call = after_call or (lambda what: None)
        self.default_stream = default_stream
        p, i64, i = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        self.lib.rx_dense.argtypes = [i] * 7 + [p] * 6 + [i64, p]
        self.lib.rx_sparse_workspace_bytes.argtypes = [i, i64, i64]
        self.lib.rx_sparse_workspace_bytes.restype = i64
        self.lib.rx_sparse_update_count_only.argtypes = [i, i64, i64]
        self.lib.rx_sparse.argtypes = [i] * 8 + [p] * 3 + [i64, i64, i64] + [p] * 5 + [
            ctypes.POINTER(i64), ctypes.POINTER(i64), p]
        self.lib.rx_multi.argtypes = [i] * 7 + [p, i64] + [p] * 7
        self.lib.rx_dense8.argtypes = [i] * 7 + [p] * 5 + [i64, i64, p]
        self.lib.rx_sparse8.argtypes = [i] * 8 + [p] * 3 + [i64, i64, i64] + [p] * 4 + [
            ctypes.POINTER(i64), ctypes.POINTER(i64), p]
        self.lib.rx_multi_chunk.restype = i64
        self.multi_chunk = int(self.lib.rx_multi_chunk())  # elements per multi-tensor chunk
        self.lib.rx_threads.restype = self.lib.rx_max_blocks.restype = i64
        self.threads = int(self.lib.rx_threads())  # threads per block
        self.max_blocks = int(self.lib.rx_max_blocks())  # beyond: grid-stride loops

    def _stream(self, stream):
        return ctypes.c_void_p(self.default_stream if stream is None else stream)

    @staticmethod
    def _flags(variant):
        return [int(variant.centered), int(variant.momentum), int(variant.nesterov),
                int(variant.epsilon_placement == "outside_sqrt"),
                int(variant.lr_placement == "outside_momentum"),
                WD_MODES[variant.weight_decay_mode]]

    @staticmethod
    def _hyper(h):
        arr = (ctypes.c_double * 5)(h["lr"], h["rho"], h["momentum"], h["epsilon"],
                                    h["weight_decay"])
        return ctypes.cast(arr, ctypes.c_void_p), arr

    @staticmethod
    def _ptr(a):
        return None if a is None else ctypes.c_void_p(a.data.ptr)

    def dense(self, dtype, variant, hyper, grad, var, ms, mom=None, mg=None, n=None,
              stream=None):
        self.prepare_dense(dtype, variant, hyper, grad, var, ms, mom, mg, n, stream)()

    def prepare_dense(self, dtype, variant, hyper, grad, var, ms, mom=None, mg=None, n=None,
                      stream=None):
        """A zero-argument callable making that launch, its arguments built once."""
        hp, keep = self._hyper(hyper)
        args = (DTYPES[dtype], *self._flags(variant), hp, self._ptr(grad), self._ptr(var),
                self._ptr(ms), self._ptr(mom), self._ptr(mg),
                int(n if n is not None else var.size), self._stream(stream))

        def launch(keep=keep):  # the hyperparameter array lives as long as it does
            err = self.lib.rx_dense(*args)
            self.after_call("rx_dense")
            if err:
                raise RuntimeError(f"rx_dense: CUDA error {err}")
        return launch

    def dense8(self, dtype, variant, hyper, grad, var, codes, absmax, rows, row_size,
               stream=None):
        """The 8-bit-state kernel: `codes` / `absmax` are (ms, mom, mg) lists of device
        arrays, None where the feature is off; var and grad hold rows x row_size elements."""
        hp, keep = self._hyper(hyper)
        codes_p = (ctypes.c_void_p * 3)(*[None if c is None else c.data.ptr for c in codes])
        absmax_p = (ctypes.c_void_p * 3)(*[None if a is None else a.data.ptr for a in absmax])
        err = self.lib.rx_dense8(DTYPES[dtype], *self._flags(variant), hp, self._ptr(grad),
                                 self._ptr(var), ctypes.cast(codes_p, ctypes.c_void_p),
                                 ctypes.cast(absmax_p, ctypes.c_void_p), int(rows),
                                 int(row_size), self._stream(stream))
        del keep
        self.after_call("rx_dense8")
        if err:
            raise RuntimeError(f"rx_dense8: CUDA error {err}")

    def sparse8(self, dtype, variant, hyper, grad, indices, rows, row_size, var, codes,
                absmax, stream=None):
        """The sparse 8-bit kernel (after the index check): None, or (offset, value) of
        the first index out of range (then nothing was written)."""
        index_dtype = 0 if indices.dtype == np.int32 else 1
        n = int(indices.size)
        workspace = self.arrays.empty(
            max(1, self.lib.rx_sparse_workspace_bytes(index_dtype, n, int(rows))), np.int8)
        hp, keep = self._hyper(hyper)
        codes_p = (ctypes.c_void_p * 3)(*[None if c is None else c.data.ptr for c in codes])
        absmax_p = (ctypes.c_void_p * 3)(*[None if a is None else a.data.ptr for a in absmax])
        bad_offset, bad_value = ctypes.c_int64(-1), ctypes.c_int64(0)
        err = self.lib.rx_sparse8(DTYPES[dtype], index_dtype, *self._flags(variant), hp,
                                  self._ptr(grad), self._ptr(indices), n, int(rows),
                                  int(row_size), self._ptr(var),
                                  ctypes.cast(codes_p, ctypes.c_void_p),
                                  ctypes.cast(absmax_p, ctypes.c_void_p), self._ptr(workspace),
                                  ctypes.byref(bad_offset), ctypes.byref(bad_value),
                                  self._stream(stream))
        del keep
        self.after_call("rx_sparse8")
        if err:
            raise RuntimeError(f"rx_sparse8: CUDA error {err}")
        return None if bad_offset.value < 0 else (bad_offset.value, bad_value.value)

    def sparse(self, dtype, variant, hyper, grad, indices, rows, row_size, var, ms, mom=None,
               mg=None, workspace=None, stream=None):
        if indices.dtype not in (np.int32, np.int64):
            raise TypeError(f"indices must be int32 or int64, got {indices.dtype}")
        index_dtype = 0 if indices.dtype == np.int32 else 1
        n = int(indices.size)
        if workspace is None:
            workspace = self.arrays.empty(
                max(1, self.lib.rx_sparse_workspace_bytes(index_dtype, n, int(rows))),
                np.int8)
        hp, keep = self._hyper(hyper)
        bad_offset, bad_value = ctypes.c_int64(-1), ctypes.c_int64(0)
        err = self.lib.rx_sparse(DTYPES[dtype], index_dtype, *self._flags(variant), hp,
                                 self._ptr(grad), self._ptr(indices), n, int(rows),
                                 int(row_size), self._ptr(var), self._ptr(ms), self._ptr(mom),
                                 self._ptr(mg), self._ptr(workspace), ctypes.byref(bad_offset),
                                 ctypes.byref(bad_value), self._stream(stream))
        del keep
        self.after_call("rx_sparse")
        if err:
            raise RuntimeError(f"rx_sparse: CUDA error {err}")
        return None if bad_offset.value < 0 else (bad_offset.value, bad_value.value)

    def multi(self, dtype, variant, hyper, grads, vars_, ms, mom=None, mg=None, stream=None):
        """One multi-tensor launch sequence over lists of arrays (mom/mg: lists or None)."""
        self.prepare_multi(dtype, variant, hyper, grads, vars_, ms, mom, mg, stream)()

    def prepare_multi(self, dtype, variant, hyper, grads, vars_, ms, mom=None, mg=None,
                      stream=None):
        """A zero-argument callable making that launch sequence, its argument arrays built
        once (the benchmark times the launches, not Python marshalling 5 x N pointers)."""
        count = len(vars_)

        def pointers(arrays):
            if arrays is None:
                return None, None
            arr = (ctypes.c_void_p * count)(*[a.data.ptr for a in arrays])
            return ctypes.cast(arr, ctypes.c_void_p), arr
        hp, keep = self._hyper(hyper)
        lists = [pointers(x) for x in (grads, vars_, ms, mom, mg)]
        sizes = (ctypes.c_int64 * count)(*[int(v.size) for v in vars_])
        args = (DTYPES[dtype], *self._flags(variant), hp, count, *[p for p, _ in lists],
                ctypes.cast(sizes, ctypes.c_void_p), self._stream(stream))

        def launch(keep=(keep, lists, sizes)):  # the ctypes arrays live as long as it does
            err = self.lib.rx_multi(*args)
            self.after_call("rx_multi")
            if err:
                raise RuntimeError(f"rx_multi: CUDA error {err}")
        return launch
