"""How an RMSpropX step meets tf.distribute (and plain TF1-style graphs).

The step of `RMSpropX.apply` under a strategy, as Keras 3's TensorFlow optimizer does it:

1. Slots are created in a cross-replica context (a `merge_call` when `apply` is first
   called inside `strategy.run`), colocated with their variable: under MirroredStrategy /
   MultiWorkerMirroredStrategy they are mirrored like it, under ParameterServerStrategy
   they live on the variable's parameter server.
2. In the replica context the gradients are all-reduced once (`ReplicaContext.all_reduce`,
   SUM; IndexedSlices are gathered, never densified).
3. A `merge_call` then runs the optimizer's local step once per device through
   `strategy.extended.update`, with each device's reduced gradients. The local step is the
   one-device step (loss scale, accumulation, clipping, the op calls, EMA): inside `update`
   every mirrored variable and slot reads and writes its own device's component, so every
   replica applies the same bits. It is anchored on one mirrored variable (all of them live
   on the same devices) rather than called per variable, because global-norm clipping and
   gradient accumulation need all gradients of a step together.
4. Strategies without mirrored copies (the default strategy, OneDeviceStrategy,
   ParameterServerStrategy: one replica per worker, variables on the PS) run the local step
   directly: each op is placed on its variable's device (on the PS) by its resource input.

Under ParameterServerStrategy, XLA updates run per variable device (`jit_groups`): an XLA
function at the top level of a worker function cannot take PS variables, one called under
`tf.device(var.device)` can.
"""
import contextlib

import tensorflow as tf


def var_key(var):
    """A stable key for a variable: the container of a per-replica component, the
    tf.Variable of a keras.Variable, then its unique id (ids of Python objects change
    when tf.function or a strategy hands out wrappers)."""
    var = unwrap(var)
    if isinstance(var, tf.distribute.DistributedValues):
        pass  # a container already
    elif hasattr(var, "_distributed_container"):
        var = var._distributed_container()
    elif (isinstance(var, tf.Variable) and not tf.executing_eagerly()
          and hasattr(var.handle, "_distributed_container")):
        var = var.handle._distributed_container()
    return getattr(var, "_unique_id", None) or id(var)


def unwrap(var):
    """The tf.Variable behind a keras.Variable (TensorFlow backend); other variables as they
    are."""
    inner = getattr(var, "_value", None)
    if isinstance(inner, tf.Variable) and not isinstance(var, tf.Variable):
        return inner
    return var


def devices_of(var):
    """The devices of every copy of `var` (a mirrored variable's components; else its own),
    joined: a variable mirrored on a CPU and a GPU is on a GPU too."""
    var = unwrap(var)
    copies = var.values if isinstance(var, tf.distribute.DistributedValues) else (var,)
    return " ".join(getattr(c, "device", "") or "" for c in copies)


def _strategy():
    return tf.distribute.get_strategy() if tf.distribute.has_strategy() else None


def in_replica_context():
    """True inside `strategy.run` of a real (non-default) strategy."""
    return (tf.distribute.has_strategy() and not tf.distribute.in_cross_replica_context()
            and tf.distribute.get_replica_context() is not None)


def creation_scope(var):
    """Where a slot of `var` is created: outside any tf.function, in the strategy's scope,
    colocated with (mirrored like / on the PS of) the variable."""
    strategy = _strategy()
    stack = contextlib.ExitStack()
    stack.enter_context(tf.init_scope())
    if strategy is not None:
        stack.enter_context(strategy.scope())
        stack.enter_context(strategy.extended.colocate_vars_with(var))
    elif getattr(var, "device", None):
        stack.enter_context(tf.device(var.device))
    return stack


def state8_variable_maker():
    """How to make the variables of an 8-bit state (inside `creation_scope`): tf.Variable,
    except under MultiWorkerMirroredStrategy with several workers, where TensorFlow
    broadcasts every new variable's initial value from the chief with a collective that has
    no uint8 kernel (CollectiveBcastRecv: bool, float, half, double, int32, int64). There the
    codes and absmax are plain variables on the worker's one device: their initial value is
    a constant every worker computes alike, and every worker applies the same all-reduced
    update to them, so they stay equal without being mirrored. Several local devices per
    worker would need mirrored copies: ValueError."""
    strategy = _strategy()
    if strategy is None or getattr(strategy.extended, "_num_workers", 1) <= 1 or not isinstance(
            strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return tf.Variable
    devices = strategy.extended.worker_devices
    if len(devices) != 1:
        raise ValueError(
            "state_bits=8 under MultiWorkerMirroredStrategy needs one device per worker (its "
            f"workers have {len(devices)}): TensorFlow cannot broadcast the uint8 codes' "
            "initial value; use state_bits=32")
    from tensorflow.python.ops import resource_variable_ops

    def make(initial_value, **kwargs):
        with tf.device(devices[0]):
            return resource_variable_ops.ResourceVariable(initial_value, **kwargs)
    return make


def in_cross_replica(fn, *args):
    """Runs fn(*args) in a cross-replica context (a merge_call inside strategy.run)."""
    if in_replica_context():
        return tf.distribute.get_replica_context().merge_call(lambda _, *a: fn(*a), args=args)
    return fn(*args)


def all_reduce_sum(grads):
    """Sums the gradients over replicas, once (a no-op outside strategy.run)."""
    if not in_replica_context():
        return grads
    ctx = tf.distribute.get_replica_context()
    if ctx.num_replicas_in_sync == 1:
        return grads
    # Dense gradients in one batched all-reduce, IndexedSlices (all-gathered) one by one:
    # a mixed batch issues its collectives in a different order per replica when eager.
    sparse = [i for i, g in enumerate(grads) if isinstance(g, tf.IndexedSlices)]
    dense = [i for i, g in enumerate(grads) if i not in set(sparse)]
    out = list(grads)
    if dense:
        for i, g in zip(dense, ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                                              [grads[i] for i in dense])):
            out[i] = g
    for i in sparse:
        out[i] = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads[i])
    return out


