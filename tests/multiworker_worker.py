"""One worker of a 2-process MultiWorkerMirroredStrategy cluster (TF_CONFIG from the
environment, CPU, RING collectives): trains a dense variable and an embedding table with
RMSpropX inside `strategy.run` in a tf.function, each worker on its own data, and prints one
JSON line: the final variables and slots (this worker's copies) and the gradients this
worker computed each step (before the all-reduce). Run by test_multiworker.py.

Usage: multiworker_worker.py SEED STEPS {native,xla}
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tf_rmsprop_ops import RMSpropX  # noqa: E402

ROWS, DIM, OUT = 12, 4, 3
KWARGS = dict(learning_rate=0.02, momentum=0.9, centered=True, epsilon=1e-6)


def loss_fn(w, table, x, ids):
    emb = tf.gather(table, ids)  # IndexedSlices gradient for the table
    return tf.reduce_sum((x @ w) ** 2) * 1e-3 + tf.reduce_sum(tf.sin(emb) * 1e-2)


UPDATE_OPS = ("ApplyRMSpropX", "SparseApplyRMSpropX")


def update_ops_by_compilation(graph_def):
    """{"xla": [...], "native": [...]}: the RMSpropX op types (sorted) in the graph and its
    function library, split by whether they sit in a function that XLA must compile."""
    library = {f.signature.name: f for f in graph_def.library.function}
    compiled = {name for name, f in library.items()
                if "_XlaMustCompile" in f.attr and f.attr["_XlaMustCompile"].b}
    nodes = [(None, n) for n in graph_def.node] + [
        (name, n) for name, f in library.items() for n in f.node_def]
    for _, n in nodes:  # calls marked for compilation (the attr on the call op)
        if "_XlaMustCompile" in n.attr and n.attr["_XlaMustCompile"].b and "f" in n.attr:
            compiled.add(n.attr["f"].func.name)
    out = {"xla": [], "native": []}
    for fn, n in nodes:
        if n.op in UPDATE_OPS:
            out["xla" if fn in compiled else "native"].append(n.op)
    return {k: sorted(v) for k, v in out.items()}


def main(seed, steps, mode):
    task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync

    # The same initial values on both workers (MWMS broadcasts worker 0's anyway);
    # different data per worker.
    init_rng = np.random.default_rng([seed, 1000])
    init_w = init_rng.normal(size=(DIM, OUT)).astype(np.float32)
    init_t = init_rng.normal(size=(ROWS, DIM)).astype(np.float32)
    rng = np.random.default_rng([seed, task])
    data = [(rng.normal(size=(5, DIM)).astype(np.float32),
             rng.integers(0, ROWS, size=6).astype(np.int64)) for _ in range(steps)]

    with strategy.scope():
        w = tf.Variable(init_w, name="w")
        table = tf.Variable(init_t, name="table")
        # Slots are built lazily, inside strategy.run.
        # "state8": every variable's state 8-bit (min_8bit_size=0).
        eight = dict(state_bits=8, min_8bit_size=0) if mode == "state8" else {}
        opt = RMSpropX(jit_compile=(mode == "xla"), **KWARGS, **eight)

    def replica_fn(x, ids):
        with tf.GradientTape() as tape:
            loss = loss_fn(w, table, x, ids)
        gw, gt = tape.gradient(loss, [w, table])
        assert isinstance(gt, tf.IndexedSlices), type(gt)
        opt.apply_gradients([(gw, w), (gt, table)])
        return gw, gt.values, gt.indices

    @tf.function
    def step(x, ids):
        return strategy.run(replica_fn, args=(x, ids))

    grads = []
    for x, ids in data:
        gw, gv, gi = step(tf.constant(x), tf.constant(ids))
        grads.append(dict(w=gw.numpy().tolist(), values=gv.numpy().tolist(),
                          indices=gi.numpy().tolist()))

    graph = step.get_concrete_function(tf.constant(data[0][0]), tf.constant(data[0][1])).graph

    def local(v):  # this worker's (single) copy
        (value,) = strategy.experimental_local_results(v)
        return value.numpy().tolist()

    result = dict(
        task=task, mode=mode, init_w=init_w.tolist(), init_t=init_t.tolist(), grads=grads,
        update_ops=update_ops_by_compilation(graph.as_graph_def()),
        w=local(w), table=local(table), iterations=int(local(opt.iterations)),
        slot_names=list(opt.slot_names),
        slots={name: dict(w=local(opt.get_slot(w, name)), table=local(opt.get_slot(table, name)))
               for name in opt.slot_names},
        mirrored=all(isinstance(v, tf.distribute.DistributedValues)
                     for v in [w, table] + [s for u in (w, table) for n in opt.slot_names
                                            for s in state_variables(opt, u, n)
                                            if s.dtype != tf.uint8 and mode != "state8"]),
        # 8-bit state: plain variables on each worker (TF cannot broadcast uint8 initial
        # values between workers), equal because every worker applies the same update.
        state8_devices=sorted({s.device for u in (w, table) for n in opt.slot_names
                               for s in state_variables(opt, u, n) if mode == "state8"}),
        state8_values={n: {which: [local(s) for s in state_variables(opt, u, n)]
                           for which, u in (("w", w), ("table", table))}
                       for n in opt.slot_names} if mode == "state8" else {},
        state_bits=sorted({8 if hasattr(state_of(opt, u, n), "codes") else 32
                           for u in (w, table) for n in opt.slot_names}),
    )
    print("RESULT " + json.dumps(result), flush=True)


def state_of(opt, var, name):
    return {"ms": opt._ms, "mom": opt._mom, "mg": opt._mg}[name][opt._position(var)]


def state_variables(opt, var, name):
    """The variables holding a slot: it, or an 8-bit state's codes and absmax."""
    state = state_of(opt, var, name)
    return [state.codes, state.absmax] if hasattr(state, "codes") else [state]


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
