// Op definitions and shape functions of ApplyRMSpropX and SparseApplyRMSpropX.
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "cc/ops/rmsprop_x_attrs.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tf_rmsprop_ops {
namespace {

using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

// The shape a resource input carries in its handle data, or unknown.
ShapeHandle HandleShape(InferenceContext* c, int input) {
  const auto* handle_data = c->input_handle_shapes_and_types(input);
  if (handle_data == nullptr || handle_data->empty()) return c->UnknownShape();
  return (*handle_data)[0].shape;
}

// Prefixes a shape-inference error with the input it is about ("grad must have var's
// shape: Dimension 0 in both shapes must be equal ...").
absl::Status Named(absl::Status status, absl::string_view what) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(what, ": ", status.message()));
}

// Checks the five scalar inputs are scalars.
absl::Status ScalarShapes(InferenceContext* c, const InputIndex& in) {
  ShapeHandle unused;
  for (const auto& [index, name] : in.scalars()) {
    TF_RETURN_IF_ERROR(
        Named(c->WithRank(c->input(index), 0, &unused), absl::StrCat(name, " must be a scalar")));
  }
  return absl::OkStatus();
}

// Checks the attrs, the scalar inputs, and that var and every slot agree in shape (flat
// state, `flat` true: every slot is a rank-1 buffer).
absl::Status VarAndSlotsShape(InferenceContext* c, const InputIndex& in, ShapeHandle* var,
                              bool flat = false) {
  Variant variant;
  TF_RETURN_IF_ERROR(ParseVariant(c, &variant));
  *var = HandleShape(c, in.var());
  const std::vector<std::string> names = SlotNames(variant);
  for (int i = 0; i < in.num_slots; ++i) {
    if (flat) {
      ShapeHandle buffer;
      TF_RETURN_IF_ERROR(Named(c->WithRank(HandleShape(c, in.slot(i)), 1, &buffer),
                               absl::StrCat("the flat '", names[i], "' buffer must be rank 1")));
      continue;
    }
    if (IsAbsmaxSlot(variant, i)) continue;  // [rows, blocks per row]: checked by the kernel
    TF_RETURN_IF_ERROR(Named(c->Merge(*var, HandleShape(c, in.slot(i)), var),
                             absl::StrCat("slot '", names[i], "' must have var's shape")));
  }
  return ScalarShapes(c, in);
}

absl::Status DenseShapeFn(InferenceContext* c) {
  int num_slots;
  TF_RETURN_IF_ERROR(c->GetAttr("num_slots", &num_slots));
  const InputIndex in(num_slots);
  ShapeHandle var;
  TF_RETURN_IF_ERROR(VarAndSlotsShape(c, in, &var));
  TF_RETURN_IF_ERROR(
      Named(c->Merge(var, c->input(in.grad()), &var), "grad must have var's shape"));
  return absl::OkStatus();
}

absl::Status SparseShapeFn(InferenceContext* c) {
  int num_slots;
  TF_RETURN_IF_ERROR(c->GetAttr("num_slots", &num_slots));
  const InputIndex in(num_slots);
  int64_t slot_offset;
  TF_RETURN_IF_ERROR(c->GetAttr("slot_offset", &slot_offset));
  Variant variant;
  TF_RETURN_IF_ERROR(ParseVariant(c, &variant));
  TF_RETURN_IF_ERROR(CheckSlotOffset(variant, slot_offset));
  ShapeHandle var, indices, grad, var_rows, grad_rows;
  TF_RETURN_IF_ERROR(VarAndSlotsShape(c, in, &var, /*flat=*/slot_offset >= 0));
  TF_RETURN_IF_ERROR(Named(c->WithRank(c->input(in.indices()), 1, &indices),
                           "indices must be a vector"));
  TF_RETURN_IF_ERROR(Named(c->WithRankAtLeast(c->input(in.grad()), 1, &grad),
                           "grad must have shape [N] + var.shape[1:]"));
  TF_RETURN_IF_ERROR(Named(c->WithRankAtLeast(var, 1, &var),
                           "var must have rank >= 1 to be updated by rows"));
  tensorflow::shape_inference::DimensionHandle n;
  TF_RETURN_IF_ERROR(Named(c->Merge(c->Dim(indices, 0), c->Dim(grad, 0), &n),
                           "grad must have one row per entry of indices"));
  TF_RETURN_IF_ERROR(c->Subshape(var, 1, &var_rows));
  TF_RETURN_IF_ERROR(c->Subshape(grad, 1, &grad_rows));
  TF_RETURN_IF_ERROR(Named(c->Merge(var_rows, grad_rows, &var_rows),
                           "grad rows must have shape var.shape[1:]"));
  return absl::OkStatus();
}

