"""Subprocess side of test_faults.py: training programs that the test kills (SIGKILL,
SIGTERM) at chosen points and restarts, and the uninterrupted runs they are compared with.

Usage: fault_worker.py MODE JSON_ARGS
Modes (JSON_ARGS a dict, see each function):
  keras      model.fit with keras.callbacks.BackupAndRestore, tf_rmsprop_ops.keras.RMSpropX
  loop       a custom loop with tf.train.CheckpointManager, tf_rmsprop_ops.RMSpropX
  replay     model.fit in pieces (the run a restarted save_freq=N BackupAndRestore makes)
  bigsave    a ~64 MB state saved again and again (the test kills it inside a save)
  bigverify  restores what the killed bigsave runs left, checks torn checkpoints fail
  server     a tf.distribute.Server (a ParameterServerStrategy worker or PS)
  ps_train   a ParameterServerStrategy coordinator (in-process parameter servers)
  ps_ckpt    a ParameterServerStrategy coordinator that checkpoints and restores
  mwms       a MultiWorkerMirroredStrategy worker with a PreemptionCheckpointHandler

A "kill point" prints `KILLPOINT <tag>` and sleeps: the test, reading stdout, sends the
signal there, so the kill lands at a chosen step while still coming from outside. Results
are .npz files (every weight and optimizer variable, by position) and `RESULT {json}` lines.
"""
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

# "server" with {"no_ops": true}: a process that never imports the op library (a bad PS).
if not (len(sys.argv) > 2 and json.loads(sys.argv[2]).get("no_ops")):
    import tf_rmsprop_ops  # noqa: E402,F401  (registers the ops and kernels)


def say(*parts):
    print(*parts, flush=True)


def killpoint(tag):
    """Waits here to be killed (the test sends the signal on reading this line)."""
    say(f"KILLPOINT {tag}")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.05)
    raise SystemExit(f"not killed at {tag} within 120 s")


def save_npz(path, arrays):
    tmp = path + ".tmp.npz"
    np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
    os.replace(tmp, path)


# ---- 1. Keras fit with BackupAndRestore ----------------------------------------------------

K_ROWS, K_IDS, K_FEAT, K_OUT, K_BATCH = 20, 3, 6, 2, 16
K_OPT = dict(learning_rate=0.01, rho=0.9, momentum=0.9, centered=True, epsilon=1e-6)


def keras_data(seed, samples):
    rng = np.random.default_rng([seed, 2])
    ids = rng.integers(0, K_ROWS, size=(samples, K_IDS)).astype(np.int32)
    x = rng.normal(size=(samples, K_FEAT)).astype(np.float32)
    y = rng.normal(size=(samples, K_OUT)).astype(np.float32)
    return ids, x, y


def keras_model(seed):
    import keras
    import tf_rmsprop_ops.keras as tk
    ids = keras.Input((K_IDS,), dtype="int32")
    x = keras.Input((K_FEAT,))
    emb = keras.layers.Flatten()(keras.layers.Embedding(K_ROWS, 4)(ids))
    h = keras.layers.Dense(8, activation="tanh")(keras.layers.Concatenate()([emb, x]))
    model = keras.Model([ids, x], keras.layers.Dense(K_OUT)(h))
    # Initial weights from our own seeded generator (not Keras' initializers' state).
    rng = np.random.default_rng([seed, 1])
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype(np.float32)
                       for w in model.get_weights()])
    model.compile(optimizer=tk.RMSpropX(**K_OPT), loss="mse")
    return model


def keras_state(model):
    out = {f"weight{i}": w for i, w in enumerate(model.get_weights())}
    for i, v in enumerate(model.optimizer.variables):
        out[f"opt{i}_{v.name}"] = v.numpy()
    out["iterations"] = np.int64(model.optimizer.iterations.numpy())
    return out


