"""Denormal case: the dense op (momentum, float32) with normal inputs vs subnormal ones.

Subnormal numbers (below 1.2e-38 in float32) take a slow microcode path on x86 unless the
thread flushes them (FTZ/DAZ). TensorFlow runs CPU kernels with flush-to-zero set, so the
two should cost the same; this case measures it, both eagerly (the op runs on the calling
thread for small tensors) and in a `tf.function`, and reports whether the outputs were
flushed (`flushed`: no subnormal left in the updated slots). The gradient is subnormal at
every step; the slots start subnormal and are flushed to zero by the first update.
"""
import numpy as np
import tensorflow as tf

from tf_rmsprop_ops.benchmark import roofline
from tf_rmsprop_ops.benchmark.dense import arrays_moved
from tf_rmsprop_ops.benchmark.timing import median_ms

TINY = float(np.finfo(np.float32).tiny)  # the smallest normal float32


def _step(rng, n, scale, in_function):
    import tf_rmsprop_ops

    def values():
        return (rng.uniform(0.5, 1.0, n) * scale).astype(np.float32)
    var = tf.Variable(rng.uniform(0.5, 1.0, n).astype(np.float32))
    ms, mom = tf.Variable(values()), tf.Variable(values())
    grad = tf.constant(values())
    # rho and momentum near 1 keep ms and mom at their (subnormal) scale step after step.
    hyper = dict(lr=1e-3, rho=0.999, momentum=0.999, epsilon=1e-7)

    def update():
        tf_rmsprop_ops.apply_rmsprop_x(var, ms, grad, mom=mom, **hyper)
    return (tf.function(update) if in_function else update), ms


def run(n, threads, repeats, rng):
    functions, slots = {}, {}
    for mode in ("eager", "function"):
        for label, scale in (("normal", 1.0), ("subnormal", 1e-39)):
            name = f"{mode}_{label}"
            functions[name], slots[name] = _step(rng, n, scale, mode == "function")
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
