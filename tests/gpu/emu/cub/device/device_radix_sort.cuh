// CPU emulation (tests/gpu/emu/cuda_emu.h) of cub::DeviceRadixSort::SortPairs: a stable
// sort of (key, value) pairs by bits [begin_bit, end_bit) of the key, signed keys in numeric
// order (CUB flips their sign bit), its scratch in the caller's temporary storage.
#ifndef TF_RMSPROP_OPS_TESTS_GPU_EMU_CUB_DEVICE_RADIX_SORT_CUH_
#define TF_RMSPROP_OPS_TESTS_GPU_EMU_CUB_DEVICE_RADIX_SORT_CUH_
#include <algorithm>
#include <cstring>
#include <type_traits>

#include "../../cuda_emu.h"

namespace cub {
struct DeviceRadixSort {
  template <typename K, typename V, typename NumItemsT>
  static cudaError_t SortPairs(void* temp, size_t& bytes, const K* keys_in, K* keys_out,
                               const V* values_in, V* values_out, NumItemsT num_items,
                               int begin_bit = 0, int end_bit = sizeof(K) * 8,
                               cudaStream_t stream = nullptr) {
    using U = std::make_unsigned_t<K>;
    struct Pair { U digits; K key; V value; };
    const size_t n = num_items > 0 ? static_cast<size_t>(num_items) : 0;
    rmsprop_x_cuda_emu::DeviceScope scope;  // the device's work: its memory accessible
    const cudaError_t e =
        rmsprop_x_cuda_emu::Temporaries(temp, bytes, sizeof(Pair) * n + 256, stream);
    if (e != cudaSuccess || temp == nullptr) return e;
    if (begin_bit < 0 || end_bit > static_cast<int>(sizeof(K) * 8) || begin_bit >= end_bit) {
      return cudaErrorInvalidValue;
    }
    Pair* pairs = static_cast<Pair*>(temp);
    const U flip = std::is_signed_v<K> ? U(U(1) << (sizeof(K) * 8 - 1)) : U(0);
    const int width = end_bit - begin_bit;
    const U mask = width == static_cast<int>(sizeof(U) * 8) ? U(~U(0)) : U((U(1) << width) - 1);
    for (size_t i = 0; i < n; ++i) {
      U u;
      std::memcpy(&u, &keys_in[i], sizeof(K));
      pairs[i] = Pair{U(U(u ^ flip) >> begin_bit) & mask, keys_in[i], values_in[i]};
    }
    std::stable_sort(pairs, pairs + n,
                     [](const Pair& a, const Pair& b) { return a.digits < b.digits; });
    for (size_t i = 0; i < n; ++i) {
      keys_out[i] = pairs[i].key;
      values_out[i] = pairs[i].value;
    }
    return cudaSuccess;
  }
};
}  // namespace cub
#endif  // TF_RMSPROP_OPS_TESTS_GPU_EMU_CUB_DEVICE_RADIX_SORT_CUH_
