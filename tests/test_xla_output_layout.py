"""The dense XLA lowering's two output layouts (cc/xla/rmsprop_x_xla_math.h): the chain by
default, independent outputs when XLA:CPU's multi-output fusion is on. Each runs in a
process of its own (XLA reads XLA_FLAGS once); both must give the same bits, match the
float64 reference, and the independent layout must compile to a single loop."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import BASE_SEED
from helpers import RTOL, VARIANTS, assert_matches, reference_dense
from xla_layout_worker import WIDEST

MULTI_OUTPUT_FUSION = "--xla_backend_extra_options=xla_cpu_use_multi_output_fusion"


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
    return _run_worker(tmp_path_factory, MULTI_OUTPUT_FUSION)


def _entry_loops(hlo):
    """The array-shaped fusions of the entry computation (scalar fusions excluded)."""
    entry = hlo[hlo.index("\nENTRY"):]
    return re.findall(r"= \(?[a-z0-9]+\[\d[^=]*fusion\(", entry)


def test_chain_layout_is_a_loop_per_output_or_more(chain):
    # 4 outputs (var, ms, mom, mg): without multi-output fusion at least one loop each
    # (here also loops for intermediates, e.g. the coupled-decay gradient).
    assert len(_entry_loops(str(chain["widest_hlo"]))) >= 4


def test_independent_layout_is_a_single_loop(independent):
    loops = _entry_loops(str(independent["widest_hlo"]))
    assert len(loops) == 1, loops
    assert "copy(" not in str(independent["widest_hlo"])  # no slot copied before it is overwritten


def test_both_layouts_give_the_same_bits(chain, independent):
    meta = json.loads(str(chain["meta"]))
    assert json.loads(str(independent["meta"])) == meta  # same seed: same inputs
    for i, case in enumerate(meta):
        for field in case["fields"]:
            np.testing.assert_array_equal(independent[f"{i}/out/{field}"],
                                          chain[f"{i}/out/{field}"],
                                          err_msg=f"{case['variant']} {case['dtype']} {field}")


def test_independent_layout_matches_reference(independent):
    # float32/float64 against the float64 reference, step by step (half types round to
    # storage every step; the bit-equality above ties them to the chain, which
    # test_xla.py ties to the CPU kernel).
    variants = {str(v): v for v in VARIANTS + [WIDEST]}
    meta = json.loads(str(independent["meta"]))
    checked = 0
    for i, case in enumerate(meta):
        dtype = tf.as_dtype(case["dtype"])
        if dtype not in (tf.float32, tf.float64):
            continue
        state = {k: independent.get(f"{i}/in/{k}") for k in ("var", "ms", "mom", "mg")}
        steps = 0
        while f"{i}/grad/{steps}" in independent:
            state["grad"] = independent[f"{i}/grad/{steps}"]
            state.update({k: v for k, v in
                          reference_dense(state, variants[case["variant"]], case["hyper"]).items()
                          if v is not None})
            steps += 1
        got = {k: independent[f"{i}/out/{k}"] for k in case["fields"]}
        assert_matches(got, {k: state[k] for k in case["fields"]}, dtype,
                       rtol=RTOL[dtype] * 2 * steps, what=f"{case['variant']} {case['dtype']}: ")
        checked += 1
    assert checked == len(VARIANTS) + 2
