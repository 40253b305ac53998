"""The XLA lowerings: jit_compile=True gives the CPU kernels' results, in plain HLO."""
import re

import numpy as np
import pytest
import tensorflow as tf

import tf_rmsprop_ops
from helpers import (DTYPES, RTOL, VARIANTS, Variant, apply_dense, apply_sparse,
                     assert_matches, make_variables, random_hyper, random_state,
                     reference_sparse, round_to, values)


def _run_steps(variables, grads, step_fn):
    for g in grads:
        step_fn(tf.constant(g))
    return values(variables)


def _dense_pair(rng, variant, dtype, shape=(6, 13), steps=3):
    state = random_state(rng, shape, dtype, variant)
    hyper = random_hyper(rng, dtype, variant)
    grads = [round_to(rng.uniform(-1, 1, shape), dtype).astype(dtype.as_numpy_dtype)
             for _ in range(steps)]
    results = []
    for jit in (False, True):
        variables = make_variables(state, dtype)

        @tf.function(jit_compile=jit)
        def step(g):
            apply_dense(variables, g, variant, hyper, dtype)

        results.append(_run_steps(variables, grads, step))
    return results, step


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_every_variant_matches_cpu_kernel(variant, rng):
    (cpu, xla), _ = _dense_pair(rng, variant, tf.float32)
    assert_matches(xla, cpu, tf.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_every_dtype_matches_cpu_kernel(dtype, rng):
    variant = Variant(centered=True, momentum=True, weight_decay_mode="coupled")
    (cpu, xla), _ = _dense_pair(rng, variant, dtype)
    # 16-bit: both compute in float32 and round once per step to the same storage, but their
    # float32 results may differ by an ulp (float32 itself differs in every run), which flips
    # that rounding: one storage ulp, <= 2^-10 (half) or 2^-7 (bfloat16) of the value, under
    # half of assert_matches' RTOL x (|value| + scale); once per step at most, 3 steps: under
    # 1.5 x RTOL, so 2 x. float32 and float64 need no doubling (100 seeds: worst error 0.12 and
    # 3e-4 of the undoubled bound; 16-bit 0.08 and 0.12, and bit-identical in 99 runs of 100).
    rtol = RTOL[dtype] * (2 if dtype in (tf.float16, tf.bfloat16) else 1)
    assert_matches(xla, cpu, dtype, rtol=rtol)


def test_hlo_is_plain_lowering_without_fallback(rng):
    _, step = _dense_pair(rng, Variant(centered=True, momentum=True), tf.float32, steps=1)
    hlo = step.experimental_get_compiler_ir(tf.zeros((6, 13)))(stage="hlo")
    assert 'op_type="ApplyRMSpropX"' in hlo
    assert "custom-call" not in hlo
    assert "sqrt" in hlo


def test_whole_training_step_is_one_xla_cluster(rng):
    x = tf.constant(rng.normal(size=(32, 5)), tf.float32)
    y = tf.constant(rng.normal(size=(32, 1)), tf.float32)
    w = tf.Variable(rng.normal(size=(5, 1)).astype(np.float32))
    ms = tf.Variable(tf.zeros_like(w))
    w_ref, ms_ref = tf.Variable(w), tf.Variable(ms)

    def train_step(w, ms):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((x @ w - y) ** 2)
        tf_rmsprop_ops.apply_rmsprop_x(w, ms, tape.gradient(loss, w), lr=0.01)
        return loss

    compiled = tf.function(jit_compile=True)(lambda: train_step(w, ms))
    plain = tf.function(lambda: train_step(w_ref, ms_ref))
    losses = [(float(compiled()), float(plain())) for _ in range(5)]
    # The gradients differ in summation order and XLA fuses multiply-adds: errors of the
    # weights' size, also where a weight ends near 0.
    np.testing.assert_allclose(w.numpy(), w_ref.numpy(), rtol=1e-5,
                               atol=1e-5 * np.abs(w_ref.numpy()).max())
    assert losses[-1][0] < losses[0][0]
    hlo = compiled.experimental_get_compiler_ir()(stage="hlo")
    # One module holds the forward matmul, its gradient and the update.
    assert hlo.count("HloModule") == 1
    assert "dot(" in hlo and 'op_type="ApplyRMSpropX"' in hlo


@pytest.mark.parametrize("variant", [Variant(), Variant(centered=True, momentum=True),
                                     Variant(momentum=True, nesterov=True,
                                             epsilon_placement="outside_sqrt",
                                             lr_placement="outside_momentum",
                                             weight_decay_mode="decoupled")], ids=str)
@pytest.mark.parametrize("index_dtype", [tf.int32, tf.int64], ids=lambda d: d.name)
def test_sparse_with_duplicates_matches_cpu_kernel_and_reference(variant, index_dtype, rng):
    dtype = tf.float32
    state = random_state(rng, (40, 7), dtype, variant)
    hyper = random_hyper(rng, dtype, variant)
    indices = rng.choice(rng.integers(0, 40, 12), 30)  # heavy duplication
    grad = round_to(rng.uniform(-1, 1, (30, 7)), dtype)
    results = []
    for jit in (False, True):
        variables = make_variables(state, dtype)

        @tf.function(jit_compile=jit)
        def step(g, idx):
            apply_sparse(variables, g, idx, variant, hyper, dtype)

        step(tf.constant(grad, dtype), tf.constant(indices, index_dtype))
        results.append(values(variables))
    cpu, xla = results
    assert_matches(xla, cpu, dtype, before=state)
    assert_matches(xla, reference_sparse(state, grad, indices, variant, hyper), dtype,
                   before=state)
    hlo = step.experimental_get_compiler_ir(tf.constant(grad, dtype),
                                            tf.constant(indices, index_dtype))(stage="hlo")
    assert 'op_type="SparseApplyRMSpropX"' in hlo and "custom-call" not in hlo
    assert "scatter(" in hlo and "sort(" in hlo


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_sparse_every_dtype(dtype, rng):
    variant = Variant(centered=True)
    state = random_state(rng, (20, 3), dtype, variant)
    hyper = random_hyper(rng, dtype, variant)
    indices = rng.integers(0, 20, 25)
    grad = round_to(rng.uniform(-1, 1, (25, 3)), dtype)
    variables = make_variables(state, dtype)

    @tf.function(jit_compile=True)
    def step():
        apply_sparse(variables, grad, tf.constant(indices), variant, hyper, dtype)

    step()
    assert_matches(values(variables), reference_sparse(state, grad, indices, variant, hyper),
                   dtype, before=state)


def test_sparse_out_of_range_rows_are_skipped_not_written(rng):
    """XLA cannot raise at run time: entries whose index is outside [0, rows) change
    nothing, and the valid entries are applied as usual."""
    variant = Variant(momentum=True)
    dtype = tf.float32
    state = random_state(rng, (10, 4), dtype, variant)
    hyper = random_hyper(rng, dtype, variant)
    indices = np.array([2, -1, 10, 5, 2, 1000, -7])
    grad = round_to(rng.uniform(-1, 1, (7, 4)), dtype)
    variables = make_variables(state, dtype)

    @tf.function(jit_compile=True)
    def step(g, idx):  # indices are a runtime argument: Python cannot see them
        apply_sparse(variables, g, idx, variant, hyper, dtype)

    step(tf.constant(grad, dtype), tf.constant(indices))
    valid = (indices >= 0) & (indices < 10)
    want = reference_sparse(state, grad[valid], indices[valid], variant, hyper)
    assert_matches(values(variables), want, dtype, before=state)


def test_python_layer_rejects_static_out_of_range_indices_under_xla(rng):
    var, ms = tf.Variable(tf.ones((5, 2))), tf.Variable(tf.ones((5, 2)))

    @tf.function(jit_compile=True)
    def step():
        tf_rmsprop_ops.sparse_apply_rmsprop_x(var, ms, tf.ones((2, 2)), [1, 5], lr=0.1)

    with pytest.raises(tf.errors.InvalidArgumentError, match=r"indices\[1\] = 5 is not in \[0, 5\)") as python:
        step()
    np.testing.assert_array_equal(var.numpy(), np.ones((5, 2)))
    # The Python check words it as the kernels do (cc/kernels/index_error.h), word for word.
    with pytest.raises(tf.errors.InvalidArgumentError) as kernel:
        tf_rmsprop_ops.sparse_apply_rmsprop_x(var, ms, tf.ones((2, 2)), [1, 5], lr=0.1)
    said = [re.search(r"indices\[.*", e.value.message).group(0) for e in (python, kernel)]
    assert said[0].strip() == said[1].replace(" [Op:SparseApplyRMSpropX] name: ", "").strip(), said
