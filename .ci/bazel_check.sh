#!/usr/bin/env bash
# CI: Bazel builds the op library (Debian's bazel-bootstrap, offline) and pip_pkg.sh makes a
# wheel that installs into a fresh venv with the same TensorFlow and passes the smoke test.
# Fails loudly when Bazel cannot be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/install_bazel.sh
BAZEL="$(command -v bazelisk || command -v bazel-4)"
# The Bazel server (pip_pkg.sh's and the tests') would idle for hours after CI: stop it.
trap '"$BAZEL" shutdown > /dev/null 2>&1 || true' EXIT
WHEELS="$(mktemp -d)"
echo "== pip_pkg.sh $WHEELS"
bash pip_pkg.sh "$WHEELS"
echo "== Bazel py_test of the op tests"
"$BAZEL" test //tests:test_dense_op //tests:test_sparse_op

TF_VERSION="$(python3 -c 'import tensorflow as tf; print(tf.__version__)')"
SMOKE_VENV="$(mktemp -d)/venv"
python3 -m venv "$SMOKE_VENV"
"$SMOKE_VENV/bin/python" -m pip install -q --disable-pip-version-check "tensorflow-cpu==$TF_VERSION"
"$SMOKE_VENV/bin/python" -m pip install -q --disable-pip-version-check "$WHEELS"/tf_rmsprop_ops-*.whl
echo "== wheel smoke test in a fresh venv"
(cd "$SMOKE_VENV" && TF_CPP_MIN_LOG_LEVEL=3 "$SMOKE_VENV/bin/python" "$OLDPWD/tests/wheel_smoke.py")
rm -rf "$(dirname "$SMOKE_VENV")" "$WHEELS"
