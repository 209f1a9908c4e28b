// conv2d.cpp: 2-D convolution (cross-correlation), NCHW, forward and both gradients.
//
// Versions (pick one with `version`; -1 = the last, fastest):
//   0  reference: the direct 7-deep loop nest, read straight off the definition.
//   1  im2col + gemm: unfold each image into a (C_in*KH*KW) x (OH*OW) column matrix and
//      hand the whole convolution to gemm (its fastest version).  backward-input is gemm into
//      columns then col2im (scatter-add); backward-weight is gemm of dy with the columns
//      transposed, accumulated over the batch.  One image at a time; only gemm is parallel.
//   2  fast: the same three products, rebuilt from the fast gemm's pieces (gemm_internal.h)
//      so that no column matrix is materialised whole and the threads work on separate
//      images with no synchronisation (a thread never writes where another does).
//      Each image is first copied once into a zero-padded, phase-split form (xp, see
//      PhaseImage below): every run of im2col/col2im then becomes a contiguous,
//      bounds-check-free copy or add of one row segment.
//        forward          implicit gemm: when output rows are whole SIMD vectors (gasca
//                         layers 1-2 in float), the micro-kernel reads its B operand straight
//                         out of xp (micro_kernel_indirect): no im2col at all.  Otherwise
//                         im2col writes straight into the packed B panels.  The packed weight
//                         is shared by all threads; the bias is added per block.
//        backward-input   W^T dy in cache-sized column blocks, each added back at once by
//                         col2im into a padded phase image of dx, merged into dx at the end.
//        backward-weight  each thread accumulates dy_n col_n^T over its own images into a
//                         private dW (col_n^T's packed panels gathered straight from xp);
//                         the partial sums are added at the end.  When dW is small
//                         (gasca layer 1: 32 x 25) each entry is instead a dot product of two
//                         contiguous rows, with vector partial sums (no packing at all).
//      Small convolutions (under ~4 MFLOP per thread) run on one thread.  Geometries whose
//      phase image would be mostly padding (strides/paddings far beyond the image) take
//      version 1's path instead.
//
// Every faster version is checked against version 0 by tests/test_kernels_conv.py.
#include "conv2d.h"

#include "simd.h"  // first: it includes <immintrin.h> (see the note there)

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "gemm.h"
#include "gemm_internal.h"
#include "workspace.h"

#ifdef GASCA_OPENMP
#include <omp.h>
#endif

