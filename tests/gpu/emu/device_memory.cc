// The emulation's "device" memory (tests/gpu/emu/cuda_emu.h): whole pages, followed by a
// guard page, that the host cannot read or write (PROT_NONE) except while the emulated
// device works on them (a kernel, a memset or memcpy, a CUB algorithm). Launcher code that
// dereferences a device pointer on the host then crashes here as it would with a GPU, a
// kernel given a host pointer is an error, and a copy in the wrong direction is one too.
// tests/gpu/gpu_lib.py allocates the tests' arrays here and copies through rx_emu_memcpy.
//
// The ASan build of the emulation (GPU_HARNESS_SANITIZE=address) uses ordinary heap arrays
// instead, so that ASan sees each array's exact end; it compiles none of this
// (RMSPROPX_EMU_PLAIN_MEMORY).
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>

#include "cuda_emu.h"

#ifndef RMSPROPX_EMU_PLAIN_MEMORY
namespace rmsprop_x_cuda_emu {
namespace {

std::mutex mu;
std::map<uintptr_t, size_t>* allocations = new std::map<uintptr_t, size_t>;  // base -> pages
int open_scopes = 0;

size_t PageSize() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }

void ProtectAll(int prot) {
  for (const auto& [base, bytes] : *allocations) {
    mprotect(reinterpret_cast<void*>(base), bytes, prot);
  }
}

}  // namespace

DeviceScope::DeviceScope() {
  std::lock_guard<std::mutex> lock(mu);
  if (open_scopes++ == 0) ProtectAll(PROT_READ | PROT_WRITE);
}
DeviceScope::~DeviceScope() {
  std::lock_guard<std::mutex> lock(mu);
  if (--open_scopes == 0) ProtectAll(PROT_NONE);
}

RangeScope::RangeScope(const void* p, size_t bytes) {
  std::lock_guard<std::mutex> lock(mu);
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto it = allocations->upper_bound(a);
  if (open_scopes > 0 || it == allocations->begin()) return;  // open already, or host memory
  --it;
  if (a < it->first || a + bytes > it->first + it->second) return;
  base_ = it->first;
  bytes_ = it->second;
  mprotect(reinterpret_cast<void*>(base_), bytes_, PROT_READ | PROT_WRITE);
}
RangeScope::~RangeScope() {
  std::lock_guard<std::mutex> lock(mu);
  if (bytes_ != 0 && open_scopes == 0 && allocations->count(base_)) {
    mprotect(reinterpret_cast<void*>(base_), bytes_, PROT_NONE);
  }
}

bool IsDevice(const void* p, size_t bytes) {
  std::lock_guard<std::mutex> lock(mu);
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto it = allocations->upper_bound(a);
  if (it == allocations->begin()) return false;
  --it;
  return a >= it->first && a + bytes <= it->first + it->second;
}

}  // namespace rmsprop_x_cuda_emu

using rmsprop_x_cuda_emu::IsDevice;

extern "C" {

// Device memory of at least `bytes` (page-aligned, so 256-byte aligned as cudaMalloc's).
void* rx_emu_malloc(size_t bytes) {
  const size_t page = rmsprop_x_cuda_emu::PageSize();
  const size_t usable = (bytes + page - 1) / page * page + (bytes == 0 ? page : 0);
  void* p = mmap(nullptr, usable + page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  std::lock_guard<std::mutex> lock(rmsprop_x_cuda_emu::mu);
  (*rmsprop_x_cuda_emu::allocations)[reinterpret_cast<uintptr_t>(p)] = usable;
  if (rmsprop_x_cuda_emu::open_scopes > 0) mprotect(p, usable, PROT_READ | PROT_WRITE);
  return p;
}

void rx_emu_free(void* p) {
  std::lock_guard<std::mutex> lock(rmsprop_x_cuda_emu::mu);
  auto it = rmsprop_x_cuda_emu::allocations->find(reinterpret_cast<uintptr_t>(p));
  if (it == rmsprop_x_cuda_emu::allocations->end()) return;
  munmap(p, it->second + rmsprop_x_cuda_emu::PageSize());
  rmsprop_x_cuda_emu::allocations->erase(it);
}

// The number of live device allocations (the tests' arrays must be freed).
int64_t rx_emu_live_allocations() {
  std::lock_guard<std::mutex> lock(rmsprop_x_cuda_emu::mu);
  return static_cast<int64_t>(rmsprop_x_cuda_emu::allocations->size());
}

// cudaMemcpy for the tests (kind: cudaMemcpyKind); a cudaError_t.
int rx_emu_memcpy(void* dst, const void* src, size_t bytes, int kind) {
  return cudaMemcpyAsync(dst, src, bytes, static_cast<cudaMemcpyKind>(kind),
                         reinterpret_cast<cudaStream_t>(uintptr_t{1}));
}

int rx_emu_memset(void* dst, int value, size_t bytes) {
  return cudaMemsetAsync(dst, value, bytes, reinterpret_cast<cudaStream_t>(uintptr_t{1}));
}

}  // extern "C"
#endif  // RMSPROPX_EMU_PLAIN_MEMORY
