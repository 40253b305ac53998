"""The variable shapes of the models `bench --models` (and the GPU benchmark, tests/gpu/)
update. Importable without TensorFlow, except resnet50 (built with Keras, nothing
downloaded)."""

MODELS = ("mlp", "resnet50", "bert_base", "single")


def shapes_of(model):
    if model == "mlp":
        return [s for _ in range(40) for s in ((256, 256), (256,))]
    if model == "single":
        return [(4 * 2**20,)]
    if model == "bert_base":
        h, ff, vocab = 768, 3072, 30522
        shapes = [(vocab, h), (512, h), (2, h), (h,), (h,)]
        for _ in range(12):
            shapes += [(h, h), (h,)] * 4 + [(h,), (h,), (h, ff), (ff,), (ff, h), (h,), (h,), (h,)]
        return shapes + [(h, h), (h,)]
    if model == "resnet50":
        import keras
        net = keras.applications.ResNet50(weights=None)
        return [tuple(v.shape) for v in net.trainable_weights]
    raise ValueError(model)
