"""`tf_rmsprop_ops.keras.RMSpropX`: a Keras 3 optimizer (TensorFlow backend) on the fused ops,
for `model.compile(optimizer=...)` and `model.fit`.

A thin adapter: Keras' base optimizer keeps doing what it does (clipping, EMA, gradient
accumulation, loss scaling and `LossScaleOptimizer`, `overwrite_with_gradient`, variable
constraints, `jit_compile`, tf.distribute through `strategy.extended.update`); `apply` first
checks every gradient against its variable (shape, index range), and one
`strategy.extended.update` per step hands all variables, their slots and their gradients to
`_apply.apply_updates`, the same place the `tf.Module` optimizer uses: dense gradients go to
`ApplyRMSpropX`, the `IndexedSlices` of an `Embedding` layer to `SparseApplyRMSpropX` (never
densified: only the looked-up rows and their slots change, where Keras' RMSprop decays every
row).

Decoupled weight decay is fused into the op (Keras would make a separate pass before
`update_step`; the result is the same, except that sparse updates decay only their rows).
"""
import keras
import numpy as np
import tensorflow as tf

from tf_rmsprop_ops import _apply, _distribute, _gradients, _hyper, _settings, ops, state8
from tf_rmsprop_ops import optimizer as _module_optimizer

# The tf.Module optimizer in Keras' registry too, under its own name (this class is
# `tf_rmsprop_ops>RMSpropX`): `keras.optimizers.deserialize(keras.optimizers.serialize(opt))`
# then gives it back (Keras imports only its own packages' modules by path). It is not a
# Keras optimizer, so `keras.optimizers.get` and `model.compile` still refuse it: use this
# module's RMSpropX there.
keras.saving.register_keras_serializable(package="tf_rmsprop_ops", name="RMSpropXModule")(
    _module_optimizer.RMSpropX)


class _Fill(keras.initializers.Initializer):
    """`value` in the variable's dtype, exactly (keras.initializers.Constant goes through
    float32: 0.1 in a float64 slot would be 0.10000000149)."""

    def __init__(self, value):
        self.value = float(value)

    def __call__(self, shape, dtype=None):
        return tf.fill(shape, ops.as_scalar(self.value, tf.as_dtype(dtype)))

    def get_config(self):
        return {"value": self.value}


