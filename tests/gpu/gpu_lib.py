"""ctypes bindings of the GPU harness (libharness: the CUDA launchers without TensorFlow),
on CuPy arrays. `unavailable()` says why the GPU tests cannot run here (or None)."""
import ctypes

import numpy as np

DTYPES = {"float32": 0, "float64": 1, "float16": 2, "bfloat16": 3}
WD_MODES = {"none": 0, "decoupled": 1, "coupled": 2}


def unavailable():
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


class Harness:
    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        p, i64, i = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        self.lib.rx_dense.argtypes = [i] * 7 + [p] * 6 + [i64, p]
        self.lib.rx_sparse_workspace_bytes.argtypes = [i, i64]
        self.lib.rx_sparse_workspace_bytes.restype = i64
        self.lib.rx_sparse.argtypes = [i] * 8 + [p] * 3 + [i64, i64, i64] + [p] * 5 + [
            ctypes.POINTER(i64), ctypes.POINTER(i64), p]
        self.lib.rx_multi.argtypes = [i] * 7 + [p, i64] + [p] * 7

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

    def dense(self, dtype, variant, hyper, grad, var, ms, mom=None, mg=None, n=None, stream=0):
        self.prepare_dense(dtype, variant, hyper, grad, var, ms, mom, mg, n, stream)()

    def prepare_dense(self, dtype, variant, hyper, grad, var, ms, mom=None, mg=None, n=None,
                      stream=0):
        """A zero-argument callable making that launch, its arguments built once."""
        hp, keep = self._hyper(hyper)
        args = (DTYPES[dtype], *self._flags(variant), hp, self._ptr(grad), self._ptr(var),
                self._ptr(ms), self._ptr(mom), self._ptr(mg),
                int(n if n is not None else var.size), ctypes.c_void_p(stream))

        def launch(keep=keep):  # the hyperparameter array lives as long as it does
            err = self.lib.rx_dense(*args)
            if err:
                raise RuntimeError(f"rx_dense: CUDA error {err}")
        return launch

    def sparse(self, dtype, variant, hyper, grad, indices, rows, row_size, var, ms, mom=None,
               mg=None, workspace=None, stream=0):
        import cupy
        if indices.dtype not in (np.int32, np.int64):
            raise TypeError(f"indices must be int32 or int64, got {indices.dtype}")
        index_dtype = 0 if indices.dtype == np.int32 else 1
        n = int(indices.size)
        if workspace is None:
            workspace = cupy.empty(max(1, self.lib.rx_sparse_workspace_bytes(index_dtype, n)),
                                   dtype=cupy.int8)
        hp, keep = self._hyper(hyper)
        bad_offset, bad_value = ctypes.c_int64(-1), ctypes.c_int64(0)
        err = self.lib.rx_sparse(DTYPES[dtype], index_dtype, *self._flags(variant), hp,
                                 self._ptr(grad), self._ptr(indices), n, int(rows),
                                 int(row_size), self._ptr(var), self._ptr(ms), self._ptr(mom),
                                 self._ptr(mg), self._ptr(workspace), ctypes.byref(bad_offset),
                                 ctypes.byref(bad_value), ctypes.c_void_p(stream))
        del keep
        if err:
            raise RuntimeError(f"rx_sparse: CUDA error {err}")
        return None if bad_offset.value < 0 else (bad_offset.value, bad_value.value)

    def multi(self, dtype, variant, hyper, grads, vars_, ms, mom=None, mg=None, stream=0):
        """One multi-tensor launch sequence over lists of CuPy arrays (mom/mg: lists or None)."""
        self.prepare_multi(dtype, variant, hyper, grads, vars_, ms, mom, mg, stream)()

    def prepare_multi(self, dtype, variant, hyper, grads, vars_, ms, mom=None, mg=None,
                      stream=0):
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
                ctypes.cast(sizes, ctypes.c_void_p), ctypes.c_void_p(stream))

        def launch(keep=(keep, lists, sizes)):  # the ctypes arrays live as long as it does
            err = self.lib.rx_multi(*args)
            if err:
                raise RuntimeError(f"rx_multi: CUDA error {err}")
        return launch
