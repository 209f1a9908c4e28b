// conv2d.cpp: 2-D convolution (cross-correlation), NCHW, forward and both gradients: the
// reference version, the bias gradient, and the dispatch to every version.
//
// Versions (pick one with `version`; -1 = the fastest, kConvFastest below):
//   0  reference (this file): the direct 7-deep loop nest, read straight off the definition.
//   1  im2col + gemm (conv2d_im2col.cpp): unfold each image into a (C_in*KH*KW) x (OH*OW)
//      column matrix and hand the whole convolution to gemm (the version `gemm_version`
//      names: -1, its fastest, unless the caller chose another).
//      backward-input is gemm into columns then col2im (scatter-add); backward-weight is
//      gemm of dy with the columns transposed, accumulated over the batch.  One image at a
//      time; only gemm is parallel.
//   2  fast (conv2d_fast.cpp): the same three products, rebuilt from the fast gemm's pieces
//      (gemm_internal.h) so that no column matrix is materialised whole and the threads work
//      on separate images with no synchronisation (a thread never writes where another
//      does).  Each image is first copied once into a zero-padded, phase-split form, from
//      which every run of im2col/col2im is a contiguous, bounds-check-free copy or add of
//      one row segment.  Its pieces, each in its own file:
//        conv2d_rows.h         the row copies (masked AVX-512 runs, the stride-2 split/merge)
//        conv2d_phase_image.h  the phase-split image, and reading / adding back blocks of the
//                              column matrix from / into it
//        conv2d_packing.h      blocks of the column matrix packed as the gemm's B panels
//        conv2d_threads.h      how the work is shared between threads
//      forward is an implicit gemm when output rows are whole SIMD vectors (no im2col at
//      all), backward-input adds cache-sized column blocks back into a phase image of dx,
//      backward-weight sums per-thread partial dW (dot products of rows when dW is small).
//      Geometries whose phase image would be mostly padding take version 1's path.
//   conv2d_versions.h declares versions 1 and 2 for the dispatch below.
//
// Adding a version (docs/COURSE.md, "Your own version in C++"): write its three passes,
// add a name to kConvVersionNames and a case to each switch below.  versions() lists it,
// the tests check it against version 0 and the benchmark times it; kConvFastest, what -1
// picks, stays where it is until the new version earns the place.
//
// Every version accepts an output size smaller than the natural one (conv2d.h: the
// transposed convolution's adjoint when output_padding >= stride); all loops run over
// out_h x out_w.  Every faster version is checked against version 0 by
// tests/test_kernels_conv.py.
#include "conv2d.h"

#include <algorithm>
#include <stdexcept>

#include "conv2d_versions.h"
#include "gemm.h"  // get_num_threads, gemm_num_versions

namespace gasca {

// ============================================================ version 0: reference
// y[n, co, oh, ow] = bias[co] + sum_{ci, i, j} w[co, ci, i, j] * x[n, ci, ih, iw]
//   with ih = oh*SH - PH + i*DH, iw = ow*SW - PW + j*DW (zero outside the image).
template <typename T>
static void forward_reference(const ConvGeometry& g, const T* x, const T* w, const T* bias,
                              T* y) {
  for (int64_t n = 0; n < g.batch; ++n)
    for (int64_t co = 0; co < g.out_channels; ++co)
      for (int64_t oh = 0; oh < g.out_h; ++oh)
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          T sum = bias ? bias[co] : T(0);
          for (int64_t ci = 0; ci < g.in_channels; ++ci)
            for (int64_t i = 0; i < g.kernel_h; ++i) {
              const int64_t ih = oh * g.stride_h - g.pad_h + i * g.dilation_h;
              if (ih < 0 || ih >= g.in_h) continue;
              for (int64_t j = 0; j < g.kernel_w; ++j) {
                const int64_t iw = ow * g.stride_w - g.pad_w + j * g.dilation_w;
                if (iw < 0 || iw >= g.in_w) continue;
                sum += w[((co * g.in_channels + ci) * g.kernel_h + i) * g.kernel_w + j] *
                       x[((n * g.in_channels + ci) * g.in_h + ih) * g.in_w + iw];
              }
            }
          y[((n * g.out_channels + co) * g.out_h + oh) * g.out_w + ow] = sum;
        }
}