@keras.saving.register_keras_serializable(package="tf_rmsprop_ops")
class RMSpropX(_settings.RMSpropSettings, keras.optimizers.Optimizer):
    """RMSprop on the fused ops. Arguments as `keras.optimizers.RMSprop`, plus `nesterov`,
    `epsilon_placement`, `lr_placement`, `weight_decay_mode` ("decoupled" | "coupled"),
    `initial_scale`, `bias_correction`, `state_bits`, `min_8bit_size` and `use_locking` (see
    `tf_rmsprop_ops.RMSpropX`; with `state_bits=8`, `get_slot` returns the dequantized state
    and the optimizer's variables hold the uint8 codes and float32 absmax), and
    `from_preset(name, **overrides)`. RMSpropX's own arguments (validation, config, the ops'
    formula per variable) are `_settings.RMSpropSettings`', shared with the tf.Module class;
    the rest is Keras' base optimizer."""

    @property
    def learning_rate(self):
        return super().learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        _hyper.check("learning_rate", value)
        super(RMSpropX, type(self)).learning_rate.fset(self, value)

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7,
                 centered=False, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, use_ema=False, ema_momentum=0.99,
                 ema_overwrite_frequency=None, loss_scale_factor=None,
                 gradient_accumulation_steps=None, name=None, nesterov=False,
                 epsilon_placement="inside_sqrt", lr_placement="inside_momentum",
                 weight_decay_mode="decoupled", initial_scale=0.0, bias_correction=False,
                 multi_tensor=True, state_bits=32, min_8bit_size=state8.MIN_8BIT_SIZE,
                 use_locking=False, **kwargs):
        settings = _settings.validate(**_settings.arguments_of(locals()))
        if name is None:  # unique per process, as Keras names its own: rmspropx, rmspropx_1
            uid = keras.backend.get_uid("rmspropx")
            name = "rmspropx" if uid == 1 else f"rmspropx_{uid - 1}"
        super().__init__(
            learning_rate=learning_rate, weight_decay=weight_decay, clipnorm=clipnorm,
            clipvalue=clipvalue, global_clipnorm=global_clipnorm, use_ema=use_ema,
            ema_momentum=ema_momentum, ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps, name=name, **kwargs)
        self._init_settings(settings)

    def build(self, var_list):
        if self.built:
            return
        # Every variable's state format first: a refusal (ValueError) leaves the optimizer
        # unbuilt, so that exclude_from_8bit_state and a retry still work.
        bits = [self._selection.bits_for(_distribute.unwrap(v), id(_distribute.unwrap(v)),
                                         device=_distribute.devices_of(v))
                for v in var_list]
        if 8 in bits and _distribute.state8_variable_maker() is not tf.Variable:
            raise ValueError(
                "state_bits=8 under MultiWorkerMirroredStrategy with several workers is not "
                "supported by the Keras optimizer yet (TensorFlow cannot broadcast the uint8 "
                "codes' initial value between workers; tf_rmsprop_ops.RMSpropX can); use "
                "state_bits=32 or exclude these variables from 8-bit state")
        super().build(var_list)
        self._velocities, self._velocity_absmax = self._add_state(
            var_list, bits, "velocity", self.initial_scale)
        self._momentums, self._momentum_absmax = (
            self._add_state(var_list, bits, "momentum") if self.use_momentum else ([], []))
        self._average_gradients, self._average_gradient_absmax = (
            self._add_state(var_list, bits, "average_gradient") if self.centered else ([], []))

    def exclude_from_8bit_state(self, var_list=None, var_names=None, predicate=None):
        """Variables that keep 32-bit state under `state_bits=8` (a list, regular
        expressions over names, a predicate), as `tf_rmsprop_ops.RMSpropX`'s. Before
        `build`."""
        if self.built:
            raise ValueError("exclude_from_8bit_state() can only be configured before the "
                             "optimizer is built.")
        self._selection.exclude([id(_distribute.unwrap(v)) for v in (var_list or [])],
                                var_names, predicate)

    def _add_state(self, var_list, bits, name, value=0.0):
        """One state for every variable: a slot like the variable (32-bit), or for 8-bit
        state its uint8 codes (in the slot list) and float32 absmax (in the second list)."""
        if 8 not in bits:
            return self.add_optimizer_variables(var_list, name, initializer=_Fill(value)), []
        signed = state8.SIGNED[{"velocity": "ms", "momentum": "mom",
                                "average_gradient": "mg"}[name]]
        slots, absmaxes = [], []
        for var, b in zip(var_list, bits):
            if self._overwrite_variable_with_gradient(var):  # as Keras: no state, None
                slots.append(None)
                absmaxes.append(None)
                continue
            if b != 8:
                slots.append(self.add_variable_from_reference(var, name,
                                                              initializer=_Fill(value)))
                absmaxes.append(None)
                continue
            code, absmax = state8.constant(value, signed)
            base = f"{getattr(var, 'path', var.name).replace('/', '_')}_{name}"
            slots.append(self.add_variable(
                tuple(var.shape), initializer=keras.initializers.Constant(code), dtype="uint8",
                name=f"{base}_codes"))
            absmaxes.append(self.add_variable(
                state8.absmax_shape(var.shape), initializer=keras.initializers.Constant(absmax),
                dtype="float32", name=f"{base}_absmax"))
        return slots, absmaxes

    def _decays(self, variable):
        return self._use_weight_decay(variable)

    def _apply_weight_decay(self, variables):
        """Fused into the op (`update_step`): nothing to do here."""

    def _items(self, grads, variables):
        """(grad, var, slots, structure) per variable, for `_apply`."""
        items = []
        for gradient, variable in zip(grads, variables):
            i = self._get_variable_index(variable)

            def slot(slots, absmaxes, i=i):
                if not slots:
                    return None
                if absmaxes and absmaxes[i] is not None:  # 8-bit state
                    return state8.State8(_distribute.unwrap(slots[i]),
                                         _distribute.unwrap(absmaxes[i]))
                return _distribute.unwrap(slots[i])

            items.append((_gradients.cast_to_variable(gradient, variable),
                          _distribute.unwrap(variable),
                          _apply.Slots(slot(self._velocities, self._velocity_absmax),
                                       slot(self._momentums, self._momentum_absmax),
                                       slot(self._average_gradients,
                                            self._average_gradient_absmax)),
                          self._structure(variable)))
        return items

    def _apply_items(self, items, learning_rate):
        def apply():
            self._apply_updates(items, learning_rate)
        # Keras counts the step (`iterations.assign_add` in `Optimizer.apply`) and zeroes
        # its gradient accumulators after this; in a graph nothing ordered those writes after
        # our ops, so a step an op rejected still counted and lost the accumulated gradients.
        _distribute.writes_wait_for(
            apply, [self._iterations, *(getattr(self, "_accumulated_gradients", None) or [])])

    def apply(self, grads, trainable_variables=None):
        """Keras' `apply`, after every gradient is checked against its variable, so that a
        bad pair is rejected before any part of the step (Keras' gradient accumulators,
        any update) runs: a shape is a ValueError naming the variable; an `IndexedSlices`
        index outside its variable an InvalidArgumentError (eagerly here; in a graph every
        op of the step waits for the check)."""
        grads = list(grads)
        variables = (list(trainable_variables) if trainable_variables is not None
                     else list(self._trainable_variables))
        if trainable_variables is not None and not self.built:
            # As Keras' `apply` would, but before the checks: slots created under their
            # control dependencies could not be lifted out of a tf.function (XLA fails).
            with keras.name_scope(self.name, caller=self):
                self.build(variables)
            self.built = True
        grads = [_gradients.with_tensor_parts(g) for g in grads]
        checks = []
        if len(grads) == len(variables):  # else Keras raises its own error
            pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
            for gradient, variable in pairs:
                _gradients.check(gradient, variable, check_dtype=False)
            checks = _apply.check_rows(pairs)
        with tf.control_dependencies(checks):
            return super().apply(grads, trainable_variables)

    def update_step(self, gradient, variable, learning_rate):
        self._apply_items(self._items([gradient], [variable]), learning_rate)

    def _distributed_tf_update_step(self, distribution, grads_and_vars, learning_rate):
        """All variables of a step in one `strategy.extended.update` (per device under
        MirroredStrategy, on that device's components) and one `_apply.apply_updates`:
        with `multi_tensor` their dense updates make one ApplyRMSpropXMulti call, and either
        way the whole step is checked before any op runs (Keras updates variable by
        variable: a bad index in the last variable's gradient would reject the step after
        the others were updated)."""
        grads_and_vars = list(grads_and_vars)
        if not grads_and_vars:
            return
        grads = [g for g, _ in grads_and_vars]
        variables = [v for _, v in grads_and_vars]

        def update_all(_, local_grads, lr):
            self._apply_items(self._items(local_grads, variables), lr)
            return tf.constant(True)

        distribution.extended.update(variables[0], update_all, args=(grads, learning_rate),
                                     group=False)

    def get_slot(self, variable, name):
        """The slot `name` ("velocity"/"ms"/"rms", "momentum"/"mom",
        "average_gradient"/"mg") of `variable`."""
        name = {"ms": "velocity", "rms": "velocity", "mom": "momentum",
                "mg": "average_gradient"}.get(name, name)
        slots = {"velocity": self._velocities, "momentum": self._momentums,
                 "average_gradient": self._average_gradients}.get(name)
        if not slots:
            raise KeyError(f"No slot '{name}' in {self.name}")
        i = self._get_variable_index(variable)
        absmaxes = {"velocity": self._velocity_absmax, "momentum": self._momentum_absmax,
                    "average_gradient": self._average_gradient_absmax}[name]
        if absmaxes and absmaxes[i] is not None:  # 8-bit state: the dequantized value
            signed = state8.SIGNED[{"velocity": "ms", "momentum": "mom",
                                    "average_gradient": "mg"}[name]]
            return state8.dequantize(state8.State8(slots[i], absmaxes[i]), signed,
                                     variable.shape)
        return slots[i]

    def _state_lists(self):
        """(name, slots, absmaxes) of each state kind the optimizer keeps, in build order."""
        kinds = [("velocity", self._velocities, self._velocity_absmax)]
        if self.use_momentum:
            kinds.append(("momentum", self._momentums, self._momentum_absmax))
        if self.centered:
            kinds.append(("average_gradient", self._average_gradients,
                          self._average_gradient_absmax))
        return kinds

    def load_own_variables(self, store):
        """Keras' `load_own_variables` (`.keras`, `.weights.h5`, `BackupAndRestore`), which
        also converts between state formats: a saved 32-bit state loaded into 8-bit state is
        quantized, a saved 8-bit state (uint8 codes, then float32 absmax) loaded into 32-bit
        state is dequantized; the rest loads as Keras loads it. Every shape is checked
        before anything is assigned."""
        saved = [np.asarray(store[str(i)]) for i in range(len(store.keys()))]
        plan = self._load_plan(saved, list(self.variables)) if self.built else None
        if plan is None:  # same format, or not ours to parse: Keras' own behaviour
            return super().load_own_variables(store)
        for variable, value in plan:
            if tuple(variable.shape) != tuple(np.shape(value)):
                raise ValueError(
                    f"Loading optimizer state: {variable.path} has shape {variable.shape}, "
                    f"the saved state {np.shape(value)}; nothing was loaded")
        for variable, value in plan:
            variable.assign(value)

    def _load_plan(self, saved, variables):
        """(variable, value) pairs that load `saved` when some state's format differs (32-bit
        state quantized, 8-bit dequantized), else None."""
        kinds = self._state_lists()
        first = next((s for s in kinds[0][1] if s is not None), None)
        if first is None:
            return None
        start = next((i for i, v in enumerate(variables) if v is first), None)
        if start is None or len(saved) < start:
            return None
        plan = list(zip(variables[:start], saved[:start]))
        j, converted = start, False
        for name, slots, absmaxes in kinds:
            signed = state8.SIGNED[{"velocity": "ms", "momentum": "mom",
                                    "average_gradient": "mg"}[name]]
            for i, slot in enumerate(slots):
                if slot is None:  # an overwrite_with_gradient variable: no state (Keras')
                    continue
                if j >= len(saved):
                    return None
                eight_bit = bool(absmaxes) and absmaxes[i] is not None
                if saved[j].dtype == np.uint8:  # a saved 8-bit state: codes, absmax
                    if j + 1 >= len(saved):
                        return None
                    codes, absmax = saved[j], saved[j + 1]
                    j += 2
                    if absmax.shape != state8.absmax_shape(codes.shape):
                        return None
                    if eight_bit:
                        plan += [(slot, codes), (absmaxes[i], absmax)]
                    else:
                        values = state8.reference.dequantize_blockwise(codes, absmax, signed)
                        plan.append((slot, tf.cast(values, slot.dtype)))
                        converted = True
                else:
                    values = saved[j]
                    j += 1
                    if eight_bit:
                        codes, absmax = state8.reference.quantize_blockwise(
                            values.astype(np.float32), signed)
                        plan += [(slot, codes), (absmaxes[i], absmax)]
                        converted = True
                    else:
                        plan.append((slot, values))
        if j != len(saved) or not converted:
            return None
        return plan

    def get_config(self):
        config = super().get_config()
        config.update(self._settings_config())
        return config
