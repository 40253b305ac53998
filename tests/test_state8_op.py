"""ApplyRMSpropX with 8-bit state (state_bits=8, docs/design.md 1.7) on the CPU, against
the reference's 8-bit step (tf_rmsprop_ops.reference.rmsprop_x_step_8bit): every variant,
half / bfloat16 / float32 variables, shapes with partial blocks, rows of several blocks,
scalars, empty and multi-threaded sizes; the zero start; every bad input refused with
nothing written.

What is exact and what is not: the reference takes the dequantized state (exact: one
float32 product per element), updates it in float64 and quantizes the float64 result
rounded to float32; the kernel updates in float32. So var matches within the float
tolerances of the 32-bit-state tests; absmax within float32 rounding of the block's
operands; and a code may differ only by one, where the exact state lies within float32
rounding of the midpoint between the two map entries."""
import numpy as np
import pytest
import tensorflow as tf

import tf_rmsprop_ops
from tf_rmsprop_ops import reference, state8
from tf_rmsprop_ops.state8 import State8

from helpers import RTOL, VARIANTS, as_op_sees, assert_matches, random_hyper, random_state

DTYPES8 = [tf.float16, tf.bfloat16, tf.float32]
# float32 rounding of a state element's few operations (at most ~4 roundings of operands of
# the size of |old| + |new| + |new - old|), with a 2x margin
STATE_RTOL = 8 * 2.0 ** -24


def _quantized_state(rng, shape, dtype, variant):
    """var, grad, the float state, and the states quantized (the op's exact starting state)."""
    state = random_state(rng, shape, dtype, variant)
    q = {k: None if state[k] is None else
         reference.quantize_blockwise(state[k], reference.STATE_SIGNED[k])
         for k in ("ms", "mom", "mg")}
    return state, q


def _variables(state, q, dtype):
    v = {"var": tf.Variable(tf.cast(state["var"], dtype))}
    for k, pair in q.items():
        if pair is not None:
            v[k] = State8(tf.Variable(pair[0]), tf.Variable(pair[1]))
    return v


def _apply(v, grad, variant, hyper, dtype, **extra):
    slots = {k: v[k] for k in ("mom", "mg") if k in v}
    return tf_rmsprop_ops.apply_rmsprop_x(v["var"], v["ms"], tf.cast(grad, dtype), **slots,
                                          **hyper, **variant.op_kwargs(), **extra)


def _snapshot(v):
    out = {"var": v["var"].numpy().copy()}
    for k in ("ms", "mom", "mg"):
        if k in v:
            out[k] = (v[k].codes.numpy().copy(), v[k].absmax.numpy().copy())
    return out


def state_slack(var, grad, floats, **hyper):
    """{state: per-element slack}: what float32 rounding upstream can move each new state by,
    beyond the rounding of its own few operations. The exact step's response to each input
    (var, grad, the dequantized states) scaled by 1 + 4 float32 ulps, summed in absolute
    value: where an intermediate cancels (the centered variance ms - mg^2, a momentum sum),
    float32's rounding of it is relative to its operands, and every later value inherits it."""
    inputs = dict(var=var, grad=grad, **floats)

    def step(var, grad, ms, mom, mg):
        return reference.rmsprop_x_step(var, grad, ms, mom, mg, **hyper)

    base = step(**inputs)
    total = {k: np.zeros(np.shape(base[k])) for k in floats if floats[k] is not None}
    with np.errstate(all="ignore"):
        for name, x in inputs.items():
            if x is None:
                continue
            moved = step(**dict(inputs, **{name: np.asarray(x) * (1 + 2.0 ** -22)}))
            for k in total:
                total[k] += np.nan_to_num(np.abs(moved[k] - base[k]), nan=0.0, posinf=0.0)
    return total


