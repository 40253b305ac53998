"""setup.py of the wheel that pip_pkg.sh stages: the package with the op library Bazel
built (nothing is compiled here). The version's local label records the TensorFlow it was
built against (0.1.0+tf2.21.0); importing it under another TensorFlow raises the package's
ImportError (tf_rmsprop_ops/_library.py compares _build_info.TF_VERSION)."""
import os
import re

from setuptools import Distribution, setup

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "tf_rmsprop_ops", "_build_info.py")) as f:
    TF_VERSION = re.search(r'TF_VERSION = "([^"]+)"', f.read()).group(1)
with open(os.path.join(HERE, "tf_rmsprop_ops", "__init__.py")) as f:
    VERSION = re.search(r'__version__ = "([^"]+)"', f.read()).group(1)


class BinaryDistribution(Distribution):
    def has_ext_modules(self):  # a platform wheel: it carries a compiled library
        return True


setup(
    name="tf-rmsprop-ops",
    version=f"{VERSION}+tf{TF_VERSION}",
    description="Fused RMSprop update ops for TensorFlow (built with Bazel against "
                f"TensorFlow {TF_VERSION})",
    long_description=open(os.path.join(HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=["tf_rmsprop_ops", "tf_rmsprop_ops.benchmark"],
    package_data={"tf_rmsprop_ops": ["_rmsprop_x_ops.so"]},
    install_requires=["numpy"],  # TensorFlow is not a dependency (tensorflow / tensorflow-cpu)
    entry_points={"console_scripts": ["tf-rmsprop-ops = tf_rmsprop_ops.cli:main"]},
    distclass=BinaryDistribution,
    zip_safe=False,
)
