// A planted fault for .ci/sanitizers.sh: proves that the instrumented build reports and that
// a report fails CI. Linked with the instrumented CPU span loops (cc/cpu, TensorFlow-free)
// into its own small library, loaded from Python with the sanitizer runtimes preloaded:
//   kind 0: the real dense span loop runs one element past a heap array (ASan:
//           heap-buffer-overflow in tf_rmsprop_ops::cpu::UpdateSpan);
//   kind 1: a signed integer overflow (UBSan: runtime error, aborts).
// Never part of the op library.
#include <cstdint>
#include <vector>

#include "cc/cpu/rmsprop_x_cpu.h"

namespace {
volatile int32_t sink;
}

extern "C" int tf_rmsprop_ops_sanitizer_probe(int kind, int32_t big) {
  using tf_rmsprop_ops::cpu::UpdateSpan;
  if (kind == 0) {
    const int64_t n = 37;  // odd: the vector body and the scalar tail both run
    std::vector<float> grad(n, 0.5f), var(n, 1.0f), ms(n, 0.25f);
    tf_rmsprop_ops::Variant variant;
    tf_rmsprop_ops::HyperParams<float> h{0.01f, 0.9f, 0.0f, 1e-7f, 0.0f};
    const auto k = tf_rmsprop_ops::MakeCoefficients(variant, h);
    UpdateSpan<float, float>(variant, k, grad.data(), var.data(), ms.data(), nullptr, nullptr,
                             n + 1);  // one element too many
    return static_cast<int>(var[0]);
  }
  sink = big + big;  // big = 2^30 + 1 from the caller: overflows int32
  return sink;
}
