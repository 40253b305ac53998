#!/usr/bin/env bash
# CI: the op library built with AddressSanitizer + UBSan (`make asan`), the op tests run
# against it with the sanitizer runtimes preloaded into Python. Fails on any report: every
# UBSan check aborts (-fno-sanitize-recover=all), ASan aborts on its first error, and the
# reports are also written to log files that must stay empty.
#
#   bash .ci/sanitizers.sh            (in the source checkout, after `make` / pip install -e .)
#   SANITIZER_TESTS="tests/test_sparse_op.py" bash .ci/sanitizers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
CXX="${CXX:-g++}"

echo "== sanitizers: building the op library with -fsanitize=address,undefined"
make -s -j"${JOBS:-2}" PYTHON="$PYTHON" asan asan-probe
LIB="$(ls build-asan/_rmsprop_x_ops*.so)"
PROBE="$PWD/build-asan/sanitizer_probe.so"

# A copy of the package whose op library is the instrumented one (the checkout's own
# package, and an editable install pointing at it, stay untouched).
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/pkg" "$WORK/reports"
cp -r tf_rmsprop_ops "$WORK/pkg/"
rm -f "$WORK"/pkg/tf_rmsprop_ops/_rmsprop_x_ops*.so
cp "$LIB" "$WORK/pkg/tf_rmsprop_ops/"

PRELOAD="$("$CXX" -print-file-name=libasan.so):$("$CXX" -print-file-name=libubsan.so)"
# detect_leaks=0: TensorFlow and Python keep allocations until exit by design (not ours to
# judge; tests/test_hygiene.py bounds our growth); everything else at ASan's defaults plus:
SAN_COMMON_ASAN="detect_leaks=0:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1"

# First, the check itself can fail: planted faults (tests/sanitizer/probe.cc) in this setup
# must be reported and must stop the process: the real dense span loop one element past its
# arrays (ASan), and a signed overflow (UBSan).
for probe in "0:heap-buffer-overflow" "1:signed integer overflow"; do
  kind="${probe%%:*}"; expect="${probe#*:}"
  mkdir -p "$WORK/probe$kind"
  if ASAN_OPTIONS="$SAN_COMMON_ASAN:log_path=$WORK/probe$kind/asan" \
     UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$WORK/probe$kind/ubsan" \
     LD_PRELOAD="$PRELOAD" "$PYTHON" -c \
     "import ctypes; ctypes.CDLL('$PROBE').tf_rmsprop_ops_sanitizer_probe($kind, 2**30 + 1)" \
     2>"$WORK/probe$kind/stderr"; then
    echo "== sanitizers: the planted fault $kind ran to the end: the sanitizers are not working" >&2
    exit 1
  fi
  if ! grep -qs "$expect" "$WORK/probe$kind"/*; then
    echo "== sanitizers: the planted fault $kind was not reported as '$expect':" >&2
    cat "$WORK/probe$kind"/* >&2 || true
    exit 1
  fi
  echo "== sanitizers: planted fault $kind reported and stopped the process: $(grep -hm1 -E 'ERROR: AddressSanitizer|runtime error' "$WORK/probe$kind"/* | sed 's/^.*\(ERROR\|runtime\)/\1/' | cut -c1-90), at $(grep -hm1 '#0 ' "$WORK/probe$kind"/* | sed 's/^ *#0 0x[0-9a-f]* in //' | cut -c1-70)"
done

export ASAN_OPTIONS="$SAN_COMMON_ASAN:log_path=$WORK/reports/asan"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$WORK/reports/ubsan"
# The tests that drive the kernels' memory accesses (every variant and dtype, bad input,
# threads, random calls); test_numerics is mostly XLA compilation (not instrumented here).
export TF_RMSPROP_OPS_PROPERTY_CALLS="${TF_RMSPROP_OPS_PROPERTY_CALLS:-1000}"
TESTS="${SANITIZER_TESTS:-tests/test_dense_op.py tests/test_sparse_op.py tests/test_multi_tensor.py tests/test_errors.py tests/test_concurrency.py tests/test_properties.py tests/test_state8_op.py tests/test_flat_state.py::test_flat_buffers_give_the_per_variable_bits tests/test_flat_state.py::test_a_bad_flat_layout_is_rejected_before_any_write}"
TESTS="$(for t in $TESTS; do printf '%s ' "$PWD/$t"; done)"

# The package copy must be the one imported: run outside the checkout (Python puts the
# working directory first on sys.path).
ROOT="$PWD"
cd "$WORK"
LD_PRELOAD="$PRELOAD" PYTHONPATH="$WORK/pkg" "$PYTHON" -c "
import tf_rmsprop_ops._library as l, sys
assert l.LIBRARY_PATH.startswith('$WORK/pkg/'), l.LIBRARY_PATH
print('== sanitizers: loaded', l.LIBRARY_PATH)" 2>&1 | grep -v "^WARNING\|^I0000\|oneDNN\|cpu_feature\|To enable"

# Reports go to the log files, or (UBSan's, through ASan's runtime) to stderr: any fails.
fail_on_reports() {  # $1: the pytest log, $2: what ran
  if compgen -G "$WORK/reports/*" >/dev/null \
     || grep -qE "ERROR: AddressSanitizer|runtime error:|SUMMARY: (Address|UndefinedBehavior)Sanitizer" "$1"; then
    echo "== sanitizers: REPORTS ($2)" >&2
    cat "$WORK"/reports/* >&2 || true
    grep -E -A30 "ERROR: AddressSanitizer|runtime error:" "$1" | head -200 >&2 || true
    exit 1
  fi
}

echo "== sanitizers: $TESTS"
status=0
# shellcheck disable=SC2086
LD_PRELOAD="$PRELOAD" PYTHONPATH="$WORK/pkg" "$PYTHON" -m pytest -q -p no:cacheprovider $TESTS \
  2>&1 | tee "$WORK/pytest.log" || status=$?
fail_on_reports "$WORK/pytest.log" "the op library"

# The CUDA kernels' code on the CPU emulation of CUDA (tests/gpu/emu/), built with ASan +
# UBSan, every array its own allocation: also reads past an array's end.
echo "== sanitizers: the CUDA kernels on the CPU emulation (tests/gpu/test_gpu_kernels.py, test_gpu_state8.py)"
GPU_HARNESS_BACKEND=emulated GPU_HARNESS_SANITIZE=address LD_PRELOAD="$PRELOAD" \
  "$PYTHON" -m pytest -q -p no:cacheprovider "$ROOT/tests/gpu/test_gpu_kernels.py" \
  2>&1 | tee "$WORK/pytest_gpu.log" || status=$?
fail_on_reports "$WORK/pytest_gpu.log" "the emulated CUDA kernels"
# The 8-bit kernel's block reduction (concurrent threads at __syncthreads) under ASan too.
GPU_HARNESS_BACKEND=emulated GPU_HARNESS_SANITIZE=address LD_PRELOAD="$PRELOAD" \
  "$PYTHON" -m pytest -q -p no:cacheprovider "$ROOT/tests/gpu/test_gpu_state8.py" \
  -k "shapes or nan or empty" 2>&1 | tee "$WORK/pytest_gpu8.log" || status=$?
fail_on_reports "$WORK/pytest_gpu8.log" "the emulated 8-bit CUDA kernel"
if [ "$status" != 0 ]; then
  echo "== sanitizers: the tests failed under the sanitizers (exit $status)" >&2
  exit "$status"
fi
echo "== sanitizers: no reports"
