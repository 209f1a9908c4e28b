// symconv2d.cpp: the symmetry convolution (symconv2d.h: mirror-symmetric kernels stored as
// their left half w_half (Co, Ci, KH, HW), HW = ceil(KW/2)), forward and both gradients.
//
// Versions (pick one with `version`; -1 = the fastest, kSymFastest below):
//   0  reference: direct loops over the definition with the full mirrored kernel, w[.., j]
//      read as w_half[.., min(j, KW-1-j)]: conv2d's reference loops with one index changed.
//      It does not use the symmetry (KW multiplications per row of taps, not HW), which
//      makes it an independent check of version 1.
//   1  fast, "add the mirrored inputs, then multiply once": for a block of images, build a
//      half-width column matrix
//          colh[(ci*KH + i)*HW + j][p] = x_j(p) + x_{KW-1-j}(p)   (centre column once)
//      (Ci*KH*HW rows, one column per output pixel p of the block), then hand the whole
//      convolution to ONE gemm (gemm.h) with w_half:
//          forward          Y = w_half colh                       (Co x Ci*KH*HW)(.. x P)
//          backward-input   dcolh = w_half^T dY, then each entry goes back to BOTH of the
//                           taps it was summed from (the adjoint of the pair sum)
//          backward-weight  dw_half += dY colh^T
//      The gemm does Co * Ci*KH*HW * P multiply-adds, HW/KW of conv2d's (3/5 for a 5-wide
//      kernel, 1/2 for an even one).  To build colh, each (image, channel) is first copied
//      into a zero-padded, phase-split image (split_phases: one row per stride phase), from
//      which every row of colh is the sum of two contiguous runs, with no bounds tests.
//      Building and scattering the column matrices is split over the OpenMP threads by
//      (image, input channel): no two threads write the same place; gemm itself is
//      threaded.  A block holds as many images as keep the two scratch matrices near
//      kBlockElements elements (2 MiB of floats: they stay in the L3 cache for the gemm).
//
// Measured (tools/bench_symconv2d.py: gasca-64's layer 2, 32 -> 64 channels, 5x5, stride 2,
// padding 2, 32x32 input, batch 64, float32, median of interleaved rounds, on the 2-core AMD
// EPYC (AVX2) development machine while other jobs shared it): 30,720 weights instead of
// 51,200 (0.6x) and 0.6x the multiplications.  Symconv2d v1 vs conv2d v2, first run:
//                        2 threads                      1 thread
//   forward           23.2 ms vs 18.3 ms (0.79x)      27.2 ms vs 28.0 ms (1.03x)
//   backward-input    17.0 ms vs 20.0 ms (1.18x)      27.1 ms vs 35.3 ms (1.30x)
//   backward-weight   18.6 ms vs 19.0 ms (1.02x)      31.9 ms vs 31.5 ms (0.99x)
//   all three         58.7 ms vs 57.2 ms (0.97x)      86.2 ms vs 94.8 ms (1.10x)
// (the ratio is conv2d's time over ours).  A second run, under heavier load: 1 thread
// 81.1 vs 96.8 ms (1.19x), but 2 threads 94.0 vs 52.9 ms (0.56x).  One thread: the
// half-width product wins a little, the column matrix it needs (conv2d version 2 builds
// none: its forward is an implicit gemm) eats the rest.  Two threads on a shared machine:
// each call opens several parallel regions per block of images (the pair sums, the copies,
// gemm's own), and every region's barrier waits whenever another process holds a core;
// conv2d version 2 opens one per pass.  An implicit-gemm version that sums the pairs while
// packing the gemm's B panels, in one parallel region, is the way to the full 1/0.6.
//
// Every version is checked against version 0 and against conv2d with the mirrored full
// kernel (the oracle) by tests/test_symconv2d.py.
#include "symconv2d.h"

#include <algorithm>
#include <stdexcept>

#include "gemm.h"
#include "workspace.h"

#ifdef GASCA_OPENMP
#include <omp.h>
#endif

