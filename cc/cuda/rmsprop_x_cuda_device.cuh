// Device-side pieces shared by the CUDA kernels (rmsprop_x_cuda.cu.cc, the dense and sparse
// kernels; rmsprop_x_cuda_multi.cu.cc, the multi-tensor kernel): storage <-> compute
// conversions, one element's update (cc/rmsprop_x_update.h), 128-bit vectors, the element
// loops' bodies. Included
// only by .cu.cc files; no TensorFlow header.
#ifndef TF_RMSPROP_OPS_CC_CUDA_RMSPROP_X_CUDA_DEVICE_CUH_
#define TF_RMSPROP_OPS_CC_CUDA_RMSPROP_X_CUDA_DEVICE_CUH_

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cc/cuda/rmsprop_x_cuda.h"

namespace tf_rmsprop_ops {
namespace cuda {
namespace {

constexpr int kThreads = 256;
// Grid-stride beyond this many blocks. The CPU emulation (tests/gpu/emu/) lowers it, so that
// the tests' small tensors take the grid-stride loops too.
#ifndef RMSPROPX_CUDA_MAX_BLOCKS
#define RMSPROPX_CUDA_MAX_BLOCKS 8192
#endif
constexpr int64_t kMaxBlocks = RMSPROPX_CUDA_MAX_BLOCKS;

// Storage <-> compute conversions (the same rounding as the CPU loops: nearest even; a
// bfloat16 NaN stays a quiet NaN).
__device__ __forceinline__ float ToCompute(Half h) { return __half2float(__ushort_as_half(h.bits)); }
__device__ __forceinline__ float ToCompute(BFloat16 b) {
  return __uint_as_float(static_cast<uint32_t>(b.bits) << 16);
}
__device__ __forceinline__ float ToCompute(float x) { return x; }
__device__ __forceinline__ double ToCompute(double x) { return x; }

template <typename T> __device__ __forceinline__ T FromCompute(ComputeType<T> x);
template <> __device__ __forceinline__ float FromCompute<float>(float x) { return x; }
template <> __device__ __forceinline__ double FromCompute<double>(double x) { return x; }
template <> __device__ __forceinline__ Half FromCompute<Half>(float x) {
  return Half{__half_as_ushort(__float2half_rn(x))};
}
template <> __device__ __forceinline__ BFloat16 FromCompute<BFloat16>(float x) {
  const uint32_t u = __float_as_uint(x);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uint32_t nan = (u >> 16) | 0x40u;
  return BFloat16{static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded)};
}

template <bool kCentered, bool kMomentum, typename T>
__device__ __forceinline__ void UpdateOne(const Coefficients<ComputeType<T>>& k,
                                          ComputeType<T> g, T& var, T& ms, T* mom, T* mg) {
  using C = ComputeType<T>;
  C v = ToCompute(var), s = ToCompute(ms);
  C m = kMomentum ? ToCompute(*mom) : C(0);
  C a = kCentered ? ToCompute(*mg) : C(0);
  UpdateElement<kCentered, kMomentum, C>(k, g, v, s, m, a);
  var = FromCompute<T>(v);
  ms = FromCompute<T>(s);
  if (kMomentum) *mom = FromCompute<T>(m);
  if (kCentered) *mg = FromCompute<T>(a);
}

// 16 bytes of T: one 128-bit load or store when the pointer is 16-byte aligned.
template <typename T>
struct alignas(16) Vec {
  static constexpr int kSize = 16 / sizeof(T);
  T v[kSize];
};

// The element loops' bodies, shared by the dense and the multi-tensor kernels: element i of
// every enabled stream (`UpdateAt`), or the 16 bytes of each starting at element i, as one
// 128-bit load and store per stream (`UpdateVecAt`: i a multiple of Vec<T>::kSize, every
// pointer 16-byte aligned).
template <bool kCentered, bool kMomentum, typename T>
__device__ __forceinline__ void UpdateAt(const Coefficients<ComputeType<T>>& k,
                                         const T* __restrict__ grad, T* __restrict__ var,
                                         T* __restrict__ ms, T* __restrict__ mom,
                                         T* __restrict__ mg, int64_t i) {
  UpdateOne<kCentered, kMomentum, T>(k, ToCompute(grad[i]), var[i], ms[i],
                                     kMomentum ? mom + i : nullptr, kCentered ? mg + i : nullptr);
}

template <bool kCentered, bool kMomentum, typename T>
__device__ __forceinline__ void UpdateVecAt(const Coefficients<ComputeType<T>>& k,
                                            const T* __restrict__ grad, T* __restrict__ var,
                                            T* __restrict__ ms, T* __restrict__ mom,
                                            T* __restrict__ mg, int64_t i) {
  using V = Vec<T>;
  const V g = *reinterpret_cast<const V*>(grad + i);
  V x = *reinterpret_cast<const V*>(var + i), s = *reinterpret_cast<const V*>(ms + i), m, a;
  if (kMomentum) m = *reinterpret_cast<const V*>(mom + i);
  if (kCentered) a = *reinterpret_cast<const V*>(mg + i);
#pragma unroll
  for (int j = 0; j < V::kSize; ++j) {
    UpdateOne<kCentered, kMomentum, T>(k, ToCompute(g.v[j]), x.v[j], s.v[j], &m.v[j], &a.v[j]);
  }
  *reinterpret_cast<V*>(var + i) = x;
  *reinterpret_cast<V*>(ms + i) = s;
  if (kMomentum) *reinterpret_cast<V*>(mom + i) = m;
  if (kCentered) *reinterpret_cast<V*>(mg + i) = a;
}

// Whether a pointer allows 128-bit accesses (null: a disabled slot, no constraint).
bool Aligned16(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Every kernel launch goes through here: `blocks` x `threads` of `kernel` on `stream` (no
// dynamic shared memory), the arguments converted to the kernel's parameter types; returns
// the launch's error. tests/gpu/emu/ supplies the other definition, for the CPU emulation
// of the CUDA execution model that runs these kernels' code in CI (no GPU there).
template <typename T> struct ParamOf { using type = T; };  // a non-deduced context
// LaunchSynced: the same, for a kernel whose threads meet at __syncthreads() over shared
// memory (the 8-bit kernel's block reduction); the emulation then runs each block's threads
// concurrently, as OS threads that wait for each other at the barrier.
#ifndef RMSPROPX_CUDA_EMULATION
template <typename... Params>
cudaError_t Launch(void (*kernel)(Params...), int blocks, int threads, cudaStream_t stream,
                   typename ParamOf<Params>::type... args) {
  kernel<<<blocks, threads, 0, stream>>>(args...);
  return cudaGetLastError();
}
template <typename... Params>
cudaError_t LaunchSynced(void (*kernel)(Params...), int blocks, int threads,
                         cudaStream_t stream, typename ParamOf<Params>::type... args) {
  kernel<<<blocks, threads, 0, stream>>>(args...);
  return cudaGetLastError();
}
#else
template <typename... Params>
cudaError_t Launch(void (*kernel)(Params...), int blocks, int threads, cudaStream_t stream,
                   typename ParamOf<Params>::type... args) {
  return ::rmsprop_x_cuda_emu::Launch(kernel, blocks, threads, stream, args...);
}
template <typename... Params>
cudaError_t LaunchSynced(void (*kernel)(Params...), int blocks, int threads,
                         cudaStream_t stream, typename ParamOf<Params>::type... args) {
  return ::rmsprop_x_cuda_emu::LaunchSynced(kernel, blocks, threads, stream, args...);
}
#endif

}  // namespace
}  // namespace cuda
}  // namespace tf_rmsprop_ops

#endif  // TF_RMSPROP_OPS_CC_CUDA_RMSPROP_X_CUDA_DEVICE_CUH_
