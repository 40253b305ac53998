"""Checkpoints across state formats: a 32-bit state restored into 8-bit state is quantized
(the reference's quantizer, bit for bit), an 8-bit state restored into 32-bit state is
dequantized, for `tf.train.Checkpoint` (optimizer built before or after the restore) and
Keras' `.weights.h5`; the same format restores bit for bit, with the checkpoint keys of
32-bit state unchanged."""
import os
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_rmsprop_ops import RMSpropX, reference, state8
from tf_rmsprop_ops import keras as tfk

SLOTS = ("ms", "mom", "mg")


def _converted(values, kind):
    """What a float state becomes in 8-bit state: the reference's codes and absmax."""
    return reference.quantize_blockwise(np.asarray(values, np.float32), state8.SIGNED[kind])


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("shape", [(5000,), (3, 700), (2, 3, 300), (4096,), (1,), (10, 256)])
def test_tf_quantizer_is_the_reference(shape, signed):
    rng = np.random.default_rng(hash((shape, signed)) % 2**32)
    x = (rng.standard_normal(shape) * 10.0 ** rng.uniform(-9, 3, shape)).astype(np.float32)
    flat = x.reshape(-1)
    if flat.size > 600:
        flat[:2] = np.nan       # a NaN poisons its block
        flat[300:556] = 0.0     # a zero block (of the second block, when rows are long)
        flat[-1] = np.inf
    if not signed:
        x = np.abs(x)
    codes, absmax = state8.quantize(tf.constant(x), signed)
    want_codes, want_absmax = reference.quantize_blockwise(x, signed)
    np.testing.assert_array_equal(codes.numpy(), want_codes)
    np.testing.assert_array_equal(absmax.numpy(), want_absmax)
    # And from half precision (the 32-bit state of a float16 variable).
    h = x.astype(np.float16)
    codes, absmax = state8.quantize(tf.constant(h), signed)
    want_codes, want_absmax = reference.quantize_blockwise(h.astype(np.float32), signed)
    np.testing.assert_array_equal(codes.numpy(), want_codes)
    np.testing.assert_array_equal(absmax.numpy(), want_absmax)


def _model(rng, dtype):
    w = tf.Variable(rng.standard_normal((48, 128)).astype(dtype), name="w")  # 8-bit eligible
    b = tf.Variable(rng.standard_normal((10,)).astype(dtype), name="b")      # always 32-bit
    return w, b


def _optimizer(bits):
    return RMSpropX(learning_rate=0.01, momentum=0.9, centered=True, state_bits=bits)


def _train(opt, w, b, rng, steps=3):
    for _ in range(steps):
        opt.apply([tf.constant(rng.standard_normal(w.shape).astype(w.dtype.as_numpy_dtype)
                               * 1e-3),
                   tf.constant(rng.standard_normal(b.shape).astype(b.dtype.as_numpy_dtype))],
                  [w, b])


def _state(opt, w, kind):
    """(float values, or (codes, absmax)) of w's `kind` state."""
    slot = {"ms": opt._ms, "mom": opt._mom, "mg": opt._mg}[kind][opt._position(w)]
    if isinstance(slot, state8.State8):
        return slot.codes.numpy(), slot.absmax.numpy()
    return slot.numpy()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("built", [True, False], ids=["built_first", "restore_first"])
@pytest.mark.parametrize("src,dst", [(32, 8), (8, 32), (8, 8), (32, 32)])
def test_checkpoint_converts_between_formats(tmp_path, src, dst, built, dtype):
    rng = np.random.default_rng(src * 1000 + dst * 10 + built)
    w, b = _model(rng, dtype)
    opt = _optimizer(src)
    _train(opt, w, b, rng)
    path = tf.train.Checkpoint(w=w, b=b, opt=opt).save(os.path.join(tmp_path, "ckpt"))
    saved = {k: _state(opt, w, k) for k in SLOTS}
    saved_b = {k: _state(opt, b, k) for k in SLOTS}

    w2, b2 = _model(np.random.default_rng(99), dtype)
    opt2 = _optimizer(dst)
    if built:
        opt2.build([w2, b2])
    status = tf.train.Checkpoint(w=w2, b=b2, opt=opt2).restore(path)
    if not built:
        opt2.build([w2, b2])
    if src == dst:
        status.assert_consumed()
    else:
        # Every checkpoint value was used; the new format's variables were filled by the
        # conversion, so assert_consumed() (which also wants each of them in the
        # checkpoint) reports them.
        status.assert_nontrivial_match()
    assert isinstance(opt2._ms[0], state8.State8) == (dst == 8)
    for kind in SLOTS:
        got, was = _state(opt2, w2, kind), saved[kind]
        if src == 32 and dst == 8:
            want = _converted(was, kind)
        elif src == 8 and dst == 32:
            want = reference.dequantize_blockwise(*was, state8.SIGNED[kind]).astype(dtype)
        else:
            want = was
        if dst == 8:
            np.testing.assert_array_equal(got[0], want[0], err_msg=f"{kind} codes")
            np.testing.assert_array_equal(got[1], want[1], err_msg=f"{kind} absmax")
        else:
            assert got.dtype == dtype
            np.testing.assert_array_equal(got, want, err_msg=kind)
        np.testing.assert_array_equal(_state(opt2, b2, kind), saved_b[kind])  # 32-bit both
    np.testing.assert_array_equal(w2.numpy(), w.numpy())
    assert int(opt2.iterations.numpy()) == 3


