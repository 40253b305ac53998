"""Smoke test of an installed wheel (run by .ci/bazel_check.sh in a fresh venv, outside the
checkout): import, one dense and one sparse update against the reference, and the clear
ImportError under another TensorFlow version."""
import subprocess
import sys

import numpy as np
import tensorflow as tf

import tf_rmsprop_ops
from tf_rmsprop_ops import reference

assert "site-packages" in tf_rmsprop_ops.LIBRARY_PATH, tf_rmsprop_ops.LIBRARY_PATH
rng = np.random.default_rng(0)
init, grad = rng.normal(size=(6, 3)).astype(np.float32), rng.normal(size=(6, 3)).astype(np.float32)
var, ms = tf.Variable(init), tf.Variable(np.zeros_like(init))
tf_rmsprop_ops.apply_rmsprop_x(var, ms, grad, lr=0.01)
want = reference.rmsprop_x_step(init, grad, np.zeros_like(init), lr=0.01)["var"]
np.testing.assert_allclose(var.numpy(), want, rtol=1e-6, atol=1e-7)
ids, rows = np.array([4, 1, 4]), rng.normal(size=(3, 3)).astype(np.float32)
var2, ms2 = tf.Variable(init), tf.Variable(np.zeros_like(init))
tf_rmsprop_ops.sparse_apply_rmsprop_x(var2, ms2, rows, ids, lr=0.01)
want = reference.sparse_rmsprop_x_step(init, rows, ids, np.zeros_like(init), lr=0.01)["var"]
np.testing.assert_allclose(var2.numpy(), want, rtol=1e-6, atol=1e-7)
print(f"wheel smoke test: dense and sparse updates match the reference "
      f"({tf_rmsprop_ops.LIBRARY_PATH})")

other = subprocess.run(
    [sys.executable, "-c", "import tensorflow as tf; tf.__version__ = '2.99.0'; import tf_rmsprop_ops"],
    capture_output=True, text=True)
assert other.returncode != 0 and "ImportError" in other.stderr, other.stderr[-2000:]
message = other.stderr.strip().splitlines()[-1]
assert "2.99.0" in message and tf.__version__ in message, message
print("under another TensorFlow:", message[:300])
