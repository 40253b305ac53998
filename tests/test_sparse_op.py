"""SparseApplyRMSpropX on CPU against the float64 reference."""
import numpy as np
import pytest
import tensorflow as tf

import tf_rmsprop_ops
from tf_rmsprop_ops import reference
from helpers import (DTYPES, VARIANTS, Variant, apply_dense, apply_sparse, as_op_sees,
                     assert_matches, make_variables, random_hyper, random_state,
                     reference_sparse, round_to, values)


def _indices(rng, kind, n, rows):
    if kind == "unsorted":
        return rng.integers(0, rows, n)
    if kind == "sorted":
        return np.sort(rng.integers(0, rows, n))
    if kind == "heavy_duplicates":
        return rng.choice(rng.integers(0, rows, 3), n)
    if kind == "all_duplicate":
        return np.full(n, rng.integers(0, rows))
    if kind == "unique":
        return rng.permutation(rows)[:n]
    raise ValueError(kind)


def _check(rng, variant, dtype, var_shape, indices, index_dtype=tf.int64):
    state = random_state(rng, var_shape, dtype, variant)
    hyper = random_hyper(rng, dtype, variant)
    grad = round_to(rng.uniform(-1, 1, (len(indices),) + tuple(var_shape[1:])), dtype)
    variables = make_variables(state, dtype)
    apply_sparse(variables, grad, tf.constant(indices, index_dtype), variant, hyper, dtype)
    want = reference_sparse(state, grad, indices, variant, hyper)
    got = values(variables)
    assert_matches(got, want, dtype, before=state)
    # Untouched rows keep var and slots bit-identical.
    untouched = np.setdiff1d(np.arange(var_shape[0]), indices)
    for name, value in got.items():
        np.testing.assert_array_equal(value[untouched], state[name][untouched], err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_every_variant_and_dtype_with_duplicates(variant, dtype, rng):
    _check(rng, variant, dtype, (30, 9), _indices(rng, "unsorted", 25, 30))


@pytest.mark.parametrize("kind", ["unsorted", "sorted", "heavy_duplicates", "all_duplicate",
                                  "unique"])
@pytest.mark.parametrize("index_dtype", [tf.int32, tf.int64], ids=lambda d: d.name)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_index_patterns(kind, index_dtype, dtype, rng):
    variant = Variant(centered=True, momentum=True)
    _check(rng, variant, dtype, (50, 6), _indices(rng, kind, 40, 50), index_dtype)


@pytest.mark.parametrize("var_shape", [(40,), (40, 1), (12, 3, 5), (300, 64), (7, 0)], ids=str)
def test_ranks_and_row_sizes(var_shape, rng):
    variant = Variant(momentum=True, weight_decay_mode="decoupled")
    _check(rng, variant, tf.float32, var_shape, _indices(rng, "unsorted", 60, var_shape[0]))


def test_empty_update_changes_nothing(rng):
    variant = Variant(centered=True)
    state = random_state(rng, (10, 4), tf.float32, variant)
    variables = make_variables(state, tf.float32)
    apply_sparse(variables, np.zeros((0, 4)), tf.zeros([0], tf.int64), variant,
                 random_hyper(rng, tf.float32, variant), tf.float32)
    for name, value in values(variables).items():
        np.testing.assert_array_equal(value, state[name])


def test_many_rows_in_parallel(rng):
    # Enough unique rows for the thread pool to split the work.
    variant = Variant(centered=True, momentum=True)
    _check(rng, variant, tf.float32, (20_000, 16), _indices(rng, "unsorted", 30_000, 20_000))


def test_deduplication_table_is_reused_correctly_across_calls(rng):
    # The kernel keeps its index table per thread between steps and clears only the slots
    # a step filled: growing and shrinking batches, and a rejected batch that stopped
    # half-way, must leave nothing behind for the next step.
    variant = Variant(momentum=True)
    for n, rows in [(3000, 500), (12, 40), (5000, 5000), (7, 7), (900, 30)]:
        state = random_state(rng, (rows, 3), tf.float32, variant)
        variables = make_variables(state, tf.float32)
        bad = _indices(rng, "unsorted", n, rows)
        bad[len(bad) // 2] = rows  # out of range, after half of the rows were hashed
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"is not in \[0, "):
            apply_sparse(variables, rng.uniform(-1, 1, (n, 3)), tf.constant(bad), variant,
                         random_hyper(rng, tf.float32, variant), tf.float32)
        for name, value in values(variables).items():
            np.testing.assert_array_equal(value, state[name], err_msg=name)
        # Same size twice: the table is reused as it is, not reallocated.
        for _ in range(2):
            _check(rng, variant, tf.float32, (rows, 3), _indices(rng, "unsorted", n, rows))


def test_large_batch_then_small_batches(rng):
    # Over 2M indices: the table is released when the next, smaller batch comes.
    variant = Variant()
    rows = 2_200_000
    state = random_state(rng, (rows, 1), tf.float32, variant)
    hyper = random_hyper(rng, tf.float32, variant)
    perm = rng.permutation(rows)
    dense_vars, sparse_vars = make_variables(state, tf.float32), make_variables(state, tf.float32)
    apply_dense(dense_vars, state["grad"], variant, hyper, tf.float32)
    apply_sparse(sparse_vars, state["grad"][perm], tf.constant(perm), variant, hyper, tf.float32)
    for name in dense_vars:
        np.testing.assert_array_equal(sparse_vars[name].numpy(), dense_vars[name].numpy())
    _check(rng, variant, tf.float32, (100, 2), _indices(rng, "heavy_duplicates", 80, 100))


@pytest.mark.parametrize("variant", [Variant(), Variant(centered=True, momentum=True,
                                                        nesterov=True)], ids=str)
def test_equals_dense_op_when_every_row_is_touched_once(variant, rng):
    dtype = tf.float32
    state = random_state(rng, (64, 8), dtype, variant)
    hyper = random_hyper(rng, dtype, variant)
    perm = rng.permutation(64)
    dense_vars, sparse_vars = make_variables(state, dtype), make_variables(state, dtype)
    apply_dense(dense_vars, state["grad"], variant, hyper, dtype)
    apply_sparse(sparse_vars, state["grad"][perm], tf.constant(perm), variant, hyper, dtype)
    for name in dense_vars:
        np.testing.assert_array_equal(sparse_vars[name].numpy(), dense_vars[name].numpy())


def test_indexed_slices_helper_from_gather_gradient(rng):
    table = tf.Variable(rng.uniform(-1, 1, (100, 4)).astype(np.float32))
    ms = tf.Variable(np.full((100, 4), 0.5, np.float32))
    ids = tf.constant([3, 7, 3, 99])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.gather(table, ids) ** 2)
    grad = tape.gradient(loss, table)
    assert isinstance(grad, tf.IndexedSlices)
    before = table.numpy().astype(np.float64)
    tf_rmsprop_ops.apply_rmsprop_x_indexed_slices(table, ms, grad, lr=0.05)
    from tf_rmsprop_ops import reference
    want = reference.sparse_rmsprop_x_step(before, grad.values.numpy(), grad.indices.numpy(),
                                           np.full((100, 4), 0.5), lr=0.05)
    np.testing.assert_allclose(table.numpy(), want["var"], rtol=1e-6, atol=1e-7)


