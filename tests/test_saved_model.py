"""SavedModel: a training export resumes bit-identically in a new process; a serving-only
export loads where the package was never imported; a training export without the package
fails naming the op."""
import os
import subprocess
import sys
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_rmsprop_ops import RMSpropX
from conftest import BASE_SEED

VOCAB, DIM, BATCH = 30, 4, 8
WORKER = os.path.join(os.path.dirname(__file__), "saved_model_worker.py")


class Model(tf.Module):
    """A tiny recommender: an embedding table (sparse updates) and a dense head."""

    def __init__(self, rng):
        super().__init__()
        self.table = tf.Variable(rng.normal(size=(VOCAB, DIM)).astype(np.float32))
        self.w = tf.Variable(rng.normal(size=(DIM + 3, 1)).astype(np.float32))

    def __call__(self, x, ids):
        emb = tf.reduce_sum(tf.gather(self.table, ids), axis=1)
        return tf.concat([emb, x], axis=1) @ self.w


SERVE_SIGNATURE = [tf.TensorSpec([None, 3], tf.float32), tf.TensorSpec([None, 2], tf.int64)]


class Trainer(tf.Module):
    def __init__(self, rng, jit, state_bits=32, flat_state=False):
        super().__init__()
        self.model = Model(rng)
        schedule = keras.optimizers.schedules.ExponentialDecay(0.02, decay_steps=2,
                                                              decay_rate=0.9)
        self.optimizer = RMSpropX(learning_rate=schedule, momentum=0.9, centered=True,
                                  epsilon=1e-6, jit_compile=jit, state_bits=state_bits,
                                  min_8bit_size=0, flat_state=flat_state)

    @tf.function(input_signature=SERVE_SIGNATURE)
    def serve(self, x, ids):
        return self.model(x, ids)

    @tf.function(input_signature=SERVE_SIGNATURE + [tf.TensorSpec([None, 1], tf.float32)])
    def train_step(self, x, ids, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((self.model(x, ids) - y) ** 2)
        variables = [self.model.table, self.model.w]
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    @tf.function(input_signature=[])
    def optimizer_state(self):
        return [tf.identity(v) for v in self.optimizer.variables]

    @tf.function(input_signature=[])
    def model_variables(self):
        return [tf.identity(self.model.table), tf.identity(self.model.w)]


def _batches(rng, n):
    return dict(xs=rng.normal(size=(n, BATCH, 3)).astype(np.float32),
                ids=rng.integers(0, VOCAB, size=(n, BATCH, 2)),
                ys=rng.normal(size=(n, BATCH, 1)).astype(np.float32),
                serve_x=rng.normal(size=(5, 3)).astype(np.float32),
                serve_ids=rng.integers(0, VOCAB, size=(5, 2)))


def _run(*args, timeout=120):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, WORKER, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


# flat: the state in flat buffers (the table's sparse updates on its range of them),
# captured by the exported functions.
@pytest.fixture(scope="module", params=[(False, 32, False), (True, 32, False), (False, 8, False),
                                        (False, 32, True)],
                ids=["native", "xla", "8bit", "flat"])
def exported(request, tmp_path_factory):
    # Module scope has no `rng` fixture: the same derivation (TF_RMSPROP_TEST_SEED reproduces it).
    node = f"{request.node.nodeid}[{request.param}]"
    rng = np.random.default_rng([BASE_SEED, zlib.crc32(node.encode())])
    tmp = tmp_path_factory.mktemp("saved")
    jit, state_bits, flat_state = request.param
    trainer = Trainer(rng, jit=jit, state_bits=state_bits, flat_state=flat_state)

    before, after = _batches(rng, 3), _batches(rng, 4)
    for x, i, y in zip(before["xs"], before["ids"], before["ys"]):
        trainer.train_step(tf.constant(x), tf.constant(i), tf.constant(y))
    from tf_rmsprop_ops._flat_state import is_flat
    assert is_flat(trainer.optimizer.get_slot(trainer.model.w, "ms")) == flat_state
    assert is_flat(trainer.optimizer.get_slot(trainer.model.table, "ms")) == flat_state
    train_path = str(tmp / "train")
    tf.saved_model.save(trainer, train_path)
    serve_path = str(tmp / "serve")  # the model only: no optimizer function in it
    serving = tf.Module()
    serving.model = trainer.model
    serving.serve = tf.function(lambda x, ids: trainer.model(x, ids),
                                input_signature=SERVE_SIGNATURE)
    tf.saved_model.save(serving, serve_path)
    data = str(tmp / "after.npz")
    np.savez(data, **after)
    served = trainer.serve(tf.constant(after["serve_x"]), tf.constant(after["serve_ids"]))
    # The uninterrupted run: the same steps in this process.
    losses = [trainer.train_step(tf.constant(x), tf.constant(i), tf.constant(y)).numpy()
              for x, i, y in zip(after["xs"], after["ids"], after["ys"])]
    return dict(trainer=trainer, train_path=train_path, serve_path=serve_path, data=data,
                served=served.numpy(), losses=np.array(losses), tmp=tmp)


def test_training_resumes_bit_identically_in_a_new_process(exported):
    out = str(exported["tmp"] / "continued.npz")
    proc = _run("continue", exported["train_path"], exported["data"], out)
    assert proc.returncode == 0 and "DONE" in proc.stdout, proc.stderr[-3000:]
    got = np.load(out)
    trainer = exported["trainer"]
    np.testing.assert_array_equal(got["served"], exported["served"])
    np.testing.assert_array_equal(got["losses"], exported["losses"])
    assert int(got["iterations"]) == int(trainer.optimizer.iterations.numpy()) == 7
    state = [v.numpy() for v in trainer.optimizer.variables]
    eight_bit = trainer.optimizer.get_config()["state_bits"] == 8
    # iterations; ms, mom, mg of two variables (8-bit: codes and absmax each)
    assert len(state) == 1 + 2 * 3 * (2 if eight_bit else 1)
    assert eight_bit == any(s.dtype == np.uint8 for s in state)
    for k, want in enumerate(state):
        np.testing.assert_array_equal(got[f"state{k}"], want)
    for k, var in enumerate([trainer.model.table, trainer.model.w]):
        np.testing.assert_array_equal(got[f"model{k}"], var.numpy())


def test_serving_export_loads_without_the_package(exported):
    out = str(exported["tmp"] / "served.npz")
    proc = _run("serve", exported["serve_path"], exported["data"], out)
    assert proc.returncode == 0 and "DONE" in proc.stdout, proc.stderr[-3000:]
    got = np.load(out)
    assert not bool(got["package_imported"])
    # Served before the uninterrupted steps ran: compare with the exported weights.
    np.testing.assert_array_equal(got["served"], exported["served"])


def test_training_export_without_the_package_names_the_op(exported):
    proc = _run("no_package", exported["train_path"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ERROR" in proc.stdout and "RMSpropX" in proc.stdout, proc.stdout[-2000:]
