"""DTensor case: a row-sharded [rows, 1024] float32 DVariable on a 2-device CPU mesh,
updated with RMSpropX(momentum=0.9); the two paths for sharded layouts side by side.

* `rmspropx`: eager `apply_gradients`: our op on each device's shard (`dtensor.unpack`).
* `in_graph`: the same call inside `tf.function`: TensorFlow elementwise ops under
  DTensor's SPMD expansion (per-device handles do not exist in a DTensor function).
* `replicated`: a replicated layout (every device holds the whole variable and does
  the whole update) with our op inside `tf.function`, for scale.

The case process configures two logical CPU devices before TensorFlow starts them; the
roofline is the bandwidth probe for one device's bytes (each device moves its shard).
"""
import numpy as np
import tensorflow as tf
from tensorflow.python.eager import context

from tf_rmsprop_ops.benchmark import roofline
from tf_rmsprop_ops.benchmark.dense import arrays_moved
from tf_rmsprop_ops.benchmark.timing import median_ms

DIM = 1024


def run(n, threads, repeats, rng):
    from tensorflow.experimental import dtensor

    from tf_rmsprop_ops import RMSpropX
    rows = max(2, n // DIM) // 2 * 2
    mesh = dtensor.create_mesh([("x", 2)], device_type="CPU")
    sharded = dtensor.Layout(["x", dtensor.UNSHARDED], mesh)
    replicated = dtensor.Layout.replicated(mesh, rank=2)

    def on(value, layout):
        return dtensor.relayout(dtensor.copy_to_mesh(tf.constant(value), replicated), layout)

    init = rng.random((rows, DIM), dtype=np.float32) + 0.1
    grad_value = rng.standard_normal((rows, DIM), dtype=np.float32)

    def make(layout, in_function):
        var = dtensor.DVariable(on(init, layout))
        grad = on(grad_value, layout)
        opt = RMSpropX(learning_rate=1e-3, momentum=0.9, mesh=mesh)
        opt.build([var])

        update = tf.function(opt.apply_gradients) if in_function else opt.apply_gradients

        def step():
            update([(grad, var)])
            context.async_wait()  # DTensor runs asynchronously: time the work, not the call
        return step

    functions = {"rmspropx": make(sharded, False), "in_graph": make(sharded, True),
                 "replicated": make(replicated, True)}
    reads, writes = arrays_moved("momentum")
    probe = roofline.make_probe(rows // 2 * DIM * 4, reads, writes, threads)
    times = median_ms({**functions, "roofline": probe}, repeats)
    roof = times.pop("roofline")
    return dict(kind="dtensor", n=rows * DIM, rows=rows, dim=DIM, threads=threads, ms=times,
                roofline_ms=roof)