// ApplyRMSpropXMulti: N variables, their slots (num_slots each, per variable in the order
// ms[, mom][, mg]) and N gradients; every variable's slots and gradient have its shape.
absl::Status MultiShapeFn(InferenceContext* c) {
  Variant variant;
  TF_RETURN_IF_ERROR(ParseVariant(c, &variant));
  int n, num_slots, num_slot_inputs;
  TF_RETURN_IF_ERROR(c->GetAttr("N", &n));
  TF_RETURN_IF_ERROR(c->GetAttr("num_slots", &num_slots));
  TF_RETURN_IF_ERROR(c->GetAttr("num_slot_inputs", &num_slot_inputs));
  std::vector<int64_t> offsets;
  TF_RETURN_IF_ERROR(c->GetAttr("slot_offsets", &offsets));
  const bool flat = !offsets.empty();
  TF_RETURN_IF_ERROR(CheckFlatAttrs(variant, n, num_slots, num_slot_inputs, offsets));
  const InputIndex in(n + num_slot_inputs - 1);  // scalars follow vars and slots
  TF_RETURN_IF_ERROR(ScalarShapes(c, in));
  const std::vector<std::string> names = SlotNames(variant);
  for (int j = 0; flat && j < num_slots; ++j) {
    ShapeHandle buffer;
    TF_RETURN_IF_ERROR(Named(
        c->WithRank(HandleShape(c, n + j), 1, &buffer),
        absl::StrCat("slots[", j, "] (the flat '", names[j], "' buffer) must be rank 1")));
  }
  for (int i = 0; i < n; ++i) {
    ShapeHandle var = HandleShape(c, i);
    for (int j = 0; !flat && j < num_slots; ++j) {
      if (IsAbsmaxSlot(variant, j)) continue;
      TF_RETURN_IF_ERROR(Named(c->Merge(var, HandleShape(c, n + i * num_slots + j), &var),
                               absl::StrCat("slot '", names[j], "' of vars[", i,
                                            "] must have its shape")));
    }
    TF_RETURN_IF_ERROR(Named(c->Merge(var, c->input(in.grad() + i), &var),
                             absl::StrCat("grads[", i, "] must have vars[", i, "]'s shape")));
  }
  return absl::OkStatus();
}

constexpr char kDoc[] = R"doc(
var and slots are resource variables of dtype T. slots holds, in order, ms (always),
mom (when use_momentum) and mg (when centered); no slot is passed for a disabled feature.
lr, rho, momentum, epsilon and weight_decay are scalars so that schedules need no retracing.
The update is docs/design.md section 1.1 / tf_rmsprop_ops.reference; half types compute in float32.
state_bits=8 (all three ops, CPU kernels and XLA lowerings; not on a GPU yet): each state is
two slots, its uint8 codes (var's shape) and its float32 absmax ([rows, ceil(row / 256)]),
docs/design.md 1.7.
)doc";

}  // namespace

#define RMSPROPX_COMMON_INPUTS_AND_ATTRS                                                  \
  Input("var: resource")                                                                  \
      .Input("slots: num_slots * resource")                                               \
      .Input("lr: T")                                                                     \
      .Input("rho: T")                                                                    \
      .Input("momentum: T")                                                               \
      .Input("epsilon: T")                                                                \
      .Input("weight_decay: T")                                                           \
      .Input("grad: T")

#define RMSPROPX_ATTRS                                                                    \
  Attr("T: {half, bfloat16, float, double}")                                              \
      .Attr("num_slots: int >= 1")                                                        \
      .Attr("centered: bool = false")                                                     \
      .Attr("use_momentum: bool = false")                                                 \
      .Attr("nesterov: bool = false")                                                     \
      .Attr("epsilon_placement: {'inside_sqrt', 'outside_sqrt'} = 'inside_sqrt'")         \
      .Attr("lr_placement: {'inside_momentum', 'outside_momentum'} = 'inside_momentum'")  \
      .Attr("weight_decay_mode: {'none', 'decoupled', 'coupled'} = 'none'")               \
      .Attr("use_locking: bool = false")                                                  \
      .Attr("state_bits: int = 32")

REGISTER_OP("ApplyRMSpropX")
    .RMSPROPX_COMMON_INPUTS_AND_ATTRS
    .RMSPROPX_ATTRS
    .SetShapeFn(DenseShapeFn)
    .Doc(kDoc);

REGISTER_OP("SparseApplyRMSpropX")
    .RMSPROPX_COMMON_INPUTS_AND_ATTRS
    .Input("indices: Tindices")
    .RMSPROPX_ATTRS
    .Attr("Tindices: {int32, int64}")
    .Attr("slot_offset: int = -1")
    .SetShapeFn(SparseShapeFn)
    .Doc(R"doc(
var and slots are resource variables of dtype T; a row of var (and of each slot) is updated
once per distinct index, with the summed gradient rows of that index.
slot_offset (32-bit state): when >= 0, each slot is a rank-1 flat buffer and var's state is
its elements [slot_offset, slot_offset + size(var)), row-major (ApplyRMSpropXMulti's
slot_offsets layout: a multiple of 256); other elements are never touched.
)doc");

REGISTER_OP("ApplyRMSpropXMulti")
    .Input("vars: N * resource")
    .Input("slots: num_slot_inputs * resource")
    .Input("lr: T")
    .Input("rho: T")
    .Input("momentum: T")
    .Input("epsilon: T")
    .Input("weight_decay: T")
    .Input("grads: N * T")
    .RMSPROPX_ATTRS
    .Attr("N: int >= 1")
    .Attr("num_slot_inputs: int >= 1")
    .Attr("slot_offsets: list(int) = []")
    .SetShapeFn(MultiShapeFn)
    .Doc(R"doc(
ApplyRMSpropX on N variables in one call: one parallel pass over all of them (small
variables packed together), the same per-element formula, attrs and scalars for all.
slots holds num_slots slots per variable, variable by variable (ms[, mom][, mg]; with
state_bits=8 each of them as its codes then its absmax), the work cut at block boundaries.
Every input is validated before anything is written: a rejected call changes nothing.
slot_offsets (32-bit state): when given (one per variable), slots holds one flat rank-1
buffer per slot kind (ms[, mom][, mg]) and variable i's state is its buffer's elements
[slot_offsets[i], slot_offsets[i] + size(vars[i])) in row-major order; the offsets ascend
and the ranges are disjoint. Half the inputs of a call over many variables.
)doc");

#undef RMSPROPX_COMMON_INPUTS_AND_ATTRS
#undef RMSPROPX_ATTRS

}  // namespace tf_rmsprop_ops
