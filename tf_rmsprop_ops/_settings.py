"""RMSpropX's own arguments, shared by both optimizers (`tf_rmsprop_ops.RMSpropX`, a
`tf.Module`, and `tf_rmsprop_ops.keras.RMSpropX`, a Keras optimizer): their validation,
the attributes they set, the ops' per-variable `Structure`, the scalars of a step, the
config entries and the presets. What Keras' base optimizer does (learning rate, clipping,
accumulation, EMA, loss scaling) is Keras' for the Keras class and `_base.ModuleOptimizer`'s
for the `tf.Module` one.

A new argument of the formula enters here once (plus the ops and `_apply.Structure`, and
the two constructors' signatures)."""
import inspect

from tf_rmsprop_ops import _apply, _hyper, presets, state8
from tf_rmsprop_ops.reference import EPSILON_PLACEMENTS, LR_PLACEMENTS

WEIGHT_DECAY_MODES = ("decoupled", "coupled")


def _bad(name, value, why):
    raise ValueError(f"Argument `{name}` {why}; received {value!r}.")


def validate(*, learning_rate, rho, momentum, epsilon, weight_decay, centered, nesterov,
             epsilon_placement, lr_placement, weight_decay_mode, initial_scale,
             bias_correction, multi_tensor, state_bits, min_8bit_size, use_locking):
    """Checks every RMSpropX argument before an optimizer creates anything: ValueError (a
    value out of range) or TypeError (not a number) naming the first invalid one. Returns
    the settings `RMSpropSettings._init_settings` takes (learning rate and weight decay are
    the base optimizer's to set)."""
    _hyper.check("learning_rate", learning_rate)  # a tensor or a schedule: the op checks it
    numbers = {name: _hyper.require_number(name, value)
               for name, value in (("rho", rho), ("momentum", momentum), ("epsilon", epsilon))}
    if weight_decay is not None:
        _hyper.require_number("weight_decay", weight_decay)
    if epsilon_placement not in EPSILON_PLACEMENTS:
        _bad("epsilon_placement", epsilon_placement, f"must be one of {EPSILON_PLACEMENTS}")
    if lr_placement not in LR_PLACEMENTS:
        _bad("lr_placement", lr_placement, f"must be one of {LR_PLACEMENTS}")
    if weight_decay_mode not in WEIGHT_DECAY_MODES:
        _bad("weight_decay_mode", weight_decay_mode,
             "must be 'decoupled' (Keras/AdamW) or 'coupled' (PyTorch L2)")
    settings = dict(
        numbers, centered=bool(centered), nesterov=bool(nesterov),
        epsilon_placement=epsilon_placement, lr_placement=lr_placement,
        weight_decay_mode=weight_decay_mode, initial_scale=float(initial_scale),
        bias_correction=bool(bias_correction), multi_tensor=bool(multi_tensor),
        state_bits=int(state_bits), min_8bit_size=int(min_8bit_size),
        use_locking=bool(use_locking),
        selection=state8.Selection(state_bits, min_8bit_size))  # checks both
    settings["use_momentum"] = settings["momentum"] > 0 or settings["nesterov"]
    if settings["bias_correction"]:
        _apply.check_bias_correction(_structure_of(settings.__getitem__, "none"),
                                     settings["rho"])
    return settings


# RMSpropX's own arguments: `validate`'s parameters, which both constructors pass on
# (`arguments_of`); all but the base optimizer's learning_rate and weight_decay are the
# attributes `_init_settings` sets and the config entries `_settings_config` writes.
ARGUMENTS = tuple(inspect.signature(validate).parameters)
_OWN = tuple(n for n in ARGUMENTS if n not in ("learning_rate", "weight_decay"))


def arguments_of(constructor_locals):
    """`validate`'s keyword arguments out of a constructor's `locals()`."""
    return {name: constructor_locals[name] for name in ARGUMENTS}


def _structure_of(get, weight_decay_mode):
    """The ops' Structure from settings read by `get(name)`."""
    return _apply.Structure(
        use_momentum=get("use_momentum"), centered=get("centered"), nesterov=get("nesterov"),
        epsilon_placement=get("epsilon_placement"), lr_placement=get("lr_placement"),
        weight_decay_mode=weight_decay_mode, use_locking=get("use_locking"))


class RMSpropSettings:
    """Mixin of both optimizers: RMSpropX's arguments as checked attributes, the ops'
    `Structure` per variable, a step's scalars, and their config. The class it is mixed
    into provides `_decays(variable)` (weight decay on this variable?) and `iterations`."""

    # Checked on every assignment (ValueError naming the argument); see _hyper.
    rho = _hyper.Checked(also=_hyper.rho_with_bias_correction)
    momentum = _hyper.Checked()
    epsilon = _hyper.Checked()
    weight_decay = _hyper.Checked(optional=True)

    def _init_settings(self, settings):
        """Sets the arguments `validate` accepted (`settings`: what it returned)."""
        settings = dict(settings)
        self._selection = settings.pop("selection")
        for name, value in settings.items():
            setattr(self, name, value)

    @property
    def slot_names(self):
        """The state kinds this optimizer keeps per variable (docs/design.md 1.2)."""
        return ["ms"] + (["mom"] if self.use_momentum else []) + (["mg"] if self.centered else [])

    def _structure(self, variable):
        """The ops' formula attributes for `variable` (None: for a step without one)."""
        decays = self.weight_decay and (variable is None or self._decays(variable))
        return _structure_of(lambda name: getattr(self, name),
                             self.weight_decay_mode if decays else "none")

    def _apply_updates(self, items, lr):
        """`_apply.apply_updates` of (grad, var, slots, structure) items with this step's
        scalars."""
        _apply.apply_updates(
            items, lr=lr, rho=self.rho, momentum=self.momentum, epsilon=self.epsilon,
            weight_decay=self.weight_decay or 0.0,
            bias_correction_step=self.iterations + 1 if self.bias_correction else None,
            multi_tensor=self.multi_tensor)

    def _settings_config(self):
        """The config entries of RMSpropX's own arguments."""
        return {name: getattr(self, name) for name in _OWN}

    @classmethod
    def from_preset(cls, preset, **overrides):
        """An optimizer reproducing another framework's RMSprop ("keras", "tf_keras", "tf1",
        "pytorch", "optax"; see `tf_rmsprop_ops.presets`), with `overrides` applied."""
        return cls(**presets.preset_kwargs(preset, overrides))
