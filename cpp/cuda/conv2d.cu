// conv2d.cu: 2-D convolution on the GPU (NCHW, cross-correlation as in PyTorch): forward,
// backward-input, backward-weight and the bias gradient.  The transposed convolution is the
// adjoint of this one and calls these kernels (kernels.h), as on the CPU.
//
// Versions (pick one with `version`; -1 = the last, fastest):
//   0  naive: one thread per output element, computing it straight off the definition.
//        forward          thread (n, co, oh, ow) sums over (ci, i, j)
//        backward-input   a gather, thread (n, ci, h, w) sums over the (co, i, j) whose
//                         window covers (h, w): no atomics, no scatter
//        backward-weight  thread (co, ci, i, j) sums over (n, oh, ow)
//      Slow (every thread re-reads its inputs from global memory) but obviously right: the
//      tests hold version 1 to it and to the CPU kernels.
//   1  tiled implicit GEMM (tiled_gemm.cuh + conv_maps.cuh): each pass is a matrix product
//      whose operands are gathered from the tensors on the fly into 64x64 shared-memory
//      tiles (32-row tiles when the product has <= 32 rows), double-buffered, with 8x8
//      (float) / 4x4 (double) register blocking.
//        forward          M = Co,  N = N*OH*OW,  K = Ci*KH*KW
//        backward-input   one GEMM per stride phase (SH*SW of them), each over its live
//                         taps only, so a stride-2 pass does no multiplications by zero
//                         (strides with more than 64 phases use version 0's gather)
//        backward-weight  M = Co,  N = Ci*KH*KW,  K = N*OH*OW
//      Where the tiles of C are too few to fill the GPU (always for the weight gradient,
//      often for small layers at small batches), the reduction is split over K (for the
//      weight gradient: over the batch) into slices summed in a fixed order afterwards:
//      deterministic, no atomics.
//   The bias gradient has one version: a block per channel, a tree reduction in shared
//   memory (deterministic, no atomics).
//   Both versions take an output (OH, OW) smaller than the natural size (cpp/conv2d.h: the
//   transposed convolution's adjoint when output_padding >= stride): every index map reads
//   and writes only outputs inside (OH, OW), and backward-input's gathers skip the rest.
#include "common.cuh"
#include "conv_maps.cuh"
#include "tiled_gemm.cuh"

namespace gasca {
namespace cuda {

static const char* const kConvVersionNames[] = {
    "naive: one thread per output element",
    "tiled implicit GEMM (64x64 tiles, register blocking, deterministic split-K)",
};
static constexpr int kConvVersions = sizeof(kConvVersionNames) / sizeof(kConvVersionNames[0]);

int conv2d_num_versions() { return kConvVersions; }
const char* conv2d_version_name(int version) {
  return (version >= 0 && version < kConvVersions) ? kConvVersionNames[version] : "";
}

// ============================================================ version 0: naive

template <typename T>
__global__ void conv2d_forward_naive(ConvGeometry g, const T* __restrict__ x,
                                     const T* __restrict__ w, const T* __restrict__ bias,
                                     T* __restrict__ y) {
  const int64_t total = g.batch * g.out_channels * g.out_h * g.out_w;
  for (int64_t idx = global_thread_index(); idx < total; idx += global_thread_count()) {
    const int64_t ow = idx % g.out_w;
    const int64_t oh = (idx / g.out_w) % g.out_h;
    const int64_t co = (idx / (g.out_w * g.out_h)) % g.out_channels;
    const int64_t n = idx / (g.out_w * g.out_h * g.out_channels);
    T sum = bias ? bias[co] : T(0);
    for (int64_t ci = 0; ci < g.in_channels; ++ci)
      for (int64_t i = 0; i < g.kernel_h; ++i) {
        const int64_t h = oh * g.stride_h - g.pad_h + i * g.dilation_h;
        if (h < 0 || h >= g.in_h) continue;
        for (int64_t j = 0; j < g.kernel_w; ++j) {
          const int64_t ww = ow * g.stride_w - g.pad_w + j * g.dilation_w;
          if (ww < 0 || ww >= g.in_w) continue;
          sum += w[((co * g.in_channels + ci) * g.kernel_h + i) * g.kernel_w + j] *
                 x[((n * g.in_channels + ci) * g.in_h + h) * g.in_w + ww];
        }
      }
    y[idx] = sum;
  }
}

template <typename T>
__global__ void conv2d_backward_input_naive(ConvGeometry g, const T* __restrict__ dy,
                                            const T* __restrict__ w, const T* __restrict__ bias,
                                            T* __restrict__ dx) {
  const int64_t total = g.batch * g.in_channels * g.in_h * g.in_w;
  for (int64_t idx = global_thread_index(); idx < total; idx += global_thread_count()) {
    const int64_t ww = idx % g.in_w;
    const int64_t h = (idx / g.in_w) % g.in_h;
    const int64_t ci = (idx / (g.in_w * g.in_h)) % g.in_channels;
    const int64_t n = idx / (g.in_w * g.in_h * g.in_channels);
    T sum = bias ? bias[ci] : T(0);
    for (int64_t co = 0; co < g.out_channels; ++co)
      for (int64_t i = 0; i < g.kernel_h; ++i) {
        // (h, ww) is read by output row oh when oh*SH - PH + i*DH == h.
        const int64_t th = h + g.pad_h - i * g.dilation_h;
        if (th < 0 || th % g.stride_h != 0) continue;
        const int64_t oh = th / g.stride_h;
        if (oh >= g.out_h) continue;
        for (int64_t j = 0; j < g.kernel_w; ++j) {
          const int64_t tw = ww + g.pad_w - j * g.dilation_w;
          if (tw < 0 || tw % g.stride_w != 0) continue;
          const int64_t ow = tw / g.stride_w;
          if (ow >= g.out_w) continue;
          sum += w[((co * g.in_channels + ci) * g.kernel_h + i) * g.kernel_w + j] *
                 dy[((n * g.out_channels + co) * g.out_h + oh) * g.out_w + ow];
        }
      }
    dx[idx] = sum;
  }
}

template <typename T>
__global__ void conv2d_backward_weight_naive(ConvGeometry g, const T* __restrict__ x,
                                             const T* __restrict__ dy, T* __restrict__ dw) {
  const int64_t total = g.out_channels * g.in_channels * g.kernel_h * g.kernel_w;
  for (int64_t idx = global_thread_index(); idx < total; idx += global_thread_count()) {
    const int64_t j = idx % g.kernel_w;
    const int64_t i = (idx / g.kernel_w) % g.kernel_h;
    const int64_t ci = (idx / (g.kernel_w * g.kernel_h)) % g.in_channels;
    const int64_t co = idx / (g.kernel_w * g.kernel_h * g.in_channels);
    T sum = T(0);
    for (int64_t n = 0; n < g.batch; ++n)
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        const int64_t h = oh * g.stride_h - g.pad_h + i * g.dilation_h;
        if (h < 0 || h >= g.in_h) continue;
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          const int64_t ww = ow * g.stride_w - g.pad_w + j * g.dilation_w;
          if (ww < 0 || ww >= g.in_w) continue;
          sum += dy[((n * g.out_channels + co) * g.out_h + oh) * g.out_w + ow] *
                 x[((n * g.in_channels + ci) * g.in_h + h) * g.in_w + ww];
        }
      }
    dw[idx] = sum;
  }
}

