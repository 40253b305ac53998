// 8-bit optimizer state: the blockwise dynamic-map codec (docs/design.md 1.7), the one
// place its format lives. TensorFlow-free (the CPU loops, later the CUDA kernels and their
// harness include it); tf_rmsprop_ops/reference.py (quantize_blockwise, dynamic_map) is
// its NumPy statement and the tests pin the two together bit for bit.
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

namespace tf_rmsprop_ops {

constexpr int64_t kBlock8 = 256;

// Blocks of a row of `row_size` elements (the last may be partial).
inline int64_t BlocksPerRow(int64_t row_size) { return (row_size + kBlock8 - 1) / kBlock8; }

struct DynamicMap {
  float value[256];  // sorted
  float mid[255];    // float32 midpoints (value[j] + value[j + 1]) / 2
  uint8_t zero;      // the code of 0
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
  m.zero = static_cast<uint8_t>(std::find(m.value, m.value + 256, 0.0f) - m.value);
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
// on a midpoint takes the upper one), by a branch-free search over the 255 midpoints.
// NaN takes the zero code.
inline uint8_t QuantizeNormalized(float norm, const DynamicMap& m) {
  int idx = 0;
  for (int step = 128; step >= 1; step >>= 1) {
    idx += (m.mid[idx + step - 1] <= norm) ? step : 0;
  }
  return norm == norm ? static_cast<uint8_t>(idx) : m.zero;
}

// max |x[i]| over a block; NaN when any element is NaN (as NumPy's max).
inline float BlockAbsMax(const float* x, int64_t n) {
  float m = 0.0f;
  bool nan = false;
  for (int64_t i = 0; i < n; ++i) {
    const float a = std::fabs(x[i]);
    m = a > m ? a : m;
    nan |= a != a;
  }
  return nan ? std::nanf("") : m;
}

// Quantizes one block of n <= kBlock8 float32 values: returns its absmax, writes the codes.
// An all-zero block stores the zero code everywhere.
inline float QuantizeBlock(const float* x, int64_t n, const DynamicMap& m, uint8_t* codes) {
  const float absmax = BlockAbsMax(x, n);
  if (absmax == 0.0f) {
    for (int64_t i = 0; i < n; ++i) codes[i] = m.zero;
    return absmax;
  }
  for (int64_t i = 0; i < n; ++i) codes[i] = QuantizeNormalized(x[i] / absmax, m);
  return absmax;
}

inline void DequantizeBlock(const uint8_t* codes, float absmax, int64_t n, const DynamicMap& m,
                            float* x) {
  for (int64_t i = 0; i < n; ++i) x[i] = m.value[codes[i]] * absmax;
}

}  // namespace tf_rmsprop_ops

#endif  // TF_RMSPROP_OPS_CC_STATE8_H_
