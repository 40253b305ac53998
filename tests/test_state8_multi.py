"""ApplyRMSpropXMulti with 8-bit state: one call over many variables, the work cut at block
boundaries across them, gives the bits of one ApplyRMSpropX per variable (the same block
loop), on the CPU and under XLA; every input of every variable is checked before anything
is written; both optimizers group 8-bit variables into one call (multi_tensor=True gives the
bits of multi_tensor=False)."""
import numpy as np
import pytest
import tensorflow as tf

import tf_rmsprop_ops
from tf_rmsprop_ops import RMSpropX, ops, reference
from tf_rmsprop_ops.state8 import State8

from helpers import VARIANTS, random_hyper, random_state

# Shapes with partial blocks, one row, rank 3, empty, and a multi-threaded one (16,800
# blocks: several ranges, cut inside it and across its neighbours).
SHAPES = [(5, 300), (700,), (1,), (3, 2, 200), (0, 9), (4, 256), (600, 7000), (2, 1)]


def _variables(rng, shapes, dtype, variant):
    out = []
    for shape in shapes:
        state = random_state(rng, shape, dtype, variant)
        v = {"var": tf.Variable(tf.cast(state["var"], dtype)),
             "grad": tf.constant(np.asarray(tf.cast(
                 rng.normal(size=shape) * 10.0 ** rng.uniform(-4, 0, shape), dtype)))}
        for k in ("ms", "mom", "mg"):
            if state[k] is not None:
                codes, absmax = reference.quantize_blockwise(state[k], reference.STATE_SIGNED[k])
                v[k] = State8(tf.Variable(codes), tf.Variable(absmax))
        out.append(v)
    return out


def _slots(v):
    return [v[k] for k in ("ms", "mom", "mg") if k in v]


def _bits(vs):
    out = []
    for v in vs:
        out.append(v["var"].numpy())
        for k in ("ms", "mom", "mg"):
            if k in v:
                out += [v[k].codes.numpy(), v[k].absmax.numpy()]
    return out


def _copy(vs):
    return [{k: (State8(tf.Variable(x.codes), tf.Variable(x.absmax)) if isinstance(x, State8)
                 else tf.Variable(x) if isinstance(x, tf.Variable) else x)
             for k, x in v.items()} for v in vs]


def _run(vs, variant, hyper, multi, jit):
    def step():
        if multi:
            ops.apply_rmsprop_x_multi(
                [v["var"] for v in vs], [_slots(v) for v in vs], [v["grad"] for v in vs],
                use_momentum=variant.momentum, centered=variant.centered, **hyper,
                **variant.op_kwargs())
        else:
            for v in vs:
                tf_rmsprop_ops.apply_rmsprop_x(
                    v["var"], v["ms"], v["grad"], mom=v.get("mom"), mg=v.get("mg"), **hyper,
                    **variant.op_kwargs())
    if jit:
        tf.function(step, jit_compile=True, autograph=False)()
    else:
        step()
    return _bits(vs)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float32], ids=lambda d: d.name)
@pytest.mark.parametrize("variant", VARIANTS[::4], ids=str)
def test_one_call_is_one_op_per_variable_bit_for_bit(rng, variant, dtype):
    shapes = SHAPES if dtype == tf.float32 else SHAPES[:6]
    vs = _variables(rng, shapes, dtype, variant)
    hyper = random_hyper(rng, dtype, variant)
    start = _bits(vs)
    single = _run(_copy(vs), variant, hyper, multi=False, jit=False)
    multi = _run(vs, variant, hyper, multi=True, jit=False)
    for a, b in zip(multi, single):
        np.testing.assert_array_equal(a, b)
    assert np.any(multi[0] != start[0])  # it updated


