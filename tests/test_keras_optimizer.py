"""`tf_rmsprop_ops.keras.RMSpropX`: Keras 3 trajectories, sparse rows, model.fit against
Keras' RMSprop (also under MirroredStrategy and jit_compile, with constraints) and, with
repeated and missed embedding rows, against the reference step by step, .keras save/load,
loss scaling."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import as_op_sees, assert_matches
from test_optimizer import KERAS_CASES, _assert_same_trajectory, _grads, _init, _schedule, _trajectory
from tf_rmsprop_ops import reference
from tf_rmsprop_ops.keras import RMSpropX

VOCAB, DIM = 50, 4


def _args(case):
    args = dict(KERAS_CASES[case])
    if args.get("learning_rate") == "schedule":
        args["learning_rate"] = _schedule()
    return args


@pytest.mark.parametrize("case", sorted(KERAS_CASES))
def test_trajectory_matches_keras3(case, rng):
    init, grads = _init(rng), _grads(rng, 20)
    ours, _ = _trajectory(RMSpropX(**_args(case)), init, grads)
    theirs, _ = _trajectory(keras.optimizers.RMSprop(**_args(case)), init, grads)
    _assert_same_trajectory(ours, theirs)


# RMSpropX(learning_rate=0.05)'s rate, rho and epsilon as its float32 ops see them.
F32_DEFAULTS = as_op_sees(dict(lr=0.05, rho=0.9, epsilon=1e-7), tf.float32)


def test_indexed_slices_go_to_the_sparse_op_lazily(rng):
    """A row touched at step 1 and not at step 2 keeps its velocity (Keras decays it)."""
    init = rng.normal(size=(VOCAB, DIM)).astype(np.float32)
    table = keras.Variable(init)
    opt = RMSpropX(learning_rate=0.05, momentum=0.5)
    steps = [np.array([1, 7, 1]), np.array([3, 7])]
    rows = [rng.normal(size=(len(i), DIM)).astype(np.float32) for i in steps]
    want = dict(var=init, ms=np.zeros_like(init), mom=np.zeros_like(init))
    for ids, values in zip(steps, rows):
        opt.apply_gradients([(tf.IndexedSlices(tf.constant(values), tf.constant(ids),
                                               tf.constant([VOCAB, DIM])), table)])
        want = reference.sparse_rmsprop_x_step(want["var"], values, ids, want["ms"],
                                               want["mom"], momentum=0.5, **F32_DEFAULTS)
    np.testing.assert_allclose(np.asarray(table.numpy()), want["var"], rtol=1e-6, atol=1e-7)
    velocity = np.asarray(opt.get_slot(table, "velocity").numpy())
    np.testing.assert_allclose(velocity, want["ms"], rtol=1e-6, atol=1e-9)
    assert velocity[1].min() > 0  # touched at step 1 only: not decayed at step 2


BATCH = 32
# model.fit's arguments for the comparisons below (the Keras peer takes the same ones).
# epsilon 1e-3 bounds a step's response to its gradient by lr / sqrt(epsilon) = 0.3. With
# Keras' 1e-7 it is 32, and a gradient near 0 whose rounding is large against it moves the
# weights by 32x that rounding: the output bias's, a mean of residuals that cancel, which
# XLA sums in another order (1.3e-3 of itself apart at step 1 of seed 13's XLA test), put
# the two sides 1.6e-5 of the largest weight apart after 16 steps, 50x the usual.
FIT_KWARGS = dict(learning_rate=0.01, momentum=0.9, centered=True, epsilon=1e-3)
# As the float32 ops see them (rho: the default, 0.9), for the reference.
FIT_HYPER = as_op_sees(dict(lr=FIT_KWARGS["learning_rate"], rho=0.9,
                            momentum=FIT_KWARGS["momentum"], epsilon=FIT_KWARGS["epsilon"]),
                       tf.float32)


def _model(rows, seed=1):
    keras.utils.set_random_seed(seed)
    ids = keras.Input((3,), dtype="int32")
    x = keras.Input((6,))
    emb = keras.layers.Flatten()(keras.layers.Embedding(rows, DIM)(ids))
    # Glorot columns of a [6, 8] kernel have norms ~0.9: MaxNorm(0.3) must act.
    h = keras.layers.Dense(8, activation="tanh", name="hidden",
                           kernel_constraint=keras.constraints.MaxNorm(0.3))(x)
    out = keras.layers.Dense(1)(keras.layers.Concatenate()([emb, h]))
    return keras.Model([ids, x], out)


# Each sample names 3 rows: a batch of BATCH samples names each row of a 3 * BATCH-row table
# exactly once when its ids are a permutation. Only there do Keras' RMSprop and the lazy
# sparse op do the same arithmetic: Keras decays the rows a batch misses (we leave them)
# and adds a repeated row's squared gradients one by one (we square their sum, as a dense
# gradient would). With misses or repeats Keras is no peer; the reference is
# (`_ReferenceSteps`).
ROWS = 3 * BATCH


def _data(rng, n=4 * BATCH, every_row_once=True, rows=ROWS):
    if every_row_once:
        assert rows == 3 * BATCH and n % BATCH == 0
        ids = np.concatenate([rng.permutation(rows) for _ in range(n // BATCH)])
    else:
        ids = rng.integers(0, rows, size=3 * n)
    return ([ids.reshape(n, 3).astype(np.int32), rng.normal(size=(n, 6)).astype(np.float32)],
            rng.normal(size=(n, 1)).astype(np.float32))


def _keras_twin(init, kwargs):
    """`_model(ROWS)` from the weights `init`, compiled with Keras' RMSprop (native:
    Keras' own RMSprop under jit_compile takes seconds a step here)."""
    twin = _model(ROWS)
    twin.set_weights(init)
    twin.compile(optimizer=keras.optimizers.RMSprop(**kwargs), loss="mse")
    return twin


