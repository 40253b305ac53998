#include "cc/xla/rmsprop_x_xla_math.h"

#include <limits>
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "tensorflow/compiler/tf2xla/type_util.h"
#include "tensorflow/compiler/tf2xla/xla_compiler.h"
#include "tensorflow/compiler/tf2xla/xla_op_registry.h"
#include "xla/debug_options_flags.h"
#include "xla/hlo/builder/lib/constants.h"
#include "xla/literal.h"

namespace tf_rmsprop_ops {

using tensorflow::TensorShape;
using tensorflow::XlaOpKernelContext;

xla::PrimitiveType ComputeTypeFor(tensorflow::DataType dtype) {
  return dtype == tensorflow::DT_DOUBLE ? xla::F64 : xla::F32;
}

absl::StatusOr<XlaHyperParams> ReadXlaHyperParams(XlaOpKernelContext* ctx, const InputIndex& in,
                                                  xla::PrimitiveType compute) {
  std::vector<xla::XlaOp> h;
  std::optional<xla::XlaOp> valid;
  // The smallest normal number of the compute type (CheckHyperParam's `tiny`).
  const double tiny = compute == xla::F64 ? std::numeric_limits<double>::min()
                                          : std::numeric_limits<float>::min();
  for (const auto& [index, name] : in.scalars()) {
    const TensorShape shape = ctx->InputShape(index);
    if (!tensorflow::TensorShapeUtils::IsScalar(shape)) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " must be a scalar, got shape ", shape.DebugString()));
    }
    const xla::XlaOp x = xla::ConvertElementType(ctx->Input(index), compute);
    h.push_back(x);
    xla::Literal constant;
    if (ctx->ConstantInput(index, &constant).ok()) {
      TF_ASSIGN_OR_RETURN(xla::Literal f64, constant.Convert(xla::F64));
      TF_RETURN_IF_ERROR(CheckHyperParam(name, f64.GetFirstElement<double>(), tiny));
      continue;
    }
    // CheckHyperParam's rules in HLO (a NaN fails every comparison).
    const bool is_rho = std::string_view(name) == "rho";
    xla::XlaOp ok = xla::And(xla::IsFinite(x), xla::Gt(x, xla::ScalarLike(x, -tiny)));
    if (is_rho) ok = xla::And(ok, xla::Le(x, xla::ScalarLike(x, 1)));
    valid = valid ? xla::And(*valid, ok) : ok;
  }
  return XlaHyperParams{HyperParams<xla::XlaOp>{h[0], h[1], h[2], h[3], h[4]}, valid};
}

// The variant is known when the graph is compiled, so unlike the CPU loops (which fold
// it into coefficients to stay branch-free) the HLO contains only the enabled terms.
// With `valid` (run-time hyperparameters), each output is guarded where the chain computes
// it: a slot keeps its value, var becomes NaN. Guarding at the end instead (select(valid,
// new, old) on every output) made the old slots live past their in-place update: XLA:CPU
// copied them and materialised the step, 2x the native kernel's time (bench --models).
XlaState XlaUpdate(const Variant& v, const HyperParams<xla::XlaOp>& h, xla::XlaOp g,
                   XlaState s, const std::optional<xla::XlaOp>& valid) {
  auto keep = [&](xla::XlaOp updated, xla::XlaOp before) {
    return valid ? xla::Select(*valid, updated, before) : updated;
  };
  const xla::XlaOp one_minus_rho = xla::ScalarLike(h.rho, 1) - h.rho;
  if (v.weight_decay_mode == WeightDecayMode::kCoupled) g = g + h.weight_decay * s.var;
  s.ms = keep(h.rho * s.ms + one_minus_rho * (g * g), s.ms);
  xla::XlaOp var_est = s.ms;
  if (v.centered) {
    s.mg = keep(h.rho * s.mg + one_minus_rho * g, s.mg);
    var_est = xla::Max(s.ms - s.mg * s.mg, xla::ScalarLike(s.ms, 0));
  }
  const xla::XlaOp denom = v.epsilon_placement == EpsilonPlacement::kInsideSqrt
                               ? xla::Sqrt(var_est + h.epsilon)
                               : xla::Sqrt(var_est) + h.epsilon;
  const xla::XlaOp step = g / denom;
  xla::XlaOp upd;
  if (!v.momentum) {
    upd = h.lr * step;
  } else if (v.lr_placement == LrPlacement::kInsideMomentum) {
    s.mom = keep(h.momentum * s.mom + h.lr * step, s.mom);
    upd = v.nesterov ? h.momentum * s.mom + h.lr * step : s.mom;
  } else {
    s.mom = keep(h.momentum * s.mom + step, s.mom);
    upd = h.lr * (v.nesterov ? h.momentum * s.mom + step : s.mom);
  }
  if (v.weight_decay_mode == WeightDecayMode::kDecoupled) {
    s.var = s.var - (h.lr * h.weight_decay) * s.var;
  }
  s.var = keep(s.var - upd, xla::FullLike(s.var, std::numeric_limits<double>::quiet_NaN()));
  return s;
}

