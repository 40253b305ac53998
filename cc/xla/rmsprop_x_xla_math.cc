#include "cc/xla/rmsprop_x_xla_math.h"

#include "absl/strings/str_cat.h"
#include "tensorflow/compiler/tf2xla/type_util.h"
#include "xla/hlo/builder/lib/constants.h"

namespace tf_rmsprop_ops {

using tensorflow::TensorShape;
using tensorflow::XlaOpKernelContext;

xla::PrimitiveType ComputeTypeFor(tensorflow::DataType dtype) {
  return dtype == tensorflow::DT_DOUBLE ? xla::F64 : xla::F32;
}

absl::StatusOr<Coefficients<xla::XlaOp>> ReadXlaCoefficients(XlaOpKernelContext* ctx,
                                                             const InputIndex& in,
                                                             const Variant& v,
                                                             xla::PrimitiveType compute) {
  const std::pair<int, const char*> scalars[] = {{in.lr(), "lr"},
                                                 {in.rho(), "rho"},
                                                 {in.momentum(), "momentum"},
                                                 {in.epsilon(), "epsilon"},
                                                 {in.weight_decay(), "weight_decay"}};
  std::vector<xla::XlaOp> h;
  for (const auto& [index, name] : scalars) {
    const TensorShape shape = ctx->InputShape(index);
    if (!tensorflow::TensorShapeUtils::IsScalar(shape)) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " must be a scalar, got shape ", shape.DebugString()));
    }
    h.push_back(xla::ConvertElementType(ctx->Input(index), compute));
  }
  const xla::XlaOp lr = h[0], rho = h[1], momentum = h[2], eps = h[3], wd = h[4];
  const xla::XlaOp zero = xla::ScalarLike(lr, 0), one = xla::ScalarLike(lr, 1);
  const bool eps_in = v.epsilon_placement == EpsilonPlacement::kInsideSqrt;
  const bool lr_in = v.lr_placement == LrPlacement::kInsideMomentum;
  Coefficients<xla::XlaOp> k;
  k.rho = rho;
  k.one_minus_rho = one - rho;
  k.eps_in_sqrt = eps_in ? eps : zero;
  k.eps_out_sqrt = eps_in ? zero : eps;
  k.coupled_wd = v.weight_decay_mode == WeightDecayMode::kCoupled ? wd : zero;
  k.decoupled_wd = v.weight_decay_mode == WeightDecayMode::kDecoupled ? lr * wd : zero;
  k.momentum = momentum;
  const xla::XlaOp a = lr_in ? lr : one;
  k.mom_step_scale = a;
  k.upd_mom = v.nesterov ? momentum : one;
  k.upd_step = v.nesterov ? a : zero;
  k.upd_scale = lr_in ? one : lr;
  k.lr = lr;
  return k;
}

XlaState XlaUpdate(const Variant& v, const Coefficients<xla::XlaOp>& k, xla::XlaOp g,
                   XlaState s) {
  g = g + k.coupled_wd * s.var;
  s.ms = k.rho * s.ms + k.one_minus_rho * (g * g);
  xla::XlaOp var_est = s.ms;
  if (v.centered) {
    s.mg = k.rho * s.mg + k.one_minus_rho * g;
    var_est = xla::Max(s.ms - s.mg * s.mg, xla::ZerosLike(s.ms));
  }
  const xla::XlaOp step = g / (xla::Sqrt(var_est + k.eps_in_sqrt) + k.eps_out_sqrt);
  xla::XlaOp upd;
  if (v.momentum) {
    s.mom = k.momentum * s.mom + k.mom_step_scale * step;
    upd = k.upd_scale * (k.upd_mom * s.mom + k.upd_step * step);
  } else {
    upd = k.lr * step;
  }
  s.var = (s.var - k.decoupled_wd * s.var) - upd;
  return s;
}

XlaState MapState(const Variant& v, const XlaState& s,
                  const std::function<xla::XlaOp(xla::XlaOp)>& f) {
  XlaState out;
  out.var = f(s.var);
  out.ms = f(s.ms);
  if (v.momentum) out.mom = f(s.mom);
  if (v.centered) out.mg = f(s.mg);
  return out;
}

namespace {
// The slot ops in input order (ms, [mom], [mg]).
std::vector<xla::XlaOp*> SlotOps(const Variant& v, XlaState* s) {
  std::vector<xla::XlaOp*> ops = {&s->ms};
  if (v.momentum) ops.push_back(&s->mom);
  if (v.centered) ops.push_back(&s->mg);
  return ops;
}
}  // namespace

absl::Status ReadXlaState(XlaOpKernelContext* ctx, const InputIndex& in, const Variant& v,
                          tensorflow::DataType dtype, xla::PrimitiveType compute,
                          TensorShape* shape, XlaState* state) {
  TF_RETURN_IF_ERROR(ctx->ReadVariableInput(in.var(), dtype, shape, &state->var));
  state->var = xla::ConvertElementType(state->var, compute);
  const std::vector<std::string> names = SlotNames(v);
  std::vector<xla::XlaOp*> slots = SlotOps(v, state);
  for (int i = 0; i < in.num_slots; ++i) {
    TensorShape slot_shape;
    TF_RETURN_IF_ERROR(ctx->ReadVariableInput(in.slot(i), dtype, &slot_shape, slots[i]));
    if (!slot_shape.IsSameSize(*shape)) {
      return absl::InvalidArgumentError(absl::StrCat("slot '", names[i], "' must have var's shape ",
                                                     shape->DebugString(), ", got ",
                                                     slot_shape.DebugString()));
    }
    *slots[i] = xla::ConvertElementType(*slots[i], compute);
  }
  return absl::OkStatus();
}

absl::Status AssignXlaState(XlaOpKernelContext* ctx, const InputIndex& in, const Variant& v,
                            tensorflow::DataType dtype, const XlaState& state) {
  xla::PrimitiveType storage;
  TF_RETURN_IF_ERROR(tensorflow::DataTypeToPrimitiveType(dtype, &storage));
  XlaState out = state;
  TF_RETURN_IF_ERROR(
      ctx->AssignVariable(in.var(), dtype, xla::ConvertElementType(out.var, storage)));
  std::vector<xla::XlaOp*> slots = SlotOps(v, &out);
  for (int i = 0; i < in.num_slots; ++i) {
    TF_RETURN_IF_ERROR(
        ctx->AssignVariable(in.slot(i), dtype, xla::ConvertElementType(*slots[i], storage)));
  }
  return absl::OkStatus();
}

}  // namespace tf_rmsprop_ops
