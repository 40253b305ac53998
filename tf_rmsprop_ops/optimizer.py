"""RMSpropX: a `tf.Module` optimizer with the Keras 3 RMSprop interface, on the fused ops.

Update, per variable (docs/design.md section 1.1; `tf_rmsprop_ops.reference`)::

    ms  = rho * ms + (1 - rho) * g**2
    mg  = rho * mg + (1 - rho) * g                         (centered)
    denom = sqrt(ms - mg**2 + eps)                         (eps inside the sqrt, the default)
    mom = momentum * mom + lr * g / denom;  var -= mom     (momentum > 0)
    var -= lr * g / denom                                  (otherwise)

With the defaults this is Keras 3's `keras.optimizers.RMSprop` step for step (weight decay is
decoupled, `var -= lr * wd * var` before the step, as Keras). Deliberate differences:

* IndexedSlices gradients update only the rows they name, slots included (lazy, as TF's
  sparse optimizers; Keras densifies them and decays every row's velocity). Decoupled weight
  decay then also applies to those rows only.
* The centered variance is clamped at 0 (`max(ms - mg**2, 0)`): rounding can make it
  negative, which gives NaN in Keras and TF.
* Extensions: `nesterov`, `epsilon_placement="outside_sqrt"` (PyTorch), `lr_placement=
  "outside_momentum"` (PyTorch), `weight_decay_mode="coupled"` (PyTorch's L2),
  `initial_scale` (1.0 reproduces TF1's accumulator initialisation), `bias_correction`
  (Optax), and presets for each framework (`from_preset`, `tf_rmsprop_ops.presets`).
"""
import tensorflow as tf

from tf_rmsprop_ops import (_apply, _base, _distribute, _dtensor, _flat_state, _settings,
                            _slot_table, state8)

# Slot names, and the names Keras uses for the same state.
SLOT_ALIASES = {"velocity": "ms", "rms": "ms", "momentum": "mom", "average_gradient": "mg"}


