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
    # TensorFlow's headers as system headers: their warnings are not ours to fix.
    flags = ["-isystem" + f[2:] if f.startswith("-I") else f for f in flags]
    return " ".join(flags)


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
