"""`ModuleOptimizer`: what Keras 3's base optimizer does, for a `tf.Module` optimizer that
needs no Keras: the step count, the learning rate (a number, a schedule or a callable),
missing gradients, loss scaling, `overwrite_with_gradient`, clipping, gradient
accumulation, the EMA of the weights, `jit_compile`, variable constraints, weight-decay
exclusions, `variables`/`get_weights`/`set_weights`, tf.distribute (`_distribute`) and
TF1 graphs. Semantics follow Keras (docs/design.md 1.5).

A subclass keeps its own per-variable state and says how a step updates it:
`_create_state(new_variables)`, `_state_of(position)` and `_update_variables(grads,
variables, lr)` (`tf_rmsprop_ops.optimizer.RMSpropX`)."""
import contextlib
import re
import warnings

import tensorflow as tf
from tensorflow.python.trackable.data_structures import NoDependency

from tf_rmsprop_ops import _distribute, _dtensor, _gradients, _hyper, ops


def is_schedule(lr):
    return isinstance(lr, tf.keras.optimizers.schedules.LearningRateSchedule)


def base_name(var):
    """A variable's name as a prefix of its state's names."""
    return re.sub(r":\d+$", "", getattr(var, "name", "variable")).replace("/", "_")


def validate(**args):
    """ValueError naming the first invalid argument of Keras' base optimizer's (and `mesh`)."""
    def bad(name, why):
        raise ValueError(f"Argument `{name}` {why}; received {args[name]!r}.")

    if "learning_rate" in args:
        _hyper.check("learning_rate", args["learning_rate"])
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
    mesh = args.get("mesh")
    if mesh is not None and not isinstance(mesh, tf.experimental.dtensor.Mesh):
        bad("mesh", "must be a tf.experimental.dtensor.Mesh or None")