def _per_block_max(x, shape):
    rows, row = reference._rows_of(shape)
    nb = -(-row // 256) if row else 0
    padded = np.zeros((rows, nb * 256))
    padded[:, :row] = np.asarray(x, np.float64).reshape(rows, row)
    return padded.reshape(rows, nb, 256).max(axis=2) if nb else np.zeros((rows, 0))


def _per_element(block_values, shape):
    rows, row = reference._rows_of(shape)
    return np.repeat(block_values, 256, axis=1)[:, :row].reshape(shape)


def assert_state_matches(got, want_q, want_exact, old, signed, what, slack=None):
    """The kernel's new (codes, absmax) against the reference's. Each new state element may
    differ from the exact one by its own float32 rounding (STATE_RTOL of its operands'
    size) plus `slack` (propagated from upstream, `state_slack`); a block's absmax by the
    block's largest such allowance; a code only by one, where the exact value is within that
    allowance (and the absmax's, which moves the normalisation) of the midpoint between the
    two codes' map entries."""
    codes, absmax = got
    wcodes, wabsmax = want_q
    shape = wcodes.shape
    slack = np.zeros(shape) if slack is None else np.asarray(slack, np.float64).reshape(shape)
    allowance = STATE_RTOL * (np.abs(old) + np.abs(want_exact) + np.abs(want_exact - old)) + slack
    block_allowance = _per_block_max(allowance, shape)
    assert codes.dtype == np.uint8 and codes.shape == shape, what
    assert absmax.dtype == np.float32 and absmax.shape == wabsmax.shape, what
    bad = ~(np.abs(absmax.astype(np.float64) - wabsmax) <= block_allowance)
    assert not bad.any(), f"{what} absmax: got {absmax[bad][:3]}, want {wabsmax[bad][:3]}"
    differ = codes != wcodes
    if not differ.any():
        return
    table = reference.dynamic_map(signed).astype(np.float64)
    elem_absmax = _per_element(wabsmax, shape).astype(np.float64)
    lo = np.minimum(codes, wcodes).astype(np.int64)
    adjacent = np.abs(codes.astype(np.int64) - wcodes.astype(np.int64)) == 1
    mid = (table[lo] + table[np.minimum(lo + 1, 255)]) / 2 * elem_absmax
    near_mid = np.abs(want_exact - mid) <= allowance + _per_element(block_allowance, shape)
    ok = ~differ | (adjacent & near_mid)
    assert ok.all(), (f"{what} codes: {np.sum(~ok)} differ by more than the float32 rounding "
                      f"at a midpoint allows; first: got {codes[~ok][:3]}, want {wcodes[~ok][:3]}")


def _check_step(rng, shape, dtype, variant, hyper=None, apply=None):
    """One step (`apply(v, grad, variant, hyper, dtype)`: the op, by default) against the
    reference's 8-bit step."""
    state, q = _quantized_state(rng, shape, dtype, variant)
    hyper = random_hyper(rng, dtype, variant) if hyper is None else hyper
    v = _variables(state, q, dtype)
    (apply or _apply)(v, state["grad"], variant, hyper, dtype)
    want = reference.rmsprop_x_step_8bit(state["var"], state["grad"], q["ms"], q["mom"], q["mg"],
                                         **hyper, **variant.op_kwargs())
    assert_matches({"var": v["var"].numpy().astype(np.float64)}, {"var": want["var"]}, dtype,
                   before={"var": state["var"]}, what=f"{variant} {dtype.name} ")
    floats = {k: None if q[k] is None else reference.dequantize_blockwise(
        *q[k], reference.STATE_SIGNED[k]).astype(np.float64) for k in ("ms", "mom", "mg")}
    slack = state_slack(state["var"], state["grad"], floats, **hyper, **variant.op_kwargs())
    for k in ("ms", "mom", "mg"):
        if q[k] is None:
            assert k not in v
            continue
        old = floats[k]
        assert_state_matches((v[k].codes.numpy(), v[k].absmax.numpy()), want[k],
                             want[k + "_exact"], old, reference.STATE_SIGNED[k], slack=slack[k],
                             what=
                             f"{variant} {dtype.name} {k}")


@pytest.mark.parametrize("dtype", DTYPES8, ids=lambda d: d.name)
@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_every_variant_matches_the_reference(rng, variant, dtype):
    _check_step(rng, (6, 300), dtype, variant)  # rows of a full and a partial block


@pytest.mark.parametrize("shape", [(), (1,), (255,), (257,), (4, 256), (3, 2, 200), (0, 7),
                                   (7, 0), (2000,), (500, 700)],
                         ids=str)
def test_shapes_matches_the_reference(rng, shape):
    variant = next(v for v in VARIANTS if v.centered and v.momentum)
    _check_step(rng, shape, tf.float32, variant)


def test_from_the_zero_state_ten_steps_follow_the_reference_step_by_step(rng):
    """The optimizer's start: every state all zero (absmax 0, the zero code). Each step is
    checked against the reference's step from the op's own previous state."""
    variant = next(v for v in VARIANTS if v.centered and v.momentum and not v.nesterov)
    shape = (9, 520)
    var = tf.Variable(rng.uniform(-2, 2, shape).astype(np.float32))
    v = {"var": var, "ms": state8.zeros(shape, False, "ms"),
         "mom": state8.zeros(shape, True, "mom"), "mg": state8.zeros(shape, True, "mg")}
    for k in ("ms", "mom", "mg"):  # the zero state is what quantizing zeros gives
        want = reference.quantize_blockwise(np.zeros(shape), reference.STATE_SIGNED[k])
        np.testing.assert_array_equal(v[k].codes.numpy(), want[0])
        np.testing.assert_array_equal(v[k].absmax.numpy(), want[1])
    hyper = as_op_sees(dict(lr=0.01, rho=0.9, momentum=0.9, epsilon=1e-7, weight_decay=0.0),
                       tf.float32)
    for step in range(10):
        # gradients over four decades: epsilon and the map's small entries matter
        grad = (rng.normal(size=shape) * 10.0 ** rng.uniform(-4, 0, shape)).astype(np.float32)
        before = _snapshot(v)
        _apply(v, grad, variant, hyper, tf.float32)
        want = reference.rmsprop_x_step_8bit(before["var"], grad, before["ms"], before["mom"],
                                             before["mg"], **hyper, **variant.op_kwargs())
        assert_matches({"var": var.numpy().astype(np.float64)}, {"var": want["var"]},
                       tf.float32, before={"var": before["var"]}, what=f"step {step} ")
        floats = {k: reference.dequantize_blockwise(*before[k], reference.STATE_SIGNED[k])
                  .astype(np.float64) for k in ("ms", "mom", "mg")}
        slack = state_slack(before["var"].astype(np.float64), grad, floats, **hyper,
                            **variant.op_kwargs())
        for k in ("ms", "mom", "mg"):
            signed = reference.STATE_SIGNED[k]
            assert_state_matches((v[k].codes.numpy(), v[k].absmax.numpy()), want[k],
                                 want[k + "_exact"], floats[k], signed, f"step {step} {k}",
                                 slack=slack[k])
    assert np.all(v["ms"].absmax.numpy() > 0)


def test_the_dequantized_state_is_map_times_absmax(rng):
    shape = (3, 600)
    values = rng.normal(size=shape) * 10.0 ** rng.uniform(-6, 0, shape)
    s = state8.from_values(values, signed=True, name="s")
    got = state8.dequantize(s, signed=True).numpy()
    want = reference.dequantize_blockwise(s.codes.numpy(), s.absmax.numpy(), signed=True)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


# --- sparse -----------------------------------------------------------------------------

def _check_sparse(rng, shape, dtype, variant, n_indices, index_dtype=np.int64,
                  sparse_apply=tf_rmsprop_ops.sparse_apply_rmsprop_x):
    state, q = _quantized_state(rng, shape, dtype, variant)
    hyper = random_hyper(rng, dtype, variant)
    # heavy duplicates: about a third of the named rows repeat
    indices = rng.integers(0, shape[0], n_indices).astype(index_dtype)
    grad = np.asarray(tf.cast(rng.uniform(-1, 1, (n_indices,) + shape[1:]), dtype),
                      np.float64)
    v = _variables(state, q, dtype)
    before = _snapshot(v)
    slots = {k: v[k] for k in ("mom", "mg") if k in v}
    sparse_apply(v["var"], v["ms"], tf.cast(grad, dtype), indices, **slots, **hyper,
                 **variant.op_kwargs())
    want = reference.sparse_rmsprop_x_step_8bit(state["var"], grad, indices, q["ms"], q["mom"],
                                                q["mg"], **hyper, **variant.op_kwargs())
    named = np.zeros(shape[0], bool)
    named[indices] = True
    got_var = v["var"].numpy().astype(np.float64)
    slacks = {}  # per named row: the dense step of the row with its summed gradient
    for r in np.flatnonzero(named):
        floats = {k: None if q[k] is None else reference.dequantize_blockwise(
            q[k][0][r:r + 1], q[k][1][r:r + 1], reference.STATE_SIGNED[k])[0].astype(np.float64)
            for k in ("ms", "mom", "mg")}
        slacks[int(r)] = state_slack(state["var"][r], grad[indices == r].sum(axis=0), floats,
                                     **hyper, **variant.op_kwargs())
    np.testing.assert_array_equal(v["var"].numpy()[~named], before["var"][~named])
    if named.any():
        assert_matches({"var": got_var[named]}, {"var": want["var"][named]}, dtype,
                       before={"var": state["var"][named]}, what=f"{variant} {dtype.name} ")
    for k in ("ms", "mom", "mg"):
        if q[k] is None:
            continue
        codes, absmax = v[k].codes.numpy(), v[k].absmax.numpy()
        # rows not named keep their codes and absmax bit for bit
        np.testing.assert_array_equal(codes[~named], before[k][0][~named], err_msg=k)
        np.testing.assert_array_equal(absmax[~named].view(np.uint32),
                                      before[k][1][~named].view(np.uint32), err_msg=k)
        signed = reference.STATE_SIGNED[k]
        for r in np.flatnonzero(named):
            old = reference.dequantize_blockwise(q[k][0][r:r + 1], q[k][1][r:r + 1], signed)
            assert_state_matches((codes[r:r + 1], absmax[r:r + 1]),
                                 (want[k][0][r:r + 1], want[k][1][r:r + 1]),
                                 want[k + "_exact"][int(r)][None], old.astype(np.float64),
                                 signed, f"{variant} {dtype.name} {k} row {r}",
                                 slack=slacks[int(r)][k][None])


@pytest.mark.parametrize("dtype", DTYPES8, ids=lambda d: d.name)
@pytest.mark.parametrize("variant", VARIANTS[::3], ids=str)
def test_sparse_every_variant_matches_the_reference(rng, variant, dtype):
    _check_sparse(rng, (12, 300), dtype, variant, n_indices=10)


@pytest.mark.parametrize("shape, n", [((40, 64), 100), ((6, 2, 300), 4), ((5, 0), 3),
                                      ((300, 513), 700), ((8, 17), 0)], ids=str)
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64], ids=lambda d: d.__name__)
def test_sparse_shapes_and_index_types(rng, shape, n, index_dtype):
    variant = next(v for v in VARIANTS if v.centered and v.momentum)
    _check_sparse(rng, shape, tf.float32, variant, n, index_dtype)