def test_training_continues_from_converted_state(tmp_path):
    """After a 32-bit checkpoint is restored into 8-bit state, a step is the 8-bit step of
    the reference from the quantized state."""
    rng = np.random.default_rng(5)
    w, b = _model(rng, np.float32)
    opt = _optimizer(32)
    _train(opt, w, b, rng)
    path = tf.train.Checkpoint(w=w, b=b, opt=opt).save(os.path.join(tmp_path, "ckpt"))
    states = {k: _converted(_state(opt, w, k), k) for k in SLOTS}
    w2, b2 = _model(np.random.default_rng(6), np.float32)
    opt2 = _optimizer(8)
    tf.train.Checkpoint(w=w2, b=b2, opt=opt2).restore(path)
    start = w.numpy()
    g = rng.standard_normal(w.shape).astype(np.float32) * 1e-3
    opt2.apply([tf.constant(g), tf.zeros_like(b2)], [w2, b2])
    want = reference.rmsprop_x_step_8bit(
        start, g, states["ms"], states["mom"], states["mg"], lr=0.01, rho=0.9, momentum=0.9,
        epsilon=1e-7)
    np.testing.assert_allclose(w2.numpy(), want["var"], rtol=1e-6, atol=1e-7)
    codes, absmax = _state(opt2, w2, "mom")
    np.testing.assert_allclose(absmax, want["mom"][1], rtol=2e-6)


def test_checkpoint_keys_say_the_format(tmp_path):
    rng = np.random.default_rng(7)
    keys = {}
    for bits in (32, 8):
        w, b = _model(rng, np.float32)
        opt = _optimizer(bits)
        _train(opt, w, b, rng, steps=1)
        path = tf.train.Checkpoint(opt=opt).save(os.path.join(tmp_path, f"c{bits}"))
        keys[bits] = {name for name, _ in tf.train.list_variables(path)}
    # 32-bit state: each slot a list element, as before the slot table existed.
    assert "opt/_ms/0/.ATTRIBUTES/VARIABLE_VALUE" in keys[32]
    assert "opt/_mg/1/.ATTRIBUTES/VARIABLE_VALUE" in keys[32]
    # 8-bit state: "<i>_8bit" with codes and absmax, and no float copy of it.
    assert {"opt/_ms/0_8bit/codes/.ATTRIBUTES/VARIABLE_VALUE",
            "opt/_ms/0_8bit/absmax/.ATTRIBUTES/VARIABLE_VALUE"} <= keys[8]
    assert "opt/_ms/0/.ATTRIBUTES/VARIABLE_VALUE" not in keys[8]
    assert "opt/_ms/1/.ATTRIBUTES/VARIABLE_VALUE" in keys[8]  # the small bias: 32-bit


def test_checkpoint_of_other_shape_is_an_error(tmp_path):
    rng = np.random.default_rng(8)
    w, b = _model(rng, np.float32)
    opt = _optimizer(32)
    _train(opt, w, b, rng, steps=1)
    path = tf.train.Checkpoint(opt=opt).save(os.path.join(tmp_path, "ckpt"))
    w2 = tf.Variable(rng.standard_normal((64, 128)).astype(np.float32))
    b2 = tf.Variable(rng.standard_normal((10,)).astype(np.float32))
    opt2 = _optimizer(8)
    opt2.build([w2, b2])
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="shape"):
        tf.train.Checkpoint(opt=opt2).restore(path)


KERAS_SLOTS = {"velocity": "ms", "momentum": "mom", "average_gradient": "mg"}


def _keras_model(bits):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(256),
                              keras.layers.Dense(4)])
    model.compile(optimizer=tfk.RMSpropX(learning_rate=1e-3, momentum=0.9, centered=True,
                                         state_bits=bits), loss="mse")
    return model


