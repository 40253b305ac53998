// The OpKernel shell of ApplyRMSpropXMulti, shared by every device: N variables in one call.
// Every input of every variable is validated before anything is written; all variables are
// locked together (exclusively, in address order; also without use_locking, as TF's dense
// kernels on resource variables) and copied on write as the single-variable op does. What
// differs per device is MultiLaunch: the CPU's one parallel pass over equal element ranges
// (apply_rmsprop_x_multi_op.cc), the GPU's chunk-list kernel (cc/kernels/gpu/).
#ifndef TF_RMSPROP_OPS_CC_KERNELS_RMSPROP_X_MULTI_SHELL_H_
#define TF_RMSPROP_OPS_CC_KERNELS_RMSPROP_X_MULTI_SHELL_H_

#include <algorithm>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cc/kernels/rmsprop_x_kernel_util.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tensorflow/core/kernels/training_op_helpers.h"

namespace tf_rmsprop_ops {

// The validated, locked state of one call: per variable its pointers (device memory on a
// GPU) and gradient, and the global element offset where it starts (start[N] = total).
template <typename T>
struct MultiArgs {
  Variant variant;
  Coefficients<cpu::ComputeType<CpuStorage<T>>> k;
  std::vector<StatePointers<T>> state;
  std::vector<const CpuStorage<T>*> grads;
  std::vector<int64_t> start;
};

// The device's update of every variable (called with at least one element to update).
template <typename Device, typename T>
struct MultiLaunch {
  static absl::Status Run(tensorflow::OpKernelContext* ctx, const MultiArgs<T>& args);
};

template <typename Device, typename T>
class ApplyRMSpropXMultiOp : public tensorflow::OpKernel {
 public:
  explicit ApplyRMSpropXMultiOp(tensorflow::OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, ParseVariant(c, &variant_));
    OP_REQUIRES_OK(c, c->GetAttr("use_locking", &use_locking_));
    OP_REQUIRES_OK(c, c->GetAttr("N", &n_));
    int num_slot_inputs;
    OP_REQUIRES_OK(c, c->GetAttr("num_slot_inputs", &num_slot_inputs));
    const std::vector<std::string> slot_names = SlotNames(variant_);
    num_slots_ = static_cast<int>(slot_names.size());
    OP_REQUIRES(c, num_slot_inputs == n_ * num_slots_,
                absl::InvalidArgumentError(absl::StrCat(
                    "slots must hold ", num_slots_, " slots for each of the ", n_,
                    " variables, got ", num_slot_inputs)));
    for (int i = 0; i < n_; ++i) {
      vars_.ids.push_back(i);
      vars_.names.push_back(absl::StrCat("vars[", i, "]"));
    }
    for (int i = 0; i < n_; ++i) {
      for (int j = 0; j < num_slots_; ++j) {
        vars_.ids.push_back(n_ + i * num_slots_ + j);
        vars_.names.push_back(absl::StrCat("slots[", i * num_slots_ + j, "] ('",
                                           slot_names[j], "' of vars[", i, "])"));
      }
    }
  }

