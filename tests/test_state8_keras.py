"""tf_rmsprop_ops.keras.RMSpropX(state_bits=8) in model.fit: an MLP, a small CNN and an
embedding model (IndexedSlices: the sparse 8-bit path) end within 1% of the float32-state
final loss (measured over 4 seeds each: at most 0.015% apart); one step against the
reference's 8-bit step; .keras save and load resume bit for bit; get_slot; refusals."""
import numpy as np
import pytest
import keras
import tensorflow as tf

from tf_rmsprop_ops import reference
from tf_rmsprop_ops.keras import RMSpropX

from helpers import as_op_sees, assert_matches
from test_state8_op import assert_state_matches, state_slack


def _data(kind, rng):
    if kind == "mlp":  # Dense(32 -> 128): a 4096-element kernel
        x = rng.normal(size=(2048, 32)).astype(np.float32)
        y = (np.tanh(x @ rng.normal(size=(32, 1))) + 0.3 * rng.normal(size=(2048, 1)))

        def model():
            return keras.Sequential([keras.Input((32,)), keras.layers.Dense(128, activation="tanh"),
                                     keras.layers.Dense(1)])
    elif kind == "cnn":  # a 3x3x32x32 kernel (9216 elements)
        x = rng.normal(size=(512, 12, 12, 3)).astype(np.float32)
        y = np.tanh(x.reshape(512, -1) @ (rng.normal(size=(432, 1)) / 20))
        y = y + 0.3 * rng.normal(size=(512, 1))

        def model():
            return keras.Sequential([keras.Input((12, 12, 3)),
                                     keras.layers.Conv2D(32, 3, activation="relu"),
                                     keras.layers.Conv2D(32, 3, activation="relu"),
                                     keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(1)])
    else:  # an Embedding(2000, 16) table: sparse updates of 8-bit state
        x = rng.integers(0, 2000, size=(4096, 4))
        y = rng.normal(size=(2000,))[x].sum(axis=1, keepdims=True) + 0.3 * rng.normal(
            size=(4096, 1))

        def model():
            return keras.Sequential([keras.Input((4,), dtype="int32"),
                                     keras.layers.Embedding(2000, 16), keras.layers.Flatten(),
                                     keras.layers.Dense(1)])
    return x, y.astype(np.float32), model


@pytest.mark.parametrize("kind", ["mlp", "cnn", "embedding"])
def test_model_fit_ends_within_one_percent_of_float32_state(rng, kind):
    x, y, model = _data(kind, rng)
    seed = int(rng.integers(2**31))
    losses, uint8 = {}, {}
    for bits in (32, 8):
        keras.utils.set_random_seed(seed)
        m = model()
        m.compile(optimizer=RMSpropX(learning_rate=1e-3, state_bits=bits), loss="mse")
        losses[bits] = m.fit(x, y, epochs=3, batch_size=64, verbose=0,
                             shuffle=False).history["loss"][-1]
        uint8[bits] = sum(v.dtype == "uint8" for v in m.optimizer.variables)
    assert uint8 == {32: 0, 8: 1}, uint8  # the one big kernel or table has 8-bit ms
    # The issue's bar (1%, as bitsandbytes' paper reports parity); measured 4 seeds per
    # model: at most 0.015% apart, so a regression in the 8-bit path shows long before it.
    assert abs(losses[8] - losses[32]) <= 0.01 * losses[32], losses


def test_a_step_follows_the_reference_8bit_step(rng):
    var = keras.Variable(rng.uniform(-2, 2, (64, 96)).astype(np.float32))
    opt = RMSpropX(learning_rate=0.01, momentum=0.9, centered=True, state_bits=8)
    hyper = as_op_sees(dict(lr=0.01, rho=0.9, momentum=0.9, epsilon=1e-7, weight_decay=0.0),
                       tf.float32)
    opt.build([var])
    names = {"ms": "velocity", "mom": "momentum", "mg": "average_gradient"}
    for step in range(3):
        grad = (rng.normal(size=(64, 96)) * 10.0 ** rng.uniform(-4, 0, (64, 96))).astype(
            np.float32)
        before_var = np.asarray(var.numpy(), np.float64)
        before = {k: (getattr(opt, f"_{n}s" if n != "velocity" else "_velocities")[0].numpy(),
                      getattr(opt, f"_{n}_absmax")[0].numpy()) for k, n in names.items()}
        opt.apply([tf.constant(grad)], [var])
        want = reference.rmsprop_x_step_8bit(before_var, grad, before["ms"], before["mom"],
                                             before["mg"], **hyper)
        assert_matches({"var": np.asarray(var.numpy(), np.float64)}, {"var": want["var"]},
                       tf.float32, before={"var": before_var}, what=f"step {step} ")
        floats = {k: reference.dequantize_blockwise(*before[k], reference.STATE_SIGNED[k])
                  .astype(np.float64) for k in names}
        slack = state_slack(before_var, grad, floats, **hyper)
        for k, n in names.items():
            after = (getattr(opt, f"_{n}s" if n != "velocity" else "_velocities")[0].numpy(),
                     getattr(opt, f"_{n}_absmax")[0].numpy())
            assert_state_matches(after, want[k], want[k + "_exact"], floats[k],
                                 reference.STATE_SIGNED[k], f"step {step} {k}", slack=slack[k])
            got = opt.get_slot(var, n).numpy()  # the dequantized state
            np.testing.assert_array_equal(got, reference.dequantize_blockwise(
                *after, reference.STATE_SIGNED[k]))