class RMSpropX(_settings.RMSpropSettings, _base.ModuleOptimizer):
    """Optimizer that implements RMSprop with one fused op per variable.

    Args (Keras 3 RMSprop's, same defaults and meaning):
      learning_rate: float, a `LearningRateSchedule` (called with `iterations`), or a
        zero-argument callable. Defaults to 0.001.
      rho: discount of the mean square, in [0, 1]. momentum: >= 0; 0 disables it (no slot).
      epsilon: added inside the square root (see `epsilon_placement`).
      centered: normalise by the estimated variance (keeps an `mg` slot).
      weight_decay: decoupled weight decay (Keras 3 / AdamW style), or None.
      clipnorm, clipvalue, global_clipnorm: gradient clipping, as Keras.
      use_ema, ema_momentum, ema_overwrite_frequency: exponential moving average of the
        weights, as Keras (overwrite every N iterations, or with `finalize_variable_values`).
      loss_scale_factor: gradients are divided by it (and `minimize` multiplies the loss).
      gradient_accumulation_steps: apply the mean gradient every N steps (N >= 2).
      jit_compile: run each update as one XLA computation (the ops' XLA lowering).
      mesh: a DTensor mesh: the optimizer's own variables (iterations, learning rate) are
        created replicated on it. DVariables get slots with their own layout whether or not
        a mesh is given; sharded layouts stay sharded (see `_dtensor`).
      name: the module's name.
    Extensions: nesterov, epsilon_placement ("inside_sqrt" | "outside_sqrt"), lr_placement
      ("inside_momentum" | "outside_momentum"), weight_decay_mode ("decoupled" | "coupled"),
      initial_scale (starting value of `ms`: 0 for Keras/PyTorch, 1 for TF1),
      bias_correction (Optax's: the denominator from ms / (1 - rho**t); not with centered),
      multi_tensor (default True: the dense updates of a step are one ApplyRMSpropXMulti
      call per group of variables with equal dtype and formula; the same bits as one op
      per variable, which `multi_tensor=False` selects).
      flat_state (default: on with `multi_tensor`, off with `jit_compile`, whose lowering
      of flat state is about twice as slow as of per-slot state): keep the 32-bit state of each
      group of variables (equal dtype and device, built together) in one flat buffer per
      slot kind, each variable's
      range on a 256-element boundary: a step's ApplyRMSpropXMulti then takes each buffer
      once instead of one slot per variable (half the inputs: faster steps over many small
      and mid-size variables; BENCHMARKS.md). The same bits as per-variable state.
      `get_slot` returns the variable's `_flat_state.FlatSlot` (a view: `value()`,
      `numpy()`, `assign()`); checkpoints stay per variable (restorable into
      flat_state=False and back). IndexedSlices gradients take the sparse op on the
      variable's range of each buffer. Per-variable state is kept where a buffer cannot
      live: under a tf.distribute strategy, DTensor, shards of a ShardedVariable, 8-bit
      state. `flat_state=False` keeps one `tf.Variable` per slot (what `get_slot` then
      returns), as `multi_tensor=False` and `jit_compile=True` do unless flat_state=True
      is given.
      use_locking (default False): the ops' `use_locking`. Dense updates (one variable or
      a multi-tensor group) always hold every variable's and slot's lock exclusively, as
      TensorFlow's dense kernels on resource variables; sparse updates without it take a
      shared lock (Hogwild!, as TensorFlow's sparse kernels), so that concurrent steps on
      the same table (several ParameterServerStrategy workers) may interleave rows; with
      it they are serialized (var and slots always at the same step).
      state_bits (32, or 8: blockwise 8-bit optimizer state, a quarter of the slot memory;
      docs/design.md 1.7): with 8, the slots of each half, bfloat16 or float32 variable of at
      least `min_8bit_size` elements (default 4096, as bitsandbytes) are uint8 codes plus a
      float32 absmax per block of 256 elements of a row; `exclude_from_8bit_state` keeps
      chosen variables at 32 bits; `get_slot` returns the dequantized value. CPU kernels,
      dense and sparse, under jit_compile (XLA lowerings: the same codec; XLA's fused
      multiply-adds move the float math by an ulp now and then) and tf.distribute strategies
      (a ShardedVariable's shards decide by the whole variable) and DTensor (a layout that
      cuts a row's blocks between devices is a ValueError; `_dtensor.state8_absmax_layout`).
      Checkpoints restore across formats (32-bit state is quantized, 8-bit dequantized).
    `RMSpropX.from_preset("keras" | "tf_keras" | "tf1" | "pytorch" | "optax", **overrides)`
    sets these (and the defaults) to reproduce that framework's RMSprop.

    Valid values: learning_rate, momentum, epsilon, weight_decay finite and >= 0; rho in
    [0, 1]. A number outside raises ValueError naming it, in the constructor and when the
    attribute is set later; a schedule's value is checked by the op at every step
    (InvalidArgumentError, nothing written; under XLA var becomes NaN: docs/design.md).
    """

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7,
                 centered=False, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, use_ema=False, ema_momentum=0.99,
                 ema_overwrite_frequency=None, loss_scale_factor=None,
                 gradient_accumulation_steps=None, jit_compile=False, mesh=None,
                 name="rmspropx", *, nesterov=False, epsilon_placement="inside_sqrt",
                 lr_placement="inside_momentum", weight_decay_mode="decoupled",
                 initial_scale=0.0, bias_correction=False, multi_tensor=True, state_bits=32,
                 min_8bit_size=state8.MIN_8BIT_SIZE, flat_state=None, use_locking=False,
                 **kwargs):
        if kwargs:
            raise ValueError(f"Argument(s) not recognized: {sorted(kwargs)}")
        settings = _settings.validate(**_settings.arguments_of(locals()))
        common = dict(learning_rate=learning_rate, weight_decay=weight_decay, clipnorm=clipnorm,
                      clipvalue=clipvalue, global_clipnorm=global_clipnorm, use_ema=use_ema,
                      ema_momentum=ema_momentum,
                      ema_overwrite_frequency=ema_overwrite_frequency,
                      loss_scale_factor=loss_scale_factor,
                      gradient_accumulation_steps=gradient_accumulation_steps,
                      jit_compile=jit_compile, mesh=mesh)
        _base.validate(**common)
        super().__init__(name=name, **common)
        self._init_settings(settings)
        # Flat by default where it is faster: one multi-tensor call of the native kernels.
        # Under jit_compile the lowering slices and re-assembles each buffer, and per-slot
        # state is about twice as fast (BENCHMARKS.md, "Flat state"); a step the user
        # compiles with XLA themselves should pass flat_state=False.
        self.flat_state = bool(multi_tensor and not jit_compile if flat_state is None
                               else flat_state)
        # Per-variable state, in build order (tracked by position for checkpoints; a
        # SlotTable restores a checkpoint of either state format into either).
        self._ms, self._mom, self._mg = (_slot_table.SlotTable(k) for k in ("ms", "mom", "mg"))

    # ---- state -----------------------------------------------------------------------------

    def _create_state(self, var_list):
        # Every variable's state format first: a refusal (ValueError) changes nothing.
        bits_of = {_distribute.var_key(v): self._state_bits_for(_distribute.unwrap(v))
                   for v in var_list}
        flat = self._flat_slots(var_list, bits_of)
        # Appended to the tables once every variable's state exists: a raise mid-way (by a
        # variable maker, say) leaves them as they were.
        made = []
        for var in var_list:
            bits = bits_of[_distribute.var_key(var)]
            var = _distribute.unwrap(var)

            def slot(name, value=0.0):
                if id(var) in flat:
                    return flat[id(var)][name]
                if bits == 32:
                    return self._plain_slot(var, name, value)
                full_name = f"{_base.base_name(var)}_{name}"
                if _dtensor.is_dvariable(var):
                    return state8.full(var.shape, value, state8.SIGNED[name], full_name,
                                       _dtensor.state8_variable_maker(var))
                with _distribute.creation_scope(var):
                    return state8.full(var.shape, value, state8.SIGNED[name], full_name,
                                       _distribute.state8_variable_maker())

            made.append((var, slot("ms", self.initial_scale),
                         slot("mom") if self.use_momentum else None,
                         slot("mg") if self.centered else None))
        for var, ms, mom, mg in made:
            self._ms.append(ms, var)
            self._mom.append(mom, var)
            self._mg.append(mg, var)

    def _flat_slots(self, var_list, bits_of):
        """With flat_state: {id(variable): {kind: FlatSlot}} for the new variables whose
        state can live in a flat buffer (`_flat_state`), else {}."""
        if not self.flat_state or tf.distribute.has_strategy():
            return {}
        chosen = []
        for var in var_list:
            key = _distribute.var_key(var)
            var = _distribute.unwrap(var)
            if (bits_of[key] != 32 or _dtensor.is_dvariable(var)
                    or getattr(var, "_sharded_container", None) is not None
                    or not var.shape.is_fully_defined()
                    or var.shape.num_elements() == 0):  # no range, so no offset of its own
                continue
            chosen.append(var)
        initial = {kind: self.initial_scale if kind == "ms" else 0.0 for kind in self.slot_names}
        return _flat_state.build_groups(
            chosen, initial, lambda v, kind: f"{_base.base_name(v)}_{kind}",
            _distribute.creation_scope)

    def get_slot(self, var, name):
        """The slot `name` of `var`: its variable, or for 8-bit state (`state_bits=8`) its
        dequantized value, a float32 tensor (map[code] * absmax; the codes and absmax are in
        `variables`)."""
        name = SLOT_ALIASES.get(name, name)
        slot = self.slot_state(var, name)
        if isinstance(slot, state8.State8):
            return state8.dequantize(slot, state8.SIGNED[name], var.shape)
        return slot

    def slot_state(self, var, name):
        """The slot `name` of `var` as stored: its variable, a `state8.State8` (codes and
        absmax variables) under 8-bit state, or a `_flat_state.FlatSlot` (its range of a
        flat buffer) under flat_state."""
        name = SLOT_ALIASES.get(name, name)
        if name not in self.slot_names:
            raise KeyError(f"No slot '{name}': this optimizer has {self.slot_names}")
        return {"ms": self._ms, "mom": self._mom, "mg": self._mg}[name][self._position(var)]

    def exclude_from_8bit_state(self, var_list=None, var_names=None, predicate=None):
        """Variables that keep 32-bit state under `state_bits=8`: those in `var_list`, those
        whose name matches any regular expression of `var_names`, and those for which
        `predicate(variable)` is true (e.g. embedding tables a model wants exact). Must be
        called before `build`, as `exclude_from_weight_decay`."""
        if self.built:
            raise ValueError("exclude_from_8bit_state() can only be configured before the "
                             "optimizer is built.")
        self._selection.exclude([_distribute.var_key(v) for v in (var_list or [])], var_names,
                                 predicate)

    def _state_bits_for(self, var):
        """8 or 32 (`state8.Selection`)."""
        return self._selection.bits_for(var, _distribute.var_key(var),
                                        _dtensor.is_dvariable(var), _distribute.devices_of(var))

    def _state_of(self, position):
        out = []
        for slot in (self._ms[position], self._mom[position], self._mg[position]):
            if isinstance(slot, state8.State8):
                out.extend((slot.codes, slot.absmax))
            elif slot is not None:
                out.append(slot)
        return out

    def _update_variables(self, grads, variables, lr):
        items = []
        for grad, var in zip(grads, variables):
            i = self._position(var)
            items.append((grad, _distribute.unwrap(var),
                          _apply.Slots(self._ms[i], self._mom[i], self._mg[i]),
                          self._structure(var)))
        self._apply_updates(items, lr)

    # ---- config ----------------------------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        config.update(self._settings_config(), flat_state=self.flat_state)
        return config
