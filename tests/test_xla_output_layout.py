"""The XLA lowerings with and without XLA:CPU's multi-output fusion, each in a process of
its own (XLA reads XLA_FLAGS once). Dense: the chain layout by default, independent
outputs with the fusion on (cc/xla/rmsprop_x_xla_math.h), a single loop. Both processes
must compile every variant and dtype, dense and sparse, give the same bits and match the
float64 reference."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tf_rmsprop_ops.benchmark.runner import MULTI_OUTPUT_FUSION_FLAG

from conftest import BASE_SEED
from helpers import RTOL, VARIANTS, assert_matches, reference_dense, reference_sparse
from xla_layout_worker import WIDEST



def _run_worker(tmp_path_factory, xla_flags):
    out = tmp_path_factory.mktemp("xla_layout") / "result.npz"
    env = dict(os.environ, XLA_FLAGS=xla_flags)
    worker = os.path.join(os.path.dirname(__file__), "xla_layout_worker.py")
    proc = subprocess.run([sys.executable, worker, str(BASE_SEED), str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(out) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    return _run_worker(tmp_path_factory, "")


@pytest.fixture(scope="module")
def independent(tmp_path_factory):
    return _run_worker(tmp_path_factory, MULTI_OUTPUT_FUSION_FLAG)


def _entry_loops(hlo):
    """The array-shaped fusions of the entry computation (scalar fusions excluded)."""
    entry = hlo[hlo.index("\nENTRY"):]
    return re.findall(r"= \(?[a-z0-9]+\[\d[^=]*fusion\(", entry)


def test_chain_layout_is_a_loop_per_output_or_more(chain):
    # 4 outputs (var, ms, mom, mg): without multi-output fusion at least one loop each
    # (here also loops for intermediates, e.g. the coupled-decay gradient).
    assert len(_entry_loops(str(chain["widest_dense_hlo"]))) >= 4


def test_independent_layout_is_a_single_loop(independent):
    loops = _entry_loops(str(independent["widest_dense_hlo"]))
    assert len(loops) == 1, loops
    assert "copy(" not in str(independent["widest_dense_hlo"])  # no slot copied before it is overwritten


def _array_copies(hlo):
    entry = hlo[hlo.index("\nENTRY"):]
    # An array-shaped copy: `= f32[7,11]{1,0} copy(` (optimized HLO prints the layout).
    return re.findall(r"= [a-z0-9]+\[\d[^\]]*\](?:\{[^}]*\})? copy\(", entry)


def test_run_time_hyperparameters_add_no_loop_and_no_copy(chain, independent):
    """Hyperparameters known only at run time are guarded (var NaN, slots kept, when one is
    invalid) where the chain computes each output. Guarding the finished outputs instead
    kept the old slots alive past their in-place update: XLA:CPU copied them and
    materialised the step, twice the time (BENCHMARKS.md, profiling log)."""
    for result in (chain, independent):
        constant = str(result["widest_dense_hlo"])
        runtime = str(result["widest_dense_runtime_hlo"])
        assert "select(" in runtime  # the guard is there
        assert len(_entry_loops(runtime)) == len(_entry_loops(constant)), runtime[-3000:]
        assert _array_copies(runtime) == [], runtime[-3000:]


def test_sparse_lowering_is_one_write_back_scatter(chain, independent):
    # var, ms, mom and mg go back in one variadic scatter: with separate scatters sharing
    # the rows, the multi-output fusion merged them into a loop XLA:CPU could not emit.
    for result in (chain, independent):
        hlo = str(result["widest_sparse_hlo"])
        assert re.search(r"= \(f32\[7,11\][^=]*\) scatter\(", hlo), hlo[-3000:]


def test_both_processes_agree(chain, independent):
    # Dense: the two layouts are the same operations on the same values, bit for bit.
    # Sparse: the same HLO, fused differently, so LLVM may contract it differently: within
    # one rounding.
    meta = json.loads(str(chain["meta"]))
    assert json.loads(str(independent["meta"])) == meta  # same seed: same inputs
    for i, case in enumerate(meta):
        what = f"{case['kind']} {case['variant']} {case['dtype']}: "
        if case["kind"] == "dense":
            for field in case["fields"]:
                np.testing.assert_array_equal(independent[f"{i}/out/{field}"],
                                              chain[f"{i}/out/{field}"], err_msg=what + field)
        else:
            dtype = tf.as_dtype(case["dtype"])
            assert_matches({k: independent[f"{i}/out/{k}"] for k in case["fields"]},
                           {k: chain[f"{i}/out/{k}"] for k in case["fields"]}, dtype,
                           rtol=2 * RTOL[dtype], what=what)


def test_multi_output_fusion_results_match_reference(independent):
    # float32/float64 against the float64 reference, step by step (half types round to
    # storage every step; the bit-equality above ties them to the default process, which
    # test_xla.py ties to the CPU kernel).
    variants = {str(v): v for v in VARIANTS + [WIDEST]}
    meta = json.loads(str(independent["meta"]))
    checked = 0
    for i, case in enumerate(meta):
        dtype = tf.as_dtype(case["dtype"])
        if dtype not in (tf.float32, tf.float64):
            continue
        variant = variants[case["variant"]]
        state = {k: independent.get(f"{i}/in/{k}") for k in ("var", "ms", "mom", "mg")}
        steps = 0
        while f"{i}/grad/{steps}" in independent:
            grad = independent[f"{i}/grad/{steps}"]
            if case["kind"] == "sparse":
                new = reference_sparse(state, grad, independent[f"{i}/indices/{steps}"],
                                       variant, case["hyper"])
            else:
                new = reference_dense(dict(state, grad=grad), variant, case["hyper"])
            state.update({k: v for k, v in new.items() if v is not None})
            steps += 1
        got = {k: independent[f"{i}/out/{k}"] for k in case["fields"]}
        assert_matches(got, {k: state[k] for k in case["fields"]}, dtype,
                       rtol=RTOL[dtype] * 2 * steps,
                       what=f"{case['kind']} {case['variant']} {case['dtype']}: ")
        checked += 1
    assert checked == sum(1 for c in meta if c["dtype"] in ("float32", "float64"))
    assert {c["kind"] for c in meta} == {"dense", "sparse"} and checked > len(VARIANTS)
