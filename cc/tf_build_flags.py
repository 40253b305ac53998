"""Compiler and linker flags for building the op library against the installed TensorFlow.

Run by setup.py (`python3 cc/tf_build_flags.py` prints a JSON list [compile flags, link
flags, TensorFlow version, CUDA include dir or ""]) and by the Makefile (`--make` prints the
same as make variable assignments). The last is TensorFlow's bundled CUDA headers when
TensorFlow is a CUDA build (the full `tensorflow` wheel), which the GPU kernels' glue needs;
`tensorflow-cpu` has none. It imports TensorFlow, nothing of ours.
"""
import json
import os
import sys


def _tf():
    import tensorflow as tf  # noqa: PLC0415 (only the build needs it)

    return tf


def compile_flags():
    tf = _tf()
    include = tf.sysconfig.get_include()
    flags = list(tf.sysconfig.get_compile_flags())
    # Headers that TensorFlow's own headers include from its external repositories.
    flags += ["-I" + os.path.join(include, "external", "highwayhash"),
              "-I" + os.path.join(include, "external", "farmhash_archive", "src")]
    flags += llvm_flags(include)
    # TensorFlow's headers as system headers: their warnings are not ours to fix.
    flags = ["-isystem" + f[2:] if f.startswith("-I") else f for f in flags]
    return " ".join(flags)


# A header TensorFlow 2.19 ships whose includes its wheel does not: LLVM's ADT headers.
_NEEDS_LLVM = os.path.join("xla", "stream_executor", "gpu", "tma_metadata.h")


def _llvm_include_dirs():
    """Where LLVM's headers may be: $LLVM_INCLUDE_DIR, `llvm-config --includedir`, then
    Debian/Ubuntu's /usr/lib/llvm-<N>/include, newest first."""
    import glob
    import shutil
    import subprocess
    dirs = [os.environ["LLVM_INCLUDE_DIR"]] if os.environ.get("LLVM_INCLUDE_DIR") else []
    config = shutil.which("llvm-config")
    if config:
        out = subprocess.run([config, "--includedir"], capture_output=True, text=True)
        dirs += [out.stdout.strip()] if out.returncode == 0 else []
    versioned = glob.glob("/usr/lib/llvm-*/include")
    dirs += sorted(versioned, key=lambda d: int("".join(filter(str.isdigit, d)) or 0),
                   reverse=True)
    return dirs


def llvm_flags(include):
    """TensorFlow 2.19's XLA headers (`tma_metadata.h`, reached from the XLA headers the
    lowerings include) include llvm/ADT/ArrayRef.h and SmallVector.h, which its wheel does
    not ship. They are header-only templates in a declaration we never call: any LLVM's
    headers compile them (ABI-breaking-check enforcement off: it would reference a symbol
    of LLVM's library). Empty when TensorFlow ships what its headers include."""
    header = os.path.join(include, _NEEDS_LLVM)
    if not os.path.exists(header) or os.path.exists(
            os.path.join(include, "llvm", "ADT", "ArrayRef.h")):
        return []
    with open(header) as f:
        if "llvm/ADT/" not in f.read():
            return []
    for directory in _llvm_include_dirs():
        if os.path.exists(os.path.join(directory, "llvm", "ADT", "ArrayRef.h")):
            return ["-I" + directory, "-DLLVM_DISABLE_ABI_BREAKING_CHECKS_ENFORCING=1"]
    raise SystemExit(
        f"TensorFlow {_tf().__version__}'s headers include LLVM's llvm/ADT/ArrayRef.h, which "
        "its wheel does not ship: install LLVM's headers (Debian/Ubuntu: apt-get install "
        "llvm-dev) or point LLVM_INCLUDE_DIR at a directory holding llvm/ADT/ArrayRef.h.")


def link_flags():
    tf = _tf()
    # libtensorflow_cc.so.2 carries the XLA (tf2xla) symbols that REGISTER_XLA_OP needs.
    # No RUNPATH here: the Makefile adds one relative to the installed package.
    return " ".join(list(tf.sysconfig.get_link_flags()) + ["-l:libtensorflow_cc.so.2"])


def tf_version():
    return _tf().__version__


def cuda_include():
    tf = _tf()
    if not tf.sysconfig.get_build_info().get("is_cuda_build"):
        return ""
    path = os.path.join(tf.sysconfig.get_include(), "third_party", "gpus", "cuda", "include")
    return path if os.path.exists(os.path.join(path, "cuda_runtime.h")) else ""


def main(argv):
    values = [compile_flags(), link_flags(), tf_version(), cuda_include()]
    if argv[1:] == ["--make"]:  # a makefile fragment: one query for every flag make lacks
        for name, value in zip(("TF_CFLAGS", "TF_LFLAGS", "TF_VERSION", "TF_CUDA_INCLUDE"), values):
            print(f"{name} := {value}")
    else:
        print(json.dumps(values))


if __name__ == "__main__":
    main(sys.argv)
