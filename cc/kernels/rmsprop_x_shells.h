// The OpKernel shells of ApplyRMSpropX and SparseApplyRMSpropX, shared by every device:
// variable lookup, validation (all of it before the first write), locking, copy-on-write.
// What differs per device is the launch of the update itself: DenseLaunch / SparseLaunch,
// specialised for the CPU in apply_rmsprop_x_op.cc / sparse_apply_rmsprop_x_op.cc and for
// CUDA GPUs in cc/kernels/gpu/rmsprop_x_gpu_kernels.cc (built with GOOGLE_CUDA).
#ifndef TF_RMSPROP_OPS_CC_KERNELS_RMSPROP_X_SHELLS_H_
#define TF_RMSPROP_OPS_CC_KERNELS_RMSPROP_X_SHELLS_H_

#include <algorithm>
#include <limits>
#include <optional>
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

template <typename T, typename Index>
struct Sparse8Args {
  Variant variant;
  Coefficients<float> k;
  const CpuStorage<T>* grad;
  const Index* indices;
  int64_t num_indices;
  int64_t rows;
  int64_t row_size;
  CpuStorage<T>* var;
  cpu::State8 ms, mom, mg;
};
template <typename Device, typename T, typename Index>
struct Sparse8Launch {
  static constexpr bool kAvailable = false;
};

// OK when this device has the 8-bit kernel (`available`) and T is a 32- or 16-bit float.
template <typename T>
absl::Status State8Supported(bool available) {
  if (std::is_same_v<T, double>) {
    return absl::InvalidArgumentError(
        "state_bits=8 is for half, bfloat16 and float32 variables (the state is computed in "
        "float32); keep a float64 variable's slots at 32 bits");
  }
  if (!available) {
    return absl::InvalidArgumentError(
        "state_bits=8 has no kernel on this device: create the variable and its slots where "
        "one runs (the CPU; a GPU with a GPU build), or keep the variable's slots at 32 bits");
  }
  return absl::OkStatus();
}

// var and its (codes, absmax) slots, each copied first if a reader still shares its buffer
// (copy-on-write, in each input's own dtype: var T, codes uint8, absmax float32). 8-bit
// state always takes TF's default (copy-on-write) protocol, also for sparse updates: TF's
// copy-on-read switch (EnsureSparseVariableAccess) copies in the op's T.
template <typename Device, typename T>
absl::Status GetState8Tensors(tensorflow::OpKernelContext* ctx, const VariableInputs& vars,
                              bool use_locking, std::vector<tensorflow::Tensor>* t) {
  t->resize(vars.ids.size());
  for (size_t i = 0; i < t->size(); ++i) {
    const auto dtype = vars.DtypeOf(i, tensorflow::DataTypeToEnum<T>::v());
    tensorflow::Tensor* out = &(*t)[i];
    TF_RETURN_IF_ERROR(
        dtype == tensorflow::DT_UINT8
            ? tensorflow::GetInputTensorFromVariable<Device, uint8_t>(ctx, vars.ids[i],
                                                                      use_locking, false, out)
        : dtype == tensorflow::DT_FLOAT
            ? tensorflow::GetInputTensorFromVariable<Device, float>(ctx, vars.ids[i],
                                                                    use_locking, false, out)
            : tensorflow::GetInputTensorFromVariable<Device, T>(ctx, vars.ids[i], use_locking,
                                                                false, out));
  }
  return absl::OkStatus();
}

// The block layout of var: [shape[0], prod(shape[1:])] for rank >= 2, else one row.
struct Rows8 {
  int64_t rows = 1;
  int64_t row_size = 0;
};

// Codes must have var's shape, absmax [rows, blocks per row]; fills `rows`.
inline absl::Status CheckState8Shapes(const VariableInputs& vars,
                                      const std::vector<tensorflow::Tensor>& t, Rows8* rows) {
  const tensorflow::TensorShape& shape = t[0].shape();
  rows->rows = 1;
  rows->row_size = shape.num_elements();
  if (shape.dims() >= 2) {
    rows->rows = shape.dim_size(0);
    rows->row_size = 1;
    for (int d = 1; d < shape.dims(); ++d) rows->row_size *= shape.dim_size(d);
  }
  const tensorflow::TensorShape absmax_shape({rows->rows, BlocksPerRow(rows->row_size)});
  for (size_t i = 1; i < t.size(); ++i) {
    if (i % 2 == 1) {
      TF_RETURN_IF_ERROR(CheckSlotShape(vars.names[i], shape, t[i].shape()));
    } else if (!t[i].shape().IsSameSize(absmax_shape)) {
      return absl::InvalidArgumentError(absl::StrCat(
          vars.names[i], " must have shape ", absmax_shape.DebugString(),
          " (var's rows x blocks of 256 per row) for var of shape ", shape.DebugString(),
          ", got ", t[i].shape().DebugString()));
    }
  }
  return absl::OkStatus();
}

