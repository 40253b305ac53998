"""RMSpropX under MirroredStrategy (2 logical CPUs), in TF1-style graphs, and with
keras.Variables: every replica applies the same bits, equal to one device on the summed
gradient."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_rmsprop_ops import RMSpropX, reference

ROWS, DIM = 20, 4
KWARGS = dict(learning_rate=0.02, momentum=0.9, centered=True, epsilon=1e-6)
# Against the float64 reference: the float32 op on float32 inputs (the summed gradient one
# float32 rounding from the reference's float64 sum) is a few float32 roundings of its
# operands, var ~ N(0, 1) and steps under lr / 0.3 (the first centered step), 0.07 each; so
# 1e-6 x (1 + |value|), about 8 float32 ulps of max(1, |value|). Measured over 100 seeds
# of every such check: worst error 3.1e-7, 0.093 of this bound.
REF_TOL = dict(rtol=1e-6, atol=1e-6)


def _data(rng, steps, replicas=2):
    """Per step and replica: dense inputs x [5, DIM] and ids [6] into the table."""
    return [[(rng.normal(size=(5, DIM)).astype(np.float32),
              rng.integers(0, ROWS, size=6).astype(np.int64)) for _ in range(replicas)]
            for _ in range(steps)]


def _loss(w, table, x, ids):
    # Gradient scales spread over ~1e-4..1 so that epsilon matters.
    emb = tf.gather(table, ids)                          # IndexedSlices gradient
    return tf.reduce_sum((x @ w) ** 2) * 1e-3 + tf.reduce_sum(tf.sin(emb) * 1e-2)


_STRATEGY = []


def _strategy():
    # One strategy per process: eager collectives of a second MirroredStrategy reuse the
    # first one's instance keys (TensorFlow then reports a shape mismatch between them).
    if not _STRATEGY:
        _STRATEGY.append(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    return _STRATEGY[0]


def _one_device_run(init_w, init_t, data, opt_kwargs):
    """The same steps on one device, applying the sum of the replicas' gradients."""
    w, table = tf.Variable(init_w), tf.Variable(init_t)
    opt = RMSpropX(**opt_kwargs)
    for step in data:
        gw, gt_vals, gt_idx = 0, [], []
        for x, ids in step:
            with tf.GradientTape() as tape:
                loss = _loss(w, table, tf.constant(x), tf.constant(ids))
            dw, dt = tape.gradient(loss, [w, table])
            gw = gw + dw
            gt_vals.append(dt.values)
            gt_idx.append(dt.indices)
        gt = tf.IndexedSlices(tf.concat(gt_vals, 0), tf.concat(gt_idx, 0), table.shape)
        opt.apply_gradients([(gw, w), (gt, table)])
    return w, table, opt


def _mirrored_run(init_w, init_t, data, opt_kwargs, build_inside_run, use_function=True):
    strategy = _strategy()
    with strategy.scope():
        w, table = tf.Variable(init_w), tf.Variable(init_t)
        opt = RMSpropX(**opt_kwargs)
        if not build_inside_run:
            opt.build([w, table])

    def replica_step(xs, ids):
        with tf.GradientTape() as tape:
            loss = _loss(w, table, xs, ids)
        grads = tape.gradient(loss, [w, table])
        assert isinstance(grads[1], tf.IndexedSlices)
        opt.apply_gradients(zip(grads, [w, table]))
        return loss

    def step(xs, ids):
        return strategy.run(replica_step, args=(xs, ids))

    if use_function:
        step = tf.function(step)
    for per_replica in data:
        xs = strategy.experimental_distribute_values_from_function(
            lambda ctx, p=per_replica: tf.constant(p[ctx.replica_id_in_sync_group][0]))
        ids = strategy.experimental_distribute_values_from_function(
            lambda ctx, p=per_replica: tf.constant(p[ctx.replica_id_in_sync_group][1]))
        step(xs, ids)
    return strategy, w, table, opt


def _components(strategy, v):
    return [c.numpy() for c in strategy.experimental_local_results(v)]


