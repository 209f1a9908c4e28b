// conv2d.cpp: 2-D convolution (cross-correlation), NCHW, forward and both gradients.
//
// Versions (pick one with `version`; -1 = the last, fastest):
//   0  reference: the direct 7-deep loop nest, read straight off the definition.
//   1  im2col + gemm: unfold each image into a (C_in*KH*KW) x (OH*OW) column matrix and
//      hand the whole convolution to gemm (its fastest version).  backward-input is gemm into
//      columns then col2im (scatter-add); backward-weight is gemm of dy with the columns
//      transposed, accumulated over the batch.  One image at a time; only gemm is parallel.
//   2  fast: the same three products, restructured around the fast gemm's pieces
//      (gemm_internal.h) so that nothing is materialised whole and both cores work on
//      separate images with no synchronisation:
//        forward          im2col writes straight into gemm's packed B panels (no column
//                         matrix at all), the packed weight is shared, bias added per block;
//        backward-input   W^T dy in cache-sized column blocks, each scattered back by col2im
//                         at once (the column matrix never exists beyond one block);
//        backward-weight  each thread accumulates dy_n col_n^T over its own images into a
//                         private dW, the partial sums are added at the end.
//      im2col/col2im copy whole row segments (memcpy for stride 1, a strided loop otherwise)
//      with the padding handled once per segment, not per element.
//
// Every faster version is checked against version 0 by tests/test_kernels_conv.py.
#include "conv2d.h"

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

// Output pixels [q0, q1) come in runs along output rows: run (oh, ow0, ow1) covers pixels
// (oh, ow) for ow in [ow0, ow1), at column pos = q - q0 of the block.  Computing the runs
// once per block keeps integer division out of the per-tap loops.
struct Run {
  int64_t oh, ow0, ow1, pos;
};

// For kernel column j: the output columns whose input column ow*sw - pw + j*dw is inside
// the image are exactly [first, last).
struct ColRange {
  int64_t off, first, last;
};

constexpr int kMaxRuns = 64;
constexpr int kMaxKernelW = 64;

inline int make_runs(const ConvGeometry& g, int64_t q0, int64_t q1, Run* runs) {
  int count = 0;
  for (int64_t q = q0; q < q1;) {
    const int64_t oh = q / g.out_w, ow0 = q % g.out_w;
    const int64_t ow1 = std::min(g.out_w, ow0 + (q1 - q));
    runs[count++] = Run{oh, ow0, ow1, q - q0};
    q += ow1 - ow0;
  }
  return count;
}

inline void make_col_ranges(const ConvGeometry& g, ColRange* cr) {
  for (int64_t j = 0; j < g.kernel_w; ++j) {
    const int64_t off = j * g.dilation_w - g.pad_w, sw = g.stride_w;
    // ow*sw + off >= 0  <=>  ow >= ceil(-off/sw);  ow*sw + off <= W-1  <=>  ow <= floor((W-1-off)/sw)
    const int64_t first = off >= 0 ? 0 : (-off + sw - 1) / sw;
    const int64_t last = (g.in_w - 1 - off) < 0 ? 0 : (g.in_w - 1 - off) / sw + 1;
    cr[j] = ColRange{off, first, std::max(first, last)};
  }
}

// Pixel blocks are cut so that a block never has more than kMaxRuns runs.
inline int64_t max_pixels_per_chunk(const ConvGeometry& g) {
  return (kMaxRuns - 2) * g.out_w;
}

