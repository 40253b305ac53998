#!/usr/bin/env bash
# Bazel for the Bazel stage: bazelisk or Debian's bazel-4 when present, else Debian's
# bazel-bootstrap (Bazel 4.2.3) and the rule repositories it needs offline. Fails loudly.
# .ci/run starts this in the background at the beginning; .ci/bazel_check.sh calls it again.
set -euo pipefail
if ! command -v bazelisk >/dev/null && ! command -v bazel-4 >/dev/null; then
  echo "== installing Bazel (Debian's bazel-bootstrap and its rule repositories)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q bazel-bootstrap bazel-rules-java bazel-rules-proto bazel-platforms >/dev/null \
    || { echo "install_bazel: cannot install Bazel with apt-get" >&2; exit 1; }
fi