// ============================================================ bias gradient
// One block per channel c; the block's threads stride over the pixels of each image (so a
// warp reads consecutive addresses), then a shared-memory tree adds the partial sums.
constexpr int kBiasThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kBiasThreads)
    conv2d_backward_bias_kernel(int64_t batch, int64_t channels, int64_t pixels,
                                const T* __restrict__ dy, T* __restrict__ db) {
  __shared__ T partial[kBiasThreads];
  for (int64_t c = blockIdx.x; c < channels; c += gridDim.x) {
    T sum = T(0);
    for (int64_t n = 0; n < batch; ++n) {
      const T* plane = dy + (n * channels + c) * pixels;
      for (int64_t p = threadIdx.x; p < pixels; p += kBiasThreads) sum += plane[p];
    }
    partial[threadIdx.x] = sum;
    __syncthreads();
    for (int half = kBiasThreads / 2; half > 0; half /= 2) {
      if (static_cast<int>(threadIdx.x) < half) partial[threadIdx.x] += partial[threadIdx.x + half];
      __syncthreads();
    }
    if (threadIdx.x == 0) db[c] = partial[0];
    __syncthreads();  // partial[] is reused by the next channel
  }
}

// ============================================================ dispatch

// Above this many stride phases, backward-input falls back to the gather (see below).
constexpr int64_t kMaxPhases = 64;

template <typename T>
Status conv2d_forward(const ConvGeometry& g, const T* x, const T* w, const T* bias, T* y,
                      int version, cudaStream_t stream) {
  if (version < 0) version = kConvVersions - 1;
  const int64_t total = g.batch * g.out_channels * g.out_h * g.out_w;
  if (total == 0) return Status{};
  if (version == 0) {
    conv2d_forward_naive<T><<<elementwise_blocks(total), kElementwiseThreads, 0, stream>>>(
        g, x, w, bias, y);
    return launch_status("conv2d_forward_naive");
  }
  const int64_t K = g.in_channels * g.kernel_h * g.kernel_w;
  const ForwardWeights<T> a{w, K};
  const ForwardImage<T> b{x,          g.in_channels, g.in_h,     g.in_w,     g.out_h,
                          g.out_w,    g.kernel_h,    g.kernel_w, g.stride_h, g.stride_w,
                          g.pad_h,    g.pad_w,       g.dilation_h, g.dilation_w};
  const ForwardOut<T> out{y, bias, g.out_channels, g.out_h * g.out_w};
  return launch_tiled_gemm<T>("conv2d_forward_tiled", a, b, out, g.out_channels,
                              g.batch * g.out_h * g.out_w, K, true, stream);
}

