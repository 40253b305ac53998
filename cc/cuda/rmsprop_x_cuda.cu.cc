// CUDA kernels of the RMSpropX update: the formula of cc/rmsprop_x_update.h on the GPU.
// Includes no TensorFlow header (tests/gpu/ drives it without TensorFlow).
#include "cc/cuda/rmsprop_x_cuda.h"
#include "cc/cuda/rmsprop_x_cuda_device.cuh"

#include <cstdint>
#include <limits>

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_run_length_encode.cuh>
#include <cub/device/device_scan.cuh>

namespace tf_rmsprop_ops {
namespace cuda {
namespace {

// Grid-stride over n/kSize 128-bit vectors (every pointer 16-byte aligned), then over the
// scalar tail (or everything, unaligned): the shared loop bodies of rmsprop_x_cuda_device.cuh.
template <bool kCentered, bool kMomentum, typename T>
__global__ void DenseVecKernel(Coefficients<ComputeType<T>> k, const T* __restrict__ grad,
                               T* __restrict__ var, T* __restrict__ ms, T* __restrict__ mom,
                               T* __restrict__ mg, int64_t vecs) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < vecs;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    UpdateVecAt<kCentered, kMomentum, T>(k, grad, var, ms, mom, mg, i * Vec<T>::kSize);
  }
}

template <bool kCentered, bool kMomentum, typename T>
__global__ void DenseScalarKernel(Coefficients<ComputeType<T>> k, const T* __restrict__ grad,
                                  T* __restrict__ var, T* __restrict__ ms,
                                  T* __restrict__ mom, T* __restrict__ mg, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    UpdateAt<kCentered, kMomentum, T>(k, grad, var, ms, mom, mg, i);
  }
}

int Blocks(int64_t work) {
  const int64_t b = (work + kThreads - 1) / kThreads;
  return static_cast<int>(b < 1 ? 1 : (b > kMaxBlocks ? kMaxBlocks : b));
}


template <bool kCentered, bool kMomentum, typename T>
cudaError_t Dense(const Coefficients<ComputeType<T>>& k, const T* grad, T* var, T* ms, T* mom,
                  T* mg, int64_t n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  int64_t done = 0;
  if (Aligned16(grad) && Aligned16(var) && Aligned16(ms) && Aligned16(mom) && Aligned16(mg)) {
    const int64_t vecs = n / Vec<T>::kSize;
    if (vecs > 0) {
      const cudaError_t e = Launch(DenseVecKernel<kCentered, kMomentum, T>, Blocks(vecs),
                                   kThreads, stream, k, grad, var, ms, mom, mg, vecs);
      if (e != cudaSuccess) return e;
      done = vecs * Vec<T>::kSize;
    }
  }
  if (done < n) {  // the tail (or everything, unaligned)
    return Launch(DenseScalarKernel<kCentered, kMomentum, T>, Blocks(n - done), kThreads,
                  stream, k, grad + done, var + done, ms + done, mom ? mom + done : nullptr,
                  mg ? mg + done : nullptr, n - done);
  }
  return cudaSuccess;
}

// ---- sparse -------------------------------------------------------------------------------

