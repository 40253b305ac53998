// The error of a sparse update whose indices name a row outside var: one text for the CPU
// and GPU kernels (the Python fallback in tf_rmsprop_ops/ops.py words it the same way).
#ifndef TF_RMSPROP_OPS_CC_KERNELS_INDEX_ERROR_H_
#define TF_RMSPROP_OPS_CC_KERNELS_INDEX_ERROR_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace tf_rmsprop_ops {

inline absl::Status IndexNotARowError(int64_t offset, int64_t value, int64_t rows) {
  return absl::InvalidArgumentError(absl::StrCat(
      "indices[", offset, "] = ", value, " is not in [0, ", rows,
      "): every index must name a row of var. Nothing was updated."));
}

}  // namespace tf_rmsprop_ops

#endif  // TF_RMSPROP_OPS_CC_KERNELS_INDEX_ERROR_H_
