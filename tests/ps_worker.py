"""RMSpropX under ParameterServerStrategy on an in-process cluster (2 workers, NUM_PS
parameter servers, this process the chief/coordinator), steps scheduled with a
ClusterCoordinator. Prints one JSON line ("RESULT ...") per run: for each case the final
variables and slots, the gradients each step computed (fetched from the workers, so the
test can replay them on one device), the devices of variables and slots, and where the
runtime placed the update ops (TensorFlow's device placement log, read back from this
process's stdout). Run by test_parameter_server.py; in-process servers cannot be shut
down, so the process ends with os._exit.

Usage: ps_worker.py SEED NUM_PS CASE[,CASE...]
Cases: dense_and_sparse | sharded | xla (jit_compile=True, dense and sparse).
"""
import contextlib
import ctypes
import json
import os
import re
import sys
import tempfile
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from multiworker_worker import update_ops_by_compilation  # noqa: E402
from tf_rmsprop_ops import RMSpropX  # noqa: E402  (loads the op library the servers share)
from tf_rmsprop_ops.demo import free_ports  # noqa: E402

ROWS, DIM, OUT, STEPS = 10, 4, 3, 3
KWARGS = dict(learning_rate=0.02, momentum=0.9, centered=True, epsilon=1e-6)
NUM_WORKERS = 2
# Placement log lines: "<node name>: (<op type>): <device>".
PLACEMENT = re.compile(r"^\S+: \((\w+)\): (/job:\S+)$")
REPORTED_OPS = ("ApplyRMSpropX", "SparseApplyRMSpropX", "StatefulPartitionedCall", "MatMul",
                "Sin")

# Only the table of the "sharded" case is partitioned: FixedShardsPartitioner(2) while the
# flag is set, no partitioning otherwise.
SHARDING = [False]
_FIXED_SHARDS = tf.distribute.experimental.partitioners.FixedShardsPartitioner(2)


def partitioner(shape, dtype):
    return _FIXED_SHARDS(shape, dtype) if SHARDING[0] else [1] * shape.rank



def create_in_process_cluster(num_workers, num_ps):
    """As tensorflow's multi_worker_test_base.create_in_process_cluster (without
    portpicker): starts the servers in this process, returns the cluster dict."""
    ports = free_ports(num_workers + num_ps)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports[:num_workers]],
               "ps": [f"127.0.0.1:{p}" for p in ports[num_workers:]]}
    spec = tf.train.ClusterSpec(cluster)
    # Workers hang without enough inter-op threads (TF's helper: num_workers + 1).
    worker_config = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=num_workers + 1)
    ps_config = tf.compat.v1.ConfigProto(device_count={"GPU": 0})
    for i in range(num_workers):
        tf.distribute.Server(spec, job_name="worker", task_index=i, protocol="grpc",
                             config=worker_config, start=True)
    for i in range(num_ps):
        tf.distribute.Server(spec, job_name="ps", task_index=i, protocol="grpc",
                             config=ps_config, start=True)
    return cluster


