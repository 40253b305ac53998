"""RMSpropX(state_bits=8): which variables get 8-bit state, steps against the reference's
8-bit step (dense and IndexedSlices), tf.function, checkpoints, get_slot, the memory it
saves, an accuracy check against float32 state, and the settings it refuses."""
import numpy as np
import pytest
import tensorflow as tf

from tf_rmsprop_ops import RMSpropX, reference, state8

from helpers import assert_matches, as_op_sees
from test_state8_op import assert_state_matches, state_slack

HYPER = dict(learning_rate=0.01, rho=0.9, momentum=0.9, epsilon=1e-7, centered=True)


def _op_hyper():
    return as_op_sees(dict(lr=0.01, rho=0.9, momentum=0.9, epsilon=1e-7, weight_decay=0.0),
                      tf.float32)


def _model(rng):
    return {"kernel": tf.Variable(rng.uniform(-2, 2, (64, 96)).astype(np.float32), name="kernel"),
            "bias": tf.Variable(rng.uniform(-2, 2, (96,)).astype(np.float32), name="bias"),
            "table": tf.Variable(rng.uniform(-2, 2, (200, 64)).astype(np.float32), name="table"),
            "wide": tf.Variable(rng.uniform(-2, 2, (8192,)).astype(np.float64), name="wide")}


def _kinds(opt, variables):
    """State8 or ResourceVariable per variable; 32-bit flat state (FlatSlot, the default
    with multi_tensor) counts as ResourceVariable here: it is the 32-bit format."""
    kinds = {k: type(opt._ms[opt._position(v)]).__name__ for k, v in variables.items()}
    return {k: "ResourceVariable" if t == "FlatSlot" else t for k, t in kinds.items()}


def test_which_variables_get_8bit_state(rng):
    v = _model(rng)
    opt = RMSpropX(state_bits=8, **HYPER)
    opt.build(list(v.values()))
    # kernel 6144 and table 12800 elements >= 4096; bias 96 is small; float64 stays 32-bit
    assert _kinds(opt, v) == {"kernel": "State8", "bias": "ResourceVariable",
                              "table": "State8", "wide": "ResourceVariable"}
    opt = RMSpropX(state_bits=8, min_8bit_size=10000, **HYPER)
    opt.build(list(v.values()))
    assert _kinds(opt, v)["kernel"] == "ResourceVariable" and _kinds(opt, v)["table"] == "State8"
    for how in (dict(var_names=["tab"]), dict(var_list=[v["table"]]),
                dict(predicate=lambda var: var.shape[0] == 200)):
        opt = RMSpropX(state_bits=8, **HYPER)
        opt.exclude_from_8bit_state(**how)
        opt.build(list(v.values()))
        assert _kinds(opt, v)["table"] == "ResourceVariable", how
        assert _kinds(opt, v)["kernel"] == "State8", how
    assert _kinds(RMSpropX(**HYPER), {}) == {}  # default: 32-bit
    opt = RMSpropX(**HYPER)
    opt.build(list(v.values()))
    assert set(_kinds(opt, v).values()) == {"ResourceVariable"}


def test_the_8bit_state_is_a_quarter_of_the_memory(rng):
    v = {"table": tf.Variable(np.zeros((10000, 64), np.float32))}
    sizes = {}
    for bits in (32, 8):
        opt = RMSpropX(state_bits=bits, **HYPER)
        opt.build(list(v.values()))
        sizes[bits] = sum(int(np.prod(x.shape)) * x.dtype.size for x in opt.variables
                          if x.shape.rank)  # slots only (iterations, lr are scalars)
    # codes 1 byte + absmax 4 bytes per 64-element row (one block), for each of 3 states
    assert sizes[8] == 3 * (10000 * 64 + 10000 * 4)
    assert sizes[8] / sizes[32] < 0.27


def _snapshot(opt, var):
    i = opt._position(var)
    return {k: None if s is None else (s.codes.numpy().copy(), s.absmax.numpy().copy())
            for k, s in (("ms", opt._ms[i]), ("mom", opt._mom[i]), ("mg", opt._mg[i]))}


