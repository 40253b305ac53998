// A C API over the CUDA launchers (cc/cuda/) for the TensorFlow-free GPU tests and benchmark
// (tests/gpu/*.py drive it with ctypes; arrays are CuPy device pointers). Built by
// tests/gpu/build.py with nvcc together with cc/cuda/*.cu.cc.
#include <cstdint>
#include <vector>

#include "cc/cuda/rmsprop_x_cuda.h"
#include "cc/cuda/rmsprop_x_cuda_device.cuh"  // kThreads, kMaxBlocks (rx_threads, ...)

using namespace tf_rmsprop_ops;  // NOLINT

namespace {

// dtype codes: 0 float32, 1 float64, 2 float16, 3 bfloat16. index codes: 0 int32, 1 int64.
Variant MakeVariant(int centered, int momentum, int nesterov, int eps_outside, int lr_outside,
                    int wd_mode) {
  Variant v;
  v.centered = centered;
  v.momentum = momentum;
  v.nesterov = nesterov;
  v.epsilon_placement = eps_outside ? EpsilonPlacement::kOutsideSqrt : EpsilonPlacement::kInsideSqrt;
  v.lr_placement = lr_outside ? LrPlacement::kOutsideMomentum : LrPlacement::kInsideMomentum;
  v.weight_decay_mode = static_cast<WeightDecayMode>(wd_mode);
  return v;
}

template <typename T>
Coefficients<cuda::ComputeType<T>> Coeffs(const Variant& v, const double* h) {
  using C = cuda::ComputeType<T>;
  return MakeCoefficients(v, HyperParams<C>{C(h[0]), C(h[1]), C(h[2]), C(h[3]), C(h[4])});
}

template <typename T>
int Dense(const Variant& v, const double* h, void* grad, void* var, void* ms, void* mom,
          void* mg, int64_t n, void* stream) {
  return cuda::LaunchDense<T>(v, Coeffs<T>(v, h), static_cast<const T*>(grad),
                              static_cast<T*>(var), static_cast<T*>(ms), static_cast<T*>(mom),
                              static_cast<T*>(mg), n, static_cast<cudaStream_t>(stream));
}

template <typename T, typename Index>
int Sparse(const Variant& v, const double* h, void* grad, void* indices, int64_t num_indices,
           int64_t rows, int64_t row_size, void* var, void* ms, void* mom, void* mg,
           void* workspace, int64_t* bad_offset, int64_t* bad_value, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  Index value = 0;
  int e = cuda::SparseCheck<Index>(static_cast<const Index*>(indices), num_indices, rows,
                                   workspace, bad_offset, &value, s);
  *bad_value = static_cast<int64_t>(value);
  if (e != 0 || *bad_offset >= 0) return e;
  return cuda::SparseUpdate<T, Index>(v, Coeffs<T>(v, h), static_cast<const T*>(grad),
                                      static_cast<const Index*>(indices), num_indices, rows,
                                      row_size,
                                      static_cast<T*>(var), static_cast<T*>(ms),
                                      static_cast<T*>(mom), static_cast<T*>(mg), workspace, s);
}

template <typename T>
int Multi(const Variant& v, const double* h, int64_t count, void* const* grads,
          void* const* vars, void* const* ms, void* const* mom, void* const* mg,
          const int64_t* sizes, void* stream) {
  std::vector<cuda::MultiTensor<T>> tensors(count);
  for (int64_t i = 0; i < count; ++i) {
    tensors[i] = {static_cast<const T*>(grads[i]), static_cast<T*>(vars[i]),
                  static_cast<T*>(ms[i]), mom ? static_cast<T*>(mom[i]) : nullptr,
                  mg ? static_cast<T*>(mg[i]) : nullptr, sizes[i]};
  }
  return cuda::LaunchMulti<T>(v, Coeffs<T>(v, h), tensors.data(), count,
                              static_cast<cudaStream_t>(stream));
}

// 8-bit state: the (codes, absmax) of ms, mom, mg from arrays of 3 device pointers (null
// where the feature is off), and the float32 coefficients.
struct States8 {
  States8(void* const* codes, void* const* absmax) {
    cpu::State8* out[3] = {&ms, &mom, &mg};
    for (int j = 0; j < 3; ++j) {
      *out[j] = {static_cast<uint8_t*>(codes[j]), static_cast<float*>(absmax[j])};
    }
  }
  cpu::State8 ms{}, mom{}, mg{};
};

Coefficients<float> Coeffs8(const Variant& v, const double* h) {
  return MakeCoefficients(v, HyperParams<float>{float(h[0]), float(h[1]), float(h[2]),
                                                float(h[3]), float(h[4])});
}

template <typename T>
int Dense8(const Variant& v, const double* h, void* grad, void* var, void* const* codes,
           void* const* absmax, int64_t rows, int64_t row_size, void* stream) {
  const States8 s(codes, absmax);
  return cuda::LaunchDense8<T>(v, Coeffs8(v, h), static_cast<const T*>(grad),
                               static_cast<T*>(var), s.ms, s.mom, s.mg, rows, row_size,
                               static_cast<cudaStream_t>(stream));
}

template <typename T, typename Index>
int Sparse8(const Variant& v, const double* h, void* grad, void* indices, int64_t num_indices,
            int64_t rows, int64_t row_size, void* var, void* const* codes, void* const* absmax,
            void* workspace, int64_t* bad_offset, int64_t* bad_value, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  Index value = 0;
  int e = cuda::SparseCheck<Index>(static_cast<const Index*>(indices), num_indices, rows,
                                   workspace, bad_offset, &value, s);
  *bad_value = static_cast<int64_t>(value);
  if (e != 0 || *bad_offset >= 0) return e;
  const States8 st(codes, absmax);
  return cuda::SparseUpdate8<T, Index>(
      v, Coeffs8(v, h), static_cast<const T*>(grad), static_cast<const Index*>(indices),
      num_indices, rows, row_size, static_cast<T*>(var), st.ms, st.mom, st.mg, workspace, s);
}

}  // namespace

