// conv2d_threads.h: how conv2d version 2 (conv2d_fast.cpp) shares its work between threads.
//
// Versions of conv2d (the full map atop conv2d.cpp):
//   0  reference     conv2d.cpp
//   1  im2col+gemm   conv2d_im2col.cpp (only gemm is parallel)
//   2  fast          conv2d_fast.cpp, from these pieces: conv2d_rows.h (row copies),
//                    conv2d_phase_image.h, conv2d_packing.h, conv2d_threads.h (this file)
//
// Version 2's threads work on separate images (or separate column blocks of one image) and
// never write where another thread does: each has its own slice of the scratch memory,
// found by its thread id, and the weight gradient's per-thread partial sums are added at
// the end.  How many threads a call uses is decided here, once per call.
//
// Forward and backward-input hand their images out one at a time (schedule(dynamic)): each
// image is computed whole by one thread, so the result does not depend on which, and a
// thread slowed down by another process (or running on a slower core) simply takes fewer
// images instead of holding the others up at the end of a static split.  Backward-weight
// keeps a static split: its per-thread partial sums must cover the same images on every run
// for the summed gradient to be the same to the last bit.
#pragma once

#include <algorithm>
#include <cstdint>

#include "conv2d.h"
#include "gemm.h"  // get_num_threads

#ifdef GASCA_OPENMP
#include <omp.h>
#endif

namespace gasca {
namespace conv2d_v2 {
namespace {  // private to conv2d_fast.cpp, the one file that includes this

// This thread's number in the enclosing parallel region, and the region's thread count
// (0 and 1 outside one, or in a build without OpenMP).
inline int thread_id() {
#ifdef GASCA_OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

inline int thread_count() {
#ifdef GASCA_OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

// Threads for a convolution: never more than there are independent work items, and one
// per ~4 MFLOP at least (about 40 us of work), so that a small convolution does not pay
// for waking threads, which costs far more when other processes share the cores.
inline int conv_threads(const ConvGeometry& g, int64_t items) {
  const int64_t flops = 2 * g.batch * g.out_channels * g.in_channels * g.kernel_h * g.kernel_w *
                        g.out_h * g.out_w;
  const int64_t by_work = std::max<int64_t>(1, flops / (int64_t(4) << 20));
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({int64_t(get_num_threads()), items, by_work})));
}

}  // namespace
}  // namespace conv2d_v2
}  // namespace gasca
