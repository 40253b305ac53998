// CPU emulation (tests/gpu/emu/cuda_emu.h) of cub::DeviceScan::ExclusiveSum: out[0] = 0,
// out[i] = in[0] + ... + in[i-1], wrapping as the GPU's integer adds do.
#ifndef TF_RMSPROP_OPS_TESTS_GPU_EMU_CUB_DEVICE_SCAN_CUH_
#define TF_RMSPROP_OPS_TESTS_GPU_EMU_CUB_DEVICE_SCAN_CUH_
#include <type_traits>

#include "../../cuda_emu.h"

namespace cub {
struct DeviceScan {
  template <typename T, typename NumItemsT>
  static cudaError_t ExclusiveSum(void* temp, size_t& bytes, const T* in, T* out,
                                  NumItemsT num_items, cudaStream_t stream = nullptr) {
    rmsprop_x_cuda_emu::DeviceScope scope;  // the device's work: its memory accessible
    const cudaError_t e = rmsprop_x_cuda_emu::Temporaries(temp, bytes, 1024, stream);
    if (e != cudaSuccess || temp == nullptr) return e;
    using U = std::make_unsigned_t<T>;
    U sum = 0;
    for (long long i = 0; i < static_cast<long long>(num_items); ++i) {
      const U x = static_cast<U>(in[i]);
      out[i] = static_cast<T>(sum);
      sum += x;
    }
    return cudaSuccess;
  }
};
}  // namespace cub
#endif  // TF_RMSPROP_OPS_TESTS_GPU_EMU_CUB_DEVICE_SCAN_CUH_