def test_sparse_refuses_a_rank1_var_and_an_out_of_range_index_with_nothing_written(rng):
    variant, state, q, v = _setup(rng)
    before = _snapshot(v)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"indices\[2\] = 5 is not in"):
        tf_rmsprop_ops.sparse_apply_rmsprop_x(v["var"], v["ms"], state["grad"][:3], [0, 3, 5],
                                              mom=v["mom"], **HYPER)
    _assert_untouched(v, before)
    flat_state, flat_q = _quantized_state(rng, (600,), tf.float32, variant)
    flat = _variables(flat_state, flat_q, tf.float32)
    flat_before = _snapshot(flat)
    with pytest.raises(tf.errors.InvalidArgumentError, match="needs var of rank >= 2"):
        tf_rmsprop_ops.sparse_apply_rmsprop_x(flat["var"], flat["ms"], np.ones(2, np.float32),
                                              [0, 3], mom=flat["mom"], **HYPER)
    _assert_untouched(flat, flat_before)


# --- refused inputs: a clear error, nothing written ---------------------------------------

def _setup(rng, shape=(5, 300), dtype=tf.float32, momentum=True):
    variant = next(v for v in VARIANTS if v.momentum == momentum and not v.centered
                   and not v.nesterov and v.weight_decay_mode == "none")
    state, q = _quantized_state(rng, shape, dtype, variant)
    return variant, state, q, _variables(state, q, dtype)


