import os
import random
import sys
import zlib

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

try:
    import tensorflow as tf  # noqa: E402
except ImportError:  # the TensorFlow-free GPU harness (tests/gpu/) runs without it
    tf = None
if tf is not None:
    # Two logical CPU devices for the MirroredStrategy tests (before TensorFlow initialises
    # its devices; every other test runs on the first one, as it would without this).
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)

# Fresh random inputs every run; a failure is reproduced with TF_RMSPROP_TEST_SEED=<seed>.
BASE_SEED = int(os.environ.get("TF_RMSPROP_TEST_SEED", random.SystemRandom().randrange(2**31)))


def pytest_report_header(config):
    return f"random inputs: TF_RMSPROP_TEST_SEED={BASE_SEED}"


@pytest.fixture
def rng(request):
    return np.random.default_rng([BASE_SEED, zlib.crc32(request.node.nodeid.encode())])


def pytest_terminal_summary(terminalreporter, exitstatus):
    if exitstatus != 0:  # -q hides the header: repeat the seed where a failure is read
        terminalreporter.write_line(f"reproduce with TF_RMSPROP_TEST_SEED={BASE_SEED}")
