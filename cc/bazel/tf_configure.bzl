"""Repository rule: the installed TensorFlow as a Bazel repository (@local_config_tf).

Asks Python (`PYTHON_BIN_PATH`, else `python3`) for tf.sysconfig: the header directory
(with the extra include dirs TensorFlow's headers need), libtensorflow_framework.so.2 and
libtensorflow_cc.so.2 (the XLA symbols of REGISTER_XLA_OP), the -D flags, the version, and
TensorFlow's bundled CUDA headers when it is a CUDA build. `nvcc` comes from `CUDA_HOME`.
"""

_QUERY = """
import json, os, tensorflow as tf
inc = tf.sysconfig.get_include()
cuda = os.path.join(inc, "third_party", "gpus", "cuda", "include")
print(json.dumps(dict(
    include=inc, lib=tf.sysconfig.get_lib(), version=tf.__version__,
    defines=[f[2:] for f in tf.sysconfig.get_compile_flags() if f.startswith("-D")],
    cuda_include=cuda if tf.sysconfig.get_build_info().get("is_cuda_build") and
                 os.path.exists(os.path.join(cuda, "cuda_runtime.h")) else "")))
"""

_BUILD = """
package(default_visibility = ["//visibility:public"])

cc_library(
    name = "tf_headers",
    hdrs = glob(["include/**/*.h", "include/**/*.hpp", "include/**/*.inc",
                 "include/Eigen/**", "include/unsupported/**", "include/**/*.def"],
                allow_empty = True),
    includes = ["include", "include/external/highwayhash",
                "include/external/farmhash_archive/src"],
    defines = {defines},
)

cc_library(
    name = "tf_libs",
    srcs = ["lib/libtensorflow_framework.so.2", "lib/libtensorflow_cc.so.2"],
)

cc_library(
    name = "cuda_headers",
    hdrs = glob(["cuda_include/**"], allow_empty = True),
    includes = ["cuda_include"],
)

# nvcc's CUDA runtime, linked statically into the op library before TensorFlow's libraries
# (libtensorflow_framework.so.2 exports its own, another CUDA version) and kept private.
cc_import(
    name = "cudart_static",
    static_library = "cuda_lib/libcudart_static.a",
)

exports_files(["nvcc"])
"""

_BZL = """
TF_VERSION = "{version}"
TF_IS_CUDA_BUILD = {cuda}
NVCC = "{nvcc}"
"""

def _tf_configure_impl(ctx):
    python = ctx.os.environ.get("PYTHON_BIN_PATH") or "python3"
    result = ctx.execute([python, "-c", _QUERY], quiet = True)
    if result.return_code != 0:
        fail("tf_configure: cannot import TensorFlow with %s (set PYTHON_BIN_PATH):\n%s" %
             (python, result.stderr))
    info = json.decode(result.stdout.strip().splitlines()[-1])
    ctx.symlink(info["include"], "include")
    ctx.symlink(info["lib"] + "/libtensorflow_framework.so.2", "lib/libtensorflow_framework.so.2")
    ctx.symlink(info["lib"] + "/libtensorflow_cc.so.2", "lib/libtensorflow_cc.so.2")
    if info["cuda_include"]:
        ctx.symlink(info["cuda_include"], "cuda_include")
    else:
        ctx.file("cuda_include/README", "TensorFlow is not a CUDA build: no CUDA headers.\n")
    cuda_home = ctx.os.environ.get("CUDA_HOME", "/usr/local/cuda")
    nvcc = cuda_home + "/bin/nvcc"
    if ctx.path(nvcc).exists:
        ctx.symlink(nvcc, "nvcc")
    else:
        ctx.file("nvcc", "#!/bin/sh\necho 'nvcc not found (set CUDA_HOME)' >&2\nexit 1\n",
                 executable = True)
    cudart = cuda_home + "/lib64/libcudart_static.a"
    if ctx.path(cudart).exists:
        ctx.symlink(cudart, "cuda_lib/libcudart_static.a")
    else:  # only --config=cuda links it; an empty archive lets the default build load
        ctx.file("cuda_lib/libcudart_static.a", "!<arch>\n")
    ctx.file("BUILD", _BUILD.format(defines = repr(info["defines"])))
    ctx.file("tf.bzl", _BZL.format(version = info["version"],
                                   cuda = "True" if info["cuda_include"] else "False",
                                   nvcc = nvcc))

tf_configure = repository_rule(
    implementation = _tf_configure_impl,
    environ = ["PYTHON_BIN_PATH", "CUDA_HOME"],
    local = True,
)
