// Storage <-> compute conversions of the CPU loops (cc/cpu/), on the raw bits.
#ifndef TF_RMSPROP_OPS_CC_CPU_STORAGE_H_
#define TF_RMSPROP_OPS_CC_CPU_STORAGE_H_

#include <cstdint>
#include <cstring>

#include "cc/cpu/rmsprop_x_cpu.h"

namespace tf_rmsprop_ops {
namespace cpu {

// Scalar conversions. They serve tails and sparse rows and the 8-bit-state blocks;
// bfloat16 also uses them inside the vectorised update loop, half converts blocks
// with F16C (ToFloatBlock/FromFloatBlock) around the float32 loop.
inline float ToCompute(Half h) {
  _Float16 f;
  std::memcpy(&f, &h.bits, sizeof(f));
  return static_cast<float>(f);
}
// bfloat16 is the upper half of a float32: widening is a shift; narrowing rounds to
// nearest even, as Eigen::bfloat16, and keeps NaN a (quiet) NaN. Branch-free, so loops
// over the bits vectorise.
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
inline float ToCompute(BFloat16 b) { return Bf16BitsToFloat(b.bits); }
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
  return BFloat16{FloatToBf16Bits(x)};
}

}  // namespace cpu
}  // namespace tf_rmsprop_ops

#endif  // TF_RMSPROP_OPS_CC_CPU_STORAGE_H_