SLOT_KINDS = ("velocity", "momentum", "average_gradient")
# RMSpropX against keras.optimizers.RMSprop after model.fit on the same model, initial
# weights, data in the same order (shuffle=False) and arguments: the same formula with other
# float32 roundings (Keras computes lr * g / sqrt(...) in another order and weight decay in a
# pass of its own; under XLA the model's gradients round differently too), a few ulps a step
# that feed back through the later steps' gradients. An element's error is relative to its
# value plus the largest value of its kind in the model (weights; each slot kind): momentum
# and average_gradient are sums of signed terms of about that size, which may cancel near 0.
# Measured with FIT_KWARGS (16 steps in each setting, seeds 1-30; the tests take 8 to 16):
# at most 5.2e-7 (natively, under XLA against Keras native, under MirroredStrategy, with
# weight decay alike); bound 1e-5, 19x that.
FIT_RTOL = 1e-5


def _assert_fit_matches_keras(ours, theirs):
    assert int(ours.optimizer.iterations.numpy()) == int(theirs.optimizer.iterations.numpy())
    kinds = {"weights": list(zip(ours.weights, theirs.weights))}
    slots = [v for v in ours.optimizer.variables if v.name.endswith(SLOT_KINDS)]
    peer_slots = [v for v in theirs.optimizer.variables if v.name.endswith(SLOT_KINDS)]
    assert len(slots) == len(peer_slots) == len(SLOT_KINDS) * len(ours.weights)
    for a, b in zip(slots, peer_slots):
        kind = next(k for k in SLOT_KINDS if a.name.endswith(k))
        assert b.name.endswith(kind), (a.name, b.name)
        kinds.setdefault(kind, []).append((a, b))
    for kind, pairs in kinds.items():
        pairs = [(np.asarray(a.numpy()), np.asarray(b.numpy()), a.name) for a, b in pairs]
        scale = max(float(np.abs(b).max()) for _, b, _ in pairs)
        for a, b, name in pairs:
            np.testing.assert_allclose(a, b, rtol=FIT_RTOL, atol=FIT_RTOL * scale,
                                       err_msg=f"{kind} {name}")


def _assert_moved(model, init):
    """The comparison means something: the weights moved 100x beyond its tolerance (a
    single weight may end where it started: the output bias, stepping by the mean residual)."""
    moved = max(np.abs(np.asarray(w.numpy()) - w0).max() for w, w0 in zip(model.weights, init))
    assert moved > 1e-3