namespace gasca {

namespace {

// The stored column that full-kernel column j reads: its mirror image for the right half.
inline int64_t half_col(int64_t j, int64_t kw) { return std::min(j, kw - 1 - j); }

// ============================================================ version 0: reference
// conv2d.cpp's reference loops, the weight read through half_col.
template <typename T>
void forward_reference(const ConvGeometry& g, const T* x, const T* wh, const T* bias, T* y) {
  const int64_t hw = symconv_half_width(g.kernel_w);
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
                sum += wh[((co * g.in_channels + ci) * g.kernel_h + i) * hw + half_col(j, g.kernel_w)] *
                       x[((n * g.in_channels + ci) * g.in_h + ih) * g.in_w + iw];
              }
            }
          y[((n * g.out_channels + co) * g.out_h + oh) * g.out_w + ow] = sum;
        }
}

template <typename T>
void backward_input_reference(const ConvGeometry& g, const T* dy, const T* wh, T* dx) {
  const int64_t hw = symconv_half_width(g.kernel_w);
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
                    d * wh[((co * g.in_channels + ci) * g.kernel_h + i) * hw + half_col(j, g.kernel_w)];
              }
            }
        }
}

// dw_half[.., jh] collects the full kernel's gradient at both columns jh and KW-1-jh.
template <typename T>
void backward_weight_reference(const ConvGeometry& g, const T* x, const T* dy, T* dwh) {
  const int64_t hw = symconv_half_width(g.kernel_w);
  std::fill(dwh, dwh + g.out_channels * g.in_channels * g.kernel_h * hw, T(0));
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
          dwh[((co * g.in_channels + ci) * g.kernel_h + i) * hw + half_col(j, g.kernel_w)] += sum;
        }
}

// ============================================================ version 1: pair sums + gemm
// A block of images handled by one gemm: images [n0, n0 + nb), P = nb * OH*OW columns.
constexpr int64_t kBlockElements = int64_t(1) << 19;  // 2 MiB of float scratch per block

// The outputs o in [lo, hi) (within 0 .. out-1) whose tap o*stride + offset lies inside the
// input, 0 .. in-1: the loops below then run without a bounds test per element.
inline void tap_range(int64_t in, int64_t out, int64_t stride, int64_t offset, int64_t& lo,
                      int64_t& hi) {
  lo = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
  hi = offset > in - 1 ? 0 : (in - 1 - offset) / stride + 1;
  hi = std::min(hi, out);
  lo = std::min(lo, hi);
}

// This thread's number in the enclosing parallel region (0 outside one, or without OpenMP).
inline int thread_id() {
#ifdef GASCA_OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

inline int threads_for(int64_t items) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(get_num_threads(), items)));
}

// The zero-padded, phase-split copy of one input channel c (in_h x in_w), so that the pair
// sums below read every kernel tap as a contiguous run with no bounds tests.  Padded row
// ihp = ih + pad_h (0 .. phase_rows-1) and padded column iwp = iw + pad_w are zero outside the
// image; each padded row is split into sw phase rows of length len, phase ph holding padded
// columns ph, ph + sw, ph + 2 sw, ...  Tap j of output column ow reads padded column
// ow*sw + j*dw, which is element ow + (j*dw)/sw of phase (j*dw) % sw: a run along ow.
inline int64_t phase_rows(const ConvGeometry& g) {
  return (g.out_h - 1) * g.stride_h + (g.kernel_h - 1) * g.dilation_h + 1;
}
inline int64_t phase_len(const ConvGeometry& g) {
  // every padded column a tap reads: (out_w - 1)*sw + (kw - 1)*dw, at most
  return ((g.out_w - 1) * g.stride_w + (g.kernel_w - 1) * g.dilation_w) / g.stride_w + 1;
}

template <typename T>
void split_phases(const ConvGeometry& g, const T* c, T* phase) {
  const int64_t rows = phase_rows(g), len = phase_len(g), sw = g.stride_w;
  std::fill(phase, phase + rows * sw * len, T(0));
  for (int64_t ihp = 0; ihp < rows; ++ihp) {
    const int64_t ih = ihp - g.pad_h;
    if (ih < 0 || ih >= g.in_h) continue;
    for (int64_t ph = 0; ph < sw; ++ph) {
      // q*sw + ph - pad_w is an image column for q in [lo, hi); the rest stays zero
      int64_t lo, hi;
      tap_range(g.in_w, len, sw, ph - g.pad_w, lo, hi);
      T* dst = phase + (ihp * sw + ph) * len;
      const T* src = c + ih * g.in_w;
      for (int64_t q = lo; q < hi; ++q) dst[q] = src[q * sw + ph - g.pad_w];
    }
  }
}

