"""RMSpropX against Keras 3's RMSprop, and the optimizer's own contract."""
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_rmsprop_ops import RMSpropX, reference
from helpers import as_op_sees

SHAPES = [(7,), (3, 5)]


def _grads(rng, steps, shapes=SHAPES):
    return [[rng.normal(size=s).astype(np.float32) for s in shapes] for _ in range(steps)]


def _init(rng, shapes=SHAPES):
    return [rng.normal(size=s).astype(np.float32) for s in shapes]


def _trajectory(opt, init, grads, names=None):
    variables = [tf.Variable(x, name=(names[i] if names else f"w{i}"))
                 for i, x in enumerate(init)]
    out = []
    for step in grads:
        opt.apply_gradients([(tf.constant(g), v) for g, v in zip(step, variables)])
        out.append([v.numpy().copy() for v in variables])
    return out, variables


# Against Keras' RMSprop (float32 both; Keras orders lr * g / sqrt(...) differently): each
# step's rounded var - update differs by at most about one float32 ulp of the element's
# magnitude (the update's own rounding is far below it; gradients do not depend on var), so
# after 20 steps by a sum of 20 such differences: ~2 ulps typical, 20 if all aligned.
# 2e-6 x (1 + |value|) is >= 17 ulps of max(1, |value|) (an element ending near 0 travelled
# under 1). Measured over 26 seeds x every trajectory here and in test_keras_optimizer.py:
# worst 4.8e-7 (2 to 4 ulps), 0.10 of this bound.
def _assert_same_trajectory(ours, theirs, rtol=2e-6, atol=2e-6):
    for i, (a, b) in enumerate(zip(ours, theirs)):
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=f"step {i}")


def _schedule():
    return keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=3, decay_rate=0.7)


KERAS_CASES = {
    "default": dict(),
    "momentum": dict(momentum=0.9),
    "centered": dict(centered=True),
    "centered_momentum": dict(centered=True, momentum=0.8, learning_rate=0.01),
    "weight_decay": dict(weight_decay=0.05, learning_rate=0.01),
    "clipnorm": dict(clipnorm=0.5, momentum=0.5),
    "global_clipnorm": dict(global_clipnorm=0.7),
    "clipvalue": dict(clipvalue=0.3),
    "ema": dict(use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=7),
    "gradient_accumulation": dict(gradient_accumulation_steps=3, momentum=0.5),
    "schedule": dict(learning_rate="schedule", centered=True),
    "loss_scale": dict(loss_scale_factor=128.0),
    "everything": dict(learning_rate="schedule", centered=True, momentum=0.7,
                       weight_decay=0.01, global_clipnorm=1.0, use_ema=True,
                       ema_overwrite_frequency=5, gradient_accumulation_steps=2),
}


@pytest.mark.parametrize("case", sorted(KERAS_CASES))
def test_trajectory_matches_keras3(case, rng):
    args = dict(KERAS_CASES[case])
    if args.get("learning_rate") == "schedule":
        args["learning_rate"] = _schedule()
    init, grads = _init(rng), _grads(rng, 20)
    ours, _ = _trajectory(RMSpropX(**args), init, grads)
    if "learning_rate" in args and not isinstance(args["learning_rate"], float):
        args["learning_rate"] = _schedule()  # a fresh schedule object for Keras
    theirs, _ = _trajectory(keras.optimizers.RMSprop(**args), init, grads)
    _assert_same_trajectory(ours, theirs)


def test_exclude_from_weight_decay_matches_keras(rng):
    init, grads = _init(rng), _grads(rng, 10)
    results = []
    for cls in (RMSpropX, keras.optimizers.RMSprop):
        opt = cls(learning_rate=0.01, weight_decay=0.1)
        opt.exclude_from_weight_decay(var_names=["bias"])
        results.append(_trajectory(opt, init, grads, names=["kernel", "bias"])[0])
    _assert_same_trajectory(*results)


