"""Denormal case: the ops (momentum, float32) with normal inputs vs subnormal ones.

Subnormal numbers (below 1.2e-38 in float32) take a slow microcode path on x86 unless the
thread flushes them (FTZ/DAZ). TensorFlow runs CPU kernels with flush-to-zero set, so the
two should cost the same; this case measures it for the dense op eagerly (the op runs on the
calling thread for small tensors), in a `tf.function` and compiled by XLA
(`jit_compile=True`), and for the sparse op (every row once, in a `tf.function`), and
reports whether the outputs were flushed (`flushed`: no subnormal left in the updated
slots). The gradient is subnormal at every step; the slots start subnormal.
"""
import numpy as np
import tensorflow as tf

from tf_rmsprop_ops.benchmark import roofline
from tf_rmsprop_ops.benchmark.dense import arrays_moved
from tf_rmsprop_ops.benchmark.timing import median_ms

TINY = float(np.finfo(np.float32).tiny)  # the smallest normal float32


ROW = 16  # the sparse case's table: [n / ROW, ROW], every row updated once per step


def _step(rng, n, scale, mode):
    import tf_rmsprop_ops

    shape = (n // ROW, ROW) if mode == "sparse" else (n,)

    def values():
        return (rng.uniform(0.5, 1.0, shape) * scale).astype(np.float32)
    var = tf.Variable(rng.uniform(0.5, 1.0, shape).astype(np.float32))
    ms, mom = tf.Variable(values()), tf.Variable(values())
    grad = tf.constant(values())
    indices = tf.constant(rng.permutation(shape[0]).astype(np.int64))
    # rho and momentum near 1 keep ms and mom at their (subnormal) scale step after step.
    hyper = dict(lr=1e-3, rho=0.999, momentum=0.999, epsilon=1e-7)

    def update():
        if mode == "sparse":
            tf_rmsprop_ops.sparse_apply_rmsprop_x(var, ms, grad, indices, mom=mom, **hyper)
        else:
            tf_rmsprop_ops.apply_rmsprop_x(var, ms, grad, mom=mom, **hyper)
    if mode == "eager":
        return update, ms
    return tf.function(update, jit_compile=mode == "jit"), ms


MODES = ("eager", "function", "jit", "sparse")


def run(n, threads, repeats, rng):
    functions, slots = {}, {}
    for mode in MODES:
        for label, scale in (("normal", 1.0), ("subnormal", 1e-39)):
            name = f"{mode}_{label}"
            functions[name], slots[name] = _step(rng, n, scale, mode)
    reads, writes = arrays_moved("momentum")
    probe = roofline.make_probe(n * 4, reads, writes, threads)
    times = median_ms({**functions, "roofline": probe}, repeats)
    roof = times.pop("roofline")
    flushed = {}
    for name, ms in slots.items():
        if name.endswith("subnormal"):
            value = np.abs(ms.numpy())
            flushed[name] = bool(not np.any((value > 0) & (value < TINY)))
    # The table's reference column is `rmspropx`: the normal-input call in a function.
    ms_times = {"rmspropx": times.pop("function_normal"), **times}
    return dict(kind="denormals", n=n, threads=threads, ms=ms_times, roofline_ms=roof,
                flushed=flushed)
