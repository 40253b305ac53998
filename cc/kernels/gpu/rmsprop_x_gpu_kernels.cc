// GPU OpKernels of ApplyRMSpropX, SparseApplyRMSpropX and ApplyRMSpropXMulti: the shared
// shells (cc/kernels/rmsprop_x_shells.h, rmsprop_x_multi_shell.h: validation, locking,
// copy-on-write) with launches of the
// TensorFlow-free CUDA kernels (cc/cuda/) on the op context's stream. The scalars live in
// host memory (the coefficients are folded on the host and passed by value).
//
// Built only with GOOGLE_CUDA, against a CUDA build of TensorFlow (the full `tensorflow`
// wheel): Makefile target `gpu`.
#if GOOGLE_CUDA
#define EIGEN_USE_GPU

#include "cc/cuda/rmsprop_x_cuda.h"
#include "cc/kernels/index_error.h"
#include "cc/kernels/rmsprop_x_multi_shell.h"
#include "cc/kernels/rmsprop_x_shells.h"
#include "tensorflow/core/framework/register_types.h"

namespace tf_rmsprop_ops {

using GPUDevice = Eigen::GpuDevice;

namespace {
absl::Status CudaStatus(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, " failed: ", cudaGetErrorString(e)));
}
cudaStream_t StreamOf(tensorflow::OpKernelContext* ctx) {
  return reinterpret_cast<cudaStream_t>(ctx->eigen_device<GPUDevice>().stream());
}
}  // namespace

template <typename T>
struct DenseLaunch<GPUDevice, T> {
  static absl::Status Run(tensorflow::OpKernelContext* ctx, const DenseArgs<T>& a) {
    const StatePointers<T>& s = a.state;
    return CudaStatus(cuda::LaunchDense(a.variant, a.k, a.grad, s.var, s.ms, s.mom, s.mg, a.n,
                                        StreamOf(ctx)),
                      "ApplyRMSpropX CUDA kernel");
  }
};

// The sparse kernels' first step, for both state formats: a workspace for `num_indices`
// indices of a [rows, ...] variable (in `workspace`), and the index check on the device (the
// same error as on the CPU; nothing written).
template <typename Index>
absl::Status CheckedSparseWorkspace(tensorflow::OpKernelContext* ctx, const Index* indices,
                                    int64_t num_indices, int64_t rows,
                                    tensorflow::Tensor* workspace) {
  const int64_t bytes =
      static_cast<int64_t>(cuda::SparseWorkspaceBytes<Index>(num_indices, rows));
  if (bytes == 0) {  // the shell has refused this already; never launch without a workspace
    return absl::InvalidArgumentError(
        absl::StrCat("more than ", cuda::kMaxSparseIndices, " indices (", num_indices, ")"));
  }
  TF_RETURN_IF_ERROR(ctx->allocate_temp(tensorflow::DT_INT8, tensorflow::TensorShape({bytes}),
                                        workspace));
  int64_t bad_offset = -1;
  Index bad_value = 0;
  TF_RETURN_IF_ERROR(CudaStatus(cuda::SparseCheck(indices, num_indices, rows,
                                                  workspace->flat<int8_t>().data(),
                                                  &bad_offset, &bad_value, StreamOf(ctx)),
                                "SparseApplyRMSpropX index check"));
  if (bad_offset >= 0) return IndexNotARowError(bad_offset, static_cast<int64_t>(bad_value), rows);
  return absl::OkStatus();
}

template <typename T, typename Index>
struct SparseLaunch<GPUDevice, T, Index> {
  static absl::Status Run(tensorflow::OpKernelContext* ctx, const SparseArgs<T, Index>& a) {
    if (a.num_indices == 0) return absl::OkStatus();
    tensorflow::Tensor workspace;
    TF_RETURN_IF_ERROR(CheckedSparseWorkspace(ctx, a.indices, a.num_indices, a.rows, &workspace));
    void* ws = workspace.flat<int8_t>().data();
    const StatePointers<T>& s = a.state;
    return CudaStatus(cuda::SparseUpdate(a.variant, a.k, a.grad, a.indices, a.num_indices,
                                         a.rows, a.row_size, s.var, s.ms, s.mom, s.mg, ws,
                                         StreamOf(ctx)),
                      "SparseApplyRMSpropX CUDA kernels");
  }
};

template <typename T>
struct MultiLaunch<GPUDevice, T> {
  static absl::Status Run(tensorflow::OpKernelContext* ctx, const MultiArgs<T>& a) {
    std::vector<cuda::MultiTensor<CpuStorage<T>>> tensors(a.state.size());
    for (size_t i = 0; i < tensors.size(); ++i) {
      const StatePointers<T>& s = a.state[i];
      tensors[i] = {a.grads[i], s.var, s.ms, s.mom, s.mg, a.start[i + 1] - a.start[i]};
    }
    return CudaStatus(cuda::LaunchMulti(a.variant, a.k, tensors.data(),
                                        static_cast<int64_t>(tensors.size()), StreamOf(ctx)),
                      "ApplyRMSpropXMulti CUDA kernel");
  }
};