def test_documented_seed_example():
    opt = RMSpropX(learning_rate=0.1)
    var1 = tf.Variable(10.0)
    opt.minimize(lambda: (var1 ** 2) / 2.0, [var1])
    assert var1.numpy() == pytest.approx(9.683772, abs=1e-6)


def test_minimize_with_tensor_loss_and_tape(rng):
    var = tf.Variable(rng.normal(size=4).astype(np.float32))
    start = var.numpy().astype(np.float64)
    opt = RMSpropX(learning_rate=0.05, momentum=0.9)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(var ** 2)
    opt.minimize(loss, [var], tape=tape)
    want = reference.rmsprop_x_step(start, 2 * start, np.zeros(4), np.zeros(4), lr=0.05,
                                    momentum=0.9, epsilon=1e-7)
    # Relative to the values' scale: an element that lands near 0 (var - upd cancels)
    # carries the float32 rounding of its operands.
    np.testing.assert_allclose(var.numpy(), want["var"], rtol=1e-6,
                               atol=1e-6 * np.max(np.abs(start)))
    with pytest.raises(ValueError, match="tape"):
        opt.minimize(loss, [var])


def test_tf_function_loop_does_not_retrace(rng):
    # Weights of magnitude 0.5..1.5: from near 0 the first centered step (about 0.17 each)
    # overshoots the minimum and no later loss is below the first.
    w = tf.Variable((rng.choice([-1.0, 1.0], (4, 1)) * rng.uniform(0.5, 1.5, (4, 1)))
                    .astype(np.float32))
    x = tf.constant(rng.normal(size=(16, 4)).astype(np.float32))
    opt = RMSpropX(learning_rate=_schedule(), momentum=0.9, centered=True)

    @tf.function
    def train_step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((x @ w) ** 2)
        opt.apply_gradients([(tape.gradient(loss, w), w)])
        return loss

    losses = [float(train_step())]  # the first call builds the slots (TF traces twice)
    traced = train_step.experimental_get_tracing_count()
    losses += [float(train_step()) for _ in range(9)]
    assert train_step.experimental_get_tracing_count() == traced
    # It trains (a step below the start; the last one can overshoot with momentum 0.9).
    assert min(losses[1:]) < losses[0]
    assert int(opt.iterations.numpy()) == 10


def test_learning_rate_is_readable_and_assignable():
    opt = RMSpropX(learning_rate=0.01)
    assert float(opt.learning_rate.numpy()) == pytest.approx(0.01)
    opt.learning_rate = 0.5
    assert float(opt.learning_rate.numpy()) == pytest.approx(0.5)
    opt2 = RMSpropX(learning_rate=lambda: 0.25)
    assert opt2.learning_rate == 0.25


def test_indexed_slices_use_the_sparse_op_and_leave_other_rows_alone(rng):
    table = tf.Variable(rng.normal(size=(50, 4)).astype(np.float32))
    before = table.numpy().copy()
    opt = RMSpropX(learning_rate=0.05, momentum=0.5, centered=True)
    ids = tf.constant([1, 9, 1, 30])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.gather(table, ids) ** 2)
    grad = tape.gradient(loss, table)
    assert isinstance(grad, tf.IndexedSlices)
    opt.apply_gradients([(grad, table)])
    want = reference.sparse_rmsprop_x_step(before, grad.values.numpy(), ids.numpy(),
                                           np.zeros((50, 4)), np.zeros((50, 4)),
                                           np.zeros((50, 4)), lr=0.05, momentum=0.5)
    np.testing.assert_allclose(table.numpy(), want["var"], rtol=1e-6, atol=1e-7)
    untouched = np.setdiff1d(np.arange(50), [1, 9, 30])
    assert np.all(opt.get_slot(table, "ms").numpy()[untouched] == 0)  # lazy: no decay


