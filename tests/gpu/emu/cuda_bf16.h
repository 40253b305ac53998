// CPU emulation (tests/gpu/emu/cuda_emu.h): cc/cuda/ converts bfloat16 with bit operations
// (__uint_as_float, __float_as_uint), which cuda_emu.h defines.
#include "cuda_emu.h"
