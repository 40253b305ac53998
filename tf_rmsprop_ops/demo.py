"""`tf-rmsprop-ops demo`: trains a small model with RMSpropX in a tf.function loop.

The model has an embedding table (its gradient is an IndexedSlices: the sparse op updates
only the looked-up rows) and a dense layer (the dense op), so both kernels run. With
`--strategy` the same model trains under a tf.distribute strategy or a DTensor mesh on
this machine's CPU (logical devices, local processes, in-process servers):

* none: one device.
* mirrored: MirroredStrategy over 2 logical CPU devices.
* multiworker: MultiWorkerMirroredStrategy, 2 worker processes on 127.0.0.1.
* ps: ParameterServerStrategy, an in-process cluster (2 workers, 2 parameter servers), the
  table split over both servers (ShardedVariable), steps scheduled by a ClusterCoordinator.
* dtensor: a 2-device DTensor mesh, the table sharded by rows, the dense layer replicated.
"""
import json
import os
import socket
import subprocess
import sys
import time

STRATEGIES = ("none", "mirrored", "multiworker", "ps", "dtensor")
VOCAB, DIM, BATCH = 1000, 8, 64
HYPER = dict(learning_rate=0.01, momentum=0.9, centered=True)


def _two_logical_cpus():
    import tensorflow as tf
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)


class _Task:
    """The data: a fixed random 'true' model; batches of (ids, y) from a seeded stream."""

    def __init__(self, seed):
        import numpy as np
        self.rng = np.random.default_rng(seed)
        self.true_table = self.rng.normal(size=(VOCAB, DIM)).astype(np.float32)
        self.true_w = self.rng.normal(size=(DIM, 1)).astype(np.float32)
        self.init_table = self.rng.normal(scale=0.1, size=(VOCAB, DIM)).astype(np.float32)
        self.init_w = self.rng.normal(scale=0.1, size=(DIM, 1)).astype(np.float32)

    def batch(self, size=BATCH):
        ids = self.rng.integers(0, VOCAB, size=(size, 4))
        return ids, (self.true_table[ids].sum(axis=1) @ self.true_w).astype("float32")


def _loss(tf, table, w, ids, y, lookup=None):
    emb = (lookup or tf.gather)(table, ids)
    return tf.reduce_mean((tf.reduce_sum(emb, axis=1) @ w - y) ** 2)


