// CPU emulation (tests/gpu/emu/cuda_emu.h): the half-precision intrinsics cc/cuda/ uses, as
// IEEE conversions (round to nearest even, subnormals kept: the kernels are built without
// -ftz), through the compiler's _Float16, and a NaN becomes the GPU's canonical one.
#ifndef TF_RMSPROP_OPS_TESTS_GPU_EMU_CUDA_FP16_H_
#define TF_RMSPROP_OPS_TESTS_GPU_EMU_CUDA_FP16_H_
#include <cstring>

#include "cuda_emu.h"

struct __half { unsigned short x; };
inline __half __ushort_as_half(unsigned short u) { return __half{u}; }
inline unsigned short __half_as_ushort(__half h) { return h.x; }
inline float __half2float(__half h) {
  _Float16 f;
  std::memcpy(&f, &h.x, 2);
  return static_cast<float>(f);
}
inline __half __float2half_rn(float x) {
  if (x != x) return __half{0x7fff};  // the GPU's cvt.rn.f16.f32: the canonical NaN
  const _Float16 f = static_cast<_Float16>(x);
  __half h;
  std::memcpy(&h.x, &f, 2);
  return h;
}
#endif  // TF_RMSPROP_OPS_TESTS_GPU_EMU_CUDA_FP16_H_