@pytest.mark.parametrize("jit", [False, True], ids=["native", "xla"])
def test_model_fit_matches_keras_rmsprop_and_applies_constraints(rng, jit):
    x, y = _data(rng)
    model = _model(ROWS)
    init = model.get_weights()
    model.compile(optimizer=RMSpropX(**FIT_KWARGS), loss="mse", jit_compile=jit)
    model.fit(x, y, epochs=4, batch_size=BATCH, verbose=0, shuffle=False)
    twin = _keras_twin(init, FIT_KWARGS)
    twin.fit(x, y, epochs=4, batch_size=BATCH, verbose=0, shuffle=False)
    _assert_moved(model, init)
    _assert_fit_matches_keras(model, twin)
    kernel = model.get_layer("hidden").kernel.numpy()
    assert np.sqrt((kernel ** 2).sum(axis=0)).max() <= 0.3 + 1e-5


class _Recording(RMSpropX):
    """RMSpropX keeping a copy of each step's gradients (as `apply` gets them from
    model.fit) in variables made beforehand by `record(model)`."""

    def record(self, model):
        self.kinds = None  # which gradients are IndexedSlices (set while tracing)
        self.grads = [(tf.Variable(tf.zeros([3 * BATCH, DIM])),
                       tf.Variable(tf.zeros([3 * BATCH], tf.int64)))
                      if "embeddings" in w.path else tf.Variable(tf.zeros(w.shape))
                      for w in model.trainable_weights]

    def apply(self, grads, trainable_variables=None):
        grads = list(grads)
        self.kinds = [isinstance(g, tf.IndexedSlices) for g in grads]
        for g, copy in zip(grads, self.grads):
            if isinstance(g, tf.IndexedSlices):
                copy[0].assign(g.values)
                copy[1].assign(tf.cast(g.indices, tf.int64))
            else:
                copy.assign(g)
        return super().apply(grads, trainable_variables)


class _ReferenceSteps(keras.callbacks.Callback):
    """Checks each step of model.fit against the float64 reference, from the state the
    step started from, driven with the gradients the optimizer got (`_Recording`), then the
    hidden kernel's MaxNorm as Keras computes it."""

    def __init__(self, hyper):
        super().__init__()
        self.hyper, self.steps, self.repeats, self.misses = hyper, 0, 0, 0

    def _state(self):
        opt, out = self.model.optimizer, []
        for w in self.model.trainable_weights:
            value = np.asarray(w.numpy(), np.float64)
            slots = {name: (np.asarray(opt.get_slot(w, name).numpy(), np.float64)
                            if opt.built else np.zeros_like(value)) for name in ("ms", "mom", "mg")}
            out.append(dict(var=value, **slots))
        return out

    def on_train_batch_begin(self, batch, logs=None):
        self.before = self._state()

    def on_train_batch_end(self, batch, logs=None):
        opt = self.model.optimizer
        for w, copy, s, got in zip(self.model.trainable_weights, opt.grads, self.before,
                                   self._state()):
            if isinstance(copy, tuple):  # the embedding's rows
                values, ids = (c.numpy() for c in copy)
                want = reference.sparse_rmsprop_x_step(s["var"], values, ids, s["ms"],
                                                       s["mom"], s["mg"], **self.hyper)
                self.repeats += len(np.unique(ids)) < len(ids)
                self.misses += len(np.unique(ids)) < len(s["var"])
            else:
                want = reference.rmsprop_x_step(s["var"], copy.numpy(), s["ms"], s["mom"],
                                                s["mg"], **self.hyper)
            if w.constraint is not None:  # keras.constraints.MaxNorm(0.3), axis 0
                norms = np.sqrt((want["var"] ** 2).sum(axis=0, keepdims=True))
                want["var"] = want["var"] * (np.minimum(norms, 0.3) / (1e-7 + norms))
            assert_matches(got, {k: want[k] for k in got}, tf.float32,
                           rtol=REFERENCE_STEP_RTOL, what=f"step {self.steps} {w.name} ",
                           before=s)
        self.steps += 1