// Whether the padded phase image of one channel is small enough to build: not when huge
// strides, paddings or dilations would make it mostly (or astronomically much) padding.
// Each factor is checked before the product, which could otherwise overflow.
inline bool phase_image_fits(const ConvGeometry& g) {
  const int64_t budget = 4 * g.in_h * g.in_w + 4096;
  const int64_t rows = phase_rows(g), row_elems = g.stride_w * phase_len(g);
  return rows <= budget && row_elems <= budget && rows * row_elems <= budget;
}

// colh for images [n0, n0 + nb): row (ci*KH + i)*HW + j, column nl*OHW + oh*OW + ow holds
// x_j + x_{KW-1-j} at output pixel (oh, ow) of image n0 + nl (x_j once for a centre column).
// This one reads the image directly: for each tap, the range of outputs whose input column
// lies inside the image (tap_range), at stride sw.  For geometries whose phase image would
// not fit (phase_image_fits); pair_sum_columns below is the fast path.
template <typename T>
void pair_sum_columns_direct(const ConvGeometry& g, const T* x, int64_t n0, int64_t nb, T* colh) {
  const int64_t hw = symconv_half_width(g.kernel_w), ohw = g.out_h * g.out_w;
  const int64_t cols = nb * ohw;
  const int nt = threads_for(nb * g.in_channels);
#pragma omp parallel for collapse(2) schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t nl = 0; nl < nb; ++nl)
    for (int64_t ci = 0; ci < g.in_channels; ++ci) {
      const T* xc = x + ((n0 + nl) * g.in_channels + ci) * g.in_h * g.in_w;
      for (int64_t i = 0; i < g.kernel_h; ++i)
        for (int64_t j = 0; j < hw; ++j) {
          const int64_t jm = g.kernel_w - 1 - j;
          const int64_t off_a = j * g.dilation_w - g.pad_w, off_b = jm * g.dilation_w - g.pad_w;
          int64_t lo_a, hi_a, lo_b, hi_b;
          tap_range(g.in_w, g.out_w, g.stride_w, off_a, lo_a, hi_a);
          tap_range(g.in_w, g.out_w, g.stride_w, off_b, lo_b, hi_b);
          T* row = colh + ((ci * g.kernel_h + i) * hw + j) * cols + nl * ohw;
          for (int64_t oh = 0; oh < g.out_h; ++oh) {
            T* r = row + oh * g.out_w;
            std::fill(r, r + g.out_w, T(0));
            const int64_t ih = oh * g.stride_h - g.pad_h + i * g.dilation_h;
            if (ih < 0 || ih >= g.in_h) continue;
            const T* xr = xc + ih * g.in_w;
            for (int64_t ow = lo_a; ow < hi_a; ++ow) r[ow] = xr[ow * g.stride_w + off_a];
            if (jm != j)
              for (int64_t ow = lo_b; ow < hi_b; ++ow) r[ow] += xr[ow * g.stride_w + off_b];
          }
        }
    }
}