// dx is the adjoint: every product that the forward pass adds into y[n, co, oh, ow] sends
// dy[n, co, oh, ow] * w back to the x element it read.
template <typename T>
static void backward_input_reference(const ConvGeometry& g, const T* dy, const T* w, T* dx) {
  std::fill(dx, dx + g.batch * g.in_channels * g.in_h * g.in_w, T(0));
  for (int64_t n = 0; n < g.batch; ++n)
    for (int64_t co = 0; co < g.out_channels; ++co)
      for (int64_t oh = 0; oh < g.out_h; ++oh)
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          const T d = dy[((n * g.out_channels + co) * g.out_h + oh) * g.out_w + ow];
          for (int64_t ci = 0; ci < g.in_channels; ++ci)
            for (int64_t i = 0; i < g.kernel_h; ++i) {
              const int64_t ih = oh * g.stride_h - g.pad_h + i * g.dilation_h;
              if (ih < 0 || ih >= g.in_h) continue;
              for (int64_t j = 0; j < g.kernel_w; ++j) {
                const int64_t iw = ow * g.stride_w - g.pad_w + j * g.dilation_w;
                if (iw < 0 || iw >= g.in_w) continue;
                dx[((n * g.in_channels + ci) * g.in_h + ih) * g.in_w + iw] +=
                    d * w[((co * g.in_channels + ci) * g.kernel_h + i) * g.kernel_w + j];
              }
            }
        }
}

template <typename T>
static void backward_weight_reference(const ConvGeometry& g, const T* x, const T* dy, T* dw) {
  for (int64_t co = 0; co < g.out_channels; ++co)
    for (int64_t ci = 0; ci < g.in_channels; ++ci)
      for (int64_t i = 0; i < g.kernel_h; ++i)
        for (int64_t j = 0; j < g.kernel_w; ++j) {
          T sum = 0;
          for (int64_t n = 0; n < g.batch; ++n)
            for (int64_t oh = 0; oh < g.out_h; ++oh) {
              const int64_t ih = oh * g.stride_h - g.pad_h + i * g.dilation_h;
              if (ih < 0 || ih >= g.in_h) continue;
              for (int64_t ow = 0; ow < g.out_w; ++ow) {
                const int64_t iw = ow * g.stride_w - g.pad_w + j * g.dilation_w;
                if (iw < 0 || iw >= g.in_w) continue;
                sum += dy[((n * g.out_channels + co) * g.out_h + oh) * g.out_w + ow] *
                       x[((n * g.in_channels + ci) * g.in_h + ih) * g.in_w + iw];
              }
            }
          dw[((co * g.in_channels + ci) * g.kernel_h + i) * g.kernel_w + j] = sum;
        }
}

// ============================================================ bias gradient
template <typename T>
void conv2d_backward_bias(const ConvGeometry& g, const T* dy, T* db) {
  const int64_t ohw = g.out_h * g.out_w;
  // Accumulate in double: the sum runs over N*OH*OW terms (65536 for gasca-64 layer 1).
  // Channels are independent: split them over the threads when there is enough to sum.
  const int64_t total = g.batch * g.out_channels * ohw;
  const int nt = static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>({int64_t(get_num_threads()), g.out_channels, total >> 18})));
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t co = 0; co < g.out_channels; ++co) {
    double sum = 0;
    for (int64_t n = 0; n < g.batch; ++n) {
      const T* p = dy + (n * g.out_channels + co) * ohw;
#pragma omp simd reduction(+ : sum)
      for (int64_t q = 0; q < ohw; ++q) sum += static_cast<double>(p[q]);
    }
    db[co] = static_cast<T>(sum);
  }
}

// ============================================================ dispatch
static const char* const kConvVersionNames[] = {
    "reference direct loops",
    "im2col + gemm, one image at a time",
    "fast: phase-split image, implicit gemms, stride-phase backward-input, threads over images",
};
static constexpr int kConvVersions = sizeof(kConvVersionNames) / sizeof(kConvVersionNames[0]);
static constexpr int kConvFastest = 2;  // what version -1 picks
static_assert(kConvFastest < kConvVersions, "kConvFastest must name a version");

