// CPU emulation (tests/gpu/emu/cuda_emu.h) of cub::DeviceRunLengthEncode::Encode: the first
// key of each run of equal keys, the run's length, the number of runs; nothing written past
// the last run.
#ifndef TF_RMSPROP_OPS_TESTS_GPU_EMU_CUB_DEVICE_RUN_LENGTH_ENCODE_CUH_
#define TF_RMSPROP_OPS_TESTS_GPU_EMU_CUB_DEVICE_RUN_LENGTH_ENCODE_CUH_
#include "../../cuda_emu.h"

namespace cub {
struct DeviceRunLengthEncode {
  template <typename In, typename UniqueOut, typename LengthsOut, typename NumRunsOut,
            typename NumItemsT>
  static cudaError_t Encode(void* temp, size_t& bytes, In in, UniqueOut unique_out,
                            LengthsOut lengths_out, NumRunsOut num_runs_out, NumItemsT num_items,
                            cudaStream_t stream = nullptr) {
    rmsprop_x_cuda_emu::DeviceScope scope;  // the device's work: its memory accessible
    const cudaError_t e = rmsprop_x_cuda_emu::Temporaries(temp, bytes, 1024, stream);
    if (e != cudaSuccess || temp == nullptr) return e;
    long long runs = 0;
    for (long long i = 0; i < static_cast<long long>(num_items); ++i) {
      if (i == 0 || !(in[i] == in[i - 1])) {
        unique_out[runs] = in[i];
        lengths_out[runs] = 0;
        ++runs;
      }
      lengths_out[runs - 1] = lengths_out[runs - 1] + 1;
    }
    *num_runs_out = static_cast<std::remove_reference_t<decltype(*num_runs_out)>>(runs);
    return cudaSuccess;
  }
};
}  // namespace cub
#endif  // TF_RMSPROP_OPS_TESTS_GPU_EMU_CUB_DEVICE_RUN_LENGTH_ENCODE_CUH_
