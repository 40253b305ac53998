"""The README's "Use" example runs as shown and prints what its comments say."""
import ast
import os
import re
import subprocess
import sys

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _use_example():
    text = open(README).read()
    return text.split("## Use", 1)[1].split("```python", 1)[1].split("```", 1)[0]


def test_use_example_prints_what_it_claims():
    code = _use_example()
    claims = [line.split("#", 1)[1].strip() for line in code.splitlines()
              if line.startswith("print(") and "#" in line]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert out.returncode == 0, out.stderr[-3000:]
    printed = out.stdout.splitlines()
    assert len(printed) == len(claims) == 4
    for got, claim in zip(printed[:3], claims[:3]):
        assert got == re.sub(r"\s*\(.*\)$", "", claim)  # the literal output, less the note
    losses = ast.literal_eval(printed[3])
    assert len(losses) == 3 and losses[0] > losses[1] > losses[2]


def test_the_two_commands_are_marked_for_ci():
    text = open(README).read()
    for marker in ("<!-- ci:main -->", "<!-- ci:test -->"):
        block = text.split(marker, 1)[1].split("```bash", 1)[1].split("```", 1)[0]
        assert "pip install" in block
    assert "tf-rmsprop-ops demo" in text.split("<!-- ci:main -->", 1)[1].split("```", 2)[1]
    assert "pytest" in text.split("<!-- ci:test -->", 1)[1].split("```", 2)[1]


def test_every_use_block_runs(tmp_path):
    """Every python block of "## Use", in order, in one process (the later sketches use the
    first block's imports): they run as shown and their asserts hold."""
    section = open(README).read().split("## Use", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("```", 1)[0] for b in section.split("```python")[1:]]
    assert len(blocks) >= 3
    out = subprocess.run([sys.executable, "-c", "\n".join(blocks)], capture_output=True,
                         text=True, timeout=240, cwd=tmp_path,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert out.returncode == 0, out.stderr[-3000:]
