"""The fault suite (issue 28): training programs (tests/fault_worker.py, real processes on
127.0.0.1) killed at chosen points and restarted; the restarted run must end where an
uninterrupted run of the same program ends, bit for bit (or, where TensorFlow documents
another outcome, exactly that outcome).

Every subprocess runs in its own session (process group), every wait has a deadline (the
test fails with the process's stderr tail), and every process group is killed in a
`finally`, also when the test fails.
"""
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import BASE_SEED

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "fault_worker.py")
START_S = 90  # a TensorFlow process's start (~4 s of CPU; the machine may be busy)


class Proc:
    """A fault_worker.py process in its own session: stdout read line by line by a thread
    (so waits for a line have a deadline), stderr to a file (its tail in failures)."""

    def __init__(self, tmp, name, mode, args, env=None):
        self.name = name
        self.err_path = os.path.join(str(tmp), f"{name}.stderr")
        self.err = open(self.err_path, "w+")
        self.lines = queue.Queue()
        self.seen = []
        self.times = {}  # first word of a stdout line -> when it was (last) read
        full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
                        PYTHONUNBUFFERED="1", **(env or {}))
        self.proc = subprocess.Popen(
            [sys.executable, WORKER, mode, json.dumps(args)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self.err, text=True, env=full_env,
            start_new_session=True, cwd=HERE)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.times[line.split(" ", 1)[0].strip()] = time.monotonic()  # first word's last
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def stderr_tail(self, n=3000):
        self.err.flush()
        with open(self.err_path) as f:
            return f.read()[-n:]

    def fail(self, why):
        pytest.fail(f"{self.name}: {why}\nstdout: {self.seen[-10:]}\n"
                    f"--- {self.name} stderr ---\n{self.stderr_tail()}")

    def expect(self, prefix, timeout):
        """The next stdout line starting with `prefix` (its remainder); fails on a deadline
        or when the process exits first."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.fail(f"no {prefix!r} line within {timeout} s")
            try:
                line = self.lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if line is None:
                self.proc.wait(timeout=10)
                self.fail(f"exited ({self.proc.returncode}) before a {prefix!r} line")
            self.seen.append(line)
            if line.startswith(prefix):
                return line[len(prefix):].strip()

    def send(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def signal(self, sig):
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.fail(f"did not exit within {timeout} s")

    def finish(self, timeout):
        """Waits for a clean exit (0)."""
        rc = self.wait(timeout)
        if rc != 0:
            self.fail(f"exited with {rc}")

    def kill(self):
        if self.proc.poll() is None:
            self.signal(signal.SIGKILL)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        else:  # the leader is gone; its group may not be
            self.signal(signal.SIGKILL)
        self.reader.join(timeout=5)
        self.err.close()


@pytest.fixture
def spawn(tmp_path):
    """spawn(name, mode, args, env=None) -> Proc; every process group it started is killed
    when the test ends, however it ends."""
    procs = []

    def start(name, mode, args, env=None):
        p = Proc(tmp_path, name, mode, args, env)
        procs.append(p)
        return p

    try:
        yield start
    finally:
        for p in procs:
            p.kill()


def run_to_end(spawn, name, mode, args, timeout=START_S + 60, env=None):
    p = spawn(name, mode, args, env)
    p.finish(timeout)
    return p


def kill_at_killpoint(p, sig=signal.SIGKILL, timeout=START_S + 60):
    tag = p.expect("KILLPOINT", timeout)
    p.signal(sig)
    rc = p.wait(30)
    assert rc == -sig, f"{p.name}: exit {rc} after signal {sig} at {tag}"
    return tag


def load(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def assert_same_bits(got, want, what):
    assert sorted(got) == sorted(want), f"{what}: different state {sorted(got)} vs {sorted(want)}"
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, (what, k)
        # Bit for bit (NaN-safe): compare the raw bytes.
        assert got[k].tobytes() == want[k].tobytes(), (
            f"{what}: {k} differs: max |diff| "
            f"{np.max(np.abs(got[k].astype(np.float64) - want[k].astype(np.float64)))}")


def assert_differs(got, want, what):
    assert any(got[k].tobytes() != want[k].tobytes() for k in want), what


# ---- 1. single process: SIGKILL mid-training, restart, same bits -------------------------

K_SAMPLES, K_EPOCHS = 64, 3  # batch 16: 4 steps per epoch, 12 steps
K_SPE = K_SAMPLES // 16


@pytest.fixture(scope="module")
def keras_reference(tmp_path_factory):
    """Uninterrupted runs, one process: model.fit for K_EPOCHS epochs, and the program a
    restarted save_freq=3 run amounts to (see test_keras_backup_mid_epoch_replays_the_epoch)."""
    tmp = tmp_path_factory.mktemp("keras_ref")
    outs = {"plain": str(tmp / "plain.npz"), "replay": str(tmp / "replay.npz")}
    procs = []
    try:
        for name, mode, args in [
                ("plain", "keras", dict(seed=BASE_SEED, samples=K_SAMPLES, epochs=K_EPOCHS,
                                        backup_dir=str(tmp / "b"), save_freq="epoch",
                                        kill_at=None, out=outs["plain"])),
                # Epoch 0, then 2 batches of epoch 1 (the backup at step 6), then epochs 1
                # and 2 again in full.
                ("replay", "replay", dict(seed=BASE_SEED, samples=K_SAMPLES,
                                          pieces=[[1, None], [1, 2], [2, None]],
                                          out=outs["replay"]))]:
            p = Proc(tmp, name, mode, args)
            procs.append(p)
        for p in procs:
            p.finish(START_S + 60)
    finally:
        for p in procs:
            p.kill()
    return {k: load(v) for k, v in outs.items()}


def _assert_keras_slots(state):
    """The compared state holds 3 slots of each of the 5 weights (Embedding, 2 Dense)."""
    slots = [k for k in state if k.endswith(("_velocity", "_momentum", "_average_gradient"))]
    assert len(slots) == 15 and sum(k.startswith("weight") for k in state) == 5, sorted(state)


def test_keras_backup_by_epoch_sigkill_mid_epoch_restarts_to_the_same_bits(
        spawn, tmp_path, keras_reference):
    """BackupAndRestore(save_freq="epoch"): killed after step 7 (epoch 1, batch 3 of 4), the
    backup is the end of epoch 0 (iterations 4); the restart runs epochs 1 and 2 and ends
    bit-identical to the uninterrupted run: weights, every optimizer variable
    (velocity, momentum, average_gradient of the Dense and Embedding weights), iterations 12."""
    args = dict(seed=BASE_SEED, samples=K_SAMPLES, epochs=K_EPOCHS,
                backup_dir=str(tmp_path / "backup"), save_freq="epoch", kill_at=7,
                out=str(tmp_path / "out.npz"))
    first = spawn("keras-epoch-killed", "keras", args)
    assert json.loads(first.expect("RESTORED", START_S)) == dict(iterations=0, initial_epoch=0)
    kill_at_killpoint(first)
    second = spawn("keras-epoch-restart", "keras", dict(args, kill_at=None))
    assert json.loads(second.expect("RESTORED", START_S)) == dict(iterations=K_SPE,
                                                                  initial_epoch=1)
    second.finish(60)
    got = load(args["out"])
    assert int(got["iterations"]) == K_EPOCHS * K_SPE
    _assert_keras_slots(got)
    assert_same_bits(got, keras_reference["plain"], "restarted fit vs uninterrupted fit")


def test_keras_backup_mid_epoch_replays_the_epoch(spawn, tmp_path, keras_reference):
    """BackupAndRestore(save_freq=3) (Keras 3.x): a backup after step 6 (epoch 1, batch 2)
    stores the weights and optimizer variables as they are (iterations 6) and the epoch in
    progress (1); the batch it also records is not used on restore. Killed after step 7,
    the restart loads that state and runs epoch 1 again FROM ITS FIRST BATCH: epoch 1's
    first 2 batches are applied twice. So the run ends with iterations = 12 + 2 = 14 and
    the bits of the uninterrupted program epoch 0, batches 0-1 of epoch 1, epochs 1 and 2
    (the "replay" reference), not those of the uninterrupted 12-step run."""
    args = dict(seed=BASE_SEED, samples=K_SAMPLES, epochs=K_EPOCHS,
                backup_dir=str(tmp_path / "backup"), save_freq=3, kill_at=7,
                out=str(tmp_path / "out.npz"))
    first = spawn("keras-freq-killed", "keras", args)
    kill_at_killpoint(first)
    meta = json.load(open(tmp_path / "backup" / "training_metadata.json"))
    assert meta == dict(epoch=1, batch=1)  # saved after the 2nd batch (index 1) of epoch 1
    second = spawn("keras-freq-restart", "keras", dict(args, kill_at=None))
    assert json.loads(second.expect("RESTORED", START_S)) == dict(iterations=6,
                                                                  initial_epoch=1)
    second.finish(60)
    got = load(args["out"])
    assert int(got["iterations"]) == K_EPOCHS * K_SPE + 2
    assert_same_bits(got, keras_reference["replay"], "restarted fit vs replay program")
    assert_differs(got, keras_reference["plain"], "the replayed batches changed nothing?")


def test_custom_loop_checkpoint_manager_sigkill_restarts_to_the_same_bits(spawn, tmp_path):
    """A tf.function loop (dense w, embedding table with IndexedSlices gradients,
    tf_rmsprop_ops.RMSpropX centered with momentum) saving every 3 steps with a
    CheckpointManager: killed after step 7, the restart restores ckpt-6 (iterations 6),
    replays step 7 from its data and ends bit-identical (variables, ms/mom/mg of both,
    iterations) to an uninterrupted run."""
    base = dict(seed=BASE_SEED, steps=10, save_every=3)
    ref = spawn("loop-uninterrupted", "loop", dict(base, ckpt_dir=str(tmp_path / "ref"),
                                                   kill_at=None, out=str(tmp_path / "ref.npz")))
    args = dict(base, ckpt_dir=str(tmp_path / "ckpt"), kill_at=7, out=str(tmp_path / "out.npz"))
    first = spawn("loop-killed", "loop", args)
    kill_at_killpoint(first)
    ref.finish(START_S + 60)
    second = spawn("loop-restart", "loop", dict(args, kill_at=None))
    restored = json.loads(second.expect("RESTORED", START_S))
    assert restored["iterations"] == 6 and restored["checkpoint"].endswith("ckpt-6")
    second.finish(60)
    want, got = load(str(tmp_path / "ref.npz")), load(args["out"])
    assert int(got["iterations"]) == 10
    assert_same_bits(got, want, "restarted loop vs uninterrupted loop")
    assert sorted(k for k in got if k.startswith("table_")) == [
        "table_mg", "table_mom", "table_ms"]


# ---- 5. SIGKILL inside a checkpoint save ----------------------------------------------------

SAVE_KILL_FRACTIONS = (0.1, 0.35, 0.6, 0.85)  # of the measured time of the previous save
SAVES = 4


@pytest.mark.slow
def test_sigkill_inside_checkpoint_save_leaves_one_whole_state(spawn, tmp_path):
    """A 64 MiB state (4M float32 variable + ms, mom, mg of RMSpropX) saved with
    CheckpointManager(max_to_keep=1) after each of 4 steps; each run is SIGKILLed at a
    delay inside its 4th save (0 to 1 x the time its 3rd save took). What the latest
    checkpoint then restores is, tensor for tensor (var, ms, mom, mg, iterations), exactly
    the state of save 3 or exactly that of save 4, never a mix and never an error. A torn
    newer checkpoint read on purpose (data file truncated, 4 KiB of its data flipped, index
    deleted) is an error (IndexError, DataLossError "Checksum does not match",
    NotFoundError) and leaves every tensor as it was before the restore."""
    dirs = [str(tmp_path / f"kill{i}") for i in range(len(SAVE_KILL_FRACTIONS))]
    runs = [spawn(f"bigsave{i}", "bigsave", dict(seed=BASE_SEED, ckpt_dir=d, saves=SAVES))
            for i, d in enumerate(dirs)]
    verifier = spawn("bigverify", "bigverify", dict(seed=BASE_SEED, dirs=dirs, saves=SAVES,
                                                    scratch=str(tmp_path / "scratch")))
    timings = []
    for p, fraction in zip(runs, SAVE_KILL_FRACTIONS):
        # Save 3 timed while the other runs wait on their stdin, then save 4 killed.
        assert int(p.expect("SAVING", START_S + 60)) == SAVES - 1
        p.send("go")
        k, took = p.expect("SAVED", 60).split()
        assert int(k) == SAVES - 1
        assert int(p.expect("SAVING", 60)) == SAVES
        delay = fraction * float(took)
        p.send("go")
        t0 = time.perf_counter()
        time.sleep(delay)
        p.signal(signal.SIGKILL)
        killed_after = time.perf_counter() - t0
        assert p.wait(30) == -signal.SIGKILL
        timings.append((float(took), killed_after, any(l.startswith(f"SAVED {SAVES}")
                                                        for l in _drain(p))))
    verifier.expect("WAITING", START_S + 60)
    verifier.send("go")
    result = json.loads(verifier.expect("RESULT", 120))
    verifier.finish(30)

    outcomes = []
    for d, (took, killed_after, saved_line) in zip(dirs, timings):
        entry = result["dirs"][d]
        assert entry["latest"] is not None, (d, entry)
        matched = entry["matches"]
        assert set(matched) == {"var", "ms", "mom", "mg", "iterations"}, matched
        ks = {tuple(v) for v in matched.values()}
        # Every tensor equals exactly one save's (the saves differ everywhere) ...
        assert all(len(v) == 1 for v in matched.values()), (d, matched)
        # ... the same save for all of them: one whole state, save 3 or save 4.
        assert len(ks) == 1 and ks.pop()[0] in (SAVES - 1, SAVES), (d, matched, entry["files"])
        k = matched["var"][0]
        if saved_line:  # the save had returned before the kill: the newest state
            assert k == SAVES, (d, matched)
        outcomes.append((round(took, 4), round(killed_after, 4), k, entry["files"]))
    print("kill inside save (previous save s, killed after s, restored save, files):",
          outcomes)

    for kind in ("truncated", "flipped", "no_index"):
        torn = result["torn"][kind]
        assert torn["error"], f"{kind}: a torn checkpoint restored without an error"
        # All or nothing: the failed restore assigned nothing (observed; the values are read
        # in one RestoreV2 before any is assigned), so no tensor holds a wrong value.
        assert set(torn["tensors"].values()) == {"unchanged"}, (kind, torn)
    print("torn checkpoints:",
          {k: (v["error"], v["tensors"]) for k, v in result["torn"].items()})


def _drain(p):
    """The stdout lines already read (the process has exited)."""
    p.reader.join(timeout=5)
    out = []
    while True:
        try:
            line = p.lines.get_nowait()
        except queue.Empty:
            return out
        if line is not None:
            out.append(line)


# ---- 2. ParameterServerStrategy: a worker SIGKILLed mid-training and restarted ---------------

PS_STEPS = 40
PS_OPT = dict(learning_rate=0.02, momentum=0.9, centered=True, epsilon=1e-6)


def _ps_reference(r, max_k):
    """An uninterrupted one-device run applying the run's constant gradients: the state of
    every variable (var and slots) after k = 0..max_k steps, and which k each PS variable's
    final var and slots equal, bit for bit."""
    import tensorflow as tf
    from tf_rmsprop_ops import RMSpropX
    rows = [int(n) for n in r["shard_rows"]]
    inits = {"w": r["init_w"], "table": r["init_table"],
             "shard0": r["init_sharded"][:rows[0]], "shard1": r["init_sharded"][rows[0]:]}
    names = list(inits)
    variables = [tf.Variable(inits[n]) for n in names]
    opt = RMSpropX(**PS_OPT)
    grads = [tf.constant(r["grad_w"])] + [
        tf.IndexedSlices(tf.constant(r[f"grad{i}_values"]), tf.constant(r[f"grad{i}_indices"]),
                         tf.constant(variables[i].shape, tf.int64)) for i in (1, 2, 3)]
    slots = None
    found = {n: [] for n in names}
    for k in range(max_k + 1):
        if k:
            opt.apply_gradients(zip(grads, variables))
            slots = opt.slot_names
        for n, v in zip(names, variables):
            state = [v.numpy()] + [opt.get_slot(v, s).numpy() if slots else
                                   np.zeros_like(v.numpy()) for s in PS_SLOTS]
            got = [r[n]] + [r[f"{n}_{s}"] for s in PS_SLOTS]
            if all(a.tobytes() == b.tobytes() for a, b in zip(state, got)):
                found[n].append(k)
    return found


PS_SLOTS = ("ms", "mom", "mg")


def _cluster(num_workers, num_ps):
    from tf_rmsprop_ops.demo import free_ports
    ports = free_ports(num_workers + num_ps + 1)
    addr = [f"127.0.0.1:{p}" for p in ports]
    return {"worker": addr[:num_workers], "ps": addr[num_workers:num_workers + num_ps],
            "chief": addr[-1:]}


@pytest.mark.slow
def test_ps_worker_sigkilled_and_restarted_steps_at_least_once(spawn, tmp_path):
    """ParameterServerStrategy (1 worker process, 2 in-process parameter servers, a
    ClusterCoordinator): the worker is SIGKILLed while steps run and restarted on the same
    address 1.5 s later. `coordinator.join()` returns; TensorFlow re-runs the closure the
    dead worker was running, whose updates may already have reached the parameter servers,
    so steps are applied AT LEAST once: iterations and, for each variable (dense w, a
    sparse table, each shard of a 2-shard ShardedVariable), the k for which var, ms, mom
    and mg ALL equal an uninterrupted one-device run's after k steps (bit for bit) lie in
    [N, N + 1] (one kill). Var and slots are never at different steps (no torn update).
    One worker, so steps never run concurrently: RMSpropX calls its ops with
    use_locking=False (as Keras' optimizers), and steps of several workers would update a
    variable Hogwild-style, which "applied k times" cannot describe."""
    cluster = _cluster(1, 2)
    servers = {"worker": cluster["worker"], "ps": cluster["ps"]}
    out = str(tmp_path / "ps.npz")
    worker = spawn("ps-worker0", "server", dict(cluster=servers, job="worker", index=0))
    worker.expect("READY", START_S)
    coord = spawn("ps-coordinator", "ps_train", dict(seed=BASE_SEED, cluster=cluster,
                                                    in_process=["ps"], step_sleep_us=60000,
                                                    steps=PS_STEPS, out=out))
    coord.expect("FIRST", START_S + 60)
    coord.expect("SCHEDULED", 30)
    time.sleep(0.5)  # a few steps in (each waits 60 ms on the worker: 39 take >= 2.3 s)
    worker.signal(signal.SIGKILL)
    assert worker.wait(30) == -signal.SIGKILL
    time.sleep(1.5)
    restarted = spawn("ps-worker0-restarted", "server",
                      dict(cluster=servers, job="worker", index=0))
    restarted.expect("READY", START_S)
    joined = coord.expect("JOINED", START_S + 60)
    coord.finish(60)
    # The kill was mid-training: the steps finished only once the restarted worker was up.
    assert coord.times["JOINED"] > restarted.times["READY"], "all steps done before the kill"
    r = load(out)
    iterations = int(r["iterations"])
    found = _ps_reference(r, PS_STEPS + 2)
    print(f"PS worker kill: iterations {iterations}, steps per variable {found}, "
          f"join after {joined} s; coordinator log:",
          [l[-200:] for l in coord.stderr_tail(200000).splitlines()
           if "orker" in l and ("fail" in l.lower() or "preempt" in l.lower()
                                or "recover" in l.lower())][:6])
    assert PS_STEPS <= iterations <= PS_STEPS + 1, iterations
    for name, ks in found.items():
        # Exactly one k: var and all three slots at the same step; N or N + 1 of them.
        assert len(ks) == 1 and PS_STEPS <= ks[0] <= PS_STEPS + 1, (name, ks)
    assert int(r["shard_rows"].sum()) == r["init_sharded"].shape[0]


# ---- 4. MultiWorkerMirroredStrategy + PreemptionCheckpointHandler: SIGTERM to one worker ------

MW_STEPS = 12


def _mwms_pair(spawn, tmp_path, tag, ckpt_dir, pause_at=None, victim=None):
    from tf_rmsprop_ops.demo import free_ports
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    procs = []
    for i in range(2):
        env = dict(TF_CONFIG=json.dumps({"cluster": cluster,
                                         "task": {"type": "worker", "index": i}}),
                   GCE_METADATA_IP="127.0.0.1:1")  # off GCP: no metadata server to wait on
        procs.append(spawn(f"mwms-{tag}-{i}", "mwms", dict(
            seed=BASE_SEED, steps=MW_STEPS, ckpt_dir=ckpt_dir,
            pause_at=pause_at if i == victim else None, out=str(tmp_path / f"{tag}{i}.npz")),
            env=env))
    return procs


@pytest.mark.slow
def test_mwms_sigterm_preemption_checkpoint_and_restart_same_bits(spawn, tmp_path, rng):
    """MultiWorkerMirroredStrategy (2 worker processes, RING) with a
    PreemptionCheckpointHandler: SIGTERM to one worker (chosen at random) after a random
    step s. Off GCP the handler (TerminationConfig defaults: exit_fn sys.exit(42), no grace
    period) has both workers save a checkpoint after step s + 1 and exit with 42. Restarted,
    both restore run_calls = iterations = s + 1 and end bit-identical, on both workers
    (variables, ms/mom/mg, iterations), to an uninterrupted 2-worker run."""
    victim = int(rng.integers(0, 2))
    pause_at = int(rng.integers(2, MW_STEPS - 3))
    ckpt_dir = str(tmp_path / "ckpt")
    reference = _mwms_pair(spawn, tmp_path, "ref", str(tmp_path / "ref_ckpt"))
    preempted = _mwms_pair(spawn, tmp_path, "pre", ckpt_dir, pause_at, victim)
    for p in preempted:
        assert json.loads(p.expect("RESTORED", START_S + 60)) == dict(run_calls=0, iterations=0)
    preempted[victim].expect("KILLPOINT", 120)
    preempted[victim].signal(signal.SIGTERM)
    codes = [p.wait(120) for p in preempted]
    assert codes == [42, 42], (codes, [p.stderr_tail(1500) for p in preempted])
    for p in reference:
        p.finish(120)
    restarted = _mwms_pair(spawn, tmp_path, "re", ckpt_dir)
    for p in restarted:
        assert json.loads(p.expect("RESTORED", START_S + 60)) == dict(
            run_calls=pause_at + 1, iterations=pause_at + 1)
    for p in restarted:
        p.finish(120)
    want = [load(str(tmp_path / f"ref{i}.npz")) for i in range(2)]
    got = [load(str(tmp_path / f"re{i}.npz")) for i in range(2)]
    assert int(want[0]["iterations"]) == MW_STEPS
    assert_same_bits(want[1], want[0], "uninterrupted: worker 1 vs worker 0")
    for i in range(2):
        assert_same_bits(got[i], want[i], f"restarted worker {i} vs uninterrupted")
    print(f"MWMS: SIGTERM to worker {victim} after step {pause_at}: exit codes {codes}, "
          f"restored at {pause_at + 1}")


# ---- 3. ParameterServerStrategy: the parameter server SIGKILLed ------------------------------

PS_SAVE_AT, PS_FINAL = 5, 12


@pytest.mark.slow
def test_ps_killed_error_within_bound_then_restore_and_continue_to_reference(spawn, tmp_path):
    """A parameter server process SIGKILLed while a coordinator (with an in-process worker)
    schedules steps, after a checkpoint at step 5: the coordinator gets TensorFlow's error
    within a bound. A restarted PS (same address) and a new coordinator restore the latest
    checkpoint bit for bit (w, table, both shards of the ShardedVariable, their ms/mom/mg,
    iterations = the uninterrupted one-device run's after 5 steps) and train to step 12,
    ending bit-identical to that run after 12 steps."""
    cluster = _cluster(1, 1)
    servers = {"worker": cluster["worker"], "ps": cluster["ps"]}
    base = dict(seed=BASE_SEED, cluster=cluster, in_process=["worker"],
                ckpt_dir=str(tmp_path / "ckpt"), save_at=PS_SAVE_AT, steps=PS_FINAL)
    ps = spawn("ps0", "server", dict(cluster=servers, job="ps", index=0))
    ps.expect("READY", START_S)
    first = spawn("ps-coord-first", "ps_ckpt", dict(base, phase="first",
                                                    out=str(tmp_path / "first.npz")))
    first.expect("SAVED", START_S + 60)
    time.sleep(0.5)
    ps.signal(signal.SIGKILL)
    killed = time.monotonic()
    assert ps.wait(30) == -signal.SIGKILL
    error = json.loads(first.expect("ERROR", 120))
    error_after = time.monotonic() - killed
    first.finish(30)
    assert error_after < 30, error_after  # a bound, not a hang (observed: well under 1 s)
    ps2 = spawn("ps0-restarted", "server", dict(cluster=servers, job="ps", index=0))
    ps2.expect("READY", START_S)
    out = str(tmp_path / "resumed.npz")
    resumed = spawn("ps-coord-resume", "ps_ckpt", dict(base, phase="resume", out=out))
    restored = json.loads(resumed.expect("RESTORED", START_S + 60))
    resumed.finish(120)
    assert restored["iterations"] == PS_SAVE_AT and restored["checkpoint"].endswith(
        f"ckpt-{PS_SAVE_AT}"), restored
    at_save, after_restore, final = (load(str(tmp_path / "first.npz")), load(out + ".restored.npz"),
                                     load(out))
    for k in [k for k in at_save if k.startswith("grad")]:  # the constant gradients
        after_restore[k] = final[k] = at_save[k]
    assert _ps_reference(after_restore, PS_FINAL) == {n: [PS_SAVE_AT] for n in
                                                      ("w", "table", "shard0", "shard1")}
    assert int(after_restore["iterations"]) == PS_SAVE_AT
    assert _ps_reference(final, PS_FINAL) == {n: [PS_FINAL] for n in
                                              ("w", "table", "shard0", "shard1")}
    assert int(final["iterations"]) == PS_FINAL
    print(f"PS killed: error after {error_after:.2f} s: {error[:300]}")


@pytest.mark.slow
def test_ps_without_the_op_library_fails_naming_the_op(spawn, tmp_path):
    """A parameter server process that never imported tf_rmsprop_ops: the first step fails
    (no hang) with an error naming the RMSpropX op its kernel is missing for."""
    cluster = _cluster(1, 1)
    servers = {"worker": cluster["worker"], "ps": cluster["ps"]}
    ps = spawn("ps0-no-ops", "server", dict(cluster=servers, job="ps", index=0, no_ops=True))
    ps.expect("READY", START_S)
    coord = spawn("ps-coord-bad", "ps_ckpt", dict(
        seed=BASE_SEED, cluster=cluster, in_process=["worker"], phase="bad",
        ckpt_dir=str(tmp_path / "ckpt"), save_at=1, steps=1))
    error = json.loads(coord.expect("ERROR", START_S + 120))
    coord.finish(30)
    assert "RMSpropX" in error, error
    print("PS without the ops:", error[:600])
