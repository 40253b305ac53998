"""`tf-rmsprop-ops demo --strategy X`: every engine trains (its loss falls), bounded in time,
and leaves no process behind."""
import os
import re
import subprocess
import sys

import pytest


@pytest.mark.parametrize("strategy", ["none", "mirrored", "multiworker", "ps", "dtensor"])
def test_demo_trains_under_each_engine(strategy):
    cmd = [sys.executable, "-m", "tf_rmsprop_ops", "demo", "--steps", "20", "--strategy",
           strategy]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:  # the whole group: multiworker's workers too
            os.killpg(proc.pid, 9)
            proc.wait()
    assert proc.returncode == 0, out[-3000:]
    first, last = map(float, re.search(r"first 10 steps ([\d.]+) -> of the last 10 ([\d.]+)",
                                       out).groups())
    assert last < first
    assert "optimizer iterations: 20" in out