# One float32 step against float64 from the same float32 state and gradients (helpers.RTOL:
# 1e-6), then MaxNorm's float32 norm, quotient and product (another 1e-6). Measured (seeds
# 1-30, 8 steps each): at most 3.9e-7 of an element's value plus its array's scale before
# and after the step (helpers.assert_matches); bound 2e-6.
REFERENCE_STEP_RTOL = 2e-6


def test_model_fit_updates_embedding_rows_lazily_as_the_reference(rng):
    """Ids with repeats and misses (no Keras peer: see ROWS): each step of model.fit against
    the reference, which sums a repeated row's gradients and leaves a missed row and its
    slots alone."""
    x, y = _data(rng, every_row_once=False, rows=VOCAB)
    model = _model(VOCAB)
    opt = _Recording(**FIT_KWARGS)
    opt.record(model)
    model.compile(optimizer=opt, loss="mse")
    check = _ReferenceSteps(FIT_HYPER)
    model.fit(x, y, epochs=2, batch_size=BATCH, verbose=0, shuffle=False, callbacks=[check])
    assert opt.kinds == ["embeddings" in w.path for w in model.trainable_weights]
    # 96 ids of 50 rows: repeats every step; a step names all 50 with probability ~1e-3.
    assert check.steps == check.repeats == 8 and check.misses > 0


def test_save_and_load_continue_exactly(rng, tmp_path):
    x, y = _data(rng)
    model = _model(ROWS)
    init = model.get_weights()
    kwargs = dict(FIT_KWARGS, weight_decay=0.01)
    model.compile(optimizer=RMSpropX(**kwargs), loss="mse")
    model.fit(x, y, epochs=1, batch_size=BATCH, verbose=0, shuffle=False)
    path = str(tmp_path / "m.keras")
    model.save(path)
    model.fit(x, y, epochs=1, batch_size=BATCH, verbose=0, shuffle=False)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, RMSpropX)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert int(loaded.optimizer.iterations.numpy()) == 4
    loaded.fit(x, y, epochs=1, batch_size=BATCH, verbose=0, shuffle=False)
    for a, b in zip(model.weights + model.optimizer.variables,
                    loaded.weights + loaded.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a.numpy()), np.asarray(b.numpy()))
    twin = _keras_twin(init, kwargs)  # and where Keras' RMSprop gets in 2 epochs unsaved
    twin.fit(x, y, epochs=2, batch_size=BATCH, verbose=0, shuffle=False)
    _assert_moved(model, init)
    _assert_fit_matches_keras(model, twin)


def test_loss_scale_optimizer_wraps_it(rng):
    init, grads = _init(rng), _grads(rng, 5)
    ours, _ = _trajectory(keras.optimizers.LossScaleOptimizer(RMSpropX(momentum=0.9)), init,
                          [[g * 1024.0 for g in step] for step in grads])
    theirs, _ = _trajectory(keras.optimizers.LossScaleOptimizer(
        keras.optimizers.RMSprop(momentum=0.9)), init, [[g * 1024.0 for g in step] for step in grads])
    _assert_same_trajectory(ours, theirs)


def test_model_fit_under_mirrored_strategy_matches_keras_and_keeps_replicas_identical(rng):
    """Each replica gets half of each batch; both optimizers see the replicas' gradients
    summed, so each step still names each table row once (see ROWS)."""
    from test_distribute import _strategy
    strategy = _strategy()
    x, y = _data(rng)
    with strategy.scope():
        model = _model(ROWS)
        init = model.get_weights()
        model.compile(optimizer=RMSpropX(**FIT_KWARGS), loss="mse")
        twin = _keras_twin(init, FIT_KWARGS)
    model.fit(x, y, epochs=3, batch_size=BATCH, verbose=0, shuffle=False)
    twin.fit(x, y, epochs=3, batch_size=BATCH, verbose=0, shuffle=False)
    for var in model.weights + model.optimizer.variables:
        copies = [np.asarray(c.numpy()) for c in
                  strategy.experimental_local_results(getattr(var, "value", var))]
        assert len(copies) == 2
        np.testing.assert_array_equal(copies[0], copies[1])
    _assert_moved(model, init)
    _assert_fit_matches_keras(model, twin)


