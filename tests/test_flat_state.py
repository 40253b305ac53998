"""Flat state buffers: ApplyRMSpropXMulti with `slot_offsets` (one rank-1 buffer per slot
kind) gives the same bits as per-variable slots on the CPU kernel (under XLA: the same up to
XLA's own rounding), touches no element outside the variables' ranges, and rejects bad
layouts before any write; RMSpropX(flat_state=True) trains to the per-variable bits, keeps
per-variable checkpoints, refuses what it cannot honour, and steps with one input per
buffer."""
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
    # Two XLA computations: the same formula, but XLA fuses (and contracts multiply-adds)
    # per computation, so an element may move by an ulp.
    _assert_same(per_var, flat_vars, buffers, offsets, kinds, before, equal=False)
    # ... and the kernel's result within float32 rounding.
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


@pytest.mark.parametrize("jit", [False, True], ids=["kernel", "xla"])
@pytest.mark.parametrize("variant", [v for v in VARIANTS if not v.nesterov], ids=str)
def test_sparse_op_on_a_flat_range_gives_the_per_variable_bits(rng, variant, jit):
    """SparseApplyRMSpropX with `slot_offset`: var's range of each buffer, the rows named
    (duplicates summed) updated as with per-variable slots; every other element of the
    buffers (the other variables' ranges, the padding) untouched."""
    dtype = tf.float32
    shapes = [(3, 5), (40, 6), (7,)]
    states, per_var, flat_vars, buffers, offsets, kinds = _flat_setup(rng, dtype, variant,
                                                                      shapes)
    hyper = random_hyper(rng, dtype, variant)
    before = [b.numpy().copy() for b in buffers]
    ids = rng.integers(0, 40, size=9)
    ids[3] = ids[1]  # a duplicate
    rows = tf.constant(rng.normal(size=(9, 6)).astype(np.float32) * 1e-2)
    one = per_var[1]

    def per_var_call():
        ops.sparse_apply_rmsprop_x(one["var"], one["ms"], rows, ids, mom=one.get("mom"),
                                   mg=one.get("mg"), **hyper, **variant.op_kwargs())

    def flat_call():
        it = iter(buffers)
        ms = next(it)
        mom = next(it) if variant.momentum else None
        mg = next(it) if variant.centered else None
        ops.sparse_apply_rmsprop_x(flat_vars[1], ms, rows, ids, mom=mom, mg=mg,
                                   slot_offset=offsets[1], **hyper, **variant.op_kwargs())

    for call in (per_var_call, flat_call):
        (tf.function(call, jit_compile=True) if jit else call)()
    n = 240
    for k, b, old in zip(kinds, buffers, before):
        got = b.numpy()
        np.testing.assert_array_equal(got[offsets[1] + n:], old[offsets[1] + n:], err_msg=k)
        np.testing.assert_array_equal(got[:offsets[1]], old[:offsets[1]], err_msg=k)
        np.testing.assert_array_equal(got[offsets[1]:offsets[1] + n].reshape(40, 6),
                                      one[k].numpy(), err_msg=k)
    np.testing.assert_array_equal(flat_vars[1].numpy(), one["var"].numpy())


@pytest.mark.parametrize("jit", [False, True], ids=["kernel", "xla"])
@pytest.mark.parametrize("fault", ["unaligned", "too_short", "rank", "negative"])
def test_a_bad_sparse_slot_offset_is_rejected_before_any_write(rng, fault, jit):
    var = tf.Variable(rng.normal(size=(40, 6)).astype(np.float32))
    ms = tf.Variable(np.abs(rng.normal(size=512)).astype(np.float32))
    offset, match, error = 256, None, tf.errors.InvalidArgumentError
    if fault == "unaligned":
        offset, match = 100, "slot_offset = 100 must be a multiple of 256"
    elif fault == "too_short":
        offset, match = 512, r"var \(240 elements at slot_offset = 512\) does not fit"
    elif fault == "negative":
        offset, match = -5, "slot_offset must be -1 .* or >= 0"
    else:
        ms = tf.Variable(np.ones((2, 256), np.float32))
        match = "must be rank 1"
        if jit:
            error = (ValueError, tf.errors.InvalidArgumentError)
    if jit and fault in ("unaligned", "negative"):  # the shape function's, when tracing
        error = (ValueError, tf.errors.InvalidArgumentError)
    before = [var.numpy().copy(), ms.numpy().copy()]

    def call():
        ops.sparse_apply_rmsprop_x(var, ms, tf.ones([2, 6]), tf.constant([1, 5]), lr=0.1,
                                   slot_offset=offset)

    with pytest.raises(error, match=match):
        (tf.function(call, jit_compile=True) if jit else call)()
    np.testing.assert_array_equal(var.numpy(), before[0])
    np.testing.assert_array_equal(ms.numpy(), before[1])


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