def _check(opt, var, before_var, before, grad, indices=None):
    hyper = _op_hyper()
    if indices is None:
        want = reference.rmsprop_x_step_8bit(before_var, grad, before["ms"], before["mom"],
                                             before["mg"], **hyper)
    else:
        want = reference.sparse_rmsprop_x_step_8bit(before_var, grad, indices, before["ms"],
                                                    before["mom"], before["mg"], **hyper)
    assert_matches({"var": var.numpy().astype(np.float64)}, {"var": want["var"]}, tf.float32,
                   before={"var": before_var})
    after = _snapshot(opt, var)
    floats = {k: reference.dequantize_blockwise(*before[k], reference.STATE_SIGNED[k])
              .astype(np.float64) for k in ("ms", "mom", "mg")}
    if indices is None:
        slack = state_slack(before_var, grad, floats, **hyper)
    for k in ("ms", "mom", "mg"):
        signed = reference.STATE_SIGNED[k]
        if indices is None:
            assert_state_matches(after[k], want[k], want[k + "_exact"], floats[k], signed, k,
                                 slack=slack[k])
            continue
        named = np.unique(indices)
        rest = np.setdiff1d(np.arange(var.shape[0]), named)
        np.testing.assert_array_equal(after[k][0][rest], before[k][0][rest])
        np.testing.assert_array_equal(after[k][1][rest], before[k][1][rest])
        for r in named:
            row = {s: floats[s][r] for s in floats}
            row_slack = state_slack(before_var[r], grad[indices == r].sum(axis=0), row, **hyper)
            assert_state_matches((after[k][0][r:r + 1], after[k][1][r:r + 1]),
                                 (want[k][0][r:r + 1], want[k][1][r:r + 1]),
                                 want[k + "_exact"][int(r)][None], floats[k][r:r + 1], signed,
                                 f"{k} row {r}", slack=row_slack[k][None])


@pytest.mark.parametrize("in_function", [False, True], ids=["eager", "tf.function"])
def test_steps_follow_the_reference_8bit_step_dense_and_sparse(rng, in_function):
    v = _model(rng)
    opt = RMSpropX(state_bits=8, **HYPER)
    step = opt.apply_gradients
    if in_function:
        step = tf.function(lambda pairs: opt.apply_gradients(pairs))
    for _ in range(6):
        kernel_grad = (rng.normal(size=(64, 96)) * 10.0 ** rng.uniform(-4, 0, (64, 96)))
        kernel_grad = kernel_grad.astype(np.float32)
        indices = rng.integers(0, 200, 30)
        rows = rng.normal(size=(30, 64)).astype(np.float32)
        table_grad = tf.IndexedSlices(tf.constant(rows), tf.constant(indices),
                                      tf.constant([200, 64]))
        if opt.built:
            before = {k: (v[k].numpy().astype(np.float64), _snapshot(opt, v[k]))
                      for k in ("kernel", "table")}
        else:  # the zero state (absmax 0, the zero codes), as the optimizer creates it
            before = {k: (v[k].numpy().astype(np.float64),
                          {s: reference.quantize_blockwise(np.zeros(v[k].shape),
                                                           reference.STATE_SIGNED[s])
                           for s in ("ms", "mom", "mg")}) for k in ("kernel", "table")}
        step([(tf.constant(kernel_grad), v["kernel"]), (table_grad, v["table"])])
        _check(opt, v["kernel"], *before["kernel"], kernel_grad)
        summed = rows  # the reference sums duplicates itself
        _check(opt, v["table"], *before["table"], summed, indices)
    assert int(opt.iterations) == 6


def test_get_slot_is_the_dequantized_state(rng):
    v = _model(rng)
    opt = RMSpropX(state_bits=8, **HYPER)
    opt.apply_gradients([(tf.constant(rng.normal(size=(64, 96)), tf.float32), v["kernel"])])
    for name, alias in (("ms", "velocity"), ("mom", "momentum"), ("mg", "average_gradient")):
        s = opt._ms[0] if name == "ms" else (opt._mom[0] if name == "mom" else opt._mg[0])
        want = reference.dequantize_blockwise(s.codes.numpy(), s.absmax.numpy(),
                                              reference.STATE_SIGNED[name])
        got = opt.get_slot(v["kernel"], alias).numpy()
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
        assert np.any(got != 0)


