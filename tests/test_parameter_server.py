"""RMSpropX under ParameterServerStrategy (in-process cluster: 2 workers, 1 or 2 parameter
servers, steps scheduled by a ClusterCoordinator; in a subprocess, see ps_worker.py).
The updates run on the parameter servers (TensorFlow's placement log), slots live with
their variable (each shard of a partitioned table has its own), and the result equals one
device applying the gradients the workers computed."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import BASE_SEED
from tf_rmsprop_ops import RMSpropX

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ps_worker.py")
TIMEOUT_S = 180
STEPS = 3
KWARGS = dict(learning_rate=0.02, momentum=0.9, centered=True, epsilon=1e-6)
UPDATE_OPS = sorted(["ApplyRMSpropX", "SparseApplyRMSpropX"])


def _run_worker(num_ps, cases):
    proc = subprocess.Popen(
        [sys.executable, WORKER, str(BASE_SEED), str(num_ps), ",".join(cases)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES=""))
    try:
        try:
            out, err = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"ps_worker.py did not finish in {TIMEOUT_S} s:\n{err[-3000:]}")
        lines = [l for l in out.splitlines() if l.startswith("RESULT ")]
        assert proc.returncode == 0 and lines, (
            f"ps_worker.py exited with {proc.returncode}:\n{err[-3000:]}")
        return json.loads(lines[0][len("RESULT "):])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def two_ps():
    return _run_worker(2, ["dense_and_sparse", "sharded", "xla", "state8_sharded"])


@pytest.fixture(scope="module")
def one_ps():
    return _run_worker(1, ["xla"])


def _one_device_run(r, **extra):
    """One device applying the gradients the workers fetched, step by step; a partitioned
    table's per-shard IndexedSlices become one (indices shifted by the shard's offset)."""
    offsets = np.cumsum([0] + r["part_rows"])[:-1]
    w, table = tf.Variable(np.float32(r["init_w"])), tf.Variable(np.float32(r["init_t"]))
    opt = RMSpropX(**KWARGS, **extra)
    for g in r["grads"]:
        values = np.concatenate([np.float32(p["values"]).reshape(-1, table.shape[1])
                                 for p in g["parts"]])
        indices = np.concatenate([np.int64(p["indices"]) + off
                                  for p, off in zip(g["parts"], offsets)])
        opt.apply_gradients([
            (tf.constant(np.float32(g["w"])), w),
            (tf.IndexedSlices(tf.constant(values), tf.constant(indices),
                              tf.constant(table.shape, tf.int64)), table)])
    return w, table, opt


def _check_against_one_device(r, **extra):
    assert "error" not in r, r.get("traceback", r.get("error"))
    assert r["iterations"] == STEPS
    assert r["slot_names"] == ["ms", "mom", "mg"]
    ref_w, ref_t, ref_opt = _one_device_run(r, **extra)
    got_t = np.concatenate([np.float32(p) for p in r["parts"]])
    np.testing.assert_allclose(np.float32(r["w"]), ref_w.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got_t, ref_t.numpy(), rtol=1e-5, atol=1e-7)
    for name in r["slot_names"]:
        slot = r["slots"][name]
        np.testing.assert_allclose(np.float32(slot["w"]), ref_opt.get_slot(ref_w, name).numpy(),
                                   rtol=1e-5, atol=1e-7, err_msg=f"slot {name} of w")
        np.testing.assert_allclose(np.concatenate([np.float32(p) for p in slot["parts"]]),
                                   ref_opt.get_slot(ref_t, name).numpy(), rtol=1e-5,
                                   atol=1e-7, err_msg=f"slot {name} of the table")

    # It trained: the dense variable everywhere; the table only on the rows the steps
    # looked up (sparse updates), whose `ms` rows are the only nonzero ones.
    init_w, init_t = np.float32(r["init_w"]), np.float32(r["init_t"])
    assert np.max(np.abs(np.float32(r["w"]) - init_w)) > 1e-3
    offsets = np.cumsum([0] + r["part_rows"])[:-1]
    touched = sorted({int(i) + int(off) for g in r["grads"]
                      for p, off in zip(g["parts"], offsets) for i in p["indices"]})
    assert np.flatnonzero(np.any(got_t != init_t, axis=1)).tolist() == touched
    ms = np.concatenate([np.float32(p) for p in r["slots"]["ms"]["parts"]])
    assert np.flatnonzero(np.any(ms != 0, axis=1)).tolist() == touched


def _check_slots_colocated(r):
    for name in r["slot_names"]:
        devices = r["slot_devices"][name]
        assert devices["w"] == r["w_device"], name
        assert devices["parts"] == r["part_devices"], name
    assert all("/job:ps/" in d for d in [r["w_device"]] + r["part_devices"])


def _check_replica_fn_ran_on_workers(r):
    # The forward/backward pass ran on the workers (both got steps or at least one).
    for op in ("MatMul", "Sin"):
        assert r["placement"][op], op
        assert all(d.startswith("/job:worker/") for d in r["placement"][op]), op


def test_dense_and_sparse_updates_run_on_the_ps_and_match_one_device(two_ps):
    r = two_ps["dense_and_sparse"]
    _check_against_one_device(r)
    _check_slots_colocated(r)
    _check_replica_fn_ran_on_workers(r)
    # Round-robin placement put the two variables on different parameter servers, and the
    # runtime placed each update op on its variable's PS (nothing on a worker).
    assert r["w_device"] != r["part_devices"][0]
    assert r["placement"]["ApplyRMSpropX"] == [r["w_device"]]
    assert r["placement"]["SparseApplyRMSpropX"] == r["part_devices"]
    assert r["update_ops"] == {"xla": [], "native": UPDATE_OPS}


def test_partitioned_table_shards_get_own_slots_and_sparse_updates(two_ps):
    r = two_ps["sharded"]
    assert r["is_sharded"] == "ShardedVariable"
    assert r["part_rows"] == [5, 5]
    assert len(set(r["part_devices"])) == 2  # one shard per parameter server
    _check_against_one_device(r)
    _check_slots_colocated(r)  # each shard's slots on the shard's PS, shard-shaped
    for name in r["slot_names"]:
        assert [len(p) for p in r["slots"][name]["parts"]] == [5, 5]
    _check_replica_fn_ran_on_workers(r)
    # One sparse update per shard, each on its shard's PS.
    assert r["placement"]["SparseApplyRMSpropX"] == sorted(r["part_devices"])
    assert r["placement"]["ApplyRMSpropX"] == [r["w_device"]]
    assert r["update_ops"] == {"xla": [],
                               "native": sorted(UPDATE_OPS + ["SparseApplyRMSpropX"])}
    # Every step's gradient reached both shards or one, with shard-local indices.
    for g in r["grads"]:
        assert all(0 <= i < 5 for p in g["parts"] for i in p["indices"])


def test_8bit_state_of_a_partitioned_table_decided_on_the_whole_table(two_ps):
    """8-bit state under ParameterServerStrategy: each shard of a partitioned table has
    8-bit state because the whole table reaches min_8bit_size (a shard does not), its codes
    and absmax on the shard's PS, the sparse 8-bit updates run there, and the result is the
    one-device 8-bit run on the unpartitioned table (rows are their own blocks, so the
    shards' blocks are the table's)."""
    r = two_ps["state8_sharded"]
    assert "error" not in r, r.get("traceback", r.get("error"))
    assert r["part_rows"] == [5, 5] and len(set(r["part_devices"])) == 2
    for name in r["slot_names"]:
        assert r["state_bits"][name] == dict(w=32, parts=[8, 8]), name
    _check_against_one_device(r, state_bits=8, min_8bit_size=40)
    _check_slots_colocated(r)
    assert r["placement"]["SparseApplyRMSpropX"] == sorted(r["part_devices"])
    assert r["placement"]["ApplyRMSpropX"] == [r["w_device"]]


def _check_xla_on_ps(r):
    _check_against_one_device(r)
    _check_slots_colocated(r)
    _check_replica_fn_ran_on_workers(r)
    # Both updates are inside XLA functions; those functions were placed on the variables'
    # PS (StatefulPartitionedCall), and no native update op was placed anywhere.
    assert r["update_ops"] == {"xla": UPDATE_OPS, "native": []}
    assert "ApplyRMSpropX" not in r["placement"]
    assert "SparseApplyRMSpropX" not in r["placement"]
    calls_on_ps = {d for d in r["placement"]["StatefulPartitionedCall"] if "/job:ps/" in d}
    assert calls_on_ps == {r["w_device"]} | set(r["part_devices"])


def test_jit_compile_updates_on_a_single_ps(one_ps):
    assert one_ps["num_ps"] == 1
    _check_xla_on_ps(one_ps["xla"])


def test_jit_compile_updates_on_two_ps(two_ps):
    r = two_ps["xla"]
    # The variables are on both PS, so one XLA group is not on the learning rate's PS: an
    # XLA function that read the learning-rate variable itself would fail there ("Trying
    # to access resource ... located in device ..."); RMSpropX reads it outside.
    assert len({r["w_device"]} | set(r["part_devices"])) == 2
    assert r["lr_device"] in {r["w_device"]} | set(r["part_devices"])
    _check_xla_on_ps(r)