namespace gasca {

ConvGeometry make_conv_geometry(int64_t batch, int64_t in_channels, int64_t in_h, int64_t in_w,
                                int64_t out_channels, int64_t kernel_h, int64_t kernel_w,
                                int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
                                int64_t dilation_h, int64_t dilation_w) {
  ConvGeometry g;
  g.batch = batch;
  g.in_channels = in_channels;
  g.in_h = in_h;
  g.in_w = in_w;
  g.out_channels = out_channels;
  g.kernel_h = kernel_h;
  g.kernel_w = kernel_w;
  g.stride_h = stride_h;
  g.stride_w = stride_w;
  g.pad_h = pad_h;
  g.pad_w = pad_w;
  g.dilation_h = dilation_h;
  g.dilation_w = dilation_w;
  // Floor division that is also right for a negative numerator (impossible geometries
  // must come out <= 0, not round towards zero to 1).
  auto out_size = [](int64_t in, int64_t pad, int64_t dil, int64_t k, int64_t stride) {
    const int64_t span = in + 2 * pad - dil * (k - 1) - 1;
    if (stride <= 0) return int64_t(0);
    if (span < 0) return int64_t(0);
    return span / stride + 1;
  };
  g.out_h = out_size(in_h, pad_h, dilation_h, kernel_h, stride_h);
  g.out_w = out_size(in_w, pad_w, dilation_w, kernel_w, stride_w);
  return g;
}

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

// ============================================================ version 1: im2col + gemm
// col[(ci*KH + i)*KW + j][oh*OW + ow] = x[ci, oh*SH - PH + i*DH, ow*SW - PW + j*DW] (or 0)
template <typename T>
static void im2col(const ConvGeometry& g, const T* x, T* col) {
  const int64_t ohw = g.out_h * g.out_w;
  for (int64_t ci = 0; ci < g.in_channels; ++ci)
    for (int64_t i = 0; i < g.kernel_h; ++i)
      for (int64_t j = 0; j < g.kernel_w; ++j) {
        T* row = col + ((ci * g.kernel_h + i) * g.kernel_w + j) * ohw;
        const T* xc = x + ci * g.in_h * g.in_w;
        for (int64_t oh = 0; oh < g.out_h; ++oh) {
          const int64_t ih = oh * g.stride_h - g.pad_h + i * g.dilation_h;
          T* r = row + oh * g.out_w;
          if (ih < 0 || ih >= g.in_h) {
            std::fill(r, r + g.out_w, T(0));
            continue;
          }
          for (int64_t ow = 0; ow < g.out_w; ++ow) {
            const int64_t iw = ow * g.stride_w - g.pad_w + j * g.dilation_w;
            r[ow] = (iw >= 0 && iw < g.in_w) ? xc[ih * g.in_w + iw] : T(0);
          }
        }
      }
}

// The adjoint of im2col: add every column entry back onto the pixel it was copied from.
// dx must be zeroed (or hold what to add to) first.
template <typename T>
static void col2im(const ConvGeometry& g, const T* col, T* dx) {
  const int64_t ohw = g.out_h * g.out_w;
  for (int64_t ci = 0; ci < g.in_channels; ++ci)
    for (int64_t i = 0; i < g.kernel_h; ++i)
      for (int64_t j = 0; j < g.kernel_w; ++j) {
        const T* row = col + ((ci * g.kernel_h + i) * g.kernel_w + j) * ohw;
        T* xc = dx + ci * g.in_h * g.in_w;
        for (int64_t oh = 0; oh < g.out_h; ++oh) {
          const int64_t ih = oh * g.stride_h - g.pad_h + i * g.dilation_h;
          if (ih < 0 || ih >= g.in_h) continue;
          const T* r = row + oh * g.out_w;
          for (int64_t ow = 0; ow < g.out_w; ++ow) {
            const int64_t iw = ow * g.stride_w - g.pad_w + j * g.dilation_w;
            if (iw >= 0 && iw < g.in_w) xc[ih * g.in_w + iw] += r[ow];
          }
        }
      }
}

template <typename T>
static void forward_im2col(const ConvGeometry& g, const T* x, const T* w, const T* bias, T* y) {
  const int64_t kdim = g.in_channels * g.kernel_h * g.kernel_w;
  const int64_t ohw = g.out_h * g.out_w;
  T* col = detail::scratch<T>(detail::kSlotColumns, kdim * ohw);
  for (int64_t n = 0; n < g.batch; ++n) {
    im2col(g, x + n * g.in_channels * g.in_h * g.in_w, col);
    T* yn = y + n * g.out_channels * ohw;
    gemm<T>(false, false, g.out_channels, ohw, kdim, T(1), w, kdim, col, ohw, T(0), yn, ohw);
    if (bias)
      for (int64_t co = 0; co < g.out_channels; ++co)
        for (int64_t p = 0; p < ohw; ++p) yn[co * ohw + p] += bias[co];
  }
}

template <typename T>
static void backward_input_im2col(const ConvGeometry& g, const T* dy, const T* w, T* dx) {
  const int64_t kdim = g.in_channels * g.kernel_h * g.kernel_w;
  const int64_t ohw = g.out_h * g.out_w;
  const int64_t image = g.in_channels * g.in_h * g.in_w;
  T* col = detail::scratch<T>(detail::kSlotColumns, kdim * ohw);
  for (int64_t n = 0; n < g.batch; ++n) {
    // dcol = W^T dy_n: (kdim x Co) (Co x OHW)
    gemm<T>(true, false, kdim, ohw, g.out_channels, T(1), w, kdim, dy + n * g.out_channels * ohw,
            ohw, T(0), col, ohw);
    std::fill(dx + n * image, dx + (n + 1) * image, T(0));
    col2im(g, col, dx + n * image);
  }
}

template <typename T>
static void backward_weight_im2col(const ConvGeometry& g, const T* x, const T* dy, T* dw) {
  const int64_t kdim = g.in_channels * g.kernel_h * g.kernel_w;
  const int64_t ohw = g.out_h * g.out_w;
  T* col = detail::scratch<T>(detail::kSlotColumns, kdim * ohw);
  for (int64_t n = 0; n < g.batch; ++n) {
    im2col(g, x + n * g.in_channels * g.in_h * g.in_w, col);
    // dW += dy_n col^T: (Co x OHW) (OHW x kdim)
    gemm<T>(false, true, g.out_channels, kdim, ohw, T(1), dy + n * g.out_channels * ohw, ohw, col,
            ohw, n == 0 ? T(0) : T(1), dw, kdim);
  }
  if (g.batch == 0) std::fill(dw, dw + g.out_channels * kdim, T(0));
}


// ============================================================ version 2: fast
namespace {

using detail::ceil_div;
using detail::round_up;

// Row copies.  copy_run / add_run: dst[k] = src[k] / dst[k] += src[k] for short runs (a
// run is one output row segment: 8 to 32 elements in gasca), a vector at a time with a
// masked tail under AVX-512.  copy_stride2 / store_stride2 split / merge the even columns of
// a row (stride 2: every gasca layer): a two-register permute (gather) and an expand
// (scatter), masked so that nothing outside [src, src + 2n - 1) is touched.
template <typename T>
inline void copy_stride2(T* out, const T* src, int64_t n) {
  for (int64_t k = 0; k < n; ++k) out[k] = src[2 * k];
}
template <typename T>
inline void store_stride2(T* d, const T* in, int64_t n) {
  for (int64_t k = 0; k < n; ++k) d[2 * k] = in[k];
}
#if defined(__AVX512F__)
inline __mmask16 low_mask16(int64_t count) {  // the lowest min(count, 16) lanes
  return count >= 16 ? __mmask16(0xFFFF) : count <= 0 ? __mmask16(0) : __mmask16((1u << count) - 1);
}
inline __mmask8 low_mask8(int64_t count) {
  return count >= 8 ? __mmask8(0xFF) : count <= 0 ? __mmask8(0) : __mmask8((1u << count) - 1);
}
template <>
inline void copy_stride2<float>(float* out, const float* src, int64_t n) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  for (; n > 0; n -= 16, out += 16, src += 32) {
    const int64_t span = 2 * std::min<int64_t>(n, 16) - 1;  // elements of src read
    const __m512 a = _mm512_maskz_loadu_ps(low_mask16(span), src);
    const __m512 b = _mm512_maskz_loadu_ps(low_mask16(span - 16), src + 16);
    _mm512_mask_storeu_ps(out, low_mask16(n), _mm512_permutex2var_ps(a, even, b));
  }
}
template <>
inline void copy_stride2<double>(double* out, const double* src, int64_t n) {
  const __m512i even = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
  for (; n > 0; n -= 8, out += 8, src += 16) {
    const int64_t span = 2 * std::min<int64_t>(n, 8) - 1;
    const __m512d a = _mm512_maskz_loadu_pd(low_mask8(span), src);
    const __m512d b = _mm512_maskz_loadu_pd(low_mask8(span - 8), src + 8);
    _mm512_mask_storeu_pd(out, low_mask8(n), _mm512_permutex2var_pd(a, even, b));
  }
}
template <>
inline void store_stride2<float>(float* d, const float* in, int64_t n) {
  const __m512i upper = _mm512_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15);
  for (; n > 0; n -= 16, in += 16, d += 32) {
    const int64_t span = 2 * std::min<int64_t>(n, 16) - 1;  // elements of d touched
    const __m512 v = _mm512_maskz_loadu_ps(low_mask16(n), in);
    const __m512 lo = _mm512_maskz_expand_ps(0x5555, v);  // in[0..7] -> even lanes
    const __m512 hi = _mm512_maskz_expand_ps(0x5555, _mm512_permutex2var_ps(v, upper, v));
    _mm512_mask_storeu_ps(d, low_mask16(span) & 0x5555, lo);  // odd lanes untouched
    _mm512_mask_storeu_ps(d + 16, low_mask16(span - 16) & 0x5555, hi);
  }
}
template <>
inline void store_stride2<double>(double* d, const double* in, int64_t n) {
  const __m512i upper = _mm512_setr_epi64(4, 5, 6, 7, 4, 5, 6, 7);
  for (; n > 0; n -= 8, in += 8, d += 16) {
    const int64_t span = 2 * std::min<int64_t>(n, 8) - 1;
    const __m512d v = _mm512_maskz_loadu_pd(low_mask8(n), in);
    const __m512d lo = _mm512_maskz_expand_pd(0x55, v);
    const __m512d hi = _mm512_maskz_expand_pd(0x55, _mm512_permutex2var_pd(v, upper, v));
    _mm512_mask_storeu_pd(d, low_mask8(span) & 0x55, lo);
    _mm512_mask_storeu_pd(d + 8, low_mask8(span - 8) & 0x55, hi);
  }
}
#endif


