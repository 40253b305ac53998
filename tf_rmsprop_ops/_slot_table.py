"""One kind of optimizer state (ms, mom or mg) for every variable of the `tf.Module`
optimizer, by position, as checkpoints see it, and restores across state formats.

A 32-bit state (a variable of the variable's dtype) is checkpointed as child "<i>", the layout
a Python list gave before (so older checkpoints restore unchanged); an 8-bit state
(`state8.State8`) as child "<i>_8bit" with children `codes` and `absmax`. Because the name says
the format, a restore converts: a 32-bit checkpoint restored into 8-bit state is quantized
(`state8.quantize`, the kernels' bits), an 8-bit checkpoint restored into 32-bit state is
dequantized. This happens whether the optimizer is built before the restore (the objects
below are bound by `_lookup_dependency`) or after it (TensorFlow defers the checkpoint's
values; `append` picks up both formats, the newest restore winning across formats too).
The converters are restore-only: they never appear in what is saved. After a converted
restore `assert_nontrivial_match()` holds; `assert_consumed()` also wants each of the new
format's variables found in the checkpoint, so it reports them.
"""
import tensorflow as tf
from tensorflow.python.trackable import base as trackable
from tensorflow.python.trackable.data_structures import NoDependency
from tensorflow.python.training.saving import saveable_object

from tf_rmsprop_ops import _flat_state, state8

_SUFFIX_8BIT = "_8bit"


def _name(position, eight_bit):
    return f"{position}{_SUFFIX_8BIT}" if eight_bit else str(position)


def _parse(name):
    """(position, eight_bit) of a child name, or (None, None)."""
    eight_bit = name.endswith(_SUFFIX_8BIT)
    digits = name[:-len(_SUFFIX_8BIT)] if eight_bit else name
    return (int(digits), eight_bit) if digits.isdigit() else (None, None)


class SlotTable(tf.Module):
    """The `kind` state of each variable (None where the optimizer keeps none): a list to
    the optimizer (`append`, indexing, iteration), format-aware to checkpoints."""

    def __init__(self, kind):
        super().__init__(name=f"{kind}_slots")
        self._kind = kind
        self._slots = NoDependency([])
        self._variables = NoDependency([])  # the variable each state belongs to
        self._converters = NoDependency({})

    def __len__(self):
        return len(self._slots)

    def __getitem__(self, position):
        return self._slots[position]

    def __iter__(self):
        return iter(self._slots)

    def append(self, slot, variable):
        """Adds the state of the next variable (`slot`: a variable, a State8 or None),
        restoring any checkpoint value waiting for it, in either format."""
        position = len(self._slots)
        self._slots.append(slot)
        self._variables.append(variable)
        if slot is None:
            return
        eight_bit = isinstance(slot, state8.State8)
        self._track_trackable(slot, name=_name(position, eight_bit))  # same format
        # The other format's deferred restores, those newer than what the same format
        # restored (TensorFlow's rule: the newest restore wins; a converter has its own
        # update uid, so the comparison with the slot's is made here).
        restored = slot._update_uid  # -1, or the uid of the restore just applied
        waiting = [p for p in self._deferred_dependencies.pop(_name(position, not eight_bit), ())
                   if p.checkpoint.restore_uid > restored]
        if waiting:
            converter = self._converter(position)
            for checkpoint_position in sorted(waiting, key=lambda p: p.checkpoint.restore_uid,
                                              reverse=True):  # the newest first; older skip
                checkpoint_position.restore(converter)

    def _trackable_children(self, save_type=trackable.SaveType.CHECKPOINT, **kwargs):
        children = super()._trackable_children(save_type, **kwargs)
        if save_type != trackable.SaveType.SAVEDMODEL:
            return children
        # A SavedModel: flat state as its buffers (what the exported functions capture),
        # not as per-variable views a loaded model could not rebuild.
        out, buffers = {}, []
        for name, child in children.items():
            if not _flat_state.is_flat(child):
                out[name] = child
            elif not any(child.buffer is b for b in buffers):
                out[f"flat_buffer_{len(buffers)}"] = child.buffer
                buffers.append(child.buffer)
        return out

    def _lookup_dependency(self, name, cached_dependencies=None):
        found = super()._lookup_dependency(name, cached_dependencies)
        if found is not None:
            return found
        position, eight_bit = _parse(name)
        if position is None or position >= len(self._slots) or self._slots[position] is None:
            return None  # TensorFlow defers it: `append` restores it
        if isinstance(self._slots[position], state8.State8) == eight_bit:
            return None
        return self._converter(position)

    def _converter(self, position):
        if position not in self._converters:
            slot, variable = self._slots[position], self._variables[position]
            signed = state8.SIGNED[self._kind]
            if isinstance(slot, state8.State8):
                converter = _Float32IntoState8(slot, signed, variable.shape, variable.dtype,
                                               slot.codes.device)
            else:
                converter = _State8IntoFloat32(slot, signed)
            self._converters[position] = converter
        return self._converters[position]