def test_none_gradient_is_skipped_with_one_warning(rng):
    a, b = tf.Variable([1.0, 2.0], name="a"), tf.Variable([3.0], name="b")
    opt = RMSpropX(learning_rate=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.apply_gradients([(tf.constant([1.0, 1.0]), a), (None, b)])
        opt.apply_gradients([(tf.constant([1.0, 1.0]), a), (None, b)])
    assert sum("Gradients do not exist" in str(w.message) for w in caught) == 1
    assert b.numpy()[0] == 3.0 and a.numpy()[0] != 1.0
    with pytest.raises(ValueError, match="No gradients provided"):
        opt.apply_gradients([(None, a)])


def test_gradient_shape_mismatch_names_the_variable():
    var = tf.Variable(tf.zeros((3, 2)), name="dense_kernel")
    with pytest.raises(ValueError, match="dense_kernel"):
        RMSpropX().apply_gradients([(tf.ones((2, 3)), var)])


def test_numpy_and_list_gradients_are_taken_in_the_variables_dtype(rng):
    """Gradients given as NumPy arrays (float64 too) or Python lists are converted to the
    variable's dtype, as TensorFlow converts such values for an op (they used to fail on
    `.shape.is_compatible_with`); one step against the float64 reference."""
    init = [rng.uniform(-1, 1, 3).astype(np.float32), rng.uniform(-1, 1, (2, 2)).astype(np.float32)]
    grad64 = rng.normal(size=3) * 10.0 ** rng.uniform(-4, 0, 3)
    grad_list = (rng.normal(size=(2, 2)) * 1e-3).astype(np.float32).tolist()
    a, b = tf.Variable(init[0]), tf.Variable(init[1])
    RMSpropX(learning_rate=0.01, epsilon=1e-6).apply_gradients([(grad64, a), (grad_list, b)])
    for var, x, g in ((a, init[0], grad64.astype(np.float32)),
                      (b, init[1], np.array(grad_list, np.float32))):
        want = reference.rmsprop_x_step(x, g, np.zeros_like(x), lr=0.01, epsilon=1e-6)["var"]
        np.testing.assert_allclose(var.numpy(), want, rtol=1e-6, atol=1e-7)


def test_gradient_dtype_integer_variable_and_repeated_variable_are_named(rng):
    """Each a ValueError naming the variable, raised before anything changes."""
    var = tf.Variable(rng.uniform(-1, 1, 3).astype(np.float32), name="w32")
    other = tf.Variable(rng.uniform(-1, 1, 2).astype(np.float32), name="other")
    before = [var.numpy().copy(), other.numpy().copy()]
    opt = RMSpropX(learning_rate=0.1)
    with pytest.raises(ValueError, match=r"Gradient of dtype float64 does not match variable "
                                         r"w32:0 of dtype float32"):
        opt.apply_gradients([(tf.ones(2), other), (tf.ones(3, tf.float64), var)])
    with pytest.raises(ValueError, match=r"RMSpropX updates floating-point variables; variable "
                                         r"counter:0 is int32"):
        opt.apply_gradients([(tf.ones(2), other), (tf.ones(3, tf.int32),
                                                   tf.Variable([1, 2, 3], name="counter"))])
    for multi in (True, False):  # one op for both, or one op each: the same error first
        with pytest.raises(ValueError, match=r"Variable w32:0 appears more than once"):
            RMSpropX(learning_rate=0.1, multi_tensor=multi).apply_gradients(
                [(tf.ones(3), var), (tf.ones(2), other), (tf.ones(3), var)])
    np.testing.assert_array_equal(var.numpy(), before[0])
    np.testing.assert_array_equal(other.numpy(), before[1])
    assert int(opt.iterations.numpy()) == 0
    assert len(opt.variables) == 2  # iterations, learning_rate: no slot built for a rejected call
    # A keras.Variable and its own tf.Variable are one variable too.
    kvar = keras.Variable(rng.uniform(-1, 1, 3).astype(np.float32), name="kvar")
    with pytest.raises(ValueError, match=r"appears more than once"):
        RMSpropX(learning_rate=0.1).apply_gradients([(tf.ones(3), kvar), (tf.ones(3), kvar.value)])


@pytest.mark.parametrize("kwargs, name", [
    (dict(learning_rate=-0.1), "learning_rate"),
    (dict(rho=1.5), "rho"),
    (dict(rho=float("nan")), "rho"),
    (dict(learning_rate=float("inf")), "learning_rate"),
    (dict(epsilon=-1e-9), "epsilon"),
    (dict(weight_decay=-0.01), "weight_decay"),
    (dict(rho=-0.1), "rho"),
    (dict(momentum=-0.5), "momentum"),
    (dict(clipnorm=1.0, global_clipnorm=1.0), "global_clipnorm"),
    (dict(gradient_accumulation_steps=1), "gradient_accumulation_steps"),
    (dict(epsilon_placement="sideways"), "epsilon_placement"),
    (dict(not_an_argument=3), "not_an_argument"),
])
def test_invalid_arguments_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        RMSpropX(**kwargs)


def test_slots_only_for_enabled_features_and_get_slot():
    var = tf.Variable(tf.ones((2, 3)), name="kernel")
    plain = RMSpropX()
    plain.build([var])
    assert plain.slot_names == ["ms"] and len(plain.variables) == 3  # iterations, lr, ms
    full = RMSpropX(momentum=0.9, centered=True, initial_scale=1.0)
    full.build([var])
    assert full.slot_names == ["ms", "mom", "mg"]
    assert full.get_slot(var, "ms").name.startswith("kernel_ms")
    assert full.get_slot(var, "velocity") is full.get_slot(var, "ms")  # Keras' name
    np.testing.assert_array_equal(full.get_slot(var, "ms").numpy(), np.ones((2, 3)))
    with pytest.raises(KeyError, match="mom"):
        plain.get_slot(var, "mom")


def test_config_round_trip_with_schedule():
    opt = RMSpropX(learning_rate=_schedule(), momentum=0.3, centered=True, clipnorm=2.0,
                   nesterov=True, epsilon_placement="outside_sqrt", initial_scale=1.0)
    config = opt.get_config()
    clone = RMSpropX.from_config(config)
    assert clone.get_config() == config
    assert float(clone.learning_rate) == pytest.approx(0.05)


def test_finalize_variable_values_uses_the_average(rng):
    init, grads = _init(rng), _grads(rng, 6)
    ours = RMSpropX(use_ema=True, ema_momentum=0.5)
    theirs = keras.optimizers.RMSprop(use_ema=True, ema_momentum=0.5)
    _, ours_vars = _trajectory(ours, init, grads)
    _, theirs_vars = _trajectory(theirs, init, grads)
    ours.finalize_variable_values(ours_vars)
    theirs.finalize_variable_values(theirs_vars)
    for a, b in zip(ours_vars, theirs_vars):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-5, atol=2e-6)