// The same colh, the fast way.  Each (image, channel) is first copied into a padded phase
// image (split_phases) in the thread's own slice of scratch memory; then every row of colh
// is one vectorisable loop.
template <typename T>
void pair_sum_columns(const ConvGeometry& g, const T* x, int64_t n0, int64_t nb, T* colh) {
  if (!phase_image_fits(g)) {
    pair_sum_columns_direct(g, x, n0, nb, colh);
    return;
  }
  const int64_t hw = symconv_half_width(g.kernel_w), ohw = g.out_h * g.out_w;
  const int64_t cols = nb * ohw, sw = g.stride_w, len = phase_len(g);
  const int64_t per_thread = detail::round_up_64b(phase_rows(g) * sw * len, sizeof(T));
  const int nt = threads_for(nb * g.in_channels);
  T* phases = detail::scratch<T>(detail::kSlotSpare, nt * per_thread);
#pragma omp parallel for collapse(2) schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t nl = 0; nl < nb; ++nl)
    for (int64_t ci = 0; ci < g.in_channels; ++ci) {
      T* phase = phases + thread_id() * per_thread;
      split_phases(g, x + ((n0 + nl) * g.in_channels + ci) * g.in_h * g.in_w, phase);
      for (int64_t i = 0; i < g.kernel_h; ++i)
        for (int64_t j = 0; j < hw; ++j) {
          const int64_t jm = g.kernel_w - 1 - j;  // the mirrored tap (== j at the centre)
          const int64_t ta = j * g.dilation_w, tb = jm * g.dilation_w;  // padded column offsets
          T* row = colh + ((ci * g.kernel_h + i) * hw + j) * cols + nl * ohw;
          for (int64_t oh = 0; oh < g.out_h; ++oh) {
            const int64_t ihp = oh * g.stride_h + i * g.dilation_h;
            const T* xa = phase + (ihp * sw + ta % sw) * len + ta / sw;  // xa[ow] = x_j
            const T* xb = phase + (ihp * sw + tb % sw) * len + tb / sw;  // xb[ow] = x_{KW-1-j}
            T* r = row + oh * g.out_w;
            if (jm != j) {
#pragma omp simd
              for (int64_t ow = 0; ow < g.out_w; ++ow) r[ow] = xa[ow] + xb[ow];
            } else {
              std::copy(xa, xa + g.out_w, r);
            }
          }
        }
    }
}

// The adjoint of pair_sum_columns: each entry of dcolh is added back onto both taps it was
// summed from.  Overwrites dx of images [n0, n0 + nb).
template <typename T>
void scatter_pair_columns(const ConvGeometry& g, const T* dcolh, int64_t n0, int64_t nb, T* dx) {
  const int64_t hw = symconv_half_width(g.kernel_w), ohw = g.out_h * g.out_w;
  const int64_t cols = nb * ohw;
  const int nt = threads_for(nb * g.in_channels);
#pragma omp parallel for collapse(2) schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t nl = 0; nl < nb; ++nl)
    for (int64_t ci = 0; ci < g.in_channels; ++ci) {
      T* xc = dx + ((n0 + nl) * g.in_channels + ci) * g.in_h * g.in_w;
      std::fill(xc, xc + g.in_h * g.in_w, T(0));
      for (int64_t i = 0; i < g.kernel_h; ++i)
        for (int64_t j = 0; j < hw; ++j) {
          const int64_t jm = g.kernel_w - 1 - j;
          const int64_t off_a = j * g.dilation_w - g.pad_w, off_b = jm * g.dilation_w - g.pad_w;
          int64_t lo_a, hi_a, lo_b, hi_b;
          tap_range(g.in_w, g.out_w, g.stride_w, off_a, lo_a, hi_a);
          tap_range(g.in_w, g.out_w, g.stride_w, off_b, lo_b, hi_b);
          const T* row = dcolh + ((ci * g.kernel_h + i) * hw + j) * cols + nl * ohw;
          for (int64_t oh = 0; oh < g.out_h; ++oh) {
            const int64_t ih = oh * g.stride_h - g.pad_h + i * g.dilation_h;
            if (ih < 0 || ih >= g.in_h) continue;
            const T* r = row + oh * g.out_w;
            T* xr = xc + ih * g.in_w;
            for (int64_t ow = lo_a; ow < hi_a; ++ow) xr[ow * g.stride_w + off_a] += r[ow];
            if (jm != j)
              for (int64_t ow = lo_b; ow < hi_b; ++ow) xr[ow * g.stride_w + off_b] += r[ow];
          }
        }
    }
}