def test_a_checkpoint_resumes_bit_for_bit(rng, tmp_path):
    grads = [rng.normal(size=(64, 96)).astype(np.float32) for _ in range(6)]
    init = rng.uniform(-2, 2, (64, 96)).astype(np.float32)

    def run(steps, var, opt):
        for g in steps:
            opt.apply_gradients([(tf.constant(g), var)])

    straight_var = tf.Variable(init)
    straight = RMSpropX(state_bits=8, **HYPER)
    run(grads, straight_var, straight)

    var = tf.Variable(init)
    opt = RMSpropX(state_bits=8, **HYPER)
    run(grads[:3], var, opt)
    path = tf.train.Checkpoint(var=var, opt=opt).save(str(tmp_path / "ckpt"))
    var2 = tf.Variable(np.zeros_like(init))
    opt2 = RMSpropX(state_bits=8, **HYPER)
    opt2.build([var2])
    tf.train.Checkpoint(var=var2, opt=opt2).restore(path).assert_consumed()
    assert int(opt2.iterations) == 3
    run(grads[3:], var2, opt2)
    np.testing.assert_array_equal(var2.numpy(), straight_var.numpy())
    for a, b in zip(opt2.variables, straight.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_training_ends_close_to_float32_state(rng):
    """A small MLP regression (custom loop, full batch of 8192, hidden 128: its kernel has
    4096 elements, so it gets 8-bit state; 200 RMSprop steps at lr 1e-3, still descending):
    the final loss with 8-bit state against the float32-state run's. Measured over 28 seeds:
    -0.84% .. +0.30% (8-bit state mostly a little lower); the bound leaves 2.4x."""
    x = rng.normal(size=(8192, 32)).astype(np.float32)
    w_true = rng.normal(size=(32, 1)).astype(np.float32)
    y = np.tanh(x @ w_true) + 0.3 * rng.normal(size=(8192, 1)).astype(np.float32)
    w1_0 = (rng.normal(size=(32, 128)) * 0.2).astype(np.float32)
    w2_0 = (rng.normal(size=(128, 1)) * 0.2).astype(np.float32)
    losses = {}
    for bits in (32, 8):
        w1, w2 = tf.Variable(w1_0), tf.Variable(w2_0)
        opt = RMSpropX(learning_rate=1e-3, state_bits=bits)

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((tf.tanh(x @ w1) @ w2 - y) ** 2)
            opt.apply_gradients(zip(tape.gradient(loss, [w1, w2]), [w1, w2]))
            return loss

        for _ in range(200):
            step()
        losses[bits] = float(tf.reduce_mean((tf.tanh(x @ w1) @ w2 - y) ** 2))
        assert isinstance(opt._ms[0], state8.State8) == (bits == 8)
    assert abs(losses[8] - losses[32]) <= 0.02 * losses[32], losses


def test_refused_settings():
    with pytest.raises(ValueError, match="state_bits"):
        RMSpropX(state_bits=16)
    with pytest.raises(ValueError, match="min_8bit_size"):
        RMSpropX(state_bits=8, min_8bit_size=-1)
    opt = RMSpropX(state_bits=8)
    opt.build([tf.Variable(np.zeros((100, 64), np.float32))])
    with pytest.raises(ValueError, match="before the optimizer is built"):
        opt.exclude_from_8bit_state(var_names=["x"])
    assert RMSpropX.from_config(opt.get_config()).state_bits == 8


def test_a_rank1_variable_takes_indexed_slices_densely(rng):
    """A 1-D weight of >= 4096 elements has 8-bit state as one row of blocks; an IndexedSlices
    gradient (tf.gather of it) cannot update it sparsely (neighbours share blocks), so the
    optimizer updates it densely: the reference's dense 8-bit step on the summed gradient."""
    var = tf.Variable(rng.uniform(-2, 2, 5000).astype(np.float32))
    opt = RMSpropX(learning_rate=0.01, state_bits=8)
    idx = rng.integers(0, 5000, 40)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.gather(var, idx) ** 2)
    grad = tape.gradient(loss, var)
    assert isinstance(grad, tf.IndexedSlices)
    before_var = var.numpy().astype(np.float64)
    opt.apply_gradients([(grad, var)])
    dense = np.asarray(tf.convert_to_tensor(grad), np.float64)
    zero = reference.quantize_blockwise(np.zeros(5000), False)
    hyper = as_op_sees(dict(lr=0.01, rho=0.9, epsilon=1e-7), tf.float32)
    want = reference.rmsprop_x_step_8bit(before_var, dense, zero, **hyper)
    assert_matches({"var": var.numpy().astype(np.float64)}, {"var": want["var"]}, tf.float32,
                   before={"var": before_var})


