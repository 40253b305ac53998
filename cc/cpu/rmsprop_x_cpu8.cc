// CPU loop of the 8-bit-state update: the formula of cc/rmsprop_x_update.h between the
// codec of cc/state8.h, one block of 256 elements at a time (the block's state lives in
// L1 between its dequantization and its requantization: one pass over memory).
#include <algorithm>
#include <type_traits>

#include "cc/cpu/rmsprop_x_cpu.h"
#include "cc/cpu/storage.h"
#include "cc/state8.h"

namespace tf_rmsprop_ops {
namespace cpu {
namespace {

template <bool kCentered, bool kMomentum, typename T>
void Blocks8(const Coefficients<float>& k, const T* __restrict__ grad, T* __restrict__ var,
             State8 ms, State8 mom, State8 mg, int64_t row_size, int64_t begin, int64_t end) {
  const DynamicMap& unsigned_map = UnsignedMap();
  const DynamicMap& signed_map = SignedMap();
  const Coefficients<float> kk = k;
  const int64_t per_row = BlocksPerRow(row_size);
  alignas(64) float s[kBlock8], m[kBlock8], a[kBlock8];
  for (int64_t b = begin; b < end; ++b) {
    const int64_t in_row = (b % per_row) * kBlock8;
    const int64_t off = (b / per_row) * row_size + in_row;
    const int64_t n = std::min(kBlock8, row_size - in_row);
    DequantizeBlock(ms.codes + off, ms.absmax[b], n, unsigned_map, s);
    if (kMomentum) DequantizeBlock(mom.codes + off, mom.absmax[b], n, signed_map, m);
    if (kCentered) DequantizeBlock(mg.codes + off, mg.absmax[b], n, signed_map, a);
    for (int64_t i = 0; i < n; ++i) {
      float v = ToCompute(var[off + i]);
      float mi = kMomentum ? m[i] : 0.0f;
      float ai = kCentered ? a[i] : 0.0f;
      UpdateElement<kCentered, kMomentum, float>(kk, ToCompute(grad[off + i]), v, s[i], mi, ai);
      var[off + i] = FromCompute<T>(v);
      if (kMomentum) m[i] = mi;
      if (kCentered) a[i] = ai;
    }
    ms.absmax[b] = QuantizeBlock(s, n, unsigned_map, ms.codes + off);
    if (kMomentum) mom.absmax[b] = QuantizeBlock(m, n, signed_map, mom.codes + off);
    if (kCentered) mg.absmax[b] = QuantizeBlock(a, n, signed_map, mg.codes + off);
  }
}

}  // namespace

template <typename T>
void UpdateBlocks8(const Variant& variant, const Coefficients<float>& k, const T* grad, T* var,
                   State8 ms, State8 mom, State8 mg, int64_t row_size, int64_t block_begin,
                   int64_t block_end) {
  auto run = [&](auto centered, auto momentum) {
    Blocks8<decltype(centered)::value, decltype(momentum)::value>(k, grad, var, ms, mom, mg,
                                                                  row_size, block_begin,
                                                                  block_end);
  };
  if (variant.centered) {
    if (variant.momentum) return run(std::true_type(), std::true_type());
    return run(std::true_type(), std::false_type());
  }
  if (variant.momentum) return run(std::false_type(), std::true_type());
  return run(std::false_type(), std::false_type());
}

#define RMSPROPX_INSTANTIATE8(T)                                                          \
  template void UpdateBlocks8<T>(const Variant&, const Coefficients<float>&, const T*, T*, \
                                 State8, State8, State8, int64_t, int64_t, int64_t);
RMSPROPX_INSTANTIATE8(Half)
RMSPROPX_INSTANTIATE8(BFloat16)
RMSPROPX_INSTANTIATE8(float)
#undef RMSPROPX_INSTANTIATE8

}  // namespace cpu
}  // namespace tf_rmsprop_ops
