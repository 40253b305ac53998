#!/usr/bin/env bash
# CI: the TensorFlow window besides the main stage's 2.21. For each version (default 2.20
# and 2.19; TF_VERSIONS="2.20" for one): a fresh venv with that tensorflow-cpu, the README's
# install (`pip install --no-build-isolation -e .`) in a copy of the checkout (so the main
# stage's build stays untouched), then the op-level tests: dense, sparse, multi-tensor, XLA,
# numerics, the property suite at 1,000 calls per op, both optimizers, flat and 8-bit
# state. The PyTorch/JAX/tf_keras peers stay in the main stage.
#   bash .ci/tf_versions.sh            # 2.20 and 2.19
#   TF_VERSIONS=2.19 bash .ci/tf_versions.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
TESTS="tests/test_dense_op.py tests/test_sparse_op.py tests/test_multi_tensor.py tests/test_xla.py
tests/test_numerics.py tests/test_properties.py tests/test_optimizer.py
tests/test_keras_optimizer.py tests/test_flat_state.py tests/test_state8_op.py"

# TensorFlow 2.19's XLA headers include LLVM's ADT headers, which its wheel does not ship
# (cc/tf_build_flags.py, llvm_flags): Debian's llvm-dev provides them.
need_llvm_headers() {
  ! ls /usr/lib/llvm-*/include/llvm/ADT/ArrayRef.h > /dev/null 2>&1 && [ -z "${LLVM_INCLUDE_DIR:-}" ]
}

if [ "${1:-}" = "--prefetch" ]; then  # .ci/run, in the background: the wheels into pip's cache
  for version in ${TF_VERSIONS:-2.20 2.19}; do
    python3 -m pip download -q --disable-pip-version-check -d "$(mktemp -d)" \
      "tensorflow-cpu==$version.*" pytest hypothesis
  done
  exit 0
fi

for version in ${TF_VERSIONS:-2.20 2.19}; do
  start=$SECONDS
  echo "== TensorFlow $version: fresh venv, the README's install, the op-level tests"
  if [ "$version" = "2.19" ] && need_llvm_headers; then
    echo "== installing LLVM's headers (Debian's llvm-dev) for TensorFlow 2.19's XLA headers"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q llvm-dev > /dev/null \
      || { apt-get update -q > /dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q llvm-dev > /dev/null; }
  fi
  WORK="$(mktemp -d)"
  python3 -m venv "$WORK/venv"
  PY="$WORK/venv/bin/python"
  "$PY" -m pip install -q --disable-pip-version-check "tensorflow-cpu==$version.*" \
    'setuptools>=64' wheel pytest hypothesis
  # The tracked files only: no build outputs of the main stage.
  mkdir "$WORK/src"
  git ls-files -z | (cd "$ROOT" && xargs -0 tar -cf -) | tar -xf - -C "$WORK/src"
  (cd "$WORK/src" && "$PY" -m pip install -q --disable-pip-version-check --no-build-isolation -e .)
  # shellcheck disable=SC2086
  (cd "$WORK/src" && TF_CPP_MIN_LOG_LEVEL=2 TF_RMSPROP_OPS_PROPERTY_CALLS=1000 \
    "$PY" -m pytest -q -p no:cacheprovider $TESTS 2>&1 | tail -n 15)
  "$PY" -c "import tensorflow as tf; print('== TensorFlow', tf.__version__, 'passed')"
  rm -rf "$WORK"
  echo "== TensorFlow $version: $((SECONDS - start)) s"
done
