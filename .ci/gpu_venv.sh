#!/usr/bin/env bash
# The cached virtual environment with the full `tensorflow` wheel (a CUDA build, ~570 MB) that
# the CUDA stage builds against. Prints its path. Idempotent: reuses a working one.
# .ci/run starts this in the background at the beginning (the download overlaps the README
# stage); .ci/gpu_build_check.sh calls it again, which is a no-op once it has worked.
set -euo pipefail
CACHE="${TF_RMSPROP_OPS_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tf_rmsprop_ops}"
VENV="$CACHE/venv-tensorflow-gpu-2.21"
mkdir -p "$CACHE"
exec 9>"$CACHE/.venv.lock"
flock 9  # one creator at a time (the background prefetch, the CUDA stage, another CI run)
if ! "$VENV/bin/python" -c 'import tensorflow, pytest, numpy' >/dev/null 2>&1; then
  echo "== creating $VENV (full tensorflow wheel, ~570 MB)" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check 'tensorflow==2.21.*' pytest hypothesis >&2
fi
echo "$VENV"