template <typename T>
inline void copy_run(T* dst, const T* src, int64_t n) {
  for (int64_t k = 0; k < n; ++k) dst[k] = src[k];
}
template <typename T>
inline void add_run(T* dst, const T* src, int64_t n) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) dst[k] += src[k];
}
#if defined(__AVX512F__)
template <>
inline void copy_run<float>(float* dst, const float* src, int64_t n) {
  for (; n >= 16; n -= 16, dst += 16, src += 16) _mm512_storeu_ps(dst, _mm512_loadu_ps(src));
  if (n > 0) _mm512_mask_storeu_ps(dst, low_mask16(n), _mm512_maskz_loadu_ps(low_mask16(n), src));
}
template <>
inline void copy_run<double>(double* dst, const double* src, int64_t n) {
  for (; n >= 8; n -= 8, dst += 8, src += 8) _mm512_storeu_pd(dst, _mm512_loadu_pd(src));
  if (n > 0) _mm512_mask_storeu_pd(dst, low_mask8(n), _mm512_maskz_loadu_pd(low_mask8(n), src));
}
template <>
inline void add_run<float>(float* dst, const float* src, int64_t n) {
  for (; n >= 16; n -= 16, dst += 16, src += 16)
    _mm512_storeu_ps(dst, _mm512_add_ps(_mm512_loadu_ps(dst), _mm512_loadu_ps(src)));
  if (n > 0) {
    const __mmask16 m = low_mask16(n);
    _mm512_mask_storeu_ps(dst, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, dst), _mm512_maskz_loadu_ps(m, src)));
  }
}
template <>
inline void add_run<double>(double* dst, const double* src, int64_t n) {
  for (; n >= 8; n -= 8, dst += 8, src += 8)
    _mm512_storeu_pd(dst, _mm512_add_pd(_mm512_loadu_pd(dst), _mm512_loadu_pd(src)));
  if (n > 0) {
    const __mmask8 m = low_mask8(n);
    _mm512_mask_storeu_pd(dst, m, _mm512_add_pd(_mm512_maskz_loadu_pd(m, dst), _mm512_maskz_loadu_pd(m, src)));
  }
}
#endif

// ------------------------------------------------------------ the phase-split image
// im2col reads x[ci, oh*sh - ph + i*dh, ow*sw - pw + j*dw] for a run of consecutive ow: a
// strided read that may fall into the padding at either end.  Both problems go away if the
// image is first copied once, zero-padded, with its columns split by phase (column mod sw):
//
//   xp[ci][phase][r][k] = x[ci, r - ph, k*sw + phase - pw]        (0 outside the image)
//
// Tap (ci, i, j) of pixel (oh, ow) is then xp[ci][(j*dw) % sw][oh*sh + i*dh][ow + (j*dw)/sw]:
// a run of output pixels is a contiguous, bounds-check-free copy.  The copy costs one pass
// over the image, against C_in*KH*KW/(sh*sw) passes' worth of im2col reads.  col2im works
// the same way in reverse: contiguous adds into a zeroed phase image, merged back at the end.
struct PhaseImage {
  int64_t rows = 0, cols = 0;  // of one phase plane
  int64_t plane = 0;           // rows * cols
  int64_t channel = 0;         // stride_w * plane
  int64_t size = 0;            // in_channels * channel
};

inline PhaseImage make_phase_image(const ConvGeometry& g) {
  PhaseImage p;
  const int64_t sw = g.stride_w;
  p.rows = std::max((g.out_h - 1) * g.stride_h + (g.kernel_h - 1) * g.dilation_h + 1, g.in_h + g.pad_h);
  p.cols = std::max(g.out_w + ((g.kernel_w - 1) * g.dilation_w) / sw, ceil_div(g.in_w + g.pad_w, sw));
  p.plane = p.rows * p.cols;
  p.channel = sw * p.plane;
  p.size = g.in_channels * p.channel;
  return p;
}

// The phase image pays off for ordinary geometries, where it is about the size of the padded
// input.  With strides, paddings or dilations far larger than the image (legal: the bindings
// accept up to 2**30) it would be mostly padding, gigabytes of it, or its size would not
// even fit in int64.  Version 2 then falls back to version 1, whose scratch is the column
// matrix (C_in*KH*KW x OH*OW: bounded by the arrays the caller passed).  Estimated in
// double first, so that nothing can overflow.
inline bool phase_image_is_reasonable(const ConvGeometry& g) {
  const double sw = double(g.stride_w);
  const double rows = std::max(double(g.out_h - 1) * double(g.stride_h) +
                                   double(g.kernel_h - 1) * double(g.dilation_h) + 1.0,
                               double(g.in_h) + double(g.pad_h));
  const double cols = std::max(double(g.out_w) + double(g.kernel_w - 1) * double(g.dilation_w) / sw,
                               (double(g.in_w) + double(g.pad_w)) / sw + 1.0);
  const double size = double(g.in_channels) * sw * rows * cols;
  const double kdim = double(g.in_channels) * double(g.kernel_h) * double(g.kernel_w);
  const double budget = 4.0 * (double(g.in_channels) * double(g.in_h) * double(g.in_w) +
                               kdim * double(g.out_h) * double(g.out_w)) + 65536.0;
  return size <= budget && size < 9.0e15;
}

template <typename T>
void phase_split(const ConvGeometry& g, const PhaseImage& pi, const T* x, T* xp) {
  const int64_t sw = g.stride_w;
  for (int64_t ci = 0; ci < g.in_channels; ++ci)
    for (int64_t ph = 0; ph < sw; ++ph) {
      T* plane = xp + ci * pi.channel + ph * pi.plane;
      // column k holds x column k*sw + ph - pw: inside the image for k in [k0, k1)
      const int64_t shift = ph - g.pad_w;
      const int64_t k0 = std::min(pi.cols, shift >= 0 ? int64_t(0) : (-shift + sw - 1) / sw);
      const int64_t k1 = std::max(k0, std::min(pi.cols, (g.in_w - 1 - shift) < 0 ? int64_t(0) : (g.in_w - 1 - shift) / sw + 1));
      for (int64_t r = 0; r < pi.rows; ++r) {
        T* row = plane + r * pi.cols;
        const int64_t h = r - g.pad_h;
        if (h < 0 || h >= g.in_h) {
          std::fill(row, row + pi.cols, T(0));
          continue;
        }
        const T* src = x + (ci * g.in_h + h) * g.in_w + shift;
        std::fill(row, row + k0, T(0));
        if (sw == 1)
          copy_run(row + k0, src + k0, k1 - k0);
        else if (sw == 2)
          copy_stride2(row + k0, src + 2 * k0, k1 - k0);
        else
          for (int64_t k = k0; k < k1; ++k) row[k] = src[k * sw];
        std::fill(row + k1, row + pi.cols, T(0));
      }
    }
}

