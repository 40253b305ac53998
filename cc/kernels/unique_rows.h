// Deduplication of a sparse update's indices: which rows are named, and where each
// row's gradient rows are. One pass, work proportional to the number of indices.
#ifndef TF_RMSPROP_OPS_CC_KERNELS_UNIQUE_ROWS_H_
#define TF_RMSPROP_OPS_CC_KERNELS_UNIQUE_ROWS_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "cc/cpu/rmsprop_x_cpu.h"
#include "cc/kernels/index_error.h"

namespace tf_rmsprop_ops {

// The unique rows of `indices` in order of first appearance, and for each the positions
// of its gradient rows as a chain in input order (so that sums are deterministic):
// first(u) -> next(first(u)) -> ... -> -1.
//
// A small open-addressing table (linear probing, int32 slots) instead of a general hash
// map: an object is kept per thread and reused across steps, so a step allocates
// nothing, and clearing touches only the slots it filled. (absl's flat_hash_map frees
// its storage on clear(): reserving and clearing it cost as much as the hashing.)
class UniqueRows {
 public:
  // Finds the unique rows; fails (having looked at nothing else) when an index is not
  // in [0, num_rows).
  template <typename Index>
  absl::Status Find(const Index* indices, int64_t n, int64_t num_rows);

  int64_t size() const { return static_cast<int64_t>(row_.size()); }
  // What the row loop of cc/cpu/ reads (valid until the next Find).
  cpu::SparseRows View(int64_t row_size) const {
    return {row_.data(), first_.data(), next_.data(), row_size};
  }

 private:
  void Reset(int64_t n);
  size_t CapacityBytes() const;

  std::vector<int64_t> row_;    // unique row u's index value
  std::vector<int32_t> first_;  // its first position in indices
  std::vector<int32_t> last_;   // its last position so far (chain tail while building)
  std::vector<int32_t> next_;   // per position: next position with the same index, or -1
  std::vector<int32_t> table_;  // hash slots: a unique row number, or -1
  std::vector<uint32_t> slot_;  // the table slot of unique row u (to clear only those)
};

// The calling thread's reusable instance (valid until that thread's next Find).
UniqueRows& ThreadLocalUniqueRows();

template <typename Index>
absl::Status UniqueRows::Find(const Index* indices, int64_t n, int64_t num_rows) {
  Reset(n);
  const uint64_t mask = table_.size() - 1;
  const int shift = 64 - __builtin_ctzll(table_.size());
  for (int64_t i = 0; i < n; ++i) {
    const Index index = indices[i];
    if (index < 0 || index >= num_rows) {
      return IndexNotARowError(i, static_cast<int64_t>(index), num_rows);
    }
    // Fibonacci hashing: the top bits of a multiplication spread consecutive rows.
    uint64_t s = (static_cast<uint64_t>(index) * 0x9E3779B97F4A7C15ull) >> shift;
    while (true) {
      const int32_t u = table_[s];
      if (u < 0) {  // a new row
        table_[s] = static_cast<int32_t>(row_.size());
        row_.push_back(index);
        first_.push_back(static_cast<int32_t>(i));
        last_.push_back(static_cast<int32_t>(i));
        slot_.push_back(static_cast<uint32_t>(s));  // < 2^32: n < 2^31
        break;
      }
      if (row_[u] == index) {  // a repeat: append to its chain
        next_[last_[u]] = static_cast<int32_t>(i);
        last_[u] = static_cast<int32_t>(i);
        break;
      }
      s = (s + 1) & mask;
    }
  }
  return absl::OkStatus();
}

}  // namespace tf_rmsprop_ops

#endif  // TF_RMSPROP_OPS_CC_KERNELS_UNIQUE_ROWS_H_
