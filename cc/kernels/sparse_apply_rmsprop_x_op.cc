// CPU OpKernel shell of SparseApplyRMSpropX.
//
// Duplicated indices are summed first and then updated once (as Keras deduplicates), rows
// not named are untouched (lazy, as TF's sparse kernels). Work and temporaries are
// proportional to the number of indices, never to the table: one hash pass deduplicates
// and validates, then the unique rows are updated in parallel, each in one fused pass.
#define EIGEN_USE_THREADS

#include <algorithm>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cc/kernels/rmsprop_x_kernel_util.h"
#include "cc/kernels/unique_rows.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/kernels/training_op_helpers.h"
#include "tensorflow/core/platform/threadpool.h"

namespace tf_rmsprop_ops {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using CPUDevice = Eigen::ThreadPoolDevice;

// Whether the variable at `input` is in TF's copy-on-read mode (false when it cannot be
// looked up: GetInputTensorFromVariable then reports the error).
bool InCopyOnReadMode(OpKernelContext* ctx, int input) {
  tensorflow::core::RefCountPtr<tensorflow::Var> var;
  if (!tensorflow::LookupResource(ctx, tensorflow::HandleFromInput(ctx, input), &var).ok()) {
    return false;
  }
  return var->copy_on_read_mode.load();
}

template <typename T, typename Index>
class SparseApplyRMSpropXOp : public OpKernel {
 public:
  explicit SparseApplyRMSpropXOp(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, ParseVariant(c, &variant_));
    OP_REQUIRES_OK(c, c->GetAttr("use_locking", &use_locking_));
    vars_ = ListVariableInputs(variant_);
  }

  void Compute(OpKernelContext* ctx) override {
    const InputIndex in(static_cast<int>(vars_.ids.size()) - 1);
    const Tensor& grad = ctx->input(in.grad());
    const Tensor& indices = ctx->input(in.indices());
    // Everything is validated before the first write: a rejected call changes nothing.
    OP_REQUIRES_OK(ctx, CheckScalarInputs(ctx, in));
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
    // * Already copy-on-read (a TF sparse op or gather switched it; the mode is sticky):
    //   TF's sparse protocol, in place; without use_locking a shared lock (Hogwild!, as
    //   TF's sparse kernels), readers copy.
    // * Otherwise the table stays in TF's default mode, where a dense read
    //   (ReadVariableOp, e.g. Keras' Embedding: `take` on the variable's value) aliases the
    //   buffer instead of copying all of it on every read: the update takes the exclusive
    //   lock and writes in place, copying the table first only while a reader still holds
    //   the buffer (copy-on-write, as the dense ops). TF's sparse kernels would switch the
    //   table to copy-on-read, and every later dense read would copy it (27 ms per step
    //   for a [1M, 64] table on the machine of BENCHMARKS.md).
    const bool sparse_access = InCopyOnReadMode(ctx, vars_.ids[0]);
    auto locks = tensorflow::MaybeLockVariableInputMutexesInOrder<CPUDevice, T>(
        ctx, use_locking_, sparse_access, vars_.ids);
    std::vector<Tensor> t(vars_.ids.size());
    for (size_t i = 0; i < t.size(); ++i) {
      OP_REQUIRES_OK(ctx, tensorflow::GetInputTensorFromVariable<CPUDevice, T>(
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

    const int64_t n = indices.dim_size(0);
    const int64_t row_size = var_row.num_elements();
    UniqueRows& unique = ThreadLocalUniqueRows();
    OP_REQUIRES_OK(ctx, unique.Find(indices.flat<Index>().data(), n, var_shape.dim_size(0)));
    if (row_size == 0) return;

    const auto k = ReadCoefficients<T>(ctx, in, variant_);
    const auto* g = CpuData<T>(grad);
    const StatePointers<T> s = StateOf<T>(variant_, &t);
    const cpu::SparseRows rows = unique.View(row_size);
    const Variant variant = variant_;
    auto update_rows = [&](int64_t begin, int64_t end) {
      cpu::UpdateRows(variant, k, g, s.var, s.ms, s.mom, s.mg, rows, begin, end);
    };
    const auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    const int64_t threads = std::min<int64_t>(workers->num_threads, unique.size());
    if (threads <= 1) {
      update_rows(0, unique.size());
      return;
    }
    // One contiguous run of rows per thread: each run restarts the row prefetch pipeline,
    // and cost-model shards (tensorflow::Shard) made many short runs; 5-7% slower per step
    // in a same-process A/B (10k indices; 2 or 4 runs per thread: 1-2% slower).
    workers->workers->ParallelFor(
        unique.size(),
        tensorflow::thread::ThreadPool::SchedulingParams(
            tensorflow::thread::ThreadPool::SchedulingStrategy::kFixedBlockSize, std::nullopt,
            (unique.size() + threads - 1) / threads),
        update_rows);
  }

 private:
  Variant variant_;
  bool use_locking_ = false;
  VariableInputs vars_;
};

#define REGISTER_CPU_INDEX(T, Index)                                          \
  REGISTER_KERNEL_BUILDER(Name("SparseApplyRMSpropX")                         \
                              .Device(tensorflow::DEVICE_CPU)                 \
                              .TypeConstraint<T>("T")                         \
                              .TypeConstraint<Index>("Tindices"),             \
                          SparseApplyRMSpropXOp<T, Index>);
#define REGISTER_CPU(T)                  \
  REGISTER_CPU_INDEX(T, int32_t);        \
  REGISTER_CPU_INDEX(T, int64_t);
TF_CALL_half(REGISTER_CPU);
TF_CALL_bfloat16(REGISTER_CPU);
TF_CALL_float(REGISTER_CPU);
TF_CALL_double(REGISTER_CPU);
#undef REGISTER_CPU
#undef REGISTER_CPU_INDEX

}  // namespace tf_rmsprop_ops
