"""Gaps found by running Keras' own optimizer tests against both classes (issue 25, item 3):
`overwrite_with_gradient`, IndexedSlices with Python indices, unique default names, Keras
(de)serialization of the tf.Module class, callable hyperparameters. The peer is Keras 3's
RMSprop, run on the same variables and gradients."""
import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_rmsprop_ops
from tf_rmsprop_ops.keras import RMSpropX as KerasRMSpropX

CLASSES = {"module": tf_rmsprop_ops.RMSpropX, "keras": KerasRMSpropX}


def _run(cls, grads_seq, init, **kwargs):
    """Variables [scale (overwrite_with_gradient), weight] after applying grads_seq."""
    scale = keras.Variable(init[0], name="scale")
    scale.overwrite_with_gradient = True
    weight = keras.Variable(init[1], name="weight")
    opt = cls(learning_rate=0.01, momentum=0.9, **kwargs)
    for g_scale, g_weight in grads_seq:
        opt.apply_gradients([(tf.constant(g_scale), scale), (tf.constant(g_weight), weight)])
    return scale.numpy(), weight.numpy(), int(opt.iterations.numpy())


@pytest.mark.parametrize("accumulation", [None, 3], ids=["plain", "accumulated"])
@pytest.mark.parametrize("which", CLASSES)
def test_overwrite_with_gradient_as_keras(rng, which, accumulation):
    """A variable with `overwrite_with_gradient = True` takes its gradient's value (under
    gradient accumulation: the max over the accumulated steps, on the update step), the
    others an RMSprop step: both as Keras 3's RMSprop on the same gradients."""
    init = [rng.normal(size=5).astype(np.float32), rng.normal(size=(3, 4)).astype(np.float32)]
    grads_seq = [(rng.normal(size=5).astype(np.float32),
                  (rng.normal(size=(3, 4)) * 10.0 ** rng.uniform(-4, 0)).astype(np.float32))
                 for _ in range(7)]
    kwargs = dict(gradient_accumulation_steps=accumulation) if accumulation else {}
    ours = _run(CLASSES[which], grads_seq, init, **kwargs)
    peer = _run(keras.optimizers.RMSprop, grads_seq, init, **kwargs)
    np.testing.assert_array_equal(ours[0], peer[0])  # the value is a gradient's, exactly
    if accumulation:  # 7 calls, updates on calls 3 and 6: the max of calls 4-6 and of the
        # accumulator they started from (reset to zeros by the update on call 3)
        want = np.max([np.zeros(5, np.float32)] + [g for g, _ in grads_seq[3:6]], axis=0)
    else:
        want = grads_seq[-1][0]
    np.testing.assert_array_equal(ours[0], want)
    np.testing.assert_allclose(ours[1], peer[1], rtol=2e-6, atol=1e-7)
    assert not np.allclose(ours[1], init[1])  # the other variable did move
    assert ours[2] == peer[2]


@pytest.mark.parametrize("saved_bits", [8, 32])
def test_overwrite_with_gradient_keeps_no_8bit_state(rng, saved_bits):
    """With state_bits=8 the Keras class keeps no state for an overwrite_with_gradient
    variable (as Keras, whatever the format), steps the others as the tf.Module class does,
    and its saved state loads into either format."""
    init = [rng.normal(size=5).astype(np.float32), rng.normal(size=(3, 4)).astype(np.float32)]
    grads_seq = [(rng.normal(size=5).astype(np.float32),
                  (rng.normal(size=(3, 4)) * 10.0 ** rng.uniform(-4, 0)).astype(np.float32))
                 for _ in range(3)]
    kwargs = dict(state_bits=8, min_8bit_size=0)
    ours = _run(KerasRMSpropX, grads_seq, init, **kwargs)
    module = _run(tf_rmsprop_ops.RMSpropX, grads_seq, init, **kwargs)
    for a, b in zip(ours, module):
        np.testing.assert_array_equal(a, b)

    scale, weight = keras.Variable(init[0], name="scale"), keras.Variable(init[1], name="w")
    scale.overwrite_with_gradient = True
    opt = KerasRMSpropX(learning_rate=0.01, momentum=0.9, **kwargs)
    opt.apply_gradients([(tf.constant(g), v) for g, v in zip(grads_seq[0], (scale, weight))])
    # iterations, learning rate, then codes + absmax of the weight's ms and mom only
    assert [v.dtype for v in opt.variables[2:]] == ["uint8", "float32"] * 2
    store = {}
    opt.save_own_variables(store)
    fresh = KerasRMSpropX(learning_rate=0.01, momentum=0.9, state_bits=saved_bits,
                          min_8bit_size=0)
    fresh.build([scale, weight])
    fresh.load_own_variables(store)
    for name in ("velocity", "momentum"):
        np.testing.assert_array_equal(np.asarray(fresh.get_slot(weight, name)),
                                      np.asarray(opt.get_slot(weight, name)))