constexpr size_t kAlign = 256;
size_t Up(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

// The key bits the radix sort needs: those of the largest valid index, rows - 1 (the
// indices are checked first). Each 8 bits fewer is one pass fewer over the pairs.
template <typename Index>
int KeyBits(int64_t rows) {
  int bits = 1;
  while (bits < static_cast<int>(sizeof(Index) * 8) && (int64_t{1} << bits) < rows) ++bits;
  return bits;
}

// Workspace layout: [bad offset][sorted keys][unique keys][positions][sorted positions]
// [run lengths][run offsets][number of runs][CUB temporaries].
template <typename Index>
struct Workspace {
  unsigned long long* bad;
  Index* keys;
  int32_t* positions;
  int32_t* sorted_positions;
  Index* unique;
  int32_t* lengths;
  int32_t* offsets;
  int32_t* num_runs;
  void* temp;
  size_t temp_bytes;

  // The sort's temporaries are asked for with the bit range it will sort (CUB's needs
  // depend on the number of passes).
  static size_t CubBytes(int64_t n, int64_t rows) {
    size_t sort = 0, rle = 0, scan = 0;
    cub::DeviceRadixSort::SortPairs(nullptr, sort, static_cast<const Index*>(nullptr),
                                    static_cast<Index*>(nullptr),
                                    static_cast<const int32_t*>(nullptr),
                                    static_cast<int32_t*>(nullptr), static_cast<int>(n), 0,
                                    KeyBits<Index>(rows));
    cub::DeviceRunLengthEncode::Encode(nullptr, rle, static_cast<const Index*>(nullptr),
                                       static_cast<Index*>(nullptr),
                                       static_cast<int32_t*>(nullptr),
                                       static_cast<int32_t*>(nullptr), static_cast<int>(n));
    cub::DeviceScan::ExclusiveSum(nullptr, scan, static_cast<const int32_t*>(nullptr),
                                  static_cast<int32_t*>(nullptr), static_cast<int>(n));
    size_t m = sort > rle ? sort : rle;
    return m > scan ? m : scan;
  }
  static size_t Bytes(int64_t n, int64_t rows) {
    const size_t idx = Up(sizeof(Index) * (n > 0 ? n : 1));
    const size_t i32 = Up(sizeof(int32_t) * (n > 0 ? n : 1));
    return Up(sizeof(unsigned long long)) + 2 * idx + 4 * i32 + Up(sizeof(int32_t)) +
           Up(CubBytes(n, rows));
  }
  // SparseCheck uses only `bad` (rows: 0, no temporaries asked for).
  Workspace(void* base, int64_t n, int64_t rows) {
    char* p = static_cast<char*>(base);
    const size_t idx = Up(sizeof(Index) * (n > 0 ? n : 1));
    const size_t i32 = Up(sizeof(int32_t) * (n > 0 ? n : 1));
    bad = reinterpret_cast<unsigned long long*>(p); p += Up(sizeof(unsigned long long));
    keys = reinterpret_cast<Index*>(p); p += idx;
    unique = reinterpret_cast<Index*>(p); p += idx;
    positions = reinterpret_cast<int32_t*>(p); p += i32;
    sorted_positions = reinterpret_cast<int32_t*>(p); p += i32;
    lengths = reinterpret_cast<int32_t*>(p); p += i32;
    offsets = reinterpret_cast<int32_t*>(p); p += i32;
    num_runs = reinterpret_cast<int32_t*>(p); p += Up(sizeof(int32_t));
    temp = p;
    temp_bytes = rows > 0 ? Up(CubBytes(n, rows)) : 0;
  }
};

template <typename Index>
__global__ void CheckKernel(const Index* __restrict__ indices, int64_t n, int64_t rows,
                            unsigned long long* bad) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t v = static_cast<int64_t>(indices[i]);
    if (v < 0 || v >= rows) atomicMin(bad, static_cast<unsigned long long>(i));
  }
}

__global__ void IotaKernel(int32_t* out, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = static_cast<int32_t>(i);
  }
}

// One block per unique row (grid-stride over rows): each thread sums its elements'
// gradient over the row's occurrences in input order, then updates them.
template <bool kCentered, bool kMomentum, typename T, typename Index>
__global__ void RowsKernel(Coefficients<ComputeType<T>> k, const T* __restrict__ grad,
                           const Index* __restrict__ unique, const int32_t* __restrict__ lengths,
                           const int32_t* __restrict__ offsets,
                           const int32_t* __restrict__ sorted_positions,
                           const int32_t* __restrict__ num_runs, int64_t row_size,
                           T* __restrict__ var, T* __restrict__ ms, T* __restrict__ mom,
                           T* __restrict__ mg) {
  using C = ComputeType<T>;
  const int32_t runs = *num_runs;
  for (int64_t r = blockIdx.x; r < runs; r += gridDim.x) {
    const int64_t base = static_cast<int64_t>(unique[r]) * row_size;
    const int32_t first = offsets[r], count = lengths[r];
    for (int64_t j = threadIdx.x; j < row_size; j += blockDim.x) {
      C g = C(0);
      for (int32_t p = 0; p < count; ++p) {
        g += ToCompute(grad[static_cast<int64_t>(sorted_positions[first + p]) * row_size + j]);
      }
      const int64_t e = base + j;
      UpdateOne<kCentered, kMomentum, T>(k, g, var[e], ms[e], kMomentum ? mom + e : nullptr,
                                         kCentered ? mg + e : nullptr);
    }
  }
}

