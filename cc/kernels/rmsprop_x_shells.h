// The OpKernel shells of ApplyRMSpropX and SparseApplyRMSpropX, shared by every device:
// variable lookup, validation (all of it before the first write), locking, copy-on-write.
// What differs per device is the launch of the update itself: DenseLaunch / SparseLaunch,
// specialised for the CPU in apply_rmsprop_x_op.cc / sparse_apply_rmsprop_x_op.cc and for
// CUDA GPUs in cc/kernels/gpu/rmsprop_x_gpu_kernels.cc (built with GOOGLE_CUDA).
#ifndef TF_RMSPROP_OPS_CC_KERNELS_RMSPROP_X_SHELLS_H_
#define TF_RMSPROP_OPS_CC_KERNELS_RMSPROP_X_SHELLS_H_

#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cc/kernels/rmsprop_x_kernel_util.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tensorflow/core/kernels/training_op_helpers.h"

namespace tf_rmsprop_ops {

// The enabled state of one op call, as raw pointers (device memory on a GPU).
template <typename T>
struct DenseArgs {
  Variant variant;
  Coefficients<cpu::ComputeType<CpuStorage<T>>> k;
  const CpuStorage<T>* grad;
  StatePointers<T> state;
  int64_t n;
};

template <typename T, typename Index>
struct SparseArgs {
  Variant variant;
  Coefficients<cpu::ComputeType<CpuStorage<T>>> k;
  const CpuStorage<T>* grad;
  const Index* indices;
  int64_t num_indices;
  int64_t rows;
  int64_t row_size;
  StatePointers<T> state;
};

// Device launches. Sparse: validates the indices (InvalidArgument naming the first bad
// offset and value, before anything is written), then updates.
template <typename Device, typename T>
struct DenseLaunch {
  static absl::Status Run(tensorflow::OpKernelContext* ctx, const DenseArgs<T>& args);
};
template <typename Device, typename T, typename Index>
struct SparseLaunch {
  static absl::Status Run(tensorflow::OpKernelContext* ctx, const SparseArgs<T, Index>& args);
};

// Whether the variable at `input` is in TF's copy-on-read mode (false when it cannot be
// looked up: GetInputTensorFromVariable then reports the error).
inline bool InCopyOnReadMode(tensorflow::OpKernelContext* ctx, int input) {
  tensorflow::core::RefCountPtr<tensorflow::Var> var;
  if (!tensorflow::LookupResource(ctx, tensorflow::HandleFromInput(ctx, input), &var).ok()) {
    return false;
  }
  return var->copy_on_read_mode.load();
}

template <typename Device, typename T>
class ApplyRMSpropXOp : public tensorflow::OpKernel {
 public:
  explicit ApplyRMSpropXOp(tensorflow::OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, ParseVariant(c, &variant_));
    OP_REQUIRES_OK(c, c->GetAttr("use_locking", &use_locking_));
    vars_ = ListVariableInputs(variant_);
  }

  void Compute(tensorflow::OpKernelContext* ctx) override {
    const InputIndex in(static_cast<int>(vars_.ids.size()) - 1);
    // Everything is validated before the first write: a rejected call changes nothing.
    OP_REQUIRES_OK(ctx, CheckScalarInputs(ctx, in));
    Coefficients<cpu::ComputeType<CpuStorage<T>>> k;
    OP_REQUIRES_OK(ctx, ReadCoefficients<T>(ctx, in, variant_, &k));
    OP_REQUIRES_OK(ctx, CheckVariablesBeforeUpdate(ctx, vars_, tensorflow::DataTypeToEnum<T>::v()));
    auto locks = tensorflow::MaybeLockVariableInputMutexesInOrder<Device, T>(
        ctx, use_locking_, /*sparse=*/false, vars_.ids);
    std::vector<tensorflow::Tensor> t(vars_.ids.size());
    for (size_t i = 0; i < t.size(); ++i) {
      // Copy-on-write: a buffer still shared with a reader is copied first.
      OP_REQUIRES_OK(ctx, tensorflow::GetInputTensorFromVariable<Device, T>(
                              ctx, vars_.ids[i], use_locking_, /*sparse=*/false, &t[i]));
    }
    OP_REQUIRES_OK(ctx, CheckSlotShapes(vars_, t));
    const tensorflow::Tensor& grad = ctx->input(in.grad());
    OP_REQUIRES(ctx, t[0].shape().IsSameSize(grad.shape()),
                absl::InvalidArgumentError(absl::StrCat("grad must have var's shape ",
                                                        t[0].shape().DebugString(), ", got ",
                                                        grad.shape().DebugString())));
    const DenseArgs<T> args{variant_, k, CpuData<T>(grad),
                            StateOf<T>(variant_, &t), grad.NumElements()};
    OP_REQUIRES_OK(ctx, (DenseLaunch<Device, T>::Run(ctx, args)));
  }

 private:
  Variant variant_;
  bool use_locking_ = false;
  VariableInputs vars_;
};