// 8-bit state (cc/cuda/rmsprop_x_cuda8.cu.cc): one CUDA block per block of 256 elements,
// the same bits as the CPU kernels. Not yet run on a GPU (README, GPU section).
template <typename T>
struct Dense8Launch<GPUDevice, T> {
  static constexpr bool kAvailable = !std::is_same_v<T, double>;  // float32 state math
  static absl::Status Run(tensorflow::OpKernelContext* ctx, const Dense8Args<T>& a) {
    if (a.blocks == 0) return absl::OkStatus();
    return CudaStatus(cuda::LaunchDense8(a.variant, a.k, a.grad, a.var, a.ms, a.mom, a.mg,
                                         a.blocks / BlocksPerRow(a.row_size), a.row_size,
                                         StreamOf(ctx)),
                      "ApplyRMSpropX (state_bits=8) CUDA kernel");
  }
};

template <typename T, typename Index>
struct Sparse8Launch<GPUDevice, T, Index> {
  static constexpr bool kAvailable = !std::is_same_v<T, double>;
  static absl::Status Run(tensorflow::OpKernelContext* ctx, const Sparse8Args<T, Index>& a) {
    if (a.num_indices == 0 || a.row_size == 0) return absl::OkStatus();
    tensorflow::Tensor workspace;
    TF_RETURN_IF_ERROR(CheckedSparseWorkspace(ctx, a.indices, a.num_indices, a.rows, &workspace));
    return CudaStatus(cuda::SparseUpdate8(a.variant, a.k, a.grad, a.indices, a.num_indices,
                                          a.rows, a.row_size, a.var, a.ms, a.mom, a.mg,
                                          workspace.flat<int8_t>().data(), StreamOf(ctx)),
                      "SparseApplyRMSpropX (state_bits=8) CUDA kernels");
  }
};

// The multi-tensor op with 8-bit state: one dense 8-bit launch per tensor on the op's
// stream (no chunk-list kernel for 8-bit state yet: a launch each, not one for all).
template <typename T>
struct Multi8Launch<GPUDevice, T> {
  static constexpr bool kAvailable = !std::is_same_v<T, double>;
  static absl::Status Run(tensorflow::OpKernelContext* ctx, const Multi8Args<T>& a) {
    for (size_t i = 0; i + 1 < a.start.size(); ++i) {
      const int64_t blocks = a.start[i + 1] - a.start[i];
      if (blocks == 0) continue;
      TF_RETURN_IF_ERROR(CudaStatus(
          cuda::LaunchDense8(a.variant, a.k, a.grads[i], a.var[i], a.ms[i], a.mom[i], a.mg[i],
                             blocks / BlocksPerRow(a.row_size[i]), a.row_size[i],
                             StreamOf(ctx)),
          "ApplyRMSpropXMulti (state_bits=8) CUDA kernel"));
    }
    return absl::OkStatus();
  }
};

#define HOST_SCALARS                                                                     \
  .HostMemory("lr").HostMemory("rho").HostMemory("momentum").HostMemory("epsilon")       \
      .HostMemory("weight_decay")
#define REGISTER_GPU(T)                                                                  \
  REGISTER_KERNEL_BUILDER(Name("ApplyRMSpropX")                                          \
                              .Device(tensorflow::DEVICE_GPU)                            \
                              .TypeConstraint<T>("T") HOST_SCALARS,                      \
                          ApplyRMSpropXOp<GPUDevice, T>);                                \
  REGISTER_KERNEL_BUILDER(Name("SparseApplyRMSpropX")                                    \
                              .Device(tensorflow::DEVICE_GPU)                            \
                              .TypeConstraint<T>("T")                                    \
                              .TypeConstraint<int32_t>("Tindices") HOST_SCALARS,         \
                          SparseApplyRMSpropXOp<GPUDevice, T, int32_t>);                 \
  REGISTER_KERNEL_BUILDER(Name("SparseApplyRMSpropX")                                    \
                              .Device(tensorflow::DEVICE_GPU)                            \
                              .TypeConstraint<T>("T")                                    \
                              .TypeConstraint<int64_t>("Tindices") HOST_SCALARS,         \
                          SparseApplyRMSpropXOp<GPUDevice, T, int64_t>);             \
  REGISTER_KERNEL_BUILDER(Name("ApplyRMSpropXMulti")                                     \
                              .Device(tensorflow::DEVICE_GPU)                            \
                              .TypeConstraint<T>("T") HOST_SCALARS,                      \
                          ApplyRMSpropXMultiOp<GPUDevice, T>);
TF_CALL_half(REGISTER_GPU);
TF_CALL_bfloat16(REGISTER_GPU);
TF_CALL_float(REGISTER_GPU);
TF_CALL_double(REGISTER_GPU);
#undef REGISTER_GPU
#undef HOST_SCALARS

}  // namespace tf_rmsprop_ops

#endif  // GOOGLE_CUDA