def _is_mirrored(var):
    return isinstance(var, tf.distribute.DistributedValues)


def run_step(local_step, grads, variables, finish):
    """Runs `local_step(grads, variables)` on every device holding a copy of the
    variables, then `finish()` once (cross-replica); see the module docstring. In a graph,
    `finish` (counting `iterations`) waits for every stateful op of the local steps: a step
    an op rejects does not count."""
    if not in_replica_context():
        if tf.distribute.has_strategy() and any(isinstance(g, tf.distribute.DistributedValues)
                                                for g in grads):
            strategy = tf.distribute.get_strategy()
            return _update_each_device(strategy, local_step,
                                       _sum_per_replica(strategy, grads, variables), variables,
                                       finish)
        return _then(stateful_ops(local_step, grads, variables), finish)
    anchor = next((v for v in variables if _is_mirrored(v)), None)
    if anchor is None:  # ParameterServerStrategy, OneDeviceStrategy: one copy of each
        return _then(stateful_ops(local_step, grads, variables), finish)
    ctx = tf.distribute.get_replica_context()
    return ctx.merge_call(
        lambda strategy, g: _update_each_device(strategy, local_step, g, variables, finish,
                                                anchor), args=(grads,))


def _sum_per_replica(strategy, grads, variables):
    """Per-replica gradients (`strategy.run`'s results, one value per replica) summed onto
    their variable's devices, as inside `strategy.run` (step 2): every device then applies
    the same sum. Each device applying its own replica's value would make the copies of a
    mirrored variable diverge."""
    return [strategy.extended.reduce_to(tf.distribute.ReduceOp.SUM, g, destinations=v)
            if isinstance(g, tf.types.experimental.distributed.PerReplica) else g
            for g, v in zip(grads, variables)]


def stateful_ops(fn, *args):
    """Runs `fn(*args)`; in a graph, returns the stateful ops it added (eagerly every op
    has run, or raised, when `fn` returns: nothing to wait for)."""
    if tf.executing_eagerly():
        fn(*args)
        return []
    graph = tf.compat.v1.get_default_graph()
    before = len(graph.get_operations())
    fn(*args)
    return [op for op in graph.get_operations()[before:] if op._is_stateful]  # noqa: SLF001


def writes_wait_for(fn, variables):
    """Runs `fn()`; in a graph, then reads each of `variables` under control dependencies
    on the stateful ops `fn` added. TensorFlow's automatic control dependencies order every
    later write of those variables after their read, so after `fn`'s ops: code that is not
    ours (Keras counting `iterations`, zeroing its gradient accumulators) then writes only
    once the step's ops succeeded."""
    ops = stateful_ops(fn)
    if ops:  # eagerly every op has run (or raised) already
        _then(ops, lambda: [tf.identity(unwrap(v)) for v in variables])


def _then(ops, fn):
    with tf.control_dependencies(ops):
        return fn()


def _update_each_device(strategy, local_step, grads, variables, finish, anchor=None):
    anchor = anchor if anchor is not None else variables[0]

    def on_device(_, local_grads):
        return _then(stateful_ops(local_step, list(local_grads), variables),
                     lambda: tf.identity(tf.constant(True)))

    done = strategy.extended.update(anchor, on_device, args=(grads,), group=True)
    with tf.control_dependencies(tf.nest.flatten(done) if not tf.executing_eagerly() else []):
        return finish()


def jit_groups(pairs):
    """(device, [(grad, var), ...]) groups: XLA compiles one function per variable device."""
    groups = {}
    for grad, var in pairs:
        groups.setdefault(getattr(var, "device", "") or "", []).append((grad, var))
    return list(groups.items())


def is_v1_graph():
    """True while building a TF1-style graph (tf.Graph().as_default(), no tf.function)."""
    return not tf.executing_eagerly() and not tf.inside_function()