// dY (Co x P) for images [n0, n0 + nb), from dy (N, Co, OHW): the gemm wants the block's
// pixels of one channel as one row.
template <typename T>
void gather_rows(const ConvGeometry& g, const T* dy, int64_t n0, int64_t nb, T* dyt) {
  const int64_t ohw = g.out_h * g.out_w, cols = nb * ohw;
  const int nt = threads_for(nb * g.out_channels);
#pragma omp parallel for collapse(2) schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t nl = 0; nl < nb; ++nl)
    for (int64_t co = 0; co < g.out_channels; ++co)
      std::copy(dy + ((n0 + nl) * g.out_channels + co) * ohw,
                dy + ((n0 + nl) * g.out_channels + co + 1) * ohw, dyt + co * cols + nl * ohw);
}

// The inverse of gather_rows, adding the bias on the way: y (N, Co, OHW) from Y (Co x P).
template <typename T>
void scatter_rows(const ConvGeometry& g, const T* yt, const T* bias, int64_t n0, int64_t nb,
                  T* y) {
  const int64_t ohw = g.out_h * g.out_w, cols = nb * ohw;
  const int nt = threads_for(nb * g.out_channels);
#pragma omp parallel for collapse(2) schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t nl = 0; nl < nb; ++nl)
    for (int64_t co = 0; co < g.out_channels; ++co) {
      const T* src = yt + co * cols + nl * ohw;
      T* dst = y + ((n0 + nl) * g.out_channels + co) * ohw;
      const T b = bias ? bias[co] : T(0);
      for (int64_t p = 0; p < ohw; ++p) dst[p] = src[p] + b;
    }
}

// Images per block: enough to give gemm long rows, few enough that the column matrix and
// the Co x P matrix stay near kBlockElements.
int64_t block_images(const ConvGeometry& g) {
  const int64_t kdim = g.in_channels * g.kernel_h * symconv_half_width(g.kernel_w);
  const int64_t per_image = (kdim + g.out_channels) * g.out_h * g.out_w;
  return std::max<int64_t>(1, std::min<int64_t>(g.batch, kBlockElements / per_image));
}

template <typename T>
void forward_fast(const ConvGeometry& g, const T* x, const T* wh, const T* bias, T* y,
                  int gemm_version) {
  const int64_t kdim = g.in_channels * g.kernel_h * symconv_half_width(g.kernel_w);
  const int64_t ohw = g.out_h * g.out_w, nb_max = block_images(g);
  T* colh = detail::scratch<T>(detail::kSlotColumns, kdim * nb_max * ohw);
  T* yt = detail::scratch<T>(detail::kSlotPartial, g.out_channels * nb_max * ohw);
  for (int64_t n0 = 0; n0 < g.batch; n0 += nb_max) {
    const int64_t nb = std::min(nb_max, g.batch - n0), cols = nb * ohw;
    pair_sum_columns(g, x, n0, nb, colh);
    // Y = w_half colh: (Co x kdim) (kdim x P), the one product, half-width.
    gemm<T>(false, false, g.out_channels, cols, kdim, T(1), wh, kdim, colh, cols, T(0), yt, cols,
            gemm_version);
    scatter_rows(g, yt, bias, n0, nb, y);
  }
}

template <typename T>
void backward_input_fast(const ConvGeometry& g, const T* dy, const T* wh, T* dx,
                         int gemm_version) {
  const int64_t kdim = g.in_channels * g.kernel_h * symconv_half_width(g.kernel_w);
  const int64_t ohw = g.out_h * g.out_w, nb_max = block_images(g);
  T* dcolh = detail::scratch<T>(detail::kSlotColumns, kdim * nb_max * ohw);
  T* dyt = detail::scratch<T>(detail::kSlotPartial, g.out_channels * nb_max * ohw);
  for (int64_t n0 = 0; n0 < g.batch; n0 += nb_max) {
    const int64_t nb = std::min(nb_max, g.batch - n0), cols = nb * ohw;
    gather_rows(g, dy, n0, nb, dyt);
    // dcolh = w_half^T dY: (kdim x Co) (Co x P)
    gemm<T>(true, false, kdim, cols, g.out_channels, T(1), wh, kdim, dyt, cols, T(0), dcolh, cols,
            gemm_version);
    scatter_pair_columns(g, dcolh, n0, nb, dx);
  }
}