def run_keras(a):
    """a: seed, samples, epochs, backup_dir, save_freq ("epoch" or N), kill_at (the
    optimizer step after which to wait for the kill, or null), out (npz path)."""
    import keras
    keras.utils.set_random_seed(a["seed"])
    model = keras_model(a["seed"])
    ids, x, y = keras_data(a["seed"], a["samples"])

    class Report(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):  # after BackupAndRestore's (list order)
            say("RESTORED " + json.dumps(dict(
                iterations=int(self.model.optimizer.iterations.numpy()),
                initial_epoch=int(self.model._initial_epoch or 0))))

        def on_train_batch_end(self, batch, logs=None):
            if a["kill_at"] is not None and int(self.model.optimizer.iterations) == a["kill_at"]:
                killpoint(f"step {a['kill_at']}")

    backup = keras.callbacks.BackupAndRestore(a["backup_dir"], save_freq=a["save_freq"])
    model.fit([ids, x], y, batch_size=K_BATCH, epochs=a["epochs"], shuffle=False, verbose=0,
              callbacks=[backup, Report()])
    save_npz(a["out"], keras_state(model))
    say("DONE")


def run_replay(a):
    """The uninterrupted program a restarted save_freq=N BackupAndRestore run amounts to:
    a: seed, samples, pieces ([[epochs, batches or null (all)], ...]), out."""
    import keras
    keras.utils.set_random_seed(a["seed"])
    model = keras_model(a["seed"])
    ids, x, y = keras_data(a["seed"], a["samples"])
    for epochs, batches in a["pieces"]:
        n = a["samples"] if batches is None else batches * K_BATCH
        model.fit([ids[:n], x[:n]], y[:n], batch_size=K_BATCH, epochs=epochs, shuffle=False,
                  verbose=0)
    save_npz(a["out"], keras_state(model))
    say("DONE")


# ---- 1. custom loop with tf.train.CheckpointManager ------------------------------------------

L_ROWS, L_DIM, L_OUT = 30, 4, 3
L_OPT = dict(learning_rate=0.02, momentum=0.9, centered=True, epsilon=1e-6)


def run_loop(a):
    """a: seed, steps, save_every, ckpt_dir, kill_at (or null), out."""
    from tf_rmsprop_ops import RMSpropX
    init = np.random.default_rng([a["seed"], 10])
    w = tf.Variable(init.normal(size=(L_DIM, L_OUT)).astype(np.float32), name="w")
    table = tf.Variable(init.normal(size=(L_ROWS, L_DIM)).astype(np.float32), name="table")
    opt = RMSpropX(**L_OPT)
    opt.build([w, table])
    ckpt = tf.train.Checkpoint(w=w, table=table, opt=opt)
    manager = tf.train.CheckpointManager(ckpt, a["ckpt_dir"], max_to_keep=2)
    if manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint).assert_consumed()
    say("RESTORED " + json.dumps(dict(iterations=int(opt.iterations.numpy()),
                                      checkpoint=manager.latest_checkpoint)))

    @tf.function
    def step(x, ids):
        with tf.GradientTape() as tape:
            emb = tf.nn.embedding_lookup(table, ids)  # IndexedSlices gradient
            loss = tf.reduce_sum(tf.tanh(x @ w)) + tf.reduce_sum(tf.sin(emb) * emb)
        grads = tape.gradient(loss, [w, table])
        assert isinstance(grads[1], tf.IndexedSlices)
        opt.apply_gradients(zip(grads, [w, table]))

    while int(opt.iterations.numpy()) < a["steps"]:
        i = int(opt.iterations.numpy())
        rng = np.random.default_rng([a["seed"], 100 + i])  # the data of step i
        step(tf.constant(rng.normal(size=(5, L_DIM)).astype(np.float32)),
             tf.constant(rng.integers(0, L_ROWS, size=7).astype(np.int64)))
        if (i + 1) % a["save_every"] == 0:
            manager.save(checkpoint_number=i + 1)
        if a["kill_at"] == i + 1:
            killpoint(f"step {i + 1}")
    out = {"w": w.numpy(), "table": table.numpy(),
           "iterations": np.int64(opt.iterations.numpy())}
    for name in opt.slot_names:
        out[f"w_{name}"] = opt.get_slot(w, name).numpy()
        out[f"table_{name}"] = opt.get_slot(table, name).numpy()
    save_npz(a["out"], out)
    say("DONE")


# ---- 5. SIGKILL inside a checkpoint save -----------------------------------------------------

BIG_N = 4 * 1024 * 1024  # var + ms + mom + mg: 4 x 16 MiB = 64 MiB of float32 state


