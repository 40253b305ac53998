"""Writes .bazelrc.user for this machine: the one place the Bazel build is configured.

* The Python whose TensorFlow the op library is built against (this interpreter, or
  PYTHON_BIN_PATH): passed to the repository rule (cc/bazel/tf_configure.bzl) and to tests.
* Debian's `bazel-bootstrap` (Bazel 4.2.3, offline): its own C++ tools load rules_cc,
  rules_java, rules_proto and platforms (and `bazel test` remote_coverage_tools), which it
  would download; they are overridden with local copies (Debian's bazel-rules-java,
  bazel-rules-proto, bazel-platforms and the stubs in cc/bazel/offline/). Bazel 4 does not expand %workspace% in flag values, hence
  this script writes absolute paths. Debian's /etc/bazel/bazelrc sets --sandbox_debug
  (keeps every sandbox): turned off.
* Bazel >= 6 (bazelisk): Bzlmod off (this is a WORKSPACE build); >= 7: WORKSPACE on.
"""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEBIAN_REPOS = {"rules_java": "/usr/share/bazel/rules/java",
                "rules_proto": "/usr/share/bazel/rules/proto",
                "platforms": "/usr/share/bazel/platforms"}


def bazel_version(bazel):
    try:
        out = subprocess.run([bazel, "--version"], capture_output=True, text=True,
                             timeout=120).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"(\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else (4, 2)  # Debian: "no_version"


def main():
    python = os.environ.get("PYTHON_BIN_PATH", sys.executable)
    bazel = os.environ.get("BAZEL", "bazel")
    version = bazel_version(bazel)
    lines = ["# Written by cc/bazel/configure.py for this machine; do not commit.",
             f"build --repo_env=PYTHON_BIN_PATH={python}",
             f"build --action_env=PYTHON_BIN_PATH={python}",
             f"build --action_env=PATH={os.path.dirname(python)}:{os.environ.get('PATH', '')}",
             f"test --test_env=PATH={os.path.dirname(python)}:{os.environ.get('PATH', '')}",
             f"build --python_path={python}"]
    if version is not None and version < (5, 0) and all(map(os.path.isdir, DEBIAN_REPOS.values())):
        for name in ("rules_cc", "remote_coverage_tools"):  # local stubs
            lines.append(f"build --override_repository={name}="
                         + os.path.join(ROOT, "cc", "bazel", "offline", name))
        lines += [f"build --override_repository={name}={path}"
                  for name, path in DEBIAN_REPOS.items()]
        lines.append("build --nosandbox_debug")
    if version is not None and version >= (6, 0):
        lines.append("common --noenable_bzlmod")
    if version is not None and version >= (7, 0):
        lines.append("common --enable_workspace")
    with open(os.path.join(ROOT, ".bazelrc.user"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"configure: Bazel {version}, Python {python}: wrote .bazelrc.user")


if __name__ == "__main__":
    main()
