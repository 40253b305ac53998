"""Flat state buffers: ApplyRMSpropXMulti with `slot_offsets` (one rank-1 buffer per slot
kind) gives the same bits as per-variable slots on the CPU kernel and under XLA, touches no
element outside the variables' ranges, and rejects bad layouts before any write."""
import numpy as np
import pytest
import tensorflow as tf

from helpers import DTYPES, VARIANTS, make_variables, random_hyper, random_state
from tf_rmsprop_ops import ops

SHAPES = [(0,), (), (7,), (3, 5), (130, 257), (70000,), (2, 3, 4), (256,)]
SLOTS = ("ms", "mom", "mg")


def _flat_setup(rng, dtype, variant, shapes):
    """(states, per-variable variables, flat variables, buffers, offsets); the buffers hold
    each variable's slots at its offset and random padding elsewhere."""
    states = [random_state(rng, s, dtype, variant) for s in shapes]
    per_var = [make_variables(s, dtype) for s in states]
    offsets, total = ops.flat_offsets([int(np.prod(s)) for s in shapes])
    kinds = [k for k in SLOTS if k in per_var[0]]
    buffers = []
    for k in kinds:
        flat = rng.normal(size=total).astype(dtype.as_numpy_dtype)  # padding: random
        if k == "ms":
            flat = np.abs(flat)
        for off, s in zip(offsets, states):
            value = np.asarray(s[k], dtype.as_numpy_dtype).reshape(-1)
            flat[off:off + value.size] = value
        buffers.append(tf.Variable(flat))
    flat_vars = [tf.Variable(tf.cast(s["var"], dtype)) for s in states]
    return states, per_var, flat_vars, buffers, offsets, kinds


def _call_flat(flat_vars, buffers, offsets, states, variant, hyper, dtype):
    return ops.apply_rmsprop_x_multi_flat(
        flat_vars, buffers, offsets, [tf.cast(s["grad"], dtype) for s in states],
        use_momentum=variant.momentum, centered=variant.centered, **hyper,
        **variant.op_kwargs())


def _call_per_var(per_var, states, variant, hyper, dtype):
    slots = [[v[k] for k in SLOTS if k in v] for v in per_var]
    return ops.apply_rmsprop_x_multi(
        [v["var"] for v in per_var], slots, [tf.cast(s["grad"], dtype) for s in states],
        use_momentum=variant.momentum, centered=variant.centered, **hyper,
        **variant.op_kwargs())


def _assert_same(per_var, flat_vars, buffers, offsets, kinds, before_buffers, equal=True):
    check = (np.testing.assert_array_equal if equal else
             lambda a, b, err_msg="": np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7,
                                                                 err_msg=err_msg))
    covered = np.zeros(buffers[0].shape[0], bool)
    for i, (v, fv, off) in enumerate(zip(per_var, flat_vars, offsets)):
        n = int(np.prod(v["var"].shape))
        covered[off:off + n] = True
        check(fv.numpy(), v["var"].numpy(), err_msg=f"var {i}")
        for k, b in zip(kinds, buffers):
            check(b.numpy()[off:off + n].reshape(v[k].shape), v[k].numpy(),
                  err_msg=f"{k} of var {i}")
    for k, b, old in zip(kinds, buffers, before_buffers):  # padding: bit for bit untouched
        np.testing.assert_array_equal(b.numpy()[~covered], old[~covered], err_msg=k)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_flat_buffers_give_the_per_variable_bits(rng, variant, dtype):
    states, per_var, flat_vars, buffers, offsets, kinds = _flat_setup(rng, dtype, variant,
                                                                      SHAPES)
    hyper = random_hyper(rng, dtype, variant)
    before = [b.numpy().copy() for b in buffers]
    _call_per_var(per_var, states, variant, hyper, dtype)
    _call_flat(flat_vars, buffers, offsets, states, variant, hyper, dtype)
    _assert_same(per_var, flat_vars, buffers, offsets, kinds, before)


