"""Median wall time of interleaved repeated calls, after warm-up."""
import time

import numpy as np


def median_ms(functions, repeats, warmup=2, budget_s=None, interleave=True):
    """{name: median ms} for zero-argument callables, timed round-robin so that drift of
    the machine affects every competitor alike; each round runs them in a fresh (seeded)
    random order, so that none always follows the same one (the first call after the
    bandwidth probe finds TensorFlow's threads asleep and its caches cold)
    (`interleave=False`: each competitor's calls
    back to back, so that one competitor's memory traffic does not evict another's working
    set; for cache-sensitive cases). A competitor whose calls exceed `budget_s`
    in total stops early (at least 3 timings are kept). A competitor that fails to run
    (e.g. XLA cannot compile it) is reported as None."""
    functions = dict(functions)
    failed = {}
    for name, f in list(functions.items()):
        try:
            for _ in range(warmup):
                f()
        except Exception as e:  # noqa: BLE001 (any failure: report it, time the rest)
            failed[name] = None
            print(f"bench: {name} cannot run here: {type(e).__name__}: "
                  f"{str(e).splitlines()[0][:200]}", flush=True)
            del functions[name]
    samples = {name: [] for name in functions}
    spent = {name: 0.0 for name in functions}
    entries = list(functions.items())
    rng = np.random.default_rng(0)
    rounds = [entries[i] for _ in range(repeats) for i in rng.permutation(len(entries))]
    if not interleave:
        rounds = [(name, f) for name, f in functions.items() for _ in range(repeats)]
    for name, f in rounds:
        if budget_s is not None and spent[name] > budget_s and len(samples[name]) >= 3:
            continue
        start = time.perf_counter()
        f()
        elapsed = time.perf_counter() - start
        samples[name].append(elapsed)
        spent[name] += elapsed
    return {**{name: float(np.median(s)) * 1e3 for name, s in samples.items()}, **failed}
