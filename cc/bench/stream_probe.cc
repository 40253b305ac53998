// Memory-bandwidth probe for the benchmark's roofline: one fused, vectorised,
// multi-threaded pass that reads `num_read` float arrays and writes the first `num_write`
// of them in place, the access pattern of an optimizer update. TensorFlow-free; loaded
// with ctypes. Time / bytes moved gives the bandwidth the machine grants this pattern.
#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

namespace {

template <int R, int W>
void Pass(float* const* a, int64_t begin, int64_t end) {
  float* __restrict__ p[R];
  for (int k = 0; k < R; ++k) p[k] = a[k];
  for (int64_t i = begin; i < end; ++i) {
    float s = 0.f;
    for (int k = 0; k < R; ++k) s += p[k][i];
    for (int k = 0; k < W; ++k) p[k][i] = s * 0.5f;
  }
}

using PassFn = void (*)(float* const*, int64_t, int64_t);

// The (reads, in-place writes) patterns of the RMSprop variants, and a few neighbours.
PassFn Lookup(int r, int w) {
#define RMSPROPX_PROBE_CASE(R, W) \
  if (r == R && w == W) return &Pass<R, W>;
  RMSPROPX_PROBE_CASE(2, 1)
  RMSPROPX_PROBE_CASE(3, 1)
  RMSPROPX_PROBE_CASE(3, 2)
  RMSPROPX_PROBE_CASE(4, 2)
  RMSPROPX_PROBE_CASE(4, 3)
  RMSPROPX_PROBE_CASE(5, 3)
  RMSPROPX_PROBE_CASE(5, 4)
#undef RMSPROPX_PROBE_CASE
  return nullptr;
}

}  // namespace

extern "C" {

// Returns 0 on success, -1 for an unsupported (num_read, num_write).
int stream_probe(float* const* arrays, int num_read, int num_write, int64_t n, int threads) {
  const PassFn pass = Lookup(num_read, num_write);
  if (pass == nullptr || threads < 1) return -1;
  // Chunks aligned to 64 floats, so threads never share a cache line.
  const int64_t chunk = ((n + threads - 1) / threads + 63) / 64 * 64;
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) {
    const int64_t b = std::min(n, t * chunk), e = std::min(n, (t + 1) * chunk);
    pool.emplace_back([=] { pass(arrays, b, e); });
  }
  pass(arrays, 0, std::min(n, chunk));
  for (auto& th : pool) th.join();
  return 0;
}

}  // extern "C"