  void Compute(tensorflow::OpKernelContext* ctx) override {
    const InputIndex in(static_cast<int>(vars_.ids.size()) - 1);  // scalars after the resources
    OP_REQUIRES_OK(ctx, CheckScalarInputs(ctx, in));
    OP_REQUIRES_OK(ctx, CheckHyperParamValues<T>(ctx, in));
    // One lookup per resource (TF's helpers would look each up four times: with hundreds of
    // variables that is most of a small model's step). Checks as CheckVariablesBeforeUpdate.
    const tensorflow::DataType dtype = tensorflow::DataTypeToEnum<T>::v();
    std::vector<tensorflow::core::RefCountPtr<tensorflow::Var>> refs(vars_.ids.size());
    for (size_t i = 0; i < refs.size(); ++i) {
      const absl::Status found = tensorflow::LookupResource(
          ctx, tensorflow::HandleFromInput(ctx, vars_.ids[i]), &refs[i]);
      OP_REQUIRES(ctx, found.ok(),
                  absl::FailedPreconditionError(absl::StrCat(
                      vars_.names[i], " is not an existing, initialised resource variable (",
                      found.message(), "). Create and initialise it before the update.")));
      tensorflow::tf_shared_lock lock(*refs[i]->mu());
      OP_REQUIRES(ctx, refs[i]->is_initialized && refs[i]->tensor()->IsInitialized(),
                  absl::FailedPreconditionError(absl::StrCat(
                      vars_.names[i], " is uninitialised: assign a value before the update.")));
      OP_REQUIRES(ctx, refs[i]->tensor()->dtype() == dtype,
                  absl::InvalidArgumentError(absl::StrCat(
                      vars_.names[i], " has dtype ",
                      tensorflow::DataTypeString(refs[i]->tensor()->dtype()), " but the op's T is ",
                      tensorflow::DataTypeString(dtype),
                      ": var, slots, grad and hyperparameters must share one dtype.")));
    }
    // Distinct variables, locked exclusively in address order (deadlock-free with TF's
    // helpers, which use the same order), then copy-on-write as TF's dense kernels.
    std::vector<std::pair<tensorflow::Var*, size_t>> order;
    for (size_t i = 0; i < refs.size(); ++i) order.emplace_back(refs[i].get(), i);
    std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
      return a.first->mu() < b.first->mu();
    });
    for (size_t i = 1; i < order.size(); ++i) {
      OP_REQUIRES(ctx, order[i].first != order[i - 1].first,
                  absl::InvalidArgumentError(absl::StrCat(
                      vars_.names[std::min(order[i].second, order[i - 1].second)], " and ",
                      vars_.names[std::max(order[i].second, order[i - 1].second)],
                      " are the same variable: every variable and slot must be distinct.")));
    }
    std::vector<std::unique_ptr<tensorflow::mutex_lock>> locks;
    locks.reserve(order.size());
    for (const auto& entry : order) {
      locks.push_back(std::make_unique<tensorflow::mutex_lock>(*entry.first->mu()));
    }
    std::vector<tensorflow::Tensor> all(vars_.ids.size());
    for (size_t i = 0; i < all.size(); ++i) {
      OP_REQUIRES_OK(ctx, tensorflow::PrepareToUpdateVariable<Device, T>(
                              ctx, refs[i]->tensor(), refs[i]->copy_on_read_mode.load()));
      all[i] = *refs[i]->tensor();
    }
    // Per variable: its state tensors (var, slots) and pointers; every shape checked first.
    std::vector<StatePointers<T>> state(n_);
    std::vector<const CpuStorage<T>*> grads(n_);
    std::vector<int64_t> start(n_ + 1, 0);  // global element offsets
    for (int i = 0; i < n_; ++i) {
      std::vector<tensorflow::Tensor> t = {all[i]};
      VariableInputs one{{0}, {vars_.names[i]}};
      for (int j = 0; j < num_slots_; ++j) {
        t.push_back(all[n_ + i * num_slots_ + j]);
        one.ids.push_back(1 + j);
        one.names.push_back(vars_.names[n_ + i * num_slots_ + j]);
      }
      OP_REQUIRES_OK(ctx, CheckSlotShapes(one, t));
      const tensorflow::Tensor& grad = ctx->input(in.grad() + i);
      OP_REQUIRES(ctx, t[0].shape().IsSameSize(grad.shape()),
                  absl::InvalidArgumentError(absl::StrCat(
                      "grads[", i, "] must have vars[", i, "]'s shape ",
                      t[0].shape().DebugString(), ", got ", grad.shape().DebugString())));
      state[i] = StateOf<T>(variant_, &t);
      grads[i] = CpuData<T>(grad);
      start[i + 1] = start[i] + grad.NumElements();
    }
    const MultiArgs<T> args{variant_, ReadCoefficients<T>(ctx, in, variant_), std::move(state),
                            std::move(grads), std::move(start)};
    if (args.start.back() == 0) return;
    OP_REQUIRES_OK(ctx, (MultiLaunch<Device, T>::Run(ctx, args)));
  }

 private:
  Variant variant_;
  bool use_locking_ = false;
  int n_ = 0, num_slots_ = 0;
  VariableInputs vars_;
};

}  // namespace tf_rmsprop_ops

#endif  // TF_RMSPROP_OPS_CC_KERNELS_RMSPROP_X_MULTI_SHELL_H_
