"""Runs the benchmark cases (one process each), prints the table, writes JSON and a chart."""
import json
import os
import platform
import subprocess
import sys
import textwrap

import numpy as np

from tf_rmsprop_ops.benchmark.dense import VARIANTS

REFERENCE_IMPL = "rmspropx"
# XLA:CPU's switch for multi-output fusion; with it the dense lowering is one loop.
MULTI_OUTPUT_FUSION_FLAG = "--xla_backend_extra_options=xla_cpu_use_multi_output_fusion"


def parse_size(text):
    """'1M' -> 2**20, '64K' -> 65536, '1000' -> 1000."""
    text = text.strip().upper()
    scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def machine_description():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def software_versions():
    """Versions of what is compared (read without importing TensorFlow here)."""
    from importlib import metadata
    versions = {"python": platform.python_version()}
    for dist in ("tensorflow", "tensorflow-cpu", "keras", "numpy", "tf-rmsprop-ops"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions


def run_case(spec):
    out = subprocess.run([sys.executable, "-m", "tf_rmsprop_ops.benchmark.case", json.dumps(spec)],
                         capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("bench:"):
            print("  " + line, flush=True)
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"benchmark case {spec} failed:\n{out.stderr[-3000:]}")


def case_specs(args):
    specs = []
    if getattr(args, "models", None):
        names = ("mlp", "single") if args.quick and args.models == "all" else (
            ("mlp", "resnet50", "bert_base", "single") if args.models == "all"
            else args.models.split(","))
        return [dict(kind="models", model=m, threads=args.threads, repeats=args.repeats)
                for m in names]
    if getattr(args, "keras_fit", False):
        return [dict(kind="keras_fit", model=m, quick=bool(args.quick), threads=args.threads,
                     repeats=min(args.repeats, 5)) for m in ("embedding", "mlp", "resnet50")]
    if getattr(args, "denormals", False):
        return [dict(kind="denormals", n=parse_size(size), threads=args.threads,
                     repeats=args.repeats) for size in args.sizes.split(",")]
    if getattr(args, "state8", False):
        return [dict(kind="state8", n=parse_size(size), threads=args.threads,
                     repeats=args.repeats) for size in args.sizes.split(",")]
    if getattr(args, "dtensor", False):
        return [dict(kind="dtensor", n=parse_size(size), threads=args.threads,
                     repeats=args.repeats) for size in args.sizes.split(",")]
    if not args.only_sparse:
        for dtype in args.dtype.split(","):
            for size in args.sizes.split(","):
                for variant in args.variants.split(","):
                    if variant not in VARIANTS:
                        raise SystemExit(f"unknown variant {variant!r}; choose from {list(VARIANTS)}")
                    specs.append(dict(kind="dense", n=parse_size(size), variant=variant,
                                      dtype=dtype, threads=args.threads, repeats=args.repeats))
    if not args.no_sparse:
        specs.append(dict(kind="sparse", rows=parse_size(args.sparse_rows), dim=args.sparse_dim,
                          indices=args.sparse_indices, threads=args.threads,
                          repeats=args.repeats))
    return specs


def describe(result):
    if result["kind"] == "dense":
        return f"dense {result['n']:,} {result['dtype']} {result['variant']}"
    if result["kind"] == "models":
        return (f"{result['model']}: {result['tensors']} tensors, "
                f"{result['params'] / 1e6:.1f}M params")
    if result["kind"] == "keras_fit":
        return (f"model.fit {result['model']} ({result['params']:,} params, "
                f"batch {result['batch']:,})")
    if result["kind"] == "denormals":
        return f"denormals {result['n']:,} float32 momentum"
    if result["kind"] == "state8":
        return f"8-bit state {result['n']:,} float32 momentum"
    if result["kind"] == "dtensor":
        return f"dtensor row-sharded [{result['rows']:,}, {result['dim']}] momentum"
    return (f"sparse [{result['rows']:,}, {result['dim']}] {result['indices']:,} idx "
            f"({result['unique']:,} unique)")


# A time below the roofline means the probe did not measure a bound in that run (this VM's
# bandwidth drifts within seconds): such a case is measured again, up to this many times,
# and if it persists the table prints no fraction for it.
BOUND_RETRIES = 2


def below_bound(r):
    """The implementations of a result that beat its roofline (no bound was measured)."""
    roof = r.get("roofline_ms")
    if not roof:
        return []
    return [name for name, ms in r["ms"].items() if ms is not None and ms < roof]


def percent(roof, ms):
    """roof / ms as a cell's percentage, or `>bound?` where the time beat the probe: never
    a fraction above 100% printed as a result."""
    if ms < roof:
        return ">bound?"
    return f"{100 * roof / ms:.0f}%"


# bench --models competitors whose state is flat (the others' floor is floor_per_slot_ms).
FLAT_STATE_IMPLS = ("rmspropx",)


def models_floor_line(r):
    """The call floor of a models case and each step above it against the roofline."""
    roof = r["roofline_ms"]
    above = []
    for name, ms in r["ms"].items():
        # flat state (rmspropx's default) has its own floor: one input per buffer, not slot
        floor = (r["floor_ms"] if name in FLAT_STATE_IMPLS or "floor_per_slot_ms" not in r
                 else r["floor_per_slot_ms"])
        if ms is not None and ms > floor:
            above.append(f"{name} {ms - floor:.3f} ms ({percent(roof, ms - floor)} of "
                         "the roofline)")
        elif ms is not None:
            above.append(f"{name} at or below the floor")
    per_slot = (f" (per-slot state: {r['floor_per_slot_ms']:.3f} ms)"
                if r.get("floor_per_slot_ms") is not None else "")
    return (f"{describe(r)}: call floor (the same RMSpropX step on {r['tensors']} variables of "
            f"256 elements) {r['floor_ms']:.3f} ms{per_slot}; above it: " + ", ".join(above)
            + ".")


# Issue 16's targets for bench --models: the share of the roofline, and how many times
# faster than Keras 3 with jit (2x on the MLP, 1.8x on the other sets).
TARGET_ROOFLINE = 0.85
TARGET_VS_KERAS_JIT = {"mlp": 2.0}
TARGET_VS_KERAS_JIT_OTHERS = 1.8


def models_target_line(r):
    """What each target of a models case needs of the update, from this run's numbers: the
    step time the target allows, minus TensorFlow's call over the same inputs (`tf_call`,
    no update), is the time left for the update, against its bandwidth bound (roofline).
    Above 100%: no update of any speed meets the target in a step called this way."""
    roof, call = r["roofline_ms"], r["tf_call_ms"]
    ratio = TARGET_VS_KERAS_JIT.get(r["model"], TARGET_VS_KERAS_JIT_OTHERS)
    targets = [(f"{TARGET_ROOFLINE:.0%} of the roofline", roof / TARGET_ROOFLINE)]
    if r["ms"].get("keras_jit"):
        targets.append((f"{ratio:g}x Keras 3 jit", r["ms"]["keras_jit"] / ratio))
    parts = []
    for name, allowed in targets:
        left = allowed - call
        need = (f"needs the update at {100 * roof / left:.0f}% of the roofline" if left > 0
                else "the call alone takes longer")
        parts.append(f"{name} allows {allowed:.3f} ms, {left:.3f} ms after the call: {need}")
    return (f"{describe(r)}: TensorFlow's call over the step's {r['tf_call_inputs']} inputs "
            f"(IdentityN, no update) {call:.3f} ms. " + "; ".join(parts) + ".")


def keras_fit_share_line(r):
    """The optimizer's share of a model.fit step (its step minus plain SGD's), ours against
    Keras 3 RMSprop, without and with XLA."""
    share = r.get("optimizer_share_ms") or {}
    parts = []
    for ours, keras_name, label in (("rmspropx", "keras", "without XLA"),
                                    ("rmspropx_jit", "keras_jit", "with jit_compile")):
        if ours in share and keras_name in share:
            a, b = share[ours], share[keras_name]
            ratio = (f"Keras' share / ours {b / a:.2f}x" if a > 0 and b > 0 else
                     "a share at or below 0: within the noise of this run")
            parts.append(f"{label}: rmspropx {a:.3f} ms, Keras RMSprop {b:.3f} ms ({ratio})")
    if not parts:
        return None
    return (f"{describe(r)}: the optimizer's share of a step (the step minus the same step "
            f"with Keras' plain SGD; {r.get('tensors', '?')} trainable tensors): "
            + "; ".join(parts) + ".")


def _cell(text, width=20):
    return f"{text:>{width}}"


def table(results, quick=False):
    """The results as text: every cell with its unit (ms, x, %)."""
    impls = []
    for r in results:
        impls += [k for k in r["ms"] if k not in impls]
    head = f"{'case':<46}" + "".join(_cell(name) for name in impls) + _cell("roofline", 12)
    lines = [head, "-" * len(head)]
    for r in results:
        ours = r["ms"][REFERENCE_IMPL]
        roof = r.get("roofline_ms")
        cells = []
        for name in impls:
            ms = r["ms"].get(name)
            if name not in r["ms"]:
                cells.append(_cell("-"))  # not a competitor in this case
            elif ms is None:
                cells.append(_cell("n/a*"))
            elif name == REFERENCE_IMPL and roof:
                cells.append(_cell(f"{ms:.3f} ms {percent(roof, ms)}"))
            elif name == REFERENCE_IMPL:
                cells.append(_cell(f"{ms:.3f} ms"))
            else:
                cells.append(_cell(f"{ms:.3f} ms {ms / ours:.2f}x"))
        lines.append(f"{describe(r):<46}" + "".join(cells) +
                     _cell(f"{roof:.3f} ms" if roof else "n/a", 12))
    lines.append("")
    lines.append(f"ms: median per update; Nx: that implementation's time / {REFERENCE_IMPL}'s "
                 "(higher = we are faster); %: roofline / our time (100% = the memory-bandwidth "
                 "bound).")
    lines.append("-: not a competitor in that case.")
    floor_lines = {id(r): models_floor_line(r) for r in results if r.get("floor_ms")}
    if any(below_bound(r) or ">bound?" in floor_lines.get(id(r), "") for r in results):
        lines.append(">bound?: faster than the roofline probe of the same run, so the probe "
                     "measured no bound there (measured again up to "
                     f"{BOUND_RETRIES} times first: see 'bound' lines above); no fraction "
                     "is printed.")
    if any(v is None for r in results for v in r["ms"].values()):
        lines.append("n/a*: that implementation cannot run this case here (the reason is "
                     "printed above, 'cannot run here').")
    for r in results:
        if r["kind"] == "state8":
            sb = r["state_bytes_per_element"]
            lines.append(f"{describe(r)}: rmspropx = the dense update with 8-bit state "
                         f"({float(sb['8']):.3f} state bytes per element, "
                         f"{100 * float(sb['8']) / float(sb['32']):.1f}% of float32's "
                         f"{float(sb['32']):.0f}); dense_32bit the same with float32 slots; "
                         f"sparse_*: a [{r['n'] // 64:,}, 64] table, 10,000 indices.")
        if r["kind"] == "denormals":
            lines.append(f"{describe(r)}: rmspropx = normal inputs in a tf.function; the "
                         f"subnormal inputs' outputs flushed to zero: {r['flushed']}.")
        share_line = keras_fit_share_line(r) if r["kind"] == "keras_fit" else None
        if share_line:
            lines.append(share_line)
        if id(r) in floor_lines:
            lines.append(floor_lines[id(r)])
        if r.get("tf_call_ms") and r.get("roofline_ms"):
            lines.append(models_target_line(r))
        if r.get("random_rows_ms"):
            lines.append(f"{describe(r)}: the same rows moved without arithmetic (random-row "
                         f"probe) take {r['random_rows_ms']:.3f} ms; {REFERENCE_IMPL} takes "
                         f"{r['ms'][REFERENCE_IMPL] / r['random_rows_ms']:.2f}x that.")
    if quick:
        lines.append("")
        lines.append("--quick: tiny sizes and 3 repeats check that the harness runs; these "
                     "figures are NOT measurements (fixed per-call costs dominate; no case is "
                     "measured again when it beats its roofline probe).")
    return "\n".join(lines)


def plot(results, path, caption="", quick=False):
    """A bar chart of the % of the roofline each implementation reaches, per case."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise SystemExit("--plot needs matplotlib: pip install 'tf-rmsprop-ops[bench]'") from e
    results = [r for r in results if r.get("roofline_ms")]  # cases with a roofline
    if not results:
        print("chart: no case with a roofline (e.g. --keras-fit): nothing to plot")
        return
    impls = []
    for r in results:
        impls += [k for k in r["ms"] if k not in impls]
    fig, ax = plt.subplots(figsize=(max(9, 1.4 * len(results) + 3), 5.5))
    width = 0.8 / len(impls)
    x = np.arange(len(results))
    missing = False
    for i, name in enumerate(impls):
        frac = [100 * r["roofline_ms"] / r["ms"][name] if r["ms"].get(name) else 0
                for r in results]
        bars = ax.bar(x + i * width, frac, width, label=name)
        for bar, r in zip(bars, results):
            if name in r["ms"] and not r["ms"][name]:
                missing = True
                ax.annotate("n/a", (bar.get_x() + bar.get_width() / 2, 1.2), ha="center",
                            va="bottom", fontsize=6, rotation=90)
    ax.axhline(100, color="k", lw=0.8, ls="--")
    ax.set_xticks(x + width * (len(impls) - 1) / 2)
    ax.set_xticklabels([textwrap.fill(describe(r), 16) for r in results], fontsize=7)
    ax.set_ylabel("% of the memory-bandwidth roofline\n(higher is better; dashed: 100%)",
                  fontsize=9)
    ax.set_yscale("log")
    ax.set_title("RMSpropX updates vs TensorFlow, Keras and the roofline"
                 + ("\n(--quick: not a measurement)" if quick else ""), fontsize=11)
    # The legend goes right of the axes, off the data and the 100% line.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    notes = caption
    if missing:
        notes += "\nn/a: that implementation could not run the case (e.g. XLA cannot compile it)."
    fig.text(0.01, 0.01, notes, fontsize=7, va="bottom", ha="left")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=120)


def main(args):
    specs = case_specs(args)
    if args.xla_multi_output_fusion:
        # Read by XLA once per process: every case process (all XLA competitors) gets it.
        flags = os.environ.get("XLA_FLAGS", "")
        if MULTI_OUTPUT_FUSION_FLAG not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} {MULTI_OUTPUT_FUSION_FLAG}".strip()
    xla_flags = os.environ.get("XLA_FLAGS", "")
    print(f"machine: {machine_description()}; threads: {args.threads}; {len(specs)} cases, "
          f"one process each; XLA_FLAGS={xla_flags!r}", flush=True)
    results = []
    for spec in specs:
        result = run_case(spec)
        retries = 0
        while below_bound(result) and not args.quick and retries < BOUND_RETRIES:
            retries += 1
            print(f"  bound: {', '.join(below_bound(result))} faster than the roofline probe "
                  f"in {describe(result)}: measuring the case again ({retries}/"
                  f"{BOUND_RETRIES})", flush=True)
            result = run_case(spec)
        result["bound_retries"] = retries
        results.append(result)
        print(f"  done: {describe(result)}", flush=True)
    print()
    print(table(results, quick=args.quick))
    report = dict(machine=machine_description(), threads=args.threads, xla_flags=xla_flags,
                  software=software_versions(), results=results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"\nJSON: {args.json}")
    if args.plot:
        import datetime
        versions = software_versions()
        tf_version = versions.get("tensorflow", versions.get("tensorflow-cpu", "?"))
        dtypes = sorted({r.get("dtype", "float32") for r in results})
        caption = (f"{machine_description()}; dtype {', '.join(dtypes)}; {args.threads} "
                   f"threads; {datetime.date.today().isoformat()}; TensorFlow {tf_version}; "
                   f"XLA_FLAGS={xla_flags or '(none)'}")
        plot(results, args.plot, caption=caption, quick=args.quick)
        print(f"chart: {args.plot}")
    return report
