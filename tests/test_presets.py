"""Presets against the real peers: Keras 3, tf_keras' legacy RMSprop, tf.compat.v1's
RMSPropOptimizer, torch.optim.RMSprop and optax.rmsprop. Same initial values and gradients
(scales spread over 1e-5..1, so that epsilon and its placement matter), 50 steps, every
preset in plain / momentum / centered / weight-decay forms and under a learning-rate
schedule. A peer that does not import fails its tests (the README's test command installs
them all; a skip would hide the comparison)."""
import importlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_rmsprop_ops.keras as tfx_keras
from tf_rmsprop_ops import RMSpropX

STEPS = 50
SHAPES = [(6,), (4, 3)]
BASE_LR = 0.01
FORMS = {
    "plain": dict(),
    "momentum": dict(momentum=0.9),
    "nesterov": dict(momentum=0.9, nesterov=True),
    "centered": dict(centered=True),
    "centered_momentum": dict(centered=True, momentum=0.8),
    "weight_decay": dict(weight_decay=0.05),
    "schedule_momentum": dict(momentum=0.9, schedule=True),
    "bias_correction": dict(bias_correction=True),
    "bias_correction_momentum": dict(bias_correction=True, momentum=0.9),
}
# Which forms each peer has (tf_keras' legacy RMSprop and TF1's have no weight decay;
# only Optax has Nesterov and bias correction).
PEER_FORMS = {
    "keras": ["plain", "momentum", "centered", "centered_momentum", "weight_decay",
              "schedule_momentum"],
    "tf_keras": ["plain", "momentum", "centered", "centered_momentum", "schedule_momentum"],
    "tf1": ["plain", "momentum", "centered", "centered_momentum", "schedule_momentum"],
    "pytorch": ["plain", "momentum", "centered", "centered_momentum", "weight_decay",
                "schedule_momentum"],
    "optax": ["plain", "momentum", "nesterov", "centered", "centered_momentum",
              "weight_decay", "schedule_momentum", "bias_correction",
              "bias_correction_momentum"],
}
CASES = [(p, f) for p, forms in PEER_FORMS.items() for f in forms]


def _need(module, install):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        # An error, not a skip: the README's test command installs every peer, so a missing
        # or broken one is a broken install that would otherwise hide these comparisons.
        pytest.fail(f"peer {module} does not import ({e}); the README's test command "
                    f"installs it: {install}")


def lr_at(step):
    """The schedule every framework gets: 0.01 * 0.8 ** (step / 7) at the step-th update."""
    return BASE_LR * 0.8 ** (step / 7.0)


def _problem(rng):
    # Magnitudes in [1, 2]: where weight decay drives a variable with tiny gradients to 0,
    # the normalised step overshoots and the peers' ulp differences grow without bound.
    init = [(rng.choice([-1.0, 1.0], s) * rng.uniform(1, 2, s)).astype(np.float32)
            for s in SHAPES]
    # Every exponent in -5..0 once per array, in random places: a draw of only small scales
    # would leave TF1's ones-initialised rms slot barely moving the variables (seen in CI).
    scales = [10.0 ** -rng.permutation(np.linspace(0, 5, int(np.prod(s)))).reshape(s)
              for s in SHAPES]
    grads = [[(rng.normal(size=s) * sc).astype(np.float32) for s, sc in zip(SHAPES, scales)]
             for _ in range(STEPS)]
    return init, grads


def _train(opt, init, grads, after_step=None):
    """Applies the gradient steps to fresh tf.Variables with `opt`; returns their values."""
    variables = [tf.Variable(x) for x in init]
    for step in grads:
        opt.apply_gradients(zip([tf.constant(g) for g in step], variables))
        if after_step is not None:
            after_step()
    return [v.numpy() for v in variables]


def _ours(cls, preset, form, init, grads):
    form = dict(form)
    schedule = form.pop("schedule", False)
    if schedule:
        form["learning_rate"] = keras.optimizers.schedules.ExponentialDecay(
            BASE_LR, decay_steps=7, decay_rate=0.8)
    else:
        form["learning_rate"] = BASE_LR
    if preset == "optax" and "weight_decay" in form:
        form["weight_decay_mode"] = "coupled"  # optax.add_decayed_weights before rmsprop
    opt = cls.from_preset(preset, **form)
    return _train(opt, init, grads)


def _keras(form, init, grads):
    form = dict(form)
    lr = (keras.optimizers.schedules.ExponentialDecay(BASE_LR, 7, 0.8)
          if form.pop("schedule", False) else BASE_LR)
    opt = keras.optimizers.RMSprop(learning_rate=lr, **form)
    return _train(opt, init, grads)