def test_flat_buffers_under_xla_give_the_per_variable_xla_bits(rng):
    variant = next(v for v in VARIANTS if v.centered and v.momentum and not v.nesterov)
    dtype = tf.float32
    shapes = [(5,), (33, 9), (1000,), (0,), (4, 64)]
    states, per_var, flat_vars, buffers, offsets, kinds = _flat_setup(rng, dtype, variant,
                                                                      shapes)
    hyper = random_hyper(rng, dtype, variant)
    before = [b.numpy().copy() for b in buffers]

    @tf.function(jit_compile=True)
    def per_var_step():
        _call_per_var(per_var, states, variant, hyper, dtype)

    @tf.function(jit_compile=True)
    def flat_step():
        _call_flat(flat_vars, buffers, offsets, states, variant, hyper, dtype)

    per_var_step()
    flat_step()
    _assert_same(per_var, flat_vars, buffers, offsets, kinds, before)
    # ... and the kernel's result within float32 rounding (XLA fuses differently).
    native = [make_variables(s, dtype) for s in states]
    _call_per_var(native, states, variant, hyper, dtype)
    _assert_same(native, flat_vars, buffers, offsets, kinds, before, equal=False)


@pytest.mark.parametrize("jit", [False, True], ids=["kernel", "xla"])
@pytest.mark.parametrize("fault", ["unaligned", "overlap", "descending", "too_short",
                                   "rank", "count", "buffer_count", "grad_shape"])
def test_a_bad_flat_layout_is_rejected_before_any_write(rng, fault, jit):
    variant = next(v for v in VARIANTS if v.momentum and not v.centered and not v.nesterov)
    dtype = tf.float32
    shapes = [(4,), (300,), (6, 2)]
    states, per_var, flat_vars, buffers, offsets, kinds = _flat_setup(rng, dtype, variant,
                                                                      shapes)
    hyper = random_hyper(rng, dtype, variant)
    grads = [tf.constant(s["grad"], dtype) for s in states]
    error, match = tf.errors.InvalidArgumentError, None
    if fault == "unaligned":
        offsets = [0, 256, 700]
        match = r"slot_offsets\[2\] = 700 must be a multiple of 256"
    elif fault == "overlap":
        offsets = [0, 256, 512 - 256]
        match = r"slot_offsets\[2\] = 256 must be >= 556"
    elif fault == "descending":
        offsets = [512, 0, 768]
        match = r"slot_offsets\[1\] = 0 must be >= 516"
    elif fault == "too_short":
        offsets = [0, 256, 1024]
        match = r"vars\[2\] \(12 elements at slot_offsets\[2\] = 1024\) does not fit"
    elif fault == "rank":
        buffers[1] = tf.Variable(tf.zeros([4, 256]))
        match = r"flat 'mom' buffer\) must be rank 1"
    elif fault == "count":
        offsets = offsets[:2]
        error, match = (ValueError, tf.errors.InvalidArgumentError), r"offset"
    elif fault == "buffer_count":
        buffers = buffers[:1]
        error, match = ValueError, r"expected 2 \(ms\[, mom\]\[, mg\]\)"
    else:
        grads[1] = tf.zeros([299])
        match = r"grads\[1\] must have vars\[1\]'s shape"
    before = [v.numpy().copy() for v in flat_vars + buffers]

    def call():
        ops.apply_rmsprop_x_multi_flat(flat_vars, buffers, offsets, grads, use_momentum=True,
                                       **hyper, **variant.op_kwargs())

    if jit and fault in ("rank", "grad_shape"):  # static shapes: the shape function's
        error = (ValueError, tf.errors.InvalidArgumentError)  # error when tracing
    with pytest.raises(error, match=match):
        if jit and fault not in ("count", "buffer_count"):
            tf.function(call, jit_compile=True)()
        else:
            call()
    for v, b in zip(flat_vars + buffers, before):
        np.testing.assert_array_equal(v.numpy(), b)


def test_flat_layout_with_8bit_state_is_refused():
    from tf_rmsprop_ops._library import ops as raw
    var = tf.Variable(tf.ones([4]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="slot_offsets .* take 32-bit"):
        raw.apply_rm_sprop_x_multi(
            vars=[var.handle], slots=[tf.Variable(tf.zeros([256], tf.uint8)).handle,
                                      tf.Variable(tf.zeros([1], tf.float32)).handle],
            lr=0.1, rho=0.9, momentum=0.0, epsilon=1e-7, weight_decay=0.0,
            grads=[tf.ones([4])], num_slots=2, slot_offsets=[0], state_bits=8)


def test_flat_offsets_layout():
    offsets, total = ops.flat_offsets([0, 1, 256, 257, 5])
    assert offsets == [0, 0, 256, 512, 1024] and total == 1280