def _assert_untouched(v, before):
    after = _snapshot(v)
    for k, x in before.items():
        for a, b in zip(np.atleast_1d(after[k]) if k == "var" else after[k],
                        np.atleast_1d(x) if k == "var" else x):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=k)


HYPER = dict(lr=0.01, rho=0.9, momentum=0.9, epsilon=1e-7)


@pytest.mark.parametrize("case, message", [
    ("codes_dtype", "8-bit state .state_bits=8. keeps its codes in uint8"),
    ("absmax_dtype", "keeps its codes in uint8 and its absmax in float32"),
    ("absmax_shape", r"slot 'mom absmax' must have shape \[5,2\]"),
    ("absmax_rank1", r"slot 'ms absmax' must have shape \[5,2\]"),
    ("codes_shape", "slot 'ms codes' must have var's shape"),
])
def test_bad_codes_or_absmax_are_refused_with_nothing_written(rng, case, message):
    variant, state, q, v = _setup(rng)
    if case == "codes_dtype":
        v["ms"] = State8(tf.Variable(q["ms"][0].astype(np.float32)), v["ms"].absmax)
    elif case == "absmax_dtype":
        v["mom"] = State8(v["mom"].codes, tf.Variable(q["mom"][1].astype(np.float64)))
    elif case == "absmax_shape":
        v["mom"] = State8(v["mom"].codes, tf.Variable(q["mom"][1][:, :1]))
    elif case == "absmax_rank1":
        v["ms"] = State8(v["ms"].codes, tf.Variable(q["ms"][1].ravel()))
    elif case == "codes_shape":
        v["ms"] = State8(tf.Variable(q["ms"][0][:, :256]), v["ms"].absmax)
    before = _snapshot(v)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match=message):
        _apply(v, state["grad"], variant, HYPER, tf.float32)
    _assert_untouched(v, before)


