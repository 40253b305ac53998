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

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "cc/kernels/rmsprop_x_kernel_util.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/kernels/training_op_helpers.h"
#include "tensorflow/core/util/work_sharder.h"

namespace tf_rmsprop_ops {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using CPUDevice = Eigen::ThreadPoolDevice;

// How many unique rows ahead the update loop prefetches (enough to cover DRAM latency
// with ~10 rows in flight per thread, few enough to stay in L1/L2).
constexpr int64_t kPrefetchRows = 16;

// The positions of the gradient rows that share one index, as a chain in input order
// (so that sums are deterministic): first[u] -> next[first[u]] -> ... -> -1.
struct UniqueRows {
  std::vector<int64_t> row;    // the index value of unique row u
  std::vector<int32_t> first;  // its first position in indices
  std::vector<int32_t> next;   // per position: the next position with the same index, or -1
};

// Deduplicates and range-checks `indices` in one pass; nothing has been written when it
// returns an error.
template <typename Index>
absl::Status FindUniqueRows(const Index* indices, int64_t n, int64_t num_rows, UniqueRows* out) {
  absl::flat_hash_map<Index, int32_t> unique_of;
  unique_of.reserve(n);
  std::vector<int32_t> last;
  out->next.assign(n, -1);
  for (int64_t i = 0; i < n; ++i) {
    const Index index = indices[i];
    if (index < 0 || index >= num_rows) {
      return absl::InvalidArgumentError(absl::StrCat(
          "indices[", i, "] = ", index, " is not in [0, ", num_rows,
          "): every index must name a row of var. Nothing was updated."));
    }
    auto [it, inserted] = unique_of.try_emplace(index, static_cast<int32_t>(out->row.size()));
    if (inserted) {
      out->row.push_back(index);
      out->first.push_back(static_cast<int32_t>(i));
      last.push_back(static_cast<int32_t>(i));
    } else {
      out->next[last[it->second]] = static_cast<int32_t>(i);
      last[it->second] = static_cast<int32_t>(i);
    }
  }
  return absl::OkStatus();
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
    using C = cpu::ComputeType<CpuStorage<T>>;
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
    // sparse=true: without use_locking the update holds a shared lock (Hogwild!, as TF's
    // sparse kernels); the variables are switched to copy-on-read so readers copy.
    auto locks = tensorflow::MaybeLockVariableInputMutexesInOrder<CPUDevice, T>(
        ctx, use_locking_, /*sparse=*/true, vars_.ids);
    std::vector<Tensor> t(vars_.ids.size());
    for (size_t i = 0; i < t.size(); ++i) {
      OP_REQUIRES_OK(ctx, tensorflow::GetInputTensorFromVariable<CPUDevice, T>(
                              ctx, vars_.ids[i], use_locking_, /*sparse=*/true, &t[i]));
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
    UniqueRows unique;
    OP_REQUIRES_OK(ctx, FindUniqueRows(indices.flat<Index>().data(), n, var_shape.dim_size(0),
                                       &unique));
    if (row_size == 0) return;

    const auto k = ReadCoefficients<T>(ctx, in, variant_);
    const auto* g = CpuData<T>(grad);
    const StatePointers<T> state = StateOf<T>(variant_, &t);
    const Variant variant = variant_;
    const int64_t row_bytes = row_size * static_cast<int64_t>(sizeof(T));
    auto prefetch = [&](int64_t u) {
      const StatePointers<T> s = state.At(unique.row[u] * row_size);
      for (const void* row : {static_cast<const void*>(s.var), static_cast<const void*>(s.ms),
                              static_cast<const void*>(s.mom), static_cast<const void*>(s.mg),
                              static_cast<const void*>(g + unique.first[u] * row_size)}) {
        if (row != nullptr) cpu::PrefetchRowForWrite(row, row_bytes);
      }
    };
    auto update_rows = [&](int64_t begin, int64_t end) {
      std::vector<C> sum;  // one summed row, for indices that repeat
      for (int64_t u = begin; u < std::min(end, begin + kPrefetchRows); ++u) prefetch(u);
      for (int64_t u = begin; u < end; ++u) {
        if (u + kPrefetchRows < end) prefetch(u + kPrefetchRows);
        const StatePointers<T> s = state.At(unique.row[u] * row_size);
        int32_t pos = unique.first[u];
        if (unique.next[pos] < 0) {  // the common case: the row appears once, no copy
          cpu::UpdateSpan(variant, k, g + pos * row_size, s.var, s.ms, s.mom, s.mg, row_size);
          continue;
        }
        sum.resize(row_size);
        cpu::LoadRow(g + pos * row_size, sum.data(), row_size);
        for (pos = unique.next[pos]; pos >= 0; pos = unique.next[pos]) {
          cpu::AddRow(g + pos * row_size, sum.data(), row_size);
        }
        cpu::UpdateSpan(variant, k, static_cast<const C*>(sum.data()), s.var, s.ms, s.mom, s.mg,
                        row_size);
      }
    };
    const auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    // ~1 ns per element of a row.
    tensorflow::Shard(workers->num_threads, workers->workers,
                      static_cast<int64_t>(unique.row.size()), row_size + 16, update_rows);
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