// The common head of the dense and sparse 8-bit shells, before any write: the scalar
// inputs checked and the coefficients read, the variables checked, their locks taken
// (`locks` holds them until the update is done), and var and its (codes, absmax) fetched
// copy-on-write (`t`). The caller checks the shapes (CheckState8Shapes).
struct State8Inputs {
  std::optional<tensorflow::VariableInputLockHolder> locks;
  Coefficients<float> k;
  std::vector<tensorflow::Tensor> t;
};

template <typename Device, typename T>
absl::Status LockState8(tensorflow::OpKernelContext* ctx, const InputIndex& in,
                        const Variant& variant, const VariableInputs& vars, bool use_locking,
                        State8Inputs* s) {
  TF_RETURN_IF_ERROR(CheckScalarInputs(ctx, in));
  TF_RETURN_IF_ERROR(ReadCoefficients<T>(ctx, in, variant, &s->k));
  TF_RETURN_IF_ERROR(CheckVariablesBeforeUpdate(ctx, vars, tensorflow::DataTypeToEnum<T>::v()));
  s->locks.emplace(tensorflow::MaybeLockVariableInputMutexesInOrder<Device, T>(
      ctx, use_locking, /*sparse=*/false, vars.ids));
  return GetState8Tensors<Device, T>(ctx, vars, use_locking, &s->t);
}

