// 8-bit optimizer state in HLO (docs/design.md 1.7): the codec of cc/state8.h around
// XlaUpdate, for the XLA lowerings of ApplyRMSpropX and SparseApplyRMSpropX. The same maps
// (SignedMap()/UnsignedMap() as constants), the block absmax as an integer max over the
// bits with the sign cleared (NaN propagates, as BlockAbsMax), the code as the number of
// float32 midpoints <= x / absmax (a binary search: the same exact nearest code as the
// kernels' bucket table), the zero code for NaN and all-zero blocks. The update runs on a
// [rows, blocks, 256] view padded to whole blocks; padding never reaches an absmax. Tests
// pin the lowering's codes, absmax and var to the CPU kernel's, bit for bit.
#ifndef TF_RMSPROP_OPS_CC_XLA_RMSPROP_X_XLA_STATE8_H_
#define TF_RMSPROP_OPS_CC_XLA_RMSPROP_X_XLA_STATE8_H_

#include <optional>
#include <vector>

#include "cc/xla/rmsprop_x_xla_math.h"

namespace tf_rmsprop_ops {

// One 8-bit state as the update sees it: codes U8 [rows, row], absmax F32 [rows, blocks].
struct Xla8 {
  xla::XlaOp codes, absmax;
};

// The block layout of a variable: rows of `row` elements (cc/state8.h: [shape[0],
// prod(shape[1:])] for rank >= 2, one row otherwise).
struct BlockRows {
  int64_t rows, row;
};
BlockRows RowsOf(const tensorflow::TensorShape& shape);

// Reads the enabled states' codes and absmax (slot inputs 2j and 2j + 1 of `r`), checking
// their dtypes (uint8, float32) and shapes (var's; [rows, blocks per row]) with errors that
// name the slot, and reshapes them to [rows, row] and [rows, blocks].
absl::Status ReadXla8States(tensorflow::XlaOpKernelContext* ctx, const ResourceInputs& r,
                            const Variant& variant, const tensorflow::TensorShape& var_shape,
                            std::vector<Xla8>* states);

// Assigns the states back (codes to var's shape).
absl::Status AssignXla8States(tensorflow::XlaOpKernelContext* ctx, const ResourceInputs& r,
                              const Variant& variant, const tensorflow::TensorShape& var_shape,
                              const std::vector<Xla8>& states);

// One 8-bit step of `rows` rows of `row` elements: var and grad F32 [rows, row], the states
// in order (ms, [mom], [mg]). Returns the new var (F32, from the unquantized new state) and
// the new states; with `valid` false (run-time hyperparameters the kernels would reject)
// var becomes NaN and every state keeps its codes and absmax.
struct Xla8Step {
  xla::XlaOp var;
  std::vector<Xla8> states;
};
Xla8Step XlaUpdate8(xla::XlaBuilder* b, const Variant& variant, const HyperParams<xla::XlaOp>& h,
                    xla::XlaOp grad, xla::XlaOp var, const std::vector<Xla8>& states,
                    int64_t rows, int64_t row, const std::optional<xla::XlaOp>& valid);

}  // namespace tf_rmsprop_ops

#endif  // TF_RMSPROP_OPS_CC_XLA_RMSPROP_X_XLA_STATE8_H_
