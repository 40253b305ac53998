"""Every bad input is a clear TensorFlow error and leaves var and slots bit-identical."""
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

import tf_rmsprop_ops
from tf_rmsprop_ops._library import ops as raw


def _vars(rng, shape=(4, 3), dtype=tf.float32, n=3):
    return [tf.Variable(tf.cast(rng.uniform(0.1, 1, shape), dtype)) for _ in range(n)]


def _snapshot(variables):
    return [v.numpy().copy() for v in variables]


def _assert_unchanged(variables, before):
    for v, b in zip(variables, before):
        np.testing.assert_array_equal(v.numpy(), b)


def _raw_dense(var, slots, grad, dtype=tf.float32, **attrs):
    s = lambda x: tf.constant(x, dtype)  # noqa: E731
    return raw.apply_rm_sprop_x(var=var.handle, slots=[v.handle for v in slots], lr=s(0.1),
                                rho=s(0.9), momentum=s(0.5), epsilon=s(1e-7),
                                weight_decay=s(0.0), grad=grad, **attrs)


def _raw_sparse(var, slots, grad, indices, dtype=tf.float32, **attrs):
    s = lambda x: tf.constant(x, dtype)  # noqa: E731
    return raw.sparse_apply_rm_sprop_x(var=var.handle, slots=[v.handle for v in slots],
                                       lr=s(0.1), rho=s(0.9), momentum=s(0.5),
                                       epsilon=s(1e-7), weight_decay=s(0.0), grad=grad,
                                       indices=indices, **attrs)


# ---- dense ---------------------------------------------------------------------------------

def test_grad_shape_mismatch(rng):
    var, ms = _vars(rng, n=2)
    before = _snapshot([var, ms])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"grad must have var's shape"):
        tf_rmsprop_ops.apply_rmsprop_x(var, ms, tf.ones((4, 2)), lr=0.1)
    _assert_unchanged([var, ms], before)


def test_slot_shape_mismatch(rng):
    var, ms = _vars(rng, n=2)
    mom = tf.Variable(tf.ones((3, 4)))
    before = _snapshot([var, ms, mom])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"slot 'mom' must have var's shape"):
        tf_rmsprop_ops.apply_rmsprop_x(var, ms, tf.ones((4, 3)), mom=mom, lr=0.1, momentum=0.9)
    _assert_unchanged([var, ms, mom], before)


@pytest.mark.parametrize("name", ["lr", "rho", "momentum", "epsilon", "weight_decay"])
def test_non_scalar_hyperparameter(name, rng):
    var, ms = _vars(rng, n=2)
    before = _snapshot([var, ms])
    kwargs = dict(lr=0.1, rho=0.9, momentum=0.0, epsilon=1e-7, weight_decay=0.0)
    kwargs[name] = [kwargs[name], kwargs[name]]
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"{name} must be a scalar"):
        tf_rmsprop_ops.apply_rmsprop_x(var, ms, tf.ones((4, 3)), **kwargs)
    _assert_unchanged([var, ms], before)


def test_uninitialised_variable(rng):
    var = _vars(rng, n=1)[0]
    handle = tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[4, 3], shared_name="never_assigned")
    before = _snapshot([var])
    with pytest.raises(tf.errors.FailedPreconditionError, match=r"slot 'ms'"):
        tf_rmsprop_ops.apply_rmsprop_x(var, handle, tf.ones((4, 3)), lr=0.1)
    _assert_unchanged([var], before)


def test_dtype_mismatch_is_an_error_not_a_crash(rng):
    # T=float but the variables hold double: TF's helpers would CHECK-fail; we must not.
    var, ms = _vars(rng, dtype=tf.float64, n=2)
    before = _snapshot([var, ms])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"var has dtype double but the op's T is float"):
        _raw_dense(var, [ms], tf.ones((4, 3)))
    _assert_unchanged([var, ms], before)


def test_slot_dtype_mismatch(rng):
    var = _vars(rng, n=1)[0]
    ms = _vars(rng, dtype=tf.float16, n=1)[0]
    before = _snapshot([var, ms])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"slot 'ms' has dtype half"):
        _raw_dense(var, [ms], tf.ones((4, 3)))
    _assert_unchanged([var, ms], before)


def test_missing_slot_for_enabled_feature(rng):
    var, ms = _vars(rng, n=2)
    before = _snapshot([var, ms])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"expected 2 slot variable\(s\) \[ms, mom\]"):
        _raw_dense(var, [ms], tf.ones((4, 3)), use_momentum=True)
    _assert_unchanged([var, ms], before)


def test_extra_slot_for_disabled_feature(rng):
    var, ms, mg = _vars(rng, n=3)
    before = _snapshot([var, ms, mg])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"expected 1 slot variable\(s\) \[ms\]"):
        _raw_dense(var, [ms, mg], tf.ones((4, 3)))
    _assert_unchanged([var, ms, mg], before)


