// CPU loop of the 8-bit-state update: the formula of cc/rmsprop_x_update.h between the
// codec of cc/state8.h, one block of 256 elements at a time (the block's state lives in
// L1 between its dequantization and its requantization: one pass over memory).
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cc/cpu/rmsprop_x_cpu.h"
#include "cc/cpu/row_prefetch.h"
#include "cc/cpu/storage.h"
#include "cc/state8.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace tf_rmsprop_ops {
namespace cpu {
namespace {

// QuantizeBlock of cc/state8.h, eight elements at a time with AVX2 (GCC leaves the scalar
// loop scalar): the same bucket lookup, midpoint comparison and NaN rule, so the same codes
// (tests/test_state8_op.py pins the op's codes to the reference's).
inline float Quantize(const float* __restrict__ x, int64_t n, const DynamicMap& m,
                      uint8_t* __restrict__ codes) {
#if defined(__AVX2__)
  const float absmax = BlockAbsMax(x, n);
  if (absmax == 0.0f) return QuantizeBlock(x, n, m, codes);  // the zero code everywhere
  const __m256 scale = _mm256_set1_ps(absmax);
  const __m256i exponent_mask = _mm256_set1_epi32(0xff);
  const __m256i min_exponent = _mm256_set1_epi32(static_cast<int>(kLutMinExponent));
  const __m256i last_exponent = _mm256_set1_epi32(static_cast<int>(kLutExponents - 1));
  const __m256i mantissa_mask = _mm256_set1_epi32((1 << kLutMantissaBits) - 1);
  const __m256i exponents = _mm256_set1_epi32(static_cast<int>(kLutExponents));
  const __m256i zero_code = _mm256_set1_epi32(m.zero);
  const __m256i one = _mm256_set1_epi32(1);
  const __m256i low16 = _mm256_set1_epi32(0xffff);
  const __m256i threshold_mask = _mm256_set1_epi32(0x1ffff);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 norm = _mm256_div_ps(_mm256_loadu_ps(x + i), scale);
    const __m256i bits = _mm256_castps_si256(norm);
    const __m256i exponent = _mm256_and_si256(_mm256_srli_epi32(bits, 23), exponent_mask);
    const __m256i tiny = _mm256_cmpgt_epi32(min_exponent, exponent);
    const __m256i e = _mm256_andnot_si256(
        tiny, _mm256_min_epi32(_mm256_sub_epi32(exponent, min_exponent), last_exponent));
    const __m256i mant = _mm256_andnot_si256(
        tiny, _mm256_and_si256(_mm256_srli_epi32(bits, 23 - kLutMantissaBits), mantissa_mask));
    const __m256i bucket = _mm256_add_epi32(
        _mm256_slli_epi32(
            _mm256_add_epi32(_mm256_mullo_epi32(_mm256_srli_epi32(bits, 31), exponents), e),
            kLutMantissaBits),
        mant);
    // One gather of the packed word (DynamicMap::packed): the bucket's code, and whether
    // x reaches the bucket's midpoint, from x's low 16 bits.
    const __m256i entry = _mm256_i32gather_epi32(reinterpret_cast<const int*>(m.packed),
                                                 bucket, 4);
    const __m256i flip = _mm256_and_si256(
        _mm256_sub_epi32(_mm256_setzero_si256(),
                         _mm256_and_si256(_mm256_srli_epi32(entry, 17), one)),
        low16);
    const __m256i low = _mm256_xor_si256(_mm256_and_si256(bits, low16), flip);
    const __m256i below = _mm256_cmpgt_epi32(_mm256_and_si256(entry, threshold_mask), low);
    __m256i code = _mm256_add_epi32(_mm256_add_epi32(_mm256_srli_epi32(entry, 24), one),
                                    below);  // + 1, unless below (-1)
    const __m256 nan = _mm256_cmp_ps(norm, norm, _CMP_UNORD_Q);
    code = _mm256_blendv_epi8(code, zero_code, _mm256_castps_si256(nan));
    const __m256i words = _mm256_packus_epi32(code, code);   // per lane: c0..c3 c0..c3
    const __m256i bytes = _mm256_packus_epi16(words, words);  // per lane: c0..c3 x4
    const uint32_t lo = static_cast<uint32_t>(_mm256_extract_epi32(bytes, 0));
    const uint32_t hi = static_cast<uint32_t>(_mm256_extract_epi32(bytes, 4));
    std::memcpy(codes + i, &lo, 4);
    std::memcpy(codes + i + 4, &hi, 4);
  }
  for (; i < n; ++i) codes[i] = QuantizeNormalized(x[i] / absmax, m);
  return absmax;
#else
  return QuantizeBlock(x, n, m, codes);
#endif
}

// One block of n <= kBlock8 elements, every pointer at the block's start (absmax: the
// block's own). G: T (a dense gradient) or float (a summed sparse row).
template <bool kCentered, bool kMomentum, typename T, typename G>
inline void Block8(const Coefficients<float>& k, const G* __restrict__ grad, T* __restrict__ var,
                   State8 ms, State8 mom, State8 mg, int64_t n, const DynamicMap& unsigned_map,
                   const DynamicMap& signed_map) {
  alignas(64) float s[kBlock8], m[kBlock8], a[kBlock8];
  DequantizeBlock(ms.codes, *ms.absmax, n, unsigned_map, s);
  if (kMomentum) DequantizeBlock(mom.codes, *mom.absmax, n, signed_map, m);
  if (kCentered) DequantizeBlock(mg.codes, *mg.absmax, n, signed_map, a);
  for (int64_t i = 0; i < n; ++i) {
    float v = ToCompute(var[i]);
    float mi = kMomentum ? m[i] : 0.0f;
    float ai = kCentered ? a[i] : 0.0f;
    UpdateElement<kCentered, kMomentum, float>(k, ToCompute(grad[i]), v, s[i], mi, ai);
    var[i] = FromCompute<T>(v);
    if (kMomentum) m[i] = mi;
    if (kCentered) a[i] = ai;
  }
  *ms.absmax = Quantize(s, n, unsigned_map, ms.codes);
  if (kMomentum) *mom.absmax = Quantize(m, n, signed_map, mom.codes);
  if (kCentered) *mg.absmax = Quantize(a, n, signed_map, mg.codes);
}

// A state's pointers at element `off` and block `b` (null stays null).
inline State8 At(State8 s, int64_t off, int64_t b) {
  return s.codes == nullptr ? s : State8{s.codes + off, s.absmax + b};
}

template <bool kCentered, bool kMomentum, typename T>
void Blocks8(const Coefficients<float>& k, const T* grad, T* var, State8 ms, State8 mom,
             State8 mg, int64_t row_size, int64_t begin, int64_t end) {
  const DynamicMap& unsigned_map = UnsignedMap();
  const DynamicMap& signed_map = SignedMap();
  const Coefficients<float> kk = k;
  const int64_t per_row = BlocksPerRow(row_size);
  for (int64_t b = begin; b < end; ++b) {
    const int64_t in_row = (b % per_row) * kBlock8;
    const int64_t off = (b / per_row) * row_size + in_row;
    Block8<kCentered, kMomentum>(kk, grad + off, var + off, At(ms, off, b), At(mom, off, b),
                                 At(mg, off, b), std::min(kBlock8, row_size - in_row),
                                 unsigned_map, signed_map);
  }
}

template <bool kCentered, bool kMomentum, typename T>
void Rows8(const Coefficients<float>& k, const T* grad, T* var, State8 ms, State8 mom,
           State8 mg, const SparseRows& rows, int64_t begin, int64_t end) {
  const DynamicMap& unsigned_map = UnsignedMap();
  const DynamicMap& signed_map = SignedMap();
  const Coefficients<float> kk = k;
  const int64_t n = rows.row_size;
  const int64_t per_row = BlocksPerRow(n);
  // Rows are random in memory: request var's, the codes' and absmax's rows ahead, at the
  // 32-bit loop's two distances (cc/cpu/row_prefetch.h).
  auto request = [&](auto near, int64_t u) __attribute__((always_inline)) {
    constexpr bool kNear = decltype(near)::value;
    const int64_t r = rows.row[u];
    PrefetchRow<kNear>(var + r * n, n * static_cast<int64_t>(sizeof(T)));
    for (const State8* s : {&ms, &mom, &mg}) {
      if (s->codes == nullptr) continue;
      PrefetchRow<kNear>(s->codes + r * n, n);
      PrefetchRow<kNear>(s->absmax + r * per_row, per_row * 4);
    }
    if (kNear) PrefetchRow<true>(grad + rows.first[u] * n, n * static_cast<int64_t>(sizeof(T)));
  };
  const std::true_type near;
  const std::false_type far;
  for (int64_t u = begin; u < std::min(end, begin + kFarRows); ++u) request(far, u);
  for (int64_t u = begin; u < std::min(end, begin + kNearRows); ++u) request(near, u);
  std::vector<float> sum;  // one summed row, for indices that repeat
  for (int64_t u = begin; u < end; ++u) {
    if (u + kFarRows < end) request(far, u + kFarRows);
    if (u + kNearRows < end) request(near, u + kNearRows);
    const int64_t r = rows.row[u];
    int32_t pos = rows.first[u];
    const bool once = rows.next[pos] < 0;
    if (!once) {  // duplicates: their gradient rows summed in input order, in float32
      sum.resize(n);
      for (int64_t i = 0; i < n; ++i) sum[i] = ToCompute(grad[pos * n + i]);
      for (pos = rows.next[pos]; pos >= 0; pos = rows.next[pos]) {
        for (int64_t i = 0; i < n; ++i) sum[i] += ToCompute(grad[pos * n + i]);
      }
    }
    for (int64_t j = 0; j < per_row; ++j) {
      const int64_t off = r * n + j * kBlock8, b = r * per_row + j;
      const int64_t len = std::min(kBlock8, n - j * kBlock8);
      if (once) {
        Block8<kCentered, kMomentum>(kk, grad + rows.first[u] * n + j * kBlock8, var + off,
                                     At(ms, off, b), At(mom, off, b), At(mg, off, b), len,
                                     unsigned_map, signed_map);
      } else {
        Block8<kCentered, kMomentum>(kk, sum.data() + j * kBlock8, var + off, At(ms, off, b),
                                     At(mom, off, b), At(mg, off, b), len, unsigned_map,
                                     signed_map);
      }
    }
  }
}

// Calls f(std::integral_constant<bool, centered>, ..<momentum>) for the variant.
template <typename F>
void WithSlots(const Variant& variant, F&& f) {
  if (variant.centered) {
    if (variant.momentum) return f(std::true_type(), std::true_type());
    return f(std::true_type(), std::false_type());
  }
  if (variant.momentum) return f(std::false_type(), std::true_type());
  return f(std::false_type(), std::false_type());
}

}  // namespace

