"""RMSpropX on DTensor meshes (2 logical CPUs, in a subprocess) against plain variables."""
import json
import os
import subprocess
import sys

import pytest

from conftest import BASE_SEED


@pytest.fixture(scope="module")
def results():
    worker = os.path.join(os.path.dirname(__file__), "dtensor_worker.py")
    out = subprocess.run([sys.executable, worker, str(BASE_SEED)], capture_output=True,
                         text=True, timeout=300)
    lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    assert lines, out.stderr[-3000:]
    return json.loads(lines[0][len("RESULT "):])


@pytest.mark.parametrize("layout", ["replicated", "row_sharded"])
def test_dense_and_sparse_updates_match_plain_variables(results, layout):
    r = results[layout]
    assert r["moved"] > 1e-3  # the updates did happen
    assert r["dense_err"] < 1e-6 and r["sparse_err"] < 1e-6
    assert r["iterations"] == 6


@pytest.mark.parametrize("layout", ["replicated", "row_sharded"])
def test_slots_share_the_variable_layout_and_nothing_is_gathered(results, layout):
    assert results[layout]["slot_layouts_match"]
    assert results[layout]["var_layout_kept"]