// dx = the image part of a phase image of gradients (overwrites dx).
template <typename T>
void phase_merge(const ConvGeometry& g, const PhaseImage& pi, const T* xp, T* dx) {
  const int64_t sw = g.stride_w;
  for (int64_t ci = 0; ci < g.in_channels; ++ci)
    for (int64_t h = 0; h < g.in_h; ++h) {
      T* out = dx + (ci * g.in_h + h) * g.in_w;
      const T* rows = xp + ci * pi.channel + (h + g.pad_h) * pi.cols;
      // Column w of dx is column (w + pw) / sw of phase (w + pw) % sw: walk each phase.
      for (int64_t ph = 0; ph < sw; ++ph) {
        const int64_t w0 = ((ph - g.pad_w) % sw + sw) % sw;  // first w of this phase
        const T* src = rows + ph * pi.plane + (w0 + g.pad_w) / sw;
        if (w0 >= g.in_w) continue;
        if (sw == 1)
          copy_run(out, src, g.in_w);
        else if (sw == 2)
          store_stride2(out + w0, src, (g.in_w - w0 + 1) / 2);
        else
          for (int64_t w = w0, k = 0; w < g.in_w; w += sw, ++k) out[w] = src[k];
      }
    }
}

// Output pixels [q0, q1) come in runs along output rows: run (oh, ow0, ow1) covers pixels
// (oh, ow) for ow in [ow0, ow1), at column pos = q - q0 of the block.  Computing the runs
// once per block keeps integer division out of the per-tap loops.
struct Run {
  int64_t oh, ow0, len, pos;
};
constexpr int kMaxRuns = 64;

inline int make_runs(const ConvGeometry& g, int64_t q0, int64_t q1, Run* runs) {
  int count = 0;
  for (int64_t q = q0; q < q1;) {
    const int64_t oh = q / g.out_w, ow0 = q % g.out_w;
    const int64_t len = std::min(g.out_w - ow0, q1 - q);
    runs[count++] = Run{oh, ow0, len, q - q0};
    q += len;
  }
  return count;
}

// Rows [r0, r1) (taps (ci, i, j)) and columns [q0, q1) (output pixels) of the column
// matrix of the phase-split image xp, written to dst with row stride ld.
template <typename T>
void im2col_block(const ConvGeometry& g, const PhaseImage& pi, const T* xp, int64_t r0,
                  int64_t r1, int64_t q0, int64_t q1, T* dst, int64_t ld) {
  Run runs[kMaxRuns];
  const int64_t chunk = (kMaxRuns - 2) * g.out_w;
  const int64_t kk = g.kernel_h * g.kernel_w;
  for (int64_t c0 = q0; c0 < q1; c0 += chunk) {
    const int64_t c1 = std::min(q1, c0 + chunk);
    const int nruns = make_runs(g, c0, c1, runs);
    int64_t ci = r0 / kk, i = (r0 % kk) / g.kernel_w, j = r0 % g.kernel_w;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t jj = j * g.dilation_w;
      const T* plane = xp + ci * pi.channel + (jj % g.stride_w) * pi.plane + jj / g.stride_w +
                       i * g.dilation_h * pi.cols;
      T* row = dst + (r - r0) * ld + (c0 - q0);
      for (int k = 0; k < nruns; ++k) {
        const Run& u = runs[k];
        copy_run(row + u.pos, plane + u.oh * g.stride_h * pi.cols + u.ow0, u.len);
      }
      if (++j == g.kernel_w) {
        j = 0;
        if (++i == g.kernel_h) i = 0, ++ci;
      }
    }
  }
}

// The adjoint of im2col_block: add rows [r0, r1), columns [q0, q1) of a column matrix (row
// stride ld) onto the phase image dxp of the pixels they were read from.
template <typename T>
void col2im_block(const ConvGeometry& g, const PhaseImage& pi, const T* col, int64_t r0,
                  int64_t r1, int64_t q0, int64_t q1, int64_t ld, T* dxp) {
  Run runs[kMaxRuns];
  const int64_t chunk = (kMaxRuns - 2) * g.out_w;
  const int64_t kk = g.kernel_h * g.kernel_w;
  for (int64_t c0 = q0; c0 < q1; c0 += chunk) {
    const int64_t c1 = std::min(q1, c0 + chunk);
    const int nruns = make_runs(g, c0, c1, runs);
    int64_t ci = r0 / kk, i = (r0 % kk) / g.kernel_w, j = r0 % g.kernel_w;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t jj = j * g.dilation_w;
      T* plane = dxp + ci * pi.channel + (jj % g.stride_w) * pi.plane + jj / g.stride_w +
                 i * g.dilation_h * pi.cols;
      const T* row = col + (r - r0) * ld + (c0 - q0);
      for (int k = 0; k < nruns; ++k) {
        const Run& u = runs[k];
        add_run(plane + u.oh * g.stride_h * pi.cols + u.ow0, row + u.pos, u.len);
      }
      if (++j == g.kernel_w) {
        j = 0;
        if (++i == g.kernel_h) i = 0, ++ci;
      }
    }
  }
}

// Pack rows [k0, k0+kc) x columns [q0, q0+nc) of image x's column matrix straight into the
// fast gemm's B panels ([kc][NR] each), zero columns past the last pixel.
template <typename T>
void pack_b_im2col(const ConvGeometry& g, const PhaseImage& pi, const T* xp, int64_t k0,
                   int64_t kc, int64_t q0, int64_t nc, T* dst) {
  constexpr int NR = detail::GemmBlocking<T>::NR;
  for (int64_t jp = 0; jp * NR < nc; ++jp) {
    const int64_t a = q0 + jp * NR, cols = std::min<int64_t>(NR, nc - jp * NR);
    T* panel = dst + jp * NR * kc;
    im2col_block(g, pi, xp, k0, k0 + kc, a, a + cols, panel, NR);
    if (cols < NR)
      for (int64_t p = 0; p < kc; ++p)
        for (int64_t c = cols; c < NR; ++c) panel[p * NR + c] = T(0);
  }
}

