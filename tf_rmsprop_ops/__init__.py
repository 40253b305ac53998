"""tf_rmsprop_ops: fused RMSprop updates for TensorFlow (CPU kernels, XLA lowerings).

Ops: `apply_rmsprop_x` (dense) and `sparse_apply_rmsprop_x` / `apply_rmsprop_x_indexed_slices`
(rows of an IndexedSlices gradient). The math: `tf_rmsprop_ops.reference`.
"""
from tf_rmsprop_ops import reference
from tf_rmsprop_ops._library import LIBRARY_PATH
from tf_rmsprop_ops.ops import (apply_rmsprop_x, apply_rmsprop_x_indexed_slices,
                                sparse_apply_rmsprop_x)
from tf_rmsprop_ops.optimizer import RMSpropX

__version__ = "0.1.0"

__all__ = ["RMSpropX", "apply_rmsprop_x", "sparse_apply_rmsprop_x", "apply_rmsprop_x_indexed_slices",
           "reference", "LIBRARY_PATH", "__version__"]
