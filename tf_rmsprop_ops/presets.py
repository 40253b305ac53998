"""Presets: RMSpropX settings that reproduce each framework's RMSprop trajectories.

`RMSpropX.from_preset(name, **overrides)` (both optimizer classes) starts from the
framework's defaults and formula, then applies the overrides. Where a framework's formula
depends on an argument (tf_keras' legacy RMSprop puts epsilon outside the square root when
momentum is 0), the formula attrs are derived after the overrides.

| preset   | reproduces                                   | lr    | rho  | epsilon | formula                                             |
|----------|----------------------------------------------|-------|------|---------|-----------------------------------------------------|
| keras    | keras.optimizers.RMSprop (Keras 3)           | 0.001 | 0.9  | 1e-7    | eps inside sqrt, lr inside momentum, decoupled wd   |
| tf_keras | tf_keras.optimizers.legacy.RMSprop           | 0.001 | 0.9  | 1e-7    | eps outside sqrt if momentum == 0, else inside      |
| tf1      | tf.compat.v1.train.RMSPropOptimizer          | 0.001*| 0.9  | 1e-10   | eps inside, ms starts at 1 (initial_scale=1)        |
| pytorch  | torch.optim.RMSprop                          | 0.01  | 0.99 | 1e-8    | eps outside, lr outside momentum, coupled (L2) wd   |
| optax    | optax.rmsprop                                | 0.001*| 0.9  | 1e-8    | eps inside (eps_in_sqrt), initial_scale, nesterov, bias_correction |

(* the framework has no default learning rate; pass one.) Argument names follow RMSpropX:
PyTorch's `alpha` and Optax's / TF1's `decay` are `rho`, Optax's `eps_in_sqrt=False` is
`epsilon_placement="outside_sqrt"`.
"""

PRESETS = {
    "keras": dict(learning_rate=0.001, rho=0.9, epsilon=1e-7),
    "tf_keras": dict(learning_rate=0.001, rho=0.9, epsilon=1e-7),
    "tf1": dict(learning_rate=0.001, rho=0.9, epsilon=1e-10, initial_scale=1.0),
    "pytorch": dict(learning_rate=0.01, rho=0.99, epsilon=1e-8,
                    epsilon_placement="outside_sqrt", lr_placement="outside_momentum",
                    weight_decay_mode="coupled"),
    "optax": dict(learning_rate=0.001, rho=0.9, epsilon=1e-8),
}


def preset_kwargs(name, overrides):
    """Constructor arguments of preset `name` with `overrides` applied."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose from {sorted(PRESETS)}")
    kwargs = {**PRESETS[name], **overrides}
    if name == "tf_keras" and "epsilon_placement" not in overrides:
        # tf_keras' legacy RMSprop: `grad / (sqrt(rms) + eps)` without momentum, TF's
        # ResourceApplyRMSProp (`sqrt(rms + eps)`) with it.
        momentum = kwargs.get("momentum", 0.0)
        kwargs["epsilon_placement"] = "inside_sqrt" if momentum else "outside_sqrt"
    return kwargs