# ---- the optimizer: RMSpropX(flat_state=True) -------------------------------------------

from tf_rmsprop_ops import RMSpropX  # noqa: E402
from tf_rmsprop_ops._flat_state import FlatSlot, is_flat  # noqa: E402

MODEL_SHAPES = [(6, 4), (4,), (300,), (2, 5, 7), (1,), (20, 4)]  # the last: an embedding


def _model_problem(rng, steps=4, sparse_table=True):
    init = [rng.normal(size=s).astype(np.float32) for s in MODEL_SHAPES]
    data = []
    for _ in range(steps):
        grads = [tf.constant(rng.normal(size=s).astype(np.float32) * 10.0 ** rng.uniform(-4, 0))
                 for s in MODEL_SHAPES[:-1]]
        if sparse_table:
            ids = rng.integers(0, 20, size=7)
            grads.append(tf.IndexedSlices(
                tf.constant(rng.normal(size=(7, 4)).astype(np.float32) * 1e-3),
                tf.constant(ids), tf.constant([20, 4])))
        else:
            grads.append(tf.constant(rng.normal(size=(20, 4)).astype(np.float32) * 1e-3))
        data.append(grads)
    return init, data


def _train(init, data, function=True, **kwargs):
    variables = [tf.Variable(x, name=f"v{i}") for i, x in enumerate(init)]
    opt = RMSpropX(**kwargs)
    step = (tf.function(lambda g: opt.apply_gradients(zip(g, variables)))
            if function else (lambda g: opt.apply_gradients(zip(g, variables))))
    for grads in data:
        step(grads)
    return variables, opt


def _state(variables, opt):
    out = [v.numpy() for v in variables]
    for v in variables:
        out += [np.asarray(opt.get_slot(v, name)) for name in opt.slot_names]
    return out + [opt.iterations.numpy()]


KWARGS = [dict(learning_rate=0.01, momentum=0.9, centered=True, weight_decay=0.01),
          dict(learning_rate=0.02, initial_scale=1.0, nesterov=True, momentum=0.5),
          dict(learning_rate=0.01, momentum=0.9, jit_compile=True),
          dict(learning_rate=0.01, centered=True, multi_tensor=False),
          dict(learning_rate=0.01, momentum=0.9, state_bits=8, min_8bit_size=100)]


@pytest.mark.parametrize("kwargs", KWARGS, ids=["centered_wd", "nesterov_tf1", "jit",
                                                "per_var_calls", "8bit_mixed"])
@pytest.mark.parametrize("function", [True, False], ids=["function", "eager"])
def test_optimizer_flat_state_gives_the_per_variable_bits(rng, kwargs, function):
    init, data = _model_problem(rng)
    per_var = _state(*_train(init, data, function, flat_state=False, **kwargs))
    variables, opt = _train(init, data, function, flat_state=True, **kwargs)
    flat = _state(variables, opt)
    for i, (a, b) in enumerate(zip(per_var, flat)):
        if kwargs.get("jit_compile"):  # two XLA computations: an ulp here and there
            np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7, err_msg=f"state {i}")
        else:  # the same kernel loop
            np.testing.assert_array_equal(b, a, err_msg=f"state {i}")
    # Which variables went flat: those with 32-bit state (the sparse table too).
    eight_bit = kwargs.get("state_bits") == 8
    for v in variables:
        slot = opt.slot_state(v, "ms")
        want = not (eight_bit and v.shape.num_elements() >= 100)
        assert is_flat(slot) == want, v.name
        if want:
            assert slot.offset % 256 == 0 and slot.shape == v.shape


@pytest.mark.parametrize("multi_tensor,jit", [(True, False), (False, False), (True, True)],
                         ids=["multi", "per_var_calls", "jit"])
