"""`bench --keras-fit`: whole `model.fit` steps with our Keras optimizer against Keras 3's
RMSprop (jit off and on), on the two models where Keras users feel the optimizer:

* embedding: `Embedding(1M, 64)` looked up by a batch of 10k ids, then `Dense(1)`. Keras'
  RMSprop densifies the table's gradient (every row's velocity each step); ours updates the
  10k looked-up rows with `SparseApplyRMSpropX`.
* mlp: 512 -> 2048 -> 2048 -> 10 (5.3M parameters), batch 256: dense updates only.

The time per step is the wall time of `model.fit(..., steps_per_epoch=S)` divided by S,
after a warm-up fit (tracing, compilation); the competitors are timed round-robin.
"""
import time

import numpy as np

MODELS = {
    # name: (full-size parameters, quick parameters)
    "embedding": (dict(rows=1_000_000, dim=64, batch=10_000), dict(rows=2_000, dim=8, batch=64)),
    "mlp": (dict(inputs=512, hidden=2048, batch=256), dict(inputs=16, hidden=32, batch=16)),
}
COMPETITORS = ("rmspropx", "rmspropx_jit", "keras", "keras_jit")


def _build(name, p, rng):
    import keras
    keras.utils.set_random_seed(0)
    if name == "embedding":
        ids = keras.Input((1,), dtype="int32")
        x = keras.layers.Flatten()(keras.layers.Embedding(p["rows"], p["dim"])(ids))
        model = keras.Model(ids, keras.layers.Dense(1)(x))
        data = (rng.integers(0, p["rows"], size=(p["batch"], 1)).astype(np.int32),
                rng.normal(size=(p["batch"], 1)).astype(np.float32))
    else:
        inputs = keras.Input((p["inputs"],))
        h = keras.layers.Dense(p["hidden"], activation="relu")(inputs)
        h = keras.layers.Dense(p["hidden"], activation="relu")(h)
        model = keras.Model(inputs, keras.layers.Dense(10)(h))
        data = (rng.normal(size=(p["batch"], p["inputs"])).astype(np.float32),
                rng.normal(size=(p["batch"], 10)).astype(np.float32))
    return model, data


def run(model_name, quick, repeats, rng):
    import keras
    import tensorflow as tf

    import tf_rmsprop_ops.keras as tfx_keras
    p = MODELS[model_name][1 if quick else 0]
    steps = 2 if quick else 5
    fits, failed = {}, {}
    for name in COMPETITORS:
        model, (x, y) = _build(model_name, p, rng)
        cls = tfx_keras.RMSpropX if name.startswith("rmspropx") else keras.optimizers.RMSprop
        model.compile(optimizer=cls(learning_rate=1e-3, momentum=0.9), loss="mse",
                      jit_compile=name.endswith("_jit"))
        ds = tf.data.Dataset.from_tensors((x, y)).repeat()
        try:
            model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)  # trace, compile, build
        except Exception as e:  # noqa: BLE001 (e.g. XLA cannot compile it): report, go on
            lines = ([l for l in str(e).splitlines() if "XLA compilation requires" in l] or
                     [l for l in str(e).splitlines() if "rror" in l] or str(e).splitlines())
            print(f"bench: {name} cannot run here: {type(e).__name__}: {lines[0][:300]}",
                  flush=True)
            failed[name] = None
            continue

        def fit(model=model, ds=ds):
            model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
        fits[name] = fit
    samples = {name: [] for name in fits}
    for _ in range(repeats):
        for name, fit in fits.items():
            start = time.perf_counter()
            fit()
            samples[name].append((time.perf_counter() - start) / steps * 1e3)
    params = int(sum(np.prod(v.shape) for v in model.trainable_weights))
    return dict(kind="keras_fit", model=model_name, params=params, batch=p["batch"],
                ms={**{name: float(np.median(s)) for name, s in samples.items()}, **failed},
                roofline_ms=None)
