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
import contextlib
import re
import warnings

import tensorflow as tf
from tensorflow.python.trackable.data_structures import NoDependency

from tf_rmsprop_ops import (_apply, _distribute, _dtensor, _flat_state, _gradients, _hyper, ops,
                            presets)
from tf_rmsprop_ops import _slot_table
from tf_rmsprop_ops import state8
from tf_rmsprop_ops.reference import EPSILON_PLACEMENTS, LR_PLACEMENTS

# Slot names, and the names Keras uses for the same state.
SLOT_ALIASES = {"velocity": "ms", "rms": "ms", "momentum": "mom", "average_gradient": "mg"}


def _is_schedule(lr):
    return isinstance(lr, tf.keras.optimizers.schedules.LearningRateSchedule)


def _base_name(var):
    return re.sub(r":\d+$", "", getattr(var, "name", "variable")).replace("/", "_")


class RMSpropX(tf.Module):
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
      flat_state (default False): keep the 32-bit state of each group of variables (equal
      dtype and device, built together) in one flat buffer per slot kind, each variable's
      range on a 256-element boundary: a step's ApplyRMSpropXMulti then takes each buffer
      once instead of one slot per variable (half the inputs: faster steps over many small
      and mid-size variables; BENCHMARKS.md). The same bits as per-variable state.
      `get_slot` returns the variable's `_flat_state.FlatSlot` (a view: `value()`,
      `numpy()`, `assign()`); checkpoints stay per variable (restorable into
      flat_state=False and back). IndexedSlices gradients take the sparse op on the
      variable's range of each buffer. Per-variable state is kept where a buffer cannot
      live: under a tf.distribute strategy, DTensor, shards of a ShardedVariable, 8-bit
      state.
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

    # Checked on every assignment (ValueError naming the argument); see _hyper.
    rho = _hyper.Checked(also=_hyper.rho_with_bias_correction)
    momentum = _hyper.Checked()
    epsilon = _hyper.Checked()
    weight_decay = _hyper.Checked(optional=True)


    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7,
                 centered=False, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, use_ema=False, ema_momentum=0.99,
                 ema_overwrite_frequency=None, loss_scale_factor=None,
                 gradient_accumulation_steps=None, jit_compile=False, mesh=None,
                 name="rmspropx", *, nesterov=False, epsilon_placement="inside_sqrt",
                 lr_placement="inside_momentum", weight_decay_mode="decoupled",
                 initial_scale=0.0, bias_correction=False, multi_tensor=True, state_bits=32,
                 min_8bit_size=state8.MIN_8BIT_SIZE, flat_state=False, use_locking=False,
                 **kwargs):
        if kwargs:
            raise ValueError(f"Argument(s) not recognized: {sorted(kwargs)}")
        super().__init__(name=name)
        _validate(learning_rate=learning_rate, rho=rho, momentum=momentum, epsilon=epsilon,
                  weight_decay=weight_decay, clipnorm=clipnorm, clipvalue=clipvalue,
                  global_clipnorm=global_clipnorm, ema_momentum=ema_momentum,
                  ema_overwrite_frequency=ema_overwrite_frequency,
                  loss_scale_factor=loss_scale_factor,
                  gradient_accumulation_steps=gradient_accumulation_steps,
                  epsilon_placement=epsilon_placement, lr_placement=lr_placement,
                  weight_decay_mode=weight_decay_mode, nesterov=nesterov, mesh=mesh,
                  state_bits=state_bits, min_8bit_size=min_8bit_size,
                  jit_compile=jit_compile)
        self.rho, self.momentum, self.epsilon = (
            _hyper.require_number(n, v) for n, v in (("rho", rho), ("momentum", momentum),
                                                     ("epsilon", epsilon)))
        self.centered, self.nesterov = bool(centered), bool(nesterov)
        self.weight_decay = (None if weight_decay is None
                             else _hyper.require_number("weight_decay", weight_decay))
        self.clipnorm, self.clipvalue, self.global_clipnorm = clipnorm, clipvalue, global_clipnorm
        self.use_ema, self.ema_momentum = bool(use_ema), float(ema_momentum)
        self.ema_overwrite_frequency = ema_overwrite_frequency
        self.loss_scale_factor = loss_scale_factor
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.jit_compile, self.mesh = bool(jit_compile), mesh
        self.epsilon_placement, self.lr_placement = epsilon_placement, lr_placement
        self.weight_decay_mode, self.initial_scale = weight_decay_mode, float(initial_scale)
        self.use_momentum = self.momentum > 0 or self.nesterov
        self.bias_correction = bool(bias_correction)
        self.multi_tensor = bool(multi_tensor)
        self.flat_state = bool(flat_state)
        self.use_locking = bool(use_locking)
        self._selection = state8.Selection(state_bits, min_8bit_size)
        self.state_bits, self.min_8bit_size = int(state_bits), int(min_8bit_size)
        if self.bias_correction:
            _apply.check_bias_correction(self._structure(None), self.rho)

        with tf.init_scope():
            self._iterations = self._scalar_variable(0, tf.int64, "iteration")
            self._learning_rate = self._make_learning_rate(learning_rate)
        # Per-variable state, in build order (tracked by position for checkpoints; a
        # SlotTable restores a checkpoint of either state format into either).
        self._ms, self._mom, self._mg = (_slot_table.SlotTable(k) for k in ("ms", "mom", "mg"))
        self._ema, self._accumulators = [], []
        self._index = {}  # _distribute.var_key(variable) -> position
        self._trainable_variables = []
        self._exclude_keys, self._exclude_pattern = set(), None
        self._warned_missing = set()
        # (device, variable keys) -> XLA function; a cache, not state to save.
        self._compiled_updates = NoDependency({})
        self.built = False

    # ---- hyperparameters -----------------------------------------------------------------

    def _scalar_variable(self, value, dtype, name):
        if self.mesh is not None:
            return _dtensor.replicated_variable(self.mesh, value, name, dtype)
        # Under a strategy every replica computes the same value: the first one is written.
        return tf.Variable(value, dtype=dtype, name=name, trainable=False,
                           aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def _make_learning_rate(self, lr):
        if _is_schedule(lr) or callable(lr):
            return lr
        return self._scalar_variable(float(lr), tf.float32, "learning_rate")

    @property
    def iterations(self):
        """Optimizer steps; with gradient accumulation, the number of real updates
        (calls // gradient_accumulation_steps), as Keras. Schedules see the calls."""
        if self.gradient_accumulation_steps:
            return self._iterations // self.gradient_accumulation_steps
        return self._iterations

    @property
    def learning_rate(self):
        """The current learning rate (a schedule is evaluated at `iterations`)."""
        lr = self._learning_rate
        if _is_schedule(lr):
            return lr(self._iterations)
        if isinstance(lr, tf.Variable):
            return lr
        return lr()

    @learning_rate.setter
    def learning_rate(self, value):
        _hyper.check("learning_rate", value)
        if isinstance(self._learning_rate, tf.Variable) and not (
                _is_schedule(value) or callable(value)):
            self._learning_rate.assign(float(value))
        else:
            with tf.init_scope():
                self._learning_rate = self._make_learning_rate(value)

    # ---- state -----------------------------------------------------------------------------

    @property
    def slot_names(self):
        return ["ms"] + (["mom"] if self.use_momentum else []) + (["mg"] if self.centered else [])

    def build(self, var_list):
        """Creates the slots of every variable (only those of enabled features), once.

        Under a strategy the slots are created in a cross-replica context (also when this
        is first called inside `strategy.run`), colocated and mirrored like their variable.
        """
        missing = [v for v in var_list if _distribute.var_key(v) not in self._index]
        if missing:
            _distribute.in_cross_replica(self._create_slots, missing)
        self.built = True

    def _create_slots(self, var_list):
        # Every variable's state format first: a refusal (ValueError) changes nothing.
        bits_of = {}
        for var in var_list:
            key = _distribute.var_key(var)
            if key not in self._index and key not in bits_of:
                bits_of[key] = self._state_bits_for(_distribute.unwrap(var))
        flat = self._flat_slots(var_list, bits_of)
        for var in var_list:
            key = _distribute.var_key(var)
            if key in self._index:
                continue
            var = _distribute.unwrap(var)
            self._index[key] = len(self._trainable_variables)
            self._trainable_variables.append(var)
            base = _base_name(var)
            bits = bits_of[key]

            def slot(name, value=0.0, create=True, quantized=False):
                if not create:
                    return None
                if id(var) in flat and name in flat[id(var)]:
                    return flat[id(var)][name]
                if quantized and bits == 8 and _dtensor.is_dvariable(var):
                    return state8.full(var.shape, value, state8.SIGNED[name], f"{base}_{name}",
                                       _dtensor.state8_variable_maker(var))
                if quantized and bits == 8:
                    with _distribute.creation_scope(var):
                        return state8.full(var.shape, value, state8.SIGNED[name],
                                           f"{base}_{name}",
                                           _distribute.state8_variable_maker())
                if _dtensor.is_dvariable(var):
                    with tf.init_scope():
                        return _dtensor.variable_like(var, value, f"{base}_{name}")
                with _distribute.creation_scope(var):
                    # Rounded once, straight to var's dtype (tf.cast would go through
                    # float32: 0.1 in a float64 slot would be 0.10000000149).
                    return tf.Variable(tf.fill(var.shape, ops.as_scalar(value, var.dtype)),
                                       name=f"{base}_{name}", trainable=False)

            self._ms.append(slot("ms", self.initial_scale, quantized=True), var)
            self._mom.append(slot("mom", create=self.use_momentum, quantized=True), var)
            self._mg.append(slot("mg", create=self.centered, quantized=True), var)
            self._ema.append(slot("average", create=self.use_ema))
            self._accumulators.append(
                slot("accumulator", create=bool(self.gradient_accumulation_steps)))

    def _flat_slots(self, var_list, bits_of):
        """With flat_state: {id(variable): {kind: FlatSlot}} for the new variables whose
        state can live in a flat buffer (`_flat_state`), else {}."""
        if not self.flat_state or tf.distribute.has_strategy():
            return {}
        chosen, seen = [], set()
        for var in var_list:
            key = _distribute.var_key(var)
            var = _distribute.unwrap(var)
            if (key in self._index or key in seen or bits_of[key] != 32
                    or _dtensor.is_dvariable(var)
                    or getattr(var, "_sharded_container", None) is not None
                    or not var.shape.is_fully_defined()):
                continue
            seen.add(key)
            chosen.append(var)
        initial = {"ms": self.initial_scale}
        if self.use_momentum:
            initial["mom"] = 0.0
        if self.centered:
            initial["mg"] = 0.0
        return _flat_state.build_groups(
            chosen, initial, lambda v, kind: f"{_base_name(v)}_{kind}",
            _distribute.creation_scope)

    def _position(self, var):
        key = _distribute.var_key(var)
        if key not in self._index:
            raise KeyError(f"Variable {getattr(var, 'name', var)} is not known to {self.name}")
        return self._index[key]

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

    @property
    def variables(self):
        """All optimizer state: iterations, learning rate (if a variable), then per variable
        its slots, EMA average and accumulator."""
        out = [self._iterations]
        if isinstance(self._learning_rate, tf.Variable):
            out.append(self._learning_rate)
        for group in zip(self._ms, self._mom, self._mg, self._ema, self._accumulators):
            for v in group:
                if isinstance(v, state8.State8):
                    out.extend((v.codes, v.absmax))
                elif v is not None:
                    out.append(v)
        return out

    def set_weights(self, weights):
        """Assigns `weights` (arrays, in the order of `variables`) to the optimizer state."""
        variables = self.variables
        if len(weights) != len(variables):
            raise ValueError(f"set_weights: got {len(weights)} arrays for {len(variables)} "
                             "optimizer variables (build the optimizer first).")
        for var, value in zip(variables, weights):
            if tuple(var.shape) != tuple(getattr(value, "shape", ())):
                raise ValueError(f"set_weights: {var.name} has shape {var.shape}, got "
                                 f"{getattr(value, 'shape', ())}")
        for var, value in zip(variables, weights):
            var.assign(value)

    def get_weights(self):
        return [v.numpy() for v in self.variables]

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        """Variables (or names matching any of `var_names`) that get no weight decay.
        Must be called before `build`, as Keras."""
        if self.built:
            raise ValueError("exclude_from_weight_decay() can only be configured before the "
                             "optimizer is built.")
        self._exclude_keys = {_distribute.var_key(v) for v in (var_list or [])}
        self._exclude_pattern = re.compile("|".join(set(var_names))) if var_names else None

    def _weight_decay_mode_for(self, var):
        if var is None:
            return self.weight_decay_mode if self.weight_decay else "none"
        if not self.weight_decay or _distribute.var_key(var) in self._exclude_keys:
            return "none"
        if self._exclude_pattern is not None and self._exclude_pattern.search(var.name):
            return "none"
        return self.weight_decay_mode

    # ---- applying gradients ----------------------------------------------------------------

    def minimize(self, loss, var_list, tape=None):
        """Minimises `loss` (a zero-argument callable, or a tensor recorded by `tape`)."""
        if not callable(loss) and tape is None:
            raise ValueError("`tape` is required when a `Tensor` loss is passed.")
        if callable(loss):
            tape = tf.GradientTape()
            with tape:
                if callable(var_list):
                    var_list = var_list()
                tape.watch(var_list)
                loss = self.scale_loss(loss())
        elif callable(var_list):
            var_list = var_list()
        grads = tape.gradient(loss, var_list)
        self.apply_gradients(zip(grads, var_list))
        return self._iterations

    def scale_loss(self, loss):
        return loss * self.loss_scale_factor if self.loss_scale_factor is not None else loss

    def apply_gradients(self, grads_and_vars):
        grads, variables = zip(*grads_and_vars) if grads_and_vars else ((), ())
        return self.apply(list(grads), list(variables))

    def apply(self, grads, trainable_variables=None):
        """Updates `trainable_variables` (default: those it was built with) with `grads`.

        Returns the new `iterations` (eagerly and in tf.function); in a TF1-style graph, the
        op that performs the whole update when run. Inside `strategy.run` the gradients are
        summed over replicas first (see `_distribute`).
        """
        if trainable_variables is None:
            if not self.built:
                raise ValueError("Pass trainable_variables or call build() first.")
            trainable_variables = self._trainable_variables
        trainable_variables = list(trainable_variables)
        grads = list(grads)
        if len(grads) != len(trainable_variables):
            raise ValueError(f"Got {len(grads)} gradients for {len(trainable_variables)} "
                             "variables.")
        # Everything checked before the optimizer changes (build adds slots and variables).
        for v in trainable_variables:
            _gradients.check_variable(v)
        all_variables = trainable_variables
        grads, trainable_variables = self._filter_missing(grads, trainable_variables)
        grads = [_gradients.as_gradient(g, v) for g, v in zip(grads, trainable_variables)]
        seen = set()
        for g, v in zip(grads, trainable_variables):
            _gradients.check(g, v)
            key = _distribute.var_key(v)
            if key in seen:  # two updates of one variable in one step: sum first
                raise ValueError(f"Variable {v.name} appears more than once in the update; sum "
                                 "its gradients into one.")
            seen.add(key)
        self.build(all_variables)
        if _distribute.is_v1_graph():
            return self._apply_in_v1_graph(grads, trainable_variables)
        grads, trainable_variables = self._overwrite_with_gradients(grads, trainable_variables)
        if not grads:  # every variable took its gradient's value: only the count moves
            return self._finish_step()
        grads = _distribute.all_reduce_sum(grads)
        return _distribute.run_step(self._local_step, grads, trainable_variables,
                                    self._finish_step)

    def _overwrite_with_gradients(self, grads, variables):
        """Keras' `variable.overwrite_with_gradient = True` (float8 scaling factors): such a
        variable takes its gradient's value instead of an RMSprop step (no loss-scale
        unscaling, clipping or weight decay, as Keras); under gradient accumulation it
        takes the element-wise max of the accumulated gradients on the update step (Keras'
        rule). Returns the other (gradient, variable) pairs. Under a tf.distribute strategy
        the replicas' gradients would have to be combined in a way Keras leaves to the
        layer: ValueError naming the variable."""
        kept = []
        for g, v in zip(grads, variables):
            if not getattr(v, "overwrite_with_gradient", False):
                kept.append((g, v))
                continue
            if tf.distribute.has_strategy():
                raise ValueError(f"Variable {v.name} has overwrite_with_gradient=True, which "
                                 "RMSpropX supports without a tf.distribute strategy only.")
            g = tf.cast(tf.convert_to_tensor(g), v.dtype)
            target = _distribute.unwrap(v)
            if not self.gradient_accumulation_steps:
                target.assign(g)
                continue
            acc = self._accumulators[self._position(v)]
            is_update = (self._iterations + 1) % self.gradient_accumulation_steps == 0
            running = tf.maximum(g, acc.read_value())
            target.assign(tf.where(is_update, running, target.read_value()))
            acc.assign(tf.where(is_update, tf.zeros_like(g), running))
        return [g for g, _ in kept], [v for _, v in kept]

    def _apply_in_v1_graph(self, grads, variables):
        # A tf.function call gives the step TF2's automatic control dependencies (accumulate,
        # update, EMA, count, in order); the returned op runs all of it.
        def step(*flat):
            return self.apply(list(flat), variables)
        return tf.function(step, autograph=False)(*grads).op

    def _local_step(self, grads, variables):
        """One device's step on reduced gradients: everything but counting `iterations`."""
        if self.loss_scale_factor is not None:
            inverse = 1.0 / self.loss_scale_factor
            grads = [_gradients.map_values(g, lambda x: x * tf.cast(inverse, x.dtype))
                     for g in grads]
        if self.gradient_accumulation_steps:
            self._accumulate_or_update(grads, variables)
        else:
            self._update(grads, variables)
        if self.use_ema:
            self._update_ema()

    def _finish_step(self):
        return self._iterations.assign_add(1)

    def _filter_missing(self, grads, variables):
        kept = [(g, v) for g, v in zip(grads, variables) if g is not None]
        if not kept:
            raise ValueError("No gradients provided for any variable.")
        missing = [v.name for g, v in zip(grads, variables)
                   if g is None and v.name not in self._warned_missing]
        if missing:
            self._warned_missing.update(missing)
            warnings.warn(f"Gradients do not exist for variables {missing} when minimizing "
                          "the loss; they are skipped.", stacklevel=3)
        return [g for g, _ in kept], [v for _, v in kept]

    def _clip(self, grads):
        if self.clipnorm:
            return [_gradients.clip_by_norm(g, self.clipnorm) for g in grads]
        if self.global_clipnorm:
            return _gradients.clip_by_global_norm(grads, self.global_clipnorm)
        if self.clipvalue:
            return [_gradients.clip_by_value(g, self.clipvalue) for g in grads]
        return grads

    def _update(self, grads, variables):
        grads = self._clip(grads)
        if not self.jit_compile or _inside_xla():
            return self._update_variables(grads, variables, self.learning_rate)
        # The learning rate is read outside XLA: under ParameterServerStrategy it lives on
        # another device than the variables of a compiled group.
        lr = tf.convert_to_tensor(self.learning_rate)
        for device, pairs in _distribute.jit_groups(zip(grads, variables)):
            group = [v for _, v in pairs]
            key = (device, tuple(_distribute.var_key(v) for v in group))
            if key not in self._compiled_updates:
                self._compiled_updates[key] = self._compile_update(group)
            with tf.device(device) if device else contextlib.nullcontext():
                self._compiled_updates[key]([_gradients.as_function_argument(g)
                                             for g, _ in pairs], lr)

    def _compile_update(self, variables):
        # The variables are captured, not passed: tf.function would hand out stand-ins.
        def update(grads, lr):
            return self._update_variables(grads, variables, lr)
        return tf.function(update, jit_compile=True, autograph=False)

    def _update_variables(self, grads, variables, lr):
        items = []
        for grad, var in zip(grads, variables):
            i = self._position(var)
            items.append((grad, _distribute.unwrap(var),
                          _apply.Slots(self._ms[i], self._mom[i], self._mg[i]),
                          self._structure(var)))
        _apply.apply_updates(
            items, lr=lr, rho=self.rho, momentum=self.momentum, epsilon=self.epsilon,
            weight_decay=self.weight_decay or 0.0,
            bias_correction_step=self.iterations + 1 if self.bias_correction else None,
            multi_tensor=self.multi_tensor)
        for var in variables:  # as Keras: a variable's constraint after its update
            constraint = getattr(var, "constraint", None)
            if constraint is not None:
                var.assign(constraint(var))

    def _structure(self, var):
        return _apply.Structure(
            use_momentum=self.use_momentum, centered=self.centered, nesterov=self.nesterov,
            epsilon_placement=self.epsilon_placement, lr_placement=self.lr_placement,
            weight_decay_mode=self._weight_decay_mode_for(var),
            use_locking=self.use_locking)

    def _accumulate_or_update(self, grads, variables):
        steps = self.gradient_accumulation_steps
        accumulators = [self._accumulators[self._position(v)] for v in variables]
        dense = [tf.convert_to_tensor(g) for g in grads]  # accumulators are dense

        def update():
            mean = [(g + a) / tf.cast(steps, g.dtype) for g, a in zip(dense, accumulators)]
            self._update(mean, variables)
            for a in accumulators:
                a.assign(tf.zeros_like(a))
            return tf.constant(True)

        def accumulate():
            for g, a in zip(dense, accumulators):
                a.assign_add(g)
            return tf.constant(False)

        tf.cond((self._iterations + 1) % steps == 0, update, accumulate)

    def _update_ema(self):
        # Keras: the EMA counts `iterations` (updates, under gradient accumulation).
        not_first = tf.cast(tf.not_equal(self.iterations, 0), tf.float32)
        for var, average in zip(self._trainable_variables, self._ema):
            m = tf.cast(not_first * self.ema_momentum, var.dtype)
            average.assign(m * average + (1 - m) * var)
        if self.ema_overwrite_frequency:
            def overwrite():
                self._overwrite_with_average(self._trainable_variables)
                return tf.constant(True)
            tf.cond((self.iterations + 1) % self.ema_overwrite_frequency == 0, overwrite,
                    lambda: tf.constant(False))

    def _overwrite_with_average(self, var_list):
        for var in var_list:
            var.assign(self._ema[self._position(var)])

    def finalize_variable_values(self, var_list):
        """Overwrites the variables with their moving average (when `use_ema`)."""
        if self.use_ema:
            self._overwrite_with_average(var_list)

    # ---- config ----------------------------------------------------------------------------

    def get_config(self):
        lr = self._learning_rate
        if _is_schedule(lr):
            lr = tf.keras.optimizers.schedules.serialize(lr)
        elif isinstance(lr, tf.Variable):
            lr = float(lr.numpy())
        else:
            lr = float(lr())  # a callable cannot be serialised: its current value is
        return dict(
            name=self.name, learning_rate=lr, rho=self.rho, momentum=self.momentum,
            epsilon=self.epsilon, centered=self.centered, weight_decay=self.weight_decay,
            clipnorm=self.clipnorm, clipvalue=self.clipvalue,
            global_clipnorm=self.global_clipnorm, use_ema=self.use_ema,
            ema_momentum=self.ema_momentum, ema_overwrite_frequency=self.ema_overwrite_frequency,
            loss_scale_factor=self.loss_scale_factor,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            jit_compile=self.jit_compile, nesterov=self.nesterov,
            epsilon_placement=self.epsilon_placement, lr_placement=self.lr_placement,
            weight_decay_mode=self.weight_decay_mode, initial_scale=self.initial_scale,
            bias_correction=self.bias_correction, multi_tensor=self.multi_tensor,
            flat_state=self.flat_state, use_locking=self.use_locking,
            state_bits=self.state_bits, min_8bit_size=self.min_8bit_size)

    @classmethod
    def from_preset(cls, preset, **overrides):
        """An optimizer reproducing another framework's RMSprop ("keras", "tf_keras", "tf1",
        "pytorch", "optax"; see `tf_rmsprop_ops.presets`), with `overrides` applied."""
        return cls(**presets.preset_kwargs(preset, overrides))

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("learning_rate"), dict):
            config["learning_rate"] = tf.keras.optimizers.schedules.deserialize(
                config["learning_rate"])
        return cls(**config)