def test_nesterov_without_momentum(rng):
    var, ms = _vars(rng, n=2)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"nesterov=True requires use_momentum"):
        tf_rmsprop_ops.apply_rmsprop_x(var, ms, tf.ones((4, 3)), lr=0.1, nesterov=True)


def test_shape_function_rejects_mismatch_in_graph(rng):
    var, ms = _vars(rng, n=2)

    @tf.function
    def step():
        tf_rmsprop_ops.apply_rmsprop_x(var, ms, tf.ones((5, 3)), lr=0.1)

    with pytest.raises(ValueError, match=r"grad must have var's shape: Dimension 0 in both "
                                         r"shapes must be equal"):
        step()


def _graph_error(fn):
    """The error a graph-mode call raises while its op is added (the shape function)."""
    with tf.Graph().as_default():
        with pytest.raises(ValueError) as info:
            fn()
    return str(info.value)


def test_shape_function_errors_name_the_input():
    mk = lambda shape: tf.Variable(tf.ones(shape))  # noqa: E731
    in_graph = lambda f: _graph_error(lambda: f(*[mk(s) for s in ((4, 3), (4, 3), (3, 4))]))  # noqa: E731
    assert "slot 'mom' must have var's shape" in in_graph(
        lambda v, ms, mom: tf_rmsprop_ops.apply_rmsprop_x(v, ms, tf.ones((4, 3)), mom=mom,
                                                          lr=0.1, momentum=0.9))
    assert "lr must be a scalar" in in_graph(
        lambda v, ms, _: tf_rmsprop_ops.apply_rmsprop_x(v, ms, tf.ones((4, 3)), lr=[0.1, 0.2]))
    assert "indices must be a vector" in in_graph(
        lambda v, ms, _: tf_rmsprop_ops.sparse_apply_rmsprop_x(
            v, ms, tf.ones((2, 3)), tf.constant([[0, 1]]), lr=0.1))
    assert "grad must have one row per entry of indices" in in_graph(
        lambda v, ms, _: tf_rmsprop_ops.sparse_apply_rmsprop_x(
            v, ms, tf.ones((3, 3)), tf.constant([0, 1]), lr=0.1))
    assert "grad rows must have shape var.shape[1:]" in in_graph(
        lambda v, ms, _: tf_rmsprop_ops.sparse_apply_rmsprop_x(
            v, ms, tf.ones((2, 4)), tf.constant([0, 1]), lr=0.1))
    assert "grads[1] must have vars[1]'s shape" in in_graph(
        lambda v, ms, w: tf_rmsprop_ops.ops.apply_rmsprop_x_multi(
            [v, w], [[ms], [mk((3, 4))]], [tf.ones((4, 3)), tf.ones((4, 3))], lr=0.1))


# ---- sparse --------------------------------------------------------------------------------

@pytest.mark.parametrize("index_dtype", [tf.int32, tf.int64])
@pytest.mark.parametrize("bad", [-1, 4, 1000])
def test_index_out_of_range_names_offset_and_value(bad, index_dtype, rng):
    var, ms = _vars(rng, n=2)
    before = _snapshot([var, ms])
    indices = tf.constant([0, 2, bad, 1], index_dtype)
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"indices\[2\] = {bad} is not in \[0, 4\)"):
        _raw_sparse(var, [ms], tf.ones((4, 3)), indices)  # the kernel's check
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"indices\[2\] = {bad} is not in \[0, 4\)"):
        tf_rmsprop_ops.sparse_apply_rmsprop_x(var, ms, tf.ones((4, 3)), indices, lr=0.1)
    _assert_unchanged([var, ms], before)


def test_out_of_range_after_valid_rows_writes_nothing(rng):
    # Validation precedes every write: earlier valid rows stay untouched too.
    var, ms = _vars(rng, shape=(1000, 8), n=2)
    before = _snapshot([var, ms])
    indices = tf.constant(list(range(999)) + [1000])

    @tf.function  # the values are not static here: the kernel itself must refuse
    def step(idx):
        _raw_sparse(var, [ms], tf.ones((1000, 8)), idx)

    with pytest.raises(tf.errors.InvalidArgumentError, match=r"indices\[999\] = 1000"):
        step(indices)
    _assert_unchanged([var, ms], before)


@pytest.mark.parametrize("grad_shape, indices, message", [
    ((4, 3), [[0, 1], [2, 3]], r"indices must be a vector"),
    ((3, 3), [0, 1], r"grad has 3 rows but indices has 2"),
    ((2, 2), [0, 1], r"grad rows must have shape var.shape\[1:\] = \[3\], got \[2\]"),
], ids=["index_rank", "length_mismatch", "row_shape_mismatch"])
def test_sparse_shape_errors(grad_shape, indices, message, rng):
    var, ms = _vars(rng, n=2)
    before = _snapshot([var, ms])
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        _raw_sparse(var, [ms], tf.ones(grad_shape), tf.constant(indices))
    _assert_unchanged([var, ms], before)