// Pack the transposed column matrix for backward-weight: B = col^T, rows = pixels
// [k0, k0+kc), columns = taps [j0, j0+nc), in NR-wide panels [kc][NR].  Row p of a panel
// holds NR taps of one pixel: NR elements of xp at the offsets off32[tap] from that pixel's
// base, i.e. a gather (AVX-512: 16 floats / 8 doubles per instruction).  This replaces
// building the column block and transposing it, one full pass over the data instead of two.
template <typename T>
void pack_b_taps(const ConvGeometry& g, const PhaseImage& pi, const T* xp, const int32_t* off32,
                 int64_t k0, int64_t kc, int64_t j0, int64_t nc, T* dst) {
  constexpr int NR = detail::GemmBlocking<T>::NR;
  int64_t base[256];
  for (int64_t c0 = 0; c0 < kc; c0 += 256) {
    const int64_t cn = std::min<int64_t>(256, kc - c0);
    int64_t oh = (k0 + c0) / g.out_w, ow = (k0 + c0) % g.out_w;
    for (int64_t p = 0; p < cn; ++p) {
      base[p] = oh * g.stride_h * pi.cols + ow;
      if (++ow == g.out_w) ow = 0, ++oh;
    }
    for (int64_t jp = 0; jp * NR < nc; ++jp) {
      const int64_t cols = std::min<int64_t>(NR, nc - jp * NR);
      const int32_t* idx = off32 + j0 + jp * NR;
      T* d = dst + jp * NR * kc + c0 * NR;
#if defined(__AVX512F__)
      if constexpr (sizeof(T) == 4) {
        constexpr int NV = NR / 16;
        __m512i iv[NV];
        __mmask16 mk[NV];
        for (int v = 0; v < NV; ++v) {
          mk[v] = low_mask16(cols - v * 16);
          iv[v] = _mm512_maskz_loadu_epi32(mk[v], idx + v * 16);
        }
        for (int64_t p = 0; p < cn; ++p)
          for (int v = 0; v < NV; ++v)
            _mm512_storeu_ps(reinterpret_cast<float*>(d + p * NR + v * 16),
                             _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mk[v], iv[v],
                                                      reinterpret_cast<const float*>(xp + base[p]), 4));
        continue;
      } else {
        constexpr int NV = NR / 8;
        __m256i iv[NV];
        __mmask8 mk[NV];
        for (int v = 0; v < NV; ++v) {
          mk[v] = low_mask8(cols - v * 8);
          iv[v] = _mm256_maskz_loadu_epi32(mk[v], idx + v * 8);
        }
        for (int64_t p = 0; p < cn; ++p)
          for (int v = 0; v < NV; ++v)
            _mm512_storeu_pd(reinterpret_cast<double*>(d + p * NR + v * 8),
                             _mm512_mask_i32gather_pd(_mm512_setzero_pd(), mk[v], iv[v],
                                                      reinterpret_cast<const double*>(xp + base[p]), 8));
        continue;
      }
#endif
      for (int64_t p = 0; p < cn; ++p) {
        const T* src = xp + base[p];
        for (int64_t c = 0; c < cols; ++c) d[p * NR + c] = src[idx[c]];
        for (int64_t c = cols; c < NR; ++c) d[p * NR + c] = T(0);
      }
    }
  }
}

// Offset of tap (ci, i, j) in the phase image, relative to the base oh*sh*cols + ow of its
// pixel (oh, ow): the same for every pixel and every image.
template <typename I>
void tap_offsets(const ConvGeometry& g, const PhaseImage& pi, I* off) {
  const int64_t kdim = g.in_channels * g.kernel_h * g.kernel_w;
  for (int64_t r = 0; r < kdim; ++r) {
    const int64_t ci = r / (g.kernel_h * g.kernel_w), i = (r / g.kernel_w) % g.kernel_h,
                  jj = (r % g.kernel_w) * g.dilation_w;
    off[r] = static_cast<I>(ci * pi.channel + (jj % g.stride_w) * pi.plane + jj / g.stride_w +
                            i * g.dilation_h * pi.cols);
  }
}

inline int thread_id() {
#ifdef GASCA_OPENMP
  return omp_get_thread_num();
#else
  return 0;
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


// forward as an implicit gemm: when every output row is a whole number of SIMD vectors
// (OW % W == 0: gasca layers 1 and 2 in float), a tile of NR output pixels is NR / W
// vectors, each a contiguous run of one row of the phase-split image for every tap (or
// half-vectors, two per vector, when OW % (W / 2) == 0).  The
// micro-kernel then reads B in place (micro_kernel_indirect) and nothing is packed but the
// weight: the column matrix exists nowhere, not even one panel at a time.
// With output rows of W / 2 pixels (gasca layer 3 in float: 8), each vector is assembled
// from two half-vectors on consecutive output rows.
template <typename T>
static bool forward_implicit_applies(const ConvGeometry& g) {
  constexpr int W = Simd<T>::W;
  return g.out_w % W == 0 || (W >= 2 && g.out_w % (W / 2) == 0);
}

template <typename T>
static void forward_implicit(const ConvGeometry& g, const T* x, const T* w, const T* bias, T* y) {
  using B = detail::GemmBlocking<T>;
  constexpr int MR = B::MR, NR = B::NR, KC = B::KC, W = Simd<T>::W, NV = NR / W;
  const int64_t kdim = g.in_channels * g.kernel_h * g.kernel_w;
  const int64_t P = g.out_h * g.out_w, Co = g.out_channels;
  const int64_t image = g.in_channels * g.in_h * g.in_w;
  const PhaseImage pi = make_phase_image(g);
  const int64_t tiles = ceil_div(P, NR);
  const bool halves = g.out_w % W != 0;  // rows of W / 2 pixels: two pieces per vector
  const int piece = halves ? W / 2 : W, pieces = halves ? 2 * NV : NV;
  // Split an image between threads only when there are fewer images than threads.
  const int nt_all = conv_threads(g, g.batch * tiles);
  const int64_t chunks = g.batch >= nt_all ? 1 : std::min<int64_t>(tiles, ceil_div(nt_all, g.batch));
  const int64_t tiles_per_chunk = ceil_div(tiles, chunks);
  const int64_t items = g.batch * chunks;
  const int nt = conv_threads(g, items);

  const int64_t a_size = round_up(detail::packed_a_size<T>(Co, kdim), 64);
  const int64_t per_thread = round_up(pi.size, 64);
  T* ws = detail::scratch<T>(detail::kSlotColumns, a_size + nt * per_thread);
  int64_t* row_off = detail::scratch<int64_t>(detail::kSlotSpare, kdim);
  detail::pack_a<T>(false, Co, kdim, w, kdim, ws);
  tap_offsets(g, pi, row_off);
  const int64_t m_panels = ceil_div(Co, MR);

#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    T* xp = ws + a_size + thread_id() * per_thread;
    int64_t split = -1;
#pragma omp for schedule(static)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t n = item / chunks;
      const int64_t t0 = (item % chunks) * tiles_per_chunk, t1 = std::min(tiles, t0 + tiles_per_chunk);
      if (t0 >= t1) continue;
      if (split != n) {
        phase_split(g, pi, x + n * image, xp);
        split = n;
      }
      T* yn = y + n * Co * P;
      for (int64_t kb = 0; kb * KC < kdim; ++kb) {
        const int64_t k0 = kb * KC, kc = std::min<int64_t>(KC, kdim - k0);
        for (int64_t ip = 0; ip < m_panels; ++ip) {
          const T* a_panel = detail::packed_a_panel<T>(ws, Co, kb, ip, kdim);
          const int mr = static_cast<int>(std::min<int64_t>(MR, Co - ip * MR));
          for (int64_t t = t0; t < t1; ++t) {
            const int64_t q0 = t * NR;
            int64_t vec_off[2 * NV];
            for (int v = 0; v < pieces; ++v) {
              // piece v covers pixels [q, q + piece) of one output row; past the last
              // pixel, repeat the first piece (loaded, never stored).
              const int64_t q = q0 + v * piece < P ? q0 + v * piece : q0;
              vec_off[v] = (q / g.out_w) * g.stride_h * pi.cols + q % g.out_w;
            }
            detail::micro_kernel_indirect<T>(kc, a_panel, xp, row_off + k0, vec_off, halves,
                                             yn + ip * MR * P + q0, P, T(1), kb == 0 ? T(0) : T(1),
                                             mr, static_cast<int>(std::min<int64_t>(NR, P - q0)));
          }
        }
      }
      if (bias) {
        const int64_t p0 = t0 * NR, p1 = std::min(P, t1 * NR);
        for (int64_t co = 0; co < Co; ++co) {
          T* row = yn + co * P;
          const T b = bias[co];
#pragma omp simd
          for (int64_t q = p0; q < p1; ++q) row[q] += b;
        }
      }
    }
  }
}