extern "C" {

// The sparse 8-bit update (SparseCheck first, as rx_sparse): codes / absmax as rx_dense8.
int rx_sparse8(int dtype, int index_dtype, int centered, int momentum, int nesterov,
               int eps_outside, int lr_outside, int wd_mode, const double* hyper, void* grad,
               void* indices, int64_t num_indices, int64_t rows, int64_t row_size, void* var,
               void* const* codes, void* const* absmax, void* workspace, int64_t* bad_offset,
               int64_t* bad_value, void* stream) {
  const Variant v = MakeVariant(centered, momentum, nesterov, eps_outside, lr_outside, wd_mode);
#define RX_SPARSE8(T, I)                                                                  \
  Sparse8<T, I>(v, hyper, grad, indices, num_indices, rows, row_size, var, codes, absmax, \
                workspace, bad_offset, bad_value, stream)
  if (index_dtype == 0) {
    switch (dtype) {
      case 0: return RX_SPARSE8(float, int32_t);
      case 2: return RX_SPARSE8(cuda::Half, int32_t);
      case 3: return RX_SPARSE8(cuda::BFloat16, int32_t);
    }
  } else {
    switch (dtype) {
      case 0: return RX_SPARSE8(float, int64_t);
      case 2: return RX_SPARSE8(cuda::Half, int64_t);
      case 3: return RX_SPARSE8(cuda::BFloat16, int64_t);
    }
  }
#undef RX_SPARSE8
  return -1;
}

// 8-bit state: codes / absmax are arrays of 3 device pointers (ms, mom, mg; null when off);
// var and grad [rows, row_size]; dtype 0 float32, 2 float16, 3 bfloat16.
int rx_dense8(int dtype, int centered, int momentum, int nesterov, int eps_outside,
              int lr_outside, int wd_mode, const double* hyper, void* grad, void* var,
              void* const* codes, void* const* absmax, int64_t rows, int64_t row_size,
              void* stream) {
  const Variant v = MakeVariant(centered, momentum, nesterov, eps_outside, lr_outside, wd_mode);
  switch (dtype) {
    case 0: return Dense8<float>(v, hyper, grad, var, codes, absmax, rows, row_size, stream);
    case 2: return Dense8<cuda::Half>(v, hyper, grad, var, codes, absmax, rows, row_size, stream);
    case 3:
      return Dense8<cuda::BFloat16>(v, hyper, grad, var, codes, absmax, rows, row_size, stream);
  }
  return -1;
}

// The multi-tensor kernel's chunk (elements), for tests that cut tensors at chunk bounds.
int64_t rx_multi_chunk() { return cuda::kMultiChunk; }

// Threads per block and the most blocks of a grid-stride launch, for tests that size
// tensors past one grid's worth (the emulated build lowers the blocks; see build.py).
int64_t rx_threads() { return cuda::kThreads; }
int64_t rx_max_blocks() { return cuda::kMaxBlocks; }

// Multi-tensor: arrays of `count` device pointers (mom / mg null arrays when off) and sizes.
int rx_multi(int dtype, int centered, int momentum, int nesterov, int eps_outside,
             int lr_outside, int wd_mode, const double* hyper, int64_t count,
             void* const* grads, void* const* vars, void* const* ms, void* const* mom,
             void* const* mg, const int64_t* sizes, void* stream) {
  const Variant v = MakeVariant(centered, momentum, nesterov, eps_outside, lr_outside, wd_mode);
  switch (dtype) {
    case 0: return Multi<float>(v, hyper, count, grads, vars, ms, mom, mg, sizes, stream);
    case 1: return Multi<double>(v, hyper, count, grads, vars, ms, mom, mg, sizes, stream);
    case 2: return Multi<cuda::Half>(v, hyper, count, grads, vars, ms, mom, mg, sizes, stream);
    case 3: return Multi<cuda::BFloat16>(v, hyper, count, grads, vars, ms, mom, mg, sizes, stream);
  }
  return -1;
}

// hyper: lr, rho, momentum, epsilon, weight_decay. Returns a cudaError_t.
int rx_dense(int dtype, int centered, int momentum, int nesterov, int eps_outside,
             int lr_outside, int wd_mode, const double* hyper, void* grad, void* var, void* ms,
             void* mom, void* mg, int64_t n, void* stream) {
  const Variant v = MakeVariant(centered, momentum, nesterov, eps_outside, lr_outside, wd_mode);
  switch (dtype) {
    case 0: return Dense<float>(v, hyper, grad, var, ms, mom, mg, n, stream);
    case 1: return Dense<double>(v, hyper, grad, var, ms, mom, mg, n, stream);
    case 2: return Dense<cuda::Half>(v, hyper, grad, var, ms, mom, mg, n, stream);
    case 3: return Dense<cuda::BFloat16>(v, hyper, grad, var, ms, mom, mg, n, stream);
  }
  return -1;
}

int64_t rx_sparse_workspace_bytes(int index_dtype, int64_t num_indices, int64_t rows) {
  return static_cast<int64_t>(index_dtype == 0
                                  ? cuda::SparseWorkspaceBytes<int32_t>(num_indices, rows)
                                  : cuda::SparseWorkspaceBytes<int64_t>(num_indices, rows));
}

// SparseUpdate alone, with null arrays and workspace: only for the index-count limit (a
// count beyond kMaxSparseIndices must be refused before anything is touched; rx_sparse
// with null arrays shows the same of SparseCheck).
int rx_sparse_update_count_only(int index_dtype, int64_t num_indices, int64_t rows) {
  const Variant v = MakeVariant(0, 0, 0, 0, 0, 0);
  const double h[5] = {0.01, 0.9, 0.0, 1e-7, 0.0};
  const auto k = Coeffs<float>(v, h);
  return index_dtype == 0
             ? cuda::SparseUpdate<float, int32_t>(v, k, nullptr, nullptr, num_indices, rows, 1,
                                                  nullptr, nullptr, nullptr, nullptr, nullptr,
                                                  nullptr)
             : cuda::SparseUpdate<float, int64_t>(v, k, nullptr, nullptr, num_indices, rows, 1,
                                                  nullptr, nullptr, nullptr, nullptr, nullptr,
                                                  nullptr);
}

// Checks the indices, then (when all are in range) updates. *bad_offset is the first bad
// index's offset, or -1.
int rx_sparse(int dtype, int index_dtype, int centered, int momentum, int nesterov,
              int eps_outside, int lr_outside, int wd_mode, const double* hyper, void* grad,
              void* indices, int64_t num_indices, int64_t rows, int64_t row_size, void* var,
              void* ms, void* mom, void* mg, void* workspace, int64_t* bad_offset,
              int64_t* bad_value, void* stream) {
  const Variant v = MakeVariant(centered, momentum, nesterov, eps_outside, lr_outside, wd_mode);
#define RX_SPARSE(T, I)                                                                    \
  return Sparse<T, I>(v, hyper, grad, indices, num_indices, rows, row_size, var, ms, mom, mg, \
                      workspace, bad_offset, bad_value, stream)
  if (index_dtype == 0) {
    switch (dtype) {
      case 0: RX_SPARSE(float, int32_t);
      case 1: RX_SPARSE(double, int32_t);
      case 2: RX_SPARSE(cuda::Half, int32_t);
      case 3: RX_SPARSE(cuda::BFloat16, int32_t);
    }
  } else {
    switch (dtype) {
      case 0: RX_SPARSE(float, int64_t);
      case 1: RX_SPARSE(double, int64_t);
      case 2: RX_SPARSE(cuda::Half, int64_t);
      case 3: RX_SPARSE(cuda::BFloat16, int64_t);
    }
  }
#undef RX_SPARSE
  return -1;
}

}  // extern "C"
