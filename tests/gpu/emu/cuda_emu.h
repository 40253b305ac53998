// A CPU emulation of the parts of CUDA that cc/cuda/ uses, for CI machines without a GPU:
// tests/gpu/build.py --emulate compiles the real cc/cuda/*.cu.cc with g++ against these
// headers (cuda_runtime_api.h, cuda_fp16.h, cuda_bf16.h, cub/device/*.cuh all come here), and
// tests/gpu/test_gpu_kernels.py then runs the kernels' own code on host memory.
//
// The execution model: a launch runs every (block, thread) of its grid one after another,
// blocks in a shuffled order (a different one for each launch of a thread) and threads last
// to first. Those kernels use no shared memory and no barriers, so every such order is a
// schedule a GPU may choose: an element that two threads update is updated twice and one
// that no thread covers not at all, and the reference comparisons see both. A kernel whose
// threads meet at __syncthreads() over __shared__ memory (the 8-bit kernel's block
// reduction) is launched with LaunchSynced: blocks one after another in the same shuffled
// order, each block's threads as concurrent OS threads that wait for each other at every
// __syncthreads() (a barrier counting the block's threads; a thread that skipped one would
// hang the launch, which the tests' time limits catch), __shared__ variables one per kernel
// instantiation (one block runs at a time), __constant__ ones ordinary globals written by
// cudaMemcpyToSymbolAsync. Data races between threads of a block are then real races on the
// CPU, but nothing detects them (no ThreadSanitizer here). What this cannot show: real
// concurrency (data races between threads), the hardware's memory system and speed, nvcc's
// code generation, and CUB's own kernels (modelled here by their documented results); nor
// __launch_bounds__ (ignored). Device memory is host pages the host cannot touch outside
// the emulated device's work (device_memory.cc).
// Those need a GPU (tests/gpu/run_on_device.sh).
#ifndef TF_RMSPROP_OPS_TESTS_GPU_EMU_CUDA_EMU_H_
#define TF_RMSPROP_OPS_TESTS_GPU_EMU_CUDA_EMU_H_

#ifndef RMSPROPX_CUDA_EMULATION
#error "tests/gpu/emu/ is the CPU emulation of CUDA: build with -DRMSPROPX_CUDA_EMULATION"
#endif

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <numeric>
#include <thread>
#include <type_traits>
#include <vector>

// ---- the language ----------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __shared__ static
#define __constant__

struct uint3 { unsigned int x, y, z; };
struct dim3 { unsigned int x = 1, y = 1, z = 1; };

// The built-in variables: set by the emulated launch for each thread it runs.
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

template <typename T>
inline T min(T a, T b) { return b < a ? b : a; }
inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) {
  const unsigned long long old = *p;  // one thread at a time: atomic by construction
  if (v < old) *p = v;
  return old;
}
inline float __uint_as_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t __float_as_uint(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

// ---- the runtime API -----------------------------------------------------------------------
// The error codes keep CUDA's values.
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidResourceHandle = 400,
};
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};
// "Device" memory is host memory, and there is one stream. The emulated harness passes a
// non-null stream (tests/gpu/gpu_lib.py), as TensorFlow always does, and every call that
// does work requires one: code that dropped its caller's stream (CUDA's default is the null
// stream, which would race with TensorFlow's) fails here instead of passing.
typedef struct CUstream_st* cudaStream_t;

namespace rmsprop_x_cuda_emu {
inline cudaError_t Stream(cudaStream_t stream) {
  return stream == nullptr ? cudaErrorInvalidResourceHandle : cudaSuccess;
}

// Device memory (device_memory.cc): pages the host cannot touch outside a DeviceScope, the
// span of the emulated device's work. IsDevice: [p, p + bytes) lies in one allocation.
// RangeScope: only the allocation holding [p, p + bytes) (a copy or memset; nothing if it is
// host memory).
#ifndef RMSPROPX_EMU_PLAIN_MEMORY
struct DeviceScope {
  DeviceScope();
  ~DeviceScope();
};
class RangeScope {
 public:
  RangeScope(const void* p, size_t bytes);
  ~RangeScope();

