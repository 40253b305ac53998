"""The XLA lowerings with 8-bit state (cc/xla/rmsprop_x_xla_state8.cc).

What is exact: the codec. With a step that leaves every state's value as it is (rho = 1,
lr = 0, momentum = 1: no rounding anywhere), XLA dequantizes and requantizes to the CPU
kernel's codes and absmax bit for bit, NaN, inf and all-zero blocks included. What is not:
XLA:CPU contracts a * b + c into fused multiply-adds whatever its flags (LLVM's FP-op
fusion is always on there), so its float32 formula differs from the kernels' (compiled
with -ffp-contract=off) by an ulp now and then, as the 32-bit lowering's does
(tests/test_xla.py). So the lowering is held to the CPU kernel's own standard: every
variant, dtype, shape, dense and sparse, against the reference's 8-bit step with the same
allowances as tests/test_state8_op.py (var within the float tolerances, absmax within
float32 rounding, a code off by one only where the exact state lies within rounding of a
midpoint). Also: a run-time hyperparameter the kernels would reject leaves the state's bits
and makes var NaN; bad codes/absmax are refused while compiling, naming the slot; both
optimizers train under jit_compile with 8-bit state."""
import numpy as np
import pytest
import tensorflow as tf

import tf_rmsprop_ops
from tf_rmsprop_ops import RMSpropX, reference, state8
from tf_rmsprop_ops.state8 import State8

from helpers import VARIANTS, random_hyper, random_state
from test_state8_op import _apply, _check_sparse, _check_step, _quantized_state, _variables

DTYPES8 = [tf.float16, tf.bfloat16, tf.float32]


def _xla_apply(v, grad, variant, hyper, dtype):
    @tf.function(jit_compile=True, autograph=False)
    def step(g):
        _apply(v, g, variant, hyper, dtype)
    step(tf.constant(np.asarray(grad)))


def _xla_sparse_apply(var, ms, grad, indices, **kwargs):
    @tf.function(jit_compile=True, autograph=False)
    def step(g, i):
        tf_rmsprop_ops.sparse_apply_rmsprop_x(var, ms, g, i, **kwargs)
    step(grad, tf.constant(indices))


@pytest.mark.parametrize("dtype", DTYPES8, ids=lambda d: d.name)
@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_every_variant_matches_the_reference(rng, variant, dtype):
    _check_step(rng, (6, 300), dtype, variant, apply=_xla_apply)


@pytest.mark.parametrize("shape", [(), (1,), (255,), (257,), (4, 256), (3, 2, 200), (0, 7),
                                   (7, 0), (2000,), (64, 700)], ids=str)
def test_shapes_match_the_reference(rng, shape):
    variant = next(v for v in VARIANTS if v.centered and v.momentum)
    _check_step(rng, shape, tf.float32, variant, apply=_xla_apply)


@pytest.mark.parametrize("dtype", DTYPES8, ids=lambda d: d.name)
@pytest.mark.parametrize("variant", VARIANTS[::3], ids=str)
def test_sparse_every_variant_matches_the_reference(rng, variant, dtype):
    _check_sparse(rng, (12, 300), dtype, variant, n_indices=10,
                  sparse_apply=_xla_sparse_apply)


@pytest.mark.parametrize("shape, n", [((40, 64), 100), ((6, 2, 300), 4), ((300, 513), 700),
                                      ((8, 17), 0)], ids=str)
def test_sparse_shapes_match_the_reference(rng, shape, n):
    variant = next(v for v in VARIANTS if v.centered and v.momentum)
    _check_sparse(rng, shape, tf.float32, variant, n, np.int32,
                  sparse_apply=_xla_sparse_apply)


def _state(rng, shape, dtype, variant):
    """test_state8_op's quantized state, with gradients over four decades (epsilon and the
    map's small entries matter)."""
    state, q = _quantized_state(rng, shape, dtype, variant)
    state["grad"] = np.asarray(tf.cast(
        rng.normal(size=shape) * 10.0 ** rng.uniform(-4, 0, shape), dtype), np.float64)
    return state, q


def _bits(v):
    """var, codes and absmax (floats compared by value: a NaN equals a NaN, whatever its
    payload, which x86 arithmetic does not fix across instruction choices)."""
    out = {"var": v["var"].numpy()}
    for k in ("ms", "mom", "mg"):
        if k in v:
            out[k + " codes"] = v[k].codes.numpy()
            out[k + " absmax"] = v[k].absmax.numpy()
    return out


def _assert_same_bits(got, want, what):
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=f"{what}: {k}")


