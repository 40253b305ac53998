# The op library's sources and flags: the one list that both builds read (the Makefile
# through cc/sources.py, Bazel through load()). Plain assignments only: valid Starlark and
# valid Python.

# Compiled against TensorFlow's headers.
TF_SOURCES = [
    "cc/ops/rmsprop_x_attrs.cc",
    "cc/ops/rmsprop_x_ops.cc",
    "cc/kernels/rmsprop_x_kernel_util.cc",
    "cc/kernels/apply_rmsprop_x_op.cc",
    "cc/kernels/apply_rmsprop_x_multi_op.cc",
    "cc/kernels/sparse_apply_rmsprop_x_op.cc",
    "cc/kernels/unique_rows.cc",
    "cc/xla/rmsprop_x_xla_math.cc",
    "cc/xla/rmsprop_x_xla_state8.cc",
    "cc/xla/apply_rmsprop_x_xla.cc",
    "cc/xla/apply_rmsprop_x_multi_xla.cc",
    "cc/xla/sparse_apply_rmsprop_x_xla.cc",
    "cc/compat/absl_log.cc",
]

# TensorFlow-free span loops: the only code compiled with the vector ISA flags.
ISA_SOURCES = ["cc/cpu/rmsprop_x_cpu.cc", "cc/cpu/rmsprop_x_cpu8.cc"]

# CUDA kernels (nvcc; no TensorFlow header) and their TensorFlow glue (GOOGLE_CUDA).
CUDA_SOURCES = ["cc/cuda/rmsprop_x_cuda.cu.cc", "cc/cuda/rmsprop_x_cuda_multi.cu.cc",
                "cc/cuda/rmsprop_x_cuda8.cu.cc"]
GPU_GLUE_SOURCES = ["cc/kernels/gpu/rmsprop_x_gpu_kernels.cc"]

HEADERS = [
    "cc/rmsprop_x_update.h",
    "cc/state8.h",
    "cc/cpu/storage.h",
    "cc/cpu/rmsprop_x_cpu.h",
    "cc/cpu/row_prefetch.h",
    "cc/cuda/rmsprop_x_cuda.h",
    "cc/cuda/rmsprop_x_cuda_device.cuh",
    "cc/ops/rmsprop_x_attrs.h",
    "cc/kernels/rmsprop_x_kernel_util.h",
    "cc/kernels/rmsprop_x_shells.h",
    "cc/kernels/rmsprop_x_multi_shell.h",
    "cc/kernels/index_error.h",
    "cc/kernels/unique_rows.h",
    "cc/xla/rmsprop_x_xla_math.h",
    "cc/xla/rmsprop_x_xla_state8.h",
]

# Flags of every C++ translation unit (TensorFlow's own flags come from the installed
# TensorFlow: tf.sysconfig).
COPTS = [
    "-std=c++17",
    "-O3",
    "-fPIC",
    "-fno-math-errno",
    # No fused multiply-adds the compiler chooses: it fuses differently in a loop's vector
    # body and its scalar tail, so an element's bits would depend on where a range starts
    # (the multi-tensor op and the single op split the same array differently).
    "-ffp-contract=off",
    "-Wall",
    "-Wno-sign-compare",
    "-Wno-unused-function",
    "-Wno-deprecated-declarations",
    "-Wno-interference-size",
]

# Vector ISA of the span loops in portable builds (wheels): x86-64-v3. Local `make` builds
# use -march=native instead (ARCH_FLAGS).
PORTABLE_ARCH_COPTS = ["-mavx2", "-mfma", "-mf16c"]

# GPU architectures of the CUDA kernels.
CUDA_ARCHS = ["75", "80", "86", "89", "90"]
