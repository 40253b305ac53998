"""tf_rmsprop_ops: fused RMSprop updates for TensorFlow (CPU kernels, XLA lowerings).

Ops: `apply_rmsprop_x` (dense) and `sparse_apply_rmsprop_x` / `apply_rmsprop_x_indexed_slices`
(rows of an IndexedSlices gradient). Optimizer: `RMSpropX`. The math: `tf_rmsprop_ops.reference`
and docs/design.md.

`import tf_rmsprop_ops` loads TensorFlow and registers the ops (a SavedModel that uses them
loads after it). Only the command line (`tf-rmsprop-ops`, `python -m tf_rmsprop_ops`) defers
that to first use, so that it parses its arguments without starting TensorFlow.
"""
import importlib
import importlib.util
import os
import sys

__version__ = "0.1.0"

_LAZY = {
    "RMSpropX": "tf_rmsprop_ops.optimizer",
    "apply_rmsprop_x": "tf_rmsprop_ops.ops",
    "sparse_apply_rmsprop_x": "tf_rmsprop_ops.ops",
    "apply_rmsprop_x_indexed_slices": "tf_rmsprop_ops.ops",
    "LIBRARY_PATH": "tf_rmsprop_ops._library",
    "GPU_KERNELS": "tf_rmsprop_ops._library",
    "reference": "tf_rmsprop_ops.reference",
    "presets": "tf_rmsprop_ops.presets",
    "keras": "tf_rmsprop_ops.keras",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        value = module if name in ("reference", "presets", "keras") else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tf_rmsprop_ops' has no attribute {name!r}")


def __dir__():
    return __all__


def _started_as_cli():
    """`tf-rmsprop-ops ...` or `python -m tf_rmsprop_ops ...` (the CLI loads TensorFlow and
    the op library itself, first thing after parsing: the library must be loaded before
    TensorFlow creates its devices, or XLA never learns the ops' lowerings)."""
    if sys.argv and os.path.basename(sys.argv[0]) == "tf-rmsprop-ops":
        return True
    argv = list(getattr(sys, "orig_argv", []))
    return "-m" in argv and argv[argv.index("-m") + 1:argv.index("-m") + 2] == ["tf_rmsprop_ops"]


def _tensorflow_installed():
    # Without TensorFlow only the NumPy parts (reference, presets) import: the GPU harness
    # (tests/gpu/) runs on machines that have none.
    return importlib.util.find_spec("tensorflow") is not None


if not _started_as_cli() and _tensorflow_installed():
    for _name in _LAZY:
        __getattr__(_name)
