"""Sparse case: rows of a [rows, dim] table updated from N indices with duplicates."""
import keras
import numpy as np
import tensorflow as tf

import tf_rmsprop_ops
from tf_rmsprop_ops.benchmark import roofline
from tf_rmsprop_ops.benchmark.timing import median_ms

HYPER = dict(lr=1e-3, rho=0.9, epsilon=1e-7)
MOMENTUM = 0.9


def make_indices(rng, rows, n, duplicate_fraction=0.1):
    """n indices, of which ~duplicate_fraction repeat earlier ones, shuffled."""
    unique = rng.choice(rows, size=n - int(n * duplicate_fraction), replace=False)
    repeats = rng.choice(unique, size=n - unique.size)
    return rng.permutation(np.concatenate([unique, repeats])).astype(np.int64)


def _first_appearances(indices):
    """The unique values of `indices` in order of first appearance."""
    _, first = np.unique(indices, return_index=True)
    return indices[np.sort(first)]


def _batches(rng, rows, dim, num_indices, count=8):
    """A few different (grad, indices) batches, cycled: each step touches fresh rows, as
    training on new batches does."""
    return [(tf.constant(rng.standard_normal((num_indices, dim), dtype=np.float32)),
             tf.constant(make_indices(rng, rows, num_indices))) for _ in range(count)]


def _cycling(step, batches):
    state = {"i": 0}

    def call():
        grad, idx = batches[state["i"] % len(batches)]
        state["i"] += 1
        step(grad, idx)
    return call


def competitors(rows, dim, batches, rng):

    def table():
        return tf.Variable(rng.random((rows, dim), dtype=np.float32) + 0.1)

    out = {}
    for name, jit in (("rmspropx", False), ("rmspropx_xla", True)):
        var, ms, mom = table(), table(), table()

        def make(var=var, ms=ms, mom=mom, jit=jit):
            @tf.function(jit_compile=jit)
            def step(grad, idx):
                tf_rmsprop_ops.sparse_apply_rmsprop_x(var, ms, grad, idx, mom=mom,
                                                      momentum=MOMENTUM, **HYPER)
            return _cycling(step, batches)
        out[name] = make()

    var, ms, mom = table(), table(), table()

    @tf.function
    def tf_raw_dedupe(grad, idx):
        # TF's kernel applies a repeated index as repeated steps; dedupe first, in-graph.
        unique, position = tf.unique(idx)
        summed = tf.math.unsorted_segment_sum(grad, position, tf.shape(unique)[0])
        tf.raw_ops.ResourceSparseApplyRMSProp(
            var=var.handle, ms=ms.handle, mom=mom.handle, lr=HYPER["lr"], rho=HYPER["rho"],
            momentum=MOMENTUM, epsilon=HYPER["epsilon"], grad=summed, indices=unique)
    out["tf_raw_dedupe"] = _cycling(tf_raw_dedupe, batches)

    for name, jit in (("keras", False), ("keras_jit", True)):
        kvar = table()
        opt = keras.optimizers.RMSprop(momentum=MOMENTUM, learning_rate=HYPER["lr"],
                                       rho=HYPER["rho"], epsilon=HYPER["epsilon"])
        opt.build([kvar])

        def make_keras(opt=opt, kvar=kvar, jit=jit):
            @tf.function(jit_compile=jit)
            def step(grad, idx):
                dense_shape = tf.constant([rows, dim], tf.int64)
                opt.apply_gradients([(tf.IndexedSlices(grad, idx, dense_shape), kvar)])
            return _cycling(step, batches)
        out[name] = make_keras()
    return out


def run(rows, dim, num_indices, threads, repeats, rng):
    batches = _batches(rng, rows, dim, num_indices)
    unique = np.unique(batches[0][1].numpy()).size
    # A sparse step takes a few ms: time every batch several times over (at least 8 cycles
    # through the batches), or the median rests on a handful of cold first visits.
    repeats = max(repeats, 8 * len(batches))
    # Back to back: Keras' dense passes over the table would evict the next competitor's rows.
    times = median_ms(competitors(rows, dim, batches, rng), repeats, budget_s=5.0,
                      interleave=False)
    row_bytes = dim * 4
    # Row traffic: var, ms, mom read and written for each unique row; grad rows and
    # indices read once.
    bytes_moved = 6 * unique * row_bytes + num_indices * (row_bytes + 8)
    bandwidth = roofline.bandwidth_gbs(64 * 2**20, 4, 3, threads)
    # The same unique rows of var, ms and mom, in the order the kernel visits them (first
    # appearance), moved without the arithmetic.
    random_rows = roofline.random_rows_ms(
        rows, dim, [_first_appearances(idx.numpy()) for _, idx in batches], 3, threads, repeats)
    return dict(kind="sparse", rows=rows, dim=dim, indices=num_indices, unique=int(unique),
                threads=threads, ms=times, bytes_moved=bytes_moved, bandwidth_gbs=bandwidth,
                roofline_ms=bytes_moved / (bandwidth * 1e9) * 1e3,
                random_rows_ms=random_rows)
