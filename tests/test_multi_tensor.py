"""ApplyRMSpropXMulti: many variables in one call, against the reference and bit-identical
to one ApplyRMSpropX per variable; a rejected call changes nothing; XLA; the optimizers'
grouping (multi_tensor=True/False give the same bits, also under MirroredStrategy)."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import (DTYPES, VARIANTS, apply_dense, assert_matches, make_variables,
                     random_hyper, random_state, reference_dense, values)
from tf_rmsprop_ops import RMSpropX, ops
import tf_rmsprop_ops.keras as tfx_keras

# Empty, scalar, odd, tiny and large (split between threads) variables in one call.
SHAPES = [(0,), (), (7,), (3, 5), (1,), (130, 257), (70000,), (2, 3, 4)]


def _states(rng, dtype, variant, shapes=SHAPES):
    return [random_state(rng, s, dtype, variant) for s in shapes]


def _call_multi(all_vars, states, variant, hyper, dtype, **extra):
    slots = [[v[k] for k in ("ms", "mom", "mg") if k in v] for v in all_vars]
    return ops.apply_rmsprop_x_multi(
        [v["var"] for v in all_vars], slots, [tf.cast(s["grad"], dtype) for s in states],
        use_momentum=variant.momentum, centered=variant.centered, **hyper,
        **variant.op_kwargs(), **extra)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_matches_reference_and_the_single_op_bit_for_bit(rng, variant, dtype):
    states = _states(rng, dtype, variant)
    hyper = random_hyper(rng, dtype, variant)
    multi = [make_variables(s, dtype) for s in states]
    single = [make_variables(s, dtype) for s in states]
    _call_multi(multi, states, variant, hyper, dtype)
    for s, m, one in zip(states, multi, single):
        apply_dense(one, s["grad"], variant, hyper, dtype)
        # As the dense test: each array's floor is its own scale before and after the step
        # (an element where var - upd cancels keeps the rounding of its operands, and a
        # 1-element array's `before` gives that scale); not one floor over every array,
        # which checked the small slots (mom, mg) 10-20x more loosely.
        assert_matches(values(m), reference_dense(s, variant, hyper), dtype,
                       what=f"shape {np.shape(s['var'])}: ", before=s)
        for k in m:
            np.testing.assert_array_equal(m[k].numpy(), one[k].numpy(), err_msg=k)


def test_xla_lowering_matches_the_kernel(rng):
    variant = next(v for v in VARIANTS if v.centered and v.momentum and not v.nesterov)
    states = _states(rng, tf.float32, variant, [(5,), (33, 9), (1000,)])
    hyper = random_hyper(rng, tf.float32, variant)
    native = [make_variables(s, tf.float32) for s in states]
    xla = [make_variables(s, tf.float32) for s in states]
    _call_multi(native, states, variant, hyper, tf.float32)

    @tf.function(jit_compile=True)
    def step():
        _call_multi(xla, states, variant, hyper, tf.float32)
    step()
    for a, b in zip(native, xla):
        for k in a:
            np.testing.assert_allclose(b[k].numpy(), a[k].numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("fault", ["grad_shape", "slot_shape", "slot_dtype", "duplicate",
                                   "uninitialised"])
def test_a_rejected_call_changes_no_variable(rng, fault):
    variant = next(v for v in VARIANTS if v.momentum and not v.centered and not v.nesterov)
    states = _states(rng, tf.float32, variant, [(4,), (6, 2), (50,)])
    hyper = random_hyper(rng, tf.float32, variant)
    variables = [make_variables(s, tf.float32) for s in states]
    before = [{k: v.numpy().copy() for k, v in m.items()} for m in variables]
    grads = [tf.constant(s["grad"], tf.float32) for s in states]
    slots = [[m["ms"], m["mom"]] for m in variables]
    var_list = [m["var"] for m in variables]
    if fault == "grad_shape":
        grads[-1] = tf.zeros([49])
        error, match = tf.errors.InvalidArgumentError, r"grads\[2\] must have vars\[2\]'s shape"
    elif fault == "slot_shape":
        slots[-1][1] = tf.Variable(tf.zeros([3]))
        error, match = tf.errors.InvalidArgumentError, r"'mom' of vars\[2\].*must have var's shape"
    elif fault == "slot_dtype":
        slots[-1][0] = tf.Variable(tf.zeros([50], tf.float64))
        error, match = tf.errors.InvalidArgumentError, r"'ms' of vars\[2\].*dtype double"
    elif fault == "duplicate":
        var_list[2] = var_list[0]
        grads[2] = grads[0]
        error, match = tf.errors.InvalidArgumentError, r"vars\[0\] and vars\[2\] are the same"
    else:
        slots[-1][0] = _uninitialised([50])
        error, match = tf.errors.FailedPreconditionError, r"uninitialised|not an existing"
    with pytest.raises(error, match=match):
        ops.apply_rmsprop_x_multi(var_list, slots, grads, use_momentum=True, **hyper,
                                  **variant.op_kwargs())
    for m, b in zip(variables, before):
        for k in m:
            np.testing.assert_array_equal(m[k].numpy(), b[k])


def _uninitialised(shape):
    from tensorflow.python.ops import resource_variable_ops
    return resource_variable_ops.UninitializedVariable(shape=shape, dtype=tf.float32)


def _model_problem(rng):
    shapes = [(6, 4), (4,), (4, 3), (3,), (20, 4)]
    init = [rng.normal(size=s).astype(np.float32) for s in shapes]
    steps = []
    for _ in range(4):
        dense = [rng.normal(size=s).astype(np.float32) * 10.0 ** rng.uniform(-3, 0)
                 for s in shapes[:4]]
        ids = rng.integers(0, 20, size=7)
        steps.append(dense + [tf.IndexedSlices(tf.constant(rng.normal(size=(7, 4)), tf.float32),
                                               tf.constant(ids), tf.constant([20, 4]))])
    return init, steps


@pytest.mark.parametrize("cls", [RMSpropX, tfx_keras.RMSpropX], ids=["module", "keras"])
def test_optimizer_grouping_gives_the_same_bits(rng, cls):
    init, steps = _model_problem(rng)
    results = []
    for multi in (True, False):
        variables = [tf.Variable(x) for x in init]
        opt = cls(learning_rate=0.01, momentum=0.9, centered=True, weight_decay=0.02,
                  multi_tensor=multi)
        for grads in steps:
            opt.apply_gradients(zip([tf.identity(g) if not isinstance(g, tf.IndexedSlices)
                                     else g for g in grads], variables))
        results.append([v.numpy() for v in variables] + [v.numpy() for v in opt.variables])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_grouping_under_mirrored_strategy_gives_the_same_bits(rng):
    from test_distribute import _strategy
    strategy = _strategy()
    init, steps = _model_problem(rng)
    results = []
    for multi in (True, False):
        with strategy.scope():
            variables = [tf.Variable(x) for x in init]
            opt = RMSpropX(learning_rate=0.01, momentum=0.9, multi_tensor=multi)

        def replica_step(k):
            grads = [tf.constant(g) if not isinstance(g, tf.IndexedSlices) else
                     tf.IndexedSlices(tf.identity(g.values), tf.identity(g.indices))
                     for g in steps[k]]  # made in each replica (summed over both)
            opt.apply_gradients(zip(grads, variables))

        for k in range(len(steps)):
            tf.function(lambda k=k: strategy.run(replica_step, args=(k,)))()
        copies = [strategy.experimental_local_results(v) for v in variables]
        for c in copies:
            np.testing.assert_array_equal(c[0].numpy(), c[1].numpy())
        results.append([c[0].numpy() for c in copies])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cls", [RMSpropX, tfx_keras.RMSpropX], ids=["module", "keras"])
def test_one_multi_tensor_call_per_group(rng, cls):
    """Dense float32 variables of one formula: one ApplyRMSpropXMulti; the table's
    IndexedSlices: the sparse op; a variable excluded from weight decay: its own group."""
    init, steps = _model_problem(rng)
    for multi in (True, False):
        variables = [tf.Variable(x, name=f"v{i}") for i, x in enumerate(init)]
        opt = cls(learning_rate=0.01, weight_decay=0.1, multi_tensor=multi)
        opt.exclude_from_weight_decay(var_names=["v3"])
        opt.build(variables)
        fn = tf.function(lambda grads: opt.apply_gradients(zip(grads, variables)))
        graph = fn.get_concrete_function(
            [tf.TensorSpec(g.shape, tf.float32) if not isinstance(g, tf.IndexedSlices) else
             tf.IndexedSlicesSpec(tf.TensorShape([None, 4]), tf.float32, tf.int64)
             for g in steps[0]]).graph
        types = [op.type for f in [graph] + [graph._functions[n].graph for n in graph._functions
                                             if hasattr(graph._functions[n], "graph")]
                 for op in f.get_operations()]
        counts = {t: types.count(t) for t in ("ApplyRMSpropXMulti", "ApplyRMSpropX",
                                              "SparseApplyRMSpropX")}
        if multi and cls is RMSpropX:  # flat state (its default): v3's group of one too
            # takes the multi-tensor op (the only dense op with ranges of buffers)
            assert counts == {"ApplyRMSpropXMulti": 2, "ApplyRMSpropX": 0,
                              "SparseApplyRMSpropX": 1}, counts
        elif multi:  # v0..v2 decayed: one group of three; v3 (no decay): alone; v4: sparse
            assert counts == {"ApplyRMSpropXMulti": 1, "ApplyRMSpropX": 1,
                              "SparseApplyRMSpropX": 1}, counts
        else:
            assert counts == {"ApplyRMSpropXMulti": 0, "ApplyRMSpropX": 4,
                              "SparseApplyRMSpropX": 1}, counts
