// The emulated harness (tests/gpu/build.py --emulate) is built with UBSan. Its reports go to
// RMSPROPX_EMU_UBSAN_LOG.<pid>, which tests/gpu/gpu_lib.py reads after every call and turns
// into an error of the test that caused it (a report on stderr would vanish into pytest's
// capture). UBSan finds this function in the harness library when the library is loaded.
#include <cstdint>

#ifndef RMSPROPX_EMU_UBSAN_LOG
#error "build with -DRMSPROPX_EMU_UBSAN_LOG=\"path prefix\" (tests/gpu/build.py --emulate)"
#endif
extern "C" const char* __ubsan_default_options() {
  return "log_path=" RMSPROPX_EMU_UBSAN_LOG ":print_stacktrace=1:report_error_type=1";
}

// A planted fault for gpu_lib: a 16-byte-aligned type read from an address 4 bytes off, as a
// 128-bit access on a misaligned tensor would be. Its report must reach the log.
struct alignas(16) RmspropXEmuVec { float v[4]; };
extern "C" float rx_emu_ubsan_selftest() {
  alignas(16) static float buffer[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  volatile uintptr_t address = reinterpret_cast<uintptr_t>(buffer) + 4;
  const RmspropXEmuVec* v = reinterpret_cast<const RmspropXEmuVec*>(address);
  return v->v[0];
}
