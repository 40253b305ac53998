"""Loading the op library: TensorFlow version checks and clear errors."""
import functools
import platform
import re
import shutil
import subprocess

import pytest
import tensorflow as tf

import tf_rmsprop_ops
from tf_rmsprop_ops import _build_info, _library


def test_library_was_built_against_the_running_tensorflow():
    assert _build_info.TF_VERSION == tf.__version__
    assert tf_rmsprop_ops.LIBRARY_PATH.endswith(".so")


def test_another_minor_is_an_import_error_naming_both_versions(monkeypatch):
    monkeypatch.setattr(_build_info, "TF_VERSION", "2.0.0")
    with pytest.raises(ImportError) as err:
        _library._check_tensorflow_version()
    message = str(err.value)
    assert "2.0.0" in message and tf.__version__ in message
    assert "install TensorFlow 2.0.* again" in message
    assert "pip install --no-build-isolation" in message and "make" in message


def test_another_patch_of_the_same_minor_warns_and_loads(monkeypatch):
    major, minor = tf.__version__.split(".")[:2]
    other = f"{major}.{minor}.{99}"
    monkeypatch.setattr(_build_info, "TF_VERSION", other)
    with pytest.warns(RuntimeWarning, match=rf"built against TensorFlow {other} .* the same "
                                             "minor release, so it loads"):
        _library._check_tensorflow_version()
    monkeypatch.setattr(_build_info, "TF_VERSION", tf.__version__)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _library._check_tensorflow_version()  # the same version: silent


def test_missing_library_says_how_to_build(monkeypatch, tmp_path):
    monkeypatch.setattr(_library, "_HERE", str(tmp_path))
    with pytest.raises(ImportError, match="is missing.*pip install --no-build-isolation"):
        _library._library_path()


def test_gpu_kernel_status_is_the_builds():
    """tf_rmsprop_ops.GPU_KERNELS is what `make` recorded (pip hides its output)."""
    assert tf_rmsprop_ops.GPU_KERNELS == _build_info.GPU_KERNELS
    assert re.match(r"(ON|OFF) \(.+\)$", _build_info.GPU_KERNELS)
    if _build_info.GPU_KERNELS.startswith("ON"):  # GPU kernels need a CUDA build of TF
        assert tf.test.is_built_with_cuda()
    if not tf.test.is_built_with_cuda():
        assert "not a CUDA build" in _build_info.GPU_KERNELS or "GPU=0" in _build_info.GPU_KERNELS


@pytest.mark.parametrize("cuda_build, gpu, status, warns", [
    (True, True, "OFF (no nvcc at /usr/local/cuda/bin/nvcc; )", True),
    (True, False, "OFF (no nvcc at /usr/local/cuda/bin/nvcc; )", False),  # no GPU to miss
    (False, True, "OFF (GPU=0)", False),  # TensorFlow cannot use the GPU either
    (True, True, "ON (nvcc /usr/local/cuda/bin/nvcc, ...)", False),
])
def test_a_gpu_without_gpu_kernels_warns_at_import(monkeypatch, cuda_build, gpu, status, warns):
    monkeypatch.setattr(tf.test, "is_built_with_cuda", lambda: cuda_build)
    monkeypatch.setattr(_library, "_nvidia_driver_present", lambda: gpu)
    # Without initialising CUDA: no device query at import.
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda *a: pytest.fail("the import check queried devices"))
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _library._warn_if_gpus_without_kernels(status)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    if warns:
        assert len(messages) == 1 and status in messages[0], messages
        assert "TF_RMSPROP_OPS_GPU=1 pip install" in messages[0]
    else:
        assert messages == []


def test_ops_are_registered_once_with_tensorflow():
    assert {"ApplyRMSpropX", "SparseApplyRMSpropX"} <= set(dir(_library.ops))
    # Loading again (e.g. a second import path) must not fail or re-register.
    tf.load_op_library(tf_rmsprop_ops.LIBRARY_PATH)


def test_dtensor_opt_in_is_set_for_both_ops():
    import os
    for op in ("APPLYRMSPROPX", "SPARSEAPPLYRMSPROPX"):
        assert os.environ[f"DTENSOR_ENABLE_REPLICATED_SPMD_AS_DEFAULT_TF.{op}"] == "1"


def test_every_subpackage_is_listed_for_regular_installs():
    # pyproject lists packages explicitly; a new subpackage missing there would work in the
    # editable checkout but be absent from a wheel.
    import os

    import setuptools
    import tomllib  # Python >= 3.11, the package's floor
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    found = set(setuptools.find_packages(root, include=["tf_rmsprop_ops*"]))
    assert found == listed


@functools.lru_cache(maxsize=1)
def _disassembly():
    """objdump's listing of the library, one entry per function."""
    listing = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn",
                              _library._library_path()],
                             capture_output=True, text=True, check=True).stdout
    return re.split(r"\n(?=[0-9a-f]+ <)", listing)


def _disassembly_of(symbol_part):
    """The listings of the library's functions whose demangled name contains the string."""
    if shutil.which("objdump") is None:
        pytest.skip("objdump (binutils) is not installed")
    return [f for f in _disassembly()
            if symbol_part in f.splitlines()[0] and "@plt" not in f.splitlines()[0]]


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 prefetch opcodes")
@pytest.mark.parametrize("storage", ["float", "double", "Half", "BFloat16"])
def test_sparse_row_loop_keeps_its_prefetches(storage):
    # GCC once deleted every row prefetch of the float kernel (it judged the prefetching
    # helper free of side effects), which cost a third of a sparse step without failing
    # any numerical test.
    name = storage if storage in ("float", "double") else f"tf_rmsprop_ops::cpu::{storage}"
    loops = _disassembly_of(f"tf_rmsprop_ops::cpu::UpdateRows<{name}>(")
    assert loops, f"UpdateRows<{storage}> not found in the library"
    assert all("prefetch" in f for f in loops)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 prefetch opcodes")
def test_the_8bit_sparse_row_loop_keeps_its_prefetches():
    # Prefetching the random rows' codes and scales took a 10k-row 8-bit step from 8.9 to
    # 4.1 ms (BENCHMARKS.md); the loop lives in the Rows8 instantiations.
    loops = _disassembly_of("tf_rmsprop_ops::cpu::(anonymous namespace)::Rows8<")
    assert loops, "Rows8 not found in the library"
    assert all("prefetch" in f for f in loops)


def test_runpath_is_relative_to_the_installed_tensorflow():
    """The op library finds TensorFlow's libraries relative to the installed package
    (site-packages/tf_rmsprop_ops -> site-packages/tensorflow), never at the build
    machine's absolute path (a wheel built here must work elsewhere)."""
    import shutil
    import subprocess

    import tf_rmsprop_ops
    readelf = shutil.which("readelf")
    assert readelf, "readelf (binutils) comes with the compiler that built the library"
    out = subprocess.run([readelf, "-d", tf_rmsprop_ops.LIBRARY_PATH], capture_output=True,
                         text=True, check=True).stdout
    paths = [line.split("[", 1)[1].rstrip("]").split(":") for line in out.splitlines()
             if "(RUNPATH)" in line or "(RPATH)" in line]
    assert paths == [["$ORIGIN/../tensorflow"]], out
