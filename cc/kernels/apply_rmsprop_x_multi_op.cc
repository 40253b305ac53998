// ApplyRMSpropXMulti on the CPU: N variables in one call. Every input of every variable is
// validated before anything is written; all variables are locked together (in address
// order) and copied on write as the single-variable op does; then ONE parallel pass runs
// over a flat list of equal-sized element ranges that cut across the variables, so small
// variables share a thread's range and a large one is split between threads. The per-element
// work is the span loop of cc/cpu/ (cc/rmsprop_x_update.h), as ApplyRMSpropX.
#define EIGEN_USE_THREADS

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cc/kernels/rmsprop_x_kernel_util.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tensorflow/core/kernels/training_op_helpers.h"
#include "tensorflow/core/platform/threadpool.h"

namespace tf_rmsprop_ops {

using CPUDevice = Eigen::ThreadPoolDevice;

// Range boundaries fall on multiples of this many elements (whole vectors and cache lines).
constexpr int64_t kAlign = 64;
// No range is smaller than this (a thread-pool task has a fixed cost of a few microseconds).
constexpr int64_t kMinRange = 16384;

template <typename T>
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
    OP_REQUIRES_OK(ctx, CheckVariablesBeforeUpdate(ctx, vars_, tensorflow::DataTypeToEnum<T>::v()));
    OP_REQUIRES_OK(ctx, CheckDistinct(ctx));
    auto locks = tensorflow::MaybeLockVariableInputMutexesInOrder<CPUDevice, T>(
        ctx, use_locking_, /*sparse=*/false, vars_.ids);
    std::vector<tensorflow::Tensor> all(vars_.ids.size());
    for (size_t i = 0; i < all.size(); ++i) {
      // Copy-on-write: a buffer still shared with a reader is copied first.
      OP_REQUIRES_OK(ctx, tensorflow::GetInputTensorFromVariable<CPUDevice, T>(
                              ctx, vars_.ids[i], use_locking_, /*sparse=*/false, &all[i]));
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
    const auto k = ReadCoefficients<T>(ctx, in, variant_);
    const int64_t total = start[n_];
    if (total == 0) return;
    const Variant variant = variant_;
    // Updates global elements [lo, hi): the pieces of every variable inside the range.
    auto update_range = [&](int64_t lo, int64_t hi) {
      int i = static_cast<int>(std::upper_bound(start.begin(), start.end(), lo) - start.begin()) - 1;
      for (; i < n_ && start[i] < hi; ++i) {
        const int64_t a = std::max(lo, start[i]) - start[i];
        const int64_t b = std::min(hi, start[i + 1]) - start[i];
        if (a >= b) continue;
        const StatePointers<T> s = state[i].At(a);
        cpu::UpdateSpan(variant, k, grads[i] + a, s.var, s.ms, s.mom, s.mg, b - a);
      }
    };
    const auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    const int64_t ranges = std::min<int64_t>(4 * workers->num_threads,
                                             std::max<int64_t>(1, total / kMinRange));
    if (workers->num_threads <= 1 || ranges <= 1) {
      update_range(0, total);
      return;
    }
    auto boundary = [&](int64_t r) {
      return r >= ranges ? total : std::min(total, (total * r / ranges) / kAlign * kAlign);
    };
    workers->workers->ParallelFor(
        ranges,
        tensorflow::thread::ThreadPool::SchedulingParams(
            tensorflow::thread::ThreadPool::SchedulingStrategy::kFixedBlockSize, std::nullopt, 1),
        [&](int64_t begin, int64_t end) {
          for (int64_t r = begin; r < end; ++r) update_range(boundary(r), boundary(r + 1));
        });
  }

 private:
  // One variable passed twice (or as a slot) would be updated twice, concurrently.
  absl::Status CheckDistinct(tensorflow::OpKernelContext* ctx) const {
    std::vector<std::pair<const void*, size_t>> seen;
    for (size_t i = 0; i < vars_.ids.size(); ++i) {
      tensorflow::core::RefCountPtr<tensorflow::Var> var;
      TF_RETURN_IF_ERROR(
          tensorflow::LookupResource(ctx, tensorflow::HandleFromInput(ctx, vars_.ids[i]), &var));
      seen.emplace_back(var.get(), i);
    }
    std::sort(seen.begin(), seen.end());
    for (size_t i = 1; i < seen.size(); ++i) {
      if (seen[i].first == seen[i - 1].first) {
        return absl::InvalidArgumentError(absl::StrCat(
            vars_.names[std::min(seen[i].second, seen[i - 1].second)], " and ",
            vars_.names[std::max(seen[i].second, seen[i - 1].second)],
            " are the same variable: every variable and slot must be distinct."));
      }
    }
    return absl::OkStatus();
  }

  Variant variant_;
  bool use_locking_ = false;
  int n_ = 0, num_slots_ = 0;
  VariableInputs vars_;
};

#define REGISTER_CPU(T)                                                                  \
  REGISTER_KERNEL_BUILDER(                                                               \
      Name("ApplyRMSpropXMulti").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T"),  \
      ApplyRMSpropXMultiOp<T>);
TF_CALL_half(REGISTER_CPU);
TF_CALL_bfloat16(REGISTER_CPU);
TF_CALL_float(REGISTER_CPU);
TF_CALL_double(REGISTER_CPU);
#undef REGISTER_CPU

}  // namespace tf_rmsprop_ops