@pytest.mark.parametrize("build_inside_run", [False, True], ids=["built", "lazy"])
@pytest.mark.parametrize("jit", [False, True], ids=["native", "xla"])
def test_mirrored_replicas_identical_and_equal_summed_one_device(rng, build_inside_run, jit):
    kwargs = dict(KWARGS, jit_compile=jit)
    init_w = rng.normal(size=(DIM, 3)).astype(np.float32)
    init_t = rng.normal(size=(ROWS, DIM)).astype(np.float32)
    data = _data(rng, 4)
    strategy, w, table, opt = _mirrored_run(init_w, init_t, data, kwargs, build_inside_run)
    ref_w, ref_t, ref_opt = _one_device_run(init_w, init_t, data, kwargs)

    assert int(opt.iterations.numpy()) == 4
    for var, ref in ((w, ref_w), (table, ref_t)):
        assert isinstance(var, tf.distribute.DistributedValues)
        pairs = [(var, ref)] + [(opt.get_slot(var, s), ref_opt.get_slot(ref, s))
                                for s in opt.slot_names]
        for mirrored, single in pairs:
            assert isinstance(mirrored, tf.distribute.DistributedValues), "slot not mirrored"
            copies = _components(strategy, mirrored)
            assert len(copies) == 2
            np.testing.assert_array_equal(copies[0], copies[1])  # bit-identical replicas
            np.testing.assert_allclose(copies[0], single.numpy(), rtol=1e-6, atol=1e-7)
    assert np.max(np.abs(_components(strategy, w)[0] - init_w)) > 1e-3  # it trained


def _reference_step_on_summed_gradients(init_w, init_t, step):
    """(w, table) after one KWARGS step from fresh slots on the replicas' summed gradients:
    the gradients from one device, the step from the float64 reference."""
    tw, tt = tf.Variable(init_w), tf.Variable(init_t)
    gw, vals, idx = 0, [], []
    for x, ids in step:
        with tf.GradientTape() as tape:
            loss = _loss(tw, tt, tf.constant(x), tf.constant(ids))
        dw, dt = tape.gradient(loss, [tw, tt])
        gw, vals, idx = gw + dw.numpy().astype(np.float64), vals + [dt.values.numpy()], idx + [ids]
    hyper = dict(lr=0.02, momentum=0.9, epsilon=1e-6)
    zeros = np.zeros_like
    want_w = reference.rmsprop_x_step(init_w, gw, zeros(init_w), zeros(init_w), zeros(init_w),
                                      **hyper)["var"]
    want_t = reference.sparse_rmsprop_x_step(init_t, np.concatenate(vals), np.concatenate(idx),
                                             zeros(init_t), zeros(init_t), zeros(init_t),
                                             **hyper)["var"]
    return want_w, want_t


def test_mirrored_matches_the_reference_on_summed_gradients(rng):
    """One step from fresh slots, checked against the float64 reference directly."""
    init_w = rng.normal(size=(DIM, 3)).astype(np.float32)
    init_t = rng.normal(size=(ROWS, DIM)).astype(np.float32)
    data = _data(rng, 1)
    strategy, w, table, _ = _mirrored_run(init_w, init_t, data, KWARGS, False,
                                          use_function=False)
    want_w, want_t = _reference_step_on_summed_gradients(init_w, init_t, data[0])
    for got in _components(strategy, w):
        np.testing.assert_allclose(got, want_w, **REF_TOL)
    for got in _components(strategy, table):
        np.testing.assert_allclose(got, want_t, **REF_TOL)


@pytest.mark.parametrize("use_function", [False, True], ids=["eager", "function"])
def test_cross_replica_apply_sums_per_replica_gradients(rng, use_function):
    """`apply_gradients` called outside `strategy.run` (in the strategy's scope) with the
    per-replica gradients `strategy.run` returned: they are summed, as inside `run`, and
    every copy applies the sum (each copy applying its own replica's gradient would make
    them diverge; before, this failed on PerReplica having no shape)."""
    strategy = _strategy()
    init_w = rng.normal(size=(DIM, 3)).astype(np.float32)
    init_t = rng.normal(size=(ROWS, DIM)).astype(np.float32)
    (step,) = _data(rng, 1)
    with strategy.scope():
        w, table = tf.Variable(init_w), tf.Variable(init_t)
        opt = RMSpropX(**KWARGS)
    xs = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(step[ctx.replica_id_in_sync_group][0]))
    ids = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(step[ctx.replica_id_in_sync_group][1]))

    def grads(x, i):
        with tf.GradientTape() as tape:
            loss = _loss(w, table, x, i)
        return tape.gradient(loss, [w, table])

    def apply():
        gw, gt = strategy.run(grads, args=(xs, ids))
        opt.apply_gradients([(gw, w), (gt, table)])

    with strategy.scope():
        (tf.function(apply) if use_function else apply)()
    want_w, want_t = _reference_step_on_summed_gradients(init_w, init_t, step)
    for var, want in ((w, want_w), (table, want_t)):
        copies = _components(strategy, var)
        np.testing.assert_array_equal(copies[0], copies[1])
        np.testing.assert_allclose(copies[0], want, **REF_TOL)
    assert int(opt.iterations.numpy()) == 1


