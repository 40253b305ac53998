"""The skip budget (tests/conftest.py SKIP_BUDGET): a run with a skip the budget does not
list, or more skips of a listed reason than it allows, fails; listed skips within their
count pass. Each case runs pytest in a subprocess with this suite's conftest as a plugin."""
import os
import subprocess
import sys
import textwrap

import pytest

import conftest

_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def _run(tmp_path, body):
    (tmp_path / "test_sample.py").write_text(textwrap.dedent(body))
    env = dict(os.environ, PYTHONPATH=_TESTS_DIR + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest",
                           "-p", "no:cacheprovider", "test_sample.py"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout + done.stderr


SAMPLE = """
import pytest

def test_passes():
    assert 1 + 1 == 2

@pytest.mark.parametrize("i", range({count}))
def test_skips(i):
    pytest.skip({reason!r})
"""


_PREFETCH = next(count for text, count, _ in conftest.SKIP_BUDGET if text == "x86 prefetch opcodes")


@pytest.mark.parametrize("reason, count, allowed", [
    ("peer torch not installed", 1, False),            # on no line
    ("x86 prefetch opcodes", _PREFETCH, True),         # within its count
    ("x86 prefetch opcodes", _PREFETCH + 1, False),    # one past its count
])
def test_only_budgeted_skips_pass(tmp_path, reason, count, allowed):
    rc, out = _run(tmp_path, SAMPLE.format(count=count, reason=reason))
    assert rc == (0 if allowed else 1), out
    assert ("SKIP BUDGET" in out) == (not allowed), out
    if not allowed:
        assert reason in out, out  # the skip and its reason are named


def test_a_failure_keeps_its_exit_status(tmp_path):
    rc, out = _run(tmp_path, "def test_fails():\n    assert False\n")
    assert rc == 1 and "SKIP BUDGET" not in out, out


def test_every_budget_line_has_a_reason_and_a_small_count():
    for text, count, why in conftest.SKIP_BUDGET:
        assert text and len(why) > 20 and 1 <= count <= 8


def test_a_module_skipped_whole_and_an_xfail_count_too(tmp_path):
    rc, out = _run(tmp_path, "import pytest\npytest.skip('no peer', allow_module_level=True)\n")
    assert rc != 0 and "SKIP BUDGET" in out and "no peer" in out, out  # 5: nothing ran
    rc, out = _run(tmp_path, "import pytest\n\n@pytest.mark.xfail(reason='known bug')\n"
                             "def test_x():\n    assert False\n")
    assert rc == 1 and "xfail: known bug" in out, out
