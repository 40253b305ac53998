"""GPU speed of the CUDA kernels without TensorFlow (the harness), in one run:

* dense RMSprop (momentum 0.9, float32) at 16M and 256M elements against the device's own
  copy bandwidth (bytes-moved bound: 4 arrays read, 3 written) and against
  torch.optim.RMSprop(momentum=0.9, foreach=True) on the same sizes;
* multi-tensor: the variable sets of an MLP (80 tensors, 2.6M parameters) and BERT-base
  (199 tensors, 109.5M) in one LaunchMulti call, against one dense launch per tensor, the
  bytes-moved bound and torch.optim.RMSprop(foreach=True) over the same tensors;
* sparse: a [1M, 64] float32 table with 10k and 100k random indices (duplicates included),
  against its row-traffic bound (unique rows x (var, ms, mom read and written) + the
  gradient rows read), check (with its host sync) and update together.

python tests/gpu/bench_gpu.py [--json out.json]. Times are medians of CUDA-event timings.
"""
import argparse
import json
import os
import sys

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
# The harness and, two levels up, the checkout (tf_rmsprop_ops.reference, NumPy only): the
# GPU machine runs this from a copy of the tree, with nothing installed.
sys.path[:0] = [_HERE, os.path.dirname(os.path.dirname(_HERE))]
import gpu_lib  # noqa: E402
from gpu_lib import Variant  # noqa: E402

HYPER = dict(lr=1e-3, rho=0.9, momentum=0.9, epsilon=1e-7, weight_decay=0.0)
MOMENTUM = Variant(False, True, False, "inside_sqrt", "inside_momentum", "none")


def timed(fn, repeats=20, warmup=3):
    import cupy
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end))
    return float(np.median(times))


_BANDWIDTH = {}


def copy_bandwidth(n=1 << 28):
    """GB/s of a device-to-device copy of n float32 (n*4 bytes read, n*4 written); measured
    once, on 1 GiB arrays, far beyond the L2 cache: the DRAM bound every case is held to (a
    set whose arrays fit in L2 can then exceed 100% of it)."""
    import cupy
    if n not in _BANDWIDTH:
        a, b = cupy.ones(n, cupy.float32), cupy.empty(n, cupy.float32)
        ms = timed(lambda: b.__setitem__(slice(None), a))
        _BANDWIDTH[n] = 2 * n * 4 / (ms * 1e-3) / 1e9
        del a, b
    return _BANDWIDTH[n]


def dense_case(h, n):
    import cupy
    arrays = {k: cupy.random.random(n, dtype=cupy.float32) + 0.1 for k in ("var", "ms", "mom", "grad")}
    ours = timed(h.prepare_dense("float32", MOMENTUM, HYPER, arrays["grad"], arrays["var"],
                                 arrays["ms"], arrays["mom"]))
    bandwidth = copy_bandwidth()
    bound = 7 * n * 4 / (bandwidth * 1e9) * 1e3
    out = dict(n=n, ours_ms=ours, copy_bandwidth_gbs=bandwidth, bound_ms=bound,
               fraction_of_bound=bound / ours)
    try:
        import torch
        p = torch.nn.Parameter(torch.rand(n, device="cuda") + 0.1)
        p.grad = torch.randn(n, device="cuda")
        opt = torch.optim.RMSprop([p], lr=1e-3, alpha=0.9, momentum=0.9, foreach=True)
        out["torch_foreach_ms"] = timed(opt.step)
        out["speedup_vs_torch"] = out["torch_foreach_ms"] / ours
    except Exception as e:  # noqa: BLE001
        out["torch_error"] = f"{type(e).__name__}: {e}"
    return out