template <typename Device, typename T, typename Index>
class SparseApplyRMSpropXOp : public tensorflow::OpKernel {
 public:
  explicit SparseApplyRMSpropXOp(tensorflow::OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, ParseVariant(c, &variant_));
    OP_REQUIRES_OK(c, c->GetAttr("use_locking", &use_locking_));
    vars_ = ListVariableInputs(variant_);
  }

  void Compute(tensorflow::OpKernelContext* ctx) override {
    const InputIndex in(static_cast<int>(vars_.ids.size()) - 1);
    const tensorflow::Tensor& grad = ctx->input(in.grad());
    const tensorflow::Tensor& indices = ctx->input(in.indices());
    // Everything is validated before the first write: a rejected call changes nothing.
    OP_REQUIRES_OK(ctx, CheckScalarInputs(ctx, in));
    Coefficients<cpu::ComputeType<CpuStorage<T>>> k;
    OP_REQUIRES_OK(ctx, ReadCoefficients<T>(ctx, in, variant_, &k));
    OP_REQUIRES(ctx, indices.dims() == 1,
                absl::InvalidArgumentError(absl::StrCat(
                    "indices must be a vector, got shape ", indices.shape().DebugString())));
    OP_REQUIRES(ctx, grad.dims() >= 1,
                absl::InvalidArgumentError("grad must have shape [N] + var.shape[1:], got a scalar"));
    OP_REQUIRES(ctx, grad.dim_size(0) == indices.dim_size(0),
                absl::InvalidArgumentError(absl::StrCat(
                    "grad has ", grad.dim_size(0), " rows but indices has ", indices.dim_size(0),
                    " entries: they must match")));
    OP_REQUIRES(ctx, indices.dim_size(0) <= std::numeric_limits<int32_t>::max(),
                absl::InvalidArgumentError("more than 2^31 - 1 indices"));
    OP_REQUIRES_OK(ctx, CheckVariablesBeforeUpdate(ctx, vars_, tensorflow::DataTypeToEnum<T>::v()));
    // How the rows are written depends on the table's access mode (TF's two protocols):
    // * Already copy-on-read (a TF sparse op switched it; the mode is sticky): TF's sparse
    //   protocol, in place; without use_locking a shared lock (Hogwild!, as TF's sparse
    //   kernels), readers copy.
    // * Otherwise the table stays in TF's default mode, where a dense read
    //   (ReadVariableOp, e.g. Keras' Embedding: `take` on the variable's value) aliases the
    //   buffer instead of copying all of it on every read: the update takes the exclusive
    //   lock and writes in place, copying the table first only while a reader still holds
    //   the buffer (copy-on-write, as the dense ops). TF's sparse kernels would switch the
    //   table to copy-on-read, and every later dense read would copy it (27 ms per step
    //   for a [1M, 64] table on the machine of BENCHMARKS.md).
    const bool sparse_access = InCopyOnReadMode(ctx, vars_.ids[0]);
    auto locks = tensorflow::MaybeLockVariableInputMutexesInOrder<Device, T>(
        ctx, use_locking_, sparse_access, vars_.ids);
    std::vector<tensorflow::Tensor> t(vars_.ids.size());
    for (size_t i = 0; i < t.size(); ++i) {
      OP_REQUIRES_OK(ctx, tensorflow::GetInputTensorFromVariable<Device, T>(
                              ctx, vars_.ids[i], use_locking_, sparse_access, &t[i]));
    }
    OP_REQUIRES_OK(ctx, CheckSlotShapes(vars_, t));
    const tensorflow::TensorShape& var_shape = t[0].shape();
    OP_REQUIRES(ctx, var_shape.dims() >= 1,
                absl::InvalidArgumentError("var must have rank >= 1 to be updated by rows, got a scalar"));
    tensorflow::TensorShape var_row = var_shape, grad_row = grad.shape();
    var_row.RemoveDim(0);
    grad_row.RemoveDim(0);
    OP_REQUIRES(ctx, var_row.IsSameSize(grad_row),
                absl::InvalidArgumentError(absl::StrCat(
                    "grad rows must have shape var.shape[1:] = ", var_row.DebugString(), ", got ",
                    grad_row.DebugString())));
    const SparseArgs<T, Index> args{variant_,
                                    k,
                                    CpuData<T>(grad),
                                    indices.flat<Index>().data(),
                                    indices.dim_size(0),
                                    var_shape.dim_size(0),
                                    var_row.num_elements(),
                                    StateOf<T>(variant_, &t)};
    OP_REQUIRES_OK(ctx, (SparseLaunch<Device, T, Index>::Run(ctx, args)));
  }

 private:
  Variant variant_;
  bool use_locking_ = false;
  VariableInputs vars_;
};

}  // namespace tf_rmsprop_ops

#endif  // TF_RMSPROP_OPS_CC_KERNELS_RMSPROP_X_SHELLS_H_