class ModuleOptimizer(tf.Module):
    """Keras 3's base optimizer's machinery on a `tf.Module` (see the module docstring).
    Arguments as `keras.optimizers.Optimizer`'s, validated by `validate` (the subclass calls
    it with its own arguments first), plus `mesh` (DTensor: the step count and learning rate
    are created replicated on it)."""

    def __init__(self, learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm,
                 use_ema, ema_momentum, ema_overwrite_frequency, loss_scale_factor,
                 gradient_accumulation_steps, jit_compile, mesh, name):
        super().__init__(name=name)
        self.weight_decay = weight_decay
        self.clipnorm, self.clipvalue, self.global_clipnorm = clipnorm, clipvalue, global_clipnorm
        self.use_ema, self.ema_momentum = bool(use_ema), float(ema_momentum)
        self.ema_overwrite_frequency = ema_overwrite_frequency
        self.loss_scale_factor = loss_scale_factor
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.jit_compile, self.mesh = bool(jit_compile), mesh
        with tf.init_scope():
            self._iterations = self._scalar_variable(0, tf.int64, "iteration")
            self._learning_rate = self._make_learning_rate(learning_rate)
        self._ema, self._accumulators = [], []
        self._index = {}  # _distribute.var_key(variable) -> position
        self._trainable_variables = []
        self._exclude_keys, self._exclude_pattern = set(), None
        self._warned_missing = set()
        # (device, variable keys) -> XLA function; a cache, not state to save.
        self._compiled_updates = NoDependency({})
        self.built = False

    # ---- what a subclass provides ------------------------------------------------------------

    def _create_state(self, var_list):
        """Creates the per-variable state of `var_list` (new, distinct variables, possibly
        distributed: `_distribute.unwrap` gives the one updated), in order: each one's state
        takes the next position. Raises before creating any when one cannot have it."""
        raise NotImplementedError

    def _state_of(self, position):
        """The variables of one variable's state, in `variables`' order."""
        raise NotImplementedError

    def _update_variables(self, grads, variables, lr):
        """Updates `variables` with `grads` (checked, reduced, unscaled, clipped)."""
        raise NotImplementedError

    # ---- the step count and learning rate ---------------------------------------------------

    def _scalar_variable(self, value, dtype, name):
        if self.mesh is not None:
            return _dtensor.replicated_variable(self.mesh, value, name, dtype)
        # Under a strategy every replica computes the same value: the first one is written.
        return tf.Variable(value, dtype=dtype, name=name, trainable=False,
                           aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def _make_learning_rate(self, lr):
        if is_schedule(lr) or callable(lr):
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
        if is_schedule(lr):
            return lr(self._iterations)
        if isinstance(lr, tf.Variable):
            return lr
        return lr()

    @learning_rate.setter
    def learning_rate(self, value):
        _hyper.check("learning_rate", value)
        if isinstance(self._learning_rate, tf.Variable) and not (
                is_schedule(value) or callable(value)):
            self._learning_rate.assign(float(value))
        else:
            with tf.init_scope():
                self._learning_rate = self._make_learning_rate(value)

    # ---- state ------------------------------------------------------------------------------

    def build(self, var_list):
        """Creates the state of every variable not built yet, once.

        Under a strategy the state is created in a cross-replica context (also when this
        is first called inside `strategy.run`), colocated and mirrored like its variable.
        """
        missing = [v for v in var_list if _distribute.var_key(v) not in self._index]
        if missing:
            _distribute.in_cross_replica(self._create_all, missing)
        self.built = True

    def _create_all(self, var_list):
        new, seen = [], set()
        for var in var_list:
            key = _distribute.var_key(var)
            if key not in self._index and key not in seen:
                seen.add(key)
                new.append(var)
        self._create_state(new)  # may refuse: nothing registered yet
        for var in new:
            key = _distribute.var_key(var)
            var = _distribute.unwrap(var)
            self._index[key] = len(self._trainable_variables)
            self._trainable_variables.append(var)
            self._ema.append(self._plain_slot(var, "average") if self.use_ema else None)
            self._accumulators.append(self._plain_slot(var, "accumulator")
                                      if self.gradient_accumulation_steps else None)

    def _plain_slot(self, var, name, value=0.0):
        """A variable like `var` (shape, dtype, placement, DTensor layout) filled with
        `value`, named after it."""
        if _dtensor.is_dvariable(var):
            with tf.init_scope():
                return _dtensor.variable_like(var, value, f"{base_name(var)}_{name}")
        with _distribute.creation_scope(var):
            # Rounded once, straight to var's dtype (tf.cast would go through float32: 0.1
            # in a float64 slot would be 0.10000000149).
            return tf.Variable(tf.fill(var.shape, ops.as_scalar(value, var.dtype)),
                               name=f"{base_name(var)}_{name}", trainable=False)

    def _position(self, var):
        key = _distribute.var_key(var)
        if key not in self._index:
            raise KeyError(f"Variable {getattr(var, 'name', var)} is not known to {self.name}")
        return self._index[key]

    @property
    def variables(self):
        """All optimizer state: iterations, learning rate (if a variable), then per variable
        its own state (`_state_of`), EMA average and accumulator."""
        out = [self._iterations]
        if isinstance(self._learning_rate, tf.Variable):
            out.append(self._learning_rate)
        for i in range(len(self._trainable_variables)):
            out.extend(self._state_of(i))
            out.extend(v for v in (self._ema[i], self._accumulators[i]) if v is not None)
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

    def _decays(self, var):
        """Whether weight decay applies to `var` (`exclude_from_weight_decay`)."""
        if _distribute.var_key(var) in self._exclude_keys:
            return False
        return self._exclude_pattern is None or not self._exclude_pattern.search(var.name)

    # ---- applying gradients -----------------------------------------------------------------

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
        # Everything checked before the optimizer changes (build adds state and variables).
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
        variable takes its gradient's value instead of an optimizer step (no loss-scale
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
                                 f"{type(self).__name__} supports without a tf.distribute "
                                 "strategy only.")
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
            self._update_and_constrain(grads, variables, self.learning_rate)
        else:
            # The learning rate is read outside XLA: under ParameterServerStrategy it lives
            # on another device than the variables of a compiled group.
            lr = tf.convert_to_tensor(self.learning_rate)
            for device, pairs in _distribute.jit_groups(zip(grads, variables)):
                group = [v for _, v in pairs]
                key = (device, tuple(_distribute.var_key(v) for v in group))
                if key not in self._compiled_updates:
                    self._compiled_updates[key] = self._compile_update(group)
                with tf.device(device) if device else contextlib.nullcontext():
                    self._compiled_updates[key]([_gradients.as_function_argument(g)
                                                 for g, _ in pairs], lr)

    def _update_and_constrain(self, grads, variables, lr):
        self._update_variables(grads, variables, lr)
        for var in variables:  # as Keras: a variable's constraint after its update
            constraint = getattr(var, "constraint", None)
            if constraint is not None:
                var.assign(constraint(var))

    def _compile_update(self, variables):
        # The variables are captured, not passed: tf.function would hand out stand-ins.
        def update(grads, lr):
            return self._update_and_constrain(grads, variables, lr)
        return tf.function(update, jit_compile=True, autograph=False)

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

    # ---- config -----------------------------------------------------------------------------

    def get_config(self):
        """Keras' base optimizer's config entries (a subclass adds its own)."""
        lr = self._learning_rate
        if is_schedule(lr):
            lr = tf.keras.optimizers.schedules.serialize(lr)
        elif isinstance(lr, tf.Variable):
            lr = float(lr.numpy())
        else:
            lr = float(lr())  # a callable cannot be serialised: its current value is
        return dict(
            name=self.name, learning_rate=lr, weight_decay=self.weight_decay,
            clipnorm=self.clipnorm, clipvalue=self.clipvalue,
            global_clipnorm=self.global_clipnorm, use_ema=self.use_ema,
            ema_momentum=self.ema_momentum, ema_overwrite_frequency=self.ema_overwrite_frequency,
            loss_scale_factor=self.loss_scale_factor,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            jit_compile=self.jit_compile)

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