int conv2d_num_versions() { return kConvVersions; }
int conv2d_fastest_version() { return kConvFastest; }
const char* conv2d_version_name(int version) {
  return (version >= 0 && version < kConvVersions) ? kConvVersionNames[version] : "";
}

// The version to run, and the gemm version to hand it: -1 picks the fastest; anything
// else out of range is refused here too, whoever the caller (the bindings check first).
static int resolve(int version, int gemm_version) {
  if (gemm_version < -1 || gemm_version >= gemm_num_versions())
    throw std::invalid_argument("conv2d: no such gemm version");
  if (version < -1 || version >= kConvVersions)
    throw std::invalid_argument("conv2d: no such version");
  return version < 0 ? kConvFastest : version;
}

template <typename T>
void conv2d_forward(const ConvGeometry& g, const T* x, const T* w, const T* bias, T* y,
                    int version, int gemm_version) {
  switch (resolve(version, gemm_version)) {
    case 0: forward_reference(g, x, w, bias, y); break;
    case 1: conv2d_v1::forward(g, x, w, bias, y, gemm_version); break;
    case 2: conv2d_v2::forward(g, x, w, bias, y, gemm_version); break;
    default: throw std::logic_error("conv2d: a version without its case here");
  }
}

namespace detail {
// y[n, c, :, :] += bias[c]: one streaming pass, split over the threads when it is large.
template <typename T>
void add_channel_bias(int64_t batch, int64_t channels, int64_t plane, const T* bias, T* y) {
  const int64_t planes = batch * channels;
  const int nt = static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>({int64_t(get_num_threads()), planes, planes * plane >> 18})));
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t q = 0; q < planes; ++q) {
    T* p = y + q * plane;
    const T b = bias[q % channels];
#pragma omp simd
    for (int64_t k = 0; k < plane; ++k) p[k] += b;
  }
}
}  // namespace detail

template <typename T>
void conv2d_backward_input(const ConvGeometry& g, const T* dy, const T* w, T* dx, int version,
                           int gemm_version, const T* bias) {
  switch (resolve(version, gemm_version)) {
    case 0: backward_input_reference(g, dy, w, dx); break;
    // the faster versions add the bias themselves
    case 1: return conv2d_v1::backward_input(g, dy, w, dx, gemm_version, bias);
    case 2: return conv2d_v2::backward_input(g, dy, w, dx, gemm_version, bias);
    default: throw std::logic_error("conv2d: a version without its case here");
  }
  if (bias) detail::add_channel_bias(g.batch, g.in_channels, g.in_h * g.in_w, bias, dx);
}

template <typename T>
void conv2d_backward_weight(const ConvGeometry& g, const T* x, const T* dy, T* dw, int version,
                            int gemm_version) {
  switch (resolve(version, gemm_version)) {
    case 0: backward_weight_reference(g, x, dy, dw); break;
    case 1: conv2d_v1::backward_weight(g, x, dy, dw, gemm_version); break;
    case 2: conv2d_v2::backward_weight(g, x, dy, dw, gemm_version); break;
    default: throw std::logic_error("conv2d: a version without its case here");
  }
}

#define GASCA_INSTANTIATE(T)                                                                 \
  template void conv2d_forward<T>(const ConvGeometry&, const T*, const T*, const T*, T*, int, \
                                  int);                                                      \
  template void conv2d_backward_input<T>(const ConvGeometry&, const T*, const T*, T*, int,   \
                                         int, const T*);                                     \
  template void detail::add_channel_bias<T>(int64_t, int64_t, int64_t, const T*, T*);        \
  template void conv2d_backward_weight<T>(const ConvGeometry&, const T*, const T*, T*, int,  \
                                          int);                                              \
  template void conv2d_backward_bias<T>(const ConvGeometry&, const T*, T*);
GASCA_INSTANTIATE(float)
GASCA_INSTANTIATE(double)
#undef GASCA_INSTANTIATE

}  // namespace gasca
