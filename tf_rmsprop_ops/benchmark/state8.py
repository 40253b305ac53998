"""8-bit state case (`bench --state8`): the dense and the sparse op with momentum (float32
variables), 8-bit state against 32-bit state, in one process.

`rmspropx` (the table's reference column) is the 8-bit-state dense update; `dense_32bit` the
same update with float32 slots; `sparse_8bit` / `sparse_32bit` a [n / 64, 64] table with
10,000 random indices. The roofline is the 8-bit dense update's bytes: var read and written,
grad read, ms and mom codes read and written (16 bytes per element plus 4 per 256 of absmax),
probed as four float32 arrays (three read, one written: the same bytes).
"""
import numpy as np
import tensorflow as tf

from tf_rmsprop_ops.benchmark import roofline
from tf_rmsprop_ops.benchmark.timing import median_ms

HYPER = dict(lr=1e-3, rho=0.9, momentum=0.9, epsilon=1e-7)
ROW = 64
INDICES = 10_000


def _pair(rng, shape, bits):
    from tf_rmsprop_ops import state8
    var = tf.Variable((rng.random(shape, dtype=np.float32) + 0.1))
    if bits == 8:
        return var, state8.zeros(shape, False, "ms"), state8.zeros(shape, True, "mom")
    return var, tf.Variable(tf.zeros(shape)), tf.Variable(tf.zeros(shape))


def _steps(rng, n):
    import tf_rmsprop_ops
    grad = tf.constant(rng.standard_normal(n, dtype=np.float32) * 1e-3)
    rows = max(1, n // ROW)
    indices = tf.constant(rng.integers(0, rows, INDICES))
    values = tf.constant(rng.standard_normal((INDICES, ROW), dtype=np.float32) * 1e-3)
    out = {}
    for bits in (8, 32):
        var, ms, mom = _pair(rng, (n,), bits)
        table, tms, tmom = _pair(rng, (rows, ROW), bits)

        def dense(var=var, ms=ms, mom=mom):
            tf_rmsprop_ops.apply_rmsprop_x(var, ms, grad, mom=mom, **HYPER)

        def sparse(table=table, ms=tms, mom=tmom):
            tf_rmsprop_ops.sparse_apply_rmsprop_x(table, ms, values, indices, mom=mom, **HYPER)
        out["rmspropx" if bits == 8 else "dense_32bit"] = tf.function(dense)
        out[f"sparse_{bits}bit"] = tf.function(sparse)
    return out


def run(n, threads, repeats, rng):
    probe = roofline.make_probe(n * 4, 3, 1, threads)
    times = median_ms({**_steps(rng, n), "roofline": probe}, repeats)
    roof = times.pop("roofline")
    state_bytes = {8: 2 * (1 + 4 / 256), 32: 2 * 4}  # ms + mom, per element
    return dict(kind="state8", n=n, threads=threads, ms=times, roofline_ms=roof,
                state_bytes_per_element=state_bytes)