template <typename T>
static void forward_fast(const ConvGeometry& g, const T* x, const T* w, const T* bias, T* y) {
  if (!phase_image_is_reasonable(g)) return forward_im2col(g, x, w, bias, y);
  if (forward_implicit_applies<T>(g)) return forward_implicit(g, x, w, bias, y);
  using B = detail::GemmBlocking<T>;
  constexpr int MR = B::MR, NR = B::NR, KC = B::KC, NC = B::NC;
  const int64_t kdim = g.in_channels * g.kernel_h * g.kernel_w;
  const int64_t P = g.out_h * g.out_w, Co = g.out_channels;
  const int64_t image = g.in_channels * g.in_h * g.in_w;
  // Column blocks: at most NC pixels, balanced within an image.
  const int64_t blocks_per_image = ceil_div(P, NC);
  const int64_t nc_max = round_up(ceil_div(P, blocks_per_image), NR);
  const int64_t items = g.batch * blocks_per_image;
  const int nt = conv_threads(g, items);

  const PhaseImage pi = make_phase_image(g);
  const int64_t a_size = round_up(detail::packed_a_size<T>(Co, kdim), 64);
  const int64_t b_size = round_up(std::min<int64_t>(KC, kdim) * nc_max, 64);
  const int64_t per_thread = b_size + round_up(pi.size, 64);
  T* ws = detail::scratch<T>(detail::kSlotColumns, a_size + nt * per_thread);
  detail::pack_a<T>(false, Co, kdim, w, kdim, ws);  // the weight, packed once for all images
  const int64_t m_panels = ceil_div(Co, MR);

#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    T* bp = ws + a_size + thread_id() * per_thread;
    T* xp = bp + b_size;
    int64_t split = -1;  // the image now in xp (a thread's items are consecutive)
#pragma omp for schedule(static)
  for (int64_t item = 0; item < items; ++item) {
    const int64_t n = item / blocks_per_image, blk = item % blocks_per_image;
    const int64_t q0 = blk * nc_max, nc = std::min(nc_max, P - q0);
    if (nc <= 0) continue;
    if (split != n) {
      phase_split(g, pi, x + n * image, xp);
      split = n;
    }
    T* yn = y + n * Co * P;
    for (int64_t kb = 0; kb * KC < kdim; ++kb) {
      const int64_t k0 = kb * KC, kc = std::min<int64_t>(KC, kdim - k0);
      pack_b_im2col(g, pi, xp, k0, kc, q0, nc, bp);
      detail::macro_kernel<T>(Co, kdim, kb, ws, 0, m_panels, bp, kc, nc, yn + q0, P, T(1),
                              kb == 0 ? T(0) : T(1));
    }
    if (bias)
      for (int64_t co = 0; co < Co; ++co) {
        T* row = yn + co * P + q0;
        const T b = bias[co];
#pragma omp simd
        for (int64_t q = 0; q < nc; ++q) row[q] += b;
      }
  }
  }
}

