// common.cuh: small helpers shared by the CUDA kernels in cpp/cuda/.
//
// Nothing here is specific to one kernel: the launch geometry of the element-wise
// (grid-stride) kernels, ceil-division, and the macro that lets an index map be compiled
// for both the host and the device (so that the maps can be checked on a CPU).
#pragma once
#include <cstdint>

#include <cuda_runtime.h>

#include "kernels.h"

#if defined(__CUDACC__)
#define GASCA_HD __host__ __device__ __forceinline__
#else
#define GASCA_HD inline
#endif

namespace gasca {
namespace cuda {

GASCA_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Threads per block of the element-wise kernels: 256 is a multiple of the warp size that
// leaves room for several blocks per SM on every architecture we build for.
constexpr int kElementwiseThreads = 256;

// Blocks for an element-wise kernel over n items with a grid-stride loop.  We cap the grid:
// beyond a few thousand blocks every SM is already full, and the grid-stride loop covers
// the rest, so the kernel is correct for any n (up to 2^63) and never asks for an illegal
// grid.
inline unsigned elementwise_blocks(int64_t n) {
  const int64_t blocks = ceil_div(n, kElementwiseThreads);
  const int64_t cap = 8192;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > cap ? cap : blocks));
}

// The index of this thread in the whole grid, and the grid's size, in 64 bits: the product
// blockIdx.x * blockDim.x is done in 32 bits by default and overflows past 2^32 threads.
#if defined(__CUDACC__)
__device__ __forceinline__ int64_t global_thread_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t global_thread_count() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}
#endif

// The status of the launch just made: cudaGetLastError reports a bad launch configuration
// at once (and any earlier asynchronous error); the kernel's own faults surface later, at
// the next synchronising call.
inline Status launch_status(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  return Status{err, err == cudaSuccess ? nullptr : kernel};
}

// Number of SMs of the current device (cached per device: the query is not free).
int multiprocessor_count();

// Scratch memory ordered on `stream` (freed after the work queued before the free has run),
// from a per-device pool that keeps it cached between calls.  nullptr when the system has no
// stream-ordered allocator or no memory: callers must have a way to do without.
void* workspace_alloc(size_t bytes, cudaStream_t stream);
void workspace_free(void* ptr, cudaStream_t stream);

}  // namespace cuda
}  // namespace gasca
