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


# The skip budget: the only skips a run may have, each with the reason it hides no failure
# and how many tests may take it. Any other skip fails the run (exit 1), because a skip is
# where a broken install, a peer that did not import or a harness that did not build would
# otherwise pass unseen. (reason text the skip carries, most tests, why it is allowed)
SKIP_BUDGET = (
    ("x86 prefetch opcodes", 5,
     "the prefetch check reads x86 machine code; other CPUs have no such opcodes to find"),
)
_SKIPPED = []


def _record(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _SKIPPED.append((report.nodeid, reason))
    elif hasattr(report, "wasxfail"):  # an expected failure hides one too
        _SKIPPED.append((report.nodeid, f"xfail: {report.wasxfail}"))


def pytest_runtest_logreport(report):
    _record(report)


def pytest_collectreport(report):  # a module skipped whole (pytest.skip at module level)
    _record(report)


def _over_budget(skipped):
    """The skips the budget does not allow: those on no line, and a line's skips past its
    count."""
    taken = {}
    over = []
    for nodeid, reason in skipped:
        line = next((b for b in SKIP_BUDGET if b[0] in reason), None)
        if line is None or taken.get(line[0], 0) >= line[1]:
            over.append((nodeid, reason))
        elif line is not None:
            taken[line[0]] = taken.get(line[0], 0) + 1
    return over


def pytest_sessionfinish(session, exitstatus):
    over = _over_budget(_SKIPPED)
    if over and exitstatus == 0:
        session.exitstatus = 1
    if over:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        write = reporter.write_line if reporter else print
        write(f"SKIP BUDGET: {len(over)} skip(s) not allowed by tests/conftest.py SKIP_BUDGET "
              "(a skip here would hide a failure):")
        for nodeid, reason in over[:20]:
            write(f"  {nodeid}: {reason}")
        if len(over) > 20:
            write(f"  ... and {len(over) - 20} more")
