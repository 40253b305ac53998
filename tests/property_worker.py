"""Worker of tests/test_properties.py: random calls of one family against the ops' contract.

    python tests/property_worker.py FAMILY SEED COUNT [--trace FILE]
    python tests/property_worker.py replay 'SPEC-JSON'

FAMILY is one of dense (ApplyRMSpropX), sparse (SparseApplyRMSpropX), multi
(ApplyRMSpropXMulti) or optimizer (tf_rmsprop_ops.RMSpropX and tf_rmsprop_ops.keras.RMSpropX).
COUNT calls are generated from SEED; a share of them (TF_RMSPROP_OPS_PROPERTY_HYPOTHESIS_SHARE,
default 0.1) is drawn by hypothesis (its boundary-seeking floats and integers), the rest by a
seeded NumPy generator (hypothesis costs 1-5 ms per example here, as much as the call it
generates). Both draw through the same generator, so every case is a JSON "spec" from which
`replay` rebuilds the exact call. The last line of stdout is `PROPERTY_SUMMARY {json}`; the exit status is 1 when a
call violated the contract, 0 otherwise. `--trace FILE` keeps the spec of the call in
progress in FILE, so that a crash (signal, abort, CHECK failure) can be traced to its case.

The contract every call is judged by is in tests/property_checks/oracle.py's docstring. This file is
the command line: the loop over the calls, the trace, the summary; the machinery is in
tests/property_checks/ (its __init__.py lists the modules): spec.py (what a spec is made of),
generators.py (the drawers and each family's specs), faults.py (the fault catalogue and what
counts as reporting a fault), oracle.py (the error-bounded reference) and runners.py (a
runner per family, and the summary's counts).
"""
import json
import os
import sys
import time
import traceback
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tests/, which holds property_checks/

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from property_checks.generators import GENERATORS, HypothesisDrawer, NumpyDrawer  # noqa: E402
from property_checks.runners import RUNNERS, Stats  # noqa: E402
from property_checks.spec import FAMILIES  # noqa: E402

np.seterr(all="ignore")  # NaN, inf and underflow are the point here: no warnings
tf.get_logger().setLevel("ERROR")  # e.g. graph-mode cases' retracing warnings


# ---- main ------------------------------------------------------------------------------------

class Trace:
    def __init__(self, path):
        self.f = open(path, "w") if path else None

    def write(self, spec):
        if self.f:
            self.f.seek(0)
            self.f.write(json.dumps(spec) + "\n")
            self.f.truncate()
            self.f.flush()


def run_one(runner, spec, trace, hypothesis_drawn=False):
    trace.write(spec)
    runner.stats.c["calls"] += 1
    runner.stats.c["hypothesis_calls"] += int(hypothesis_drawn)
    try:
        runner.run(spec)
    except Exception:  # noqa: BLE001 - a bug of this harness: report it, go on
        runner.stats.violation("harness_error", spec, traceback=traceback.format_exc()[-2000:])


def run_family(family, seed, count, trace_path=None):
    stats = Stats(family)
    runner = RUNNERS[family](stats)
    trace = Trace(trace_path)
    share = float(os.environ.get("TF_RMSPROP_OPS_PROPERTY_HYPOTHESIS_SHARE", "0.1"))
    n_hyp = int(round(count * share))
    start = time.time()
    gen = GENERATORS[family]
    rng = np.random.default_rng([seed, zlib.crc32(family.encode())])
    for _ in range(count - n_hyp):
        spec = gen(NumpyDrawer(rng))
        run_one(runner, spec, trace)
    if n_hyp:
        from hypothesis import HealthCheck, Phase, given, settings, strategies as st
        from hypothesis import seed as hypothesis_seed

        @hypothesis_seed(seed)
        @settings(max_examples=n_hyp, deadline=None, database=None, derandomize=False,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @given(st.data())
        def prop(data):
            run_one(runner, gen(HypothesisDrawer(data)), trace, hypothesis_drawn=True)

        prop()
    return stats.summary(time.time() - start)


def main(argv):
    if argv and argv[0] == "replay":
        spec = json.loads(argv[1])
        stats = Stats(spec["family"])
        runner = RUNNERS[spec["family"]](stats)
        run_one(runner, spec, Trace(None))
        print(json.dumps(stats.summary(0.0), indent=1, default=str))
        return 1 if stats.c["violations"] else 0
    family, seed, count = argv[0], int(argv[1]), int(argv[2])
    trace = argv[argv.index("--trace") + 1] if "--trace" in argv else None
    if family not in FAMILIES:
        raise SystemExit(f"unknown family {family!r}: one of {FAMILIES}")
    summary = run_family(family, seed, count, trace)
    print("PROPERTY_SUMMARY " + json.dumps(summary, default=str), flush=True)
    return 1 if summary["violations"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
