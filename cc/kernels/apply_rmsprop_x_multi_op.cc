// ApplyRMSpropXMulti on the CPU: the shared shell (cc/kernels/rmsprop_x_multi_shell.h:
// validation, locking, copy-on-write) with ONE parallel pass over a flat list of
// equal-sized element ranges that cut across the variables, so small variables share a
// thread's range and a large one is split between threads. The per-element work is the
// span loop of cc/cpu/ (cc/rmsprop_x_update.h), as ApplyRMSpropX.
#define EIGEN_USE_THREADS

#include <algorithm>
#include <type_traits>
#include <vector>

#include "cc/kernels/rmsprop_x_multi_shell.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/platform/threadpool.h"

namespace tf_rmsprop_ops {

using CPUDevice = Eigen::ThreadPoolDevice;

// Range boundaries fall on multiples of this many elements (whole vectors and cache lines).
constexpr int64_t kAlign = 64;
// No range is smaller than this (a thread-pool task has a fixed cost of a few microseconds).
constexpr int64_t kMinRange = 16384;

// The one parallel pass of both state formats: [0, total) units (elements, or 8-bit blocks)
// cut into at most 4 ranges per thread of at least `min_range` units, each boundary on a
// multiple of `align`; `pieces(lo, hi)` updates the pieces of every variable in [lo, hi)
// (`start`: each variable's first unit, start[N] = total).
template <typename Pieces>
void ParallelRanges(tensorflow::OpKernelContext* ctx, const std::vector<int64_t>& start,
                    int64_t min_range, int64_t align, const Pieces& pieces) {
  const int n = static_cast<int>(start.size()) - 1;
  const int64_t total = start[n];
  auto update_range = [&](int64_t lo, int64_t hi) {
    int i = static_cast<int>(std::upper_bound(start.begin(), start.end(), lo) - start.begin()) - 1;
    for (; i < n && start[i] < hi; ++i) {
      const int64_t a = std::max(lo, start[i]) - start[i];
      const int64_t b = std::min(hi, start[i + 1]) - start[i];
      if (a < b) pieces(i, a, b);
    }
  };
  const auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
  const int64_t ranges = std::min<int64_t>(4 * workers->num_threads,
                                           std::max<int64_t>(1, total / min_range));
  if (workers->num_threads <= 1 || ranges <= 1) {
    update_range(0, total);
    return;
  }
  auto boundary = [&](int64_t r) {
    return r >= ranges ? total : std::min(total, (total * r / ranges) / align * align);
  };
  workers->workers->ParallelFor(
      ranges,
      tensorflow::thread::ThreadPool::SchedulingParams(
          tensorflow::thread::ThreadPool::SchedulingStrategy::kFixedBlockSize, std::nullopt, 1),
      [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) update_range(boundary(r), boundary(r + 1));
      });
}

template <typename T>
struct MultiLaunch<CPUDevice, T> {
  static absl::Status Run(tensorflow::OpKernelContext* ctx, const MultiArgs<T>& args) {
    ParallelRanges(ctx, args.start, kMinRange, kAlign, [&](int i, int64_t a, int64_t b) {
      const StatePointers<T> s = args.state[i].At(a);
      cpu::UpdateSpan(args.variant, args.k, args.grads[i] + a, s.var, s.ms, s.mom, s.mg, b - a);
    });
    return absl::OkStatus();
  }
};

// 8-bit state: the same pass over whole blocks (a block's absmax is one block's max, so a cut
// never falls inside a block), each range's pieces updated block by block; at least
// kMinRange elements' worth of blocks per range.
template <typename T>
struct Multi8Launch<CPUDevice, T> {
  static constexpr bool kAvailable = !std::is_same_v<T, double>;  // float32 state math
  static absl::Status Run(tensorflow::OpKernelContext* ctx, const Multi8Args<T>& a) {
    ParallelRanges(ctx, a.start, kMinRange / kBlock8, 1, [&](int i, int64_t first, int64_t last) {
      cpu::UpdateBlocks8(a.variant, a.k, a.grads[i], a.var[i], a.ms[i], a.mom[i], a.mg[i],
                         a.row_size[i], first, last);
    });
    return absl::OkStatus();
  }
};

#define REGISTER_CPU(T)                                                                  \
  REGISTER_KERNEL_BUILDER(                                                               \
      Name("ApplyRMSpropXMulti").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T"),  \
      ApplyRMSpropXMultiOp<CPUDevice, T>);
TF_CALL_half(REGISTER_CPU);
TF_CALL_bfloat16(REGISTER_CPU);
TF_CALL_float(REGISTER_CPU);
TF_CALL_double(REGISTER_CPU);
#undef REGISTER_CPU

}  // namespace tf_rmsprop_ops
