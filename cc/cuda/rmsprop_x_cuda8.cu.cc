// CUDA kernels of the 8-bit-state update (dense and sparse) (cc/state8.h, docs/design.md 1.7): the formula of
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

// The maps in shared memory and the block reduction's scratch, per CUDA block.
struct Shared8 {
  float value[2][256];
  float mid[2][256];
  uint32_t largest[3][256];
};

__device__ __forceinline__ void StageMaps(Shared8& sh) {
  const int t = threadIdx.x;
  for (int i = 0; i < 2; ++i) {
    sh.value[i][t] = kMaps.value[i][t];
    sh.mid[i][t] = kMaps.mid[i][t];
  }
  __syncthreads();
}

// One block of state elements, element `at` (of var and the codes) in this thread, block
// `b` (of absmax), `active` when the element exists (a row's last block may be partial),
// `g` its gradient in float32. Every thread of the CUDA block calls it (the barriers).
template <bool kCentered, bool kMomentum, typename T>
__device__ __forceinline__ void Step8(Shared8& sh, const Coefficients<float>& k, float g,
                                      bool active, T* __restrict__ var, cpu::State8 ms,
                                      cpu::State8 mom, cpu::State8 mg, int64_t at, int64_t b) {
  const int t = threadIdx.x;
  float s = 0.0f, m = 0.0f, a = 0.0f;
  if (active) {
    s = sh.value[0][ms.codes[at]] * ms.absmax[b];
    if (kMomentum) m = sh.value[1][mom.codes[at]] * mom.absmax[b];
    if (kCentered) a = sh.value[1][mg.codes[at]] * mg.absmax[b];
    float v = ToCompute(var[at]);
    UpdateElement<kCentered, kMomentum, float>(k, g, v, s, m, a);
    var[at] = FromCompute<T>(v);
  }
  sh.largest[0][t] = active ? Magnitude(s) : 0u;
  sh.largest[1][t] = active && kMomentum ? Magnitude(m) : 0u;
  sh.largest[2][t] = active && kCentered ? Magnitude(a) : 0u;
  __syncthreads();
  for (int half = kBlock8 / 2; half > 0; half >>= 1) {
    if (t < half) {
      for (int j = 0; j < 3; ++j) {
        sh.largest[j][t] = Larger(sh.largest[j][t], sh.largest[j][t + half]);
      }
    }
    __syncthreads();
  }
  const float abs_s = __uint_as_float(sh.largest[0][0]);
  const float abs_m = __uint_as_float(sh.largest[1][0]);
  const float abs_a = __uint_as_float(sh.largest[2][0]);
  if (active) {
    ms.codes[at] = static_cast<uint8_t>(Code(s, abs_s, sh.mid[0], kMaps.zero[0]));
    if (kMomentum) mom.codes[at] = static_cast<uint8_t>(Code(m, abs_m, sh.mid[1], kMaps.zero[1]));
    if (kCentered) mg.codes[at] = static_cast<uint8_t>(Code(a, abs_a, sh.mid[1], kMaps.zero[1]));
  }
  if (t == 0) {
    ms.absmax[b] = abs_s;
    if (kMomentum) mom.absmax[b] = abs_m;
    if (kCentered) mg.absmax[b] = abs_a;
  }
  __syncthreads();  // `largest` is reused by the next block
}

template <bool kCentered, bool kMomentum, typename T>
__global__ void __launch_bounds__(kBlock8)
    Dense8Kernel(Coefficients<float> k, const T* __restrict__ grad, T* __restrict__ var,
                 cpu::State8 ms, cpu::State8 mom, cpu::State8 mg, int64_t row_size,
                 int64_t per_row, int64_t blocks) {
  __shared__ Shared8 sh;
  StageMaps(sh);
  const int t = threadIdx.x;  // blockDim.x == kBlock8
  for (int64_t b = blockIdx.x; b < blocks; b += gridDim.x) {  // uniform across the block
    const int64_t in_row = (b % per_row) * kBlock8;
    const int64_t at = (b / per_row) * row_size + in_row + t;
    const bool active = t < row_size - in_row;
    Step8<kCentered, kMomentum, T>(sh, k, active ? ToCompute(grad[at]) : 0.0f, active, var,
                                   ms, mom, mg, at, b);
  }
}