def big_program(seed):
    """The variable, optimizer, checkpoint and `step(k)` (applies step k's gradient)."""
    from tf_rmsprop_ops import RMSpropX
    rng = np.random.default_rng([seed, 50])
    var = tf.Variable(rng.normal(size=BIG_N).astype(np.float32), name="big")
    grad = tf.constant(rng.normal(size=BIG_N).astype(np.float32))
    opt = RMSpropX(learning_rate=0.01, momentum=0.9, centered=True, epsilon=1e-6)
    opt.build([var])

    def step(k):  # a different gradient every step: each step's state differs everywhere
        opt.apply_gradients([(grad * np.float32(1.0 + 0.25 * k), var)])

    return var, opt, tf.train.Checkpoint(var=var, opt=opt), step


def big_tensors(var, opt):
    out = {"var": var.numpy(), "iterations": opt.iterations.numpy()}
    for name in opt.slot_names:
        out[name] = opt.get_slot(var, name).numpy()
    return out


def run_bigsave(a):
    """a: seed, ckpt_dir, saves. Steps and saves 1..saves (max_to_keep=1), timing each save;
    before each of the last two saves prints `SAVING k` and waits for a line on stdin; after
    the last, waits to be killed."""
    var, opt, ckpt, step = big_program(a["seed"])
    manager = tf.train.CheckpointManager(ckpt, a["ckpt_dir"], max_to_keep=1)
    took = 0.0
    for k in range(1, a["saves"] + 1):
        step(k)
        if k >= a["saves"] - 1:  # the last two saves start when the test says "go": the
            say(f"SAVING {k}")  # one before is timed alone, the last is killed
            sys.stdin.readline()
        t0 = time.perf_counter()
        manager.save(checkpoint_number=k)
        took = time.perf_counter() - t0
        say(f"SAVED {k} {took:.6f}")
    killpoint("after the last save")


