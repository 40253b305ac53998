"""8-bit optimizer state as the ops take it (docs/design.md 1.7; the format is
tf_rmsprop_ops.reference's quantize_blockwise and cc/state8.h).

A state tensor (ms, mom, mg) is a `State8`: its uint8 codes (the variable's shape) and its
float32 absmax, one per block of 256 elements of a row ([rows, ceil(row / 256)]: a variable
of rank >= 2 has shape[0] rows of prod(shape[1:]) elements, rank 0 and 1 one row). Passing
State8 slots to `apply_rmsprop_x` runs the op with `state_bits=8`: the state is dequantized,
updated in float32, and requantized in the same pass; the variable moves with the
unquantized new state. ms takes the unsigned dynamic map, mom and mg the signed one.
"""
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tf_rmsprop_ops import reference

BLOCK_SIZE = reference.BLOCK_SIZE
SIGNED = reference.STATE_SIGNED  # {"ms": False, "mom": True, "mg": True}


class State8(NamedTuple):
    """One 8-bit state: `codes` (uint8, the variable's shape) and `absmax` (float32, [rows,
    blocks per row]), resource variables or their handles."""
    codes: object
    absmax: object


def absmax_shape(shape):
    """The absmax shape of a variable of `shape` (fully defined)."""
    return reference.absmax_shape(tuple(tf.TensorShape(shape).as_list()))


def zeros(shape, name):
    """A State8 of new variables holding the all-zero state (every code the map's zero, absmax
    0), for a variable of `shape`; `name` prefixes the two variables' names."""
    shape = tuple(tf.TensorShape(shape).as_list())
    # The zero code is the same for both maps' purposes only by value: an absmax of 0 makes
    # every code dequantize to 0, and the kernels store the map's zero code there.
    codes = tf.Variable(tf.zeros(shape, tf.uint8), trainable=False, name=f"{name}_codes")
    absmax = tf.Variable(tf.zeros(absmax_shape(shape), tf.float32), trainable=False,
                         name=f"{name}_absmax")
    return State8(codes, absmax)


def from_values(values, signed, name):
    """A State8 of new variables holding float32(values) quantized (the reference's
    quantizer: nearest map entry, the same bits as the kernels')."""
    codes, absmax = reference.quantize_blockwise(np.asarray(values), signed)
    return State8(tf.Variable(codes, trainable=False, name=f"{name}_codes"),
                  tf.Variable(absmax, trainable=False, name=f"{name}_absmax"))


def dequantize(state, signed, shape=None):
    """The float32 values of a State8 (map[code] * absmax, one float32 product each), as a
    tensor of the codes' shape."""
    codes = tf.convert_to_tensor(state.codes.read_value() if hasattr(state.codes, "read_value")
                                 else state.codes)
    absmax = tf.convert_to_tensor(state.absmax.read_value()
                                  if hasattr(state.absmax, "read_value") else state.absmax)
    shape = codes.shape if shape is None else tf.TensorShape(shape)
    dims = shape.as_list()
    rows = dims[0] if len(dims) >= 2 else 1
    row = int(np.prod(dims[1:] if len(dims) >= 2 else dims, dtype=np.int64))
    table = tf.constant(reference.dynamic_map(signed))
    values = tf.gather(table, tf.cast(tf.reshape(codes, [rows, row]), tf.int32))
    scale = tf.repeat(absmax, BLOCK_SIZE, axis=1)[:, :row]
    return tf.reshape(values * scale, dims)
