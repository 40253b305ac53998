"""`bench --keras-fit`: whole `model.fit` steps with our Keras optimizer against Keras 3's
RMSprop (jit off and on), on the two models where Keras users feel the optimizer:

* embedding: `Embedding(1M, 64)` looked up by a batch of 10k ids, then `Dense(1)`. Keras'
  RMSprop densifies the table's gradient (every row's velocity each step); ours updates the
  10k looked-up rows with `SparseApplyRMSpropX`.
* mlp: 512 -> 2048 -> 2048 -> 10 (5.3M parameters), batch 256: dense updates only.
* resnet50: keras.applications.ResNet50(weights=None) on 32 x 32 x 3 inputs, 10 classes
  (23.6M parameters, 214 trainable tensors), batch 4: a model of ResNet-50's variable set at
  a batch small enough that the optimizer is a visible part of the step (`--quick`: a
  two-block residual CNN).

The time per step is the wall time of `model.fit(..., steps_per_epoch=S)` divided by S,
after a warm-up fit (tracing, compilation); the competitors are timed round-robin. `sgd` /
`sgd_jit` (Keras' plain SGD, no momentum) give the rest of the step: the optimizer's share
of a step is its step minus SGD's with the same jit setting (`optimizer_share`; SGD's own
update, a read of the gradient and a read-modify-write of the variable, stays in the
baseline). Not for the embedding model: Keras' SGD densifies the table's gradient there.
"""
import time

import numpy as np

MODELS = {
    # name: (full-size parameters, quick parameters)
    "embedding": (dict(rows=1_000_000, dim=64, batch=10_000), dict(rows=2_000, dim=8, batch=64)),
    "mlp": (dict(inputs=512, hidden=2048, batch=256), dict(inputs=16, hidden=32, batch=16)),
    "resnet50": (dict(size=32, batch=4, full=True), dict(size=8, batch=2, full=False)),
}
COMPETITORS = ("rmspropx", "rmspropx_jit", "keras", "keras_jit", "sgd", "sgd_jit")
# The optimizers whose share of the step is reported, and the SGD baseline of each.
SHARES = {"rmspropx": "sgd", "keras": "sgd", "rmspropx_jit": "sgd_jit", "keras_jit": "sgd_jit"}


def optimizer_share(ms):
    """{optimizer: its step minus SGD's step with the same jit setting} (ms), for those
    that ran with their baseline."""
    return {name: ms[name] - ms[base] for name, base in SHARES.items()
            if ms.get(name) is not None and ms.get(base) is not None}


def _resnet(p):
    import keras
    if p["full"]:
        return keras.applications.ResNet50(weights=None, input_shape=(p["size"], p["size"], 3),
                                           classes=10)
    inputs = keras.Input((p["size"], p["size"], 3))
    h = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    for _ in range(2):
        r = keras.layers.BatchNormalization()(keras.layers.Conv2D(8, 3, padding="same")(h))
        h = keras.layers.ReLU()(keras.layers.Add()([h, r]))
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h))


def _build(name, p, rng):
    import keras
    keras.utils.set_random_seed(0)
    if name == "embedding":
        ids = keras.Input((1,), dtype="int32")
        x = keras.layers.Flatten()(keras.layers.Embedding(p["rows"], p["dim"])(ids))
        model = keras.Model(ids, keras.layers.Dense(1)(x))
        data = (rng.integers(0, p["rows"], size=(p["batch"], 1)).astype(np.int32),
                rng.normal(size=(p["batch"], 1)).astype(np.float32))
    elif name == "resnet50":
        model = _resnet(p)
        data = (rng.normal(size=(p["batch"], p["size"], p["size"], 3)).astype(np.float32),
                rng.normal(size=(p["batch"], 10)).astype(np.float32))
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
        if name.startswith("sgd"):
            optimizer = keras.optimizers.SGD(learning_rate=1e-3)
        else:
            cls = tfx_keras.RMSpropX if name.startswith("rmspropx") else keras.optimizers.RMSprop
            optimizer = cls(learning_rate=1e-3, momentum=0.9)
        model.compile(optimizer=optimizer, loss="mse", jit_compile=name.endswith("_jit"))
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
    ms = {**{name: float(np.median(s)) for name, s in samples.items()}, **failed}
    # Keras' SGD densifies an Embedding's gradient (a pass over the whole table), so it is
    # no baseline for the embedding model's step: no shares there.
    share = {} if model_name == "embedding" else optimizer_share(ms)
    return dict(kind="keras_fit", model=model_name, params=params, batch=p["batch"],
                tensors=len(model.trainable_weights), ms=ms, roofline_ms=None,
                optimizer_share_ms=share)
