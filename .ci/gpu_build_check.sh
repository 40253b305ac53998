#!/usr/bin/env bash
# CI on a machine without a GPU: the CUDA kernels and the TensorFlow GPU glue must keep
# building. Builds the op library with GPU kernels against the full `tensorflow` wheel (a
# CUDA build) in a separate, cached virtual environment, with nvcc for sm_75..sm_90; checks
# that it loads here (no GPU), that all three ops have DEVICE_GPU kernels, and that the CPU op
# tests pass with that library. Also compiles the TensorFlow-free GPU harness (tests/gpu/).
# `--bazel`: the same checks on the library of `bazel build --config=cuda` (by hand).
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC="${NVCC:-/usr/local/cuda/bin/nvcc}"
if [ ! -x "$NVCC" ]; then
  echo "gpu_build_check: nvcc not found at $NVCC: cannot check the CUDA build" >&2
  exit 1
fi
VENV="$(bash .ci/gpu_venv.sh)"
BUILD="$PWD/build-gpu"
if [ "${1:-}" = "--bazel" ]; then
  # By hand, not in CI (nvcc runs again, about 4 more minutes): the same checks on the
  # library that `bazel build --config=cuda` links.
  BAZEL="$(command -v bazelisk || command -v bazel-4 || command -v bazel)"
  trap '"$BAZEL" shutdown > /dev/null 2>&1 || true' EXIT
  BUILD="$PWD/build-gpu-bazel"
  echo "== building the GPU-enabled op library with Bazel --config=cuda"
  PYTHON_BIN_PATH="$VENV/bin/python" BAZEL="$BAZEL" python3 cc/bazel/configure.py
  "$BAZEL" build --config=cuda //:ops //tf_rmsprop_ops:build_info
  mkdir -p "$BUILD/pkg/tf_rmsprop_ops"
  install -m 644 bazel-bin/tf_rmsprop_ops/_rmsprop_x_ops.so bazel-bin/tf_rmsprop_ops/_build_info.py \
    "$BUILD/pkg/tf_rmsprop_ops/"
  python3 cc/bazel/configure.py  # .bazelrc.user for this interpreter again
else
  echo "== building the GPU-enabled op library (GPU=1) in $BUILD"
  make -j2 GPU=1 PYTHON="$VENV/bin/python" BUILD_DIR="$BUILD" OUT="$BUILD/pkg/tf_rmsprop_ops/_rmsprop_x_ops.so" \
    "$BUILD/pkg/tf_rmsprop_ops/_rmsprop_x_ops.so" "$BUILD/pkg/tf_rmsprop_ops/_build_info.py" gpu-status
fi

# A copy of the package with that library in it.
PKG="$BUILD/pkg/tf_rmsprop_ops"
find tf_rmsprop_ops -name '*.py' -not -name '_build_info.py' | while read -r f; do
  mkdir -p "$BUILD/pkg/$(dirname "$f")"; cp "$f" "$BUILD/pkg/$f"
done

ROOT="$PWD"
cd "$BUILD"  # so that `import tf_rmsprop_ops` finds the copy, not the checkout's package
echo "== the GPU-enabled library loads without a GPU and registers DEVICE_GPU kernels"
PYTHONPATH="$BUILD/pkg" TF_CPP_MIN_LOG_LEVEL=3 "$VENV/bin/python" - <<'PY'
import tensorflow as tf
from tensorflow.python.framework import kernels
import tf_rmsprop_ops
print("loaded", tf_rmsprop_ops.LIBRARY_PATH)
assert "build-gpu" in tf_rmsprop_ops.LIBRARY_PATH  # the copy, not the checkout's library
assert tf.sysconfig.get_build_info()["is_cuda_build"]
print("GPU kernels:", tf_rmsprop_ops.GPU_KERNELS)
assert tf_rmsprop_ops.GPU_KERNELS.startswith("ON ("), tf_rmsprop_ops.GPU_KERNELS
# The kernels' CUDA runtime (nvcc's, static) is private to the library: no CUDA runtime
# symbol exported, and none left undefined (it would bind to the other CUDA runtime that
# libtensorflow_framework.so.2 exports).
import subprocess
dynamic = subprocess.run(["nm", "-D", tf_rmsprop_ops.LIBRARY_PATH], capture_output=True,
                         text=True, check=True).stdout.splitlines()
cuda = [line.split() for line in dynamic if line.split()[-1].startswith(("cuda", "__cuda"))]
assert not cuda, cuda[:10]
# Nor CUB's (its per-device caches): the .cu objects are compiled -fvisibility=hidden.
cub = [line.split() for line in dynamic if "cub" in line.split()[-1].lower()
       and len(line.split()) == 3]
assert not cub, cub[:10]
for op in ("ApplyRMSpropX", "SparseApplyRMSpropX", "ApplyRMSpropXMulti"):
    devices = {k.device_type for k in kernels.get_registered_kernels_for_op(op).kernel}
    print(f"{op}: kernels for {sorted(devices)}")
    assert {"CPU", "GPU"} <= devices, devices
print("GPUs visible here:", tf.config.list_physical_devices("GPU"))
PY

echo "== CPU op tests with the GPU-enabled library"
PYTHONPATH="$BUILD/pkg" TF_CPP_MIN_LOG_LEVEL=2 "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
  "$ROOT/tests/test_dense_op.py" "$ROOT/tests/test_sparse_op.py" "$ROOT/tests/test_errors.py" \
  "$ROOT/tests/test_library.py"
cd "$ROOT"

echo "== the TensorFlow-free GPU harness compiles (sm_90)"
python3 tests/gpu/build.py --arch sm_90