// Rows [r0, r1) (taps (ci, i, j)) and columns [q0, q1) (output pixels) of image x's column
// matrix, written to dst with row stride ld.  Each run of a row is a strided copy of one
// input row segment, with zeros where it reads the padding.
template <typename T>
void im2col_block(const ConvGeometry& g, const T* x, int64_t r0, int64_t r1, int64_t q0,
                  int64_t q1, T* dst, int64_t ld) {
  if (g.kernel_w > kMaxKernelW) throw std::invalid_argument("conv2d: kernel width above 64");
  ColRange cr[kMaxKernelW];
  make_col_ranges(g, cr);
  Run runs[kMaxRuns];
  const int64_t chunk = max_pixels_per_chunk(g);
  const int64_t kk = g.kernel_h * g.kernel_w, sw = g.stride_w;
  for (int64_t c0 = q0; c0 < q1; c0 += chunk) {
    const int64_t c1 = std::min(q1, c0 + chunk);
    const int nruns = make_runs(g, c0, c1, runs);
    int64_t ci = r0 / kk, i = (r0 % kk) / g.kernel_w, j = r0 % g.kernel_w;
    for (int64_t r = r0; r < r1; ++r) {
      const T* xc = x + ci * g.in_h * g.in_w;
      T* row = dst + (r - r0) * ld + (c0 - q0);
      const ColRange c = cr[j];
      for (int k = 0; k < nruns; ++k) {
        const Run& u = runs[k];
        T* out = row + u.pos - u.ow0;  // out[ow] is pixel (u.oh, ow)
        const int64_t ih = u.oh * g.stride_h - g.pad_h + i * g.dilation_h;
        if (ih < 0 || ih >= g.in_h) {
          for (int64_t ow = u.ow0; ow < u.ow1; ++ow) out[ow] = T(0);
          continue;
        }
        const int64_t lo = std::max(u.ow0, std::min(c.first, u.ow1));
        const int64_t hi = std::max(lo, std::min(u.ow1, c.last));
        for (int64_t ow = u.ow0; ow < lo; ++ow) out[ow] = T(0);
        const T* src = xc + ih * g.in_w + c.off;
        if (sw == 1) {
          std::memcpy(out + lo, src + lo, sizeof(T) * (hi - lo));
        } else if (sw == 2) {
#pragma omp simd
          for (int64_t ow = lo; ow < hi; ++ow) out[ow] = src[2 * ow];
        } else {
          for (int64_t ow = lo; ow < hi; ++ow) out[ow] = src[ow * sw];
        }
        for (int64_t ow = hi; ow < u.ow1; ++ow) out[ow] = T(0);
      }
      if (++j == g.kernel_w) {
        j = 0;
        if (++i == g.kernel_h) i = 0, ++ci;
      }
    }
  }
}

