// ApplyRMSpropX on the CPU: the shared shell (rmsprop_x_shells.h) with the CPU launch,
// which shards the span loops of cc/cpu/ (the formula of cc/rmsprop_x_update.h) over the
// intra-op thread pool.
#define EIGEN_USE_THREADS

#include <algorithm>
#include <type_traits>

#include "cc/kernels/rmsprop_x_shells.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/platform/threadpool.h"

namespace tf_rmsprop_ops {

using CPUDevice = Eigen::ThreadPoolDevice;

// Elements per unit of sharding: a multiple of every vector width, 16 KiB of float32 per
// array, so shards never split a cache line and the loop bodies stay long.
constexpr int64_t kBlock = 4096;

// Runs update(begin, end) over units [0, units): below `min_parallel` units or on one
// thread in one call, else in a few equal, contiguous shards per thread (at least
// `min_per_shard` units each): long streams for the prefetchers, and enough shards to even
// out a thread that starts late.
template <typename Update>
void ForShards(tensorflow::OpKernelContext* ctx, int64_t units, int64_t min_parallel,
               int64_t min_per_shard, const Update& update) {
  const auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
  if (workers->num_threads <= 1 || units < min_parallel) {
    update(0, units);
    return;
  }
  const int64_t per_shard = std::max<int64_t>(min_per_shard, units / (4 * workers->num_threads));
  workers->workers->ParallelFor(
      units,
      tensorflow::thread::ThreadPool::SchedulingParams(
          tensorflow::thread::ThreadPool::SchedulingStrategy::kFixedBlockSize, std::nullopt,
          per_shard),
      update);
}

template <typename T>
struct DenseLaunch<CPUDevice, T> {
  static absl::Status Run(tensorflow::OpKernelContext* ctx, const DenseArgs<T>& a) {
    const int64_t n = a.n;
    ForShards(ctx, (n + kBlock - 1) / kBlock, /*min_parallel=*/4, /*min_per_shard=*/1,
              [&](int64_t begin, int64_t end) {
                const int64_t lo = begin * kBlock, hi = std::min(n, end * kBlock);
                const StatePointers<T> s = a.state.At(lo);
                cpu::UpdateSpan(a.variant, a.k, a.grad + lo, s.var, s.ms, s.mom, s.mg, hi - lo);
              });
    return absl::OkStatus();
  }
};

// 8-bit state: blocks of 256 are the unit (each block's codes and absmax are written by
// one thread, so a call never tears a block).
template <typename T>
struct Dense8Launch<CPUDevice, T> {
  static constexpr bool kAvailable = !std::is_same_v<T, double>;  // float32 state math
  static absl::Status Run(tensorflow::OpKernelContext* ctx, const Dense8Args<T>& a) {
    ForShards(ctx, a.blocks, /*min_parallel=*/64, /*min_per_shard=*/16,
              [&](int64_t begin, int64_t end) {
                cpu::UpdateBlocks8(a.variant, a.k, a.grad, a.var, a.ms, a.mom, a.mg,
                                   a.row_size, begin, end);
              });
    return absl::OkStatus();
  }
};

#define REGISTER_CPU(T)                                                              \
  REGISTER_KERNEL_BUILDER(                                                           \
      Name("ApplyRMSpropX").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T"),   \
      ApplyRMSpropXOp<CPUDevice, T>);
TF_CALL_half(REGISTER_CPU);
TF_CALL_bfloat16(REGISTER_CPU);
TF_CALL_float(REGISTER_CPU);
TF_CALL_double(REGISTER_CPU);
#undef REGISTER_CPU

}  // namespace tf_rmsprop_ops