def _train(step, task, steps, opt, label, batch=BATCH):
    import numpy as np
    print(f"training: embedding [{VOCAB}, {DIM}] (sparse updates) + dense [{DIM}, 1] with "
          f"RMSpropX(momentum=0.9, centered=True{label})", flush=True)
    start, losses = time.perf_counter(), []
    for i in range(1, steps + 1):
        losses.append(float(step(*task.batch(batch))))
        if i == 1 or i % max(1, steps // 10) == 0:
            print(f"  step {i:5d}  loss {losses[-1]:10.4f}  (mean of the last "
                  f"{min(i, 10)}: {np.mean(losses[-10:]):.4f})", flush=True)
    elapsed = time.perf_counter() - start
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    print(f"mean loss of the first 10 steps {first:.4f} -> of the last 10 {last:.4f} in "
          f"{steps} steps ({elapsed:.1f} s); optimizer iterations: "
          f"{int(opt.iterations.numpy())}")
    if not last < first:
        raise SystemExit("demo: the loss did not fall")
    return first, last


def _none(steps, jit_compile, seed):
    import tensorflow as tf

    from tf_rmsprop_ops.optimizer import RMSpropX
    task = _Task(seed)
    table, w = tf.Variable(task.init_table, name="embedding"), tf.Variable(task.init_w, name="kernel")
    opt = RMSpropX(jit_compile=jit_compile, **HYPER)

    @tf.function
    def step(ids, y):
        with tf.GradientTape() as tape:
            loss = _loss(tf, table, w, ids, y)
        grads = tape.gradient(loss, [table, w])  # [IndexedSlices, Tensor]
        opt.apply_gradients(zip(grads, [table, w]))
        return loss
    return _train(step, task, steps, opt, ", jit_compile=True" if jit_compile else "")


def _mirrored(steps, jit_compile, seed, strategy=None, label=None):
    import tensorflow as tf

    from tf_rmsprop_ops.optimizer import RMSpropX
    if strategy is None:
        _two_logical_cpus()
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    task = _Task(seed)
    with strategy.scope():
        table = tf.Variable(task.init_table, name="embedding")
        w = tf.Variable(task.init_w, name="kernel")
        opt = RMSpropX(jit_compile=jit_compile, **HYPER)
        opt.build([table, w])
    replicas = strategy.num_replicas_in_sync

    def replica_step(ids, y):
        with tf.GradientTape() as tape:
            # Each replica's loss is its share of the global mean: the summed gradients
            # are those of the global batch.
            loss = _loss(tf, table, w, ids, y) / replicas
        opt.apply_gradients(zip(tape.gradient(loss, [table, w]), [table, w]))
        return loss

    @tf.function
    def step(ids, y):
        per_replica = strategy.run(replica_step, args=(ids, y))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def run(ids, y):
        # Split the global batch between the replicas (this process's replicas).
        dist = strategy.experimental_distribute_values_from_function(
            lambda ctx: (tf.constant(ids[ctx.replica_id_in_sync_group::replicas]),
                         tf.constant(y[ctx.replica_id_in_sync_group::replicas])))
        return step(*dist)
    return _train(run, task, steps, opt,
                  label or f"; MirroredStrategy, {replicas} replicas")


def free_ports(n):
    """n distinct free TCP ports on 127.0.0.1 (all bound at once, then released)."""
    socks = []
    try:
        for _ in range(n):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _multiworker(steps, jit_compile, seed, timeout=300):
    import tempfile
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs, logs = [], []
    try:
        for index in range(2):
            env = dict(os.environ, TF_CONFIG=json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": index}}))
            cmd = [sys.executable, "-m", "tf_rmsprop_ops.demo", "--multiworker-worker",
                   str(steps), str(int(jit_compile)), str(seed)]
            logs.append(tempfile.TemporaryFile(mode="w+"))  # each worker's stderr
            procs.append(subprocess.Popen(
                cmd, env=env, text=True, stderr=logs[-1],
                stdout=subprocess.PIPE if index == 0 else subprocess.DEVNULL))
        print(f"multiworker: 2 worker processes on {', '.join(cluster['worker'])} "
              "(worker 0's output below)", flush=True)
        deadline = time.monotonic() + timeout
        for line in procs[0].stdout:
            print("  [worker 0] " + line.rstrip(), flush=True)
        for p in procs:
            p.wait(timeout=max(1, deadline - time.monotonic()))
        for index, (p, log) in enumerate(zip(procs, logs)):
            if p.returncode:
                log.seek(0)
                sys.stderr.write(f"worker {index} failed:\n{log.read()[-3000:]}\n")
        if any(p.returncode for p in procs):
            raise SystemExit(f"demo: a worker failed (exit codes {[p.returncode for p in procs]})")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()


def _multiworker_worker(steps, jit_compile, seed):
    import tensorflow as tf
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    # Same data stream on both workers: each takes every second example of it.
    return _mirrored(steps, jit_compile, seed, strategy=strategy,
                     label=f"; MultiWorkerMirroredStrategy, worker {index} of 2")


def _ps(steps, jit_compile, seed):
    import tensorflow as tf

    from tf_rmsprop_ops.optimizer import RMSpropX
    ports = free_ports(5)
    cluster = {"chief": [f"127.0.0.1:{ports[0]}"],
               "worker": [f"127.0.0.1:{p}" for p in ports[1:3]],
               "ps": [f"127.0.0.1:{p}" for p in ports[3:5]]}
    spec = tf.train.ClusterSpec(cluster)
    # Every server of the cluster lives in this process, which has loaded the op library.
    for job in ("worker", "ps"):
        for i in range(2):
            tf.distribute.Server(spec, job_name=job, task_index=i, protocol="grpc", start=True)
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        spec, rpc_layer="grpc", task_type="chief", task_id=0)
    strategy = tf.distribute.experimental.ParameterServerStrategy(
        resolver, variable_partitioner=tf.distribute.experimental.partitioners.FixedShardsPartitioner(2))
    coordinator = tf.distribute.experimental.coordinator.ClusterCoordinator(strategy)
    task = _Task(seed)
    with strategy.scope():
        table = tf.Variable(task.init_table, name="embedding")  # split over both PS
        w = tf.Variable(task.init_w[:, :], name="kernel")
        opt = RMSpropX(jit_compile=jit_compile, **HYPER)
    shards = list(getattr(table, "variables", [table]))
    print(f"ps: 2 workers, 2 parameter servers (in-process, 127.0.0.1); the table is "
          f"{len(shards)} shards on {', '.join(s.device for s in shards)}", flush=True)
    # A partitioned variable trains shard by shard: each shard has its slots on its PS.
    variables = shards + list(getattr(w, "variables", [w]))
    opt.build(variables)

    @tf.function
    def worker_step(ids, y):
        def replica_step(ids, y):
            with tf.GradientTape() as tape:
                loss = _loss(tf, table, w, ids, y, lookup=tf.nn.embedding_lookup)
            opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss
        return strategy.run(replica_step, args=(ids, y))

    def run(ids, y):
        return coordinator.schedule(worker_step, args=(tf.constant(ids), tf.constant(y))).fetch()
    return _train(run, task, steps, opt, "; ParameterServerStrategy")


def _dtensor(steps, jit_compile, seed):
    _two_logical_cpus()
    import tensorflow as tf
    from tensorflow.experimental import dtensor

    from tf_rmsprop_ops.optimizer import RMSpropX
    if jit_compile:
        raise SystemExit("demo: --jit is not available with --strategy dtensor")
    mesh = dtensor.create_mesh([("x", 2)], device_type="CPU")
    rows, replicated = dtensor.Layout(["x", dtensor.UNSHARDED], mesh), dtensor.Layout.replicated(mesh, 2)

    def on(value, layout):
        return dtensor.relayout(dtensor.copy_to_mesh(tf.constant(value), dtensor.Layout.replicated(mesh, value.ndim)), layout)
    task = _Task(seed)
    table, w = dtensor.DVariable(on(task.init_table, rows)), dtensor.DVariable(on(task.init_w, replicated))
    opt = RMSpropX(mesh=mesh, **HYPER)

    @tf.function
    def step(ids, y):
        with tf.GradientTape() as tape:
            # DTensor has no gather on a row-sharded resource: gather from its value.
            loss = _loss(tf, tf.convert_to_tensor(table), w, ids, y)
        opt.apply_gradients(zip(tape.gradient(loss, [table, w]), [table, w]))
        return loss
    print(f"dtensor: 2-device CPU mesh; table layout {rows.sharding_specs} (each device "
          f"holds {VOCAB // 2} rows), dense layer replicated", flush=True)
    return _train(lambda ids, y: step(on(ids, dtensor.Layout.replicated(mesh, 2)),
                                      on(y, replicated)), task, steps, opt, "; DTensor mesh")


def main(steps=300, jit_compile=False, seed=0, strategy="none"):
    if strategy not in STRATEGIES:
        raise SystemExit(f"demo: unknown strategy {strategy!r}; choose from {STRATEGIES}")
    return {"none": _none, "mirrored": _mirrored, "multiworker": _multiworker, "ps": _ps,
            "dtensor": _dtensor}[strategy](steps, jit_compile, seed)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--multiworker-worker"]:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        steps, jit, seed = map(int, sys.argv[2:5])
        _multiworker_worker(steps, bool(jit), seed)
        sys.stdout.flush()
        os._exit(0)
