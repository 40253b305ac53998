"""Every ```python block of the pages under docs/ runs (docs/design.md excepted).

One subprocess per page runs that page's blocks in order, so that a later block can use the
names an earlier one defined; the blocks assert what their text claims. The README links to
every page.
"""
import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = sorted(p for p in glob.glob(os.path.join(ROOT, "docs", "*.md"))
               if os.path.basename(p) != "design.md")


def _python_blocks(path):
    return re.findall(r"^```python\n(.*?)^```", open(path).read(), re.S | re.M)


def test_no_python_hides_under_another_fence():
    # Only ```python blocks run: a block fenced ```py or ```Python would silently not.
    for page in PAGES:
        fences = re.findall(r"^```(\S*)", open(page).read(), re.M)
        assert set(fences) <= {"python", "bash", ""}, (page, set(fences))


# Pages without a python block (only shell commands) have nothing to run: no skip.
@pytest.mark.parametrize("page", [os.path.basename(p) for p in PAGES if _python_blocks(p)])
def test_page_code_runs(page, tmp_path):
    blocks = _python_blocks(os.path.join(ROOT, "docs", page))
    code = "\n".join(f"# --- block {i + 1}\n{b}" for i, b in enumerate(blocks))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=240, cwd=tmp_path,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert out.returncode == 0, f"docs/{page}:\n{out.stderr[-3000:]}"


def test_readme_links_every_page():
    readme = open(os.path.join(ROOT, "README.md")).read()
    for page in PAGES:
        assert f"(docs/{os.path.basename(page)})" in readme, page
    for target in re.findall(r"\]\(((?:docs/)?[\w./-]+\.md)\)", readme):
        assert os.path.exists(os.path.join(ROOT, target)), target
