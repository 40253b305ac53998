"""Builds the op library with the repository's Makefile against the installed TensorFlow.

`pip install .` works with or without build isolation: when TensorFlow cannot be imported
inside pip's isolated build environment, its flags are read from the target interpreter
with the isolation removed (the TensorFlow you will run is the one we must compile for).
"""
import json
import os
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

_HERE = os.path.dirname(os.path.abspath(__file__))
_SIDECAR_FILES = ("_build_info.py", "_stream_probe.so")  # written by `make` beside the library


def _tensorflow_flags():
    env = dict(os.environ)
    # Undo pip's build isolation for this one query: it hides the installed TensorFlow.
    for var in ("PYTHONPATH", "PYTHONNOUSERSITE"):
        env.pop(var, None)
    out = subprocess.run([sys.executable, os.path.join(_HERE, "cc", "tf_build_flags.py")], env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(
            "tf_rmsprop_ops needs TensorFlow installed before it is built (it compiles against "
            "it): e.g. `pip install 'tensorflow-cpu==2.21.*'` or `pip install tensorflow`.\n"
            + out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


class MakeBuildExt(build_ext):
    """Runs `make` (incremental: objects stay in build/obj) and places the library."""

    def build_extension(self, ext):
        cflags, lflags, version, cuda_include = _tensorflow_flags()
        target = os.path.abspath(self.get_ext_fullpath(ext.name))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        jobs = str(os.cpu_count() or 2)
        subprocess.check_call(
            ["make", "-j", jobs, "-C", _HERE, f"OUT={target}", f"TF_CFLAGS={cflags}",
             f"TF_LFLAGS={lflags}", f"TF_VERSION={version}", f"TF_CUDA_INCLUDE={cuda_include}",
             f"PYTHON={sys.executable}"]
            + ([f"ARCH_FLAGS={os.environ['TF_RMSPROP_OPS_ARCH_FLAGS']}"]
               if "TF_RMSPROP_OPS_ARCH_FLAGS" in os.environ else [])
            # GPU kernels: auto (default), 1 (required), 0 (never); make prints which.
            + ([f"GPU={os.environ['TF_RMSPROP_OPS_GPU']}"]
               if "TF_RMSPROP_OPS_GPU" in os.environ else []))
        if self.inplace or getattr(self, "editable_mode", False):
            # Editable installs import from the source tree: the files `make` wrote beside
            # the library (build info, bandwidth probe) must be there too.
            package_dir = os.path.join(_HERE, "tf_rmsprop_ops")
            for name in _SIDECAR_FILES:
                built = os.path.join(os.path.dirname(target), name)
                if os.path.abspath(built) != os.path.join(package_dir, name):
                    shutil.copyfile(built, os.path.join(package_dir, name))


setup(
    ext_modules=[Extension("tf_rmsprop_ops._rmsprop_x_ops", sources=[])],
    cmdclass={"build_ext": MakeBuildExt},
)