@pytest.mark.parametrize("variant", VARIANTS[::7], ids=str)
def test_under_xla_one_call_is_one_lowering_per_variable(rng, variant):
    vs = _variables(rng, SHAPES[:6], tf.float32, variant)
    hyper = random_hyper(rng, tf.float32, variant)
    single = _run(_copy(vs), variant, hyper, multi=False, jit=True)
    multi = _run(vs, variant, hyper, multi=True, jit=True)
    for a, b in zip(multi, single):
        np.testing.assert_array_equal(a, b)


def test_a_bad_input_of_the_last_variable_writes_nothing(rng):
    variant = next(v for v in VARIANTS if v.momentum and v.centered)
    vs = _variables(rng, [(5, 300), (700,), (4, 256)], tf.float32, variant)
    vs[2]["mom"] = State8(vs[2]["mom"].codes, tf.Variable(vs[2]["mom"].absmax.numpy()[:, :0]))
    before = _bits(vs)
    hyper = random_hyper(rng, tf.float32, variant)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"slots\[15\] \('mom absmax' of vars\[2\]\) must have shape \[4,1\]"):
        _run(vs, variant, hyper, multi=True, jit=False)
    for a, b in zip(_bits(vs), before):
        np.testing.assert_array_equal(a, b)
    vs = _variables(rng, [(5, 300), (700,)], tf.float32, variant)
    vs[1]["ms"] = State8(tf.Variable(vs[1]["ms"].codes.numpy().astype(np.int32)),
                         vs[1]["ms"].absmax)
    before = _bits(vs)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"slots\[6\] \('ms codes' of vars\[1\]\) has dtype int32"):
        _run(vs, variant, hyper, multi=True, jit=False)
    for a, b in zip(_bits(vs), before):
        np.testing.assert_array_equal(a, b)


def test_mixed_formats_in_one_call_are_refused(rng):
    variant = next(v for v in VARIANTS if not v.momentum and not v.centered)
    vs = _variables(rng, [(5, 300)], tf.float32, variant)
    plain = tf.Variable(np.ones((3,), np.float32))
    with pytest.raises(TypeError, match="all 32-bit or all 8-bit"):
        ops.apply_rmsprop_x_multi(
            [vs[0]["var"], plain], [[vs[0]["ms"]], [tf.Variable(np.ones((3,), np.float32))]],
            [vs[0]["grad"], tf.ones(3)], lr=0.01)


@pytest.mark.parametrize("jit", [False, True], ids=["native", "xla"])
def test_the_optimizer_groups_8bit_variables_into_one_call(rng, jit):
    """multi_tensor=True (one ApplyRMSpropXMulti for the 8-bit variables; the one 32-bit
    variable alone) gives the bits of multi_tensor=False (both with per-slot 32-bit state:
    flat state under XLA is within XLA's rounding, tests/test_flat_state.py)."""
    inits = [rng.uniform(-1, 1, s).astype(np.float32) for s in [(64, 128), (5000,), (10,),
                                                                 (70, 70)]]
    grads = [[rng.normal(size=x.shape).astype(np.float32) for x in inits] for _ in range(3)]
    out, ops = [], []
    for multi in (False, True):
        vs = [tf.Variable(x) for x in inits]
        opt = RMSpropX(learning_rate=0.01, momentum=0.9, centered=True, state_bits=8,
                       multi_tensor=multi, jit_compile=jit, flat_state=False)

        @tf.function(autograph=False)
        def step(gs):
            opt.apply_gradients(zip(gs, vs))
        for g in grads:
            step([tf.constant(x) for x in g])
        graph = step.get_concrete_function([tf.constant(x) for x in grads[0]]).graph
        ops.append(sorted(op.type for op in graph.get_operations()
                          if op.type.startswith("ApplyRMSpropX")))
        out.append([v.numpy() for v in vs] + [x.numpy() for x in opt.variables])
    for a, b in zip(out[1], out[0]):
        np.testing.assert_array_equal(a, b)
    if not jit:
        # three 8-bit variables in one call; the small one (32-bit state) alone
        assert ops == [["ApplyRMSpropX"] * 4, ["ApplyRMSpropX", "ApplyRMSpropXMulti"]]
