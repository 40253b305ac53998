// CPU span loops of the RMSpropX update: TensorFlow-free, raw pointers.
//
// The OpKernel shells (cc/kernels/) own lookup, locking, validation and threading; they
// call these loops on disjoint spans. This translation unit is the only one compiled with
// the machine's vector ISA (ARCH_FLAGS), and it includes no TensorFlow header.
#ifndef TF_RMSPROP_OPS_CC_CPU_RMSPROP_X_CPU_H_
#define TF_RMSPROP_OPS_CC_CPU_RMSPROP_X_CPU_H_

#include <cstdint>

#include "cc/rmsprop_x_update.h"

namespace tf_rmsprop_ops {
namespace cpu {

// 16-bit storage types, bit-compatible with Eigen::half and Eigen::bfloat16.
struct alignas(2) Half { uint16_t bits; };
struct alignas(2) BFloat16 { uint16_t bits; };

// Half types compute in float32; float and double compute natively.
template <typename T> struct ComputeTypeOf { using type = T; };
template <> struct ComputeTypeOf<Half> { using type = float; };
template <> struct ComputeTypeOf<BFloat16> { using type = float; };
template <typename T> using ComputeType = typename ComputeTypeOf<T>::type;

// Updates elements [0, n) of var and the enabled slots (`mom`/`mg` may be null when their
// feature is off) with `grad`, which is either of the storage type T or already of the
// compute type (a deduplicated, summed sparse row). One pass over memory.
template <typename T, typename G>
void UpdateSpan(const Variant& variant, const Coefficients<ComputeType<T>>& k, const G* grad,
                T* var, T* ms, T* mom, T* mg, int64_t n);

// The unique rows of a sparse update, as the kernel's deduplication found them: state row
// row[u] receives the sum of gradient rows first[u] -> next[first[u]] -> ... -> -1 (in
// input order, so sums are deterministic). Each row has row_size elements.
struct SparseRows {
  const int64_t* row;
  const int32_t* first;
  const int32_t* next;
  int64_t row_size;
};

// Updates unique rows [begin, end) of `rows`, each in one pass. Rows are random in
// memory, which the hardware prefetchers cannot predict: the loop requests them ahead
// (cc/cpu/row_prefetch.h) so that their TLB and DRAM latencies overlap the current work.
template <typename T>
void UpdateRows(const Variant& variant, const Coefficients<ComputeType<T>>& k, const T* grad,
                T* var, T* ms, T* mom, T* mg, const SparseRows& rows, int64_t begin,
                int64_t end);

// One 8-bit state tensor (cc/state8.h): codes in the variable's layout, one absmax per
// block of a row ([rows, BlocksPerRow(row_size)], row-major). Null for a disabled slot.
struct State8 {
  uint8_t* codes;
  float* absmax;
};

// The 8-bit-state update of blocks [block_begin, block_end) of a variable whose rows have
// row_size elements (block b is block b % BlocksPerRow(row_size) of row b / BlocksPerRow):
// per block, one pass: dequantize the state, the formula in float32 (var and grad in T,
// which is Half, BFloat16 or float), the new absmax, requantize. var is updated from the
// unquantized new state.
template <typename T>
void UpdateBlocks8(const Variant& variant, const Coefficients<float>& k, const T* grad, T* var,
                   State8 ms, State8 mom, State8 mg, int64_t row_size, int64_t block_begin,
                   int64_t block_end);

// The 8-bit-state update of unique rows [begin, end) of a sparse update (SparseRows as for
// UpdateRows; a row is its own blocks, so only the named rows' codes and absmax change).
template <typename T>
void UpdateRows8(const Variant& variant, const Coefficients<float>& k, const T* grad, T* var,
                 State8 ms, State8 mom, State8 mg, const SparseRows& rows, int64_t begin,
                 int64_t end);

}  // namespace cpu
}  // namespace tf_rmsprop_ops

#endif  // TF_RMSPROP_OPS_CC_CPU_RMSPROP_X_CPU_H_
