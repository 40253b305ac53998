// CUDA kernel of the 8-bit-state update (cc/state8.h, docs/design.md 1.7): the formula of
// cc/rmsprop_x_update.h between the codec, as the CPU loop (cc/cpu/rmsprop_x_cpu8.cc) runs
// it. One CUDA block of 256 threads per block of 256 state elements (grid-stride over the
// blocks), one thread per element: dequantize (map[code] * absmax), the update in float32,
// var from the unquantized new state; then the block's absmax, a max over the bits with the
// sign cleared in shared memory (a NaN's bits order above inf's: NaN propagates, as
// BlockAbsMax), and the code, the number of float32 midpoints <= x / absmax found by binary
// lifting (exact nearest: the code the CPU's bucket table gives), the zero code for NaN and
// all-zero blocks. So the same bits as the CPU kernel (nvcc --fmad=false; IEEE division and
// square root). Includes no TensorFlow header.
#include <cstdint>

#include "cc/cuda/rmsprop_x_cuda.h"
#include "cc/cuda/rmsprop_x_cuda_device.cuh"
#include "cc/state8.h"

namespace tf_rmsprop_ops {
namespace cuda {
namespace {

// The two maps (index 0: unsigned, for ms; 1: signed, for mom and mg), in constant memory,
// staged per block in shared memory (threads read different entries: constant memory
// would serialise them).
struct Maps8 {
  float value[2][256];
  float mid[2][256];  // mid[j] between value[j] and value[j + 1]; mid[255] = +inf
  uint32_t zero[2];
};
__constant__ Maps8 kMaps;

Maps8 HostMaps() {
  Maps8 m{};
  const DynamicMap* maps[2] = {&UnsignedMap(), &SignedMap()};
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 256; ++j) {
      m.value[i][j] = maps[i]->value[j];
      m.mid[i][j] = maps[i]->mid[j];
    }
    m.zero[i] = maps[i]->zero;
  }
  return m;
}

__device__ __forceinline__ uint32_t Code(float x, float absmax, const float* mid,
                                         uint32_t zero) {
  if (absmax == 0.0f) return zero;  // an all-zero block
  const float norm = x / absmax;
  uint32_t code = 0;
#pragma unroll
  for (uint32_t step = 128; step >= 1; step >>= 1) {
    code = norm >= mid[code + step - 1] ? code + step : code;  // false for NaN
  }
  return norm == norm ? code : zero;
}

__device__ __forceinline__ uint32_t Magnitude(float x) { return __float_as_uint(x) & 0x7fffffffu; }
__device__ __forceinline__ uint32_t Larger(uint32_t a, uint32_t b) { return a > b ? a : b; }

template <bool kCentered, bool kMomentum, typename T>
__global__ void __launch_bounds__(kBlock8)
    Dense8Kernel(Coefficients<float> k, const T* __restrict__ grad, T* __restrict__ var,
                 cpu::State8 ms, cpu::State8 mom, cpu::State8 mg, int64_t row_size,
                 int64_t per_row, int64_t blocks) {
  __shared__ float value[2][256];
  __shared__ float mid[2][256];
  __shared__ uint32_t largest[3][256];
  const int t = threadIdx.x;  // blockDim.x == kBlock8
  for (int i = 0; i < 2; ++i) {
    value[i][t] = kMaps.value[i][t];
    mid[i][t] = kMaps.mid[i][t];
  }
  __syncthreads();
  for (int64_t b = blockIdx.x; b < blocks; b += gridDim.x) {  // uniform across the block
    const int64_t in_row = (b % per_row) * kBlock8;
    const int64_t at = (b / per_row) * row_size + in_row + t;
    const bool active = t < row_size - in_row;  // the last block of a row may be partial
    float s = 0.0f, m = 0.0f, a = 0.0f;
    if (active) {
      s = value[0][ms.codes[at]] * ms.absmax[b];
      if (kMomentum) m = value[1][mom.codes[at]] * mom.absmax[b];
      if (kCentered) a = value[1][mg.codes[at]] * mg.absmax[b];
      float v = ToCompute(var[at]);
      UpdateElement<kCentered, kMomentum, float>(k, ToCompute(grad[at]), v, s, m, a);
      var[at] = FromCompute<T>(v);
    }
    largest[0][t] = active ? Magnitude(s) : 0u;
    largest[1][t] = active && kMomentum ? Magnitude(m) : 0u;
    largest[2][t] = active && kCentered ? Magnitude(a) : 0u;
    __syncthreads();
    for (int half = kBlock8 / 2; half > 0; half >>= 1) {
      if (t < half) {
        for (int j = 0; j < 3; ++j) largest[j][t] = Larger(largest[j][t], largest[j][t + half]);
      }
      __syncthreads();
    }
    const float abs_s = __uint_as_float(largest[0][0]);
    const float abs_m = __uint_as_float(largest[1][0]);
    const float abs_a = __uint_as_float(largest[2][0]);
    if (active) {
      ms.codes[at] = static_cast<uint8_t>(Code(s, abs_s, mid[0], kMaps.zero[0]));
      if (kMomentum) mom.codes[at] = static_cast<uint8_t>(Code(m, abs_m, mid[1], kMaps.zero[1]));
      if (kCentered) mg.codes[at] = static_cast<uint8_t>(Code(a, abs_a, mid[1], kMaps.zero[1]));
    }
    if (t == 0) {
      ms.absmax[b] = abs_s;
      if (kMomentum) mom.absmax[b] = abs_m;
      if (kCentered) mg.absmax[b] = abs_a;
    }
    __syncthreads();  // `largest` is reused by the next block
  }
}

template <bool kCentered, bool kMomentum, typename T>
cudaError_t Dense8(const Coefficients<float>& k, const T* grad, T* var, cpu::State8 ms,
                   cpu::State8 mom, cpu::State8 mg, int64_t rows, int64_t row_size,
                   cudaStream_t stream) {
  const int64_t per_row = BlocksPerRow(row_size);
  const int64_t blocks = rows * per_row;
  if (blocks <= 0) return cudaSuccess;
  // The maps, copied on the launch's stream (the same bytes every time: a copy that
  // overlaps another stream's kernel changes nothing it reads).
  static const Maps8 maps = HostMaps();
  const cudaError_t e = cudaMemcpyToSymbolAsync(kMaps, &maps, sizeof(Maps8), 0,
                                                cudaMemcpyHostToDevice, stream);
  if (e != cudaSuccess) return e;
  const int grid = static_cast<int>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
  return LaunchSynced(Dense8Kernel<kCentered, kMomentum, T>, grid, static_cast<int>(kBlock8),
                      stream, k, grad, var, ms, mom, mg, row_size, per_row, blocks);
}

}  // namespace

