"""RMSpropX on DTensor meshes (2 logical CPUs, in a subprocess) against plain variables,
eagerly and inside tf.function; the in-graph path for sharded layouts against the
reference."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import BASE_SEED
from helpers import VARIANTS, as_op_sees
from tf_rmsprop_ops import _apply, _dtensor, reference

CASES = ["replicated-eager", "replicated-function", "row_sharded-eager",
         "row_sharded-function", "col_sharded-function"]


def _run_worker(*args):
    worker = os.path.join(os.path.dirname(__file__), "dtensor_worker.py")
    out = subprocess.run([sys.executable, worker, str(BASE_SEED), *args], capture_output=True,
                         text=True, timeout=300)
    lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    assert lines, out.stderr[-3000:]
    return json.loads(lines[0][len("RESULT "):])


@pytest.fixture(scope="module")
def results():
    return _run_worker()


@pytest.fixture(scope="module")
def results8():
    return _run_worker("state8")


@pytest.mark.parametrize("case", CASES)
def test_dense_and_sparse_updates_match_plain_variables(results, case):
    r = results[case]
    assert r["moved"] > 1e-3  # the updates did happen
    # The plain run takes the mesh's gradients (a sharded matmul sums in another order).
    # Replicated layouts and the eager sharded path run the kernels; the in-function sharded
    # path runs the kernels' float32 operations in their order: the same bits everywhere.
    assert r["dense_err"] == 0 and r["sparse_err"] == 0
    assert r["untouched_rows_kept"]  # sparse updates stay lazy on every path
    assert r["iterations"] == 3
    if case.endswith("function"):
        assert r["sparse_gradient"]  # the table's gradient reached us as IndexedSlices


@pytest.mark.parametrize("case", CASES)
def test_slots_share_the_variable_layout_and_nothing_is_gathered(results, case):
    r = results[case]
    assert r["slot_layouts_match"]
    assert r["var_layout_kept"]
    want = {"replicated": [[8, 4]] * 2, "row_sharded": [[4, 4]] * 2,
            "col_sharded": [[8, 2]] * 2}[case.split("-")[0]]
    assert r["shard_shapes"] == want  # each device holds only its shard


def test_checkpoint_restores_a_sharded_optimizer(results):
    r = results["checkpoint"]
    assert r["restored_continues_identically"]
    assert r["restored_iterations"] == 4
    assert r["restored_layout_kept"]


@pytest.mark.parametrize("case", CASES)
def test_8bit_state_on_every_path_matches_plain_variables(results8, case):
    """state_bits=8 on the mesh (a [8, 512] variable, a [8, 300] or [8, 512] table; centered
    momentum: ms, mom and mg 8-bit) against the same optimizer on plain variables. Replicated
    layouts and the eager sharded path run the 8-bit op (per shard: its rows or whole blocks);
    the in-function sharded path dequantizes, steps and requantizes in TensorFlow ops."""
    r = results8[case]
    assert r["eight_bit"] and r["moved"] > 1e-3 and r["iterations"] == 3
    if case.startswith("replicated") or case.endswith("eager"):
        # the same kernel (per shard on the eager sharded path) on the same gradients
        assert r["dense_err"] == 0 and r["sparse_err"] == 0
        assert r["codes_equal"] == 1.0 and r["slot_err"] == 0
    else:
        # The in-function sharded path states the step in TensorFlow ops in the kernels'
        # order (float32 state: the kernels' bits, test_dense_and_sparse_updates_...); with
        # 8-bit state a variable or an absmax may still differ by an ulp (measured:
        # one ulp of the values, 2.4e-7). Each step starts from the same state, so
        # such a difference moves a code at most to its neighbour, once: the slot by at
        # most one gap of the map (<= 0.9/64 = 1.41% of its block's absmax, the signed
        # map's widest), and the variable not at all beyond rounding.
        assert r["dense_err"] < 2e-6 and r["sparse_err"] < 2e-6  # 4 ulp of normal(0, 1) values
        assert r["code_step"] <= 1 and r["codes_equal"] >= 0.999
        assert r["slot_err"] <= 0.9 / 64 * 1.0001
    assert r["untouched_rows_kept"]
    want = {"replicated": ["unsharded", "unsharded"], "row_sharded": ["x", "unsharded"],
            "col_sharded": ["unsharded", "x"]}[case.split("-")[0]]
    # codes in the variable's layout, absmax in the blocks' (the same specs for these)
    assert r["state_layouts"] == [[want, want]] * len(r["state_layouts"])
    assert r["var_layout_kept"]


def test_8bit_state_refuses_a_layout_that_cuts_blocks_and_checkpoints(results8):
    assert "[8, 300]), which cuts its blocks of 256 elements" in results8["refused"]
    assert results8["refused_nothing_built"]
    r = results8["checkpoint"]
    assert r["restored_continues_identically"] and r["restored_iterations"] == 4
    assert r["restored_layout_kept"]


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_in_graph_path_gives_the_kernels_bits(rng, variant, sparse):
    """`_dtensor._tf_ops_step` inside a tf.function (Grappler's arithmetic optimizer on)
    against the op on the same inputs: bit for bit, float32 state."""
    shape = (16, 40)
    init = {k: rng.normal(size=shape).astype(np.float32) for k in ("var", "mom", "mg")}
    init["ms"] = (init["mg"] ** 2 + rng.uniform(0.0, 2.0, size=shape)).astype(np.float32)
    rows = 9 if sparse else shape[0]
    grad = (rng.normal(size=(rows, shape[1])) *
            10.0 ** rng.uniform(-4, 0, size=(rows, shape[1]))).astype(np.float32)
    indices = rng.permutation(shape[0])[:rows] if sparse else None
    hyper = dict(lr=0.05, rho=0.9, momentum=0.8, epsilon=1e-4, weight_decay=0.03)
    structure = _apply.Structure(use_momentum=variant.momentum, centered=variant.centered,
                                 **variant.op_kwargs())
    results = []
    for path in ("tf_ops", "kernel"):
        v = {k: tf.Variable(x) for k, x in init.items()}
        slots = _apply.Slots(v["ms"], v["mom"] if variant.momentum else None,
                             v["mg"] if variant.centered else None)
        g = tf.IndexedSlices(tf.constant(grad), tf.constant(indices)) if sparse else tf.constant(grad)
        if path == "tf_ops":
            scalars = dict(hyper, lr=tf.Variable(hyper["lr"]))  # as the optimizer passes it
            tf.function(lambda: _dtensor._tf_ops_step(
                v["var"], slots, g.values if sparse else g, g.indices if sparse else None,
                structure, scalars))()
        else:
            _apply.apply_update(g, v["var"], slots, structure, hyper)
        results.append({k: x.numpy() for k, x in v.items()})
    for name in results[0]:
        np.testing.assert_array_equal(results[0][name], results[1][name], err_msg=name)


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_in_graph_path_matches_the_reference(rng, variant, sparse):
    """`_dtensor._tf_ops_step` (the sharded-layout path inside tf.function) is a second
    statement of the formula: pin it to the float64 reference on every variant."""
    shape = (6, 3)
    init = {k: rng.normal(size=shape).astype(np.float32) for k in ("var", "mom", "mg")}
    # ms well above mg**2: the centered variance ms - mg**2 is then not a float32
    # cancellation (which no float32 backend can match the float64 reference on).
    init["ms"] = (init["mg"] ** 2 + rng.uniform(0.5, 2.0, size=shape)).astype(np.float32)
    grad = (rng.normal(size=(4, 3) if sparse else shape) *
            10.0 ** rng.uniform(-4, 0, size=(4, 3) if sparse else shape)).astype(np.float32)
    indices = np.array([0, 4, 0, 2])
    variables = {k: tf.Variable(v) for k, v in init.items()}
    slots = _apply.Slots(variables["ms"], variables["mom"] if variant.momentum else None,
                         variables["mg"] if variant.centered else None)
    structure = _apply.Structure(use_momentum=variant.momentum, centered=variant.centered,
                                 **variant.op_kwargs())
    hyper = dict(lr=0.01, rho=0.9, momentum=0.8, epsilon=1e-4, weight_decay=0.03)
    tf.function(lambda: _dtensor._tf_ops_step(
        variables["var"], slots, tf.constant(grad), tf.constant(indices) if sparse else None,
        structure, hyper))()
    f32_hyper = as_op_sees(hyper, tf.float32)
    args = dict(ms=init["ms"], mom=init["mom"] if variant.momentum else None,
                mg=init["mg"] if variant.centered else None, **f32_hyper, **variant.op_kwargs())
    if sparse:
        want = reference.sparse_rmsprop_x_step(init["var"], grad, indices, **args)
    else:
        want = reference.rmsprop_x_step(init["var"], grad, **args)
    for name in ("var", "ms", "mom", "mg"):
        if want[name] is not None:
            # Absolute errors of the operands' size (mom = 0.8 * mom + step and var - step
            # cancel; normal(0, 1) states reach 3), also where a result ends near 0.
            scale = max(1.0, float(np.abs(init[name]).max()), float(np.abs(want[name]).max()))
            np.testing.assert_allclose(variables[name].numpy(), want[name], rtol=2e-6,
                                       atol=2e-6 * scale, err_msg=name)
