// The OpKernel shells of ApplyRMSpropX and SparseApplyRMSpropX, shared by every device:
// variable lookup, validation (all of it before the first write), locking, copy-on-write.
// What differs per device is the launch of the update itself: DenseLaunch / SparseLaunch,
// specialised for the CPU in apply_rmsprop_x_op.cc / sparse_apply_rmsprop_x_op.cc and for
// CUDA GPUs in cc/kernels/gpu/rmsprop_x_gpu_kernels.cc (built with GOOGLE_CUDA).
#ifndef TF_RMSPROP_OPS_CC_KERNELS_RMSPROP_X_SHELLS_H_
#define TF_RMSPROP_OPS_CC_KERNELS_RMSPROP_X_SHELLS_H_

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cc/kernels/rmsprop_x_kernel_util.h"
#include "cc/state8.h"
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

// 8-bit state (cc/state8.h): var, grad and the (codes, absmax) of the enabled states.
template <typename T>
struct Dense8Args {
  Variant variant;
  Coefficients<float> k;
  const CpuStorage<T>* grad;
  CpuStorage<T>* var;
  cpu::State8 ms, mom, mg;
  int64_t row_size;
  int64_t blocks;  // rows * BlocksPerRow(row_size)
};
// A device that has the 8-bit-state kernel specialises this with kAvailable = true and Run
// (the CPU: apply_rmsprop_x_op.cc); on the others ApplyRMSpropX(state_bits=8) is refused.
template <typename Device, typename T>
struct Dense8Launch {
  static constexpr bool kAvailable = false;
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
    if (variant_.state_bits == 8) {
      OP_REQUIRES_OK(ctx, Compute8(ctx));
      return;
    }
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
  // 8-bit state (cc/state8.h): the slots are (codes, absmax) pairs. CPU only so far; T is
  // half, bfloat16 or float (the state computes in float32).
  absl::Status Compute8(tensorflow::OpKernelContext* ctx) {
    if constexpr (std::is_same_v<T, double>) {
      return absl::InvalidArgumentError(
          "state_bits=8 is for half, bfloat16 and float32 variables (the state is computed in "
          "float32); keep a float64 variable's slots at 32 bits");
    } else if constexpr (!Dense8Launch<Device, T>::kAvailable) {
      return absl::InvalidArgumentError(
          "state_bits=8 has CPU kernels only so far: place this update on the CPU or keep the "
          "variable's slots at 32 bits");
    } else {
      const InputIndex in(static_cast<int>(vars_.ids.size()) - 1);
      // Everything is validated before the first write: a rejected call changes nothing.
      TF_RETURN_IF_ERROR(CheckScalarInputs(ctx, in));
      Coefficients<float> k;
      TF_RETURN_IF_ERROR(ReadCoefficients<T>(ctx, in, variant_, &k));
      TF_RETURN_IF_ERROR(
          CheckVariablesBeforeUpdate(ctx, vars_, tensorflow::DataTypeToEnum<T>::v()));
      auto locks = tensorflow::MaybeLockVariableInputMutexesInOrder<Device, T>(
          ctx, use_locking_, /*sparse=*/false, vars_.ids);
      std::vector<tensorflow::Tensor> t(vars_.ids.size());
      for (size_t i = 0; i < t.size(); ++i) {
        // Copy-on-write in each input's own dtype: var T, codes uint8, absmax float32.
        const auto dtype = vars_.DtypeOf(i, tensorflow::DataTypeToEnum<T>::v());
        TF_RETURN_IF_ERROR(
            dtype == tensorflow::DT_UINT8
                ? tensorflow::GetInputTensorFromVariable<Device, uint8_t>(
                      ctx, vars_.ids[i], use_locking_, /*sparse=*/false, &t[i])
            : dtype == tensorflow::DT_FLOAT
                ? tensorflow::GetInputTensorFromVariable<Device, float>(
                      ctx, vars_.ids[i], use_locking_, /*sparse=*/false, &t[i])
                : tensorflow::GetInputTensorFromVariable<Device, T>(
                      ctx, vars_.ids[i], use_locking_, /*sparse=*/false, &t[i]));
      }
      const tensorflow::TensorShape& shape = t[0].shape();
      const int64_t n = shape.num_elements();
      // Rows: [shape[0], prod(shape[1:])] for rank >= 2, else one row (also when empty).
      int64_t rows = 1, row_size = n;
      if (shape.dims() >= 2) {
        rows = shape.dim_size(0);
        row_size = 1;
        for (int d = 1; d < shape.dims(); ++d) row_size *= shape.dim_size(d);
      }
      const tensorflow::TensorShape absmax_shape({rows, BlocksPerRow(row_size)});
      for (size_t i = 1; i < t.size(); ++i) {
        if (i % 2 == 1) {
          TF_RETURN_IF_ERROR(CheckSlotShape(vars_.names[i], shape, t[i].shape()));
        } else if (!t[i].shape().IsSameSize(absmax_shape)) {
          return absl::InvalidArgumentError(absl::StrCat(
              vars_.names[i], " must have shape ", absmax_shape.DebugString(),
              " (var's rows x blocks of 256 per row) for var of shape ", shape.DebugString(),
              ", got ", t[i].shape().DebugString()));
        }
      }
      const tensorflow::Tensor& grad = ctx->input(in.grad());
      if (!shape.IsSameSize(grad.shape())) {
        return absl::InvalidArgumentError(absl::StrCat("grad must have var's shape ",
                                                       shape.DebugString(), ", got ",
                                                       grad.shape().DebugString()));
      }
      cpu::State8 state[3] = {};
      for (size_t i = 1; i + 1 < t.size(); i += 2) {
        state[i / 2] = {t[i].flat<uint8_t>().data(), t[i + 1].flat<float>().data()};
      }
      const cpu::State8 ms = state[0];
      const cpu::State8 mom = variant_.momentum ? state[1] : cpu::State8{};
      const cpu::State8 mg = variant_.centered ? state[variant_.momentum ? 2 : 1] : cpu::State8{};
      const Dense8Args<T> args{variant_, k, CpuData<T>(grad), CpuData<T>(&t[0]), ms, mom, mg,
                               row_size, rows * BlocksPerRow(row_size)};
      return Dense8Launch<Device, T>::Run(ctx, args);
    }
  }

  Variant variant_;
  bool use_locking_ = false;
  VariableInputs vars_;
};

template <typename Device, typename T, typename Index>
class SparseApplyRMSpropXOp : public tensorflow::OpKernel {
 public:
  explicit SparseApplyRMSpropXOp(tensorflow::OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, ParseVariant(c, &variant_));
    OP_REQUIRES_OK(c, RequireFloatState(variant_, "SparseApplyRMSpropX"));
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
