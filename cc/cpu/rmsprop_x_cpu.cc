// CPU span loops: the formula of cc/rmsprop_x_update.h applied over contiguous memory.
#include "cc/cpu/rmsprop_x_cpu.h"

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cc/cpu/row_prefetch.h"
#include "cc/cpu/storage.h"

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace tf_rmsprop_ops {
namespace cpu {
namespace {

// half blocks: F16C converts 8 at a time. Not inlined: one call per block costs nothing,
// and inlined copies made GCC warn about the scalar tails.
__attribute__((noinline)) void ToFloatBlock(const Half* __restrict__ in,
                                            float* __restrict__ out, int64_t n) {
  int64_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(
                                  reinterpret_cast<const __m128i*>(in + i))));
  }
#endif
  for (; i < n; ++i) out[i] = ToCompute(in[i]);
}
__attribute__((noinline)) void FromFloatBlock(const float* __restrict__ in,
                                              Half* __restrict__ out, int64_t n) {
  int64_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT));
  }
#endif
  for (; i < n; ++i) out[i] = FromCompute<Half>(in[i]);
}

// p + off, or null for a slot whose feature is off.
template <typename P>
P* OffsetOrNull(P* p, int64_t off) {
  return p != nullptr ? p + off : p;
}

// One pass over n elements in float or double (half reaches it through float32 blocks).
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

// bfloat16 without blocks: the widening and rounding (Bf16BitsToFloat, FloatToBf16Bits)
// are integer operations that vectorise inside the update loop itself, so the data
// crosses the core once.
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
// distance ahead cross the boundary early. The span is walked in chunks of four cache lines
// per stream (a multiple of every vector width), one prefetch per stream and line, and
// `span(offset, length)` updates each chunk.
template <typename T, typename G, typename Span>
void WithStreamPrefetch(const G* grad, T* var, T* ms, T* mom, T* mg, int64_t n, Span&& span) {
  constexpr int64_t kLine = 64 / sizeof(T);
  constexpr int64_t kChunk = 4 * kLine;
  constexpr int64_t kAhead = 2048 / sizeof(T);  // 2 KiB ahead: measured best here
  int64_t off = 0;
  for (; off + kChunk + kAhead <= n; off += kChunk) {
    for (int64_t line = 0; line < kChunk; line += kLine) {
      const int64_t at = off + kAhead + line;
      __builtin_prefetch(grad + at, 0, 3);
      __builtin_prefetch(var + at, 1, 3);
      __builtin_prefetch(ms + at, 1, 3);
      if (mom != nullptr) __builtin_prefetch(mom + at, 1, 3);
      if (mg != nullptr) __builtin_prefetch(mg + at, 1, 3);
    }
    span(off, kChunk);
  }
  span(off, n - off);
}

template <bool kCentered, bool kMomentum, typename T, typename G>
void UpdateSpanDispatch(const Coefficients<ComputeType<T>>& k, const G* grad, T* var, T* ms,
                        T* mom, T* mg, int64_t n) {
  WithStreamPrefetch(grad, var, ms, mom, mg, n, [&](int64_t off, int64_t len) {
    T* const mom_at = OffsetOrNull(mom, off);
    T* const mg_at = OffsetOrNull(mg, off);
    if constexpr (std::is_same_v<T, BFloat16>) {
      auto bits = [](BFloat16* p) { return p != nullptr ? &p->bits : nullptr; };
      UpdateSpanBf16<kCentered, kMomentum>(k, grad + off, bits(var + off), bits(ms + off),
                                           bits(mom_at), bits(mg_at), len);
    } else if constexpr (std::is_same_v<T, Half>) {
      UpdateSpanViaFloat<kCentered, kMomentum>(k, grad + off, var + off, ms + off, mom_at, mg_at,
                                               len);
    } else {
      UpdateSpanImpl<kCentered, kMomentum>(k, grad + off, var + off, ms + off, mom_at, mg_at,
                                           len);
    }
  });
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

namespace {

// acc[j] = row[j] and acc[j] += row[j], in compute precision: summing repeated rows.
template <typename T>
void LoadRow(const T* __restrict__ row, ComputeType<T>* __restrict__ acc, int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] = ToCompute(row[i]);
}
template <typename T>
void AddRow(const T* __restrict__ row, ComputeType<T>* __restrict__ acc, int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] += ToCompute(row[i]);
}

}  // namespace

template <typename T>
void UpdateRows(const Variant& variant, const Coefficients<ComputeType<T>>& k, const T* grad,
                T* var, T* ms, T* mom, T* mg, const SparseRows& rows, int64_t begin,
                int64_t end) {
  using C = ComputeType<T>;
  const int64_t n = rows.row_size;
  const int64_t bytes = n * static_cast<int64_t>(sizeof(T));
  // Row u of var and the enabled slots; when near, into L1 and with its gradient row.
  auto request = [&](auto near, int64_t u) __attribute__((always_inline)) {
    constexpr bool kNear = decltype(near)::value;
    const int64_t off = rows.row[u] * n;
    PrefetchRow<kNear>(var + off, bytes);
    PrefetchRow<kNear>(ms + off, bytes);
    if (mom != nullptr) PrefetchRow<kNear>(mom + off, bytes);
    if (mg != nullptr) PrefetchRow<kNear>(mg + off, bytes);
    if (kNear) PrefetchRow<true>(grad + rows.first[u] * n, bytes);
  };
  const std::true_type near;
  const std::false_type far;
  std::vector<C> sum;  // one summed row, for indices that repeat
  for (int64_t u = begin; u < std::min(end, begin + kFarRows); ++u) request(far, u);
  for (int64_t u = begin; u < std::min(end, begin + kNearRows); ++u) request(near, u);
  for (int64_t u = begin; u < end; ++u) {
    if (u + kFarRows < end) request(far, u + kFarRows);
    if (u + kNearRows < end) request(near, u + kNearRows);
    const int64_t off = rows.row[u] * n;
    T* const mom_at = OffsetOrNull(mom, off);
    T* const mg_at = OffsetOrNull(mg, off);
    int32_t pos = rows.first[u];
    if (rows.next[pos] < 0) {  // the common case: the row appears once, no copy
      UpdateSpan(variant, k, grad + pos * n, var + off, ms + off, mom_at, mg_at, n);
      continue;
    }
    sum.resize(n);
    LoadRow(grad + pos * n, sum.data(), n);
    for (pos = rows.next[pos]; pos >= 0; pos = rows.next[pos]) {
      AddRow(grad + pos * n, sum.data(), n);
    }
    UpdateSpan(variant, k, static_cast<const C*>(sum.data()), var + off, ms + off, mom_at, mg_at,
               n);
  }
}

#define RMSPROPX_INSTANTIATE(T)                                                              \
  template void UpdateSpan<T, T>(const Variant&, const Coefficients<ComputeType<T>>&, const T*, \
                                 T*, T*, T*, T*, int64_t);                                    \
  template void UpdateRows<T>(const Variant&, const Coefficients<ComputeType<T>>&, const T*, T*, \
                              T*, T*, T*, const SparseRows&, int64_t, int64_t);
RMSPROPX_INSTANTIATE(Half)
RMSPROPX_INSTANTIATE(BFloat16)
RMSPROPX_INSTANTIATE(float)
RMSPROPX_INSTANTIATE(double)
#undef RMSPROPX_INSTANTIATE

}  // namespace cpu
}  // namespace tf_rmsprop_ops