@contextlib.contextmanager
def captured_fd1(sink):
    """Appends what is written to file descriptor 1 (C printf included: the placement log)
    inside the block to `sink`."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    libc.fflush(None)
    saved = os.dup(1)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            libc.fflush(None)
            os.dup2(saved, 1)
            os.close(saved)
            tmp.seek(0)
            sink.append(tmp.read().decode(errors="replace"))


def placements(log):
    """{op type: sorted devices} from a placement log: the reported op types, and under
    "ps_op_types" every op type placed on a parameter server."""
    out, on_ps = {}, set()
    for line in log.splitlines():
        m = PLACEMENT.match(line.strip())
        if not m:
            continue
        if m.group(1) in REPORTED_OPS:
            out.setdefault(m.group(1), set()).add(m.group(2))
        if m.group(2).startswith("/job:ps/"):
            on_ps.add(m.group(1))
    out = {k: sorted(v) for k, v in out.items()}
    out["ps_op_types"] = sorted(on_ps)
    return out


def loss_fn(w, table, x, ids):
    emb = tf.nn.embedding_lookup(table, ids)  # per-shard IndexedSlices on a ShardedVariable
    return tf.reduce_sum((x @ w) ** 2) * 1e-3 + tf.reduce_sum(tf.sin(emb) * 1e-2)


def run_case(strategy, coordinator, case, rng, result):
    """Runs one case, filling `result` (devices first, so they are there on a failure)."""
    init_w = rng.normal(size=(DIM, OUT)).astype(np.float32)
    init_t = rng.normal(size=(ROWS, DIM)).astype(np.float32)
    data = [(rng.normal(size=(5, DIM)).astype(np.float32),
             rng.integers(0, ROWS, size=6).astype(np.int64)) for _ in range(STEPS)]
    with strategy.scope():
        w = tf.Variable(init_w, name=f"{case}_w")
        SHARDING[0] = case in ("sharded", "state8_sharded")
        try:
            table = tf.Variable(init_t, name=f"{case}_table")
        finally:
            SHARDING[0] = False
        # state8_sharded: 8-bit state for the table (decided on the whole table: each shard
        # is smaller than min_8bit_size), 32-bit for w.
        eight = dict(state_bits=8, min_8bit_size=ROWS * DIM) if case == "state8_sharded" else {}
        opt = RMSpropX(jit_compile=(case == "xla"), **KWARGS, **eight)
    # A ShardedVariable is trained through its shards (tf.GradientTape cannot differentiate
    # with respect to the ShardedVariable itself).
    parts = list(table.variables) if case in ("sharded", "state8_sharded") else [table]
    result.update(w_device=w.device, part_devices=[p.device for p in parts],
                  lr_device=opt.learning_rate.device, is_sharded=type(table).__name__)

    def replica_fn(x, ids):
        with tf.GradientTape() as tape:
            loss = loss_fn(w, table, x, ids)
        grads = tape.gradient(loss, [w] + parts)
        assert all(isinstance(g, tf.IndexedSlices) for g in grads[1:]), grads
        opt.apply_gradients(zip(grads, [w] + parts))
        return grads[0], [(g.values, g.indices) for g in grads[1:]]

    @tf.function
    def step_fn(x, ids):
        return strategy.run(replica_fn, args=(x, ids))

    fetched = []
    for x, ids in data:
        remote = coordinator.schedule(step_fn, args=(tf.constant(x), tf.constant(ids)))
        coordinator.join()  # one step at a time: the gradients form one sequence
        gw, gparts = remote.fetch()
        fetched.append(dict(w=gw.tolist(), parts=[dict(values=v.tolist(), indices=i.tolist())
                                                  for v, i in gparts]))

    def value(v):
        return v.numpy().tolist()

    # The step's graph (traced again here, the same ops): which update ops XLA compiles.
    graph = step_fn.get_concrete_function(tf.constant(data[0][0]),
                                          tf.constant(data[0][1])).graph

    result.update(
        init_w=init_w.tolist(), init_t=init_t.tolist(), grads=fetched,
        iterations=int(opt.iterations.numpy()), slot_names=list(opt.slot_names),
        w=value(w), parts=[value(p) for p in parts],
        part_rows=[int(p.shape[0]) for p in parts],
        slots={name: dict(w=value(opt.get_slot(w, name)),
                          parts=[value(opt.get_slot(p, name)) for p in parts])
               for name in opt.slot_names},
        slot_devices={name: dict(w=slot_device(opt, w, name),
                                 parts=[slot_device(opt, p, name) for p in parts])
                      for name in opt.slot_names},
        state_bits={name: dict(w=state_bits(opt, w, name),
                               parts=[state_bits(opt, p, name) for p in parts])
                    for name in opt.slot_names},
        update_ops=update_ops_by_compilation(graph.as_graph_def()),
    )


def _state(opt, var, name):
    return {"ms": opt._ms, "mom": opt._mom, "mg": opt._mg}[name][opt._position(var)]


def slot_device(opt, var, name):
    """Where the slot's state lives (an 8-bit state's codes; get_slot's dequantized value
    is computed where it is read)."""
    state = _state(opt, var, name)
    return state.codes.device if hasattr(state, "codes") else state.device


def state_bits(opt, var, name):
    return 8 if hasattr(_state(opt, var, name), "codes") else 32


def main(seed, num_ps, cases):
    tf.debugging.set_log_device_placement(True)  # before connecting: workers inherit it
    cluster = create_in_process_cluster(NUM_WORKERS, num_ps)
    cluster["chief"] = [f"127.0.0.1:{free_ports(1)[0]}"]
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster), rpc_layer="grpc")
    strategy = tf.distribute.experimental.ParameterServerStrategy(
        resolver, variable_partitioner=partitioner)
    coordinator = tf.distribute.experimental.coordinator.ClusterCoordinator(strategy)
    out = dict(num_ps=num_ps)
    for k, case in enumerate(cases):
        log, result = [], {}
        try:
            with captured_fd1(log):
                run_case(strategy, coordinator, case, np.random.default_rng([seed, k]), result)
        except Exception as e:  # reported, the next case still runs
            result.update(error=f"{type(e).__name__}: {e}"[-20000:],
                          traceback=traceback.format_exc()[-3000:])
        result["placement"] = placements("".join(log))
        out[case] = result
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    code = 1
    try:
        main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(","))
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # in-process gRPC servers cannot be stopped