template <bool kCentered, bool kMomentum, typename T, typename Index>
cudaError_t Rows(const Coefficients<ComputeType<T>>& k, const T* grad, const SparseRunsOf<Index>& w,
                 int64_t n, int64_t row_size, T* var, T* ms, T* mom, T* mg, cudaStream_t stream) {
  int threads = static_cast<int>(row_size < kThreads ? ((row_size + 31) / 32) * 32 : kThreads);
  const int blocks = static_cast<int>(n < kMaxBlocks ? n : kMaxBlocks);
  return Launch(RowsKernel<kCentered, kMomentum, T, Index>, blocks, threads, stream, k, grad,
                w.unique, w.lengths, w.offsets, w.sorted_positions, w.num_runs, row_size, var,
                ms, mom, mg);
}

#define RMSPROPX_DISPATCH(FN, ...)                                              \
  (variant.centered ? (variant.momentum ? FN<true, true>(__VA_ARGS__)           \
                                        : FN<true, false>(__VA_ARGS__))         \
                    : (variant.momentum ? FN<false, true>(__VA_ARGS__)          \
                                        : FN<false, false>(__VA_ARGS__)))

}  // namespace

template <typename T>
cudaError_t LaunchDense(const Variant& variant, const Coefficients<ComputeType<T>>& k,
                        const T* grad, T* var, T* ms, T* mom, T* mg, int64_t n,
                        cudaStream_t stream) {
  return RMSPROPX_DISPATCH(Dense, k, grad, var, ms, mom, mg, n, stream);
}

template <typename Index>
size_t SparseWorkspaceBytes(int64_t num_indices, int64_t rows) {
  if (num_indices > kMaxSparseIndices) return 0;
  return Workspace<Index>::Bytes(num_indices, rows);
}

template <typename Index>
cudaError_t SparseCheck(const Index* indices, int64_t num_indices, int64_t rows,
                        void* workspace, int64_t* bad_offset_host, Index* bad_value_host,
                        cudaStream_t stream) {
  *bad_offset_host = -1;
  if (num_indices > kMaxSparseIndices) return cudaErrorInvalidValue;
  if (num_indices <= 0) return cudaSuccess;
  Workspace<Index> w(workspace, num_indices, 0);
  cudaError_t e = cudaMemsetAsync(w.bad, 0xff, sizeof(unsigned long long), stream);
  if (e != cudaSuccess) return e;
  if ((e = Launch(CheckKernel<Index>, Blocks(num_indices), kThreads, stream, indices,
                  num_indices, rows, w.bad)) != cudaSuccess) {
    return e;
  }
  unsigned long long bad = 0;
  if ((e = cudaMemcpyAsync(&bad, w.bad, sizeof(bad), cudaMemcpyDeviceToHost, stream)) !=
      cudaSuccess) {
    return e;
  }
  if ((e = cudaStreamSynchronize(stream)) != cudaSuccess) return e;
  if (bad == std::numeric_limits<unsigned long long>::max()) return cudaSuccess;
  *bad_offset_host = static_cast<int64_t>(bad);
  if ((e = cudaMemcpyAsync(bad_value_host, indices + bad, sizeof(Index), cudaMemcpyDeviceToHost,
                           stream)) != cudaSuccess) {
    return e;
  }
  return cudaStreamSynchronize(stream);
}

