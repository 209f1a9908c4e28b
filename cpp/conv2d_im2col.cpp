// conv2d_im2col.cpp: conv2d version 1, im2col + gemm: each pass is one matrix product per
// image, handed to gemm (gemm.cpp) with the image unfolded into columns: to the gemm version
// the caller chose (`gemm_version`; -1, the default, is gemm's fastest).
//
// Versions of conv2d (the full map atop conv2d.cpp):
//   0  reference     conv2d.cpp
//   1  im2col+gemm   conv2d_im2col.cpp (this file)
//   2  fast          conv2d_fast.cpp (and its pieces); it falls back to this version for
//                    geometries whose phase image would be mostly padding
//
// Unfold image x into its column matrix col (C_in*KH*KW rows, one per kernel tap (ci, i, j);
// OH*OW columns, one per output pixel): then
//   forward          y_n = W col_n                (Co x kdim) (kdim x OHW), plus the bias
//   backward-input   dcol = W^T dy_n, then col2im adds each entry back onto its pixel
//   backward-weight  dW = sum over n of dy_n col_n^T
// One image at a time; only gemm is parallel.  The column matrix lives in the thread's
// scratch memory (workspace.h).  Every loop runs over out_h x out_w, so an output smaller
// than the natural size (conv2d.h) needs nothing special.
#include <algorithm>
#include <cstdint>

#include "conv2d.h"
#include "conv2d_versions.h"
#include "gemm.h"
#include "workspace.h"

namespace gasca {
namespace conv2d_v1 {

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
void forward(const ConvGeometry& g, const T* x, const T* w, const T* bias, T* y,
             int gemm_version) {
  const int64_t kdim = g.in_channels * g.kernel_h * g.kernel_w;
  const int64_t ohw = g.out_h * g.out_w;
  T* col = detail::scratch<T>(detail::kSlotColumns, kdim * ohw);
  for (int64_t n = 0; n < g.batch; ++n) {
    im2col(g, x + n * g.in_channels * g.in_h * g.in_w, col);
    T* yn = y + n * g.out_channels * ohw;
    gemm<T>(false, false, g.out_channels, ohw, kdim, T(1), w, kdim, col, ohw, T(0), yn, ohw,
            gemm_version);
    if (bias)
      for (int64_t co = 0; co < g.out_channels; ++co)
        for (int64_t p = 0; p < ohw; ++p) yn[co * ohw + p] += bias[co];
  }
}

template <typename T>
void backward_input(const ConvGeometry& g, const T* dy, const T* w, T* dx, int gemm_version,
                    const T* bias) {
  const int64_t kdim = g.in_channels * g.kernel_h * g.kernel_w;
  const int64_t ohw = g.out_h * g.out_w;
  const int64_t image = g.in_channels * g.in_h * g.in_w;
  T* col = detail::scratch<T>(detail::kSlotColumns, kdim * ohw);
  for (int64_t n = 0; n < g.batch; ++n) {
    // dcol = W^T dy_n: (kdim x Co) (Co x OHW)
    gemm<T>(true, false, kdim, ohw, g.out_channels, T(1), w, kdim, dy + n * g.out_channels * ohw,
            ohw, T(0), col, ohw, gemm_version);
    std::fill(dx + n * image, dx + (n + 1) * image, T(0));
    col2im(g, col, dx + n * image);
  }
  if (bias) detail::add_channel_bias(g.batch, g.in_channels, g.in_h * g.in_w, bias, dx);
}

template <typename T>
void backward_weight(const ConvGeometry& g, const T* x, const T* dy, T* dw, int gemm_version) {
  const int64_t kdim = g.in_channels * g.kernel_h * g.kernel_w;
  const int64_t ohw = g.out_h * g.out_w;
  T* col = detail::scratch<T>(detail::kSlotColumns, kdim * ohw);
  for (int64_t n = 0; n < g.batch; ++n) {
    im2col(g, x + n * g.in_channels * g.in_h * g.in_w, col);
    // dW += dy_n col^T: (Co x OHW) (OHW x kdim)
    gemm<T>(false, true, g.out_channels, kdim, ohw, T(1), dy + n * g.out_channels * ohw, ohw, col,
            ohw, n == 0 ? T(0) : T(1), dw, kdim, gemm_version);
  }
  if (g.batch == 0) std::fill(dw, dw + g.out_channels * kdim, T(0));
}

GASCA_CONV2D_INSTANTIATE_VERSION(float)
GASCA_CONV2D_INSTANTIATE_VERSION(double)

}  // namespace conv2d_v1
}  // namespace gasca
