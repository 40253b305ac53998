"""ApplyRMSpropX on CPU against the float64 reference."""
import threading

import numpy as np
import pytest
import tensorflow as tf

import tf_rmsprop_ops
from helpers import (DTYPES, RTOL, VARIANTS, Variant, apply_dense, assert_matches,
                     make_variables, random_hyper, random_state, reference_dense, values)
from tf_rmsprop_ops import reference


def test_keras_documented_example():
    # keras.optimizers.RMSprop(learning_rate=0.1) on loss var**2/2 from var=10 gives 9.683772.
    var, ms = tf.Variable(10.0), tf.Variable(0.0)
    tf_rmsprop_ops.apply_rmsprop_x(var, ms, var.read_value(), lr=0.1, rho=0.9, epsilon=1e-7)
    assert var.numpy() == pytest.approx(9.683772, abs=1e-6)
    ref = reference.rmsprop_x_step(10.0, 10.0, 0.0, lr=0.1, rho=0.9, epsilon=1e-7)
    assert ref["var"] == pytest.approx(9.683772, abs=1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_every_variant_and_dtype_matches_reference(variant, dtype, rng):
    shape = (int(rng.integers(1, 40)), 37)  # 37: not a multiple of any vector width
    state = random_state(rng, shape, dtype, variant)
    hyper = random_hyper(rng, dtype, variant)
    variables = make_variables(state, dtype)
    apply_dense(variables, state["grad"], variant, hyper, dtype)
    assert_matches(values(variables), reference_dense(state, variant, hyper), dtype,
                   before=state)


SHAPES = [(), (0,), (3, 0), (1,), (7,), (17,), (4, 33), (2, 3, 5), (100_003,)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("variant", [Variant(), Variant(centered=True, momentum=True)], ids=str)
def test_shapes_including_empty_scalar_and_multithreaded(shape, variant, rng):
    dtype = tf.float32
    state = random_state(rng, shape, dtype, variant)
    hyper = random_hyper(rng, dtype, variant)
    variables = make_variables(state, dtype)
    apply_dense(variables, state["grad"], variant, hyper, dtype)
    got = values(variables)
    assert got["var"].shape == shape
    assert_matches(got, reference_dense(state, variant, hyper), dtype, before=state)


@pytest.mark.parametrize("variant", [Variant(momentum=True, nesterov=True,
                                             weight_decay_mode="decoupled"),
                                     Variant(centered=True, momentum=True,
                                             epsilon_placement="outside_sqrt",
                                             lr_placement="outside_momentum",
                                             weight_decay_mode="coupled")], ids=str)
def test_repeated_steps_in_tf_function_follow_reference(variant, rng):
    dtype = tf.float32
    state = random_state(rng, (5, 11), dtype, variant)
    hyper = random_hyper(rng, dtype, variant)
    variables = make_variables(state, dtype)
    lr = tf.Variable(hyper["lr"])  # a tensor hyperparameter: changes need no retrace

    @tf.function
    def step(grad):
        apply_dense(variables, grad, variant, dict(hyper, lr=lr), dtype)

    for i in range(6):
        grad = rng.uniform(-1, 1, (5, 11)).astype(np.float32).astype(np.float64)
        lr.assign(hyper["lr"] * (0.9 ** i))
        before = values(variables)
        step(tf.constant(grad, tf.float32))
        want = reference.rmsprop_x_step(before["var"], grad, before["ms"], before.get("mom"),
                                        before.get("mg"), **dict(hyper, lr=float(lr.numpy())),
                                        **variant.op_kwargs())
        assert_matches(values(variables), want, dtype, what=f"step {i}: ", before=before)
    assert step.experimental_get_tracing_count() == 1


def test_copy_on_write_keeps_earlier_reads(rng):
    state = random_state(rng, (64,), tf.float32, Variant())
    variables = make_variables(state, tf.float32)
    read_before = variables["var"].read_value()  # shares the buffer until the update
    apply_dense(variables, state["grad"], Variant(), random_hyper(rng, tf.float32, Variant()),
                tf.float32)
    np.testing.assert_array_equal(read_before.numpy(), state["var"].astype(np.float32))
    assert not np.array_equal(variables["var"].numpy(), read_before.numpy())


def test_use_locking_concurrent_updates_lose_nothing(rng):
    """Many updates of one variable run in parallel (graph executor); with identical
    gradients the result must equal the same number of sequential steps, bit for bit."""
    variant = Variant(centered=True, momentum=True)
    dtype = tf.float32
    state = random_state(rng, (200_000,), dtype, variant)
    hyper = random_hyper(rng, dtype, variant)
    steps = 12
    graph = tf.Graph()
    with graph.as_default():
        variables = make_variables(state, dtype)
        grad = tf.constant(state["grad"], dtype)
        updates = [apply_dense(variables, grad, variant, hyper, dtype, use_locking=True)
                   for _ in range(steps)]
        init = tf.compat.v1.global_variables_initializer()
        read = {k: v.read_value() for k, v in variables.items()}
        config = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=8)
        with tf.compat.v1.Session(graph=graph, config=config) as sess:
            sess.run(init)
            sess.run(tf.group(*updates))
            concurrent = sess.run(read)
    sequential = make_variables(state, dtype)
    for _ in range(steps):
        apply_dense(sequential, state["grad"], variant, hyper, dtype)
    for name, value in sequential.items():
        np.testing.assert_array_equal(concurrent[name], value.numpy(), err_msg=name)


def test_python_threads_with_use_locking(rng):
    variant = Variant(momentum=True)
    state = random_state(rng, (100_000,), tf.float32, variant)
    hyper = random_hyper(rng, tf.float32, variant)
    shared, sequential = make_variables(state, tf.float32), make_variables(state, tf.float32)
    grad = tf.constant(state["grad"], tf.float32)

    def worker():
        for _ in range(5):
            apply_dense(shared, grad, variant, hyper, tf.float32, use_locking=True)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for _ in range(20):
        apply_dense(sequential, grad, variant, hyper, tf.float32)
    for name in shared:
        np.testing.assert_array_equal(shared[name].numpy(), sequential[name].numpy())


def test_slots_are_only_those_of_enabled_features():
    # The op takes no slot for a disabled feature: plain RMSprop runs with ms alone.
    var, ms = tf.Variable([1.0, 2.0]), tf.Variable([0.5, 0.5])
    tf_rmsprop_ops.apply_rmsprop_x(var, ms, [0.1, 0.2], lr=0.1)
    want = reference.rmsprop_x_step([1.0, 2.0], [0.1, 0.2], [0.5, 0.5], lr=0.1)
    np.testing.assert_allclose(var.numpy(), want["var"], rtol=1e-6)


def test_python_number_hyperparameters_round_once_to_half(rng):
    # TensorFlow converts a Python float to float16 through float32: 0.7873535216811611 ->
    # 0.787353515625 (a float32 tie of two halves) -> 0.787109375. The op must get the
    # nearest half, 0.78759765625, as NumPy rounds it.
    rho = 0.7873535216811611
    assert np.float16(rho) != np.float16(np.float32(rho))  # the case is a double rounding
    state = rng.uniform(0.5, 1.5, (3, 8)).astype(np.float16)
    grad = tf.constant(rng.normal(size=8).astype(np.float16))
    got, want = [[tf.Variable(s) for s in state] for _ in range(2)]
    tf_rmsprop_ops.apply_rmsprop_x(got[0], got[1], grad, lr=0.01, rho=rho)
    tf_rmsprop_ops.apply_rmsprop_x(want[0], want[1], grad, lr=tf.constant(np.float16(0.01)),
                                   rho=tf.constant(np.float16(rho)))
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
