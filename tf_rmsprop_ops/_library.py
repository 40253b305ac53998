"""Loads the op library once, checking it matches the running TensorFlow."""
import importlib.machinery
import os

import tensorflow as tf

_HERE = os.path.dirname(os.path.abspath(__file__))
REBUILD_COMMAND = "pip install --no-build-isolation --force-reinstall --no-deps <tf_rmsprop_ops source>"
DEVELOPER_REBUILD_COMMAND = "make  (in the source checkout)"

# DTensor refuses ops without a layout rule; this opt-in (upper-cased MLIR op name) lets
# replicated layouts run our ops as-is. Set before DTensor first reads it.
for _op in ("APPLYRMSPROPX", "SPARSEAPPLYRMSPROPX"):
    os.environ.setdefault(f"DTENSOR_ENABLE_REPLICATED_SPMD_AS_DEFAULT_TF.{_op}", "1")


def _library_path():
    candidates = [os.path.join(_HERE, "_rmsprop_x_ops" + suffix)
                  for suffix in importlib.machinery.EXTENSION_SUFFIXES]
    candidates = [path for path in candidates if os.path.exists(path)]
    if not candidates:
        raise ImportError(
            f"tf_rmsprop_ops: the op library (_rmsprop_x_ops*.so) is missing from {_HERE}. "
            f"Build it: {REBUILD_COMMAND}, or `{DEVELOPER_REBUILD_COMMAND}`.")
    return candidates[0]


def _build_info():
    """The module `make` writes beside the library, or None (a hand-built library)."""
    try:
        from tf_rmsprop_ops import _build_info as info
    except ImportError:
        return None
    return info


def _minor(version):
    """'2.21.0' -> (2, 21); None when `version` has no major.minor."""
    parts = version.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def _install_spec(built):
    """'2.21.*' for a library built against 2.21.x; the version as built when it has no
    major.minor."""
    minor = _minor(built)
    return f"{minor[0]}.{minor[1]}.*" if minor else built


def _check_tensorflow_version():
    """The library's TensorFlow against the running one: another major.minor is an
    ImportError (TensorFlow keeps no C++ ABI across minors: symbols and struct layouts move);
    another patch release of the same minor loads with a warning (patch releases keep the
    framework's exported symbols; the tests run against the latest patch of each minor)."""
    info = _build_info()
    if info is None:
        return  # a hand-built library without build info: nothing to compare against
    built, running = info.TF_VERSION, tf.__version__
    if not built or built == running:
        return
    if _minor(built) is not None and _minor(built) == _minor(running):
        import warnings
        warnings.warn(
            f"tf_rmsprop_ops was built against TensorFlow {built} and TensorFlow {running} is "
            f"running: the same minor release, so it loads; rebuild (`{REBUILD_COMMAND}`) if "
            f"anything fails to load.", RuntimeWarning, stacklevel=3)
        return
    raise ImportError(
        f"tf_rmsprop_ops was built against TensorFlow {built}, but TensorFlow {running} is "
        f"running. Custom ops must be compiled against the TensorFlow minor release that "
        f"loads them: install TensorFlow {_install_spec(built)} again, or "
        f"rebuild with `{REBUILD_COMMAND}` (developers: `{DEVELOPER_REBUILD_COMMAND}`).")


def _mapped_copies():
    """Paths of this package's op libraries already mapped into the process (Linux; elsewhere
    an empty set, and the check below does not run)."""
    try:
        with open("/proc/self/maps") as maps:
            fields = (line.split(None, 5) for line in maps)
            paths = {f[5].strip().removesuffix(" (deleted)") for f in fields if len(f) == 6}
            return {p for p in paths if os.path.basename(p).startswith("_rmsprop_x_ops")}
    except OSError:
        return set()


def _check_no_other_copy(path):
    """TensorFlow aborts the process (a CHECK in the XLA op registry) when a second copy of
    the same ops is registered, e.g. an installed tf_rmsprop_ops and a source checkout's
    library in one process. Refuse that with an ImportError instead."""
    real = os.path.realpath(path)
    others = sorted(p for p in _mapped_copies() if os.path.realpath(p) != real)
    if others:
        raise ImportError(
            f"tf_rmsprop_ops: another copy of the op library is already loaded in this process "
            f"({others[0]}); loading {path} as well would abort the process (TensorFlow cannot "
            f"register the same ops twice). Import tf_rmsprop_ops from one location only.")


def _load(path=None):
    _check_tensorflow_version()
    path = path or _library_path()
    _check_no_other_copy(path)
    try:
        return tf.load_op_library(path)
    except tf.errors.NotFoundError as e:  # e.g. an undefined symbol after a TF upgrade
        raise ImportError(
            f"tf_rmsprop_ops: cannot load {path} into TensorFlow {tf.__version__}: {e.message}. "
            f"Rebuild: {REBUILD_COMMAND}.") from e


def _gpu_kernels():
    info = _build_info()
    if info is None:
        return "unknown (a hand-built library without build info)"
    return getattr(info, "GPU_KERNELS", "unknown (build info without it)")


def _nvidia_driver_present():
    """An NVIDIA driver is loaded (Linux), without initialising CUDA in this process (that
    would cost time at import and leave forked children unable to use CUDA)."""
    return os.path.exists("/proc/driver/nvidia/version")


def _warn_if_gpus_without_kernels(status):
    """A CUDA build of TensorFlow on a machine with an NVIDIA GPU, with a library built
    without GPU kernels: our ops cannot run on the GPU's variables (TensorFlow fails to place
    them). Say so at import, with the build's reason, instead of leaving it to a placement
    error. (A standard `warnings` filter silences it.)"""
    import warnings
    if not status.startswith("OFF") or not tf.test.is_built_with_cuda():
        return
    if _nvidia_driver_present():
        warnings.warn(
            f"tf_rmsprop_ops: this machine has an NVIDIA GPU, but this op library was built "
            f"without GPU kernels: {status}. Its ops will not run on GPU variables. Rebuild "
            f"against the full `tensorflow` wheel with nvcc at $CUDA_HOME/bin/nvcc (CUDA_HOME "
            f"defaults to /usr/local/cuda): TF_RMSPROP_OPS_GPU=1 {REBUILD_COMMAND}.",
            RuntimeWarning, stacklevel=2)


ops = _load()
LIBRARY_PATH = _library_path()
# "ON (...)" or "OFF (why)": whether `make` built the CUDA kernels into this library.
GPU_KERNELS = _gpu_kernels()
_warn_if_gpus_without_kernels(GPU_KERNELS)
