// Memory-bandwidth probe for the benchmark's roofline: one fused, vectorised,
// multi-threaded pass that reads `num_read` float arrays and writes the first `num_write`
// of them in place, the access pattern of an optimizer update. TensorFlow-free; loaded
// with ctypes. Time / bytes moved gives the bandwidth the machine grants this pattern.
// `row_probe` is the sparse counterpart: the same rows of a few tables read and written
// in place, in the update's random order, to show what random row access allows here.
#include <algorithm>
#include <cstdint>
#include <thread>
#include <type_traits>
#include <vector>

#include "cc/cpu/row_prefetch.h"

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

// For each of `num_rows` rows (indices into every table, `dim` floats per row), reads the
// row of every table and the matching gradient row and writes the tables' rows: the
// memory traffic of a sparse update without its arithmetic, prefetched exactly as the
// kernel's row loop does (cc/cpu/row_prefetch.h). Returns 0.
int row_probe(float* const* tables, int num_tables, const float* grad, const int64_t* rows,
              int64_t num_rows, int64_t dim, int threads) {
  using tf_rmsprop_ops::cpu::kFarRows;
  using tf_rmsprop_ops::cpu::kNearRows;
  using tf_rmsprop_ops::cpu::PrefetchRow;
  const int64_t bytes = dim * static_cast<int64_t>(sizeof(float));
  auto pass = [=](int64_t begin, int64_t end) {
    auto request = [&](auto near, int64_t u) __attribute__((always_inline)) {
      for (int t = 0; t < num_tables; ++t) {
        PrefetchRow<decltype(near)::value>(tables[t] + rows[u] * dim, bytes);
      }
      if (decltype(near)::value) PrefetchRow<true>(grad + u * dim, bytes);
    };
    const std::true_type near;
    const std::false_type far;
    for (int64_t u = begin; u < std::min(end, begin + kFarRows); ++u) request(far, u);
    for (int64_t u = begin; u < std::min(end, begin + kNearRows); ++u) request(near, u);
    for (int64_t u = begin; u < end; ++u) {
      if (u + kFarRows < end) request(far, u + kFarRows);
      if (u + kNearRows < end) request(near, u + kNearRows);
      const float* g = grad + u * dim;
      for (int t = 0; t < num_tables; ++t) {
        float* __restrict__ row = tables[t] + rows[u] * dim;
        for (int64_t j = 0; j < dim; ++j) row[j] = 0.5f * row[j] + g[j];
      }
    }
  };
  const int64_t chunk = (num_rows + threads - 1) / threads;
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) {
    pool.emplace_back(pass, std::min(num_rows, t * chunk), std::min(num_rows, (t + 1) * chunk));
  }
  pass(0, std::min(num_rows, chunk));
  for (auto& th : pool) th.join();
  return 0;
}

}  // extern "C"
