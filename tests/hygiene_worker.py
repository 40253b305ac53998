"""Resource hygiene, measured in a fresh process (run by test_hygiene.py).

Usage: hygiene_worker.py SEED CYCLES WARMUP. Three measurements, printed as one JSON line
starting with "RESULT ":

* library: how many times the op library is mapped (/proc/self/maps) after importing the
  package, using RMSpropX, the Keras optimizer, and loading the library again.
* cycles: RSS after WARMUP build/update/delete cycles and after CYCLES (optimizers,
  variables, raw dense and sparse op calls on fresh variables; eager).
* peers: RSS growth per cycle of our Keras optimizer and of a freshly traced tf.function step
  of RMSpropX, each beside its peer (Keras' RMSprop, tf.compat.v1's RMSProp), which keep
  memory per cycle themselves.
* table: RSS around one huge sparse batch (the per-thread deduplication table of
  cc/kernels/unique_rows.cc) and the small batches after it (the table must be released).
"""
import ctypes
import gc
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 2.0 ** 20


_LIBC = ctypes.CDLL(None)


def rss():
    """Resident bytes after glibc returns what it can (malloc_trim): memory the kernels
    still hold stays counted, memory they freed is not hidden behind the heap's top."""
    _LIBC.malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def library_mappings():
    """{path: number of mappings at file offset 0} of every file named _rmsprop_x_ops*:
    each load of a shared object maps its first segment at offset 0 once."""
    loads = {}
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) < 6 or "_rmsprop_x_ops" not in os.path.basename(parts[5].strip()):
                continue
            path = parts[5].strip()
            loads.setdefault(path, 0)
            if int(parts[2], 16) == 0:
                loads[path] += 1
    return loads


def check_library(rng):
    import tf_rmsprop_ops
    from tf_rmsprop_ops import RMSpropX, _library
    after_import = library_mappings()
    v = tf.Variable(rng.uniform(-1, 1, (3, 2)).astype(np.float32))
    RMSpropX(learning_rate=0.1).apply_gradients([(tf.ones((3, 2)), v)])
    import keras
    import tf_rmsprop_ops.keras as tfx_keras
    kv = keras.Variable(rng.uniform(-1, 1, (4,)).astype(np.float32))
    tfx_keras.RMSpropX(learning_rate=0.1).apply_gradients([(tf.ones((4,)), kv)])
    again = _library._load()  # the package's loader, a second time
    tf.load_op_library(_library.LIBRARY_PATH)  # and TensorFlow's directly
    assert hasattr(again, "apply_rm_sprop_x")
    w, ms = tf.Variable([1.0, 2.0]), tf.Variable([4.0, 4.0])
    again.apply_rm_sprop_x(var=w.handle, slots=[ms.handle], lr=tf.constant(0.5),
                           rho=tf.constant(1.0), momentum=tf.constant(0.0),
                           epsilon=tf.constant(0.0), weight_decay=tf.constant(0.0),
                           grad=tf.constant([2.0, -2.0]))
    return {"after_import": after_import, "after_all": library_mappings(),
            "reloaded_op_result": w.numpy().tolist(), "library_path": _library.LIBRARY_PATH}


def check_cycles(rng, cycles, warmup):
    import tf_rmsprop_ops
    from tf_rmsprop_ops import RMSpropX
    init4 = rng.uniform(-1, 1, (4,)).astype(np.float32)
    init23 = rng.uniform(-1, 1, (2, 3)).astype(np.float32)
    g4 = tf.constant(rng.uniform(-1, 1, (4,)), tf.float32)
    g23 = tf.constant(rng.uniform(-1, 1, (2, 3)), tf.float32)
    rows, idx = tf.constant(rng.uniform(-1, 1, (3, 3)), tf.float32), tf.constant([1, 0, 1])
    ones23 = np.ones((2, 3), np.float32)

    def cycle(i):
        v = tf.Variable(init4)
        opt = RMSpropX(learning_rate=0.01, momentum=0.9 if i % 4 == 1 else 0.0,
                       centered=i % 4 == 2)
        opt.apply_gradients([(g4, v)])
        if i % 4 == 3:
            opt.apply_gradients([(g4, v)])
        w, ms = tf.Variable(init23), tf.Variable(ones23)
        tf_rmsprop_ops.apply_rmsprop_x(w, ms, g23, lr=0.01)
        if i % 2:
            tf_rmsprop_ops.sparse_apply_rmsprop_x(w, ms, rows, idx, lr=0.01)
        out = w.numpy()
        del opt, v, w, ms
        return out

    start = time.time()
    for i in range(warmup):
        cycle(i)
    gc.collect()
    rss_warm = rss()
    half = None
    for i in range(warmup, cycles):
        cycle(i)
        if i == (warmup + cycles) // 2:
            gc.collect()
            half = rss()
    gc.collect()
    rss_end = rss()
    # The last cycle's raw dense update (an even cycle: no sparse call) against the reference.
    from tf_rmsprop_ops import reference
    last = cycle(cycles - cycles % 2)
    want = reference.rmsprop_x_step(init23, g23.numpy(), ones23, lr=0.01)["var"]
    return {"cycles": cycles, "warmup": warmup, "seconds": time.time() - start,
            "rss_warm_mb": rss_warm / MB, "rss_mid_mb": half / MB, "rss_end_mb": rss_end / MB,
            "growth_mb": (rss_end - rss_warm) / MB,
            "last_cycle_max_error": float(np.max(np.abs(last - want)))}