template <typename T>
static void backward_input_fast(const ConvGeometry& g, const T* dy, const T* w, T* dx) {
  if (!phase_image_is_reasonable(g)) return backward_input_im2col(g, dy, w, dx);
  using B = detail::GemmBlocking<T>;
  constexpr int MR = B::MR, NR = B::NR, KC = B::KC;
  const int64_t kdim = g.in_channels * g.kernel_h * g.kernel_w;
  const int64_t P = g.out_h * g.out_w, Co = g.out_channels;
  const int64_t image = g.in_channels * g.in_h * g.in_w;
  // Column blocks sized so that the block of W^T dy (kdim x nc) stays within ~256 KB (L2).
  const int64_t want = std::max<int64_t>(NR, round_up((int64_t(256) << 10) / int64_t(sizeof(T)) / std::max<int64_t>(kdim, 1), NR));
  const int64_t blocks_per_image = ceil_div(P, std::min(want, round_up(P, NR)));
  const int64_t nc_max = round_up(ceil_div(P, blocks_per_image), NR);
  const int nt = conv_threads(g, g.batch);

  const int64_t a_size = round_up(detail::packed_a_size<T>(kdim, Co), 64);
  const int64_t b_size = round_up(std::min<int64_t>(KC, Co) * nc_max, 64);
  const int64_t c_size = round_up(kdim * nc_max, 64);
  const PhaseImage pi = make_phase_image(g);
  const int64_t per_thread = b_size + c_size + round_up(pi.size, 64);
  T* ws = detail::scratch<T>(detail::kSlotColumns, a_size + nt * per_thread);
  detail::pack_a<T>(true, kdim, Co, w, kdim, ws);  // W^T: (kdim x Co), packed once
  const int64_t m_panels = ceil_div(kdim, MR);

  // Threads own whole images: no two threads ever add into the same gradient.
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t n = 0; n < g.batch; ++n) {
    T* bp = ws + a_size + thread_id() * per_thread;
    T* col = bp + b_size;
    T* dxp = col + c_size;  // the gradient, accumulated as a padded phase image
    const T* dyn = dy + n * Co * P;
    std::fill(dxp, dxp + pi.size, T(0));
    for (int64_t q0 = 0; q0 < P; q0 += nc_max) {
      const int64_t nc = std::min(nc_max, P - q0);
      for (int64_t kb = 0; kb * KC < Co; ++kb) {
        const int64_t k0 = kb * KC, kc = std::min<int64_t>(KC, Co - k0);
        detail::pack_b<T>(false, k0, kc, q0, nc, dyn, P, bp);
        detail::macro_kernel<T>(kdim, Co, kb, ws, 0, m_panels, bp, kc, nc, col, nc, T(1),
                                kb == 0 ? T(0) : T(1));
      }
      col2im_block(g, pi, col, 0, kdim, q0, q0 + nc, nc, dxp);
    }
    phase_merge(g, pi, dxp, dx + n * image);
  }
}


// backward-weight when dW is small (gasca layer 1: 32 x 25): a gemm over the pixels would
// spend more time packing than multiplying (each packed element feeds only 2 * C_out
// FLOPs), so instead each dW[co, tap] is a dot product of two contiguous rows, dy[co, :]
// and col[tap, :], kept as a vector of partial sums that runs along the pixels.  A 4 x 5
// tile of (co, tap) pairs shares its loads: 9 vector loads feed 20 FMAs.  The vector sums
// live in a per-thread buffer across the whole batch and are reduced once at the end.
template <typename T, int MT, int NT>
static inline void dot_tile(const T* dy, const T* col, int64_t pv, int64_t ld, T* acc,
                            int64_t acc_ld, int64_t co, int64_t tap) {
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int W = S::W;
  V a[MT][NT];
  for (int u = 0; u < MT; ++u)
    for (int v = 0; v < NT; ++v) a[u][v] = S::load(acc + ((co + u) * acc_ld + tap + v) * W);
  for (int64_t q = 0; q < pv; q += W) {
    V d[MT], c[NT];
    for (int u = 0; u < MT; ++u) d[u] = S::load(dy + (co + u) * ld + q);
    for (int v = 0; v < NT; ++v) c[v] = S::load(col + (tap + v) * ld + q);
    for (int u = 0; u < MT; ++u)
      for (int v = 0; v < NT; ++v) a[u][v] = S::fma(d[u], c[v], a[u][v]);
  }
  for (int u = 0; u < MT; ++u)
    for (int v = 0; v < NT; ++v) S::store(acc + ((co + u) * acc_ld + tap + v) * W, a[u][v]);
}

template <typename T, int MT>
static inline void dot_row(const T* dy, const T* col, int64_t pv, int64_t ld, T* acc,
                           int64_t kdim, int64_t co) {
  constexpr int NT = 5;
  int64_t tap = 0;
  for (; tap + NT <= kdim; tap += NT) dot_tile<T, MT, NT>(dy, col, pv, ld, acc, kdim, co, tap);
  for (; tap < kdim; ++tap) dot_tile<T, MT, 1>(dy, col, pv, ld, acc, kdim, co, tap);
}

template <typename T>
static bool backward_weight_small_applies(const ConvGeometry& g) {
  const int64_t kdim = g.in_channels * g.kernel_h * g.kernel_w;
  return g.out_channels * kdim * Simd<T>::W * int64_t(sizeof(T)) <= (int64_t(256) << 10);
}

template <typename T>
static void backward_weight_small(const ConvGeometry& g, const T* x, const T* dy, T* dw) {
  using S = Simd<T>;
  constexpr int W = S::W;
  const int64_t kdim = g.in_channels * g.kernel_h * g.kernel_w;
  const int64_t P = g.out_h * g.out_w, Co = g.out_channels;
  const int64_t PV = round_up(P, W);  // rows padded with zeros to whole vectors
  const int64_t image = g.in_channels * g.in_h * g.in_w;
  const int nt = conv_threads(g, g.batch);
  const int64_t acc_size = round_up(Co * kdim * W, 64);
  const int64_t col_size = round_up(kdim * PV, 64);
  const int64_t dy_size = P == PV ? 0 : round_up(Co * PV, 64);
  const PhaseImage pi = make_phase_image(g);
  const int64_t per_thread = acc_size + col_size + dy_size + round_up(pi.size, 64);
  T* ws = detail::scratch<T>(detail::kSlotColumns, nt * per_thread);

#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const int tid = thread_id();
#ifdef GASCA_OPENMP
    const int nth = omp_get_num_threads();
#else
    const int nth = 1;
#endif
    T* acc = ws + tid * per_thread;
    T* col = acc + acc_size;
    T* dyp = col + col_size;
    T* xp = dyp + dy_size;
    std::fill(acc, acc + Co * kdim * W, T(0));
    if (PV != P) {  // the padding columns stay zero for the whole batch
      for (int64_t r = 0; r < kdim; ++r) std::fill(col + r * PV + P, col + (r + 1) * PV, T(0));
      for (int64_t co = 0; co < Co; ++co) std::fill(dyp + co * PV + P, dyp + (co + 1) * PV, T(0));
    }
    const int64_t n0 = g.batch * tid / nth, n1 = g.batch * (tid + 1) / nth;
    for (int64_t n = n0; n < n1; ++n) {
      phase_split(g, pi, x + n * image, xp);
      im2col_block(g, pi, xp, 0, kdim, 0, P, col, PV);
      const T* d = dy + n * Co * P;
      if (PV != P) {
        for (int64_t co = 0; co < Co; ++co) std::memcpy(dyp + co * PV, d + co * P, sizeof(T) * P);
        d = dyp;
      }
      int64_t co = 0;
      for (; co + 4 <= Co; co += 4) dot_row<T, 4>(d, col, PV, PV, acc, kdim, co);
      for (; co < Co; ++co) dot_row<T, 1>(d, col, PV, PV, acc, kdim, co);
    }
#pragma omp barrier
    // dw[e] = sum over threads and lanes of the partial sums; elements split between threads.
    const int64_t e0 = Co * kdim * tid / nth, e1 = Co * kdim * (tid + 1) / nth;
    for (int64_t e = e0; e < e1; ++e) {
      typename S::V v = S::load(ws + e * W);
      for (int t = 1; t < nth; ++t) v = S::add(v, S::load(ws + t * per_thread + e * W));
      dw[e] = S::sum(v);
    }
  }
}

