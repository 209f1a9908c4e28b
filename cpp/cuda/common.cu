// common.cu: the few host helpers that common.cuh declares.
#include <atomic>

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

}  // namespace cuda
}  // namespace gasca
