// Prefetching of random rows, shared by the sparse row loop (cc/cpu/rmsprop_x_cpu.cc) and
// the benchmark's random-row probe (cc/bench/stream_probe.cc), so that the probe moves rows
// exactly as the kernel does. TensorFlow-free.
#ifndef TF_RMSPROP_OPS_CC_CPU_ROW_PREFETCH_H_
#define TF_RMSPROP_OPS_CC_CPU_ROW_PREFETCH_H_

#include <cstdint>

namespace tf_rmsprop_ops {
namespace cpu {

// Random rows are prefetched at two distances. The near one (into L1, for writing) is
// bounded by the core's few L1 fill buffers; the far one (into L2) keeps more misses in
// flight and turns most near prefetches into L2 hits. Measured (A/B in one process,
// BENCHMARKS.md): the far distance took 14-19% off a 10k-index step (Intel, near 16);
// on an AMD Zen 5 VM a near distance of 4 rows moves the rows 9-13% faster than 16
// (8: 8-11%, 0: 2% slower; far 32-128 within 2%). Once a row is in L2, asking for it
// into L1 only a few rows ahead keeps the fill buffers for the rows in use.
constexpr int64_t kNearRows = 4;
constexpr int64_t kFarRows = 64;

// Requests the first bytes of a row: into L1 for writing (`near`), or into L2 only.
// Always inlined, as must be its callers up to the loop: GCC treats a function that holds
// nothing but prefetches as free of side effects and deletes the calls it does not inline
// (the float kernels once lost every prefetch that way; tests/test_library.py checks the
// built library for them).
template <bool near>
__attribute__((always_inline)) inline void PrefetchRow(const void* row, int64_t bytes) {
  constexpr int64_t kLine = 64, kMaxBytes = 512;  // beyond that, streaming prefetch takes over
  const char* p = static_cast<const char*>(row);
  for (int64_t off = 0; off < bytes && off < kMaxBytes; off += kLine) {
    if (near) {
      __builtin_prefetch(p + off, /*rw=*/1, /*locality=*/3);
    } else {
      __builtin_prefetch(p + off, /*rw=*/0, /*locality=*/1);
    }
  }
}

}  // namespace cpu
}  // namespace tf_rmsprop_ops

#endif  // TF_RMSPROP_OPS_CC_CPU_ROW_PREFETCH_H_