def _inside_xla():
    graph = tf.compat.v1.get_default_graph()
    ctx = getattr(graph, "_get_control_flow_context", lambda: None)()
    while ctx is not None:
        if ctx.IsXLAContext():
            return True
        ctx = ctx.outer_context
    return False


def _validate(**args):
    """ValueError naming the first invalid constructor argument."""
    def bad(name, why):
        raise ValueError(f"Argument `{name}` {why}; received {args[name]!r}.")

    for name in ("learning_rate", "rho", "momentum", "epsilon", "weight_decay"):
        if name in args:
            _hyper.check(name, args[name])
    for name in ("clipnorm", "clipvalue", "global_clipnorm", "loss_scale_factor"):
        if args.get(name) is not None and not args[name] > 0:
            bad(name, "must be > 0 or None")
    clips = {k: args.get(k) for k in ("clipnorm", "clipvalue", "global_clipnorm")}
    if sum(v is not None for v in clips.values()) > 1:
        raise ValueError("Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set; "
                         f"received {', '.join(f'{k}={v}' for k, v in clips.items())}.")
    if "ema_momentum" in args and not 0.0 <= args["ema_momentum"] <= 1.0:
        bad("ema_momentum", "must be in [0, 1]")
    freq = args.get("ema_overwrite_frequency")
    if freq is not None and (not isinstance(freq, int) or freq < 1):
        bad("ema_overwrite_frequency", "must be a positive integer or None")
    steps = args.get("gradient_accumulation_steps")
    if steps is not None and (not isinstance(steps, int) or steps < 2):
        bad("gradient_accumulation_steps", "must be an integer >= 2 or None")
    if args.get("epsilon_placement", EPSILON_PLACEMENTS[0]) not in EPSILON_PLACEMENTS:
        bad("epsilon_placement", f"must be one of {EPSILON_PLACEMENTS}")
    if args.get("lr_placement", LR_PLACEMENTS[0]) not in LR_PLACEMENTS:
        bad("lr_placement", f"must be one of {LR_PLACEMENTS}")
    if args.get("weight_decay_mode", "decoupled") not in ("decoupled", "coupled"):
        bad("weight_decay_mode", "must be 'decoupled' (Keras/AdamW) or 'coupled' (PyTorch L2)")
    mesh = args.get("mesh")
    if mesh is not None and not isinstance(mesh, tf.experimental.dtensor.Mesh):
        bad("mesh", "must be a tf.experimental.dtensor.Mesh or None")
    state8.Selection(args.get("state_bits", 32), args.get("min_8bit_size", 0))  # checks