template <typename T>
static void backward_weight_fast(const ConvGeometry& g, const T* x, const T* dy, T* dw) {
  if (!phase_image_is_reasonable(g)) return backward_weight_im2col(g, x, dy, dw);
  if (backward_weight_small_applies<T>(g)) return backward_weight_small(g, x, dy, dw);
  using B = detail::GemmBlocking<T>;
  constexpr int MR = B::MR, NR = B::NR, KC = B::KC, NC = B::NC;
  const int64_t kdim = g.in_channels * g.kernel_h * g.kernel_w;
  const int64_t P = g.out_h * g.out_w, Co = g.out_channels;
  const int64_t image = g.in_channels * g.in_h * g.in_w;
  const int nt = conv_threads(g, g.batch);
  const int64_t wsize = Co * kdim;

  // Per thread: the packed dy_n (A), a packed block of col_n^T (B, gathered straight from the
  // phase image), a private dW (threads > 0) and the phase-split image.
  const PhaseImage pi = make_phase_image(g);
  if (pi.size >= (int64_t(1) << 31)) throw std::invalid_argument("conv2d: image too large");
  const int64_t a_size = round_up(detail::packed_a_size<T>(Co, P), 64);
  const int64_t nc_max = std::min<int64_t>(NC, round_up(kdim, NR));
  const int64_t b_size = round_up(std::min<int64_t>(KC, P) * nc_max, 64);
  const int64_t part_offset = a_size + b_size;
  const int64_t per_thread = part_offset + round_up(wsize, 64) + round_up(pi.size, 64);
  T* ws = detail::scratch<T>(detail::kSlotColumns, nt * per_thread);
  int32_t* off32 = detail::scratch<int32_t>(detail::kSlotSpare, kdim);
  tap_offsets(g, pi, off32);
  const int64_t m_panels = ceil_div(Co, MR);

#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const int tid = thread_id();
#ifdef GASCA_OPENMP
    const int nth = omp_get_num_threads();
#else
    const int nth = 1;
#endif
    T* ap = ws + tid * per_thread;
    T* bp = ap + a_size;
    T* acc = tid == 0 ? dw : ap + part_offset;
    T* xp = ap + part_offset + round_up(wsize, 64);
    const int64_t n0 = g.batch * tid / nth, n1 = g.batch * (tid + 1) / nth;
    bool first = true;
    for (int64_t n = n0; n < n1; ++n) {
      detail::pack_a<T>(false, Co, P, dy + n * Co * P, P, ap);
      phase_split(g, pi, x + n * image, xp);
      for (int64_t kb = 0; kb * KC < P; ++kb) {
        const int64_t k0 = kb * KC, kc = std::min<int64_t>(KC, P - k0);
        for (int64_t jc = 0; jc < kdim; jc += nc_max) {
          const int64_t nc = std::min(nc_max, kdim - jc);
          pack_b_taps(g, pi, xp, off32, k0, kc, jc, nc, bp);
          detail::macro_kernel<T>(Co, P, kb, ap, 0, m_panels, bp, kc, nc, acc + jc, kdim, T(1),
                                  first ? T(0) : T(1));
        }
        first = false;
      }
    }
    if (first) std::fill(acc, acc + wsize, T(0));  // a thread with no images
#pragma omp barrier
    // dw += the other threads' partial sums, the elements split between the threads.
    const int64_t e0 = wsize * tid / nth, e1 = wsize * (tid + 1) / nth;
    for (int t = 1; t < nth; ++t) {
      const T* part = ws + t * per_thread + part_offset;
#pragma omp simd
      for (int64_t e = e0; e < e1; ++e) dw[e] += part[e];
    }
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
    "fast: phase-split image, implicit gemm forward, blocked col2im, threads over images",
};
static constexpr int kConvVersions = sizeof(kConvVersionNames) / sizeof(kConvVersionNames[0]);

int conv2d_num_versions() { return kConvVersions; }
const char* conv2d_version_name(int version) {
  return (version >= 0 && version < kConvVersions) ? kConvVersionNames[version] : "";
}

static int resolve(int version) {
  if (version < 0) return kConvVersions - 1;
  if (version >= kConvVersions) throw std::invalid_argument("conv2d: no such version");
  return version;
}

template <typename T>
void conv2d_forward(const ConvGeometry& g, const T* x, const T* w, const T* bias, T* y,
                    int version) {
  switch (resolve(version)) {
    case 0: forward_reference(g, x, w, bias, y); break;
    case 1: forward_im2col(g, x, w, bias, y); break;
    default: forward_fast(g, x, w, bias, y); break;
  }
}

template <typename T>
void conv2d_backward_input(const ConvGeometry& g, const T* dy, const T* w, T* dx, int version) {
  switch (resolve(version)) {
    case 0: backward_input_reference(g, dy, w, dx); break;
    case 1: backward_input_im2col(g, dy, w, dx); break;
    default: backward_input_fast(g, dy, w, dx); break;
  }
}

template <typename T>
void conv2d_backward_weight(const ConvGeometry& g, const T* x, const T* dy, T* dw, int version) {
  switch (resolve(version)) {
    case 0: backward_weight_reference(g, x, dy, dw); break;
    case 1: backward_weight_im2col(g, x, dy, dw); break;
    default: backward_weight_fast(g, x, dy, dw); break;
  }
}

#define GASCA_INSTANTIATE(T)                                                                 \
  template void conv2d_forward<T>(const ConvGeometry&, const T*, const T*, const T*, T*, int); \
  template void conv2d_backward_input<T>(const ConvGeometry&, const T*, const T*, T*, int);    \
  template void conv2d_backward_weight<T>(const ConvGeometry&, const T*, const T*, T*, int);   \
  template void conv2d_backward_bias<T>(const ConvGeometry&, const T*, T*);
GASCA_INSTANTIATE(float)
GASCA_INSTANTIATE(double)
#undef GASCA_INSTANTIATE

}  // namespace gasca
