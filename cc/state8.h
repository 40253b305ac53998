// 8-bit optimizer state: the blockwise dynamic-map codec (docs/design.md 1.7), the one
// place its format lives. TensorFlow-free (the CPU loops, later the CUDA kernels and their
// harness include it); tf_rmsprop_ops/reference.py (quantize_blockwise, dynamic_map) is
// its NumPy statement. The tests pin the maps bit for bit (through the ops' dequantized
// state), and the ops' codes to the reference's: equal except adjacent codes where the
// float32 state lies within rounding of a midpoint.
//
// A state tensor is one uint8 code per element plus one float32 absmax per block of
// kBlock8 consecutive elements of a row (a variable of rank >= 2 is [shape[0],
// prod(shape[1:])], rank 0 and 1 are one row; a block never spans two rows); its value is
// map[code] * absmax, one float32 product. ms (>= 0) takes the unsigned map, mom and mg the
// signed one: bitsandbytes' dynamic maps (create_dynamic_map(signed, 7, 8)), built here in
// float32 exactly as its torch code computes them.
#ifndef TF_RMSPROP_OPS_CC_STATE8_H_
#define TF_RMSPROP_OPS_CC_STATE8_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace tf_rmsprop_ops {

constexpr int64_t kBlock8 = 256;

// Blocks of a row of `row_size` elements (the last may be partial).
inline int64_t BlocksPerRow(int64_t row_size) { return (row_size + kBlock8 - 1) / kBlock8; }

// Quantizing looks codes up by the top 16 bits of x / absmax (sign, exponent, 7 mantissa
// bits): 2 x 27 x 128 buckets cover |x| in [2^-26, 2); smaller magnitudes share the
// smallest bucket (every midpoint's magnitude is above 2^-23). Every bucket holds at most one midpoint
// of either map (tests/test_state8_reference.py checks it), so a bucket's code is its
// lowest value's, plus one where x reaches that one midpoint: exact nearest, branch-free.
constexpr uint32_t kLutMinExponent = 101;  // 2^-26
constexpr uint32_t kLutExponents = 27;     // 2^-26 .. 2^0
constexpr uint32_t kLutMantissaBits = 7;

struct DynamicMap {
  float value[256];  // sorted
  float mid[256];    // float32 midpoints (value[j] + value[j + 1]) / 2; mid[255] = +inf
  uint8_t zero;      // the code of 0
  // Per bucket: the number of midpoints <= the bucket's lowest value, and the next midpoint
  // (mid[lut[b]]; both tables are indexed by the bucket, so the two lookups are independent).
  int32_t lut[2 * kLutExponents << kLutMantissaBits];
  float lut_mid[2 * kLutExponents << kLutMantissaBits];
  // The same two in one word, for one vector gather per element (the AVX2 quantizer): a
  // bucket's values share their top 16 bits, so `x >= lut_mid` compares only the low 16
  // bits when the midpoint lies in the bucket (as integers: magnitudes order as their bits,
  // and a negative value is >= the midpoint when its magnitude is <=, hence `flip`), and is
  // false for every value of the bucket otherwise (threshold 2^16, above any 16 bits).
  // Bits 24..31: lut; bit 17: flip (negative bucket); bits 0..16: the threshold that
  // (low 16 bits of x) ^ (flip ? 0xffff : 0) must reach for lut + 1.
  uint32_t packed[2 * kLutExponents << kLutMantissaBits];
};

