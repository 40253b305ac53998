// The RMSpropX update in HLO: a mirror of cc/rmsprop_x_update.h (the same operations in the
// same order, minus the terms a variant switches off) for the XLA lowerings. Tests pin it
// to the CPU kernel.
#ifndef TF_RMSPROP_OPS_CC_XLA_RMSPROP_X_XLA_MATH_H_
#define TF_RMSPROP_OPS_CC_XLA_RMSPROP_X_XLA_MATH_H_

#include <vector>

#include "cc/ops/rmsprop_x_attrs.h"
#include "tensorflow/compiler/tf2xla/xla_op_kernel.h"
#include "xla/hlo/builder/xla_builder.h"

namespace tf_rmsprop_ops {

// var and its slots, in compute precision (float32 for half types); mom/mg are unset when
// their feature is off.
struct XlaState {
  xla::XlaOp var, ms, mom, mg;
};

// Reads the five scalar hyperparameters (checking they are scalars) in compute precision.
absl::StatusOr<HyperParams<xla::XlaOp>> ReadXlaHyperParams(tensorflow::XlaOpKernelContext* ctx,
                                                           const InputIndex& in,
                                                           xla::PrimitiveType compute);

// UpdateElement over whole arrays of equal shape.
XlaState XlaUpdate(const Variant& variant, const HyperParams<xla::XlaOp>& h, xla::XlaOp g,
                   XlaState s);

// Storage dtype -> compute dtype (half types compute in float32).
xla::PrimitiveType ComputeTypeFor(tensorflow::DataType dtype);

// Reads var and the enabled slots (checking dtype and that all shapes agree), converted to
// compute precision; `shape` receives var's shape.
absl::Status ReadXlaState(tensorflow::XlaOpKernelContext* ctx, const InputIndex& in,
                          const Variant& variant, tensorflow::DataType dtype,
                          xla::PrimitiveType compute, tensorflow::TensorShape* shape,
                          XlaState* state);

// Converts back to the storage dtype and assigns var and the enabled slots.
absl::Status AssignXlaState(tensorflow::XlaOpKernelContext* ctx, const InputIndex& in,
                            const Variant& variant, tensorflow::DataType dtype,
                            const XlaState& state);

// Applies `f` to var and each enabled slot (e.g. a reshape, a gather).
XlaState MapState(const Variant& variant, const XlaState& s,
                  const std::function<xla::XlaOp(xla::XlaOp)>& f);

}  // namespace tf_rmsprop_ops

#endif  // TF_RMSPROP_OPS_CC_XLA_RMSPROP_X_XLA_MATH_H_
