// common.cu: the few host helpers that common.cuh declares.
#include <atomic>
#include <cstdint>
#include <mutex>

#include "common.cuh"

namespace gasca {
namespace cuda {

int multiprocessor_count() {
  // One cached answer per device; the bindings release the GIL, so make it thread-safe.
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices] = {};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) {
    cudaGetLastError();  // clear the error: it is not the kernel's
    return 80;           // a typical SM count: only the split-K heuristic depends on it
  }
  int count = cache[device].load(std::memory_order_relaxed);
  if (count == 0) {
    if (cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
        count <= 0) {
      cudaGetLastError();
      count = 80;
    }
    cache[device].store(count, std::memory_order_relaxed);
  }
  return count;
}

// Our own stream-ordered memory pool per device, created on first use and kept for the life
// of the process.  Its release threshold keeps up to 256 MiB cached between calls, so a
// split-K workspace is normally a pointer handed out of the pool, not a fresh mapping of
// device memory after every synchronisation (which is what the default pool, threshold 0,
// would do).  Our own pool leaves the process-wide default pool, which CuPy may use, alone.
static cudaMemPool_t workspace_pool() {
  constexpr int kMaxDevices = 64;
  static std::mutex mutex;
  static cudaMemPool_t pools[kMaxDevices] = {};
  static bool failed[kMaxDevices] = {};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) {
    cudaGetLastError();
    return nullptr;
  }
  std::lock_guard<std::mutex> lock(mutex);
  if (pools[device] == nullptr && !failed[device]) {
    cudaMemPoolProps props = {};
    props.allocType = cudaMemAllocationTypePinned;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = device;
    if (cudaMemPoolCreate(&pools[device], &props) != cudaSuccess) {
      cudaGetLastError();  // no memory pools on this system: callers do without
      pools[device] = nullptr;
      failed[device] = true;
    } else {
      uint64_t keep = uint64_t(256) << 20;  // the attribute is a 64-bit unsigned integer
      cudaMemPoolSetAttribute(pools[device], cudaMemPoolAttrReleaseThreshold, &keep);
      cudaGetLastError();
    }
  }
  return pools[device];
}

void* workspace_alloc(size_t bytes, cudaStream_t stream) {
  cudaMemPool_t pool = workspace_pool();
  if (pool == nullptr) return nullptr;
  void* ptr = nullptr;
  if (cudaMallocFromPoolAsync(&ptr, bytes, pool, stream) != cudaSuccess) {
    cudaGetLastError();  // out of memory or no support: the caller does without
    return nullptr;
  }
  return ptr;
}

void workspace_free(void* ptr, cudaStream_t stream) {
  if (ptr != nullptr && cudaFreeAsync(ptr, stream) != cudaSuccess) cudaGetLastError();
}

}  // namespace cuda
}  // namespace gasca
