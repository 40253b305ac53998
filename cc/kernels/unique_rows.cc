#include "cc/kernels/unique_rows.h"

namespace tf_rmsprop_ops {

// Above this many bytes of buffers (the table and the per-index arrays), a thread gives the
// memory back when a batch needing less than half of it follows: one unusual batch should
// not pin its buffers for the rest of the run, and a steady stream of equal batches keeps
// its buffers (no churn).
constexpr size_t kMaxKeptBytes = size_t{16} << 20;

size_t UniqueRows::CapacityBytes() const {
  return table_.capacity() * sizeof(int32_t) + row_.capacity() * sizeof(int64_t) +
         (first_.capacity() + last_.capacity() + next_.capacity()) * sizeof(int32_t) +
         slot_.capacity() * sizeof(uint32_t);
}

UniqueRows& ThreadLocalUniqueRows() {
  static thread_local UniqueRows unique;
  return unique;
}

void UniqueRows::Reset(int64_t n) {
  size_t slots = 16;  // at most half full: short probe sequences
  while (slots < 2 * static_cast<size_t>(n)) slots *= 2;
  const size_t needed = slots * sizeof(int32_t) + static_cast<size_t>(n) * 24;
  const size_t kept = CapacityBytes();
  if (kept > kMaxKeptBytes && needed < kept / 2) *this = UniqueRows();
  for (uint32_t s : slot_) table_[s] = -1;  // empty only what the previous call filled
  if (table_.size() != slots) table_.assign(slots, -1);
  row_.clear();
  first_.clear();
  last_.clear();
  slot_.clear();
  next_.assign(n, -1);
}

}  // namespace tf_rmsprop_ops
