"""8-bit optimizer state as the ops take it (docs/design.md 1.7; the format is
tf_rmsprop_ops.reference's quantize_blockwise and cc/state8.h).

A state tensor (ms, mom, mg) is a `State8`: its uint8 codes (the variable's shape) and its
float32 absmax, one per block of 256 elements of a row ([rows, ceil(row / 256)]: a variable
of rank >= 2 has shape[0] rows of prod(shape[1:]) elements, rank 0 and 1 one row). Passing
State8 slots to `apply_rmsprop_x` runs the op with `state_bits=8`: the state is dequantized,
updated in float32, and requantized in the same pass; the variable moves with the
unquantized new state. ms takes the unsigned dynamic map, mom and mg the signed one.
"""
import numpy as np
import tensorflow as tf

from tf_rmsprop_ops import reference

BLOCK_SIZE = reference.BLOCK_SIZE
MIN_8BIT_SIZE = reference.MIN_8BIT_SIZE
SIGNED = reference.STATE_SIGNED  # {"ms": False, "mom": True, "mg": True}


class State8(tf.Module):
    """One 8-bit state: `codes` (uint8, the variable's shape) and `absmax` (float32, [rows,
    blocks per row]), resource variables (or their handles). A `tf.Module`, so that a
    checkpoint tracks both variables (as `codes` and `absmax`)."""

    def __init__(self, codes, absmax, name=None):
        super().__init__(name=name)
        self.codes = codes
        self.absmax = absmax

    def __iter__(self):
        return iter((self.codes, self.absmax))


def absmax_shape(shape):
    """The absmax shape of a variable of `shape` (fully defined)."""
    return reference.absmax_shape(tuple(tf.TensorShape(shape).as_list()))


def zeros(shape, signed, name, variable=tf.Variable):
    """A State8 of new variables holding the all-zero state for a variable of `shape`: every
    code the map's zero, every absmax 0 (what quantizing zeros gives); `name` prefixes the
    two variables' names; `variable` makes them (tf.Variable, or the strategy-aware maker
    of `_distribute.state8_variable_maker`)."""
    return full(shape, 0.0, signed, name, variable)


def constant(value, signed):
    """(code, absmax) of a state holding `value` everywhere (a constant array's blocks)."""
    codes, absmax = reference.quantize_blockwise(np.array([value], np.float32), signed)
    return int(codes[0]), float(absmax[0, 0])


def full(shape, value, signed, name, variable=tf.Variable):
    """A State8 of new variables holding `value` everywhere (as a constant array quantizes:
    absmax |value| in every block, every code the one of value / |value|; zero: the zero
    code and absmax 0)."""
    shape = tuple(tf.TensorShape(shape).as_list())
    code, absmax = reference.quantize_blockwise(np.array([value], np.float32), signed)
    # Callable initial values: a maker may create them where they live (DTensor: sharded).
    return State8(variable(lambda: tf.fill(shape, tf.constant(code[0], tf.uint8)),
                           trainable=False, name=f"{name}_codes"),
                  variable(lambda: tf.fill(absmax_shape(shape), tf.constant(absmax[0, 0])),
                           trainable=False, name=f"{name}_absmax"))


def from_values(values, signed, name):
    """A State8 of new variables holding float32(values) quantized (the reference's
    quantizer: nearest map entry, the same bits as the kernels')."""
    codes, absmax = reference.quantize_blockwise(np.asarray(values), signed)
    return State8(tf.Variable(codes, trainable=False, name=f"{name}_codes"),
                  tf.Variable(absmax, trainable=False, name=f"{name}_absmax"))


def dequantize(state, signed, shape=None):
    """The float32 values of a State8 (map[code] * absmax, one float32 product each), as a
    tensor of the codes' shape."""
    def read(v):
        return tf.convert_to_tensor(v.read_value() if hasattr(v, "read_value") else v)
    return dequantize_tensors(read(state.codes), read(state.absmax), signed, shape)


def dequantize_tensors(codes, absmax, signed, shape=None):
    """`dequantize` of codes and absmax tensors (graph or eager)."""
    shape = codes.shape if shape is None else tf.TensorShape(shape)
    dims = shape.as_list()
    rows, row = reference._rows_of(dims)
    table = _on_mesh_of(tf.constant(reference.dynamic_map(signed)), codes)
    values = tf.gather(table, tf.cast(tf.reshape(codes, [rows, row]), tf.int32))
    scale = tf.repeat(absmax, BLOCK_SIZE, axis=1)[:, :row]
    return tf.reshape(values * scale, dims)


def _on_mesh_of(constant, x):
    """`constant` replicated on x's DTensor mesh when x is an eager DTensor (DTensor
    broadcasts only scalars by itself), else as it is."""
    if not tf.executing_eagerly():
        return constant
    from tensorflow.experimental import dtensor
    if not dtensor.is_dtensor(x):
        return constant
    from tf_rmsprop_ops import _dtensor
    return _dtensor.on_mesh_of(constant, x)


