// XLA lowering of ApplyRMSpropXMulti: the dense lowering of ApplyRMSpropX for each of the N
// variables, in one computation (one cluster). Same results as the CPU kernel.
#include <vector>

#include "absl/strings/str_cat.h"
#include "cc/xla/rmsprop_x_xla_math.h"
#include "cc/xla/rmsprop_x_xla_state8.h"
#include "tensorflow/compiler/tf2xla/type_util.h"
#include "tensorflow/compiler/tf2xla/xla_op_registry.h"

namespace tf_rmsprop_ops {
namespace {

using tensorflow::XlaOpKernelContext;

class ApplyRMSpropXMultiXlaOp : public tensorflow::XlaOpKernel {
 public:
  explicit ApplyRMSpropXMultiXlaOp(tensorflow::OpKernelConstruction* c) : XlaOpKernel(c) {
    OP_REQUIRES_OK(c, ParseVariant(c, &variant_));
    OP_REQUIRES_OK(c, c->GetAttr("N", &n_));
    int num_slot_inputs;
    OP_REQUIRES_OK(c, c->GetAttr("num_slot_inputs", &num_slot_inputs));
    num_slots_ = static_cast<int>(SlotNames(variant_).size());
    OP_REQUIRES(c, num_slot_inputs == n_ * num_slots_,
                absl::InvalidArgumentError(absl::StrCat(
                    "slots must hold ", num_slots_, " slots for each of the ", n_,
                    " variables, got ", num_slot_inputs)));
  }

  void Compile(XlaOpKernelContext* ctx) override {
    const InputIndex in(n_ + n_ * num_slots_ - 1);  // scalars after the resources
    if (variant_.state_bits == 8) return Compile8(ctx, in);
    const tensorflow::DataType dtype = ctx->input_type(in.grad());
    const xla::PrimitiveType compute = ComputeTypeFor(dtype);
    xla::PrimitiveType storage;
    OP_REQUIRES_OK(ctx, tensorflow::DataTypeToPrimitiveType(dtype, &storage));
    auto k = ReadXlaHyperParams(ctx, in, compute);
    OP_REQUIRES_OK(ctx, k.status());
    const OutputLayout layout = ChooseOutputLayout(ctx);
    // Read and check everything first: an error leaves no variable assigned.
    std::vector<ResourceInputs> resources(n_);
    std::vector<XlaState> states(n_);
    for (int i = 0; i < n_; ++i) {
      resources[i].var = i;
      for (int j = 0; j < num_slots_; ++j) resources[i].slots.push_back(n_ + i * num_slots_ + j);
      tensorflow::TensorShape shape;
      OP_REQUIRES_OK(ctx, ReadXlaState(ctx, resources[i], variant_, dtype, storage, &shape,
                                       &states[i]));
      const tensorflow::TensorShape grad_shape = ctx->InputShape(in.grad() + i);
      OP_REQUIRES(ctx, grad_shape.IsSameSize(shape),
                  absl::InvalidArgumentError(absl::StrCat(
                      "grads[", i, "] must have vars[", i, "]'s shape ", shape.DebugString(),
                      ", got ", grad_shape.DebugString())));
    }
    for (int i = 0; i < n_; ++i) {
      OP_REQUIRES_OK(ctx, AssignXlaState(ctx, resources[i], variant_, dtype,
                                         XlaUpdateDense(variant_, k->h, compute,
                                                        ctx->Input(in.grad() + i), states[i],
                                                        layout, k->valid)));
    }
  }

 private:
  // 8-bit state: ApplyRMSpropX's 8-bit lowering for each variable
  // (cc/xla/rmsprop_x_xla_state8.h); everything read and checked before any assignment.
  void Compile8(XlaOpKernelContext* ctx, const InputIndex& in) {
    const tensorflow::DataType dtype = ctx->input_type(in.grad());
    OP_REQUIRES(ctx, dtype == tensorflow::DT_HALF || dtype == tensorflow::DT_BFLOAT16 ||
                         dtype == tensorflow::DT_FLOAT,
                absl::InvalidArgumentError(absl::StrCat(
                    "state_bits=8 needs half, bfloat16 or float32 variables, got ",
                    tensorflow::DataTypeString(dtype))));
    xla::PrimitiveType storage;
    OP_REQUIRES_OK(ctx, tensorflow::DataTypeToPrimitiveType(dtype, &storage));
    auto k = ReadXlaHyperParams(ctx, in, xla::F32);
    OP_REQUIRES_OK(ctx, k.status());
    std::vector<ResourceInputs> resources(n_);
    std::vector<tensorflow::TensorShape> shapes(n_);
    std::vector<xla::XlaOp> vars(n_);
    std::vector<std::vector<Xla8>> states(n_);
    for (int i = 0; i < n_; ++i) {
      resources[i].var = i;
      for (int j = 0; j < num_slots_; ++j) resources[i].slots.push_back(n_ + i * num_slots_ + j);
      OP_REQUIRES_OK(ctx, ctx->ReadVariableInput(i, dtype, &shapes[i], &vars[i]));
      OP_REQUIRES_OK(ctx, ReadXla8States(ctx, resources[i], variant_, shapes[i], &states[i]));
      const tensorflow::TensorShape grad_shape = ctx->InputShape(in.grad() + i);
      OP_REQUIRES(ctx, grad_shape.IsSameSize(shapes[i]),
                  absl::InvalidArgumentError(absl::StrCat(
                      "grads[", i, "] must have vars[", i, "]'s shape ",
                      shapes[i].DebugString(), ", got ", grad_shape.DebugString())));
    }
    for (int i = 0; i < n_; ++i) {
      if (shapes[i].num_elements() == 0) continue;
      const BlockRows layout = RowsOf(shapes[i]);
      auto as_rows = [&](xla::XlaOp x) {
        return xla::ConvertElementType(xla::Reshape(x, {layout.rows, layout.row}), xla::F32);
      };
      const Xla8Step step =
          XlaUpdate8(ctx->builder(), variant_, k->h, as_rows(ctx->Input(in.grad() + i)),
                     as_rows(vars[i]), states[i], layout.rows, layout.row, k->valid);
      OP_REQUIRES_OK(ctx, ctx->AssignVariable(
                              i, dtype, xla::Reshape(xla::ConvertElementType(step.var, storage),
                                                     shapes[i].dim_sizes())));
      OP_REQUIRES_OK(ctx, AssignXla8States(ctx, resources[i], variant_, shapes[i], step.states));
    }
  }

  Variant variant_;
  int n_ = 0, num_slots_ = 0;
};

REGISTER_XLA_OP(Name("ApplyRMSpropXMulti").TypeConstraint("T", tensorflow::kFloatTypes),
                ApplyRMSpropXMultiXlaOp);

}  // namespace
}  // namespace tf_rmsprop_ops
