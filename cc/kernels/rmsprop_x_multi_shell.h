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

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "cc/kernels/rmsprop_x_kernel_util.h"
#include "cc/kernels/rmsprop_x_shells.h"
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

// 8-bit state (cc/state8.h): per variable its var, grad, the (codes, absmax) of the enabled
// states, its row size, and the global BLOCK offset where it starts (start[N] = total
// blocks): the work is cut at block boundaries, never inside a block.
template <typename T>
struct Multi8Args {
  Variant variant;
  Coefficients<float> k;
  std::vector<CpuStorage<T>*> var;
  std::vector<const CpuStorage<T>*> grads;
  std::vector<cpu::State8> ms, mom, mg;
  std::vector<int64_t> row_size;
  std::vector<int64_t> start;
};
// A device with the 8-bit multi-tensor kernel specialises this with kAvailable = true and
// Run (the CPU: apply_rmsprop_x_multi_op.cc); on the others state_bits=8 is refused.
template <typename Device, typename T>
struct Multi8Launch {
  static constexpr bool kAvailable = false;
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
    OP_REQUIRES_OK(c, c->GetAttr("slot_offsets", &offsets_));
    flat_ = !offsets_.empty();
    OP_REQUIRES_OK(c, CheckFlatAttrs(variant_, n_, num_slots_, num_slot_inputs, offsets_));
    for (int i = 0; i < n_; ++i) {
      vars_.ids.push_back(i);
      vars_.names.push_back(absl::StrCat("vars[", i, "]"));
    }
    for (int j = 0; flat_ && j < num_slots_; ++j) {
      vars_.ids.push_back(n_ + j);
      vars_.names.push_back(absl::StrCat("slots[", j, "] (the flat '", slot_names[j],
                                         "' buffer)"));
    }
    for (int i = 0; !flat_ && i < n_; ++i) {
      for (int j = 0; j < num_slots_; ++j) {
        vars_.ids.push_back(n_ + i * num_slots_ + j);
        vars_.names.push_back(absl::StrCat("slots[", i * num_slots_ + j, "] ('",
                                           slot_names[j], "' of vars[", i, "])"));
      }
    }
  }

  // Per-input work is what a call over hundreds of variables spends besides the update
  // (bench --models), so every input is visited once per phase and nothing is allocated
  // per variable; messages are built only on error.
  void Compute(tensorflow::OpKernelContext* ctx) override {
    if (variant_.state_bits == 8) {
      OP_REQUIRES_OK(ctx, Compute8(ctx));
      return;
    }
    const int num = static_cast<int>(vars_.ids.size());  // resources: vars, then slots
    const InputIndex in(num - 1);                          // scalars after the resources
    OP_REQUIRES_OK(ctx, CheckScalarInputs(ctx, in));
    Coefficients<cpu::ComputeType<CpuStorage<T>>> k;
    OP_REQUIRES_OK(ctx, ReadCoefficients<T>(ctx, in, variant_, &k));
    // One lookup per resource (TF's helpers would look each up four times: with hundreds of
    // variables that is most of a small model's step).
    const tensorflow::DataType dtype = tensorflow::DataTypeToEnum<T>::v();
    std::vector<tensorflow::core::RefCountPtr<tensorflow::Var>> refs(num);
    std::vector<std::pair<tensorflow::mutex*, int>> order(num);
    for (int i = 0; i < num; ++i) {
      OP_REQUIRES_OK(ctx, LookupVariable(ctx, vars_.ids[i], vars_.names[i], dtype, &refs[i]));
      order[i] = {refs[i]->mu(), i};
    }
    // Distinct variables, locked exclusively in address order (deadlock-free with TF's
    // helpers, which use the same order), then copy-on-write as TF's dense kernels.
    std::sort(order.begin(), order.end());
    for (int i = 1; i < num; ++i) {
      OP_REQUIRES(ctx, order[i].first != order[i - 1].first,
                  absl::InvalidArgumentError(absl::StrCat(
                      vars_.names[std::min(order[i].second, order[i - 1].second)], " and ",
                      vars_.names[std::max(order[i].second, order[i - 1].second)],
                      " are the same variable: every variable and slot must be distinct.")));
    }
    for (const auto& entry : order) entry.first->lock();
    const auto unlock = absl::MakeCleanup([&order] {
      for (auto it = order.rbegin(); it != order.rend(); ++it) it->first->unlock();
    });
    for (int i = 0; i < num; ++i) {
      OP_REQUIRES_OK(ctx, tensorflow::PrepareToUpdateVariable<Device, T>(
                              ctx, refs[i]->tensor(), refs[i]->copy_on_read_mode.load()));
    }
    // Per variable: every shape checked, then its pointers and global element offset.
    MultiArgs<T> args{variant_, k, std::vector<StatePointers<T>>(n_),
                      std::vector<const CpuStorage<T>*>(n_), std::vector<int64_t>(n_ + 1, 0)};
    tensorflow::Tensor* buffers[3] = {};  // flat state: one per slot kind
    if (flat_) {
      for (int j = 0; j < num_slots_; ++j) buffers[j] = refs[n_ + j]->tensor();
      OP_REQUIRES_OK(ctx, CheckOffsets(refs));
    }
    for (int i = 0; i < n_; ++i) {
      tensorflow::Tensor* var = refs[i]->tensor();
      tensorflow::Tensor* slots[3] = {};
      for (int j = 0; !flat_ && j < num_slots_; ++j) {
        const int r = n_ + i * num_slots_ + j;
        slots[j] = refs[r]->tensor();
        OP_REQUIRES_OK(ctx, CheckSlotShape(vars_.names[r], var->shape(), slots[j]->shape()));
      }
      const tensorflow::Tensor& grad = ctx->input(in.grad() + i);
      OP_REQUIRES(ctx, var->shape().IsSameSize(grad.shape()),
                  absl::InvalidArgumentError(absl::StrCat(
                      "grads[", i, "] must have vars[", i, "]'s shape ",
                      var->shape().DebugString(), ", got ", grad.shape().DebugString())));
      args.state[i] = flat_ ? AtSlotOffset(StateOf<T>(variant_, var, buffers), offsets_[i])
                            : StateOf<T>(variant_, var, slots);
      args.grads[i] = CpuData<T>(grad);
      args.start[i + 1] = args.start[i] + grad.NumElements();
    }
    if (args.start.back() == 0) return;
    OP_REQUIRES_OK(ctx, (MultiLaunch<Device, T>::Run(ctx, args)));
  }

 private:
  // 8-bit state: as Compute (every input checked before any write, all resources locked
  // together in address order, copy-on-write), each resource in its own dtype (var T, codes
  // uint8, absmax float32).
  absl::Status Compute8(tensorflow::OpKernelContext* ctx) {
    TF_RETURN_IF_ERROR(State8Supported<T>(Multi8Launch<Device, T>::kAvailable));
    if constexpr (Multi8Launch<Device, T>::kAvailable) {
      const int num = static_cast<int>(vars_.ids.size());
      const InputIndex in(num - 1);
      TF_RETURN_IF_ERROR(CheckScalarInputs(ctx, in));
      Coefficients<float> k;
      TF_RETURN_IF_ERROR(ReadCoefficients<T>(ctx, in, variant_, &k));
      auto dtype_of = [&](int i) {
        if (i < n_) return tensorflow::DataTypeToEnum<T>::v();
        return (i - n_) % 2 == 1 ? tensorflow::DT_FLOAT : tensorflow::DT_UINT8;
      };
      std::vector<tensorflow::core::RefCountPtr<tensorflow::Var>> refs(num);
      std::vector<std::pair<tensorflow::mutex*, int>> order(num);
      for (int i = 0; i < num; ++i) {
        TF_RETURN_IF_ERROR(LookupVariable(ctx, vars_.ids[i], vars_.names[i], dtype_of(i),
                                          &refs[i]));
        order[i] = {refs[i]->mu(), i};
      }
      std::sort(order.begin(), order.end());
      for (int i = 1; i < num; ++i) {
        if (order[i].first == order[i - 1].first) {
          return absl::InvalidArgumentError(absl::StrCat(
              vars_.names[std::min(order[i].second, order[i - 1].second)], " and ",
              vars_.names[std::max(order[i].second, order[i - 1].second)],
              " are the same variable: every variable and slot must be distinct."));
        }
      }
      for (const auto& entry : order) entry.first->lock();
      const auto unlock = absl::MakeCleanup([&order] {
        for (auto it = order.rbegin(); it != order.rend(); ++it) it->first->unlock();
      });
      for (int i = 0; i < num; ++i) {
        tensorflow::Tensor* t = refs[i]->tensor();
        const bool copy_on_read = refs[i]->copy_on_read_mode.load();
        const tensorflow::DataType dtype = dtype_of(i);
        TF_RETURN_IF_ERROR(
            dtype == tensorflow::DT_UINT8
                ? tensorflow::PrepareToUpdateVariable<Device, uint8_t>(ctx, t, copy_on_read)
            : dtype == tensorflow::DT_FLOAT
                ? tensorflow::PrepareToUpdateVariable<Device, float>(ctx, t, copy_on_read)
                : tensorflow::PrepareToUpdateVariable<Device, T>(ctx, t, copy_on_read));
      }
      Multi8Args<T> args{variant_, k};
      args.start.assign(n_ + 1, 0);
      for (int i = 0; i < n_; ++i) {
        std::vector<tensorflow::Tensor> t = {*refs[i]->tensor()};
        VariableInputs names;
        names.names.push_back(vars_.names[i]);
        for (int j = 0; j < num_slots_; ++j) {
          const int r = n_ + i * num_slots_ + j;
          t.push_back(*refs[r]->tensor());
          names.names.push_back(vars_.names[r]);
        }
        Rows8 rows;
        TF_RETURN_IF_ERROR(CheckState8Shapes(names, t, &rows));
        const tensorflow::Tensor& grad = ctx->input(in.grad() + i);
        if (!t[0].shape().IsSameSize(grad.shape())) {
          return absl::InvalidArgumentError(absl::StrCat(
              "grads[", i, "] must have vars[", i, "]'s shape ", t[0].shape().DebugString(),
              ", got ", grad.shape().DebugString()));
        }
        cpu::State8 ms, mom, mg;
        States8Of(variant_, &t, &ms, &mom, &mg);
        args.var.push_back(CpuData<T>(refs[i]->tensor()));
        args.grads.push_back(CpuData<T>(grad));
        args.ms.push_back(ms);
        args.mom.push_back(mom);
        args.mg.push_back(mg);
        args.row_size.push_back(rows.row_size);
        args.start[i + 1] = args.start[i] + rows.rows * BlocksPerRow(rows.row_size);
      }
      if (args.start.back() == 0) return absl::OkStatus();
      return Multi8Launch<Device, T>::Run(ctx, args);
    }
    return absl::OkStatus();
  }

  // Flat buffers: each rank 1, every variable's range inside each (CheckFlatRange).
  absl::Status CheckOffsets(
      const std::vector<tensorflow::core::RefCountPtr<tensorflow::Var>>& refs) const {
    for (int j = 0; j < num_slots_; ++j) {
      const tensorflow::Tensor& tensor = *refs[n_ + j]->tensor();
      if (tensor.dims() != 1) {
        return absl::InvalidArgumentError(absl::StrCat(
            vars_.names[n_ + j], " must be rank 1, got shape ", tensor.shape().DebugString()));
      }
      int64_t end = 0;  // where the previous variable's range ends
      const int64_t buffer = tensor.NumElements();
      for (int i = 0; i < n_; ++i) {
        TF_RETURN_IF_ERROR(CheckFlatRange(i, offsets_[i], refs[i]->tensor()->NumElements(),
                                          buffer, vars_.names[n_ + j], &end));
      }
    }
    return absl::OkStatus();
  }

  Variant variant_;
  bool use_locking_ = false;
  bool flat_ = false;
  std::vector<int64_t> offsets_;
  int n_ = 0, num_slots_ = 0;
  VariableInputs vars_;
};

}  // namespace tf_rmsprop_ops

#endif  // TF_RMSPROP_OPS_CC_KERNELS_RMSPROP_X_MULTI_SHELL_H_
