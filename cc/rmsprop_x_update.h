// The RMSpropX per-element update: the one place the formula lives.
//
// Used by the CPU span loops (cc/cpu/) and, later, the CUDA kernels; the XLA lowering
// (cc/xla/) and the NumPy reference (tf_rmsprop_ops/reference.py) mirror it and the tests
// pin them together. This header includes no TensorFlow header so that a TensorFlow-free
// harness (and nvcc) can compile it.
//
// docs/design.md section 1.1, per element with gradient g:
//   coupled wd:   g   = g + wd * var
//   ms  = rho * ms + (1 - rho) * g * g
//   centered:     mg  = rho * mg + (1 - rho) * g;  v = max(ms - mg * mg, 0)   else v = ms
//   denom = sqrt(v + eps) (eps inside)  |  sqrt(v) + eps (eps outside)
//   step  = g / denom
//   momentum, lr inside:  mom = momentum * mom + lr * step;  upd = nesterov ? momentum * mom + lr * step : mom
//   momentum, lr outside: mom = momentum * mom + step;       upd = lr * (nesterov ? momentum * mom + step : mom)
//   no momentum:          upd = lr * step
//   decoupled wd: var = var - lr * wd * var   (before the step)
//   var = var - upd
//
// The variant flags that change which slots exist (centered, momentum) are template
// parameters. The others are folded into scalar coefficients once per call, so the
// per-element body has no branches and vectorises: e.g. eps outside the sqrt is
// `sqrt(v + 0) + eps`, which is exactly `sqrt(v) + eps`. Terms that a variant does not have
// are selected away, not multiplied by 0: `0 * inf` would be NaN where the formula has no
// such term (an infinite step without Nesterov, an infinite var without weight decay).
#ifndef TF_RMSPROP_OPS_CC_RMSPROP_X_UPDATE_H_
#define TF_RMSPROP_OPS_CC_RMSPROP_X_UPDATE_H_

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define RMSPROPX_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define RMSPROPX_HOST_DEVICE inline __attribute__((always_inline))
#endif

namespace tf_rmsprop_ops {

enum class EpsilonPlacement : int { kInsideSqrt = 0, kOutsideSqrt = 1 };
enum class LrPlacement : int { kInsideMomentum = 0, kOutsideMomentum = 1 };
enum class WeightDecayMode : int { kNone = 0, kDecoupled = 1, kCoupled = 2 };

// The structural choices of one op instance (its attrs).
struct Variant {
  bool centered = false;
  bool momentum = false;
  bool nesterov = false;
  EpsilonPlacement epsilon_placement = EpsilonPlacement::kInsideSqrt;
  LrPlacement lr_placement = LrPlacement::kInsideMomentum;
  WeightDecayMode weight_decay_mode = WeightDecayMode::kNone;
  // The slots' storage: 32 (the variable's dtype) or 8 (codes + absmax, cc/state8.h).
  int state_bits = 32;
};

// The values a schedule may change (the op's scalar inputs), in compute precision.
template <typename C>
struct HyperParams {
  C lr, rho, momentum, epsilon, weight_decay;
};

// Hyperparameters folded with the variant into the coefficients of the branch-free body.
template <typename C>
struct Coefficients {
  C rho, one_minus_rho;
  C eps_in_sqrt, eps_out_sqrt;
  C coupled_wd;      // g += coupled_wd * var
  C decoupled_wd;    // var -= decoupled_wd * var   (lr * wd)
  C momentum;        // mom = momentum * mom + mom_step_scale * step
  C mom_step_scale;  // lr (lr inside momentum) or 1 (outside)
  C upd_mom;         // upd = upd_scale * (upd_mom * mom + upd_step * step)
  C upd_step;
  C upd_scale;
  C lr;              // without momentum: upd = lr * step
  // Which optional terms exist (uniform selects in the loop body, no branches).
  bool coupled, decoupled, nesterov;
};

template <typename C>
RMSPROPX_HOST_DEVICE Coefficients<C> MakeCoefficients(const Variant& v, const HyperParams<C>& h) {
  const bool eps_in = v.epsilon_placement == EpsilonPlacement::kInsideSqrt;
  const bool lr_in = v.lr_placement == LrPlacement::kInsideMomentum;
  Coefficients<C> k;
  k.rho = h.rho;
  k.one_minus_rho = C(1) - h.rho;
  k.eps_in_sqrt = eps_in ? h.epsilon : C(0);
  k.eps_out_sqrt = eps_in ? C(0) : h.epsilon;
  k.coupled_wd = v.weight_decay_mode == WeightDecayMode::kCoupled ? h.weight_decay : C(0);
  k.decoupled_wd = v.weight_decay_mode == WeightDecayMode::kDecoupled ? h.lr * h.weight_decay : C(0);
  k.momentum = h.momentum;
  const C a = lr_in ? h.lr : C(1);  // what multiplies step inside the momentum buffer
  k.mom_step_scale = a;
  k.upd_mom = v.nesterov ? h.momentum : C(1);
  k.upd_step = v.nesterov ? a : C(0);
  k.upd_scale = lr_in ? C(1) : h.lr;
  k.lr = h.lr;
  k.coupled = v.weight_decay_mode == WeightDecayMode::kCoupled;
  k.decoupled = v.weight_decay_mode == WeightDecayMode::kDecoupled;
  k.nesterov = v.nesterov;
  return k;
}

// One element. `mom` and `mg` are read and written only when their feature is on.
template <bool kCentered, bool kMomentum, typename C>
RMSPROPX_HOST_DEVICE void UpdateElement(const Coefficients<C>& k, C g, C& var, C& ms, C& mom,
                                        C& mg) {
  using std::sqrt;
  g = k.coupled ? g + k.coupled_wd * var : g;
  ms = k.rho * ms + k.one_minus_rho * (g * g);
  C v = ms;
  if (kCentered) {
    mg = k.rho * mg + k.one_minus_rho * g;
    v = ms - mg * mg;
    // Rounding can make the variance negative: clamp to 0 (never sqrt of a negative).
    // Written so that a NaN variance stays NaN (as np.maximum and HLO's max): a NaN or inf
    // gradient propagates into its own element and is not hidden by the clamp.
    v = v < C(0) ? C(0) : v;
  }
  const C step = g / (sqrt(v + k.eps_in_sqrt) + k.eps_out_sqrt);
  C upd;
  if (kMomentum) {
    mom = k.momentum * mom + k.mom_step_scale * step;
    upd = k.upd_scale * (k.nesterov ? k.upd_mom * mom + k.upd_step * step : mom);
  } else {
    upd = k.lr * step;
  }
  var = (k.decoupled ? var - k.decoupled_wd * var : var) - upd;
}

}  // namespace tf_rmsprop_ops

#endif  // TF_RMSPROP_OPS_CC_RMSPROP_X_UPDATE_H_