def test_overwrite_with_gradient_under_a_strategy_is_refused_by_name():
    strategy = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])
    with strategy.scope():
        scale = tf.Variable(np.ones(3, np.float32), name="amax_scale")
        opt = tf_rmsprop_ops.RMSpropX()
    scale.overwrite_with_gradient = True
    with pytest.raises(ValueError, match="amax_scale.*overwrite_with_gradient=True"):
        strategy.run(lambda: opt.apply_gradients([(tf.ones(3), scale)]))
    np.testing.assert_array_equal(scale.numpy(), 1.0)


@pytest.mark.parametrize("indices", [(1, 3), [1, 3], np.array([1, 3])], ids=type)
@pytest.mark.parametrize("which", CLASSES)
def test_indexed_slices_with_python_indices(rng, which, indices):
    """tf.IndexedSlices(values, (1, 3)) is a valid gradient for Keras' RMSprop: ours
    updates the same rows to the same values."""
    init = rng.normal(size=(5, 2)).astype(np.float32)
    values = rng.normal(size=(2, 2)).astype(np.float32)
    out = []
    for cls in (CLASSES[which], keras.optimizers.RMSprop):
        var = keras.Variable(init)
        cls(learning_rate=0.1).apply_gradients(
            [(tf.IndexedSlices(tf.constant(values), indices, dense_shape=(5, 2)), var)])
        out.append(var.numpy())
    # atol: an ulp of the operands (normal(0, 1)) where var - lr * step cancels
    np.testing.assert_allclose(out[0], out[1], rtol=2e-6, atol=2.4e-7)
    assert not np.allclose(out[0][[1, 3]], init[[1, 3]])


def test_keras_class_default_names_are_unique_as_keras():
    a, b = KerasRMSpropX(), KerasRMSpropX()
    assert a.name != b.name and a.name.startswith("rmspropx") and b.name.startswith("rmspropx")
    assert KerasRMSpropX(name="mine").name == "mine"
    # A config keeps the name it was saved with.
    assert KerasRMSpropX.from_config(a.get_config()).name == a.name


def test_module_class_round_trips_through_keras_serialization():
    """`keras.optimizers.deserialize(keras.optimizers.serialize(opt))` gives the tf.Module
    optimizer back with its configuration, no custom_objects; it is not a Keras optimizer,
    so `keras.optimizers.get` still refuses it (model.compile needs the Keras class)."""
    opt = tf_rmsprop_ops.RMSpropX(learning_rate=0.02, rho=0.8, momentum=0.5, centered=True)
    config = keras.optimizers.serialize(opt)
    back = keras.optimizers.deserialize(config)
    assert type(back) is tf_rmsprop_ops.RMSpropX
    assert back.get_config() == opt.get_config()
    with pytest.raises(ValueError, match="Could not interpret optimizer identifier"):
        keras.optimizers.get(config)
    # The Keras class keeps its own registered name.
    assert keras.optimizers.serialize(KerasRMSpropX())["registered_name"] == \
        "tf_rmsprop_ops>RMSpropX"


@pytest.mark.parametrize("argument", ["rho", "momentum", "epsilon"])
@pytest.mark.parametrize("which", CLASSES)
def test_a_callable_hyperparameter_is_a_named_type_error(which, argument):
    with pytest.raises(TypeError, match=rf"Argument `{argument}` must be a number .*a callable "
                                        r"\(tf_keras' hyperparameter functions\) is not accepted"):
        CLASSES[which](**{argument: lambda: 0.5})
    with pytest.raises(TypeError, match=rf"Argument `{argument}` must be a number"):
        CLASSES[which](**{argument: "0.5"})
