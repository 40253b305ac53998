// CPU OpKernel shell of ApplyRMSpropX: lookup, validation, locking, threading. The math is
// in cc/cpu/ (span loops over cc/rmsprop_x_update.h).
#define EIGEN_USE_THREADS

#include "cc/kernels/rmsprop_x_kernel_util.h"
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

// Elements per unit of sharding: a multiple of every vector width, 16 KiB of float32 per
// array, so shards never split a cache line and the loop bodies stay long.
constexpr int64_t kBlock = 4096;

template <typename T>
class ApplyRMSpropXOp : public OpKernel {
 public:
  explicit ApplyRMSpropXOp(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, ParseVariant(c, &variant_));
    OP_REQUIRES_OK(c, c->GetAttr("use_locking", &use_locking_));
    vars_ = ListVariableInputs(variant_);
  }

  void Compute(OpKernelContext* ctx) override {
    const InputIndex in(static_cast<int>(vars_.ids.size()) - 1);
    // Everything is validated before the first write: a rejected call changes nothing.
    OP_REQUIRES_OK(ctx, CheckScalarInputs(ctx, in));
    OP_REQUIRES_OK(ctx, CheckVariablesBeforeUpdate(ctx, vars_, tensorflow::DataTypeToEnum<T>::v()));
    auto locks = tensorflow::MaybeLockVariableInputMutexesInOrder<CPUDevice, T>(
        ctx, use_locking_, /*sparse=*/false, vars_.ids);
    std::vector<Tensor> t(vars_.ids.size());
    for (size_t i = 0; i < t.size(); ++i) {
      // Copy-on-write: a buffer still shared with a reader is copied first.
      OP_REQUIRES_OK(ctx, tensorflow::GetInputTensorFromVariable<CPUDevice, T>(
                              ctx, vars_.ids[i], use_locking_, /*sparse=*/false, &t[i]));
    }
    OP_REQUIRES_OK(ctx, CheckSlotShapes(vars_, t));
    const Tensor& grad = ctx->input(in.grad());
    OP_REQUIRES(ctx, t[0].shape().IsSameSize(grad.shape()),
                absl::InvalidArgumentError(absl::StrCat("grad must have var's shape ",
                                                        t[0].shape().DebugString(), ", got ",
                                                        grad.shape().DebugString())));

    const auto k = ReadCoefficients<T>(ctx, in, variant_);
    const int64_t n = grad.NumElements();
    const auto* g = CpuData<T>(grad);
    const StatePointers<T> state = StateOf<T>(variant_, &t);
    const Variant variant = variant_;
    auto update_blocks = [&](int64_t begin, int64_t end) {
      const int64_t lo = begin * kBlock, hi = std::min(n, end * kBlock);
      const StatePointers<T> s = state.At(lo);
      cpu::UpdateSpan(variant, k, g + lo, s.var, s.ms, s.mom, s.mg, hi - lo);
    };
    const auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    const int64_t blocks = (n + kBlock - 1) / kBlock;
    if (workers->num_threads <= 1 || blocks < 4) {
      update_blocks(0, blocks);
      return;
    }
    // A few equal, contiguous shards per thread: long streams for the prefetchers, and
    // enough shards to even out a thread that starts late.
    const int64_t per_shard = std::max<int64_t>(1, blocks / (4 * workers->num_threads));
    workers->workers->ParallelFor(
        blocks,
        tensorflow::thread::ThreadPool::SchedulingParams(
            tensorflow::thread::ThreadPool::SchedulingStrategy::kFixedBlockSize, std::nullopt,
            per_shard),
        update_blocks);
  }

 private:
  Variant variant_;
  bool use_locking_ = false;
  VariableInputs vars_;
};

#define REGISTER_CPU(T)                                                              \
  REGISTER_KERNEL_BUILDER(                                                           \
      Name("ApplyRMSpropX").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T"),   \
      ApplyRMSpropXOp<T>);
TF_CALL_half(REGISTER_CPU);
TF_CALL_bfloat16(REGISTER_CPU);
TF_CALL_float(REGISTER_CPU);
TF_CALL_double(REGISTER_CPU);
#undef REGISTER_CPU

}  // namespace tf_rmsprop_ops
