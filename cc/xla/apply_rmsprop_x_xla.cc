// XLA lowering of ApplyRMSpropX: elementwise HLO over var and its slots.
#include "absl/strings/str_cat.h"
#include "cc/xla/rmsprop_x_xla_math.h"
#include "cc/xla/rmsprop_x_xla_state8.h"
#include "tensorflow/compiler/tf2xla/type_util.h"
#include "tensorflow/compiler/tf2xla/xla_op_registry.h"

namespace tf_rmsprop_ops {
namespace {

using tensorflow::XlaOpKernelContext;

class ApplyRMSpropXXlaOp : public tensorflow::XlaOpKernel {
 public:
  explicit ApplyRMSpropXXlaOp(tensorflow::OpKernelConstruction* c) : XlaOpKernel(c) {
    OP_REQUIRES_OK(c, ParseVariant(c, &variant_));
  }

  void Compile(XlaOpKernelContext* ctx) override {
    const InputIndex in(static_cast<int>(SlotNames(variant_).size()));
    if (variant_.state_bits == 8) return Compile8(ctx, in);
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
  // 8-bit state (cc/xla/rmsprop_x_xla_state8.h): var in float32 for the update, its rows
  // in blocks of 256.
  void Compile8(XlaOpKernelContext* ctx, const InputIndex& in) {
    const tensorflow::DataType dtype = ctx->input_type(in.grad());
    OP_REQUIRES(ctx, dtype == tensorflow::DT_HALF || dtype == tensorflow::DT_BFLOAT16 ||
                         dtype == tensorflow::DT_FLOAT,
                absl::InvalidArgumentError(absl::StrCat(
                    "state_bits=8 needs a half, bfloat16 or float32 variable, got ",
                    tensorflow::DataTypeString(dtype))));
    tensorflow::TensorShape shape;
    xla::XlaOp var;
    OP_REQUIRES_OK(ctx, ctx->ReadVariableInput(in.var(), dtype, &shape, &var));
    const tensorflow::TensorShape grad_shape = ctx->InputShape(in.grad());
    OP_REQUIRES(ctx, grad_shape.IsSameSize(shape),
                absl::InvalidArgumentError(absl::StrCat("grad must have var's shape ",
                                                        shape.DebugString(), ", got ",
                                                        grad_shape.DebugString())));
    ResourceInputs r{in.var(), {}};
    for (int i = 0; i < in.num_slots; ++i) r.slots.push_back(in.slot(i));
    std::vector<Xla8> states;
    OP_REQUIRES_OK(ctx, ReadXla8States(ctx, r, variant_, shape, &states));
    auto k = ReadXlaHyperParams(ctx, in, xla::F32);
    OP_REQUIRES_OK(ctx, k.status());
    if (shape.num_elements() == 0) return;
    const BlockRows layout = RowsOf(shape);
    auto as_rows = [&](xla::XlaOp x) {
      return xla::ConvertElementType(xla::Reshape(x, {layout.rows, layout.row}), xla::F32);
    };
    const Xla8Step step = XlaUpdate8(ctx->builder(), variant_, k->h, as_rows(ctx->Input(in.grad())),
                                     as_rows(var), states, layout.rows, layout.row, k->valid);
    xla::PrimitiveType storage;
    OP_REQUIRES_OK(ctx, tensorflow::DataTypeToPrimitiveType(dtype, &storage));
    OP_REQUIRES_OK(ctx, ctx->AssignVariable(in.var(), dtype,
                                            xla::Reshape(xla::ConvertElementType(step.var, storage),
                                                         shape.dim_sizes())));
    OP_REQUIRES_OK(ctx, AssignXla8States(ctx, r, variant_, shape, step.states));
  }

  Variant variant_;
};

REGISTER_XLA_OP(Name("ApplyRMSpropX").TypeConstraint("T", tensorflow::kFloatTypes),
                ApplyRMSpropXXlaOp);

}  // namespace
}  // namespace tf_rmsprop_ops
