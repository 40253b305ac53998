// The multi-tensor CUDA kernel (ApplyRMSpropXMulti): one launch updates many tensors, in
// the manner of NVIDIA apex's multi_tensor_apply. Includes no TensorFlow header.
#include <cstdint>

#include "cc/cuda/rmsprop_x_cuda.h"
#include "cc/cuda/rmsprop_x_cuda_device.cuh"

namespace tf_rmsprop_ops {
namespace cuda {
namespace {

// One launch's work, passed by value as the kernel's arguments (< 4 KB with the
// coefficients): the tensors' pointers and sizes, and for every block its tensor and chunk.
template <typename T>
struct MultiLaunchArgs {
  const T* grad[kMultiTensors];
  T* var[kMultiTensors];
  T* ms[kMultiTensors];
  T* mom[kMultiTensors];
  T* mg[kMultiTensors];
  int64_t n[kMultiTensors];
  int32_t chunk_of_block[kMultiBlocks];
  uint8_t tensor_of_block[kMultiBlocks];
  bool vectorised[kMultiTensors];  // every pointer of the tensor 16-byte aligned
};
static_assert(sizeof(MultiLaunchArgs<double>) + sizeof(Coefficients<double>) < 4000,
              "kernel arguments must stay under CUDA's 4 KB limit");
static_assert(kMultiTensors < 256, "tensor_of_block is a uint8_t");
static_assert(kMultiChunk % 8 == 0, "chunks start on whole 128-bit vectors");

template <bool kCentered, bool kMomentum, typename T>
__global__ void __launch_bounds__(kThreads)
    MultiKernel(Coefficients<ComputeType<T>> k, MultiLaunchArgs<T> a) {
  const int t = a.tensor_of_block[blockIdx.x];
  const int64_t begin = static_cast<int64_t>(a.chunk_of_block[blockIdx.x]) * kMultiChunk;
  const int64_t end = min(begin + kMultiChunk, a.n[t]);
  const T* __restrict__ grad = a.grad[t];
  T* __restrict__ var = a.var[t];
  T* __restrict__ ms = a.ms[t];
  T* __restrict__ mom = a.mom[t];
  T* __restrict__ mg = a.mg[t];
  int64_t scalar_from = begin;
  if (a.vectorised[t]) {
    constexpr int kSize = Vec<T>::kSize;
    const int64_t vec_end = begin + (end - begin) / kSize * kSize;  // begin is a multiple
    for (int64_t i = begin + static_cast<int64_t>(threadIdx.x) * kSize; i < vec_end;
         i += static_cast<int64_t>(blockDim.x) * kSize) {
      UpdateVecAt<kCentered, kMomentum, T>(k, grad, var, ms, mom, mg, i);
    }
    scalar_from = vec_end;
  }
  for (int64_t i = scalar_from + threadIdx.x; i < end; i += blockDim.x) {
    UpdateAt<kCentered, kMomentum, T>(k, grad, var, ms, mom, mg, i);
  }
}

template <bool kCentered, bool kMomentum, typename T>
cudaError_t Multi(const Coefficients<ComputeType<T>>& k, const MultiTensor<T>* tensors,
                  int64_t count, cudaStream_t stream) {
  MultiLaunchArgs<T> a;
  int tensors_in = 0, blocks_in = 0;
  auto place = [&](const MultiTensor<T>& x) {
    const int t = tensors_in++;
    a.grad[t] = x.grad;
    a.var[t] = x.var;
    a.ms[t] = x.ms;
    a.mom[t] = x.mom;
    a.mg[t] = x.mg;
    a.n[t] = x.n;
    a.vectorised[t] = Aligned16(x.grad) && Aligned16(x.var) && Aligned16(x.ms) &&
                      Aligned16(x.mom) && Aligned16(x.mg);
  };
  auto launch = [&]() {
    const int blocks = blocks_in;
    blocks_in = 0;
    return Launch(MultiKernel<kCentered, kMomentum, T>, blocks, kThreads, stream, k, a);
  };
  for (int64_t i = 0; i < count; ++i) {
    const MultiTensor<T>& x = tensors[i];
    if (x.n <= 0) continue;
    place(x);
    const int64_t chunks = (x.n + kMultiChunk - 1) / kMultiChunk;
    for (int64_t c = 0; c < chunks; ++c) {
      a.tensor_of_block[blocks_in] = static_cast<uint8_t>(tensors_in - 1);
      a.chunk_of_block[blocks_in] = static_cast<int32_t>(c);
      ++blocks_in;
      const bool blocks_full = blocks_in == kMultiBlocks;
      const bool last_chunk = c + 1 == chunks;
      if (blocks_full || (last_chunk && tensors_in == kMultiTensors)) {
        const cudaError_t e = launch();
        if (e != cudaSuccess) return e;
        tensors_in = 0;
        if (!last_chunk) place(x);  // the rest of this tensor starts the next launch
      }
    }
  }
  if (blocks_in > 0) return launch();
  return cudaSuccess;
}

}  // namespace

template <typename T>
cudaError_t LaunchMulti(const Variant& variant, const Coefficients<ComputeType<T>>& k,
                        const MultiTensor<T>* tensors, int64_t count, cudaStream_t stream) {
  if (variant.centered) {
    return variant.momentum ? Multi<true, true>(k, tensors, count, stream)
                            : Multi<true, false>(k, tensors, count, stream);
  }
  return variant.momentum ? Multi<false, true>(k, tensors, count, stream)
                          : Multi<false, false>(k, tensors, count, stream);
}

template cudaError_t LaunchMulti<float>(const Variant&, const Coefficients<float>&,
                                        const MultiTensor<float>*, int64_t, cudaStream_t);
template cudaError_t LaunchMulti<double>(const Variant&, const Coefficients<double>&,
                                         const MultiTensor<double>*, int64_t, cudaStream_t);
template cudaError_t LaunchMulti<Half>(const Variant&, const Coefficients<float>&,
                                       const MultiTensor<Half>*, int64_t, cudaStream_t);
template cudaError_t LaunchMulti<BFloat16>(const Variant&, const Coefficients<float>&,
                                           const MultiTensor<BFloat16>*, int64_t, cudaStream_t);

}  // namespace cuda
}  // namespace tf_rmsprop_ops