template <typename T>
void backward_weight_fast(const ConvGeometry& g, const T* x, const T* dy, T* dwh,
                          int gemm_version) {
  const int64_t kdim = g.in_channels * g.kernel_h * symconv_half_width(g.kernel_w);
  const int64_t ohw = g.out_h * g.out_w, nb_max = block_images(g);
  T* colh = detail::scratch<T>(detail::kSlotColumns, kdim * nb_max * ohw);
  T* dyt = detail::scratch<T>(detail::kSlotPartial, g.out_channels * nb_max * ohw);
  for (int64_t n0 = 0; n0 < g.batch; n0 += nb_max) {
    const int64_t nb = std::min(nb_max, g.batch - n0), cols = nb * ohw;
    pair_sum_columns(g, x, n0, nb, colh);
    gather_rows(g, dy, n0, nb, dyt);
    // dw_half (+)= dY colh^T: (Co x P) (P x kdim); the first block overwrites.
    gemm<T>(false, true, g.out_channels, kdim, cols, T(1), dyt, cols, colh, cols,
            n0 == 0 ? T(0) : T(1), dwh, kdim, gemm_version);
  }
}

}  // namespace

// ============================================================ dispatch
static const char* const kSymVersionNames[] = {
    "reference direct loops over the mirrored full kernel",
    "fast: mirrored input pairs summed into half-width columns, one gemm per block of images",
};
static constexpr int kSymVersions = sizeof(kSymVersionNames) / sizeof(kSymVersionNames[0]);
static constexpr int kSymFastest = 1;  // what version -1 picks
static_assert(kSymFastest < kSymVersions, "kSymFastest must name a version");

int symconv2d_num_versions() { return kSymVersions; }
int symconv2d_fastest_version() { return kSymFastest; }
const char* symconv2d_version_name(int version) {
  return (version >= 0 && version < kSymVersions) ? kSymVersionNames[version] : "";
}

static int resolve(int version, int gemm_version) {
  if (gemm_version < -1 || gemm_version >= gemm_num_versions())
    throw std::invalid_argument("symconv2d: no such gemm version");
  if (version < -1 || version >= kSymVersions)
    throw std::invalid_argument("symconv2d: no such version");
  return version < 0 ? kSymFastest : version;
}

template <typename T>
void symconv2d_forward(const ConvGeometry& g, const T* x, const T* w_half, const T* bias, T* y,
                       int version, int gemm_version) {
  switch (resolve(version, gemm_version)) {
    case 0: forward_reference(g, x, w_half, bias, y); break;
    case 1: forward_fast(g, x, w_half, bias, y, gemm_version); break;
    default: throw std::logic_error("symconv2d: a version without its case here");
  }
}

template <typename T>
void symconv2d_backward_input(const ConvGeometry& g, const T* dy, const T* w_half, T* dx,
                              int version, int gemm_version) {
  switch (resolve(version, gemm_version)) {
    case 0: backward_input_reference(g, dy, w_half, dx); break;
    case 1: backward_input_fast(g, dy, w_half, dx, gemm_version); break;
    default: throw std::logic_error("symconv2d: a version without its case here");
  }
}

template <typename T>
void symconv2d_backward_weight(const ConvGeometry& g, const T* x, const T* dy, T* dw_half,
                               int version, int gemm_version) {
  switch (resolve(version, gemm_version)) {
    case 0: backward_weight_reference(g, x, dy, dw_half); break;
    case 1: backward_weight_fast(g, x, dy, dw_half, gemm_version); break;
    default: throw std::logic_error("symconv2d: a version without its case here");
  }
}

#define GASCA_INSTANTIATE(T)                                                                    \
  template void symconv2d_forward<T>(const ConvGeometry&, const T*, const T*, const T*, T*, int, \
                                     int);                                                      \
  template void symconv2d_backward_input<T>(const ConvGeometry&, const T*, const T*, T*, int,   \
                                            int);                                               \
  template void symconv2d_backward_weight<T>(const ConvGeometry&, const T*, const T*, T*, int,  \
                                             int);
GASCA_INSTANTIATE(float)
GASCA_INSTANTIATE(double)
#undef GASCA_INSTANTIATE

}  // namespace gasca
