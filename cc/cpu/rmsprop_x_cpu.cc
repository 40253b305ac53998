// CPU span loops: the formula of cc/rmsprop_x_update.h applied over contiguous memory.
#include "cc/cpu/rmsprop_x_cpu.h"

#include <cstring>

namespace tf_rmsprop_ops {
namespace cpu {
namespace {

// Storage <-> compute conversions. Written on the raw bits so that the loops stay plain
// and vectorise (F16C / AVX512-FP16 for half, integer shifts for bfloat16).
inline float ToCompute(Half h) {
  _Float16 f;
  std::memcpy(&f, &h.bits, sizeof(f));
  return static_cast<float>(f);
}
inline float ToCompute(BFloat16 b) {
  const uint32_t u = static_cast<uint32_t>(b.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
inline float ToCompute(float x) { return x; }
inline double ToCompute(double x) { return x; }

template <typename T> inline T FromCompute(ComputeType<T> x);
template <> inline float FromCompute<float>(float x) { return x; }
template <> inline double FromCompute<double>(double x) { return x; }
template <> inline Half FromCompute<Half>(float x) {
  const _Float16 f = static_cast<_Float16>(x);  // round to nearest even
  Half h;
  std::memcpy(&h.bits, &f, sizeof(f));
  return h;
}
template <> inline BFloat16 FromCompute<BFloat16>(float x) {
  // Round to nearest even, as Eigen::bfloat16; NaN stays a (quiet) NaN.
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  const bool is_nan = (u & 0x7fffffffu) > 0x7f800000u;
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  BFloat16 b;
  b.bits = static_cast<uint16_t>(is_nan ? ((u >> 16) | 0x40u) : rounded);
  return b;
}

template <bool kCentered, bool kMomentum, typename T, typename G>
void UpdateSpanImpl(const Coefficients<ComputeType<T>>& k, const G* __restrict__ grad,
                    T* __restrict__ var, T* __restrict__ ms, T* __restrict__ mom,
                    T* __restrict__ mg, int64_t n) {
  using C = ComputeType<T>;
  const Coefficients<C> kk = k;  // a local copy: no aliasing doubts for the vectoriser
  for (int64_t i = 0; i < n; ++i) {
    C v = ToCompute(var[i]);
    C s = ToCompute(ms[i]);
    C m = kMomentum ? ToCompute(mom[i]) : C(0);
    C a = kCentered ? ToCompute(mg[i]) : C(0);
    UpdateElement<kCentered, kMomentum, C>(kk, ToCompute(grad[i]), v, s, m, a);
    var[i] = FromCompute<T>(v);
    ms[i] = FromCompute<T>(s);
    if (kMomentum) mom[i] = FromCompute<T>(m);
    if (kCentered) mg[i] = FromCompute<T>(a);
  }
}

}  // namespace

template <typename T, typename G>
void UpdateSpan(const Variant& variant, const Coefficients<ComputeType<T>>& k, const G* grad,
                T* var, T* ms, T* mom, T* mg, int64_t n) {
  if (variant.centered) {
    if (variant.momentum) return UpdateSpanImpl<true, true>(k, grad, var, ms, mom, mg, n);
    return UpdateSpanImpl<true, false>(k, grad, var, ms, mom, mg, n);
  }
  if (variant.momentum) return UpdateSpanImpl<false, true>(k, grad, var, ms, mom, mg, n);
  return UpdateSpanImpl<false, false>(k, grad, var, ms, mom, mg, n);
}

template <typename T>
void LoadRow(const T* __restrict__ row, ComputeType<T>* __restrict__ acc, int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] = ToCompute(row[i]);
}

template <typename T>
void AddRow(const T* __restrict__ row, ComputeType<T>* __restrict__ acc, int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] += ToCompute(row[i]);
}

#define RMSPROPX_INSTANTIATE(T)                                                              \
  template void UpdateSpan<T, T>(const Variant&, const Coefficients<ComputeType<T>>&, const T*, \
                                 T*, T*, T*, T*, int64_t);                                    \
  template void LoadRow<T>(const T*, ComputeType<T>*, int64_t);                               \
  template void AddRow<T>(const T*, ComputeType<T>*, int64_t);
RMSPROPX_INSTANTIATE(Half)
RMSPROPX_INSTANTIATE(BFloat16)
RMSPROPX_INSTANTIATE(float)
RMSPROPX_INSTANTIATE(double)
#undef RMSPROPX_INSTANTIATE

// Summed sparse rows of half types arrive in float32.
template void UpdateSpan<Half, float>(const Variant&, const Coefficients<float>&, const float*,
                                      Half*, Half*, Half*, Half*, int64_t);
template void UpdateSpan<BFloat16, float>(const Variant&, const Coefficients<float>&,
                                          const float*, BFloat16*, BFloat16*, BFloat16*,
                                          BFloat16*, int64_t);

}  // namespace cpu
}  // namespace tf_rmsprop_ops