class _Float32IntoState8(trackable.Trackable):
    """Stands for a checkpoint's 32-bit state restored into a State8: quantizes it."""

    def __init__(self, state, signed, shape, dtype, device):
        self._state, self._signed = state, signed
        self._shape, self._dtype = tf.TensorShape(shape), tf.as_dtype(dtype).base_dtype
        self._device = device

    def _serialize_to_tensors(self):
        return {trackable.VARIABLE_VALUE_KEY: _restore_only_spec(self._dtype, self._device)}

    def _restore_from_tensors(self, restored_tensors):
        value = restored_tensors[trackable.VARIABLE_VALUE_KEY]
        if not value.shape.is_compatible_with(self._shape):
            raise ValueError(f"Restoring 32-bit state of shape {value.shape} into 8-bit state "
                             f"of a variable of shape {self._shape}")
        codes, absmax = state8.quantize(tf.ensure_shape(value, self._shape), self._signed)
        return tf.group(self._state.codes.assign(codes), self._state.absmax.assign(absmax))


class _State8IntoFloat32(trackable.Trackable):
    """Stands for a checkpoint's 8-bit state (its `codes` and `absmax` children) restored
    into a 32-bit state variable: dequantizes it once both have arrived."""

    def __init__(self, variable, signed):
        self._variable, self._signed = variable, signed
        shape = tf.TensorShape(variable.shape)
        self._parts = {"codes": _Part(self, "codes", shape, tf.uint8, variable.device),
                       "absmax": _Part(self, "absmax", state8.absmax_shape(shape),
                                       tf.float32, variable.device)}
        self._received = {}

    def _lookup_dependency(self, name, cached_dependencies=None):
        return self._parts.get(name)

    def _receive(self, name, tensor):
        self._received[name] = tensor
        if len(self._received) < 2:
            return None
        received, self._received = self._received, {}
        values = state8.dequantize_tensors(received["codes"], received["absmax"], self._signed,
                                           self._variable.shape)
        return self._variable.assign(tf.cast(values, self._variable.dtype))


class _Part(trackable.Trackable):
    """One variable of a checkpoint's 8-bit state, handed to its `_State8IntoFloat32`."""

    def __init__(self, owner, name, shape, dtype, device):
        self._owner, self._name = owner, name
        self._shape, self._dtype, self._device = tf.TensorShape(shape), dtype, device

    def _serialize_to_tensors(self):
        return {trackable.VARIABLE_VALUE_KEY: _restore_only_spec(self._dtype, self._device)}

    def _restore_from_tensors(self, restored_tensors):
        value = restored_tensors[trackable.VARIABLE_VALUE_KEY]
        if not value.shape.is_compatible_with(self._shape):
            raise ValueError(f"Restoring 8-bit state {self._name} of shape {value.shape}: want "
                             f"{self._shape}")
        return self._owner._receive(self._name, tf.ensure_shape(value, self._shape))


def _restore_only_spec(dtype, device):
    """What a converter declares for a restore: the saved tensor's dtype and device, no tensor
    (a restore never asks for one; a save never sees a converter)."""
    def never():
        raise AssertionError("a checkpoint converter is restore-only")
    return saveable_object.SaveSpec(never, "", "", dtype=dtype, device=device)
