"""Gradient preprocessing with Keras 3 semantics, for dense tensors and IndexedSlices.

IndexedSlices stay sparse: clipping acts on their rows (for a duplicated index the norm is
that of the rows as given, not of their sum, the one place this can differ from Keras,
which densifies first).
"""
import numpy as np
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


def _dtype(x):
    """The base tf.DType of a tensor or variable (a Keras 3 variable's dtype is a string)."""
    return tf.as_dtype(x.dtype).base_dtype


def as_gradient(grad, var):
    """A NumPy array, Python number or list as a tensor in `var`'s dtype (as TensorFlow
    converts such values for an op); tensors, IndexedSlices and per-replica values as given."""
    if isinstance(grad, (np.ndarray, np.generic, list, tuple, int, float)):
        return tf.convert_to_tensor(grad, dtype=_dtype(var))
    return with_tensor_parts(grad)


def with_tensor_parts(grad):
    """An IndexedSlices whose indices or values are Python sequences or arrays (TensorFlow
    accepts `tf.IndexedSlices(values, (1, 3))`, and Keras' own optimizers such gradients)
    with tensors for both; anything else as given."""
    if isinstance(grad, tf.IndexedSlices) and not (
            isinstance(grad.indices, tf.Tensor) and isinstance(grad.values, tf.Tensor)):
        return tf.IndexedSlices(tf.convert_to_tensor(grad.values),
                                tf.convert_to_tensor(grad.indices), grad.dense_shape)
    return grad


def cast_to_variable(grad, var):
    """`grad` (dense or IndexedSlices) cast to `var`'s dtype, as Keras' own optimizers cast
    gradients (a float64 NumPy gradient for a float32 variable is valid in Keras)."""
    return map_values(grad, lambda g: tf.cast(g, _dtype(var)))


def check_variable(var):
    """ValueError naming a variable the optimizer cannot update (not floating point)."""
    if not _dtype(var).is_floating:
        raise ValueError(f"RMSpropX updates floating-point variables; variable "
                         f"{getattr(var, 'name', '<variable>')} is {_dtype(var).name}")


def check(grad, var, check_dtype=True):
    """ValueError naming the variable when a gradient cannot belong to it (shape, and dtype
    unless `check_dtype=False`: Keras casts gradients); per-replica gradients are checked
    component by component."""
    if isinstance(grad, tf.distribute.DistributedValues):
        for component in grad.values:
            check(component, var, check_dtype)
        return
    name = getattr(var, "name", "<variable>")
    var_dtype = _dtype(var)
    var_shape = tf.TensorShape(var.shape)
    values = _values(grad)
    grad_dtype = _dtype(values) if getattr(values, "dtype", None) is not None else None
    if check_dtype and grad_dtype is not None and grad_dtype != var_dtype:
        raise ValueError(f"Gradient of dtype {grad_dtype.name} does not match variable {name} of "
                         f"dtype {var_dtype.name}")
    if isinstance(grad, tf.IndexedSlices):
        row_shape, var_rows = grad.values.shape[1:], var_shape[1:]
        if var_shape.rank == 0 or not row_shape.is_compatible_with(var_rows):
            raise ValueError(f"Gradient rows of shape {grad.values.shape} do not fit variable "
                             f"{name} of shape {var_shape}")
    else:
        shape = tf.TensorShape(grad.shape if hasattr(grad, "shape") else np.shape(grad))
        if not shape.is_compatible_with(var_shape):  # (a list or number has no .shape)
            raise ValueError(f"Gradient of shape {shape} does not match variable {name} of "
                             f"shape {var_shape}")