def test_jit_compile_matches_native_kernels(rng):
    init, grads = _init(rng), _grads(rng, 8)
    native, _ = _trajectory(RMSpropX(momentum=0.9, centered=True), init, grads)
    jit, _ = _trajectory(RMSpropX(momentum=0.9, centered=True, jit_compile=True), init, grads)
    _assert_same_trajectory(jit, native, rtol=1e-6, atol=1e-7)


def test_mesh_must_be_a_dtensor_mesh():
    with pytest.raises(ValueError, match="mesh"):
        RMSpropX(mesh=object())


@pytest.mark.parametrize("deferred", [False, True], ids=["built", "deferred"])
def test_checkpoint_restore_continues_bit_identically(deferred, tmp_path, rng):
    kwargs = dict(learning_rate=_schedule(), momentum=0.9, centered=True, use_ema=True,
                  ema_overwrite_frequency=4, gradient_accumulation_steps=2)
    init, grads = _init(rng), _grads(rng, 12)
    opt = RMSpropX(**kwargs)
    variables = [tf.Variable(x) for x in init]
    for step in grads[:5]:
        opt.apply_gradients(zip(map(tf.constant, step), variables))
    path = tf.train.Checkpoint(model=variables, optimizer=opt).save(str(tmp_path / "ckpt"))
    for step in grads[5:]:
        opt.apply_gradients(zip(map(tf.constant, step), variables))

    kwargs["learning_rate"] = _schedule()
    restored_opt = RMSpropX(**kwargs)
    restored = [tf.Variable(np.zeros_like(x)) for x in init]
    if not deferred:
        restored_opt.build(restored)
    tf.train.Checkpoint(model=restored, optimizer=restored_opt).restore(path).assert_consumed() \
        if not deferred else tf.train.Checkpoint(model=restored, optimizer=restored_opt).restore(path)
    assert int(restored_opt.iterations.numpy()) == 5 // 2  # updates, under accumulation
    for step in grads[5:]:
        restored_opt.apply_gradients(zip(map(tf.constant, step), restored))
    for a, b in zip(variables, restored):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(opt.variables, restored_opt.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("kwargs", [dict(clipnorm=1.0, clipvalue=0.5),
                                    dict(clipvalue=0.5, global_clipnorm=1.0),
                                    dict(clipnorm=1.0, global_clipnorm=1.0)])
def test_only_one_clipping_argument(kwargs):
    for cls in (RMSpropX, keras.optimizers.RMSprop):  # the peer says the same
        with pytest.raises(ValueError, match="Only one of `clipnorm`, `clipvalue` and `global_clipnorm`"):
            cls(**kwargs)


def test_variable_constraint_is_applied_after_the_update(rng):
    init = rng.normal(size=(5,)).astype(np.float32) * 3
    grads = _grads(rng, 3, [(5,)])
    results = []
    for cls in (RMSpropX, keras.optimizers.RMSprop):
        var = tf.Variable(init, constraint=lambda v: tf.clip_by_value(v, -1.0, 1.0))
        opt = cls(learning_rate=0.1)
        for (g,) in grads:
            opt.apply_gradients([(tf.constant(g), var)])
        results.append(var.numpy())
    assert np.abs(results[0]).max() <= 1.0
    # Keras rounds 1 - rho and orders lr * g / sqrt(...) differently: float32 errors of the
    # operands' size (up to 1 after the clip), also where an element ends near 0.
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6, atol=1e-6)