@pytest.mark.parametrize("src,dst", [(32, 8), (8, 32), (8, 8), (32, 32)])
def test_keras_weights_convert_between_formats(tmp_path, src, dst):
    rng = np.random.default_rng(src + dst)
    x = rng.standard_normal((64, 32)).astype(np.float32)
    y = rng.standard_normal((64, 4)).astype(np.float32)
    model = _keras_model(src)
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    path = os.path.join(tmp_path, "m.weights.h5")
    model.save_weights(path)
    kernel, small = model.layers[0].kernel, model.layers[1].kernel  # 8192 and 1024 elements
    saved = {n: keras.ops.convert_to_numpy(model.optimizer.get_slot(kernel, n))
             for n in KERAS_SLOTS}
    saved_small = {n: keras.ops.convert_to_numpy(model.optimizer.get_slot(small, n))
                   for n in KERAS_SLOTS}
    model2 = _keras_model(dst)
    model2.optimizer.build(model2.trainable_variables)  # as for Keras' own optimizers
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Keras warns when it skips the optimizer's state
        model2.load_weights(path)
    for name, kind in KERAS_SLOTS.items():
        got = keras.ops.convert_to_numpy(model2.optimizer.get_slot(model2.layers[0].kernel,
                                                                   name))
        want = saved[name]
        if (src, dst) == (32, 8):
            want = reference.dequantize_blockwise(*_converted(want, kind), state8.SIGNED[kind])
        np.testing.assert_array_equal(got, want, err_msg=name)
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(model2.optimizer.get_slot(model2.layers[1].kernel,
                                                                 name)),
            saved_small[name])
    assert int(model2.optimizer.iterations.numpy()) == 8
    if (src, dst) == (32, 8):  # the codes themselves, not only their values
        i = model2.optimizer._get_variable_index(model2.layers[0].kernel)
        codes, absmax = _converted(saved["momentum"], "mom")
        np.testing.assert_array_equal(model2.optimizer._momentums[i].numpy(), codes)
        np.testing.assert_array_equal(model2.optimizer._momentum_absmax[i].numpy(), absmax)


@pytest.mark.parametrize("older, newer", [(32, 8), (8, 32)])
def test_the_newest_restore_wins_across_formats(tmp_path, older, newer):
    """Two restores, of checkpoints in different formats, into an optimizer built after both
    (TensorFlow defers both): the newer one's state, as TensorFlow's rule for one format."""
    rng = np.random.default_rng(older)
    paths, states = {}, {}
    for bits, steps in ((older, 1), (newer, 3)):
        w, b = _model(rng, np.float32)
        opt = _optimizer(bits)
        _train(opt, w, b, rng, steps=steps)
        paths[bits] = tf.train.Checkpoint(w=w, b=b, opt=opt).save(
            os.path.join(tmp_path, f"c{bits}"))
        states[bits] = _state(opt, w, "mom")
    w2, b2 = _model(np.random.default_rng(9), np.float32)
    opt2 = _optimizer(8)
    tf.train.Checkpoint(w=w2, b=b2, opt=opt2).restore(paths[older])
    tf.train.Checkpoint(w=w2, b=b2, opt=opt2).restore(paths[newer])
    opt2.build([w2, b2])
    got = _state(opt2, w2, "mom")
    want = states[newer] if newer == 8 else _converted(states[newer], "mom")
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert int(opt2.iterations.numpy()) == 3


def test_keras_weights_of_another_shape_load_nothing(tmp_path):
    """A converting load checks every shape first: a mismatch is a ValueError and nothing
    (not even `iterations`) is assigned."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 32)).astype(np.float32)
    y = rng.standard_normal((64, 4)).astype(np.float32)
    model = _keras_model(32)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    path = os.path.join(tmp_path, "m.weights.h5")
    model.save_weights(path)
    keras.utils.set_random_seed(1)
    other = keras.Sequential([keras.Input((32,)), keras.layers.Dense(256),
                              keras.layers.Dense(5)])  # the last kernel [256, 5], not 4
    other.compile(optimizer=tfk.RMSpropX(learning_rate=1e-3, momentum=0.9, centered=True,
                                         state_bits=8), loss="mse")
    other.optimizer.build(other.trainable_variables)
    before = [v.numpy().copy() for v in other.optimizer.variables]
    with pytest.raises(ValueError, match="nothing was loaded"):
        other.optimizer.load_own_variables(
            {str(i): v.numpy() for i, v in enumerate(model.optimizer.variables)})
    for v, b in zip(other.optimizer.variables, before):
        np.testing.assert_array_equal(v.numpy(), b)
