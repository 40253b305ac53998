"""Runs the XLA lowerings, dense on every variant (float32) and sparse on a quarter of
them, both on every dtype, two steps each, and saves inputs, results and optimized HLO. Run by
test_xla_output_layout.py in processes of their own, with and without XLA:CPU's
multi-output fusion (XLA reads XLA_FLAGS once per process).

usage: xla_layout_worker.py SEED OUT.npz
"""
import json
import sys

import numpy as np
import tensorflow as tf

from helpers import (DTYPES, VARIANTS, Variant, apply_dense, apply_sparse, make_variables,
                     random_hyper, random_state, round_to, values)

# Every feature on: the variant with the most outputs (4) and the longest chain.
WIDEST = Variant(centered=True, momentum=True, nesterov=True, weight_decay_mode="coupled")
SHAPE = (7, 11)
STEPS = 2


def _grad_batches(rng, dtype, sparse):
    """[(grad, indices or None)] for each step; sparse batches repeat and reorder rows."""
    batches = []
    for _ in range(STEPS):
        indices = rng.integers(0, SHAPE[0], 9) if sparse else None
        shape = (9,) + SHAPE[1:] if sparse else SHAPE
        batches.append((round_to(rng.uniform(-1, 1, shape), dtype), indices))
    return batches


def run(rng, variant, dtype, sparse):
    state = random_state(rng, SHAPE, dtype, variant)
    hyper = random_hyper(rng, dtype, variant)
    batches = _grad_batches(rng, dtype, sparse)
    variables = make_variables(state, dtype)

    @tf.function(jit_compile=True)
    def step(g, idx):
        if sparse:
            apply_sparse(variables, g, idx, variant, hyper, dtype)
        else:
            apply_dense(variables, g, variant, hyper, dtype)

    args = [(tf.constant(g, dtype), tf.constant(i if sparse else [0])) for g, i in batches]
    for a in args:
        step(*a)
    hlo = step.experimental_get_compiler_ir(*args[0])(stage="optimized_hlo")
    return state, hyper, batches, values(variables), hlo


def runtime_hyper_hlo(rng):
    """The optimized HLO of WIDEST's dense float32 step with the hyperparameters read from
    variables (run-time values, as an optimizer's learning rate): the lowering then guards
    its outputs (var NaN, slots kept on an invalid value)."""
    state = random_state(rng, SHAPE, tf.float32, WIDEST)
    hyper = {k: tf.Variable(v, dtype=tf.float32)
             for k, v in random_hyper(rng, tf.float32, WIDEST).items()}
    variables = make_variables(state, tf.float32)

    @tf.function(jit_compile=True)
    def step(g):
        apply_dense(variables, g, WIDEST, {k: v.read_value() for k, v in hyper.items()},
                    tf.float32)

    g = tf.constant(rng.uniform(-1, 1, SHAPE), tf.float32)
    step(g)
    return step.experimental_get_compiler_ir(g)(stage="optimized_hlo")


def main(seed, out_path):
    rng = np.random.default_rng(seed)
    cases = [(v, tf.float32) for v in VARIANTS] + [(WIDEST, d) for d in DTYPES]
    arrays, meta = {}, []
    for i, (variant, dtype) in enumerate(cases):
        # Sparse shares the formula with dense: a quarter of the variants keeps it quick.
        sparse_too = dtype != tf.float32 or variant == WIDEST or i % 4 == 0
        for kind in ("dense", "sparse") if sparse_too else ("dense",):
            state, hyper, batches, result, hlo = run(rng, variant, dtype, kind == "sparse")
            meta.append(dict(kind=kind, variant=str(variant), dtype=dtype.name, hyper=hyper,
                             fields=sorted(result)))
            key = f"{len(meta) - 1}"
            arrays.update({f"{key}/out/{k}": v for k, v in result.items()})
            arrays.update({f"{key}/in/{k}": v for k, v in state.items() if v is not None})
            for j, (g, idx) in enumerate(batches):
                arrays[f"{key}/grad/{j}"] = g
                if idx is not None:
                    arrays[f"{key}/indices/{j}"] = idx
            if variant == WIDEST and dtype == tf.float32:
                arrays[f"widest_{kind}_hlo"] = np.array(hlo)
    arrays["widest_dense_runtime_hlo"] = np.array(runtime_hyper_hlo(rng))
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(out_path, **arrays)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