def quantize(values, signed):
    """(codes, absmax) tensors of float32(values): the reference's quantizer in TensorFlow
    ops, bit for bit (blocks of a row, absmax NaN when the block holds a NaN, the nearest map
    entry by the float32 midpoints with ties up, the zero code for NaN and all-zero blocks).
    Used where a checkpoint's 32-bit state enters 8-bit state."""
    x = tf.cast(values, tf.float32)
    dims = x.shape.as_list()
    rows, row = reference._rows_of(dims)
    nblocks = -(-row // BLOCK_SIZE)
    padded = tf.pad(tf.reshape(x, [rows, row]), [[0, 0], [0, nblocks * BLOCK_SIZE - row]])
    blocks = tf.reshape(padded, [rows, nblocks, BLOCK_SIZE])
    has_nan = tf.reduce_any(tf.math.is_nan(blocks), axis=2)
    absmax = tf.where(has_nan, tf.constant(np.nan, tf.float32),
                      tf.reduce_max(tf.abs(blocks), axis=2))
    norm = blocks / absmax[:, :, None]
    table = reference.dynamic_map(signed)
    mids = _on_mesh_of(tf.constant((table[:-1] + table[1:]) / np.float32(2)), x)
    # The number of midpoints <= norm by binary lifting (8 gathers of the 255 midpoints;
    # tf.searchsorted refuses inputs of 2^31 elements, tables this state is made for).
    codes = tf.zeros(tf.shape(norm), tf.int32)
    for step in (128, 64, 32, 16, 8, 4, 2, 1):
        candidate = codes + step
        codes = tf.where(norm >= tf.gather(mids, candidate - 1), candidate, codes)
    zero = int(np.flatnonzero(table == 0)[0])
    codes = tf.where(tf.math.is_nan(norm) | (absmax == 0)[:, :, None], zero, codes)
    codes = tf.reshape(codes, [rows, nblocks * BLOCK_SIZE])[:, :row]
    return tf.reshape(tf.cast(codes, tf.uint8), dims), absmax


class Selection:
    """Which variables get 8-bit state, for both optimizers: `state_bits=8`, the variable a
    half, bfloat16 or float32 one of at least `min_8bit_size` elements (its full, logical
    shape), not excluded (`exclude`: a list of variables, regular expressions over names,
    a predicate)."""

    def __init__(self, state_bits=32, min_8bit_size=MIN_8BIT_SIZE):
        if state_bits not in (8, 32):
            raise ValueError("Argument `state_bits` must be 32 (slots in the variable's dtype) "
                             f"or 8 (blockwise 8-bit); received {state_bits!r}.")
        if not isinstance(min_8bit_size, int) or isinstance(min_8bit_size, bool) or (
                min_8bit_size < 0):
            raise ValueError("Argument `min_8bit_size` must be an integer >= 0; received "
                             f"{min_8bit_size!r}.")
        self.state_bits, self.min_8bit_size = int(state_bits), int(min_8bit_size)
        self.keys, self.pattern, self.predicate = set(), None, None

    def exclude(self, keys=(), var_names=None, predicate=None):
        """Replaces the exclusions (as `exclude_from_weight_decay` does)."""
        import re
        if isinstance(var_names, str):
            var_names = [var_names]  # one pattern, not its characters
        self.keys = set(keys)
        self.pattern = re.compile("|".join(set(var_names))) if var_names else None
        self.predicate = predicate

    def bits_for(self, var, key, dtensor=False, device=""):
        """8 or 32 for `var` (`key`: its stable key). The size is the logical variable's: a
        shard of a ShardedVariable decides by the whole table (for rank >= 2 its rows are
        their own blocks, so a sharded table's 8-bit state is the unsharded one's, cut by
        rows; a rank-1 shard is one row, whose blocks start at the shard), a replica of a
        mirrored variable by the variable. A DTensor variable (`dtensor`) whose layout cuts
        blocks between devices is refused (`_dtensor.state8_absmax_layout`: ValueError). A
        variable with a copy on a GPU (`device`: every copy's device) takes 8-bit state when
        this build has GPU kernels (`_library.GPU_KERNELS` ON) and is refused otherwise:
        slots live on their variable's devices."""
        if self.state_bits != 8:
            return 32
        dtype = tf.as_dtype(var.dtype).base_dtype
        shape = tf.TensorShape(logical_shape(var))
        if dtype not in (tf.float16, tf.bfloat16, tf.float32):
            return 32
        if not shape.is_fully_defined() or shape.num_elements() < self.min_8bit_size:
            return 32
        if key in self.keys or (self.pattern is not None and self.pattern.search(var.name)):
            return 32
        if self.predicate is not None and self.predicate(var):
            return 32
        if "GPU" in (device or "").upper():
            from tf_rmsprop_ops import _library
            if not _library.GPU_KERNELS.startswith("ON"):
                raise ValueError(
                    f"state_bits=8: {var.name} is on {device}, and this build of "
                    f"tf_rmsprop_ops has no GPU kernels (GPU_KERNELS: {_library.GPU_KERNELS}); "
                    "its slots would live on the GPU too: create the variable on the CPU, use "
                    "state_bits=32, exclude this variable from 8-bit state, or install the "
                    "package built against the full `tensorflow` wheel")
        if dtensor:
            from tf_rmsprop_ops import _dtensor
            _dtensor.state8_absmax_layout(var)  # ValueError for layouts that cut blocks
        return 8


def logical_shape(var):
    """The shape of the variable `var` is part of: a ShardedVariable's for one of its
    shards (TensorFlow links each shard to its container), else var's."""
    container = getattr(var, "_sharded_container", None)
    whole = container() if callable(container) else None
    return whole.shape if whole is not None else var.shape
