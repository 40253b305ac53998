"""What a spec is made of. A spec is one generated call as a JSON-able dict (`replay`
rebuilds the call from it): its family, dtype, attrs, hyperparameters, shapes, values and
fault. Here: the families, the hyperparameter names, the attrs' values, the dtypes (DType:
the storage type, the kernel's compute type, rounding to them, ulp) and the slots a call has."""
import ml_dtypes
import numpy as np
import tensorflow as tf

from tf_rmsprop_ops import reference


FAMILIES = ("dense", "sparse", "multi", "optimizer")
HYPER_NAMES = ("lr", "rho", "momentum", "epsilon", "weight_decay")
EPS_PLACEMENTS = reference.EPSILON_PLACEMENTS
LR_PLACEMENTS = reference.LR_PLACEMENTS
WD_MODES = reference.WEIGHT_DECAY_MODES


# ---- dtypes ----------------------------------------------------------------------------------

class DType:
    def __init__(self, name, tf_dtype, storage, compute):
        self.name, self.tf, self.np, self.compute = name, tf_dtype, storage, compute
        fi = ml_dtypes.finfo(storage) if storage is ml_dtypes.bfloat16 else np.finfo(storage)
        self.max = float(fi.max)
        self.tiny = float(fi.smallest_normal)
        self.subnormal = float(fi.smallest_subnormal)
        self.nmant = int(fi.nmant)
        self.minexp = int(fi.minexp)

    def round(self, x):
        """x (float64) rounded to this dtype, as float64 (what the op really sees)."""
        return np.asarray(x, np.float64).astype(self.np).astype(np.float64)

    def array(self, x):
        return np.asarray(x, np.float64).astype(self.np)

    def ulp(self, y):
        a = np.abs(y)
        ex = np.where(a > 0, np.floor(np.log2(np.where(a > 0, a, 1.0))), self.minexp)
        ex = np.maximum(ex, self.minexp)
        return np.where(np.isfinite(a), np.exp2(ex - self.nmant), 0.0)


DTYPES = {
    "float32": DType("float32", tf.float32, np.float32, np.float32),
    "float64": DType("float64", tf.float64, np.float64, np.float64),
    "float16": DType("float16", tf.float16, np.float16, np.float32),
    "bfloat16": DType("bfloat16", tf.bfloat16, ml_dtypes.bfloat16, np.float32),
}
DTYPE_NAMES = tuple(DTYPES)


def slot_names(attrs):
    return ["ms"] + (["mom"] if attrs["use_momentum"] else []) + (["mg"] if attrs["centered"] else [])
