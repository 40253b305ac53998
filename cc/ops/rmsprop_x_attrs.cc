#include "cc/ops/rmsprop_x_attrs.h"

#include <cmath>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace tf_rmsprop_ops {

absl::Status CheckHyperParam(std::string_view name, double x, double tiny) {
  if (!std::isfinite(x)) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, " must be finite, got ", x, ". Nothing was updated."));
  }
  const bool is_rho = name == "rho";
  // A negative value within `tiny` of 0 is a negative subnormal of the compute type, which
  // TensorFlow's CPU kernels read as -0 (denormals-are-zero): it counts as 0 everywhere.
  if (x <= -tiny || (is_rho && x > 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, is_rho ? " must be in [0, 1], got " : " must be >= 0, got ", x,
        ". Nothing was updated."));
  }
  return absl::OkStatus();
}

absl::Status CheckHyperParams(const HyperParams<double>& h, double tiny) {
  TF_RETURN_IF_ERROR(CheckHyperParam("lr", h.lr, tiny));
  TF_RETURN_IF_ERROR(CheckHyperParam("rho", h.rho, tiny));
  TF_RETURN_IF_ERROR(CheckHyperParam("momentum", h.momentum, tiny));
  TF_RETURN_IF_ERROR(CheckHyperParam("epsilon", h.epsilon, tiny));
  return CheckHyperParam("weight_decay", h.weight_decay, tiny);
}

absl::Status VariantFromAttrs(const VariantAttrs& a, Variant* v) {
  v->centered = a.centered;
  v->momentum = a.use_momentum;
  v->nesterov = a.nesterov;
  const std::string& eps = a.epsilon_placement;
  const std::string& lr = a.lr_placement;
  const std::string& wd = a.weight_decay_mode;
  const int num_slots = a.num_slots;
  // The op def restricts the strings to these values.
  v->epsilon_placement =
      eps == "outside_sqrt" ? EpsilonPlacement::kOutsideSqrt : EpsilonPlacement::kInsideSqrt;
  v->lr_placement =
      lr == "outside_momentum" ? LrPlacement::kOutsideMomentum : LrPlacement::kInsideMomentum;
  v->weight_decay_mode = wd == "decoupled" ? WeightDecayMode::kDecoupled
                         : wd == "coupled" ? WeightDecayMode::kCoupled
                                           : WeightDecayMode::kNone;
  if (v->nesterov && !v->momentum) {
    return absl::InvalidArgumentError(
        "nesterov=True requires use_momentum=True (Nesterov is a form of momentum).");
  }
  if (a.state_bits != 32 && a.state_bits != 8) {
    return absl::InvalidArgumentError(absl::StrCat(
        "state_bits must be 32 (slots in var's dtype) or 8 (blockwise 8-bit codes + absmax), got ",
        a.state_bits));
  }
  v->state_bits = a.state_bits;
  const std::vector<std::string> names = SlotNames(*v);
  if (num_slots != static_cast<int>(names.size())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "slots: expected ", names.size(), " slot variable(s) [", absl::StrJoin(names, ", "),
        "] for centered=", v->centered, ", use_momentum=", v->momentum,
        ", state_bits=", v->state_bits, ", got ", num_slots,
        ". A slot for a disabled feature must not be passed, one for an enabled feature must."));
  }
  return absl::OkStatus();
}

std::vector<std::string> SlotNames(const Variant& v) {
  std::vector<std::string> states = {"ms"};
  if (v.momentum) states.push_back("mom");
  if (v.centered) states.push_back("mg");
  if (v.state_bits != 8) return states;
  std::vector<std::string> names;
  for (const std::string& s : states) {
    names.push_back(s + " codes");
    names.push_back(s + " absmax");
  }
  return names;
}

absl::Status RequireFloatState(const Variant& v, std::string_view what) {
  if (v.state_bits == 32) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "state_bits=", v.state_bits, ": ", what, " has no 8-bit-state form yet (the dense and "
      "sparse ops on the CPU have); keep this variable's slots at 32 bits"));
}

absl::Status CheckFlatAttrs(const Variant& variant, int n, int num_slots, int num_slot_inputs,
                            const std::vector<int64_t>& offsets) {
  if (offsets.empty()) {
    if (num_slot_inputs != n * num_slots) {
      return absl::InvalidArgumentError(absl::StrCat("slots must hold ", num_slots,
                                                     " slots for each of the ", n,
                                                     " variables, got ", num_slot_inputs));
    }
    return absl::OkStatus();
  }
  if (variant.state_bits != 32) {
    return absl::InvalidArgumentError(
        "slot_offsets (flat state buffers) take 32-bit state; state_bits=8 takes each "
        "variable's (codes, absmax) slots");
  }
  if (static_cast<int>(offsets.size()) != n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "slot_offsets must hold one offset for each of the ", n, " variables, got ",
        offsets.size()));
  }
  if (num_slot_inputs != num_slots) {
    return absl::InvalidArgumentError(
        absl::StrCat("with slot_offsets, slots must hold one flat buffer per slot kind (",
                     num_slots, "), got ", num_slot_inputs));
  }
  return absl::OkStatus();
}

absl::Status CheckSlotOffset(const Variant& variant, int64_t slot_offset) {
  if (slot_offset < 0) {
    if (slot_offset != -1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "slot_offset must be -1 (per-variable slots) or >= 0 (flat buffers), got ",
          slot_offset));
    }
    return absl::OkStatus();
  }
  if (variant.state_bits != 32) {
    return absl::InvalidArgumentError(
        "slot_offset (flat state buffers) takes 32-bit state; state_bits=8 takes the "
        "variable's (codes, absmax) slots");
  }
  if (slot_offset % kFlatAlignment != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "slot_offset = ", slot_offset, " must be a multiple of ", kFlatAlignment,
        " (the variable's state starts on a block boundary)"));
  }
  return absl::OkStatus();
}

absl::Status CheckFlatRange(int i, int64_t offset, int64_t size, int64_t buffer_size,
                            std::string_view buffer, int64_t* end) {
  if (offset % kFlatAlignment != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "slot_offsets[", i, "] = ", offset, " must be a multiple of ", kFlatAlignment,
        " (each variable's state starts on a block boundary)"));
  }
  if (offset < *end) {
    return absl::InvalidArgumentError(absl::StrCat(
        "slot_offsets[", i, "] = ", offset, " must be >= ", *end,
        (i == 0 ? "" : absl::StrCat(" (where vars[", i - 1, "]'s range ends)")),
        ": the offsets ascend and the variables' ranges are disjoint"));
  }
  if (offset + size > buffer_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "vars[", i, "] (", size, " elements at slot_offsets[", i, "] = ", offset,
        ") does not fit in ", buffer, " of ", buffer_size, " elements"));
  }
  *end = offset + size;
  return absl::OkStatus();
}

}  // namespace tf_rmsprop_ops