template <typename T>
Status conv2d_backward_input(const ConvGeometry& g, const T* dy, const T* w, const T* bias,
                             T* dx, int version, cudaStream_t stream) {
  if (version < 0) version = kConvVersions - 1;
  const int64_t total = g.batch * g.in_channels * g.in_h * g.in_w;
  if (total == 0) return Status{};
  // The tiled pass launches one GEMM per stride phase that holds any rows of dx; with an
  // absurd stride (far larger than the kernel, so most of dx is untouched by any tap) that
  // would be many tiny launches, and the gather does the job better.
  const int64_t phases = (g.stride_h < g.in_h ? g.stride_h : g.in_h) *
                         (g.stride_w < g.in_w ? g.stride_w : g.in_w);
  if (version == 0 || phases > kMaxPhases) {
    conv2d_backward_input_naive<T><<<elementwise_blocks(total), kElementwiseThreads, 0, stream>>>(
        g, dy, w, bias, dx);
    return launch_status("conv2d_backward_input_naive");
  }
  // One dense GEMM per stride phase; together the phases write every element of dx once
  // (a phase with no live taps writes zeros, or the bias).
  for (int64_t rh = 0; rh < g.stride_h && rh < g.in_h; ++rh)
    for (int64_t rw = 0; rw < g.stride_w && rw < g.in_w; ++rw) {
      const PhaseAxis ph =
          make_phase_axis(rh, g.in_h, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h);
      const PhaseAxis pw =
          make_phase_axis(rw, g.in_w, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w);
      if (ph.count == 0 || pw.count == 0) continue;  // no rows of dx in this phase
      const InputWeights<T> a{w, g.in_channels, g.kernel_h, g.kernel_w, ph, pw};
      const InputGrads<T> b{dy, g.out_channels, g.out_h, g.out_w, ph, pw};
      const InputOut<T> out{dx, bias, g.in_channels, g.in_h, g.in_w, g.stride_h, g.stride_w,
                            ph, pw};
      const Status s = launch_tiled_gemm<T>(
          "conv2d_backward_input_tiled", a, b, out, g.in_channels,
          g.batch * ph.count * pw.count, g.out_channels * ph.taps * pw.taps, true, stream);
      if (!s.ok()) return s;
    }
  return Status{};
}

template <typename T>
Status conv2d_backward_weight(const ConvGeometry& g, const T* x, const T* dy, T* dw,
                              int version, cudaStream_t stream) {
  if (version < 0) version = kConvVersions - 1;
  const int64_t total = g.out_channels * g.in_channels * g.kernel_h * g.kernel_w;
  if (total == 0) return Status{};
  if (version == 0) {
    conv2d_backward_weight_naive<T><<<elementwise_blocks(total), kElementwiseThreads, 0,
                                      stream>>>(g, x, dy, dw);
    return launch_status("conv2d_backward_weight_naive");
  }
  const int64_t M = g.out_channels, N = g.in_channels * g.kernel_h * g.kernel_w;
  const int64_t K = g.batch * g.out_h * g.out_w;
  const WeightGrads<T> a{dy, g.out_channels, g.out_h * g.out_w};
  const WeightImage<T> b{x,          g.in_channels, g.in_h,     g.in_w,     g.out_h,
                         g.out_w,    g.kernel_h,    g.kernel_w, g.stride_h, g.stride_w,
                         g.pad_h,    g.pad_w,       g.dilation_h, g.dilation_w};
  const WeightOut<T> out{dw, N};
  return launch_tiled_gemm<T>("conv2d_backward_weight_tiled", a, b, out, M, N, K, true,
                              stream);
}

template <typename T>
Status conv2d_backward_bias(int64_t batch, int64_t channels, int64_t pixels, const T* dy, T* db,
                            cudaStream_t stream) {
  if (channels == 0) return Status{};
  const int64_t blocks = channels < 65535 ? channels : 65535;
  conv2d_backward_bias_kernel<T><<<static_cast<unsigned>(blocks), kBiasThreads, 0, stream>>>(
      batch, channels, pixels, dy, db);
  return launch_status("conv2d_backward_bias");
}

#define GASCA_INSTANTIATE(T)                                                                 \
  template Status conv2d_forward<T>(const ConvGeometry&, const T*, const T*, const T*, T*,   \
                                    int, cudaStream_t);                                      \
  template Status conv2d_backward_input<T>(const ConvGeometry&, const T*, const T*, const T*, \
                                           T*, int, cudaStream_t);                           \
  template Status conv2d_backward_weight<T>(const ConvGeometry&, const T*, const T*, T*, int, \
                                            cudaStream_t);                                   \
  template Status conv2d_backward_bias<T>(int64_t, int64_t, int64_t, const T*, T*,            \
                                          cudaStream_t);
GASCA_INSTANTIATE(float)
GASCA_INSTANTIATE(double)
#undef GASCA_INSTANTIATE

}  // namespace cuda
}  // namespace gasca