def test_set_weights_and_tf1_slot_name(rng):
    var = tf.Variable(rng.normal(size=(3,)).astype(np.float32))
    opt = RMSpropX(momentum=0.9)
    opt.build([var])
    weights = [np.array(4, np.int64), np.array(0.5, np.float32),
               rng.uniform(size=3).astype(np.float32), rng.normal(size=3).astype(np.float32)]
    opt.set_weights(weights)
    for got, want in zip(opt.get_weights(), weights):
        np.testing.assert_array_equal(got, want)
    assert opt.get_slot(var, "rms") is opt.get_slot(var, "ms")  # TF1 / tf_keras name
    with pytest.raises(ValueError, match="3 arrays for 4"):
        opt.set_weights(weights[:3])


def test_initial_scale_is_exact_in_float64():
    var = tf.Variable(np.zeros(3))
    opt = RMSpropX(initial_scale=0.1)
    opt.build([var])
    assert opt.get_slot(var, "ms").numpy()[0] == np.float64(0.1)  # not 0.1 via float32


def test_a_step_over_mixed_dtypes_is_rejected_whole(rng):
    # 1e5 is finite in float32 and inf in float16: the float16 op would reject it after the
    # float32 update had run. The step is checked first and changes nothing.
    v32 = tf.Variable(rng.uniform(0.5, 1, 4).astype(np.float32))
    v16 = tf.Variable(rng.uniform(0.5, 1, 4).astype(np.float16))
    before = [v32.numpy().copy(), v16.numpy().copy()]
    opt = RMSpropX(learning_rate=0.01, weight_decay=1e5)
    with pytest.raises(ValueError, match=r"weight_decay must be finite and >= 0 in float16 .* got 100000.0"):
        opt.apply_gradients([(tf.ones(4), v32), (tf.ones(4, tf.float16), v16)])
    np.testing.assert_array_equal(v32.numpy(), before[0])
    np.testing.assert_array_equal(v16.numpy(), before[1])
    assert int(opt.iterations.numpy()) == 0


