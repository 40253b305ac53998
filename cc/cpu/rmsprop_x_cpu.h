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

// acc[j] = row[j] (in compute precision), and acc[j] += row[j]: summing duplicate rows.
template <typename T>
void LoadRow(const T* row, ComputeType<T>* acc, int64_t n);
template <typename T>
void AddRow(const T* row, ComputeType<T>* acc, int64_t n);

// Asks the memory system for the start of a row that will be written soon. Sparse updates
// touch rows at random, which the hardware prefetchers cannot predict: issuing the loads a
// few rows ahead overlaps their (TLB and DRAM) latency with the current row's work.
inline void PrefetchRowForWrite(const void* row, int64_t bytes) {
  constexpr int64_t kLine = 64, kMaxBytes = 512;  // beyond that, streaming prefetch takes over
  const char* p = static_cast<const char*>(row);
  for (int64_t off = 0; off < bytes && off < kMaxBytes; off += kLine) {
    __builtin_prefetch(p + off, /*rw=*/1, /*locality=*/3);
  }
}

}  // namespace cpu
}  // namespace tf_rmsprop_ops

#endif  // TF_RMSPROP_OPS_CC_CPU_RMSPROP_X_CPU_H_
