// conv2d.cpp: 2-D convolution (cross-correlation), NCHW, forward and both gradients.
//
// Versions (pick one with `version`; -1 = the last, fastest):
//   0  reference: the direct 7-deep loop nest, read straight off the definition.
//   1  im2col + gemm: unfold each image into a (C_in*KH*KW) x (OH*OW) column matrix and
//      hand the whole convolution to gemm (the fastest gemm version).  backward-input is
//      gemm into columns then col2im (scatter-add); backward-weight is gemm of dy with the
//      columns transposed, accumulated over the batch.
//
// Every faster version is checked against version 0 by tests/test_kernels_conv.py.
#include "conv2d.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "gemm.h"
#include "workspace.h"

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
    default: forward_im2col(g, x, w, bias, y); break;
  }
}

template <typename T>
void conv2d_backward_input(const ConvGeometry& g, const T* dy, const T* w, T* dx, int version) {
  switch (resolve(version)) {
    case 0: backward_input_reference(g, dy, w, dx); break;
    default: backward_input_im2col(g, dy, w, dx); break;
  }
}

template <typename T>
void conv2d_backward_weight(const ConvGeometry& g, const T* x, const T* dy, T* dw, int version) {
  switch (resolve(version)) {
    case 0: backward_weight_reference(g, x, dy, dw); break;
    default: backward_weight_im2col(g, x, dy, dw); break;
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