@pytest.mark.parametrize("multi_tensor,jit", [(True, False), (False, False), (True, True)],
                         ids=["multi", "per_variable", "jit"])
def test_a_graph_step_over_mixed_dtypes_is_rejected_whole(rng, multi_tensor, jit):
    # In a tf.function the learning rate is a tensor known only when the step runs. 1e5 is
    # finite in float32 and inf in float16: the step's checks run before any op, so the
    # float16 op's rejection cannot come after the float32 update.
    v32 = tf.Variable(rng.uniform(0.5, 1, (3, 4)).astype(np.float32))
    v16 = tf.Variable(rng.uniform(0.5, 1, (3, 4)).astype(np.float16))
    w32 = tf.Variable(rng.uniform(0.5, 1, 5).astype(np.float32))
    grads = [tf.constant(rng.uniform(-1, 1, (3, 4)), tf.float32),
             tf.constant(rng.uniform(-1, 1, (3, 4)), tf.float16),
             tf.constant(rng.uniform(-1, 1, 5), tf.float32)]
    opt = RMSpropX(learning_rate=0.01, multi_tensor=multi_tensor, jit_compile=jit)

    @tf.function
    def step():
        opt.apply_gradients(zip(grads, [v32, v16, w32]))

    start = [v.numpy().astype(np.float64) for v in (v32, v16, w32)]
    step()  # a valid rate: every variable moves as the reference says
    for v, g, s0 in zip((v32, v16, w32), grads, start):
        # The op sees the hyperparameters in the variable's dtype (float16: epsilon 1e-7 is
        # the subnormal 1.19e-7, which matters where g * g underflows to the same size).
        hyper = as_op_sees(dict(lr=0.01, rho=0.9, epsilon=1e-7), v.dtype)
        want = reference.rmsprop_x_step(s0, g.numpy().astype(np.float64),
                                        np.zeros_like(s0), None, None, momentum=0.0,
                                        **hyper)["var"]
        np.testing.assert_allclose(v.numpy().astype(np.float64), want,
                                   rtol=1e-6 if v.dtype == tf.float32 else 1e-3)
    assert int(opt.iterations.numpy()) == 1
    if jit:  # XLA cannot raise at run time (docs/design.md): the checks compile to nothing
        return
    before = [v.numpy().copy() for v in (v32, v16, w32)]
    opt.learning_rate = 1e5
    state = [v.numpy().copy() for v in opt.variables]  # iterations, lr, every slot
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"lr must be finite and >= 0 in float16 .*nothing was updated"):
        step()
    for v, b in zip((v32, v16, w32), before):
        np.testing.assert_array_equal(v.numpy(), b)
    for v, b in zip(opt.variables, state):  # the step does not count; no slot moved
        np.testing.assert_array_equal(v.numpy(), b)
    opt.learning_rate = 0.01  # and the same function runs again
    step()
    assert not np.array_equal(v16.numpy(), before[1])
    assert int(opt.iterations.numpy()) == 2


def test_bias_correction_needs_rho_below_one():
    with pytest.raises(ValueError, match=r"bias_correction=True needs rho < 1"):
        RMSpropX(rho=1.0, bias_correction=True)


