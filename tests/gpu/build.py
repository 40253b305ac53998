"""Builds the TensorFlow-free GPU harness (tests/gpu/harness.cu.cc + cc/cuda/*.cu.cc) with
nvcc into tests/gpu/build/libharness_sm_XX.so, for the architecture of the local GPU (or
`--arch sm_XX`); or, with `--emulate`, with the host C++ compiler against the CPU emulation
of CUDA in tests/gpu/emu/ (the same kernel sources; no GPU, no CUDA toolkit) into
tests/gpu/build/libharness_emu.so. Prints the library path."""
import argparse
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def nvcc():
    path = shutil.which("nvcc") or os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"),
                                                "bin", "nvcc")
    return path if os.path.exists(path) else None


def local_arch():
    try:
        import cupy
        return f"sm_{cupy.cuda.Device(0).compute_capability}"  # e.g. "90"
    except Exception:  # noqa: BLE001
        return "sm_90"


# The same CUDA sources as the op library's (cc/sources.bzl CUDA_SOURCES), without TensorFlow.
SOURCES = [os.path.join(HERE, "harness.cu.cc"),
           os.path.join(ROOT, "cc", "cuda", "rmsprop_x_cuda.cu.cc"),
           os.path.join(ROOT, "cc", "cuda", "rmsprop_x_cuda_multi.cu.cc"),
           os.path.join(ROOT, "cc", "cuda", "rmsprop_x_cuda8.cu.cc")]
HEADERS = [os.path.join(ROOT, "cc", p) for p in
           ("rmsprop_x_update.h", "state8.h", "cuda/rmsprop_x_cuda.h",
            "cuda/rmsprop_x_cuda_device.cuh", "cpu/rmsprop_x_cpu.h")]
EMU = os.path.join(HERE, "emu")


def _stale(lib, inputs):
    return not os.path.exists(lib) or os.path.getmtime(lib) < max(map(os.path.getmtime, inputs))


def _link_atomically(command, lib):
    """Runs `command` writing a temporary file, then renames it to `lib` (a concurrent or
    interrupted build never leaves a half-written library behind)."""
    tmp = f"{lib}.{os.getpid()}.tmp"
    try:
        subprocess.check_call(command + ["-o", tmp])
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def build(arch=None, out_dir=os.path.join(HERE, "build")):
    compiler = nvcc()
    if compiler is None:
        raise RuntimeError("nvcc not found (PATH or $CUDA_HOME/bin)")
    arch = arch or local_arch()
    os.makedirs(out_dir, exist_ok=True)
    lib = os.path.join(out_dir, f"libharness_{arch}.so")
    if _stale(lib, SOURCES + HEADERS):
        _link_atomically([compiler, "-std=c++17", "-O3", "--fmad=false", "-shared",
                          "-Xcompiler", "-fPIC", f"-arch={arch}", "-I", ROOT, "-x", "cu",
                          *SOURCES], lib)
    return lib


def cxx():
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def ubsan_log(out_dir=os.path.join(HERE, "build")):
    """The prefix of the emulated harness's UBSan reports (the process id is appended)."""
    return os.path.join(out_dir, "ubsan")


def sanitized():
    """Whether the emulated harness is the ASan build (GPU_HARNESS_SANITIZE=address)."""
    return os.environ.get("GPU_HARNESS_SANITIZE") == "address"


def build_emulated(out_dir=os.path.join(HERE, "build"), shipped_constants=False):
    """The harness on the CPU emulation of CUDA (tests/gpu/emu/cuda_emu.h says what it
    models). Built with UBSan, whose reports gpu_lib turns into test errors: a misaligned
    128-bit access (a GPU faults on it; x86 would not), an index out of an array's bounds, a
    signed overflow in index arithmetic, a bad shift. No FMA contraction, as nvcc's
    --fmad=false. At most 3 blocks per launch (a GPU build: 8192), so that the tests' small
    tensors take the kernels' grid-stride loops, and multi-tensor chunks of 1024 elements
    (65536), so that tensors of hundreds of chunks stay small. `shipped_constants=True`:
    a second library (libharness_emu_shipped.so) with the constants a GPU build has, 8192
    blocks and 65536-element chunks, for tests/gpu/test_gpu_shipped_constants.py (about 13 s
    of g++ on 2 cores, once).
    With GPU_HARNESS_SANITIZE=address (.ci/sanitizers.sh: Python runs with the ASan runtime
    preloaded), AddressSanitizer too, every report fatal, and the arrays ordinary heap
    memory (RMSPROPX_EMU_PLAIN_MEMORY) rather than the emulation's device pages: ASan then
    sees a read past an array's exact end, which the tests' canaries (they catch writes)
    cannot."""
    compiler = cxx()
    if compiler is None:
        raise RuntimeError("no C++ compiler (g++ or $CXX)")
    os.makedirs(out_dir, exist_ok=True)
    asan = sanitized()
    name = "libharness_emu_asan" if asan else "libharness_emu"
    lib = os.path.join(out_dir, name + ("_shipped.so" if shipped_constants else ".so"))
    # The shipped constants are the headers' defaults (cc/cuda/rmsprop_x_cuda_device.cuh,
    # rmsprop_x_cuda.h); the smaller ones override them.
    constants = ([] if shipped_constants else
                 ["-DRMSPROPX_CUDA_MAX_BLOCKS=3", "-DRMSPROPX_CUDA_MULTI_CHUNK=1024"])
    sanitize = (["-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                 "-fno-omit-frame-pointer", "-DRMSPROPX_EMU_PLAIN_MEMORY"]
                if asan else ["-fsanitize=undefined"])
    emu_headers = [os.path.join(d, f) for d, _, fs in os.walk(EMU) for f in fs]
    if _stale(lib, SOURCES + HEADERS + emu_headers + [os.path.abspath(__file__)]):
        _link_atomically([compiler, "-std=c++17", "-O1", "-g", "-shared", "-fPIC", "-pthread",
                          "-ffp-contract=off", *sanitize,
                          "-DRMSPROPX_CUDA_EMULATION", *constants,
                          f'-DRMSPROPX_EMU_UBSAN_LOG="{ubsan_log(out_dir)}"',
                          "-I", EMU, "-I", ROOT, "-x", "c++", *SOURCES,
                          os.path.join(EMU, "ubsan_options.cc"),
                          os.path.join(EMU, "device_memory.cc")], lib)
    return lib


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default=None)
    parser.add_argument("--emulate", action="store_true",
                        help="the CPU emulation of CUDA (tests/gpu/emu/): no GPU, no nvcc")
    parser.add_argument("--shipped-constants", action="store_true",
                        help="with --emulate: 8192 blocks and 65536-element chunks, as on a GPU")
    args = parser.parse_args()
    print(build_emulated(shipped_constants=args.shipped_constants) if args.emulate
          else build(args.arch))
    sys.exit(0)