def test_serialization_round_trip():
    opt = RMSpropX.from_preset("pytorch", momentum=0.5, centered=True)
    config = keras.optimizers.serialize(opt)
    clone = keras.optimizers.deserialize(config)
    assert isinstance(clone, RMSpropX) and clone.get_config() == opt.get_config()
    assert clone.epsilon_placement == "outside_sqrt" and clone.rho == 0.99


def test_keras_adapter_checks_values_and_initial_scale_is_exact():
    nan, inf = float("nan"), float("inf")
    for kwargs, name in ((dict(learning_rate=-1.0), "learning_rate"),
                         (dict(learning_rate=nan), "learning_rate"),
                         (dict(learning_rate=inf), "learning_rate"), (dict(rho=1.5), "rho"),
                         (dict(rho=-0.1), "rho"), (dict(epsilon=nan), "epsilon"),
                         (dict(epsilon=-1e-7), "epsilon"), (dict(momentum=-0.5), "momentum"),
                         (dict(momentum=inf), "momentum"), (dict(weight_decay=-0.1), "weight_decay"),
                         (dict(weight_decay=nan), "weight_decay"),
                         (dict(rho=1.0, bias_correction=True), "bias_correction")):
        with pytest.raises(ValueError, match=name):
            RMSpropX(**kwargs)
    opt = RMSpropX(learning_rate=0.01, momentum=0.5, weight_decay=0.01, initial_scale=0.1)
    var = keras.Variable(np.linspace(-1, 1, 3), dtype="float64")
    opt.build([var])
    for name, bad in (("rho", 2.0), ("rho", nan), ("momentum", -0.1), ("momentum", nan),
                      ("epsilon", -1.0), ("epsilon", inf), ("weight_decay", -1.0),
                      ("weight_decay", inf), ("learning_rate", -0.5), ("learning_rate", nan)):
        before = float(np.asarray(getattr(opt, name)))
        with pytest.raises(ValueError, match=name):
            setattr(opt, name, bad)
        assert float(np.asarray(getattr(opt, name))) == before, name  # unchanged
    opt.rho, opt.momentum, opt.epsilon, opt.weight_decay = 1.0, 0.0, 0.0, 0.0  # valid edges
    opt.learning_rate = 0.0
    assert (opt.rho, opt.momentum, opt.epsilon, opt.weight_decay) == (1.0, 0.0, 0.0, 0.0)
    opt = RMSpropX(initial_scale=0.1)
    var = keras.Variable(np.zeros(3), dtype="float64")
    opt.build([var])
    assert opt.get_slot(var, "ms").numpy()[0] == np.float64(0.1)


