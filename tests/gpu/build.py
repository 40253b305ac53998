"""Builds the TensorFlow-free GPU harness (tests/gpu/harness.cu.cc + cc/cuda/*.cu.cc) with
nvcc into tests/gpu/build/libharness.so, for the architecture of the local GPU (or
`--arch sm_XX`). Prints the library path."""
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


def build(arch=None, out_dir=os.path.join(HERE, "build")):
    compiler = nvcc()
    if compiler is None:
        raise RuntimeError("nvcc not found (PATH or $CUDA_HOME/bin)")
    arch = arch or local_arch()
    os.makedirs(out_dir, exist_ok=True)
    lib = os.path.join(out_dir, f"libharness_{arch}.so")
    sources = [os.path.join(HERE, "harness.cu.cc"),
               os.path.join(ROOT, "cc", "cuda", "rmsprop_x_cuda.cu.cc"),
               os.path.join(ROOT, "cc", "cuda", "rmsprop_x_cuda_multi.cu.cc")]
    headers = [os.path.join(ROOT, "cc", p) for p in
               ("rmsprop_x_update.h", "cuda/rmsprop_x_cuda.h", "cuda/rmsprop_x_cuda_device.cuh",
                "cpu/rmsprop_x_cpu.h")]
    newest = max(os.path.getmtime(p) for p in sources + headers)
    if not os.path.exists(lib) or os.path.getmtime(lib) < newest:
        subprocess.check_call([compiler, "-std=c++17", "-O3", "--fmad=false", "-shared", "-Xcompiler", "-fPIC",
                               f"-arch={arch}", "-I", ROOT, "-x", "cu", *sources, "-o", lib])
    return lib


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default=None)
    print(build(parser.parse_args().arch))
    sys.exit(0)