def test_keras_save_and_load_resume_bit_for_bit(rng, tmp_path):
    x, y, model = _data("embedding", rng)
    keras.utils.set_random_seed(int(rng.integers(2**31)))
    m = model()
    m.compile(optimizer=RMSpropX(learning_rate=1e-3, momentum=0.5, state_bits=8), loss="mse")
    m.fit(x, y, epochs=1, batch_size=256, verbose=0, shuffle=False)
    m.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.optimizer.state_bits == 8
    for a, b in zip(loaded.optimizer.variables, m.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a.numpy()), np.asarray(b.numpy()))
    m.fit(x, y, epochs=1, batch_size=256, verbose=0, shuffle=False)
    loaded.fit(x, y, epochs=1, batch_size=256, verbose=0, shuffle=False)
    for a, b in zip(loaded.weights + loaded.optimizer.variables,
                    m.weights + m.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a.numpy()), np.asarray(b.numpy()))


def test_exclusion_keeps_a_variable_at_32_bits(rng):
    x, y, model = _data("embedding", rng)
    m = model()
    opt = RMSpropX(state_bits=8)
    opt.exclude_from_8bit_state(var_names=["embedding"])
    m.compile(optimizer=opt, loss="mse")
    m.fit(x[:64], y[:64], epochs=1, batch_size=64, verbose=0)
    assert not any(v.dtype == "uint8" for v in opt.variables)
    with pytest.raises(ValueError, match="before the optimizer is built"):
        opt.exclude_from_8bit_state(var_names=["x"])


def test_a_refused_build_leaves_the_optimizer_unbuilt(monkeypatch):
    var = keras.Variable(np.zeros((100, 64), np.float32), name="table")
    opt = RMSpropX(state_bits=8)
    decide = opt._selection.bits_for

    def bits_for(v, key, dtensor=False, device=""):  # as a GPU variable is refused
        if decide(v, key, dtensor, device) == 8 and "table" in v.name:
            raise ValueError(f"state_bits=8: {v.name} refused")
        return decide(v, key, dtensor, device)
    monkeypatch.setattr(opt._selection, "bits_for", bits_for)
    with pytest.raises(ValueError, match="refused"):
        opt.build([var])
    assert not opt.built
    opt.exclude_from_8bit_state(var_names=["table"])
    opt.build([var])
    assert opt.built and not any(v.dtype == "uint8" for v in opt.variables)


def test_refused_settings():
    with pytest.raises(ValueError, match="state_bits"):
        RMSpropX(state_bits=4)
    with pytest.raises(ValueError, match="min_8bit_size"):
        RMSpropX(state_bits=8, min_8bit_size=-3)


@pytest.mark.parametrize("kind", ["mlp", "embedding"])
def test_model_fit_under_mirrored_strategy(rng, kind):
    """model.fit under MirroredStrategy (2 CPUs) with 8-bit state: the codes and absmax are
    mirrored, both replicas hold the same bits, and the run ends where the one-device run
    ends (Keras sums the replicas' half-batch gradients, one device takes the whole batch's:
    float32 rounding apart, through an 8-bit state whose codes may then differ by one)."""
    from test_distribute import _strategy
    x, y, model = _data(kind, rng)
    x, y = x[:512], y[:512]
    seed = int(rng.integers(2**31))
    runs = {}
    for mirrored in (False, True):
        strategy = _strategy() if mirrored else tf.distribute.get_strategy()
        keras.utils.set_random_seed(seed)
        with strategy.scope():
            m = model()
            m.compile(optimizer=RMSpropX(learning_rate=1e-3, momentum=0.9, state_bits=8),
                      loss="mse")
        m.fit(x, y, epochs=2, batch_size=64, verbose=0, shuffle=False)
        runs[mirrored] = (strategy, m)
    strategy, m = runs[True]
    codes = [v for v in m.optimizer.variables if v.dtype == "uint8"]
    assert len(codes) == 2  # ms and mom of the one big kernel or table
    for v in m.optimizer.variables + m.trainable_variables:
        copies = [c.numpy() for c in strategy.experimental_local_results(v.value)]
        assert len(copies) == 2, v.path
        np.testing.assert_array_equal(copies[0], copies[1], err_msg=v.path)
    # Where the runs part: an element whose state sits far below its block's absmax has a
    # coarse code (the dynamic map's low decades), and the two runs' float32 sums round it
    # differently now and then (measured: 10 of 4096 kernel elements apart by up to 7e-4 =
    # 0.7 lr after 16 steps, the rest within 1e-6). Bound: 2 lr per element; the loss 1%.
    for got, want in zip(m.trainable_variables, runs[False][1].trainable_variables):
        assert np.max(np.abs(got.numpy() - want.numpy())) < 2e-3, got.path
    losses = [r[1].evaluate(x, y, batch_size=512, verbose=0) for r in (runs[False], runs[True])]
    assert abs(losses[1] - losses[0]) <= 0.01 * losses[0], losses
