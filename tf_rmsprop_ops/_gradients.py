"""Gradient preprocessing with Keras 3 semantics, for dense tensors and IndexedSlices.

IndexedSlices stay sparse: clipping acts on their rows (for a duplicated index the norm is
that of the rows as given, not of their sum, the one place this can differ from Keras,
which densifies first).
"""
import tensorflow as tf


def map_values(grad, fn):
    """fn applied to a dense gradient, or to the rows of an IndexedSlices."""
    if isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(fn(grad.values), grad.indices, grad.dense_shape)
    return fn(grad)


def as_function_argument(grad):
    """grad as a tf.function argument (an IndexedSlices' dense_shape may be a TensorShape,
    which tf.function cannot take; the ops do not need it)."""
    if isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(grad.values, grad.indices)
    return grad


def _values(grad):
    return grad.values if isinstance(grad, tf.IndexedSlices) else grad


def clip_by_norm(grad, clipnorm):
    """g * clipnorm / max(||g||, clipnorm), NaN-safe as Keras (a zero gradient stays 0)."""
    def clip(g):
        l2sum = tf.reduce_sum(tf.square(g))
        positive = l2sum > 0
        l2norm = tf.where(positive, tf.sqrt(tf.where(positive, l2sum, tf.ones_like(l2sum))),
                          l2sum)
        clipnorm_t = tf.cast(clipnorm, g.dtype)
        return g * clipnorm_t / tf.maximum(l2norm, clipnorm_t)
    return map_values(grad, clip)


def clip_by_global_norm(grads, clipnorm):
    """Keras' global clipping: every gradient scaled by min(1, clipnorm / global_norm);
    a non-finite global norm makes every gradient NaN (as Keras)."""
    norm = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(tf.cast(_values(g), tf.float32)))
                             for g in grads]))
    scale = clipnorm * tf.minimum(1.0 / norm, 1.0 / clipnorm)
    scale = scale + (norm - norm)
    return [map_values(g, lambda v: v * tf.cast(scale, v.dtype)) for g in grads]


def clip_by_value(grad, clipvalue):
    return map_values(grad, lambda g: tf.clip_by_value(g, -clipvalue, clipvalue))


def check_shape(grad, var):
    """ValueError naming the variable when a gradient cannot belong to it."""
    name = getattr(var, "name", "<variable>")
    if isinstance(grad, tf.IndexedSlices):
        row_shape, var_rows = grad.values.shape[1:], var.shape[1:]
        if var.shape.rank == 0 or not row_shape.is_compatible_with(var_rows):
            raise ValueError(f"Gradient rows of shape {grad.values.shape} do not fit variable "
                             f"{name} of shape {var.shape}")
    elif not grad.shape.is_compatible_with(var.shape):
        raise ValueError(f"Gradient of shape {grad.shape} does not match variable {name} of "
                         f"shape {var.shape}")