def _refuse(opt, name, monkeypatch):
    """Makes `opt` refuse 8-bit state for variables called `name` (as it refuses a GPU or
    DTensor variable), to test what a refusal leaves behind."""
    decide = opt._selection.bits_for

    def bits_for(var, key, dtensor=False, device=""):
        bits = decide(var, key, dtensor, device)
        if bits == 8 and var.name.startswith(name):
            raise ValueError(f"state_bits=8: {var.name} refused")
        return bits
    monkeypatch.setattr(opt._selection, "bits_for", bits_for)


def test_a_refused_build_changes_nothing_and_an_exclusion_then_works(monkeypatch):
    small = tf.Variable(np.zeros((10,), np.float32), name="small")
    big = tf.Variable(np.zeros((100, 64), np.float32), name="big")
    opt = RMSpropX(state_bits=8)
    _refuse(opt, "big", monkeypatch)
    with pytest.raises(ValueError, match="big:0 refused"):
        opt.build([small, big])
    assert not opt.built and opt.variables == [opt.iterations, opt._learning_rate]
    opt.exclude_from_8bit_state(var_names=["big"])
    opt.build([small, big])
    assert not any(v.dtype == tf.uint8 for v in opt.variables)
    assert opt.get_slot(big, "ms").shape == (100, 64)


@pytest.mark.parametrize("shape, specs, want", [
    ((8, 300), ["unsharded", "unsharded"], ["unsharded", "unsharded"]),
    ((8, 300), ["x", "unsharded"], ["x", "unsharded"]),      # whole rows per device
    ((8, 512), ["unsharded", "x"], ["unsharded", "x"]),      # 256 per device: whole blocks
    ((8, 300), ["unsharded", "x"], None),                     # 150 per device: cut blocks
    ((1024,), ["x"], ["unsharded", "x"]),                     # rank 1: one row of 4 blocks
    ((300,), ["x"], None),
    ((4, 4, 128), ["unsharded", "x", "unsharded"], ["unsharded", "x"]),  # 2 x 128 per device
    ((4, 2, 256), ["unsharded", "unsharded", "x"], None),    # interleaved within the row
    ((4, 2, 256), ["unsharded", "unsharded", "y"], ["unsharded", "unsharded"]),  # y: 1 device
], ids=str)
def test_dtensor_absmax_layout_keeps_blocks_whole_or_refuses(shape, specs, want):
    """The DTensor layouts 8-bit state takes (tests/test_dtensor.py runs them): the absmax
    is sharded as the blocks are; a layout that would cut a block between devices is a
    ValueError naming the variable and its layout."""
    import types
    from tensorflow.experimental import dtensor
    from tf_rmsprop_ops import _dtensor
    mesh = dtensor.create_mesh([("x", 2), ("y", 1)], devices=["CPU:0", "CPU:1"])
    var = types.SimpleNamespace(layout=dtensor.Layout(specs, mesh), name="v:0",
                                shape=tf.TensorShape(shape))
    if want is None:
        with pytest.raises(ValueError, match=r"v:0 has layout .* cuts its blocks of 256"):
            _dtensor.state8_absmax_layout(var)
    else:
        assert list(_dtensor.state8_absmax_layout(var).sharding_specs) == want