template <typename T>
void UpdateBlocks8(const Variant& variant, const Coefficients<float>& k, const T* grad, T* var,
                   State8 ms, State8 mom, State8 mg, int64_t row_size, int64_t block_begin,
                   int64_t block_end) {
  WithSlots(variant, [&](auto centered, auto momentum) {
    Blocks8<decltype(centered)::value, decltype(momentum)::value>(
        k, grad, var, ms, mom, mg, row_size, block_begin, block_end);
  });
}

template <typename T>
void UpdateRows8(const Variant& variant, const Coefficients<float>& k, const T* grad, T* var,
                 State8 ms, State8 mom, State8 mg, const SparseRows& rows, int64_t begin,
                 int64_t end) {
  WithSlots(variant, [&](auto centered, auto momentum) {
    Rows8<decltype(centered)::value, decltype(momentum)::value>(k, grad, var, ms, mom, mg, rows,
                                                                begin, end);
  });
}

#define RMSPROPX_INSTANTIATE8(T)                                                          \
  template void UpdateBlocks8<T>(const Variant&, const Coefficients<float>&, const T*, T*, \
                                 State8, State8, State8, int64_t, int64_t, int64_t); \
  template void UpdateRows8<T>(const Variant&, const Coefficients<float>&, const T*, T*,   \
                               State8, State8, State8, const SparseRows&, int64_t, int64_t);
RMSPROPX_INSTANTIATE8(Half)
RMSPROPX_INSTANTIATE8(BFloat16)
RMSPROPX_INSTANTIATE8(float)
#undef RMSPROPX_INSTANTIATE8

}  // namespace cpu
}  // namespace tf_rmsprop_ops
