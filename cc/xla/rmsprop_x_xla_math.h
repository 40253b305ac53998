// The RMSpropX update in HLO: a mirror of cc/rmsprop_x_update.h (the same operations in the
// same order, minus the terms a variant switches off) for the XLA lowerings. Tests pin it
// to the CPU kernel.
#ifndef TF_RMSPROP_OPS_CC_XLA_RMSPROP_X_XLA_MATH_H_
#define TF_RMSPROP_OPS_CC_XLA_RMSPROP_X_XLA_MATH_H_

#include <optional>
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

// The five scalar hyperparameters in compute precision, and whether their values are valid.
struct XlaHyperParams {
  HyperParams<xla::XlaOp> h;
  // A scalar PRED: the hyperparameters that are run-time values pass CheckHyperParams'
  // rules. Unset when all five are compile-time constants (checked while compiling).
  std::optional<xla::XlaOp> valid;
};

// Reads the hyperparameters (checking they are scalars). A compile-time constant is
// checked now (the kernels' InvalidArgument, at compile time); XLA cannot raise at run
// time, so run-time values get `valid`, which XlaUpdate applies.
absl::StatusOr<XlaHyperParams> ReadXlaHyperParams(tensorflow::XlaOpKernelContext* ctx,
                                                  const InputIndex& in,
                                                  xla::PrimitiveType compute);

// UpdateElement over whole arrays of equal shape, as one chain: each output feeds the
// next (ms -> step -> mom -> var). `valid` (XlaHyperParams::valid, set when hyperparameters
// are run-time values): the defined result under XLA of values the kernels would reject,
// var NaN (loud: the loss turns NaN) and every slot keeping its value.
XlaState XlaUpdate(const Variant& variant, const HyperParams<xla::XlaOp>& h, xla::XlaOp g,
                   XlaState s, const std::optional<xla::XlaOp>& valid);

// How a dense update is laid out in HLO (both give the same bits).
enum class OutputLayout {
  // XlaUpdate's chain. XLA:CPU emits one loop per output, each re-reading its producer's
  // output: 7 arrays for the plain variant where one fused pass moves 5. The right form
  // wherever a compiler fuses producer into consumer with several outputs (XLA:GPU).
  kChain,
  // Every output computed from the inputs by its own copy of the formula, so the outputs
  // are siblings that XLA:CPU's multi-output fusion merges into a single loop (one pass,
  // as the native kernel). Without that pass it is worse than the chain: the slot written
  // in place is still read by its siblings, so XLA inserts a copy of it.
  kIndependent,
};

// kIndependent when compiling for XLA:CPU with its multi-output fusion switched on
// (XLA_FLAGS=--xla_backend_extra_options=xla_cpu_use_multi_output_fusion), else kChain.
OutputLayout ChooseOutputLayout(const tensorflow::XlaOpKernelContext* ctx);

// The dense update from var, slots and grad in storage precision: converted to `compute`,
// updated in the given layout, returned in compute precision.
XlaState XlaUpdateDense(const Variant& variant, const HyperParams<xla::XlaOp>& h,
                        xla::PrimitiveType compute, xla::XlaOp g, const XlaState& s,
                        OutputLayout layout, const std::optional<xla::XlaOp>& valid);

// Storage dtype -> compute dtype (half types compute in float32).
xla::PrimitiveType ComputeTypeFor(tensorflow::DataType dtype);

// Reads var and the enabled slots (checking dtype and that all shapes agree), converted to
// `compute` precision (pass the storage type to keep them as stored); `shape` receives
// var's shape.
absl::Status ReadXlaState(tensorflow::XlaOpKernelContext* ctx, const InputIndex& in,
                          const Variant& variant, tensorflow::DataType dtype,
                          xla::PrimitiveType compute, tensorflow::TensorShape* shape,
                          XlaState* state);

// Converts back to the storage dtype and assigns var and the enabled slots.
absl::Status AssignXlaState(tensorflow::XlaOpKernelContext* ctx, const InputIndex& in,
                            const Variant& variant, tensorflow::DataType dtype,
                            const XlaState& state);

// The same two with explicit resource input positions (var, then its slots in order), for
// ApplyRMSpropXMulti, whose variables are not at InputIndex's positions.
struct ResourceInputs {
  int var;
  std::vector<int> slots;
};
absl::Status ReadXlaState(tensorflow::XlaOpKernelContext* ctx, const ResourceInputs& r,
                          const Variant& variant, tensorflow::DataType dtype,
                          xla::PrimitiveType compute, tensorflow::TensorShape* shape,
                          XlaState* state);
absl::Status AssignXlaState(tensorflow::XlaOpKernelContext* ctx, const ResourceInputs& r,
                            const Variant& variant, tensorflow::DataType dtype,
                            const XlaState& state);

// var and the enabled slots of `s`, in input order (var, ms, [mom], [mg]).
std::vector<xla::XlaOp*> StateOps(const Variant& variant, XlaState* s);

// Applies `f` to var and each enabled slot (e.g. a reshape, a gather).
XlaState MapState(const Variant& variant, const XlaState& s,
                  const std::function<xla::XlaOp(xla::XlaOp)>& f);

}  // namespace tf_rmsprop_ops

#endif  // TF_RMSPROP_OPS_CC_XLA_RMSPROP_X_XLA_MATH_H_
