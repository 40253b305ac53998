"""setup.py of the wheel that pip_pkg.sh stages: the package with the op library Bazel
built (nothing is compiled here).

One wheel per TensorFlow minor (custom ops have no C++ ABI across minors), with a version
PyPI accepts: the package's version plus the TensorFlow minor as a fourth release segment,
0.1.0.221 for TensorFlow 2.21 (0.1.0.220 for 2.20); no local `+tf...` label. TensorFlow
comes as `tensorflow` or `tensorflow-cpu`, which no single requirement can name: the extras
`[cpu]` (tensorflow-cpu) and `[gpu]` (tensorflow) require the minor the library was built
against, and importing the package under another minor raises its ImportError naming both
(tf_rmsprop_ops/_library.py compares _build_info.TF_VERSION)."""
import os
import re

from setuptools import Distribution, setup

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "tf_rmsprop_ops", "_build_info.py")) as f:
    TF_VERSION = re.search(r'TF_VERSION = "([^"]+)"', f.read()).group(1)
with open(os.path.join(HERE, "tf_rmsprop_ops", "__init__.py")) as f:
    VERSION = re.search(r'__version__ = "([^"]+)"', f.read()).group(1)


MAJOR, MINOR = (int(x) for x in TF_VERSION.split(".")[:2])
TF_SERIES = f"{MAJOR}.{MINOR}.*"


class BinaryDistribution(Distribution):
    def has_ext_modules(self):  # a platform wheel: it carries a compiled library
        return True


setup(
    name="tf-rmsprop-ops",
    version=f"{VERSION}.{MAJOR}{MINOR:02d}",
    description="Fused RMSprop update ops for TensorFlow (built with Bazel against "
                f"TensorFlow {TF_VERSION})",
    long_description=open(os.path.join(HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",  # Keras 3.15 (TensorFlow 2.21's Keras) needs 3.11
    packages=["tf_rmsprop_ops", "tf_rmsprop_ops.benchmark"],
    package_data={"tf_rmsprop_ops": ["_rmsprop_x_ops.so"]},
    install_requires=["numpy"],  # TensorFlow: one of the extras, or already installed
    extras_require={"cpu": [f"tensorflow-cpu=={TF_SERIES}"], "gpu": [f"tensorflow=={TF_SERIES}"]},
    entry_points={"console_scripts": ["tf-rmsprop-ops = tf_rmsprop_ops.cli:main"]},
    distclass=BinaryDistribution,
    zip_safe=False,
)