def _odd_states(rng, shape, variant):
    """States spread over many decades, with a NaN block, an inf, an all-zero block."""
    state = random_state(rng, shape, tf.float32, variant)
    for k in ("ms", "mom", "mg"):
        if state[k] is not None:
            x = state[k] * 10.0 ** rng.uniform(-9, 1, shape)
            flat = x.reshape(-1)
            flat[3], flat[300] = np.nan, np.inf
            flat[700:956] = 0.0  # row 1, block 0
            state[k] = np.abs(x) if k == "ms" else x
    q = {k: None if state[k] is None else
         reference.quantize_blockwise(state[k], reference.STATE_SIGNED[k])
         for k in ("ms", "mom", "mg")}
    return state, q


@pytest.mark.parametrize("dense", [True, False], ids=["dense", "sparse"])
def test_the_codec_is_the_cpu_kernels_bit_for_bit(rng, dense):
    """rho = 1, lr = 0, momentum = 1: every state keeps its dequantized value exactly (no
    rounding), so the requantized codes and absmax (and var) must be the CPU kernel's, bit
    for bit."""
    variant = next(v for v in VARIANTS if v.centered and v.momentum and not v.nesterov
                   and v.weight_decay_mode == "none" and v.lr_placement == "inside_momentum"
                   and v.epsilon_placement == "inside_sqrt")
    shape = (4, 700)
    state, q = _odd_states(rng, shape, variant)
    hyper = dict(lr=0.0, rho=1.0, momentum=1.0, epsilon=1e-7, weight_decay=0.0)
    grad = rng.uniform(-1, 1, shape).astype(np.float32)
    indices = np.array([2, 0, 2, 3])
    out = []
    for jit in (False, True):
        v = _variables(state, q, tf.float32)
        slots = {k: v[k] for k in ("mom", "mg")}

        @tf.function(jit_compile=jit, autograph=False)
        def step(g):
            if dense:
                tf_rmsprop_ops.apply_rmsprop_x(v["var"], v["ms"], g, **slots, **hyper,
                                               **variant.op_kwargs())
            else:
                tf_rmsprop_ops.sparse_apply_rmsprop_x(v["var"], v["ms"], g[:4], indices,
                                                      **slots, **hyper, **variant.op_kwargs())
        step(tf.constant(grad))
        out.append(_bits(v))
    _assert_same_bits(out[1], out[0], "codec")
    # and it requantized something: the NaN poisoned its block, the zero block stayed zero
    assert np.isnan(out[0]["ms absmax"][0, 0]) and out[0]["ms absmax"][1, 0] == 0


def test_the_hlo_is_a_plain_lowering(rng):
    variant = next(v for v in VARIANTS if v.centered and v.momentum)
    state, q = _state(rng, (4, 300), tf.float32, variant)
    v = _variables(state, q, tf.float32)

    @tf.function(jit_compile=True, autograph=False)
    def step(g):
        tf_rmsprop_ops.apply_rmsprop_x(v["var"], v["ms"], g, mom=v["mom"], mg=v["mg"], lr=0.01,
                                       **variant.op_kwargs())
    hlo = step.experimental_get_compiler_ir(tf.zeros((4, 300)))(stage="hlo")
    assert 'op_type="ApplyRMSpropX"' in hlo and "custom-call" not in hlo


def test_a_rejected_hyperparameter_keeps_the_state_bits_and_makes_var_nan(rng):
    """XLA cannot raise at run time: with rho = 2 (a run-time value) var becomes NaN (loud)
    and every state keeps its codes and absmax (a requantized unchanged state would not)."""
    variant = next(v for v in VARIANTS if v.centered and v.momentum)
    state, q = _state(rng, (4, 300), tf.float32, variant)
    v = _variables(state, q, tf.float32)

    @tf.function(jit_compile=True, autograph=False)
    def step(g, rho):
        tf_rmsprop_ops.apply_rmsprop_x(v["var"], v["ms"], g, mom=v["mom"], mg=v["mg"], lr=0.01,
                                       rho=rho, momentum=0.9, epsilon=1e-7,
                                       **variant.op_kwargs())
    step(tf.constant(state["grad"], tf.float32), tf.constant(2.0))
    assert np.isnan(v["var"].numpy()).all()
    for k in ("ms", "mom", "mg"):
        np.testing.assert_array_equal(v[k].codes.numpy(), q[k][0])
        np.testing.assert_array_equal(v[k].absmax.numpy(), q[k][1])