def multi_case(h, model):
    import cupy
    from tf_rmsprop_ops.benchmark.shapes import shapes_of  # TensorFlow-free for these two
    sizes = [int(np.prod(s)) for s in shapes_of(model)]
    arrays = {k: [cupy.random.random(n, dtype=cupy.float32) + 0.1 for n in sizes]
              for k in ("var", "ms", "mom", "grad")}
    ours = timed(h.prepare_multi("float32", MOMENTUM, HYPER, arrays["grad"], arrays["var"],
                                 arrays["ms"], arrays["mom"]))

    launches = [h.prepare_dense("float32", MOMENTUM, HYPER, arrays["grad"][i],
                                arrays["var"][i], arrays["ms"][i], arrays["mom"][i])
                for i in range(len(sizes))]

    def per_tensor():  # one launch per tensor, arguments prepared as for the multi call
        for launch in launches:
            launch()
    per_tensor_ms = timed(per_tensor)
    total = sum(sizes)
    bandwidth = copy_bandwidth()
    bound = 7 * total * 4 / (bandwidth * 1e9) * 1e3
    out = dict(model=model, tensors=len(sizes), params=total, ours_ms=ours,
               per_tensor_ms=per_tensor_ms, bound_ms=bound, fraction_of_bound=bound / ours)
    try:
        import torch
        params = [torch.nn.Parameter(torch.rand(n, device="cuda") + 0.1) for n in sizes]
        for p in params:
            p.grad = torch.randn(p.numel(), device="cuda")
        opt = torch.optim.RMSprop(params, lr=1e-3, alpha=0.9, momentum=0.9, foreach=True)
        out["torch_foreach_ms"] = timed(opt.step)
        out["speedup_vs_torch"] = out["torch_foreach_ms"] / ours
    except Exception as e:  # noqa: BLE001
        out["torch_error"] = f"{type(e).__name__}: {e}"
    return out


def sparse_case(h, rows, dim, count, rng):
    import cupy
    table = {k: cupy.random.random((rows, dim), dtype=cupy.float32) + 0.1 for k in ("var", "ms", "mom")}
    indices = cupy.asarray(rng.integers(0, rows, size=count).astype(np.int64))
    grad = cupy.random.standard_normal((count, dim), dtype=cupy.float32)
    ws = cupy.empty(h.lib.rx_sparse_workspace_bytes(1, count, rows), cupy.int8)
    ours = timed(lambda: h.sparse("float32", MOMENTUM, HYPER, grad, indices, rows, dim,
                                  table["var"], table["ms"], table["mom"], workspace=ws))
    unique = int(cupy.unique(indices).size)
    bytes_moved = unique * dim * 4 * 6 + count * dim * 4
    bandwidth = copy_bandwidth()
    bound = bytes_moved / (bandwidth * 1e9) * 1e3
    return dict(rows=rows, dim=dim, indices=count, unique=unique, ours_ms=ours, bound_ms=bound,
                fraction_of_bound=bound / ours)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default=None)
    parser.add_argument("--sizes", default="16777216,268435456")
    args = parser.parse_args()
    reason = gpu_lib.unavailable()
    if reason:
        raise SystemExit(f"bench_gpu: {reason}")
    import cupy
    h = gpu_lib.open_harness("cuda")
    rng = np.random.default_rng(0)
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"]
    report = dict(device=name.decode() if isinstance(name, bytes) else name, dense=[], multi=[],
                  sparse=[])
    cases = ([("dense", dense_case, (h, n)) for n in map(int, args.sizes.split(","))] +
             [("multi", multi_case, (h, m)) for m in ("mlp", "bert_base")] +
             [("sparse", sparse_case, (h, 1_000_000, 64, c, rng)) for c in (10_000, 100_000)])
    for kind, fn, fn_args in cases:
        try:  # one failing case does not lose the others
            result = fn(*fn_args)
        except Exception as e:  # noqa: BLE001
            result = dict(args=repr(fn_args[1:]), error=f"{type(e).__name__}: {e}")
        report[kind].append(result)
        print(json.dumps(result), flush=True)
        if args.json:  # written after every case: a run cut short keeps what it measured
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