@pytest.mark.parametrize("mirrored", [False, True], ids=["default", "mirrored"])
def test_a_step_an_op_rejects_inside_tf_function_does_not_count(rng, mirrored):
    """Keras counts a step (`iterations.assign_add` in `Optimizer.apply`) after update_step,
    and in a graph nothing tied the count to the ops: a step an op rejected still counted
    (the next step's schedule and bias correction then used the wrong count). Out-of-range
    rows, known only when the step runs: nothing is written, and the count stays."""
    from test_distribute import _strategy
    strategy = _strategy() if mirrored else tf.distribute.get_strategy()
    with strategy.scope():
        table = tf.Variable(rng.uniform(-1, 1, (6, 3)).astype(np.float32))
        dense = tf.Variable(rng.uniform(-1, 1, 4).astype(np.float32))
        opt = RMSpropX(learning_rate=0.01, momentum=0.5)
        opt.build([table, dense])

    def local(indices):
        rows = tf.IndexedSlices(tf.ones([2, 3]), indices, tf.constant([6, 3]))
        opt.apply_gradients([(rows, table), (tf.ones(4), dense)])

    @tf.function
    def step(indices):
        strategy.run(local, args=(indices,))

    def state():
        return [np.asarray(v.numpy()).copy() for v in opt.variables + [table, dense]]

    step(tf.constant([0, 5]))
    before = state()
    assert int(opt.iterations.numpy()) == 1
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"has an index outside \[0, rows\)"):
        step(tf.constant([1, 6]))
    assert int(opt.iterations.numpy()) == 1
    for got, want in zip(state(), before):
        np.testing.assert_array_equal(got, want)
    step(tf.constant([2, 3]))  # and the next good step counts
    assert int(opt.iterations.numpy()) == 2
    assert not np.array_equal(dense.numpy(), before[-1])


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "function"])
@pytest.mark.parametrize("multi_tensor", [True, False], ids=["multi", "per_variable"])
def test_a_bad_gradient_of_the_last_variable_rejects_the_whole_step(rng, multi_tensor, graph):
    """Keras updates variable by variable; a bad index or shape in the last gradient was
    found only after the first variables were updated (a half-applied step, found by the
    property suite). Now every gradient is checked before any op runs, on both paths."""
    first = keras.Variable(rng.uniform(-1, 1, 5).astype(np.float32), name="first")
    half = keras.Variable(rng.uniform(-1, 1, 3).astype(np.float16), name="half")
    table = keras.Variable(rng.uniform(-1, 1, (4, 2)).astype(np.float32), name="table")
    opt = RMSpropX(learning_rate=0.1, momentum=0.5, multi_tensor=multi_tensor)
    opt.build([first, half, table])

    def state():
        return [np.asarray(v.numpy()).copy() for v in opt.variables + [first, half, table]]

    def apply(last):
        opt.apply_gradients([(tf.ones(5), first), (tf.ones(3, tf.float16), half), (last, table)])

    run = tf.function(apply) if graph else apply
    before = state()
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"table.*index outside \[0, rows\)"):
        run(tf.IndexedSlices(tf.ones((2, 2)), tf.constant([1, 4]), tf.constant([4, 2])))
    with pytest.raises(ValueError, match="variable table"):
        apply(tf.ones((4, 3)))  # static shapes: rejected while tracing, too
    for got, want in zip(state(), before):
        np.testing.assert_array_equal(got, want)
    assert int(opt.iterations.numpy()) == 0
    apply(tf.IndexedSlices(tf.ones((2, 2)), tf.constant([1, 3]), tf.constant([4, 2])))
    assert int(opt.iterations.numpy()) == 1 and not np.array_equal(first.numpy(), before[-3])


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "function"])
def test_a_bad_index_leaves_keras_gradient_accumulators_alone(rng, graph):
    """Keras adds each gradient to its accumulator before updating anything: the index
    check runs first (eagerly, or as an Assert every op of the step waits for)."""
    first = keras.Variable(rng.uniform(-1, 1, 3).astype(np.float32), name="first")
    table = keras.Variable(rng.uniform(-1, 1, (4, 2)).astype(np.float32), name="table")
    opt = RMSpropX(learning_rate=0.1, gradient_accumulation_steps=2)
    opt.build([first, table])

    def step(indices):
        opt.apply_gradients([(tf.ones(3), first),
                             (tf.IndexedSlices(tf.ones((1, 2)), indices, tf.constant([4, 2])),
                              table)])

    run = tf.function(step) if graph else step
    before = first.numpy().copy()
    with pytest.raises(tf.errors.InvalidArgumentError, match="index outside"):
        run(tf.constant([7]))
    assert int(opt._iterations.numpy()) == 0  # the calls (`iterations` counts updates)
    for acc in opt._accumulated_gradients:
        assert not np.any(acc.numpy()), "an accumulator changed in a rejected step"
    run(tf.constant([3]))
    np.testing.assert_array_equal(first.numpy(), before)  # accumulated, not applied
    run(tf.constant([3]))  # the second accumulated call updates
    assert int(opt._iterations.numpy()) == 2 and int(opt.iterations.numpy()) == 1
    assert not np.array_equal(first.numpy(), before)