 private:
  uintptr_t base_ = 0;
  size_t bytes_ = 0;
};
bool IsDevice(const void* p, size_t bytes);
#else  // the ASan build: ordinary heap arrays
struct DeviceScope {};
struct RangeScope {
  RangeScope(const void*, size_t) {}
};
inline bool IsDevice(const void*, size_t) { return true; }
#endif
}  // namespace rmsprop_x_cuda_emu

inline cudaError_t cudaGetLastError() { return cudaSuccess; }  // launches return theirs
inline cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t stream) {
  if (stream == nullptr) return cudaErrorInvalidResourceHandle;
  if (!rmsprop_x_cuda_emu::IsDevice(p, bytes)) return cudaErrorInvalidValue;
  rmsprop_x_cuda_emu::RangeScope scope(p, bytes);
  std::memset(p, value, bytes);
  return cudaSuccess;
}
// The direction must match the pointers (cudaMemcpyDefault: any).
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes,
                                   cudaMemcpyKind kind, cudaStream_t stream) {
  if (stream == nullptr) return cudaErrorInvalidResourceHandle;
#ifndef RMSPROPX_EMU_PLAIN_MEMORY
  using rmsprop_x_cuda_emu::IsDevice;
  const bool from_device = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  const bool to_device = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  if (kind != cudaMemcpyDefault &&
      (IsDevice(src, bytes) != from_device || IsDevice(dst, bytes) != to_device)) {
    return cudaErrorInvalidValue;
  }
#endif
  rmsprop_x_cuda_emu::RangeScope from(src, bytes), to(dst, bytes);
  std::memcpy(dst, src, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  return rmsprop_x_cuda_emu::Stream(stream);
}
// A __constant__ variable is an ordinary global here: the copy writes it.
template <typename Symbol>
cudaError_t cudaMemcpyToSymbolAsync(Symbol& symbol, const void* src, size_t bytes,
                                    size_t offset, cudaMemcpyKind kind, cudaStream_t stream) {
  if (stream == nullptr) return cudaErrorInvalidResourceHandle;
  if (offset + bytes > sizeof(Symbol) || kind != cudaMemcpyHostToDevice) {
    return cudaErrorInvalidValue;
  }
  std::memcpy(reinterpret_cast<char*>(&symbol) + offset, src, bytes);
  return cudaSuccess;
}

namespace rmsprop_x_cuda_emu {
// The barrier of the block LaunchSynced runs (its threads wait for one another).
class BlockBarrier {
 public:
  explicit BlockBarrier(int count) : count_(count) {}
  void Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    const uint64_t generation = generation_;
    if (++waiting_ == count_) {
      waiting_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    cv_.wait(lock, [&] { return generation_ != generation; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  const int count_;
  int waiting_ = 0;
  uint64_t generation_ = 0;
};
inline BlockBarrier* block_barrier = nullptr;  // the running block's (one block at a time)
}  // namespace rmsprop_x_cuda_emu

inline void __syncthreads() { rmsprop_x_cuda_emu::block_barrier->Wait(); }

namespace rmsprop_x_cuda_emu {

inline thread_local uint64_t launches = 0;  // every launch gets its own block order

// A kernel's pointer argument must be null or point into device memory.
template <typename Arg>
bool DeviceArgument(const Arg& arg) {
  if constexpr (std::is_pointer_v<Arg>) {
    return arg == nullptr || IsDevice(arg, 1);
  } else {
    return true;
  }
}

// What every launch checks first, as the runtime does: CUDA's limits (a bad configuration
// is an error, nothing runs) and the pointer arguments (a host pointer:
// cudaErrorInvalidValue, where a GPU would fault).
template <typename... Params, typename... Args>
cudaError_t CheckLaunch(void (*)(Params...), int blocks, int threads, cudaStream_t stream,
                        const Args&... args) {
  static_assert((sizeof(Params) + ... + 0) <= 4096, "kernel arguments over CUDA's 4 KB");
  if (stream == nullptr) return cudaErrorInvalidResourceHandle;
  if (blocks < 1 || threads < 1 || threads > 1024) return cudaErrorInvalidConfiguration;
  if (!(DeviceArgument(args) && ...)) return cudaErrorInvalidValue;
  return cudaSuccess;
}

// The order a launch runs its blocks in: offset, offset + stride, ... (mod blocks), stride
// coprime to blocks, both drawn per launch.
class BlockOrder {
 public:
  explicit BlockOrder(int blocks) : n_(static_cast<uint64_t>(blocks)) {
    const uint64_t seed = (++launches) * 0x9E3779B97F4A7C15ull;
    stride_ = (seed >> 17) % n_ | 1;
    while (std::gcd(stride_, n_) != 1) stride_ += 2;
    offset_ = (seed >> 41) % n_;
  }
  uint3 operator[](uint64_t j) const {
    return uint3{static_cast<unsigned>((offset_ + j * stride_) % n_), 0, 0};
  }

 private:
  uint64_t n_, stride_ = 1, offset_ = 0;
};

// The launch: every thread of the grid, one after another, with device memory accessible.
template <typename... Params, typename... Args>
cudaError_t Launch(void (*kernel)(Params...), int blocks, int threads, cudaStream_t stream,
                   const Args&... args) {
  const cudaError_t checked = CheckLaunch(kernel, blocks, threads, stream, args...);
  if (checked != cudaSuccess) return checked;
  DeviceScope scope;
  const BlockOrder order(blocks);
  gridDim = dim3{static_cast<unsigned>(blocks), 1, 1};
  blockDim = dim3{static_cast<unsigned>(threads), 1, 1};
  for (int j = 0; j < blocks; ++j) {
    blockIdx = order[j];
    for (int t = threads - 1; t >= 0; --t) {
      threadIdx = uint3{static_cast<unsigned>(t), 0, 0};
      kernel(args...);
    }
  }
  return cudaSuccess;
}

// LaunchSynced: as Launch, but each block's threads run concurrently (OS threads), meeting
// at __syncthreads(); blocks one after another, in Launch's shuffled order.
template <typename... Params, typename... Args>
cudaError_t LaunchSynced(void (*kernel)(Params...), int blocks, int threads,
                         cudaStream_t stream, const Args&... args) {
  const cudaError_t checked = CheckLaunch(kernel, blocks, threads, stream, args...);
  if (checked != cudaSuccess) return checked;
  DeviceScope scope;
  const BlockOrder order(blocks);
  const dim3 grid{static_cast<unsigned>(blocks), 1, 1};
  const dim3 block{static_cast<unsigned>(threads), 1, 1};
  for (int j = 0; j < blocks; ++j) {
    const uint3 block_index = order[j];
    BlockBarrier barrier(threads);
    block_barrier = &barrier;
    std::vector<std::thread> running;
    running.reserve(threads);
    for (int t = threads - 1; t >= 0; --t) {
      running.emplace_back([&, t] {
        gridDim = grid;
        blockDim = block;
        blockIdx = block_index;
        threadIdx = uint3{static_cast<unsigned>(t), 0, 0};
        kernel(args...);
      });
    }
    for (std::thread& thread : running) thread.join();
    block_barrier = nullptr;
  }
  return cudaSuccess;
}

// CUB's temporary storage: the emulated algorithms ask for `bytes` and poison all of it
// before use (CUB uses its temporaries as scratch), so a workspace whose temporaries overlap
// another of its arrays corrupts that array here as it would on a GPU.
inline cudaError_t Temporaries(void* temp, size_t& bytes, size_t needed, cudaStream_t stream) {
  if (temp == nullptr) {  // the size query: no work, no stream needed
    bytes = needed;
    return cudaSuccess;
  }
  if (stream == nullptr) return cudaErrorInvalidResourceHandle;
  if (bytes < needed || !IsDevice(temp, needed)) return cudaErrorInvalidValue;
  std::memset(temp, 0xCD, needed);
  return cudaSuccess;
}

}  // namespace rmsprop_x_cuda_emu

#endif  // TF_RMSPROP_OPS_TESTS_GPU_EMU_CUDA_EMU_H_
