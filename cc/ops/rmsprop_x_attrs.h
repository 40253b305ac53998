// Reads the structural attrs of ApplyRMSpropX / SparseApplyRMSpropX into a Variant.
// Shared by the shape functions, the CPU kernels and the XLA lowering.
#ifndef TF_RMSPROP_OPS_CC_OPS_RMSPROP_X_ATTRS_H_
#define TF_RMSPROP_OPS_CC_OPS_RMSPROP_X_ATTRS_H_

#include <array>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "cc/rmsprop_x_update.h"
#include "absl/status/status.h"
#include "tensorflow/core/platform/errors.h"

namespace tf_rmsprop_ops {

// The attrs as the op def spells them.
struct VariantAttrs {
  bool centered, use_momentum, nesterov;
  std::string epsilon_placement, lr_placement, weight_decay_mode;
  int num_slots;
  int state_bits = 32;
};

// Checks the attrs and converts them; `num_slots` must match the enabled features
// (ms, then mom when use_momentum, then mg when centered). InvalidArgument otherwise.
absl::Status VariantFromAttrs(const VariantAttrs& attrs, Variant* variant);

// Reads the attrs from an OpKernelConstruction or a shape InferenceContext.
template <typename AttrSource>
absl::Status ParseVariant(AttrSource* src, Variant* variant) {
  VariantAttrs a;
  TF_RETURN_IF_ERROR(src->GetAttr("centered", &a.centered));
  TF_RETURN_IF_ERROR(src->GetAttr("use_momentum", &a.use_momentum));
  TF_RETURN_IF_ERROR(src->GetAttr("nesterov", &a.nesterov));
  TF_RETURN_IF_ERROR(src->GetAttr("epsilon_placement", &a.epsilon_placement));
  TF_RETURN_IF_ERROR(src->GetAttr("lr_placement", &a.lr_placement));
  TF_RETURN_IF_ERROR(src->GetAttr("weight_decay_mode", &a.weight_decay_mode));
  TF_RETURN_IF_ERROR(src->GetAttr("num_slots", &a.num_slots));
  TF_RETURN_IF_ERROR(src->GetAttr("state_bits", &a.state_bits));
  return VariantFromAttrs(a, variant);
}

// InvalidArgument unless the slots are 32-bit: for the kernels and lowerings that have no
// 8-bit-state form yet (`what` names them in the message).
absl::Status RequireFloatState(const Variant& variant, std::string_view what);

// Whether slot input j (in SlotNames order) is an 8-bit state's absmax (float32, shape
// [rows, blocks per row]) rather than a tensor of var's shape.
inline bool IsAbsmaxSlot(const Variant& variant, int j) {
  return variant.state_bits == 8 && j % 2 == 1;
}

// Checks the values of the five hyperparameters (as the op's dtype holds them): each must
// be finite; lr, momentum, epsilon and weight_decay >= 0; rho in [0, 1]. InvalidArgument
// naming the first bad one otherwise. `tiny` is the smallest normal number of the compute
// type (float32 for half types): a value in (-tiny, 0) counts as 0, as TensorFlow's CPU
// kernels read it (denormals-are-zero), so every device agrees. The CPU and GPU kernels run it before anything is
// written; the XLA lowerings run it on compile-time constants (docs/design.md, section
// "Hyperparameter values").
absl::Status CheckHyperParams(const HyperParams<double>& h, double tiny);
// The same for one of them, by name ("lr", "rho", "momentum", "epsilon", "weight_decay").
absl::Status CheckHyperParam(std::string_view name, double x, double tiny);

// The slot names in input order for this variant: {"ms"[, "mom"][, "mg"]}; with 8-bit
// state each is two inputs, {"ms codes", "ms absmax"[, "mom codes", "mom absmax"]...}.
std::vector<std::string> SlotNames(const Variant& variant);

// Flat input positions, given the number of slot inputs.
struct InputIndex {
  explicit InputIndex(int num_slots) : num_slots(num_slots) {}
  int num_slots;
  int var() const { return 0; }
  int slot(int i) const { return 1 + i; }
  int lr() const { return 1 + num_slots; }
  int rho() const { return 2 + num_slots; }
  int momentum() const { return 3 + num_slots; }
  int epsilon() const { return 4 + num_slots; }
  int weight_decay() const { return 5 + num_slots; }
  int grad() const { return 6 + num_slots; }
  int indices() const { return 7 + num_slots; }  // sparse op only
  // The scalar hyperparameter inputs in order, with the names errors use.
  std::array<std::pair<int, const char*>, 5> scalars() const {
    return {{{lr(), "lr"}, {rho(), "rho"}, {momentum(), "momentum"}, {epsilon(), "epsilon"},
             {weight_decay(), "weight_decay"}}};
  }
};

// ApplyRMSpropXMulti's flat state (`slot_offsets`): the attrs agree (32-bit state, one
// offset per variable, one buffer per slot kind), checked when a kernel or lowering is made.
absl::Status CheckFlatAttrs(const Variant& variant, int n, int num_slots, int num_slot_inputs,
                            const std::vector<int64_t>& offsets);
// Variable i's range of the buffers: starts on a kFlatAlignment boundary, at or after `*end`
// (where the previous range ends; updated), and ends inside a buffer of `buffer_size`
// elements named `buffer`. The kernels and the lowering check every variable with it.
inline constexpr int64_t kFlatAlignment = 256;
// SparseApplyRMSpropX's `slot_offset`: -1 (per-variable slots) or, with 32-bit state, a
// multiple of kFlatAlignment.
absl::Status CheckSlotOffset(const Variant& variant, int64_t slot_offset);
absl::Status CheckFlatRange(int i, int64_t offset, int64_t size, int64_t buffer_size,
                            std::string_view buffer, int64_t* end);

}  // namespace tf_rmsprop_ops

#endif  // TF_RMSPROP_OPS_CC_OPS_RMSPROP_X_ATTRS_H_