namespace {

// Copy `copy` of the formula reads every input through its own exact identity (x,
// x + -0, max(x, -inf), min(x, +inf): the same bits, NaN included). Without the tags HLO's
// common-subexpression elimination would merge the copies back into one chain; with them
// no instruction is shared between two outputs, which would otherwise become an array of
// its own. LLVM removes the identities from the loop.
xla::XlaOp TagForCopy(xla::XlaOp x, int copy) {
  switch (copy) {
    case 0: return x;
    case 1: return x + xla::ScalarLike(x, -0.0);
    case 2: return xla::Max(x, xla::ScalarLike(x, -std::numeric_limits<double>::infinity()));
    default: return xla::Min(x, xla::ScalarLike(x, std::numeric_limits<double>::infinity()));
  }
}

bool HasBackendOption(const xla::DebugOptions& options, const std::string& key) {
  return options.xla_backend_extra_options().contains(key);
}

}  // namespace

OutputLayout ChooseOutputLayout(const XlaOpKernelContext* ctx) {
  if (ctx->compiler()->options().device_type.type_string() != tensorflow::DEVICE_CPU_XLA_JIT) {
    return OutputLayout::kChain;
  }
  // XLA reads its flags once per process; so do we. The conditions mirror
  // xla::cpu::options::UseMultiOutputFusion.
  static const bool multi_output_fusion = [] {
    const xla::DebugOptions options = xla::GetDebugOptionsFromFlags();
    return HasBackendOption(options, "xla_cpu_use_multi_output_fusion") &&
           !HasBackendOption(options, "xla_cpu_disable_new_fusion_emitters");
  }();
  return multi_output_fusion ? OutputLayout::kIndependent : OutputLayout::kChain;
}

XlaState XlaUpdateDense(const Variant& v, const HyperParams<xla::XlaOp>& h,
                        xla::PrimitiveType compute, xla::XlaOp g, const XlaState& s,
                        OutputLayout layout, const std::optional<xla::XlaOp>& valid) {
  // A copy of the whole update from (tagged) inputs; XLA drops what its output does not use.
  auto copy_of_update = [&](int copy) {
    auto in = [&](xla::XlaOp x) { return xla::ConvertElementType(TagForCopy(x, copy), compute); };
    return XlaUpdate(v, h, in(g), MapState(v, s, in), valid);
  };
  if (layout == OutputLayout::kChain) return copy_of_update(0);
  XlaState out;
  out.ms = copy_of_update(0).ms;
  out.var = copy_of_update(1).var;
  if (v.momentum) out.mom = copy_of_update(2).mom;
  if (v.centered) out.mg = copy_of_update(3).mg;
  return out;
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

std::vector<xla::XlaOp*> StateOps(const Variant& v, XlaState* s) {
  std::vector<xla::XlaOp*> ops = {&s->var, &s->ms};
  if (v.momentum) ops.push_back(&s->mom);
  if (v.centered) ops.push_back(&s->mg);
  return ops;
}

namespace {
// The slot ops in input order (ms, [mom], [mg]).
std::vector<xla::XlaOp*> SlotOps(const Variant& v, XlaState* s) {
  std::vector<xla::XlaOp*> ops = StateOps(v, s);
  ops.erase(ops.begin());
  return ops;
}
}  // namespace

namespace {
ResourceInputs ResourcesOf(const InputIndex& in) {
  ResourceInputs r{in.var(), {}};
  for (int i = 0; i < in.num_slots; ++i) r.slots.push_back(in.slot(i));
  return r;
}
}  // namespace

absl::Status ReadXlaState(XlaOpKernelContext* ctx, const InputIndex& in, const Variant& v,
                          tensorflow::DataType dtype, xla::PrimitiveType compute,
                          TensorShape* shape, XlaState* state) {
  return ReadXlaState(ctx, ResourcesOf(in), v, dtype, compute, shape, state);
}

absl::Status ReadXlaState(XlaOpKernelContext* ctx, const ResourceInputs& r, const Variant& v,
                          tensorflow::DataType dtype, xla::PrimitiveType compute,
                          TensorShape* shape, XlaState* state) {
  TF_RETURN_IF_ERROR(ctx->ReadVariableInput(r.var, dtype, shape, &state->var));
  state->var = xla::ConvertElementType(state->var, compute);
  const std::vector<std::string> names = SlotNames(v);
  std::vector<xla::XlaOp*> slots = SlotOps(v, state);
  for (size_t i = 0; i < r.slots.size(); ++i) {
    TensorShape slot_shape;
    TF_RETURN_IF_ERROR(ctx->ReadVariableInput(r.slots[i], dtype, &slot_shape, slots[i]));
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
  return AssignXlaState(ctx, ResourcesOf(in), v, dtype, state);
}

absl::Status AssignXlaState(XlaOpKernelContext* ctx, const ResourceInputs& r, const Variant& v,
                            tensorflow::DataType dtype, const XlaState& state) {
  xla::PrimitiveType storage;
  TF_RETURN_IF_ERROR(tensorflow::DataTypeToPrimitiveType(dtype, &storage));
  XlaState out = state;
  TF_RETURN_IF_ERROR(ctx->AssignVariable(r.var, dtype, xla::ConvertElementType(out.var, storage)));
  std::vector<xla::XlaOp*> slots = SlotOps(v, &out);
  for (size_t i = 0; i < r.slots.size(); ++i) {
    TF_RETURN_IF_ERROR(
        ctx->AssignVariable(r.slots[i], dtype, xla::ConvertElementType(*slots[i], storage)));
  }
  return absl::OkStatus();
}

}  // namespace tf_rmsprop_ops