def _growth_per_cycle_kb(cycle, n):
    """RSS growth per cycle (KB) over n cycles, after n / 5 warm-up cycles."""
    for i in range(n // 5):
        cycle(i)
    gc.collect()
    before = rss()
    for i in range(n):
        cycle(i)
    gc.collect()
    return (rss() - before) / n / 1024


def _ours_python_kept_per_cycle_kb(cycle, n):
    """The Python memory still held after n cycles that was allocated in this package's
    own code (tracemalloc, by the allocating line: a cache or registry of ours). A pass of
    its own: tracemalloc's records would count as RSS in _growth_per_cycle_kb."""
    import tracemalloc
    tracemalloc.start()
    first = tracemalloc.take_snapshot()
    for i in range(n):
        cycle(i)
    gc.collect()
    last = tracemalloc.take_snapshot()
    tracemalloc.stop()
    package = os.sep + "tf_rmsprop_ops" + os.sep
    kept = sum(d.size_diff for d in last.compare_to(first, "filename")
               if package in d.traceback[0].filename)
    return kept / 1024 / n


def check_peers(rng, n_keras, n_traced):
    """Cycles whose memory TensorFlow and Keras themselves keep: a Keras optimizer on a
    fresh Keras variable (Keras keeps ~35 KB per variable created, its own RMSprop ~180 KB
    per cycle), and a freshly traced tf.function step (TF keeps a few KB per traced graph,
    its own tf.compat.v1 RMSProp ~70 KB). Ours is measured beside the peer doing the same,
    in this process; ours must keep no more than the peer, and none of the Python memory
    still held may have been allocated by this package's own code."""
    import keras
    import tf_rmsprop_ops.keras as tfx_keras
    from tf_rmsprop_ops import RMSpropX
    init = rng.uniform(-1, 1, (4,)).astype(np.float32)
    grad = tf.constant(rng.uniform(-1, 1, (4,)), tf.float32)

    def keras_cycle(make):
        def cycle(i):
            v = keras.Variable(init)
            make().apply_gradients([(grad, v)])
        return cycle

    def traced_cycle(make_opt):
        def cycle(i):
            v, opt = tf.Variable(init), make_opt()

            @tf.function
            def step():
                opt.apply_gradients([(grad, v)])
            step()
        return cycle

    out = {"keras_cycles": n_keras, "traced_cycles": n_traced}
    for what, n, ours, peer in (
            ("keras", n_keras,
             keras_cycle(lambda: tfx_keras.RMSpropX(learning_rate=0.01, momentum=0.5)),
             keras_cycle(lambda: keras.optimizers.RMSprop(learning_rate=0.01, momentum=0.5))),
            ("traced", n_traced,
             traced_cycle(lambda: RMSpropX(learning_rate=0.01, momentum=0.5)),
             traced_cycle(lambda: tf.compat.v1.train.RMSPropOptimizer(0.01, momentum=0.5)))):
        out[f"{what}_ours_kb"] = _growth_per_cycle_kb(ours, n)
        out[f"{what}_ours_python_kb"] = _ours_python_kept_per_cycle_kb(ours, n // 4)
        out[f"{what}_peer_kb"] = _growth_per_cycle_kb(peer, n)
    return out


def check_table(rng, rows):
    import tf_rmsprop_ops
    lr = 2.0 ** -4
    var0 = (rng.integers(-2 ** 10, 2 ** 10, (rows, 1)) * 2.0 ** -6).astype(np.float32)
    var, ms = tf.Variable(var0), tf.Variable(tf.fill((rows, 1), 4.0))
    perm = rng.permutation(rows).astype(np.int32)
    indices = tf.constant(perm)
    grad = tf.constant(np.where(perm % 2, 1.0, -1.0)[:, None], tf.float32)  # +-1
    del perm
    small_idx, small_grad = tf.constant([3, 5, 3]), tf.constant([[1.0], [1.0], [1.0]])
    hyper = dict(lr=lr, rho=1.0, epsilon=0.0)

    def small():
        tf_rmsprop_ops.sparse_apply_rmsprop_x(var, ms, small_grad, small_idx, **hyper)

    small()
    gc.collect()
    before = rss()
    start = time.time()
    tf_rmsprop_ops.sparse_apply_rmsprop_x(var, ms, grad, indices, **hyper)
    huge_s = time.time() - start
    after_huge = rss()
    for _ in range(3):
        small()
    after_small = rss()
    # Every row got -lr * g / sqrt(4) once (rho = 1: ms stays 4); the four small batches
    # (entries of gradient 1: row 3 twice, row 5 once per batch) add 4 * lr * (2, 1) / 2.
    got = var.numpy()[:, 0].astype(np.float64)
    row_grad = np.where(np.arange(rows) % 2, 1.0, -1.0)
    want = var0[:, 0].astype(np.float64) - lr * row_grad / 2
    want[3] -= 4 * lr * 2 / 2
    want[5] -= 4 * lr * 1 / 2
    return {"rows": rows, "huge_batch_s": huge_s, "rss_before_mb": before / MB,
            "rss_after_huge_mb": after_huge / MB, "rss_after_small_mb": after_small / MB,
            "wrong_elements": int(np.sum(got != want)),
            "ms_changed": bool(np.any(ms.numpy() != 4.0))}


def main(seed, cycles, warmup, table_rows):
    rng = np.random.default_rng(seed)
    result = {"library": check_library(rng)}
    result["cycles"] = check_cycles(rng, cycles, warmup)
    result["table"] = check_table(rng, table_rows)
    result["peers"] = check_peers(rng, n_keras=400, n_traced=160)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