@pytest.mark.parametrize("case, message", [
    ("absmax_shape", r"slot 'mom absmax' must have shape \[5,2\]"),
    ("codes_dtype", r"slot 'ms codes' must be uint8, got float"),
    ("float64", "needs a half, bfloat16 or float32 variable"),
])
def test_bad_inputs_are_refused_while_compiling(rng, case, message):
    variant = next(v for v in VARIANTS if v.momentum and not v.centered and not v.nesterov)
    state, q = _state(rng, (5, 300), tf.float32, variant)
    v = _variables(state, q, tf.float64 if case == "float64" else tf.float32)
    if case == "absmax_shape":
        v["mom"] = State8(v["mom"].codes, tf.Variable(q["mom"][1][:, :1]))
    elif case == "codes_dtype":
        v["ms"] = State8(tf.Variable(q["ms"][0].astype(np.float32)), v["ms"].absmax)
    before = {k: (s.codes.numpy().copy(), s.absmax.numpy().copy())
              for k, s in v.items() if k != "var"}

    @tf.function(jit_compile=True, autograph=False)
    def step():
        tf_rmsprop_ops.apply_rmsprop_x(v["var"], v["ms"], tf.ones_like(v["var"]), mom=v["mom"],
                                       lr=0.01, rho=0.9, momentum=0.9, epsilon=1e-7)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match=message):
        step()
    for k, (codes, absmax) in before.items():
        np.testing.assert_array_equal(v[k].codes.numpy(), codes)
        np.testing.assert_array_equal(v[k].absmax.numpy(), absmax)


def test_the_optimizer_under_jit_compile_follows_the_native_one(rng):
    """RMSpropX(state_bits=8, jit_compile=True), dense and IndexedSlices gradients, 3 steps,
    each from the native optimizer's state (variables, codes, absmax copied over first): var
    where the native optimizer's is, within float32 rounding (XLA's fused multiply-adds),
    and the codes equal but for the rare neighbour at a midpoint. (Across steps without the
    copy, such a neighbour moves later steps by up to a gap of the map.)"""
    w0 = rng.uniform(-1, 1, (64, 128)).astype(np.float32)
    t0 = rng.uniform(-1, 1, (100, 64)).astype(np.float32)
    ids = [rng.integers(0, 100, 20) for _ in range(3)]
    runs = {}
    for jit in (False, True):
        runs[jit] = (tf.Variable(w0), tf.Variable(t0),
                     RMSpropX(learning_rate=0.01, momentum=0.9, centered=True, state_bits=8,
                              jit_compile=jit))

    def states(opt):
        return [st for s in (opt._ms, opt._mom, opt._mg) for st in s]

    for step in range(3):
        for w, table, opt in runs.values():
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.sin(w) ** 2) + tf.reduce_sum(
                    tf.gather(table, ids[step]) ** 3)
            opt.apply_gradients(zip(tape.gradient(loss, [w, table]), [w, table]))
        (w, table, opt), (wj, tablej, optj) = runs[False], runs[True]
        assert all(isinstance(st, state8.State8) for st in states(opt) + states(optj))
        for got, want in ((wj, w), (tablej, table)):
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
        for got, want in zip(states(optj), states(opt)):
            got_codes, want_codes = got.codes.numpy(), want.codes.numpy()
            assert np.mean(got_codes != want_codes) < 0.005
            assert np.all(np.abs(got_codes.astype(int) - want_codes.astype(int)) <= 1)
            got.codes.assign(want_codes)  # the next step from the native state
            got.absmax.assign(want.absmax.numpy())
        wj.assign(w)
        tablej.assign(table)
    assert np.max(np.abs(runs[True][0].numpy() - w0)) > 1e-3  # it trained


def test_keras_model_fit_under_jit_compile(rng):
    """Keras' model.compile(jit_compile=True) with 8-bit state (the whole step in XLA, the
    update through the lowering): it trains, and ends within 1% of the loss without XLA
    (XLA's own matmuls round differently from TensorFlow's, so the bits differ)."""
    import keras
    from tf_rmsprop_ops.keras import RMSpropX as KerasRMSpropX
    x = rng.normal(size=(512, 32)).astype(np.float32)
    y = np.tanh(x @ rng.normal(size=(32, 1))).astype(np.float32)
    seed = int(rng.integers(2**31))
    losses = []
    for jit in (False, True):
        keras.utils.set_random_seed(seed)
        m = keras.Sequential([keras.Input((32,)), keras.layers.Dense(128, activation="tanh"),
                              keras.layers.Dense(1)])
        m.compile(optimizer=KerasRMSpropX(learning_rate=1e-3, momentum=0.9, state_bits=8),
                  loss="mse", jit_compile=jit)
        history = m.fit(x, y, epochs=3, batch_size=64, verbose=0, shuffle=False).history
        assert sum(v.dtype == "uint8" for v in m.optimizer.variables) == 2
        assert history["loss"][-1] < 0.7 * history["loss"][0]
        losses.append(history["loss"][-1])
    assert abs(losses[1] - losses[0]) <= 0.01 * losses[0], losses
