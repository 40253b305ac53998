// CPU span loops: the formula of cc/rmsprop_x_update.h applied over contiguous memory.
#include "cc/cpu/rmsprop_x_cpu.h"

#include <algorithm>
#include <cstring>
#include <type_traits>

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace tf_rmsprop_ops {
namespace cpu {
namespace {

// Storage <-> compute conversions, on the raw bits. Scalar versions for tails and rows;
// the 16-bit types are otherwise converted a block at a time (ToFloatBlock/FromFloatBlock),
// in loops that vectorise, around the float32 update loop.
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

void ToFloatBlock(const Half* __restrict__ in, float* __restrict__ out, int64_t n) {
  int64_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(
                                  reinterpret_cast<const __m128i*>(in + i))));
  }
#endif
  for (; i < n; ++i) out[i] = ToCompute(in[i]);
}
void FromFloatBlock(const float* __restrict__ in, Half* __restrict__ out, int64_t n) {
  int64_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT));
  }
#endif
  for (; i < n; ++i) out[i] = FromCompute<Half>(in[i]);
}
// bfloat16 blocks: plain integer loops on the bits (a struct element type would keep the
// vectoriser away), the same arithmetic as the scalar conversions above.
void ToFloatBlock(const BFloat16* __restrict__ in, float* __restrict__ out, int64_t n) {
  const uint16_t* bits = &in->bits;
  uint32_t* widened = reinterpret_cast<uint32_t*>(out);  // float buffer, written as bits
  for (int64_t i = 0; i < n; ++i) widened[i] = static_cast<uint32_t>(bits[i]) << 16;
}
void FromFloatBlock(const float* __restrict__ in, BFloat16* __restrict__ out, int64_t n) {
  const uint32_t* u = reinterpret_cast<const uint32_t*>(in);
  uint16_t* bits = &out->bits;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t x = u[i];
    const uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
    const uint32_t nan = (x >> 16) | 0x40u;
    bits[i] = static_cast<uint16_t>((x & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
  }
}

template <bool kCentered, bool kMomentum, typename T, typename G>
// One pass over n elements, in the storage type (float, double) or, for 16-bit types,
// over float32 blocks.
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

// bfloat16 without blocks: the widening and rounding are integer operations that
// vectorise inside the update loop itself, so the data crosses the core once.
inline float Bf16BitsToFloat(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
inline uint16_t FloatToBf16Bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof(x));
  const uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
  const uint32_t nan = (x >> 16) | 0x40u;
  return static_cast<uint16_t>((x & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

template <bool kCentered, bool kMomentum, typename G>
void UpdateSpanBf16(const Coefficients<float>& k, const G* __restrict__ grad,
                    uint16_t* __restrict__ var, uint16_t* __restrict__ ms,
                    uint16_t* __restrict__ mom, uint16_t* __restrict__ mg, int64_t n) {
  const Coefficients<float> kk = k;
  for (int64_t i = 0; i < n; ++i) {
    float g;
    if constexpr (std::is_same_v<G, float>) {
      g = grad[i];
    } else {
      g = Bf16BitsToFloat(grad[i].bits);
    }
    float v = Bf16BitsToFloat(var[i]);
    float s = Bf16BitsToFloat(ms[i]);
    float m = kMomentum ? Bf16BitsToFloat(mom[i]) : 0.f;
    float a = kCentered ? Bf16BitsToFloat(mg[i]) : 0.f;
    UpdateElement<kCentered, kMomentum, float>(kk, g, v, s, m, a);
    var[i] = FloatToBf16Bits(v);
    ms[i] = FloatToBf16Bits(s);
    if (kMomentum) mom[i] = FloatToBf16Bits(m);
    if (kCentered) mg[i] = FloatToBf16Bits(a);
  }
}

// half: each block is widened to float32, updated by the float32 loop (the same
// instantiation float variables use) and narrowed back: every loop stays vectorised.
template <bool kCentered, bool kMomentum, typename T, typename G>
void UpdateSpanViaFloat(const Coefficients<float>& k, const G* grad, T* var, T* ms, T* mom,
                        T* mg, int64_t n) {
  constexpr int64_t kChunk = 512;
  alignas(64) float v[kChunk], s[kChunk], m[kChunk], a[kChunk], g[kChunk];
  for (int64_t off = 0; off < n; off += kChunk) {
    const int64_t len = std::min(kChunk, n - off);
    const float* g_block = g;
    if constexpr (std::is_same_v<G, float>) {
      g_block = grad + off;  // a summed sparse row, already float32
    } else {
      ToFloatBlock(grad + off, g, len);
    }
    ToFloatBlock(var + off, v, len);
    ToFloatBlock(ms + off, s, len);
    if (kMomentum) ToFloatBlock(mom + off, m, len);
    if (kCentered) ToFloatBlock(mg + off, a, len);
    UpdateSpanImpl<kCentered, kMomentum, float, float>(k, g_block, v, s, m, a, len);
    FromFloatBlock(v, var + off, len);
    FromFloatBlock(s, ms + off, len);
    if (kMomentum) FromFloatBlock(m, mom + off, len);
    if (kCentered) FromFloatBlock(a, mg + off, len);
  }
}

// Streams of 4 KiB pages: the hardware prefetchers stop at every page boundary, so each
// stream stalls on a TLB walk and a cold line per page. Software prefetches a fixed
// distance ahead cross the boundary early. The span is walked in short chunks (a multiple
// of every vector width) with one prefetch per stream and cache line ahead.
template <bool kCentered, bool kMomentum, typename T, typename G>
void UpdateSpanPrefetched(const Coefficients<ComputeType<T>>& k, const G* grad, T* var, T* ms,
                          T* mom, T* mg, int64_t n) {
  constexpr int64_t kChunk = 64 / sizeof(T) * 4;              // 4 cache lines per stream
  constexpr int64_t kAhead = 2048 / sizeof(T);                // 2 KiB ahead (measured best)
  int64_t off = 0;
  for (; off + kChunk + kAhead <= n; off += kChunk) {
    for (int64_t line = 0; line < kChunk; line += 64 / sizeof(T)) {
      const int64_t at = off + kAhead + line;
      __builtin_prefetch(grad + at, 0, 3);
      __builtin_prefetch(var + at, 1, 3);
      __builtin_prefetch(ms + at, 1, 3);
      if (kMomentum) __builtin_prefetch(mom + at, 1, 3);
      if (kCentered) __builtin_prefetch(mg + at, 1, 3);
    }
    UpdateSpanImpl<kCentered, kMomentum>(k, grad + off, var + off, ms + off,
                                         kMomentum ? mom + off : nullptr,
                                         kCentered ? mg + off : nullptr, kChunk);
  }
  UpdateSpanImpl<kCentered, kMomentum>(k, grad + off, var + off, ms + off,
                                       kMomentum ? mom + off : nullptr,
                                       kCentered ? mg + off : nullptr, n - off);
}

template <bool kCentered, bool kMomentum, typename T, typename G>
void UpdateSpanDispatch(const Coefficients<ComputeType<T>>& k, const G* grad, T* var, T* ms,
                        T* mom, T* mg, int64_t n) {
  if constexpr (std::is_same_v<T, BFloat16>) {
    auto bits = [](BFloat16* p) { return p ? &p->bits : nullptr; };
    UpdateSpanBf16<kCentered, kMomentum>(k, grad, bits(var), bits(ms), bits(mom), bits(mg), n);
  } else if constexpr (std::is_same_v<T, Half>) {
    UpdateSpanViaFloat<kCentered, kMomentum>(k, grad, var, ms, mom, mg, n);
  } else {
    UpdateSpanPrefetched<kCentered, kMomentum>(k, grad, var, ms, mom, mg, n);
  }
}

}  // namespace

template <typename T, typename G>
void UpdateSpan(const Variant& variant, const Coefficients<ComputeType<T>>& k, const G* grad,
                T* var, T* ms, T* mom, T* mg, int64_t n) {
  if (variant.centered) {
    if (variant.momentum) return UpdateSpanDispatch<true, true>(k, grad, var, ms, mom, mg, n);
    return UpdateSpanDispatch<true, false>(k, grad, var, ms, mom, mg, n);
  }
  if (variant.momentum) return UpdateSpanDispatch<false, true>(k, grad, var, ms, mom, mg, n);
  return UpdateSpanDispatch<false, false>(k, grad, var, ms, mom, mg, n);
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
