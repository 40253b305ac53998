"""The two shared layers of the optimizers (issue 25, item 5): `_base.ModuleOptimizer` (Keras
3's base optimizer for a tf.Module) is an optimizer base of its own, and `_settings`
validates RMSpropX's arguments once for both classes."""
import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_rmsprop_ops
from tf_rmsprop_ops import _base
from tf_rmsprop_ops.keras import RMSpropX as KerasRMSpropX


class PlainSGD(_base.ModuleOptimizer):
    """The smallest subclass: no state, var -= lr * g (Keras' SGD without momentum)."""

    def __init__(self, learning_rate=0.01, **kwargs):
        args = dict(weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                    use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None,
                    loss_scale_factor=None, gradient_accumulation_steps=None,
                    jit_compile=False, mesh=None, name="plain_sgd")
        args.update(kwargs)
        _base.validate(learning_rate=learning_rate, **args)
        super().__init__(learning_rate=learning_rate, **args)

    def _create_state(self, var_list):
        pass

    def _state_of(self, position):
        return []

    def _update_variables(self, grads, variables, lr):
        for g, v in zip(grads, variables):
            v.assign_sub(tf.cast(lr, v.dtype) * tf.convert_to_tensor(g))


SETTINGS = [
    dict(clipnorm=0.05),
    dict(global_clipnorm=0.08, use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=3),
    dict(clipvalue=0.01, gradient_accumulation_steps=3),
    dict(loss_scale_factor=128.0, use_ema=True),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(s))
def test_a_stateless_subclass_is_keras_sgd(rng, settings):
    """Clipping, EMA, accumulation and loss scaling come from the base: a subclass with only
    `var -= lr * g` follows Keras 3's SGD with the same settings, step for step."""
    init = [rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=5).astype(np.float32)]
    grads = [[(rng.normal(size=x.shape) * 10.0 ** rng.uniform(-2, 0)).astype(np.float32)
              for x in init] for _ in range(7)]
    results = []
    for opt in (PlainSGD(learning_rate=0.1, **settings),
                keras.optimizers.SGD(learning_rate=0.1, **settings)):
        variables = [keras.Variable(x) if isinstance(opt, keras.optimizers.Optimizer)
                     else tf.Variable(x) for x in init]
        scale = settings.get("loss_scale_factor", 1.0)
        for step in grads:  # gradients of a loss scaled as the optimizer asks
            opt.apply_gradients([(tf.constant(g * scale), v) for g, v in zip(step, variables)])
        if settings.get("use_ema"):
            opt.finalize_variable_values(variables)
        results.append(([v.numpy() for v in variables], int(opt.iterations.numpy())))
    (ours, our_count), (peer, peer_count) = results
    assert our_count == peer_count
    for a, b in zip(ours, peer):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert not np.allclose(ours[0], init[0])


BAD = [("epsilon_placement", "inside"), ("lr_placement", "outside"),
       ("weight_decay_mode", "l2"), ("state_bits", 16), ("min_8bit_size", -1),
       ("rho", 1.5), ("momentum", -0.1), ("epsilon", -1e-7), ("learning_rate", -0.01),
       ("weight_decay", float("inf"))]


@pytest.mark.parametrize("argument,value", BAD, ids=[a for a, _ in BAD])
def test_both_classes_refuse_an_argument_alike(argument, value):
    """One validation (`_settings.validate` and the checked attributes) for both classes:
    the same ValueError, naming the argument, before anything is built."""
    messages = []
    for cls in (tf_rmsprop_ops.RMSpropX, KerasRMSpropX):
        with pytest.raises(ValueError, match=f"`?{argument}`?") as info:
            cls(**{argument: value})
        messages.append(str(info.value))
    assert messages[0] == messages[1]