def _tf_keras(form, init, grads):
    tf_keras = _need("tf_keras", "pip install --no-deps 'tf_keras==2.21.*'")
    form = dict(form)
    lr = (tf_keras.optimizers.schedules.ExponentialDecay(BASE_LR, 7, 0.8)
          if form.pop("schedule", False) else BASE_LR)
    opt = tf_keras.optimizers.legacy.RMSprop(learning_rate=lr, **form)
    return _train(opt, init, grads)


def _tf1(form, init, grads):
    form = dict(form)
    schedule = form.pop("schedule", False)
    count = [0]
    lr = (lambda: lr_at(count[0])) if schedule else BASE_LR
    opt = tf.compat.v1.train.RMSPropOptimizer(lr, decay=0.9, epsilon=1e-10, **form)

    def count_step():
        count[0] += 1
    return _train(opt, init, grads, after_step=count_step)


def _pytorch(form, init, grads):
    torch = _need("torch", "pip install torch==2.13.0")
    form = dict(form)
    schedule = form.pop("schedule", False)
    params = [torch.tensor(x, requires_grad=True) for x in init]
    opt = torch.optim.RMSprop(params, lr=BASE_LR, **form)
    for k, step in enumerate(grads):
        if schedule:
            opt.param_groups[0]["lr"] = lr_at(k)
        for p, g in zip(params, step):
            p.grad = torch.tensor(g)
        opt.step()
    return [p.detach().numpy() for p in params]


def _optax(form, init, grads):
    optax = _need("optax", "pip install jax optax")
    import jax.numpy as jnp
    form = dict(form)
    lr = (lambda count: BASE_LR * 0.8 ** (count / 7.0)) if form.pop("schedule", False) else BASE_LR
    wd = form.pop("weight_decay", None)
    if "momentum" not in form:
        form["momentum"] = None
    tx = optax.rmsprop(lr, decay=0.9, eps=1e-8, **form)
    if wd is not None:
        tx = optax.chain(optax.add_decayed_weights(wd), tx)
    params = [jnp.asarray(x) for x in init]
    state = tx.init(params)
    for step in grads:
        updates, state = tx.update([jnp.asarray(g) for g in step], state, params)
        params = optax.apply_updates(params, updates)
    return [np.asarray(p) for p in params]


PEERS = {"keras": _keras, "tf_keras": _tf_keras, "tf1": _tf1, "pytorch": _pytorch,
         "optax": _optax}


@pytest.mark.parametrize("cls", [RMSpropX, tfx_keras.RMSpropX], ids=["module", "keras"])
@pytest.mark.parametrize("preset, form", CASES, ids=[f"{p}-{f}" for p, f in CASES])
def test_preset_reproduces_the_peer(rng, cls, preset, form):
    init, grads = _problem(rng)
    theirs = PEERS[preset](FORMS[form], init, grads)
    ours = _ours(cls, preset, FORMS[form], init, grads)
    moved = max(np.abs(t - i).max() for t, i in zip(theirs, init))
    # 50 steps went somewhere (TF1's ones-initialised rms slot: a small random walk, seen
    # as small as 8e-3 in a million draws; 1e-3 is still 23-45 times the tolerance below,
    # 2e-5 x |value| + 2e-6 x scale, both about 1 to 2).
    assert moved > 1e-3
    for a, b, i in zip(ours, theirs, init):
        # The peers round 1 - rho differently (PyTorch: float32(0.01), not 1 - float32(0.99),
        # 1e-6 apart relatively): errors of the operands' size, several units with momentum.
        scale = max(1.0, float(np.abs(i).max()), float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6 * scale)


def test_tf_keras_preset_places_epsilon_by_momentum():
    assert RMSpropX.from_preset("tf_keras").epsilon_placement == "outside_sqrt"
    assert RMSpropX.from_preset("tf_keras", momentum=0.9).epsilon_placement == "inside_sqrt"


def test_unknown_preset_and_unsupported_bias_correction():
    with pytest.raises(ValueError, match="Unknown preset 'mxnet'"):
        RMSpropX.from_preset("mxnet")
    with pytest.raises(ValueError, match="bias_correction=True is not supported with centered"):
        RMSpropX.from_preset("optax", bias_correction=True, centered=True)
    with pytest.raises(ValueError, match="lr_placement"):
        tfx_keras.RMSpropX.from_preset("pytorch", bias_correction=True, momentum=0.9)
