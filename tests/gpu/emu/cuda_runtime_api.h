// CPU emulation (tests/gpu/emu/cuda_emu.h): the runtime API.
#include "cuda_emu.h"