namespace state8_internal {

// torch.linspace(0.1, 1, steps) in float32 as its CPU kernel computes it: step = (end -
// start) / (steps - 1); start + step * i for the first half, end - step * (steps - 1 - i)
// for the rest, each a fused multiply-add.
inline float Linspace(int i, int steps) {
  const float start = 0.1f, end = 1.0f;
  const float step = (end - start) / static_cast<float>(steps - 1);
  return i < steps / 2 ? std::fma(step, static_cast<float>(i), start)
                       : std::fma(-step, static_cast<float>(steps - 1 - i), end);
}

inline DynamicMap Build(bool is_signed) {
  // float32(10 ** (i - 6)) for i = 0..6, as Python's float then NumPy/torch's float32.
  const double kScale[7] = {1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0};
  DynamicMap m{};
  int n = 0;
  for (int i = 0; i < 7; ++i) {
    const int k = is_signed ? (1 << i) : (1 << (i + 1));
    const float scale = static_cast<float>(kScale[i]);
    for (int j = 0; j < k; ++j) {
      const float mean = (Linspace(j, k + 1) + Linspace(j + 1, k + 1)) / 2.0f;
      m.value[n++] = scale * mean;
      if (is_signed) m.value[n++] = -(scale * mean);
    }
  }
  m.value[n++] = 0.0f;
  m.value[n++] = 1.0f;
  std::sort(m.value, m.value + 256);
  for (int j = 0; j < 255; ++j) m.mid[j] = (m.value[j] + m.value[j + 1]) / 2.0f;
  m.mid[255] = INFINITY;
  m.zero = static_cast<uint8_t>(std::find(m.value, m.value + 256, 0.0f) - m.value);
  for (uint32_t sign = 0; sign < 2; ++sign) {
    for (uint32_t e = 0; e < kLutExponents; ++e) {
      for (uint32_t mant = 0; mant < (1u << kLutMantissaBits); ++mant) {
        // The bucket's lowest value: its smallest magnitude when positive, its largest
        // when negative.
        uint32_t bits = (sign << 31) | ((e + kLutMinExponent) << 23) |
                        (mant << (23 - kLutMantissaBits));
        if (sign) bits |= (1u << (23 - kLutMantissaBits)) - 1;
        float lowest;
        std::memcpy(&lowest, &bits, sizeof(lowest));
        const uint32_t b = ((sign * kLutExponents + e) << kLutMantissaBits) + mant;
        m.lut[b] = static_cast<int32_t>(std::upper_bound(m.mid, m.mid + 255, lowest) - m.mid);
        m.lut_mid[b] = m.mid[m.lut[b]];
        uint32_t mid_bits;
        std::memcpy(&mid_bits, &m.lut_mid[b], sizeof(mid_bits));
        const bool inside = (mid_bits >> 16) == (bits >> 16);  // +inf is in no bucket
        const uint32_t flip = sign ? 0xffffu : 0u;
        const uint32_t threshold = inside ? ((mid_bits & 0xffffu) ^ flip) : 0x10000u;
        m.packed[b] = (static_cast<uint32_t>(m.lut[b]) << 24) | (sign << 17) | threshold;
      }
    }
  }
  return m;
}

}  // namespace state8_internal

// The two maps, built once.
inline const DynamicMap& SignedMap() {
  static const DynamicMap m = state8_internal::Build(true);
  return m;
}
inline const DynamicMap& UnsignedMap() {
  static const DynamicMap m = state8_internal::Build(false);
  return m;
}

// The code of norm = x / absmax: the number of midpoints <= norm (the nearest entry; a value
// on a midpoint takes the upper one). NaN takes the zero code.
inline uint8_t QuantizeNormalized(float norm, const DynamicMap& m) {
  uint32_t bits;
  std::memcpy(&bits, &norm, sizeof(bits));
  const uint32_t exponent = (bits >> 23) & 0xffu;
  const bool tiny = exponent < kLutMinExponent;
  const uint32_t e = tiny ? 0u
                     : exponent >= kLutMinExponent + kLutExponents ? kLutExponents - 1
                                                                   : exponent - kLutMinExponent;
  const uint32_t mant = tiny ? 0u : (bits >> (23 - kLutMantissaBits)) &
                                        ((1u << kLutMantissaBits) - 1);
  const uint32_t bucket = (((bits >> 31) * kLutExponents + e) << kLutMantissaBits) + mant;
  const int32_t code = m.lut[bucket] + (norm >= m.lut_mid[bucket] ? 1 : 0);
  return norm == norm ? static_cast<uint8_t>(code) : m.zero;
}

// max |x[i]| over a block; NaN when any element is NaN (as NumPy's max). On the bits: a
// float with its sign cleared orders as its bit pattern, and a NaN's pattern is above
// inf's, so an integer max (which vectorises) is the float max with NaN propagating.
inline float BlockAbsMax(const float* __restrict__ x, int64_t n) {
  uint32_t m = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &x[i], sizeof(bits));
    bits &= 0x7fffffffu;
    m = bits > m ? bits : m;
  }
  float out;
  std::memcpy(&out, &m, sizeof(out));
  return out;
}

// Quantizes one block of n <= kBlock8 float32 values: returns its absmax, writes the codes.
// An all-zero block stores the zero code everywhere.
inline float QuantizeBlock(const float* __restrict__ x, int64_t n, const DynamicMap& m,
                           uint8_t* __restrict__ codes) {
  const float absmax = BlockAbsMax(x, n);
  if (absmax == 0.0f) {
    for (int64_t i = 0; i < n; ++i) codes[i] = m.zero;
    return absmax;
  }
  for (int64_t i = 0; i < n; ++i) codes[i] = QuantizeNormalized(x[i] / absmax, m);
  return absmax;
}

inline void DequantizeBlock(const uint8_t* __restrict__ codes, float absmax, int64_t n,
                            const DynamicMap& m, float* __restrict__ x) {
  for (int64_t i = 0; i < n; ++i) x[i] = m.value[codes[i]] * absmax;
}

}  // namespace tf_rmsprop_ops

#endif  // TF_RMSPROP_OPS_CC_STATE8_H_