@pytest.mark.parametrize("build_inside_run", [False, True], ids=["built", "lazy"])
def test_mirrored_replicas_identical_and_equal_one_device(rng, build_inside_run):
    """MirroredStrategy (2 CPUs): the codes and absmax are mirrored like their variable,
    every replica holds the same bits, equal to one device applying the summed gradients."""
    from test_distribute import DIM, KWARGS, ROWS, _components, _data, _mirrored_run, \
        _one_device_run
    kwargs = dict(KWARGS, state_bits=8, min_8bit_size=0)
    init_w = rng.normal(size=(DIM, 3)).astype(np.float32)
    init_t = rng.normal(size=(ROWS, DIM)).astype(np.float32)
    data = _data(rng, 4)
    strategy, w, table, opt = _mirrored_run(init_w, init_t, data, kwargs, build_inside_run)
    ref_w, ref_t, ref_opt = _one_device_run(init_w, init_t, data, kwargs)
    assert int(opt.iterations.numpy()) == 4
    for var, ref in ((w, ref_w), (table, ref_t)):
        copies = _components(strategy, var)
        np.testing.assert_array_equal(copies[0], copies[1])
        np.testing.assert_array_equal(copies[0], ref.numpy())
        for kind in opt.slot_names:
            state = {"ms": opt._ms, "mom": opt._mom, "mg": opt._mg}[kind][opt._position(var)]
            single = {"ms": ref_opt._ms, "mom": ref_opt._mom,
                      "mg": ref_opt._mg}[kind][ref_opt._position(ref)]
            assert isinstance(state, state8.State8)
            for part in ("codes", "absmax"):
                mirrored = getattr(state, part)
                assert isinstance(mirrored, tf.distribute.DistributedValues), part
                got = _components(strategy, mirrored)
                np.testing.assert_array_equal(got[0], got[1], err_msg=f"{kind} {part}")
                np.testing.assert_array_equal(got[0], getattr(single, part).numpy(),
                                              err_msg=f"{kind} {part}")
    assert np.max(np.abs(_components(strategy, w)[0] - init_w)) > 1e-3  # it trained


def test_a_shard_decides_by_its_sharded_variable():
    """A ShardedVariable's shards take 8-bit state when the whole table is large enough
    (bitsandbytes#2080: deciding per shard changed the numerics with the sharding)."""
    from tensorflow.python.distribute import sharded_variable
    shards = [tf.Variable(np.ones((30, 64), np.float32), name=f"table/part_{i}")
              for i in range(2)]
    table = sharded_variable.ShardedVariable(shards)
    assert table.shape == (60, 64)
    selection = state8.Selection(8, min_8bit_size=3000)  # a shard has 1920 elements
    assert [selection.bits_for(s, i) for i, s in enumerate(shards)] == [8, 8]
    assert state8.Selection(8, min_8bit_size=4000).bits_for(shards[0], 0) == 32


def test_a_gpu_variable_is_refused_by_name_without_gpu_kernels(monkeypatch):
    from tf_rmsprop_ops import _library
    selection = state8.Selection(8)
    var = tf.Variable(np.zeros((100, 64), np.float32))
    gpu = "/job:localhost/replica:0/task:0/device:GPU:0"
    monkeypatch.setattr(_library, "GPU_KERNELS", "OFF (GPU=0)")
    with pytest.raises(ValueError, match=r"on /job.*GPU:0, and this build of tf_rmsprop_ops "
                                         r"has no GPU kernels \(GPU_KERNELS: OFF \(GPU=0\)\)"):
        selection.bits_for(var, 0, False, gpu)
    assert selection.bits_for(var, 0, False, var.device) == 8
    # A build with GPU kernels has the 8-bit ones too (.ci/gpu_build_check.sh registers them)
    monkeypatch.setattr(_library, "GPU_KERNELS", "ON (nvcc, sm_90)")
    assert selection.bits_for(var, 0, False, gpu) == 8


def test_every_copy_of_a_mirrored_variable_is_checked():
    """The state format is decided on every copy's device: a variable mirrored on a CPU and
    a GPU has a copy on the GPU (with no GPU kernels in this build): refused."""
    from test_distribute import _strategy
    from tf_rmsprop_ops import _distribute
    with _strategy().scope():
        var = tf.Variable(np.zeros((100, 64), np.float32))
    devices = _distribute.devices_of(var)
    assert "CPU:0" in devices and "CPU:1" in devices, devices
    selection = state8.Selection(8)
    assert selection.bits_for(var, 0, False, devices) == 8
    with pytest.raises(ValueError, match="has no GPU kernels"):
        selection.bits_for(var, 0, False, devices + " /job:localhost/replica:0/task:0/device:GPU:0")