def test_flat_state_is_the_default_with_multi_tensor(rng, multi_tensor, jit):
    """Without flat_state the state is flat exactly when the step is one multi-tensor call
    of the native kernels (not under jit_compile); the choice survives get_config /
    from_config."""
    init, _ = _model_problem(rng, steps=1)
    variables = [tf.Variable(x) for x in init]
    opt = RMSpropX(learning_rate=0.01, momentum=0.9, multi_tensor=multi_tensor,
                   jit_compile=jit)
    opt.build(variables)
    flat = multi_tensor and not jit
    assert all(is_flat(opt.slot_state(v, s)) == flat
               for v in variables for s in opt.slot_names)
    assert opt.get_config()["flat_state"] is flat
    assert RMSpropX.from_config(opt.get_config()).flat_state is flat
    assert RMSpropX(flat_state=False).flat_state is False
    assert RMSpropX(flat_state=True, multi_tensor=False).flat_state is True


def test_a_zero_size_variable_keeps_per_variable_state(rng):
    """A variable of no elements has no range of its own (it would share its neighbour's
    offset): it keeps per-variable state, and a step over both, in either order, works."""
    z, b = tf.Variable(tf.zeros([0])), tf.Variable(rng.normal(size=10).astype(np.float32))
    opt = RMSpropX(learning_rate=0.01, momentum=0.9)
    opt.build([z, b])
    assert not is_flat(opt.slot_state(z, "ms")) and is_flat(opt.slot_state(b, "ms"))
    g = rng.normal(size=10).astype(np.float32)
    opt.apply_gradients([(tf.constant(g), b), (tf.zeros([0]), z)])
    ref = RMSpropX(learning_rate=0.01, momentum=0.9, flat_state=False)
    b2 = tf.Variable(b.read_value())
    b.assign(b2)  # the same start: compare one more step from here
    ref.build([b2])
    for o, v in ((opt, b), (ref, b2)):
        o.get_slot(v, "ms").assign(opt.get_slot(b, "ms").numpy())
        o.get_slot(v, "mom").assign(opt.get_slot(b, "mom").numpy())
    opt.apply_gradients([(tf.zeros([0]), z), (tf.constant(g), b)])
    ref.apply_gradients([(tf.constant(g), b2)])
    np.testing.assert_array_equal(b.numpy(), b2.numpy())


def test_a_step_takes_each_buffer_once(rng):
    """The traced step's ApplyRMSpropXMulti takes N variables, N gradients and one buffer per
    slot kind (not N per kind)."""
    init, data = _model_problem(rng, steps=1, sparse_table=False)
    variables = [tf.Variable(x) for x in init]
    opt = RMSpropX(learning_rate=0.01, momentum=0.9, centered=True, flat_state=True)
    step = tf.function(lambda g: opt.apply_gradients(zip(g, variables)))
    graph = step.get_concrete_function(data[0]).graph
    calls = [op for op in graph.get_operations() if op.type == "ApplyRMSpropXMulti"]
    assert len(calls) == 1
    n = len(variables)
    assert calls[0].get_attr("N") == n and calls[0].get_attr("num_slot_inputs") == 3
    assert len(calls[0].inputs) == n + 3 + 5 + n  # vars, buffers, scalars, grads
    assert len(calls[0].get_attr("slot_offsets")) == n


@pytest.mark.parametrize("jit", [False, True], ids=["kernel", "xla"])
def test_sparse_gradients_on_flat_state_give_the_per_variable_bits(rng, jit):
    """Built before any gradient, every variable's state is flat; the table's gradient is
    dense in some steps and an IndexedSlices (duplicate rows included) in others: the
    sparse op runs on its range of each buffer, with the per-variable bits (XLA: within
    XLA's rounding)."""
    init, dense = _model_problem(rng, steps=4, sparse_table=False)
    _, sparse = _model_problem(rng, steps=4, sparse_table=True)
    data = [d if i % 2 == 0 else d[:-1] + [s[-1]] for i, (d, s) in enumerate(zip(dense, sparse))]
    kwargs = dict(learning_rate=0.01, momentum=0.9, centered=True, jit_compile=jit)
    runs = []
    for flat in (False, True):
        variables = [tf.Variable(x) for x in init]
        opt = RMSpropX(flat_state=flat, **kwargs)
        opt.build(variables)
        assert all(is_flat(opt.slot_state(v, "ms")) == flat for v in variables)
        step = tf.function(lambda g, opt=opt, variables=variables:
                           opt.apply_gradients(zip(g, variables)))
        for grads in data:
            step(grads)
        runs.append(_state(variables, opt))
    for i, (a, b) in enumerate(zip(*runs)):
        if jit:
            np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7, err_msg=f"state {i}")
        else:
            np.testing.assert_array_equal(b, a, err_msg=f"state {i}")