def test_scalar_var_cannot_take_rows():
    var, ms = tf.Variable(1.0), tf.Variable(0.5)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"var must have rank >= 1"):
        _raw_sparse(var, [ms], tf.ones((1,)), tf.constant([0]))
    assert var.numpy() == 1.0 and ms.numpy() == 0.5


def test_sparse_dtype_mismatch_is_an_error_not_a_crash(rng):
    var, ms = _vars(rng, dtype=tf.float64, n=2)
    before = _snapshot([var, ms])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"var has dtype double"):
        _raw_sparse(var, [ms], tf.ones((2, 3)), tf.constant([0, 1]))
    _assert_unchanged([var, ms], before)


@pytest.mark.parametrize("alias", ["ms_is_var", "mom_is_ms", "mg_is_var"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_a_slot_aliasing_another_state_variable_is_rejected(alias, sparse, rng):
    """An alias would be read and written as two arrays at once: InvalidArgument naming
    both, and nothing written."""
    init = rng.normal(size=(6, 3)).astype(np.float32)
    var = tf.Variable(init)
    ms, mom, mg = (tf.Variable(np.abs(init) + 1), tf.Variable(np.zeros_like(init)),
                   tf.Variable(np.zeros_like(init)))
    slots = dict(ms=ms, mom=mom, mg=mg)
    if alias == "ms_is_var":
        slots["ms"], names = var, ("var", "slot 'ms'")
    elif alias == "mom_is_ms":
        slots["mom"], names = ms, ("slot 'ms'", "slot 'mom'")
    else:
        slots["mg"], names = var, ("var", "slot 'mg'")
    before = [v.numpy().copy() for v in (var, ms, mom, mg)]
    ms_arg = slots.pop("ms")
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=f"{names[0]} and {names[1]} are the same variable"):
        if sparse:
            tf_rmsprop_ops.sparse_apply_rmsprop_x(var, ms_arg, init[:2], [1, 4], lr=0.1,
                                                  momentum=0.9, **slots)
        else:
            tf_rmsprop_ops.apply_rmsprop_x(var, ms_arg, init, lr=0.1, momentum=0.9, **slots)
    for v, b in zip((var, ms, mom, mg), before):
        np.testing.assert_array_equal(v.numpy(), b)


def test_a_second_copy_of_the_library_is_an_import_error_not_an_abort(tmp_path):
    """TensorFlow aborts the process when the same ops are registered twice (an installed
    package and a checkout in one process). The loader refuses with an ImportError; the
    subprocess shows the process survives it (an abort would be a signal exit)."""
    import subprocess
    import sys
    from tf_rmsprop_ops import _library
    copy = tmp_path / os.path.basename(_library.LIBRARY_PATH)
    shutil.copyfile(_library.LIBRARY_PATH, copy)
    script = (
        "import tf_rmsprop_ops\n"
        "from tf_rmsprop_ops import _library\n"
        "try:\n"
        f"    _library._load({str(copy)!r})\n"
        "except ImportError as e:\n"
        "    print('REFUSED', e)\n"
        "_library._load()  # the package's own path again: fine\n"
        "print('ALIVE')\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "REFUSED" in out.stdout and "another copy of the op library" in out.stdout
    assert os.path.realpath(_library.LIBRARY_PATH) in out.stdout and "ALIVE" in out.stdout


@pytest.mark.parametrize("name", ["learning_rate", "rho", "momentum", "epsilon", "weight_decay"])
def test_python_checks_and_the_op_share_one_rule(name, rng):
    """The optimizers' Python check (`_hyper.check`) and the ops' CheckHyperParams
    (C++) accept and reject the same values: one rule, two places, pinned here. float64
    variables, so the op reads each value exactly as Python holds it."""
    from tf_rmsprop_ops import _hyper
    tiny = np.finfo(np.float64).tiny
    values = [-1.0, -tiny, -tiny / 4, -0.0, 0.0, tiny / 4, 1e-300, 0.5, 1.0,
              float(np.nextafter(1.0, 2.0)), 2.0, 1e300, float("inf"), float("-inf"),
              float("nan")]
    op_name = "lr" if name == "learning_rate" else name
    for value in values:
        try:
            _hyper.check(name, value)
            python_ok = True
        except ValueError:
            python_ok = False
        var, ms = _vars(rng, dtype=tf.float64, n=2)
        before = _snapshot([var, ms])
        hyper = dict(lr=0.1, rho=0.9, momentum=0.0, epsilon=1e-7, weight_decay=0.0)
        hyper[op_name] = value
        try:
            tf_rmsprop_ops.apply_rmsprop_x(var, ms, tf.constant(rng.uniform(-1, 1, (4, 3))),
                                           **hyper)
            op_ok = True
        except tf.errors.InvalidArgumentError:
            op_ok = False
            _assert_unchanged([var, ms], before)
        assert python_ok == op_ok, (name, value, python_ok, op_ok)