template <typename T>
cudaError_t LaunchDense8(const Variant& variant, const Coefficients<float>& k, const T* grad,
                         T* var, cpu::State8 ms, cpu::State8 mom, cpu::State8 mg, int64_t rows,
                         int64_t row_size, cudaStream_t stream) {
  if (variant.centered) {
    return variant.momentum
               ? Dense8<true, true, T>(k, grad, var, ms, mom, mg, rows, row_size, stream)
               : Dense8<true, false, T>(k, grad, var, ms, mom, mg, rows, row_size, stream);
  }
  return variant.momentum
             ? Dense8<false, true, T>(k, grad, var, ms, mom, mg, rows, row_size, stream)
             : Dense8<false, false, T>(k, grad, var, ms, mom, mg, rows, row_size, stream);
}

template cudaError_t LaunchDense8<float>(const Variant&, const Coefficients<float>&,
                                         const float*, float*, cpu::State8, cpu::State8,
                                         cpu::State8, int64_t, int64_t, cudaStream_t);
template cudaError_t LaunchDense8<Half>(const Variant&, const Coefficients<float>&, const Half*,
                                        Half*, cpu::State8, cpu::State8, cpu::State8, int64_t,
                                        int64_t, cudaStream_t);
template cudaError_t LaunchDense8<BFloat16>(const Variant&, const Coefficients<float>&,
                                            const BFloat16*, BFloat16*, cpu::State8,
                                            cpu::State8, cpu::State8, int64_t, int64_t,
                                            cudaStream_t);

}  // namespace cuda
}  // namespace tf_rmsprop_ops
