"""Flat state (RMSpropX's default with `multi_tensor`; `flat_state=False` turns it off): a
group's `ms` (and `mom`, `mg`) in one flat buffer per slot kind, so that a step's ApplyRMSpropXMulti takes each variable and gradient
once and each buffer once: half the inputs of a call over many variables (TensorFlow's call
costs microseconds per input; BENCHMARKS.md).

A group is the variables of one `build` with equal dtype and device whose state can live in
a buffer: 32-bit state, no tf.distribute strategy, no DTensor, no shard of a
ShardedVariable. Each variable's range starts on a 256-element boundary
(`ops.flat_offsets`, the 8-bit state's block layout); an IndexedSlices gradient takes
SparseApplyRMSpropX with `slot_offset` on that range.

A variable's state is a `FlatSlot`: its range of a buffer, variable-like (`value()`,
`numpy()`, `assign()`, `shape`, `dtype`, convertible to a tensor) and checkpointed per
variable under the key a per-variable slot has, so checkpoints restore between flat and
per-variable optimizers (and into another grouping) both ways. The buffers themselves are
not in checkpoints. A SavedModel holds the buffers instead of the FlatSlots (its functions
capture the buffers; `_slot_table.SlotTable._trackable_children`).
"""
import tensorflow as tf
from tensorflow.python.trackable import base as trackable

from tf_rmsprop_ops import ops


class FlatSlot(trackable.Trackable):
    """One variable's state in a flat buffer: elements [offset, offset + size) of `buffer`,
    in the variable's shape (row-major)."""

    def __init__(self, buffer, offset, shape, name):
        self._maybe_initialize_trackable()
        self._buffer, self._offset = buffer, int(offset)
        self._shape = tf.TensorShape(shape)
        self._size = int(self._shape.num_elements())
        self._name = name

    buffer = property(lambda self: self._buffer)
    offset = property(lambda self: self._offset)
    shape = property(lambda self: self._shape)
    dtype = property(lambda self: self._buffer.dtype.base_dtype)
    device = property(lambda self: self._buffer.device)
    name = property(lambda self: self._name)

    def value(self):
        """The variable's state, a tensor of its shape."""
        return tf.reshape(tf.slice(self._buffer, [self._offset], [self._size]), self._shape)

    read_value = value

    def numpy(self):
        return self.value().numpy()

    def __array__(self, dtype=None):
        array = self.numpy()
        return array if dtype is None else array.astype(dtype)

    def assign(self, value):
        """Writes `value` (the variable's shape) into the variable's range of the buffer."""
        value = tf.convert_to_tensor(value, dtype=self.dtype)
        if not value.shape.is_compatible_with(self._shape):
            raise ValueError(f"Cannot assign a value of shape {value.shape} to {self._name} of "
                             f"shape {self._shape}")
        flat = tf.reshape(value, [self._size])
        return self._buffer[self._offset:self._offset + self._size].assign(flat)

    def __repr__(self):
        return (f"<FlatSlot '{self._name}' shape={self._shape} dtype={self.dtype.name} "
                f"buffer={self._buffer.name} offset={self._offset}>")

    # ---- checkpoints: the per-variable key and value -----------------------------------
    def _serialize_to_tensors(self):
        return {trackable.VARIABLE_VALUE_KEY: self.value()}

    def _restore_from_tensors(self, restored_tensors):
        value = restored_tensors[trackable.VARIABLE_VALUE_KEY]
        if not value.shape.is_compatible_with(self._shape):
            raise ValueError(f"Restoring {self._name}: the checkpoint holds shape "
                             f"{value.shape}, the variable's state has {self._shape}")
        return self.assign(tf.ensure_shape(value, self._shape))


def _as_tensor(slot, dtype=None, name=None, as_ref=False):
    del name, as_ref
    value = slot.value()
    if dtype is not None and not tf.as_dtype(dtype).is_compatible_with(value.dtype):
        raise ValueError(f"{slot.name} has dtype {value.dtype.name}, requested "
                         f"{tf.as_dtype(dtype).name}")
    return value


tf.register_tensor_conversion_function(FlatSlot, _as_tensor)


def build_groups(variables, initial, name_of, device_scope):
    """FlatSlots for `variables` (those the optimizer chose to keep flat), grouped by dtype
    and device: {id(variable): {kind: FlatSlot}}. `initial`: kind -> the buffer's starting
    value, for the enabled kinds only; `name_of(variable, kind)`: the slot's name;
    `device_scope(variable)`: the creation scope of the group's buffers."""
    groups = {}
    for var in variables:
        key = (tf.as_dtype(var.dtype).base_dtype, getattr(var, "device", "") or "")
        groups.setdefault(key, []).append(var)
    slots = {}
    for (dtype, _), members in groups.items():
        offsets, total = ops.flat_offsets([int(v.shape.num_elements()) for v in members])
        with device_scope(members[0]):
            buffers = {kind: tf.Variable(tf.fill([total], ops.as_scalar(value, dtype)),
                                         name=f"flat_{kind}", trainable=False)
                       for kind, value in initial.items()}
        for var, offset in zip(members, offsets):
            slots[id(var)] = {kind: FlatSlot(buffer, offset, var.shape, name_of(var, kind))
                              for kind, buffer in buffers.items()}
    return slots


def is_flat(slot):
    return isinstance(slot, FlatSlot)
