"""Runs the dense XLA lowering on every variant (float32) and a few dtypes, two steps
each, and saves the results and one optimized HLO module. Run by
test_xla_output_layout.py in processes of their own, with and without XLA:CPU's
multi-output fusion (XLA reads XLA_FLAGS once per process).

usage: xla_layout_worker.py SEED OUT.npz
"""
import json
import sys

import numpy as np
import tensorflow as tf

from helpers import (DTYPES, VARIANTS, Variant, apply_dense, make_variables, random_hyper,
                     random_state, round_to, values)

# Every feature on: the variant with the most outputs (4) and the longest chain.
WIDEST = Variant(centered=True, momentum=True, nesterov=True, weight_decay_mode="coupled")


def run(rng, variant, dtype, shape=(7, 11), steps=2):
    state = random_state(rng, shape, dtype, variant)
    hyper = random_hyper(rng, dtype, variant)
    grads = [tf.constant(round_to(rng.uniform(-1, 1, shape), dtype), dtype) for _ in range(steps)]
    variables = make_variables(state, dtype)

    @tf.function(jit_compile=True)
    def step(g):
        apply_dense(variables, g, variant, hyper, dtype)

    for g in grads:
        step(g)
    hlo = step.experimental_get_compiler_ir(grads[0])(stage="optimized_hlo")
    return state, hyper, [g.numpy().astype(np.float64) for g in grads], values(variables), hlo


def main(seed, out_path):
    rng = np.random.default_rng(seed)
    cases = [(v, tf.float32) for v in VARIANTS] + [(WIDEST, d) for d in DTYPES]
    arrays, meta = {}, []
    for i, (variant, dtype) in enumerate(cases):
        state, hyper, grads, result, hlo = run(rng, variant, dtype)
        meta.append(dict(variant=str(variant), dtype=dtype.name, hyper=hyper,
                         fields=sorted(result)))
        for k, v in result.items():
            arrays[f"{i}/out/{k}"] = v
        for k, v in state.items():
            if v is not None:
                arrays[f"{i}/in/{k}"] = v
        for j, g in enumerate(grads):
            arrays[f"{i}/grad/{j}"] = g
        if variant == WIDEST and dtype == tf.float32:
            arrays["widest_hlo"] = np.array(hlo)
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(out_path, **arrays)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