template <typename Index>
cudaError_t SparseRuns(const Index* indices, int64_t num_indices, int64_t rows,
                       void* workspace, SparseRunsOf<Index>* runs, cudaStream_t stream) {
  if (num_indices > kMaxSparseIndices || num_indices <= 0) return cudaErrorInvalidValue;
  Workspace<Index> w(workspace, num_indices, rows);
  const int n = static_cast<int>(num_indices);
  cudaError_t e = Launch(IotaKernel, Blocks(n), kThreads, stream, w.positions, n);
  if (e != cudaSuccess) return e;
  // The scan below runs over all n lengths; those past the number of runs must be zeros
  // (then every offset is defined and the int32 sum stays <= n).
  if ((e = cudaMemsetAsync(w.lengths, 0, sizeof(int32_t) * n, stream)) != cudaSuccess) return e;
  size_t bytes = w.temp_bytes;
  // Stable: equal indices keep their input order, so sums are deterministic (as on CPU).
  if ((e = cub::DeviceRadixSort::SortPairs(w.temp, bytes, indices, w.keys, w.positions,
                                           w.sorted_positions, n, 0, KeyBits<Index>(rows),
                                           stream)) != cudaSuccess) {
    return e;
  }
  bytes = w.temp_bytes;
  if ((e = cub::DeviceRunLengthEncode::Encode(w.temp, bytes, w.keys, w.unique, w.lengths,
                                              w.num_runs, n, stream)) != cudaSuccess) {
    return e;
  }
  bytes = w.temp_bytes;
  // Offsets past num_runs (lengths zeroed above) are never read.
  if ((e = cub::DeviceScan::ExclusiveSum(w.temp, bytes, w.lengths, w.offsets, n, stream)) !=
      cudaSuccess) {
    return e;
  }
  *runs = {w.unique, w.lengths, w.offsets, w.sorted_positions, w.num_runs};
  return cudaSuccess;
}

template <typename T, typename Index>
cudaError_t SparseUpdate(const Variant& variant, const Coefficients<ComputeType<T>>& k,
                         const T* grad, const Index* indices, int64_t num_indices,
                         int64_t rows, int64_t row_size, T* var, T* ms, T* mom, T* mg,
                         void* workspace, cudaStream_t stream) {
  if (num_indices > kMaxSparseIndices) return cudaErrorInvalidValue;
  if (num_indices <= 0 || row_size <= 0) return cudaSuccess;
  SparseRunsOf<Index> runs;
  const cudaError_t e = SparseRuns(indices, num_indices, rows, workspace, &runs, stream);
  if (e != cudaSuccess) return e;
  return RMSPROPX_DISPATCH(Rows, k, grad, runs, num_indices, row_size, var, ms, mom, mg, stream);
}

#define RMSPROPX_INSTANTIATE(T)                                                              \
  template cudaError_t LaunchDense<T>(const Variant&, const Coefficients<ComputeType<T>>&,   \
                                      const T*, T*, T*, T*, T*, int64_t, cudaStream_t);      \
  template cudaError_t SparseUpdate<T, int32_t>(                                             \
      const Variant&, const Coefficients<ComputeType<T>>&, const T*, const int32_t*, int64_t, \
      int64_t, int64_t, T*, T*, T*, T*, void*, cudaStream_t);                                 \
  template cudaError_t SparseUpdate<T, int64_t>(                                             \
      const Variant&, const Coefficients<ComputeType<T>>&, const T*, const int64_t*, int64_t, \
      int64_t, int64_t, T*, T*, T*, T*, void*, cudaStream_t);
RMSPROPX_INSTANTIATE(float)
RMSPROPX_INSTANTIATE(double)
RMSPROPX_INSTANTIATE(Half)
RMSPROPX_INSTANTIATE(BFloat16)
#undef RMSPROPX_INSTANTIATE

template size_t SparseWorkspaceBytes<int32_t>(int64_t, int64_t);
template size_t SparseWorkspaceBytes<int64_t>(int64_t, int64_t);
template cudaError_t SparseCheck<int32_t>(const int32_t*, int64_t, int64_t, void*, int64_t*,
                                          int32_t*, cudaStream_t);
template cudaError_t SparseCheck<int64_t>(const int64_t*, int64_t, int64_t, void*, int64_t*,
                                          int64_t*, cudaStream_t);
template cudaError_t SparseRuns<int32_t>(const int32_t*, int64_t, int64_t, void*,
                                         SparseRunsOf<int32_t>*, cudaStream_t);
template cudaError_t SparseRuns<int64_t>(const int64_t*, int64_t, int64_t, void*,
                                         SparseRunsOf<int64_t>*, cudaStream_t);

}  // namespace cuda
}  // namespace tf_rmsprop_ops
