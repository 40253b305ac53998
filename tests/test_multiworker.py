"""RMSpropX under MultiWorkerMirroredStrategy: 2 worker processes on 127.0.0.1 (CPU, RING
collectives), each on its own data. Both workers end with bit-identical variables and
slots, equal to one device applying the sum of both workers' gradients each step."""
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import BASE_SEED
from tf_rmsprop_ops import RMSpropX
from tf_rmsprop_ops.demo import free_ports

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multiworker_worker.py")
STEPS = 3
TIMEOUT_S = 180
KWARGS = dict(learning_rate=0.02, momentum=0.9, centered=True, epsilon=1e-6)



def _run_cluster(seed, mode):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs, logs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for i in range(2):
                env = dict(os.environ, TF_CONFIG=json.dumps(
                    {"cluster": cluster, "task": {"type": "worker", "index": i}}),
                    TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
                out = open(os.path.join(tmp, f"out{i}"), "w+")
                err = open(os.path.join(tmp, f"err{i}"), "w+")
                logs.append((out, err))
                procs.append(subprocess.Popen([sys.executable, WORKER, str(seed), str(STEPS),
                                               mode], stdout=out, stderr=err, env=env))
            deadline = time.monotonic() + TIMEOUT_S
            for p in procs:
                try:
                    p.wait(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pytest.fail(f"multi-worker run did not finish in {TIMEOUT_S} s:\n"
                                + _tails(logs))
            results = []
            for i, (p, (out, _)) in enumerate(zip(procs, logs)):
                out.seek(0)
                lines = [l for l in out.read().splitlines() if l.startswith("RESULT ")]
                assert p.returncode == 0 and lines, (
                    f"worker {i} exited with {p.returncode}:\n" + _tails(logs))
                results.append(json.loads(lines[0][len("RESULT "):]))
            return results
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            for out, err in logs:
                out.close()
                err.close()


def _tails(logs):
    text = []
    for i, (_, err) in enumerate(logs):
        err.seek(0)
        text.append(f"--- worker {i} stderr ---\n{err.read()[-2500:]}")
    return "\n".join(text)


def _one_device_run(init_w, init_t, per_worker_grads, kwargs):
    """One device applying, each step, the sum of both workers' gradients (dense: summed;
    IndexedSlices: values and indices concatenated in worker order)."""
    w, table = tf.Variable(init_w), tf.Variable(init_t)
    opt = RMSpropX(**kwargs)
    for step in zip(*per_worker_grads):
        gw = sum(np.asarray(g["w"], np.float32) for g in step)
        gt = tf.IndexedSlices(
            tf.constant(np.concatenate([np.asarray(g["values"], np.float32) for g in step])),
            tf.constant(np.concatenate([np.asarray(g["indices"], np.int64) for g in step])),
            tf.constant(table.shape, tf.int64))
        opt.apply_gradients([(tf.constant(gw), w), (gt, table)])
    return w, table, opt


@pytest.fixture(scope="module", params=["native", "xla", "state8"])
def cluster_results(request):
    return request.param, _run_cluster(BASE_SEED, request.param)


def test_workers_bit_identical_and_equal_one_device_on_summed_gradients(cluster_results):
    mode, (r0, r1) = cluster_results
    assert (r0["task"], r1["task"]) == (0, 1)
    # The variables and every 32-bit slot mirrored (8-bit state: plain per-worker variables,
    # checked below).
    assert r0["mirrored"] and r1["mirrored"]
    assert r0["state_bits"] == [8 if mode == "state8" else 32]
    if mode == "state8":  # codes and absmax: each worker's own copy, on its device, equal
        assert r0["state8_devices"] == ["/job:worker/replica:0/task:0/device:CPU:0"]
        assert r1["state8_devices"] == ["/job:worker/replica:0/task:1/device:CPU:0"]
        for name, parts in r0["state8_values"].items():
            for which, (codes, absmax) in parts.items():
                other = r1["state8_values"][name][which]
                np.testing.assert_array_equal(np.uint8(codes), np.uint8(other[0]))
                np.testing.assert_array_equal(np.float32(absmax), np.float32(other[1]))
    assert r0["iterations"] == r1["iterations"] == STEPS
    assert r0["slot_names"] == ["ms", "mom", "mg"]
    # The step's graph: one dense and one sparse update, in XLA functions iff "xla".
    ops = sorted(["ApplyRMSpropX", "SparseApplyRMSpropX"])
    compiled, native = sorted(r0["update_ops"]["xla"]), sorted(r0["update_ops"]["native"])
    assert (compiled, native) == ((ops, []) if mode == "xla" else ([], ops))
    # The workers really had different data (else summing proves nothing).
    assert r0["grads"][0]["indices"] != r1["grads"][0]["indices"]

    # Both workers hold the same bits, variables and every slot.
    np.testing.assert_array_equal(np.float32(r0["w"]), np.float32(r1["w"]))
    np.testing.assert_array_equal(np.float32(r0["table"]), np.float32(r1["table"]))
    for name in r0["slot_names"]:
        for which in ("w", "table"):
            np.testing.assert_array_equal(np.float32(r0["slots"][name][which]),
                                          np.float32(r1["slots"][name][which]),
                                          err_msg=f"slot {name} of {which}")

    init_w, init_t = np.float32(r0["init_w"]), np.float32(r0["init_t"])
    np.testing.assert_array_equal(init_w, np.float32(r1["init_w"]))
    eight = dict(state_bits=8, min_8bit_size=0) if mode == "state8" else {}
    ref_w, ref_t, ref_opt = _one_device_run(init_w, init_t, [r0["grads"], r1["grads"]],
                                            dict(KWARGS, **eight))
    np.testing.assert_allclose(np.float32(r0["w"]), ref_w.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.float32(r0["table"]), ref_t.numpy(), rtol=1e-5, atol=1e-7)
    for name in r0["slot_names"]:
        np.testing.assert_allclose(np.float32(r0["slots"][name]["w"]),
                                   ref_opt.get_slot(ref_w, name).numpy(), rtol=1e-5,
                                   atol=1e-7, err_msg=f"slot {name} of w")
        np.testing.assert_allclose(np.float32(r0["slots"][name]["table"]),
                                   ref_opt.get_slot(ref_t, name).numpy(), rtol=1e-5,
                                   atol=1e-7, err_msg=f"slot {name} of table")

    # The variables moved: the dense one everywhere, the table on the rows either
    # worker touched and nowhere else (sparse updates).
    assert np.max(np.abs(np.float32(r0["w"]) - init_w)) > 1e-3
    touched = sorted({i for r in (r0, r1) for g in r["grads"] for i in g["indices"]})
    moved_rows = np.flatnonzero(np.any(np.float32(r0["table"]) != init_t, axis=1))
    assert moved_rows.tolist() == touched