// The adjoint of im2col_block: add rows [r0, r1), columns [q0, q1) of a column matrix (row
// stride ld) back onto the input pixels they were read from.
template <typename T>
void col2im_block(const ConvGeometry& g, const T* col, int64_t r0, int64_t r1, int64_t q0,
                  int64_t q1, int64_t ld, T* dx) {
  if (g.kernel_w > kMaxKernelW) throw std::invalid_argument("conv2d: kernel width above 64");
  ColRange cr[kMaxKernelW];
  make_col_ranges(g, cr);
  Run runs[kMaxRuns];
  const int64_t chunk = max_pixels_per_chunk(g);
  const int64_t kk = g.kernel_h * g.kernel_w, sw = g.stride_w;
  for (int64_t c0 = q0; c0 < q1; c0 += chunk) {
    const int64_t c1 = std::min(q1, c0 + chunk);
    const int nruns = make_runs(g, c0, c1, runs);
    int64_t ci = r0 / kk, i = (r0 % kk) / g.kernel_w, j = r0 % g.kernel_w;
    for (int64_t r = r0; r < r1; ++r) {
      T* xc = dx + ci * g.in_h * g.in_w;
      const T* row = col + (r - r0) * ld + (c0 - q0);
      const ColRange c = cr[j];
      for (int k = 0; k < nruns; ++k) {
        const Run& u = runs[k];
        const int64_t ih = u.oh * g.stride_h - g.pad_h + i * g.dilation_h;
        if (ih < 0 || ih >= g.in_h) continue;
        const T* in = row + u.pos - u.ow0;
        const int64_t lo = std::max(u.ow0, std::min(c.first, u.ow1));
        const int64_t hi = std::max(lo, std::min(u.ow1, c.last));
        T* d = xc + ih * g.in_w + c.off;
        if (sw == 1) {
#pragma omp simd
          for (int64_t ow = lo; ow < hi; ++ow) d[ow] += in[ow];
        } else {
          for (int64_t ow = lo; ow < hi; ++ow) d[ow * sw] += in[ow];
        }
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
void pack_b_im2col(const ConvGeometry& g, const T* x, int64_t k0, int64_t kc, int64_t q0,
                   int64_t nc, T* dst) {
  constexpr int NR = detail::GemmBlocking<T>::NR;
  for (int64_t jp = 0; jp * NR < nc; ++jp) {
    const int64_t a = q0 + jp * NR, cols = std::min<int64_t>(NR, nc - jp * NR);
    T* panel = dst + jp * NR * kc;
    im2col_block(g, x, k0, k0 + kc, a, a + cols, panel, NR);
    if (cols < NR)
      for (int64_t p = 0; p < kc; ++p)
        for (int64_t c = cols; c < NR; ++c) panel[p * NR + c] = T(0);
  }
}

inline int thread_id() {
#ifdef GASCA_OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Threads for a convolution: never more than there are independent work items.
inline int conv_threads(int64_t items) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(get_num_threads(), items)));
}

}  // namespace

template <typename T>
static void forward_fast(const ConvGeometry& g, const T* x, const T* w, const T* bias, T* y) {
  using B = detail::GemmBlocking<T>;
  constexpr int MR = B::MR, NR = B::NR, KC = B::KC, NC = B::NC;
  const int64_t kdim = g.in_channels * g.kernel_h * g.kernel_w;
  const int64_t P = g.out_h * g.out_w, Co = g.out_channels;
  const int64_t image = g.in_channels * g.in_h * g.in_w;
  // Column blocks: at most NC pixels, balanced within an image.
  const int64_t blocks_per_image = ceil_div(P, NC);
  const int64_t nc_max = round_up(ceil_div(P, blocks_per_image), NR);
  const int64_t items = g.batch * blocks_per_image;
  const int nt = conv_threads(items);

  const int64_t a_size = round_up(detail::packed_a_size<T>(Co, kdim), 64);
  const int64_t b_size = round_up(std::min<int64_t>(KC, kdim) * nc_max, 64);
  T* ws = detail::scratch<T>(detail::kSlotColumns, a_size + nt * b_size);
  detail::pack_a<T>(false, Co, kdim, w, kdim, ws);  // the weight, packed once for all images
  const int64_t m_panels = ceil_div(Co, MR);

#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t item = 0; item < items; ++item) {
    const int64_t n = item / blocks_per_image, blk = item % blocks_per_image;
    const int64_t q0 = blk * nc_max, nc = std::min(nc_max, P - q0);
    if (nc <= 0) continue;
    T* bp = ws + a_size + thread_id() * b_size;
    T* yn = y + n * Co * P;
    for (int64_t kb = 0; kb * KC < kdim; ++kb) {
      const int64_t k0 = kb * KC, kc = std::min<int64_t>(KC, kdim - k0);
      pack_b_im2col(g, x + n * image, k0, kc, q0, nc, bp);
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

template <typename T>
static void backward_input_fast(const ConvGeometry& g, const T* dy, const T* w, T* dx) {
  using B = detail::GemmBlocking<T>;
  constexpr int MR = B::MR, NR = B::NR, KC = B::KC;
  const int64_t kdim = g.in_channels * g.kernel_h * g.kernel_w;
  const int64_t P = g.out_h * g.out_w, Co = g.out_channels;
  const int64_t image = g.in_channels * g.in_h * g.in_w;
  // Column blocks sized so that the block of W^T dy (kdim x nc) stays within ~256 KB (L2).
  const int64_t want = std::max<int64_t>(NR, round_up((int64_t(256) << 10) / int64_t(sizeof(T)) / std::max<int64_t>(kdim, 1), NR));
  const int64_t blocks_per_image = ceil_div(P, std::min(want, round_up(P, NR)));
  const int64_t nc_max = round_up(ceil_div(P, blocks_per_image), NR);
  const int nt = conv_threads(g.batch);

  const int64_t a_size = round_up(detail::packed_a_size<T>(kdim, Co), 64);
  const int64_t b_size = round_up(std::min<int64_t>(KC, Co) * nc_max, 64);
  const int64_t c_size = round_up(kdim * nc_max, 64);
  T* ws = detail::scratch<T>(detail::kSlotColumns, a_size + nt * (b_size + c_size));
  detail::pack_a<T>(true, kdim, Co, w, kdim, ws);  // W^T: (kdim x Co), packed once
  const int64_t m_panels = ceil_div(kdim, MR);

  // Threads own whole images: col2im scatters into dx_n, which no other thread touches.
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t n = 0; n < g.batch; ++n) {
    T* bp = ws + a_size + thread_id() * (b_size + c_size);
    T* col = bp + b_size;
    T* dxn = dx + n * image;
    const T* dyn = dy + n * Co * P;
    std::fill(dxn, dxn + image, T(0));
    for (int64_t q0 = 0; q0 < P; q0 += nc_max) {
      const int64_t nc = std::min(nc_max, P - q0);
      for (int64_t kb = 0; kb * KC < Co; ++kb) {
        const int64_t k0 = kb * KC, kc = std::min<int64_t>(KC, Co - k0);
        detail::pack_b<T>(false, k0, kc, q0, nc, dyn, P, bp);
        detail::macro_kernel<T>(kdim, Co, kb, ws, 0, m_panels, bp, kc, nc, col, nc, T(1),
                                kb == 0 ? T(0) : T(1));
      }
      col2im_block(g, col, 0, kdim, q0, q0 + nc, nc, dxn);
    }
  }
}

template <typename T>
static void backward_weight_fast(const ConvGeometry& g, const T* x, const T* dy, T* dw) {
  using B = detail::GemmBlocking<T>;
  constexpr int MR = B::MR, NR = B::NR, KC = B::KC, NC = B::NC;
  const int64_t kdim = g.in_channels * g.kernel_h * g.kernel_w;
  const int64_t P = g.out_h * g.out_w, Co = g.out_channels;
  const int64_t image = g.in_channels * g.in_h * g.in_w;
  const int nt = conv_threads(g.batch);
  const int64_t wsize = Co * kdim;

  // Per thread: the packed dy_n (A), a packed block of col_n^T (B), and (threads > 0) a
  // private dW.  The column matrix is never materialised: B is packed straight from x.
  const int64_t a_size = round_up(detail::packed_a_size<T>(Co, P), 64);
  const int64_t nc_max = std::min<int64_t>(NC, round_up(kdim, NR));
  const int64_t b_size = round_up(std::min<int64_t>(KC, P) * nc_max, 64);
  const int64_t col_size = round_up(std::min<int64_t>(KC, P) * kdim, 64);
  const int64_t per_thread = a_size + b_size + col_size + round_up(wsize, 64);
  T* ws = detail::scratch<T>(detail::kSlotColumns, nt * per_thread);
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
    T* colt = bp + b_size;  // a KC-pixel slice of col_n^T: (pixels x kdim)
    T* acc = tid == 0 ? dw : colt + col_size;
    const int64_t n0 = g.batch * tid / nth, n1 = g.batch * (tid + 1) / nth;
    bool first = true;
    for (int64_t n = n0; n < n1; ++n) {
      detail::pack_a<T>(false, Co, P, dy + n * Co * P, P, ap);
      for (int64_t kb = 0; kb * KC < P; ++kb) {
        const int64_t k0 = kb * KC, kc = std::min<int64_t>(KC, P - k0);
        // col_n^T rows [k0, k0+kc): the im2col block for those pixels, transposed by the
        // trans-B packing below.
        im2col_block(g, x + n * image, 0, kdim, k0, k0 + kc, colt, kc);
        for (int64_t jc = 0; jc < kdim; jc += nc_max) {
          const int64_t nc = std::min(nc_max, kdim - jc);
          detail::pack_b<T>(true, 0, kc, jc, nc, colt, kc, bp);
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
      const T* part = ws + t * per_thread + a_size + b_size + col_size;
#pragma omp simd
      for (int64_t e = e0; e < e1; ++e) dw[e] += part[e];
    }
  }
}

// ============================================================ bias gradient
template <typename T>
void conv2d_backward_bias(const ConvGeometry& g, const T* dy, T* db) {
  const int64_t ohw = g.out_h * g.out_w;
  for (int64_t co = 0; co < g.out_channels; ++co) {
    // Accumulate in double: the sum runs over N*OH*OW terms (65536 for gasca-64 layer 1).
    double sum = 0;
    for (int64_t n = 0; n < g.batch; ++n) {
      const T* p = dy + (n * g.out_channels + co) * ohw;
      for (int64_t q = 0; q < ohw; ++q) sum += p[q];
    }
    db[co] = static_cast<T>(sum);
  }
}

// ============================================================ dispatch
static const char* const kConvVersionNames[] = {
    "reference direct loops",
    "im2col + gemm, one image at a time",
    "fast: im2col packed straight into gemm panels, blocked col2im, threads over images",
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
