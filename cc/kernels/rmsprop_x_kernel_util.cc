#include "cc/kernels/rmsprop_x_kernel_util.h"

#include <vector>

#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tensorflow/core/framework/types.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace tf_rmsprop_ops {

using tensorflow::DataTypeString;
using tensorflow::OpKernelContext;

VariableInputs ListVariableInputs(const Variant& variant) {
  const std::vector<std::string> slots = SlotNames(variant);
  const InputIndex in(static_cast<int>(slots.size()));
  VariableInputs vars;
  vars.ids.push_back(in.var());
  vars.names.push_back("var");
  for (int i = 0; i < in.num_slots; ++i) {
    vars.ids.push_back(in.slot(i));
    vars.names.push_back("slot '" + slots[i] + "'");
  }
  vars.state_bits = variant.state_bits;
  return vars;
}

absl::Status LookupVariable(OpKernelContext* ctx, int input, const std::string& name,
                            tensorflow::DataType dtype,
                            tensorflow::core::RefCountPtr<tensorflow::Var>* var) {
  const absl::Status found =
      tensorflow::LookupResource(ctx, tensorflow::HandleFromInput(ctx, input), var);
  if (!found.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        name, " is not an existing, initialised resource variable (", found.message(),
        "). Create and initialise it before the update."));
  }
  tensorflow::tf_shared_lock lock(*(*var)->mu());
  if (!(*var)->is_initialized || !(*var)->tensor()->IsInitialized()) {
    return absl::FailedPreconditionError(
        absl::StrCat(name, " is uninitialised: assign a value before the update."));
  }
  if ((*var)->tensor()->dtype() != dtype) {
    if (dtype == tensorflow::DT_UINT8 || absl::StrContains(name, "absmax")) {
      return absl::InvalidArgumentError(absl::StrCat(
          name, " has dtype ", DataTypeString((*var)->tensor()->dtype()), ": 8-bit state ",
          "(state_bits=8) keeps its codes in uint8 and its absmax in float32."));
    }
    return absl::InvalidArgumentError(absl::StrCat(
        name, " has dtype ", DataTypeString((*var)->tensor()->dtype()), " but the op's T is ",
        DataTypeString(dtype), ": var, slots, grad and hyperparameters must share one dtype."));
  }
  return absl::OkStatus();
}

absl::Status CheckVariablesBeforeUpdate(OpKernelContext* ctx, const VariableInputs& vars,
                                        tensorflow::DataType dtype) {
  std::vector<const tensorflow::Var*> seen;
  for (size_t i = 0; i < vars.ids.size(); ++i) {
    tensorflow::core::RefCountPtr<tensorflow::Var> var;
    const absl::Status checked =
        LookupVariable(ctx, vars.ids[i], vars.names[i], vars.DtypeOf(i, dtype), &var);
    if (var) {
      // var and its slots must be distinct: an alias would be read and written as two
      // arrays at once (a silently wrong result).
      for (size_t j = 0; j < seen.size(); ++j) {
        if (seen[j] == var.get()) {
          return absl::InvalidArgumentError(absl::StrCat(
              vars.names[j], " and ", vars.names[i],
              " are the same variable: var and every slot must be distinct variables."));
        }
      }
      seen.push_back(var.get());
    }
    if (!checked.ok()) return checked;
  }
  return absl::OkStatus();
}

absl::Status CheckScalarInputs(OpKernelContext* ctx, const InputIndex& in) {
  for (const auto& [index, name] : in.scalars()) {
    const tensorflow::TensorShape& shape = ctx->input(index).shape();
    if (!tensorflow::TensorShapeUtils::IsScalar(shape)) {
      return absl::InvalidArgumentError(absl::StrCat(name, " must be a scalar, got shape ", shape.DebugString()));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckSlotShape(const std::string& name, const tensorflow::TensorShape& var,
                            const tensorflow::TensorShape& slot) {
  if (var.IsSameSize(slot)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(name, " must have var's shape ",
                                                 var.DebugString(), ", got ", slot.DebugString()));
}

absl::Status CheckSlotShapes(const VariableInputs& vars,
                             const std::vector<tensorflow::Tensor>& tensors) {
  for (size_t i = 1; i < tensors.size(); ++i) {
    const absl::Status same = CheckSlotShape(vars.names[i], tensors[0].shape(), tensors[i].shape());
    if (!same.ok()) return same;
  }
  return absl::OkStatus();
}

}  // namespace tf_rmsprop_ops
