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

// What both 32-bit paths read first: the dtype, its compute and storage types, the
// hyperparameters and the output layout.
struct Common {
  tensorflow::DataType dtype;
  xla::PrimitiveType compute, storage;
  XlaHyperParams k;
  OutputLayout layout;
};

absl::StatusOr<Common> ReadCommon(XlaOpKernelContext* ctx, const InputIndex& in) {
  Common c;
  c.dtype = ctx->input_type(in.grad());
  c.compute = ComputeTypeFor(c.dtype);
  TF_RETURN_IF_ERROR(tensorflow::DataTypeToPrimitiveType(c.dtype, &c.storage));
  auto k = ReadXlaHyperParams(ctx, in, c.compute);
  TF_RETURN_IF_ERROR(k.status());
  c.k = *std::move(k);
  c.layout = ChooseOutputLayout(ctx);
  return c;
}

class ApplyRMSpropXMultiXlaOp : public tensorflow::XlaOpKernel {
 public:
  explicit ApplyRMSpropXMultiXlaOp(tensorflow::OpKernelConstruction* c) : XlaOpKernel(c) {
    OP_REQUIRES_OK(c, ParseVariant(c, &variant_));
    OP_REQUIRES_OK(c, c->GetAttr("N", &n_));
    int num_slot_inputs;
    OP_REQUIRES_OK(c, c->GetAttr("num_slot_inputs", &num_slot_inputs));
    num_slots_ = static_cast<int>(SlotNames(variant_).size());
    OP_REQUIRES_OK(c, c->GetAttr("slot_offsets", &offsets_));
    flat_ = !offsets_.empty();
    OP_REQUIRES_OK(c, CheckFlatAttrs(variant_, n_, num_slots_, num_slot_inputs, offsets_));
  }

  void Compile(XlaOpKernelContext* ctx) override {
    const InputIndex in(n_ + (flat_ ? num_slots_ : n_ * num_slots_) - 1);  // scalars last
    if (variant_.state_bits == 8) return Compile8(ctx, in);
    if (flat_) return CompileFlat(ctx, in);
    auto common = ReadCommon(ctx, in);
    OP_REQUIRES_OK(ctx, common.status());
    const auto& [dtype, compute, storage, hyper, layout] = *common;
    const XlaHyperParams* k = &hyper;
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

  // Flat buffers (slot_offsets): each buffer read once, each variable's state a slice of
  // it, the updated slices written back with DynamicUpdateSlice (in place in XLA), the same
  // checks as the kernels' (cc/kernels/rmsprop_x_multi_shell.h) at compile time.
  void CompileFlat(XlaOpKernelContext* ctx, const InputIndex& in) {
    auto common = ReadCommon(ctx, in);
    OP_REQUIRES_OK(ctx, common.status());
    const auto& [dtype, compute, storage, hyper, layout] = *common;
    const XlaHyperParams* k = &hyper;
    const std::vector<std::string> names = SlotNames(variant_);
    std::vector<xla::XlaOp> buffers(num_slots_);
    std::vector<int64_t> buffer_size(num_slots_);
    for (int j = 0; j < num_slots_; ++j) {
      tensorflow::TensorShape shape;
      OP_REQUIRES_OK(ctx, ctx->ReadVariableInput(n_ + j, dtype, &shape, &buffers[j]));
      OP_REQUIRES(ctx, shape.dims() == 1,
                  absl::InvalidArgumentError(absl::StrCat(
                      "slots[", j, "] (the flat '", names[j], "' buffer) must be rank 1, got "
                      "shape ", shape.DebugString())));
      buffer_size[j] = shape.num_elements();
    }
    std::vector<XlaState> states(n_);
    std::vector<tensorflow::TensorShape> shapes(n_);
    std::vector<int64_t> ends(num_slots_, 0);  // where each buffer's previous range ends
    for (int i = 0; i < n_; ++i) {
      OP_REQUIRES_OK(ctx, ReadXlaState(ctx, ResourceInputs{i, {}}, variant_, dtype, compute,
                                       &shapes[i], &states[i]));
      const int64_t size = shapes[i].num_elements();
      for (int j = 0; j < num_slots_; ++j) {
        int64_t end = ends[j];
        OP_REQUIRES_OK(ctx, CheckFlatRange(i, offsets_[i], size, buffer_size[j],
                                           absl::StrCat("slots[", j, "] (the flat '",
                                                        names[j], "' buffer)"),
                                           &end));
        ends[j] = end;
      }
      const tensorflow::TensorShape grad_shape = ctx->InputShape(in.grad() + i);
      OP_REQUIRES(ctx, grad_shape.IsSameSize(shapes[i]),
                  absl::InvalidArgumentError(absl::StrCat(
                      "grads[", i, "] must have vars[", i, "]'s shape ",
                      shapes[i].DebugString(), ", got ", grad_shape.DebugString())));
      std::vector<xla::XlaOp*> slots = StateOps(variant_, &states[i]);
      for (int j = 0; j < num_slots_; ++j) {
        *slots[j + 1] = xla::ConvertElementType(
            xla::Reshape(xla::SliceInDim(buffers[j], offsets_[i], offsets_[i] + size, 1, 0),
                         shapes[i].dim_sizes()),
            compute);
      }
    }
    for (int i = 0; i < n_; ++i) {
      XlaState out = XlaUpdateDense(variant_, k->h, compute, ctx->Input(in.grad() + i),
                                    states[i], layout, k->valid);
      OP_REQUIRES_OK(ctx, AssignXlaState(ctx, ResourceInputs{i, {}}, variant_, dtype, out));
      std::vector<xla::XlaOp*> slots = StateOps(variant_, &out);
      const int64_t size = shapes[i].num_elements();
      for (int j = 0; j < num_slots_ && size > 0; ++j) {
        buffers[j] = xla::DynamicUpdateSlice(
            buffers[j], xla::ConvertElementType(xla::Reshape(*slots[j + 1], {size}), storage),
            {xla::ConstantR0<int64_t>(ctx->builder(), offsets_[i])});
      }
    }
    for (int j = 0; j < num_slots_; ++j) {
      OP_REQUIRES_OK(ctx, ctx->AssignVariable(n_ + j, dtype, buffers[j]));
    }
  }

  Variant variant_;
  bool flat_ = false;
  std::vector<int64_t> offsets_;
  int n_ = 0, num_slots_ = 0;
};

REGISTER_XLA_OP(Name("ApplyRMSpropXMulti").TypeConstraint("T", tensorflow::kFloatTypes),
                ApplyRMSpropXMultiXlaOp);

}  // namespace
}  // namespace tf_rmsprop_ops