def test_flat_state_is_per_variable_under_a_strategy(rng):
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    init, data = _model_problem(rng, steps=2)
    with strategy.scope():
        variables = [tf.Variable(x) for x in init]
        opt = RMSpropX(learning_rate=0.01, momentum=0.9, flat_state=True)
        opt.build(variables)
    assert not any(is_flat(opt.slot_state(v, "ms")) for v in variables)
    for grads in data:
        strategy.run(lambda g: opt.apply_gradients(zip(g, variables)), args=(grads,))
    want = _state(*_train(init, data, learning_rate=0.01, momentum=0.9))
    for a, b in zip(want, _state(variables, opt)):
        np.testing.assert_array_equal(b, a)


def test_get_slot_is_a_view_of_the_buffer(rng):
    init, data = _model_problem(rng, steps=2, sparse_table=False)
    variables, opt = _train(init, data, learning_rate=0.01, momentum=0.9, flat_state=True)
    slot = opt.get_slot(variables[3], "momentum")
    assert isinstance(slot, FlatSlot) and slot.shape == variables[3].shape
    n = variables[3].shape.num_elements()
    np.testing.assert_array_equal(
        slot.numpy(), slot.buffer.numpy()[slot.offset:slot.offset + n].reshape(slot.shape))
    np.testing.assert_array_equal(tf.convert_to_tensor(slot).numpy(), slot.numpy())
    new = rng.normal(size=slot.shape).astype(np.float32)
    others = [opt.get_slot(v, "momentum").numpy() for v in variables]
    slot.assign(new)
    np.testing.assert_array_equal(slot.numpy(), new)
    for i, v in enumerate(variables):  # nothing else moved
        if i != 3:
            np.testing.assert_array_equal(opt.get_slot(v, "momentum").numpy(), others[i])
    with pytest.raises(ValueError, match="shape"):
        slot.assign(np.zeros([3], np.float32))
    # get_weights / set_weights round-trip through the views.
    weights = opt.get_weights()
    opt.set_weights([w + 1 for w in weights])
    for a, b in zip(weights, opt.get_weights()):
        np.testing.assert_array_equal(b, a + 1)


@pytest.mark.parametrize("direction", ["flat_to_per_var", "per_var_to_flat", "flat_to_flat"])
@pytest.mark.parametrize("when", ["built_first", "deferred"])
def test_checkpoints_stay_per_variable(rng, tmp_path, direction, when):
    """A checkpoint of either layout restores into the other (and into another grouping:
    the restoring optimizer builds its variables in two groups), before or after the
    optimizer is built, and training continues to the same bits."""
    init, data = _model_problem(rng, steps=4, sparse_table=False)
    kwargs = dict(learning_rate=0.01, momentum=0.9, centered=True)
    save_flat = direction != "per_var_to_flat"
    load_flat = direction != "flat_to_per_var"
    want_vars, want_opt = _train(init, data, **kwargs)  # uninterrupted
    want = _state(want_vars, want_opt)
    variables, opt = _train(init, data[:2], flat_state=save_flat, **kwargs)
    path = tf.train.Checkpoint(v=variables, opt=opt).save(str(tmp_path / "ck"))
    keys = {name for name, _ in tf.train.list_variables(path)}
    assert "opt/_ms/0/.ATTRIBUTES/VARIABLE_VALUE" in keys
    assert not any("flat" in k for k in keys)  # per-variable entries only
    fresh = [tf.Variable(tf.zeros_like(x)) for x in init]
    opt2 = RMSpropX(flat_state=load_flat, **kwargs)

    def build():
        if direction == "flat_to_flat":  # another grouping: two builds, two buffer sets
            opt2.build(fresh[:3])
        opt2.build(fresh)

    if when == "built_first":
        build()
    status = tf.train.Checkpoint(v=fresh, opt=opt2).restore(path)
    if when == "deferred":
        build()
    status.assert_consumed()
    assert all(is_flat(opt2.slot_state(v, "ms")) == load_flat for v in fresh)
    step = tf.function(lambda g: opt2.apply_gradients(zip(g, fresh)))
    for grads in data[2:]:
        step(grads)
    if direction == "flat_to_flat":
        assert (opt2.slot_state(fresh[0], "ms").buffer is not
                opt2.slot_state(fresh[4], "ms").buffer)
    for i, (a, b) in enumerate(zip(want, _state(fresh, opt2))):
        np.testing.assert_array_equal(b, a, err_msg=f"state {i}")