def run_bigverify(a):
    """a: seed, dirs (what killed bigsave runs left), saves, scratch. For each dir, which
    save's state each restored tensor equals (bit for bit); then a torn copy of a complete
    checkpoint (data file truncated, data file bytes flipped, index missing) restored on
    purpose: the error, and whether any tensor took a wrong value."""
    import shutil
    var, opt, ckpt, step = big_program(a["seed"])
    say("WAITING")
    sys.stdin.readline()  # the test says when the dirs are final
    states = {}
    for k in range(1, a["saves"] + 1):
        step(k)
        states[k] = big_tensors(var, opt)
    manager = tf.train.CheckpointManager(ckpt, a["scratch"], max_to_keep=1)
    complete = manager.save(checkpoint_number=a["saves"])  # a complete checkpoint of the last
    result = {"dirs": {}, "torn": {}}

    def restore_into_fresh(path):
        v2, opt2, ckpt2, _ = big_program(a["seed"] + 1)  # different values before restoring
        ckpt2.restore(path).assert_consumed()
        return big_tensors(v2, opt2)

    for d in a["dirs"]:
        latest = tf.train.latest_checkpoint(d)
        entry = {"latest": latest, "files": sorted(os.listdir(d))}
        if latest is not None:
            got = restore_into_fresh(latest)
            entry["matches"] = {name: [k for k, s in states.items()
                                       if np.array_equal(s[name], value)]
                                for name, value in got.items()}
        result["dirs"][d] = entry

    data = complete + ".data-00000-of-00001"
    size = os.path.getsize(data)

    def torn(kind):
        d = os.path.join(a["scratch"], kind)
        shutil.copytree(a["scratch"], d, ignore=shutil.ignore_patterns("truncated", "flipped",
                                                                      "no_index"))
        path = os.path.join(d, os.path.basename(complete))
        if kind == "truncated":
            with open(path + ".data-00000-of-00001", "r+b") as f:
                f.truncate(size // 2)
        elif kind == "flipped":
            with open(path + ".data-00000-of-00001", "r+b") as f:
                f.seek(size // 2)
                chunk = f.read(4096)
                f.seek(size // 2)
                f.write(bytes(b ^ 0xFF for b in chunk))
        else:
            os.remove(path + ".index")
        v2, opt2, ckpt2, _ = big_program(a["seed"] + 1)
        before = big_tensors(v2, opt2)
        entry = {}
        try:
            ckpt2.restore(path).assert_consumed()
            entry["error"] = None
        except Exception as e:  # noqa: BLE001  (reported, the test decides)
            entry["error"] = f"{type(e).__name__}: {str(e)[:400]}"
        after = big_tensors(v2, opt2)
        # Each tensor after the failed restore: unchanged, the saved value, or other (wrong).
        entry["tensors"] = {
            name: ("unchanged" if np.array_equal(value, before[name]) else
                   "saved" if np.array_equal(value, states[a["saves"]][name]) else "other")
            for name, value in after.items()}
        result["torn"][kind] = entry

    for kind in ("truncated", "flipped", "no_index"):
        torn(kind)
    say("RESULT " + json.dumps(result))


# ---- 2./3. ParameterServerStrategy ------------------------------------------------------------

PS_OPT = dict(learning_rate=0.02, momentum=0.9, centered=True, epsilon=1e-6)
PS_ROWS, PS_DIM, PS_OUT = 10, 4, 3


def run_server(a):
    """a: cluster ({"worker": [...], "ps": [...]}), job, index. Serves until killed."""
    spec = tf.train.ClusterSpec(a["cluster"])
    # Workers hang without enough inter-op threads (TensorFlow's test helper: workers + 1).
    config = tf.compat.v1.ConfigProto(
        inter_op_parallelism_threads=len(a["cluster"]["worker"]) + 2)
    server = tf.distribute.Server(spec, job_name=a["job"], task_index=a["index"],
                                  protocol="grpc", config=config, start=True)
    say("READY")
    server.join()


class PsProgram:
    """The ParameterServerStrategy program of items 2 and 3: a coordinator (this process)
    training w (dense), table (sparse) and a 2-shard ShardedVariable (sparse per shard)
    with CONSTANT gradients (a loss linear in the variables), so the state after k applied
    steps is a function of k. a: seed, cluster ({"worker", "ps", "chief"}), in_process
    (the jobs whose servers this process starts: "ps", "worker"), step_sleep_us (how long
    each step waits on the worker AFTER its updates: a kill mid-step then most likely lands
    after them)."""

    def __init__(self, a):
        from tensorflow.python.data.experimental.ops import testing as data_testing
        from tf_rmsprop_ops import RMSpropX
        cluster = a["cluster"]
        servers_spec = tf.train.ClusterSpec({"worker": cluster["worker"], "ps": cluster["ps"]})
        for job in a["in_process"]:
            config = (tf.compat.v1.ConfigProto(device_count={"GPU": 0}) if job == "ps" else
                      tf.compat.v1.ConfigProto(
                          inter_op_parallelism_threads=len(cluster["worker"]) + 2))
            for i in range(len(cluster[job])):
                tf.distribute.Server(servers_spec, job_name=job, task_index=i, protocol="grpc",
                                     config=config, start=True)
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster), rpc_layer="grpc")
        sharding = [False]
        fixed = tf.distribute.experimental.partitioners.FixedShardsPartitioner(2)

        def partitioner(shape, dtype):
            return fixed(shape, dtype) if sharding[0] else [1] * shape.rank

        self.strategy = strategy = tf.distribute.experimental.ParameterServerStrategy(
            resolver, variable_partitioner=partitioner)
        self.coordinator = tf.distribute.experimental.coordinator.ClusterCoordinator(strategy)

        rng = np.random.default_rng([a["seed"], 20])
        init = dict(w=rng.normal(size=(PS_DIM, PS_OUT)), table=rng.normal(size=(PS_ROWS, PS_DIM)),
                    sharded=rng.normal(size=(PS_ROWS, PS_DIM)))
        self.init = init = {k: v.astype(np.float32) for k, v in init.items()}
        cw = tf.constant(rng.normal(size=(PS_DIM, PS_OUT)).astype(np.float32))
        # Rows of both shards (halves of the table), a repeated row among them.
        ids = tf.constant(rng.permutation(np.concatenate([
            rng.integers(0, PS_ROWS // 2, size=3), rng.integers(PS_ROWS // 2, PS_ROWS, size=2),
            [PS_ROWS - 1]])).astype(np.int64))
        cv = tf.constant(rng.normal(size=(6, PS_DIM)).astype(np.float32))
        with strategy.scope():
            w = tf.Variable(init["w"], name="w")
            table = tf.Variable(init["table"], name="table")
            sharding[0] = True
            try:
                sharded = tf.Variable(init["sharded"], name="sharded")
            finally:
                sharding[0] = False
            self.opt = opt = RMSpropX(**PS_OPT)
        self.shards = list(sharded.variables)
        self.variables = variables = [w, table] + self.shards
        self.checkpoint = tf.train.Checkpoint(w=w, table=table, sharded=sharded, opt=opt)
        sleep_us = a.get("step_sleep_us", 0)

        def replica_fn():
            with tf.GradientTape() as tape:
                loss = (tf.reduce_sum(w * cw) + tf.reduce_sum(tf.gather(table, ids) * cv)
                        + tf.reduce_sum(tf.nn.embedding_lookup(sharded, ids) * cv))
            grads = tape.gradient(loss, variables)
            opt.apply_gradients(zip(grads, variables))
            # A value read after the updates (auto control dependencies) through a dataset
            # that sleeps: the worker waits, spending no CPU.
            after = tf.data.Dataset.from_tensors(w.read_value())
            if sleep_us:
                after = after.apply(data_testing.sleep(sleep_us))
            return ([grads[0]] + [(g.values, g.indices) for g in grads[1:]],
                    tf.reduce_sum(after.get_single_element()))

        @tf.function
        def step_fn():
            return strategy.run(replica_fn)

        self.step_fn = step_fn
        self.grads = None

    def first_step(self):
        """Runs one step and keeps its (constant) gradients."""
        remote = self.coordinator.schedule(self.step_fn)
        self.coordinator.join()
        self.grads, _ = remote.fetch()

    def state(self):
        out = {f"init_{k}": v for k, v in self.init.items()}
        if self.grads is not None:
            out["grad_w"] = self.grads[0]
            for i, (values, indices) in enumerate(self.grads[1:]):
                out[f"grad{i + 1}_values"], out[f"grad{i + 1}_indices"] = values, indices
        for name, v in zip(["w", "table", "shard0", "shard1"], self.variables):
            out[name] = v.numpy()
            for slot in self.opt.slot_names:
                out[f"{name}_{slot}"] = self.opt.get_slot(v, slot).numpy()
        out["iterations"] = np.int64(self.opt.iterations.numpy())
        out["shard_rows"] = np.array([int(v.shape[0]) for v in self.shards])
        return out


def run_ps_train(a):
    """Item 2. a: PsProgram's, steps, out. Step 1 run and joined (prints `FIRST`), the
    other steps scheduled at once (`SCHEDULED`), then joined (`JOINED <seconds>`)."""
    prog = PsProgram(a)
    prog.first_step()
    say("FIRST")
    t0 = time.monotonic()
    for _ in range(a["steps"] - 1):
        prog.coordinator.schedule(prog.step_fn)
    say("SCHEDULED")
    prog.coordinator.join()
    say(f"JOINED {time.monotonic() - t0:.2f}")
    save_npz(a["out"], prog.state())
    say("DONE")


def run_ps_ckpt(a):
    """Item 3. a: PsProgram's, phase, ckpt_dir, save_at, steps, out.
    phase "first": runs save_at steps, saves a checkpoint (prints `SAVED`, writes `out`),
      then keeps scheduling steps (20 ms apart) until an error, which it prints
      (`ERROR <type>: <message>`; the test kills the parameter server meanwhile).
    phase "resume": builds the slots, restores the latest checkpoint (prints `RESTORED`,
      writes out + ".restored.npz"), trains to `steps` and writes `out`.
    phase "bad": one step, which must fail (a PS without the ops): prints `ERROR ...`."""
    prog = PsProgram(a)
    manager = tf.train.CheckpointManager(prog.checkpoint, a["ckpt_dir"], max_to_keep=2)
    coordinator = prog.coordinator
    if a["phase"] == "bad":
        try:
            prog.first_step()
        except Exception as e:  # noqa: BLE001  (what the user sees)
            say("ERROR " + json.dumps(f"{type(e).__name__}: {e}"[:3000]))
            return
        say("NO ERROR")
        return
    if a["phase"] == "first":
        prog.first_step()
        for _ in range(a["save_at"] - 1):
            coordinator.schedule(prog.step_fn)
        coordinator.join()
        manager.save(checkpoint_number=a["save_at"])
        save_npz(a["out"], prog.state())
        say("SAVED")
        try:
            for _ in range(100000):
                coordinator.schedule(prog.step_fn)
                time.sleep(0.02)
            coordinator.join()
        except Exception as e:  # noqa: BLE001
            say("ERROR " + json.dumps(f"{type(e).__name__}: {e}"[:3000]))
        return
    with prog.strategy.scope():
        prog.opt.build(prog.variables)
    prog.checkpoint.restore(manager.latest_checkpoint).assert_consumed()
    say("RESTORED " + json.dumps(dict(iterations=int(prog.opt.iterations.numpy()),
                                      checkpoint=manager.latest_checkpoint)))
    save_npz(a["out"] + ".restored.npz", prog.state())
    prog.first_step()
    for _ in range(a["steps"] - int(prog.opt.iterations.numpy())):
        coordinator.schedule(prog.step_fn)
    coordinator.join()
    save_npz(a["out"], prog.state())
    say("DONE")


# ---- 4. MultiWorkerMirroredStrategy with a PreemptionCheckpointHandler ---------------------

M_ROWS, M_DIM, M_OUT = 12, 4, 3


def run_mwms(a):
    """a: seed, steps, ckpt_dir, pause_at (this worker stops after that many steps and
    waits for its SIGTERM, then goes on; or null), out. TF_CONFIG from the environment.
    Trains w and table (IndexedSlices) with RMSpropX, one PreemptionCheckpointHandler.run
    per step, each worker on its own data for step i (a function of seed, task, i)."""
    import signal
    import threading
    from tf_rmsprop_ops import RMSpropX
    task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    init = np.random.default_rng([a["seed"], 30])
    with strategy.scope():
        w = tf.Variable(init.normal(size=(M_DIM, M_OUT)).astype(np.float32), name="w")
        table = tf.Variable(init.normal(size=(M_ROWS, M_DIM)).astype(np.float32), name="table")
        opt = RMSpropX(learning_rate=0.02, momentum=0.9, centered=True, epsilon=1e-6)
        opt.build([w, table])
    ckpt = tf.train.Checkpoint(w=w, table=table, opt=opt)
    handler = tf.distribute.experimental.PreemptionCheckpointHandler(
        strategy.cluster_resolver, ckpt, a["ckpt_dir"])
    say("RESTORED " + json.dumps(dict(run_calls=int(handler.total_run_calls),
                                      iterations=int(local(strategy, opt.iterations)))))
    got_sigterm = threading.Event()
    handler_fn = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):  # the handler's own, and note it
        got_sigterm.set()
        handler_fn(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)

    def replica_fn(x, ids):
        with tf.GradientTape() as tape:
            loss = (tf.reduce_sum(tf.tanh(x @ w)) * 0.1
                    + tf.reduce_sum(tf.sin(tf.gather(table, ids)) * 1e-1))
        grads = tape.gradient(loss, [w, table])
        opt.apply_gradients(zip(grads, [w, table]))

    @tf.function
    def train_step(x, ids):
        strategy.run(replica_fn, args=(x, ids))

    while handler.total_run_calls < a["steps"]:
        i = int(handler.total_run_calls)
        rng = np.random.default_rng([a["seed"], 40 + task, i])
        handler.run(train_step, tf.constant(rng.normal(size=(5, M_DIM)).astype(np.float32)),
                    tf.constant(rng.integers(0, M_ROWS, size=6).astype(np.int64)))
        if a["pause_at"] == i + 1:
            say(f"KILLPOINT step {i + 1}")
            if not got_sigterm.wait(120):
                raise SystemExit("no SIGTERM within 120 s")
            say("SIGTERM received")
    out = {"w": local(strategy, w), "table": local(strategy, table),
           "iterations": np.int64(local(strategy, opt.iterations)),
           "run_calls": np.int64(handler.total_run_calls)}
    for name in opt.slot_names:
        out[f"w_{name}"] = local(strategy, opt.get_slot(w, name))
        out[f"table_{name}"] = local(strategy, opt.get_slot(table, name))
    save_npz(a["out"], out)
    say("DONE")


def local(strategy, v):
    """This worker's (single) copy of a mirrored value, as NumPy."""
    (value,) = strategy.experimental_local_results(v)
    return value.numpy()


MODES = {"keras": run_keras, "replay": run_replay, "loop": run_loop, "bigsave": run_bigsave,
         "bigverify": run_bigverify, "server": run_server, "ps_train": run_ps_train,
         "ps_ckpt": run_ps_ckpt,
         "mwms": run_mwms}


if __name__ == "__main__":
    import traceback
    if sys.argv[1] == "mwms":  # exits as the PreemptionCheckpointHandler makes it exit
        run_mwms(json.loads(sys.argv[2]))
        sys.exit(0)
    code = 1
    try:
        MODES[sys.argv[1]](json.loads(sys.argv[2]))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
        if not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # in-process gRPC servers (ps_train) cannot be stopped