def test_one_device_strategy_places_and_updates(rng):
    strategy = tf.distribute.OneDeviceStrategy("/cpu:1")
    init = rng.normal(size=(5,)).astype(np.float32)
    grad = rng.normal(size=(5,)).astype(np.float32)
    with strategy.scope():
        var = tf.Variable(init)
        opt = RMSpropX(**KWARGS)
    strategy.run(tf.function(lambda: opt.apply_gradients([(tf.constant(grad), var)])))
    assert opt.get_slot(var, "ms").device.endswith("CPU:1")
    want = reference.rmsprop_x_step(init, grad, np.zeros(5), np.zeros(5), np.zeros(5),
                                    lr=0.02, momentum=0.9, epsilon=1e-6)
    np.testing.assert_allclose(var.numpy(), want["var"], rtol=1e-6, atol=1e-7)


def test_v1_graph_apply_gradients_returns_the_update_op(rng):
    init = rng.normal(size=(4, 3)).astype(np.float32)
    grads = [rng.normal(size=(4, 3)).astype(np.float32) for _ in range(3)]
    table_init = rng.normal(size=(10, 3)).astype(np.float32)
    rows = rng.normal(size=(4, 3)).astype(np.float32)
    ids = np.array([1, 7, 1, 2])
    graph = tf.Graph()
    with graph.as_default():
        var, table = tf.Variable(init), tf.Variable(table_init)
        g = tf.compat.v1.placeholder(tf.float32, [4, 3])
        opt = RMSpropX(**KWARGS)
        train_op = opt.apply_gradients(
            [(g, var), (tf.IndexedSlices(tf.constant(rows), tf.constant(ids)), table)])
        assert isinstance(train_op, tf.Operation)
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            np.testing.assert_array_equal(sess.run(var), init)  # building it ran nothing
            for step in grads:
                sess.run(train_op, {g: step})
            got, got_table, iterations = sess.run([var, table, opt.iterations])
    want = dict(var=init, ms=np.zeros_like(init), mom=np.zeros_like(init),
                mg=np.zeros_like(init))
    for step in grads:
        want = reference.rmsprop_x_step(want["var"], step, want["ms"], want["mom"], want["mg"],
                                        lr=0.02, momentum=0.9, epsilon=1e-6)
    np.testing.assert_allclose(got, want["var"], **REF_TOL)
    assert iterations == 3
    z = np.zeros_like(table_init)
    want_t = dict(var=table_init, ms=z, mom=z, mg=z)
    for _ in grads:
        want_t = reference.sparse_rmsprop_x_step(want_t["var"], rows, ids, want_t["ms"],
                                                 want_t["mom"], want_t["mg"], lr=0.02,
                                                 momentum=0.9, epsilon=1e-6)
    np.testing.assert_allclose(got_table, want_t["var"], **REF_TOL)


@pytest.mark.parametrize("jit", [False, True], ids=["native", "xla"])
def test_keras_variables_find_their_slots(rng, jit):
    init = rng.normal(size=(3, 2)).astype(np.float32)
    grads = [rng.normal(size=(3, 2)).astype(np.float32) for _ in range(3)]
    kvar, tvar = keras.Variable(init), tf.Variable(init)
    ours, plain = RMSpropX(jit_compile=jit, **KWARGS), RMSpropX(**KWARGS)
    step = tf.function(lambda g: ours.apply_gradients([(g, kvar)]))
    for g in grads:
        step(tf.constant(g))
        plain.apply_gradients([(tf.constant(g), tvar)])
    np.testing.assert_allclose(np.asarray(kvar.numpy()), tvar.numpy(), rtol=1e-6, atol=1e-7)
    assert ours.get_slot(kvar, "ms") is ours.get_slot(kvar.value, "ms")
