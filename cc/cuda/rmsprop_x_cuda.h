// CUDA launchers of the RMSpropX update: TensorFlow-free, raw device pointers, a stream.
//
// The kernels (rmsprop_x_cuda.cu.cc) apply the per-element formula of
// cc/rmsprop_x_update.h, as the CPU loops do; half and bfloat16 compute in float32. The
// TensorFlow GPU OpKernels (cc/kernels/, built with GOOGLE_CUDA) and the TensorFlow-free
// harness (tests/gpu/) call these. Every launcher returns the first CUDA error.
#ifndef TF_RMSPROP_OPS_CC_CUDA_RMSPROP_X_CUDA_H_
#define TF_RMSPROP_OPS_CC_CUDA_RMSPROP_X_CUDA_H_

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "cc/cpu/rmsprop_x_cpu.h"  // storage types Half / BFloat16, ComputeType
#include "cc/rmsprop_x_update.h"

namespace tf_rmsprop_ops {
namespace cuda {

using cpu::BFloat16;
using cpu::ComputeType;
using cpu::Half;

// Dense: var, ms (and mom / mg when their feature is on; null otherwise) and grad hold n
// elements each. One fused pass: 128-bit loads and stores where every pointer is 16-byte
// aligned, a scalar tail. `k` comes from MakeCoefficients on the host.
template <typename T>
cudaError_t LaunchDense(const Variant& variant, const Coefficients<ComputeType<T>>& k,
                        const T* grad, T* var, T* ms, T* mom, T* mg, int64_t n,
                        cudaStream_t stream);

// Multi-tensor (ApplyRMSpropXMulti): `count` tensors, each with its own pointers (mom / mg
// null when their feature is off) and element count. Apex-style chunk lists: every tensor is
// cut into chunks of kMultiChunk elements, and each launch carries up to kMultiTensors
// tensors' pointers and kMultiBlocks (tensor, chunk) pairs in its kernel arguments (under
// the 4 KB limit), one block per chunk: a model's hundreds of tensors take a few launches
// instead of one each. `tensors` is host memory, read before this returns.
template <typename T>
struct MultiTensor {
  const T* grad;
  T* var;
  T* ms;
  T* mom;
  T* mg;
  int64_t n;
};
constexpr int kMultiTensors = 36;
constexpr int kMultiBlocks = 320;
// The CPU emulation (tests/gpu/emu/) builds with smaller chunks, so that the tests' tensors
// of several chunks and launches stay small; the harness reports the value
// (rx_multi_chunk).
#ifndef RMSPROPX_CUDA_MULTI_CHUNK
#define RMSPROPX_CUDA_MULTI_CHUNK 65536
#endif
constexpr int64_t kMultiChunk = RMSPROPX_CUDA_MULTI_CHUNK;

template <typename T>
cudaError_t LaunchMulti(const Variant& variant, const Coefficients<ComputeType<T>>& k,
                        const MultiTensor<T>* tensors, int64_t count, cudaStream_t stream);

// Sparse: `indices` [num_indices] name rows of var ([rows, row_size]); `grad` is
// [num_indices, row_size]. Duplicated indices are summed (in input order, deterministic)
// and applied once; rows not named are untouched. Deduplication runs on the device: a
// stable radix sort of (index, position) over the index bits that can vary (those of
// rows - 1: 20 for a million rows, where the type has 32 or 64), run boundaries, then one
// pass over the unique rows (work proportional to num_indices * row_size).
//
// Two phases so that a bad index writes nothing:
//   1. SparseCheck: finds the first index outside [0, rows), writes its offset (or -1) to
//      *bad_offset_host after synchronising `stream` (the only host sync).
//   2. SparseUpdate: sorts and updates; call it only when the check found nothing.
// `workspace` holds SparseWorkspaceBytes(num_indices, rows) bytes of device memory.
// At most kMaxSparseIndices indices (CUB's item counts and the positions are int32):
// beyond it SparseWorkspaceBytes returns 0, and SparseCheck and SparseUpdate return
// cudaErrorInvalidValue before touching anything.
constexpr int64_t kMaxSparseIndices = 2147483647;

template <typename Index>
size_t SparseWorkspaceBytes(int64_t num_indices, int64_t rows);

template <typename Index>
cudaError_t SparseCheck(const Index* indices, int64_t num_indices, int64_t rows,
                        void* workspace, int64_t* bad_offset_host, Index* bad_value_host,
                        cudaStream_t stream);

template <typename T, typename Index>
cudaError_t SparseUpdate(const Variant& variant, const Coefficients<ComputeType<T>>& k,
                         const T* grad, const Index* indices, int64_t num_indices,
                         int64_t rows, int64_t row_size, T* var, T* ms, T* mom, T* mg,
                         void* workspace, cudaStream_t stream);

// The first phase of SparseUpdate, for the sparse kernels of other state formats: sorts the
// (checked) indices stably and finds their runs, in `workspace` (SparseWorkspaceBytes).
// `runs` then points into it: the unique rows, each run's length and offset into
// sorted_positions (the input positions in input order), and the number of runs (device
// memory, read by the kernels).
template <typename Index>
struct SparseRunsOf {
  const Index* unique;
  const int32_t* lengths;
  const int32_t* offsets;
  const int32_t* sorted_positions;
  const int32_t* num_runs;
};
template <typename Index>
cudaError_t SparseRuns(const Index* indices, int64_t num_indices, int64_t rows,
                       void* workspace, SparseRunsOf<Index>* runs, cudaStream_t stream);

// 8-bit state (cc/state8.h, rmsprop_x_cuda8.cu.cc): var and grad [rows, row_size] of T
// (Half, BFloat16 or float), each enabled state's codes (var's layout) and absmax ([rows,
// BlocksPerRow(row_size)]); mom / mg with null pointers when their feature is off. One CUDA
// block per block of 256 elements: the same bits as the CPU kernel.
template <typename T>
cudaError_t LaunchDense8(const Variant& variant, const Coefficients<float>& k, const T* grad,
                         T* var, cpu::State8 ms, cpu::State8 mom, cpu::State8 mg, int64_t rows,
                         int64_t row_size, cudaStream_t stream);

// The sparse 8-bit update (after SparseCheck, as SparseUpdate): the named rows' blocks, one
// CUDA block each, their gradient rows summed in input order; every other row keeps its
// codes and absmax.
template <typename T, typename Index>
cudaError_t SparseUpdate8(const Variant& variant, const Coefficients<float>& k, const T* grad,
                          const Index* indices, int64_t num_indices, int64_t rows,
                          int64_t row_size, T* var, cpu::State8 ms, cpu::State8 mom,
                          cpu::State8 mg, void* workspace, cudaStream_t stream);

}  // namespace cuda
}  // namespace tf_rmsprop_ops

#endif  // TF_RMSPROP_OPS_CC_CUDA_RMSPROP_X_CUDA_H_