// Sparse: grid-stride over (run, block of the row) pairs; each thread sums its element's
// gradient over the run's occurrences in input order (from the first, as the CPU loop).
template <bool kCentered, bool kMomentum, typename T, typename Index>
__global__ void __launch_bounds__(kBlock8)
    Rows8Kernel(Coefficients<float> k, const T* __restrict__ grad, SparseRunsOf<Index> runs,
                int64_t row_size, int64_t per_row, T* __restrict__ var, cpu::State8 ms,
                cpu::State8 mom, cpu::State8 mg) {
  __shared__ Shared8 sh;
  StageMaps(sh);
  const int t = threadIdx.x;
  const int64_t pairs = static_cast<int64_t>(*runs.num_runs) * per_row;
  for (int64_t q = blockIdx.x; q < pairs; q += gridDim.x) {  // uniform across the block
    const int64_t r = q / per_row, j = q % per_row;
    const int64_t row = static_cast<int64_t>(runs.unique[r]);
    const int64_t in_row = j * kBlock8;
    const bool active = t < row_size - in_row;
    float g = 0.0f;
    if (active) {
      const int32_t first = runs.offsets[r], count = runs.lengths[r];
      g = ToCompute(grad[static_cast<int64_t>(runs.sorted_positions[first]) * row_size +
                         in_row + t]);
      for (int32_t p = 1; p < count; ++p) {
        g += ToCompute(grad[static_cast<int64_t>(runs.sorted_positions[first + p]) * row_size +
                            in_row + t]);
      }
    }
    Step8<kCentered, kMomentum, T>(sh, k, g, active, var, ms, mom, mg,
                                   row * row_size + in_row + t, row * per_row + j);
  }
}

// The maps, copied on the launch's stream (the same bytes every time: a copy that overlaps
// another stream's kernel changes nothing it reads).
cudaError_t CopyMaps(cudaStream_t stream) {
  static const Maps8 maps = HostMaps();
  return cudaMemcpyToSymbolAsync(kMaps, &maps, sizeof(Maps8), 0, cudaMemcpyHostToDevice,
                                 stream);
}

template <bool kCentered, bool kMomentum, typename T, typename Index>
cudaError_t Rows8(const Coefficients<float>& k, const T* grad, const SparseRunsOf<Index>& runs,
                  int64_t num_indices, int64_t row_size, T* var, cpu::State8 ms,
                  cpu::State8 mom, cpu::State8 mg, cudaStream_t stream) {
  const int64_t per_row = BlocksPerRow(row_size);
  const cudaError_t e = CopyMaps(stream);
  if (e != cudaSuccess) return e;
  const int64_t most = num_indices * per_row;  // runs <= num_indices
  const int grid = static_cast<int>(most < kMaxBlocks ? most : kMaxBlocks);
  return LaunchSynced(Rows8Kernel<kCentered, kMomentum, T, Index>, grid,
                      static_cast<int>(kBlock8), stream, k, grad, runs, row_size, per_row, var,
                      ms, mom, mg);
}

template <bool kCentered, bool kMomentum, typename T>
cudaError_t Dense8(const Coefficients<float>& k, const T* grad, T* var, cpu::State8 ms,
                   cpu::State8 mom, cpu::State8 mg, int64_t rows, int64_t row_size,
                   cudaStream_t stream) {
  const int64_t per_row = BlocksPerRow(row_size);
  const int64_t blocks = rows * per_row;
  if (blocks <= 0) return cudaSuccess;
  const cudaError_t e = CopyMaps(stream);
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

template <typename T, typename Index>
cudaError_t SparseUpdate8(const Variant& variant, const Coefficients<float>& k, const T* grad,
                          const Index* indices, int64_t num_indices, int64_t rows,
                          int64_t row_size, T* var, cpu::State8 ms, cpu::State8 mom,
                          cpu::State8 mg, void* workspace, cudaStream_t stream) {
  if (num_indices > kMaxSparseIndices) return cudaErrorInvalidValue;
  if (num_indices <= 0 || row_size <= 0) return cudaSuccess;
  SparseRunsOf<Index> runs;
  const cudaError_t e = SparseRuns(indices, num_indices, rows, workspace, &runs, stream);
  if (e != cudaSuccess) return e;
  if (variant.centered) {
    return variant.momentum ? Rows8<true, true, T, Index>(k, grad, runs, num_indices, row_size,
                                                          var, ms, mom, mg, stream)
                            : Rows8<true, false, T, Index>(k, grad, runs, num_indices,
                                                           row_size, var, ms, mom, mg, stream);
  }
  return variant.momentum ? Rows8<false, true, T, Index>(k, grad, runs, num_indices, row_size,
                                                         var, ms, mom, mg, stream)
                          : Rows8<false, false, T, Index>(k, grad, runs, num_indices, row_size,
                                                          var, ms, mom, mg, stream);
}

#define RMSPROPX_INSTANTIATE_SPARSE8(T, Index)                                                \
  template cudaError_t SparseUpdate8<T, Index>(const Variant&, const Coefficients<float>&,    \
                                               const T*, const Index*, int64_t, int64_t,       \
                                               int64_t, T*, cpu::State8, cpu::State8,          \
                                               cpu::State8, void*, cudaStream_t);
RMSPROPX_INSTANTIATE_SPARSE8(float, int32_t)
RMSPROPX_INSTANTIATE_SPARSE8(float, int64_t)
RMSPROPX_INSTANTIATE_SPARSE8(Half, int32_t)
RMSPROPX_INSTANTIATE_SPARSE8(Half, int64_t)
RMSPROPX_INSTANTIATE_SPARSE8(BFloat16, int32_t)
RMSPROPX_INSTANTIATE_SPARSE8(BFloat16, int64_t)
#undef RMSPROPX_INSTANTIATE_SPARSE8

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
