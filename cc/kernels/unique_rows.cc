#include "cc/kernels/unique_rows.h"

namespace tf_rmsprop_ops {

// Above this many table slots (16 MiB), a thread gives the memory back when a smaller
// batch follows: one unusual batch should not pin its buffers for the rest of the run.
constexpr size_t kMaxKeptSlots = size_t{1} << 22;

UniqueRows& ThreadLocalUniqueRows() {
  static thread_local UniqueRows unique;
  return unique;
}

void UniqueRows::Reset(int64_t n) {
  size_t slots = 16;  // at most half full: short probe sequences
  while (slots < 2 * static_cast<size_t>(n)) slots *= 2;
  if (table_.size() > kMaxKeptSlots && slots < table_.size()) *this = UniqueRows();
  for (uint32_t s : slot_) table_[s] = -1;  // empty only what the previous call filled
  if (table_.size() != slots) table_.assign(slots, -1);
  row_.clear();
  first_.clear();
  last_.clear();
  slot_.clear();
  next_.assign(n, -1);
}

}  // namespace tf_rmsprop_ops