def test_hyperparameter_setters_check_values():
    opt = RMSpropX(learning_rate=0.1)
    for name, bad in [("rho", 1.5), ("momentum", -0.1), ("epsilon", float("nan")),
                      ("weight_decay", -1.0), ("learning_rate", float("inf"))]:
        with pytest.raises(ValueError, match=name):
            setattr(opt, name, bad)
    opt.rho, opt.learning_rate = 1.0, 0.5  # the edges of the valid ranges
    assert opt.rho == 1.0 and float(opt.learning_rate.numpy()) == 0.5


def test_a_step_an_op_rejects_inside_tf_function_does_not_count(rng):
    """Out-of-range rows (known only when the step runs): the step is checked before any
    op runs, so nothing is written (not even another variable of the step), and
    `iterations` waits for the ops, so the step does not count either."""
    table = tf.Variable(rng.uniform(-1, 1, (6, 3)).astype(np.float32))
    dense = tf.Variable(rng.uniform(-1, 1, 4).astype(np.float32))
    opt = RMSpropX(learning_rate=0.01, momentum=0.5)
    opt.build([table, dense])

    @tf.function
    def step(indices):
        rows = tf.IndexedSlices(tf.ones([2, 3]), indices, tf.constant([6, 3]))
        opt.apply_gradients([(rows, table), (tf.ones(4), dense)])

    step(tf.constant([0, 5]))
    state = [v.numpy().copy() for v in opt.variables] + [table.numpy(), dense.numpy()]
    assert int(opt.iterations.numpy()) == 1
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"has an index outside \[0, rows\).*Nothing was updated"):
        step(tf.constant([1, 6]))
    # Nothing moved: not the dense variable (another op of the step), no slot, no count.
    after = [v.numpy() for v in opt.variables] + [table.numpy(), dense.numpy()]
    assert int(opt.iterations.numpy()) == 1
    for got, want in zip(after, state):
        np.testing.assert_array_equal(got, want)
    # Eager: the same step is checked before any op runs.
    rows = tf.IndexedSlices(tf.ones([2, 3]), tf.constant([-1, 2]), tf.constant([6, 3]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"has an index outside"):
        opt.apply_gradients([(rows, table), (tf.ones(4), dense)])
    for got, want in zip([v.numpy() for v in opt.variables] + [table.numpy(), dense.numpy()],
                         state):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("cls", ["module", "keras"])
@pytest.mark.parametrize("use_locking", [False, True])
def test_use_locking_reaches_every_op_of_a_step(rng, cls, use_locking):
    """`use_locking` (both optimizers, in the config) is the attr of every op a step runs:
    dense multi-tensor, single-variable and sparse (tests/test_concurrency.py pins what the
    attr does)."""
    import tf_rmsprop_ops.keras as tfx_keras
    make = RMSpropX if cls == "module" else tfx_keras.RMSpropX
    opt = make(learning_rate=0.01, momentum=0.9, use_locking=use_locking)
    assert opt.get_config()["use_locking"] is use_locking
    assert make.from_config(opt.get_config()).use_locking is use_locking
    variables = [tf.Variable(rng.normal(size=s).astype(np.float32))
                 for s in [(3, 4), (4,), (6, 2)]]
    grads = [tf.constant(rng.normal(size=(3, 4)).astype(np.float32)),
             tf.constant(rng.normal(size=(4,)).astype(np.float32)),
             tf.IndexedSlices(tf.constant(rng.normal(size=(2, 2)).astype(np.float32)),
                              tf.constant([1, 4]), tf.constant([6, 2]))]
    step = tf.function(lambda g: opt.apply_gradients(zip(g, variables)))
    graph = step.get_concrete_function(grads).graph
    ops = [op for op in graph.get_operations()
           if op.type in ("ApplyRMSpropX", "ApplyRMSpropXMulti", "SparseApplyRMSpropX")]
    assert {op.type for op in ops} == {"ApplyRMSpropXMulti", "SparseApplyRMSpropX"}
    assert all(op.get_attr("use_locking") is use_locking for op in ops)
    step(grads)  # and it runs
