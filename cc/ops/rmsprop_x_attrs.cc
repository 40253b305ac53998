#include "cc/ops/rmsprop_x_attrs.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace tf_rmsprop_ops {

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
  const std::vector<std::string> names = SlotNames(*v);
  if (num_slots != static_cast<int>(names.size())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "slots: expected ", names.size(), " slot variable(s) [", absl::StrJoin(names, ", "),
        "] for centered=", v->centered, ", use_momentum=", v->momentum, ", got ", num_slots,
        ". A slot for a disabled feature must not be passed, one for an enabled feature must."));
  }
  return absl::OkStatus();
}

std::vector<std::string> SlotNames(const Variant& v) {
  std::vector<std::string> names = {"ms"};
  if (v.momentum) names.push_back("mom");
  if (v.centered) names.push_back("mg");
  return names;
}

}  // namespace tf_rmsprop_ops