// The enabled states' pointers (disabled ones stay null).
inline void States8Of(const Variant& variant, std::vector<tensorflow::Tensor>* t,
                      cpu::State8* ms, cpu::State8* mom, cpu::State8* mg) {
  cpu::State8 state[3] = {};
  for (size_t i = 1; i + 1 < t->size(); i += 2) {
    state[i / 2] = {(*t)[i].flat<uint8_t>().data(), (*t)[i + 1].flat<float>().data()};
  }
  *ms = state[0];
  *mom = variant.momentum ? state[1] : cpu::State8{};
  *mg = variant.centered ? state[variant.momentum ? 2 : 1] : cpu::State8{};
}

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
  // 8-bit state (cc/state8.h): the slots are (codes, absmax) pairs.
  absl::Status Compute8(tensorflow::OpKernelContext* ctx) {
    TF_RETURN_IF_ERROR(State8Supported<T>(Dense8Launch<Device, T>::kAvailable));
    if constexpr (Dense8Launch<Device, T>::kAvailable) {
      const InputIndex in(static_cast<int>(vars_.ids.size()) - 1);
      // Everything is validated before the first write: a rejected call changes nothing.
      State8Inputs s;
      TF_RETURN_IF_ERROR(LockState8<Device, T>(ctx, in, variant_, vars_, use_locking_, &s));
      std::vector<tensorflow::Tensor>& t = s.t;
      const Coefficients<float>& k = s.k;
      Rows8 rows;
      TF_RETURN_IF_ERROR(CheckState8Shapes(vars_, t, &rows));
      const tensorflow::Tensor& grad = ctx->input(in.grad());
      if (!t[0].shape().IsSameSize(grad.shape())) {
        return absl::InvalidArgumentError(absl::StrCat("grad must have var's shape ",
                                                       t[0].shape().DebugString(), ", got ",
                                                       grad.shape().DebugString()));
      }
      Dense8Args<T> args{variant_, k, CpuData<T>(grad), CpuData<T>(&t[0]), {}, {}, {},
                         rows.row_size, rows.rows * BlocksPerRow(rows.row_size)};
      States8Of(variant_, &t, &args.ms, &args.mom, &args.mg);
      return Dense8Launch<Device, T>::Run(ctx, args);
    }
    return absl::OkStatus();
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
    OP_REQUIRES_OK(c, c->GetAttr("use_locking", &use_locking_));
    OP_REQUIRES_OK(c, c->GetAttr("slot_offset", &slot_offset_));
    OP_REQUIRES_OK(c, CheckSlotOffset(variant_, slot_offset_));
    vars_ = ListVariableInputs(variant_);
  }

  void Compute(tensorflow::OpKernelContext* ctx) override {
    if (variant_.state_bits == 8) {
      OP_REQUIRES_OK(ctx, Compute8(ctx));
      return;
    }
    const InputIndex in(static_cast<int>(vars_.ids.size()) - 1);
    const tensorflow::Tensor& grad = ctx->input(in.grad());
    const tensorflow::Tensor& indices = ctx->input(in.indices());
    // Everything is validated before the first write: a rejected call changes nothing.
    OP_REQUIRES_OK(ctx, CheckScalarInputs(ctx, in));
    Coefficients<cpu::ComputeType<CpuStorage<T>>> k;
    OP_REQUIRES_OK(ctx, ReadCoefficients<T>(ctx, in, variant_, &k));
    OP_REQUIRES_OK(ctx, CheckIndicesAndGrad(indices, grad));
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
    if (slot_offset_ >= 0) {  // flat state: var's range of each rank-1 buffer
      for (size_t i = 1; i < t.size(); ++i) {
        OP_REQUIRES(ctx, t[i].dims() == 1,
                    absl::InvalidArgumentError(absl::StrCat(
                        vars_.names[i], " (a flat buffer) must be rank 1, got shape ",
                        t[i].shape().DebugString())));
        OP_REQUIRES(ctx, slot_offset_ + t[0].NumElements() <= t[i].NumElements(),
                    absl::InvalidArgumentError(absl::StrCat(
                        "var (", t[0].NumElements(), " elements at slot_offset = ",
                        slot_offset_, ") does not fit in ", vars_.names[i], " of ",
                        t[i].NumElements(), " elements")));
      }
    } else {
      OP_REQUIRES_OK(ctx, CheckSlotShapes(vars_, t));
    }
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
                                    slot_offset_ >= 0
                                        ? AtSlotOffset(StateOf<T>(variant_, &t), slot_offset_)
                                        : StateOf<T>(variant_, &t)};
    OP_REQUIRES_OK(ctx, (SparseLaunch<Device, T, Index>::Run(ctx, args)));
  }

 private:
  // Indices a vector with one gradient row each, at most 2^31 - 1 of them.
  static absl::Status CheckIndicesAndGrad(const tensorflow::Tensor& indices,
                                          const tensorflow::Tensor& grad) {
    if (indices.dims() != 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "indices must be a vector, got shape ", indices.shape().DebugString()));
    }
    if (grad.dims() < 1) {
      return absl::InvalidArgumentError("grad must have shape [N] + var.shape[1:], got a scalar");
    }
    if (grad.dim_size(0) != indices.dim_size(0)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "grad has ", grad.dim_size(0), " rows but indices has ", indices.dim_size(0),
          " entries: they must match"));
    }
    if (indices.dim_size(0) > std::numeric_limits<int32_t>::max()) {
      return absl::InvalidArgumentError("more than 2^31 - 1 indices");
    }
    return absl::OkStatus();
  }

  // 8-bit state: a row is its own blocks, so a var of rank >= 2 only.
  absl::Status Compute8(tensorflow::OpKernelContext* ctx) {
    TF_RETURN_IF_ERROR(State8Supported<T>(Sparse8Launch<Device, T, Index>::kAvailable));
    if constexpr (Sparse8Launch<Device, T, Index>::kAvailable) {
      const InputIndex in(static_cast<int>(vars_.ids.size()) - 1);
      const tensorflow::Tensor& grad = ctx->input(in.grad());
      const tensorflow::Tensor& indices = ctx->input(in.indices());
      TF_RETURN_IF_ERROR(CheckIndicesAndGrad(indices, grad));
      State8Inputs s;
      TF_RETURN_IF_ERROR(LockState8<Device, T>(ctx, in, variant_, vars_, use_locking_, &s));
      std::vector<tensorflow::Tensor>& t = s.t;
      const Coefficients<float>& k = s.k;
      const tensorflow::TensorShape& var_shape = t[0].shape();
      if (var_shape.dims() < 2) {
        return absl::InvalidArgumentError(absl::StrCat(
            "state_bits=8: a sparse update needs var of rank >= 2 (each row its own blocks of "
            "256), got shape ", var_shape.DebugString(), "; keep this variable's slots at 32 "
            "bits or update it densely"));
      }
      Rows8 rows;
      TF_RETURN_IF_ERROR(CheckState8Shapes(vars_, t, &rows));
      tensorflow::TensorShape var_row = var_shape, grad_row = grad.shape();
      var_row.RemoveDim(0);
      grad_row.RemoveDim(0);
      if (!var_row.IsSameSize(grad_row)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "grad rows must have shape var.shape[1:] = ", var_row.DebugString(), ", got ",
            grad_row.DebugString()));
      }
      Sparse8Args<T, Index> args{variant_, k, CpuData<T>(grad), indices.flat<Index>().data(),
                                 indices.dim_size(0), rows.rows, rows.row_size,
                                 CpuData<T>(&t[0]), {}, {}, {}};
      States8Of(variant_, &t, &args.ms, &args.mom, &args.mg);
      return Sparse8Launch<Device, T, Index>::Run(ctx, args);
    }
    return absl::OkStatus();
  }

  Variant variant_;
  bool use_locking_ = false;
  int64_t slot_offset_ = -1;
  VariableInputs vars_;
};

}  // namespace tf_rmsprop_ops

#endif  // TF_RMSPROP_OPS_CC_KERNELS_RMSPROP_X_SHELLS_H_
