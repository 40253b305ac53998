// The emulated harness (tests/gpu/build.py --emulate) is built with UBSan. Its reports go to
// RMSPROPX_EMU_UBSAN_LOG.<pid>, which tests/gpu/gpu_lib.py reads after every call and turns
// into an error of the test that caused it (a report on stderr would vanish into pytest's
// capture). UBSan finds this function in the harness library when the library is loaded.
#ifndef RMSPROPX_EMU_UBSAN_LOG
#error "build with -DRMSPROPX_EMU_UBSAN_LOG=\"path prefix\" (tests/gpu/build.py --emulate)"
#endif
extern "C" const char* __ubsan_default_options() {
  return "log_path=" RMSPROPX_EMU_UBSAN_LOG ":print_stacktrace=1:report_error_type=1";
}