def test_use_locking_concurrent_sparse_updates_lose_nothing(rng):
    variant = Variant(momentum=True)
    dtype = tf.float32
    state = random_state(rng, (5000, 16), dtype, variant)
    hyper = random_hyper(rng, dtype, variant)
    indices = rng.integers(0, 5000, 3000)
    grad = rng.uniform(-1, 1, (3000, 16))
    steps = 10
    graph = tf.Graph()
    with graph.as_default():
        variables = make_variables(state, dtype)
        ops = [apply_sparse(variables, grad, tf.constant(indices), variant, hyper, dtype,
                            use_locking=True) for _ in range(steps)]
        read = {k: v.read_value() for k, v in variables.items()}
        config = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=8)
        with tf.compat.v1.Session(graph=graph, config=config) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(tf.group(*ops))
            concurrent = sess.run(read)
    sequential = make_variables(state, dtype)
    for _ in range(steps):
        apply_sparse(sequential, grad, tf.constant(indices), variant, hyper, dtype)
    for name, value in sequential.items():
        np.testing.assert_array_equal(concurrent[name], value.numpy(), err_msg=name)


@pytest.mark.parametrize("mode", ["default", "copy_on_read"])
def test_a_live_read_keeps_its_value_and_the_table_keeps_its_access_mode(mode, rng):
    """Copy-on-write: a value read before the update (here held eagerly; in a graph, e.g.
    Keras' Embedding reading the table) still shows the old rows afterwards, in TF's default
    access mode (the op copies, then writes) and after a TF sparse op switched the table to
    copy-on-read (reads copy; the op writes in place)."""
    init = rng.normal(size=(40, 3)).astype(np.float32)
    table, ms = tf.Variable(init), tf.Variable(np.zeros_like(init))
    if mode == "copy_on_read":
        table.scatter_add(tf.IndexedSlices(tf.zeros([1, 3]), tf.constant([0])))
    grad = rng.normal(size=(4, 3)).astype(np.float32)
    ids = np.array([2, 17, 2, 39])
    for step in range(3):
        before = table.read_value()           # a live read of the whole table
        expected_before = before.numpy().copy()
        tf_rmsprop_ops.sparse_apply_rmsprop_x(table, ms, grad, ids, lr=0.05)
        np.testing.assert_array_equal(before.numpy(), expected_before)
        assert not np.array_equal(table.numpy(), expected_before)
    want = dict(var=init, ms=np.zeros_like(init))
    for _ in range(3):
        want = reference.sparse_rmsprop_x_step(
            want["var"], grad, ids, want["ms"],
            **as_op_sees(dict(lr=0.05, rho=0.9, epsilon=1e-7), tf.float32))
    np.testing.assert_allclose(table.numpy(), want["var"], rtol=1e-6, atol=1e-7)
