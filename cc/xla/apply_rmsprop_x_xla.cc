// XLA lowering of ApplyRMSpropX: elementwise HLO over var and its slots.
#include "absl/strings/str_cat.h"
#include "cc/xla/rmsprop_x_xla_math.h"
#include "tensorflow/compiler/tf2xla/type_util.h"
#include "tensorflow/compiler/tf2xla/xla_op_registry.h"

namespace tf_rmsprop_ops {
namespace {

using tensorflow::XlaOpKernelContext;

class ApplyRMSpropXXlaOp : public tensorflow::XlaOpKernel {
 public:
  explicit ApplyRMSpropXXlaOp(tensorflow::OpKernelConstruction* c) : XlaOpKernel(c) {
    OP_REQUIRES_OK(c, ParseVariant(c, &variant_));
    OP_REQUIRES_OK(c, RequireFloatState(variant_, "the XLA lowering of ApplyRMSpropX"));
  }

  void Compile(XlaOpKernelContext* ctx) override {
    const InputIndex in(static_cast<int>(SlotNames(variant_).size()));
    const tensorflow::DataType dtype = ctx->input_type(in.grad());
    const xla::PrimitiveType compute = ComputeTypeFor(dtype);
    xla::PrimitiveType storage;
    OP_REQUIRES_OK(ctx, tensorflow::DataTypeToPrimitiveType(dtype, &storage));
    tensorflow::TensorShape shape;
    XlaState state;  // as stored: XlaUpdateDense converts per copy of the formula
    OP_REQUIRES_OK(ctx, ReadXlaState(ctx, in, variant_, dtype, storage, &shape, &state));
    const tensorflow::TensorShape grad_shape = ctx->InputShape(in.grad());
    OP_REQUIRES(ctx, grad_shape.IsSameSize(shape),
                absl::InvalidArgumentError(absl::StrCat("grad must have var's shape ",
                                                        shape.DebugString(), ", got ",
                                                        grad_shape.DebugString())));
    auto k = ReadXlaHyperParams(ctx, in, compute);
    OP_REQUIRES_OK(ctx, k.status());
    OP_REQUIRES_OK(ctx, AssignXlaState(ctx, in, variant_, dtype,
                                       XlaUpdateDense(variant_, k->h, compute,
                                                      ctx->Input(in.grad()), state,
                                                      ChooseOutputLayout(ctx), k->valid)));
  }

 private:
  Variant variant_;
};

REGISTER_XLA_OP(Name("ApplyRMSpropX").TypeConstraint("T", tensorflow::kFloatTypes),
                ApplyRMSpropXXlaOp);

}  // namespace
}  // namespace tf_rmsprop_ops