def test_a_float64_variable_is_refused(rng):
    variant, state, q, v = _setup(rng, dtype=tf.float64)
    before = _snapshot(v)
    with pytest.raises(tf.errors.InvalidArgumentError, match="half, bfloat16 and float32"):
        _apply(v, state["grad"], variant, HYPER, tf.float64)
    _assert_untouched(v, before)


def test_mixed_slot_kinds_are_refused(rng):
    variant, state, q, v = _setup(rng)
    with pytest.raises(TypeError, match="all 32-bit variables or all State8"):
        tf_rmsprop_ops.apply_rmsprop_x(v["var"], v["ms"], state["grad"],
                                       mom=tf.Variable(np.zeros((5, 300), np.float32)), **HYPER)


def test_state_bits_other_than_8_and_32_and_a_wrong_slot_count_are_refused(rng):
    from tf_rmsprop_ops._library import ops as raw
    variant, state, q, v = _setup(rng, momentum=False)
    before = _snapshot(v)
    common = dict(var=v["var"].handle, lr=0.01, rho=0.9, momentum=0.0, epsilon=1e-7,
                  weight_decay=0.0, grad=tf.constant(state["grad"], tf.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="state_bits must be 32"):
        raw.apply_rm_sprop_x(slots=[v["ms"].codes.handle, v["ms"].absmax.handle], state_bits=16,
                             **common)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"expected 2 slot variable\(s\) \[ms codes, ms absmax\]"):
        raw.apply_rm_sprop_x(slots=[v["ms"].codes.handle], state_bits=8, **common)
    _assert_untouched(v, before)


def test_a_nan_gradient_poisons_only_its_block(rng):
    """A NaN gradient element: its block's absmax becomes NaN and its codes the zero code
    (the AVX2 body and the scalar tail alike: the NaN sits in an 8-wide body of a full block
    and in the 3-element tail of a partial one); other blocks stay finite and match the
    reference."""
    variant = next(v for v in VARIANTS if v.momentum and not v.centered and not v.nesterov
                   and v.weight_decay_mode == "none")
    state, q = _quantized_state(rng, (2, 259), tf.float32, variant)  # blocks of 256 and 3
    grad = np.array(state["grad"])
    grad[0, 17] = np.nan
    grad[1, 257] = np.nan
    v = _variables(state, q, tf.float32)
    _apply(v, grad, variant, HYPER, tf.float32)
    for k in ("ms", "mom"):
        signed = reference.STATE_SIGNED[k]
        zero = int(np.flatnonzero(reference.dynamic_map(signed) == 0)[0])
        absmax, codes = v[k].absmax.numpy(), v[k].codes.numpy()
        assert np.isnan(absmax[0, 0]) and np.isnan(absmax[1, 1]), k
        assert np.isfinite(absmax[0, 1]) and np.isfinite(absmax[1, 0]), k
        assert np.all(codes[0, :256] == zero) and np.all(codes[1, 256:] == zero), k
    want = reference.rmsprop_x_step_8bit(state["var"], grad, q["ms"], q["mom"], **HYPER)
    for k in ("ms", "mom"):
        np.testing.assert_array_equal(np.isnan(v[k].absmax.numpy()), np.isnan(want[k][1]))