def test_a_rejected_eager_step_leaves_the_loss_scale_counters(rng):
    """Eagerly the step is rejected before LossScaleOptimizer's branch writes anything (by
    our check, or by Keras' own finite check, which densifies the rows first): its step
    counter and dynamic scale stay (in a tf.function nothing orders its writes after our
    checks: docs/design.md)."""
    a = keras.Variable(rng.uniform(-1, 1, 3).astype(np.float32))
    table = keras.Variable(rng.uniform(-1, 1, (4, 2)).astype(np.float32), name="table")
    opt = keras.optimizers.LossScaleOptimizer(RMSpropX(learning_rate=0.1),
                                              dynamic_growth_steps=2)
    opt.build([a, table])

    def step(index):
        opt.apply_gradients([(tf.ones(3), a), (tf.IndexedSlices(
            tf.ones((1, 2)), tf.constant([index]), tf.constant([4, 2])), table)])

    def counters():
        return (int(opt.step_counter.numpy()), float(opt.dynamic_scale.numpy()),
                int(opt.iterations.numpy()))

    step(1)
    before, values = counters(), [a.numpy().copy(), table.numpy().copy()]
    with pytest.raises(tf.errors.InvalidArgumentError):  # (Keras' finite check may find it)
        step(4)
    assert counters() == before
    np.testing.assert_array_equal(a.numpy(), values[0])
    step(2)  # the next good step reaches dynamic_growth_steps: the scale doubles
    assert counters() == (0, 2 * before[1], before[2] + 1)


def test_list_and_number_gradients_as_keras_accepts_them(rng):
    init = rng.uniform(-1, 1, 3).astype(np.float32)
    got = [keras.Variable(init), keras.Variable(np.float32(0.5))]
    want = [keras.Variable(init), keras.Variable(np.float32(0.5))]
    grads = [[1.0, -2.0, 0.25], 0.5]
    RMSpropX(learning_rate=0.1).apply_gradients(zip(grads, got))
    keras.optimizers.RMSprop(learning_rate=0.1).apply_gradients(zip(grads, want))
    for g, w in zip(got, want):
        # atol: var - update cancels (|var| may end near 0); one float32 rounding of O(1).
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-6, atol=1e-7)
        assert not np.array_equal(g.numpy(), init if g.shape else np.float32(0.5))


def test_gradients_of_another_dtype_are_cast_as_keras_does(rng):
    """Keras' optimizers cast a gradient to its variable's dtype (a float64 NumPy array, a
    float16 tensor): the adapter does too, and matches keras.optimizers.RMSprop."""
    init = rng.uniform(-1, 1, 5).astype(np.float32)
    grads = [rng.normal(size=5) * 10.0 ** rng.uniform(-4, 0, 5),
             tf.constant((rng.normal(size=5) * 1e-2).astype(np.float16))]
    results = []
    for opt in (RMSpropX(learning_rate=0.01, momentum=0.5),
                keras.optimizers.RMSprop(learning_rate=0.01, momentum=0.5)):
        var = keras.Variable(init)
        for g in grads:
            opt.apply_gradients([(g, var)])
        results.append(var.numpy())
    assert not np.array_equal(results[0], init)
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6, atol=1e-7)


def test_a_rejected_step_keeps_the_gradient_accumulators(rng):
    """With gradient_accumulation_steps, Keras zeroes the accumulators after update_step;
    in a graph nothing tied that to the ops, so a step an op rejected (here a learning rate
    turned negative, known only when the step runs) lost the accumulated gradients."""
    sign = tf.Variable(1.0)
    init = rng.uniform(-1, 1, 4).astype(np.float32)
    var = keras.Variable(init)
    opt = RMSpropX(learning_rate=lambda: 0.1 * sign, gradient_accumulation_steps=2)
    opt.build([var])
    grads = [rng.normal(size=4).astype(np.float32) for _ in range(4)]

    @tf.function
    def step(g):
        opt.apply_gradients([(g, var)])

    for g in grads[:3]:  # accumulate, update, accumulate
        step(tf.constant(g))
    before = [var.numpy().copy(), opt._accumulated_gradients[0].numpy().copy()]
    np.testing.assert_allclose(before[1], grads[2], rtol=1e-6)  # the third step's gradient
    sign.assign(-1.0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="lr must be"):
        step(tf.constant(grads[3]))
    np.testing.assert_array_equal(var.numpy(), before[0])
    np.testing.assert_array_equal(opt._accumulated_gradients[0].numpy(), before[1])
    assert int(opt._iterations.numpy()) == 3
