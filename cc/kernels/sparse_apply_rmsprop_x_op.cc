// SparseApplyRMSpropX on the CPU: the shared shell (rmsprop_x_shells.h) with the CPU
// launch. Duplicated indices are summed first and then updated once (as Keras
// deduplicates), rows not named are untouched (lazy, as TF's sparse kernels). Work and
// temporaries are proportional to the number of indices, never to the table: one hash pass
// deduplicates and validates, then the unique rows are updated in parallel, each in one
// fused pass.
#define EIGEN_USE_THREADS

#include <algorithm>
#include <type_traits>

#include "cc/kernels/rmsprop_x_shells.h"
#include "cc/kernels/unique_rows.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/platform/threadpool.h"

namespace tf_rmsprop_ops {

using CPUDevice = Eigen::ThreadPoolDevice;

// Deduplicates (and validates) `indices`, then calls update(rows, begin, end) over the
// unique rows: one contiguous run of rows per worker thread. Each run restarts the row
// prefetch pipeline, and cost-model shards (tensorflow::Shard) made many short runs; 5-7%
// slower per step in a same-process A/B (10k indices; 2 or 4 runs per thread: 1-2% slower).
template <typename Index, typename Update>
absl::Status ForUniqueRows(tensorflow::OpKernelContext* ctx, const Index* indices,
                           int64_t num_indices, int64_t num_rows, int64_t row_size,
                           const Update& update) {
  UniqueRows& unique = ThreadLocalUniqueRows();
  TF_RETURN_IF_ERROR(unique.Find(indices, num_indices, num_rows));  // validates
  if (row_size == 0) return absl::OkStatus();
  const cpu::SparseRows rows = unique.View(row_size);
  auto update_rows = [&](int64_t begin, int64_t end) { update(rows, begin, end); };
  const auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
  const int64_t threads = std::min<int64_t>(workers->num_threads, unique.size());
  if (threads <= 1) {
    update_rows(0, unique.size());
    return absl::OkStatus();
  }
  workers->workers->ParallelFor(
      unique.size(),
      tensorflow::thread::ThreadPool::SchedulingParams(
          tensorflow::thread::ThreadPool::SchedulingStrategy::kFixedBlockSize, std::nullopt,
          (unique.size() + threads - 1) / threads),
      update_rows);
  return absl::OkStatus();
}

template <typename T, typename Index>
struct SparseLaunch<CPUDevice, T, Index> {
  static absl::Status Run(tensorflow::OpKernelContext* ctx, const SparseArgs<T, Index>& a) {
    const StatePointers<T>& s = a.state;
    return ForUniqueRows(ctx, a.indices, a.num_indices, a.rows, a.row_size,
                         [&](const cpu::SparseRows& rows, int64_t begin, int64_t end) {
                           cpu::UpdateRows(a.variant, a.k, a.grad, s.var, s.ms, s.mom, s.mg,
                                           rows, begin, end);
                         });
  }
};

// 8-bit state: the same deduplication, then each unique row's blocks (a row is its own
// blocks: one thread writes a row's codes and absmax).
template <typename T, typename Index>
struct Sparse8Launch<CPUDevice, T, Index> {
  static constexpr bool kAvailable = !std::is_same_v<T, double>;  // float32 state math
  static absl::Status Run(tensorflow::OpKernelContext* ctx, const Sparse8Args<T, Index>& a) {
    return ForUniqueRows(ctx, a.indices, a.num_indices, a.rows, a.row_size,
                         [&](const cpu::SparseRows& rows, int64_t begin, int64_t end) {
                           cpu::UpdateRows8(a.variant, a.k, a.grad, a.var, a.ms, a.mom, a.mg,
                                            rows, begin, end);
                         });
  }
};

#define REGISTER_CPU(T, Index)                                           \
  REGISTER_KERNEL_BUILDER(Name("SparseApplyRMSpropX")                    \
                              .Device(tensorflow::DEVICE_CPU)            \
                              .TypeConstraint<T>("T")                    \
                              .TypeConstraint<Index>("Tindices"),        \
                          SparseApplyRMSpropXOp<CPUDevice, T, Index>);
#define REGISTER_CPU_ALL_INDICES(T) REGISTER_CPU(T, int32_t) REGISTER_CPU(T, int64_t)
TF_CALL_half(REGISTER_CPU_ALL_INDICES);
TF_CALL_bfloat16(REGISTER_CPU_ALL_INDICES);
TF_CALL_float(REGISTER_CPU_ALL_INDICES);
TF_CALL_double(REGISTER_CPU_ALL_INDICES);
#undef REGISTER_CPU_ALL_INDICES
#undef REGISTER_CPU

}  // namespace tf_rmsprop_ops
