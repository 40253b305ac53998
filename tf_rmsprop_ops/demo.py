"""`tf-rmsprop-ops demo`: trains a small model with RMSpropX in a tf.function loop.

The model has an embedding table (its gradient is an IndexedSlices: the sparse op updates
only the looked-up rows) and a dense layer (the dense op), so both kernels run.
"""
import time

import numpy as np
import tensorflow as tf

from tf_rmsprop_ops.optimizer import RMSpropX


def main(steps=300, jit_compile=False, seed=0):
    rng = np.random.default_rng(seed)
    vocab, dim, batch = 1000, 8, 64
    true_table = rng.normal(size=(vocab, dim)).astype(np.float32)
    true_w = rng.normal(size=(dim, 1)).astype(np.float32)

    table = tf.Variable(rng.normal(scale=0.1, size=(vocab, dim)).astype(np.float32),
                        name="embedding")
    w = tf.Variable(rng.normal(scale=0.1, size=(dim, 1)).astype(np.float32), name="kernel")
    opt = RMSpropX(learning_rate=0.01, momentum=0.9, centered=True, jit_compile=jit_compile)

    @tf.function
    def train_step(ids, y):
        with tf.GradientTape() as tape:
            pred = tf.reduce_sum(tf.gather(table, ids), axis=1) @ w
            loss = tf.reduce_mean((pred - y) ** 2)
        grads = tape.gradient(loss, [table, w])  # [IndexedSlices, Tensor]
        opt.apply_gradients(zip(grads, [table, w]))
        return loss

    print(f"training: embedding [{vocab}, {dim}] (sparse updates) + dense [{dim}, 1] with "
          f"RMSpropX(momentum=0.9, centered=True{', jit_compile=True' if jit_compile else ''})")
    start, losses = time.perf_counter(), []
    for step in range(1, steps + 1):
        ids = rng.integers(0, vocab, size=(batch, 4))
        y = (true_table[ids].sum(axis=1) @ true_w).astype(np.float32)
        losses.append(float(train_step(tf.constant(ids), tf.constant(y))))
        if step == 1 or step % max(1, steps // 10) == 0:
            print(f"  step {step:5d}  loss {np.mean(losses[-10:]):10.4f}", flush=True)
    elapsed = time.perf_counter() - start
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    print(f"loss {first:.4f} -> {last:.4f} in {steps} steps ({elapsed:.1f} s); "
          f"optimizer iterations: {int(opt.iterations.numpy())}")
    if not last < first:
        raise SystemExit("demo: the loss did not fall")
    return first, last
