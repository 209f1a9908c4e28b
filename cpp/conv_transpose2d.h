// conv_transpose2d.h: transposed convolution ("deconvolution"), NCHW, no groups.
//
// A transposed convolution is the adjoint of a convolution: its forward pass is exactly
// conv2d's backward-input pass, and its input gradient is conv2d's forward pass.  So
// nothing here is a new kernel: we describe the transposed convolution by the geometry of
// the convolution it is the adjoint of, and call conv2d's kernels.
//
//   x: (N, C_in, H, W)     w: (C_in, C_out, KH, KW)   (PyTorch's layout for ConvTranspose2d)
//   y: (N, C_out, OH, OW)  OH = (H - 1)*SH - 2*PH + DH*(KH - 1) + OPH + 1   (same for OW)
//
// The adjoint convolution maps (N, C_out, OH, OW) -> (N, C_in, H, W) with weight
// (C_in, C_out, KH, KW) read as (out_channels, in_channels, KH, KW): the same memory.
#pragma once
#include "conv2d.h"

namespace gasca {

// Geometry of the convolution whose adjoint is this transposed convolution.  Its
// (in_h, in_w) is the transposed convolution's output size; its (out_h, out_w) is the
// transposed convolution's input size (H, W) as long as output_padding < max(stride, dilation).
inline ConvGeometry make_conv_transpose_geometry(
    int64_t batch, int64_t in_channels, int64_t in_h, int64_t in_w, int64_t out_channels,
    int64_t kernel_h, int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h,
    int64_t pad_w, int64_t output_pad_h, int64_t output_pad_w, int64_t dilation_h,
    int64_t dilation_w) {
  const int64_t oh = (in_h - 1) * stride_h - 2 * pad_h + dilation_h * (kernel_h - 1) + output_pad_h + 1;
  const int64_t ow = (in_w - 1) * stride_w - 2 * pad_w + dilation_w * (kernel_w - 1) + output_pad_w + 1;
  ConvGeometry g = make_conv_geometry(batch, out_channels, oh, ow, in_channels, kernel_h, kernel_w,
                                      stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w);
  // The adjoint convolution must map back onto exactly (in_h, in_w); the bindings check it.
  return g;
}

// y = conv_transpose(x, w) + bias: conv2d's backward-input pass, then the bias.
template <typename T>
void conv_transpose2d_forward(const ConvGeometry& adj, const T* x, const T* w, const T* bias,
                              T* y, int version = -1);

// dx = conv(dy, w): conv2d's forward pass, no bias.
template <typename T>
inline void conv_transpose2d_backward_input(const ConvGeometry& adj, const T* dy, const T* w,
                                            T* dx, int version = -1) {
  conv2d_forward<T>(adj, dy, w, nullptr, dx, version);
}

// dw = conv2d's weight gradient with the roles of input and output gradient swapped:
// in the adjoint convolution, dy plays the input image and x plays the output gradient.
template <typename T>
inline void conv_transpose2d_backward_weight(const ConvGeometry& adj, const T* x, const T* dy,
                                             T* dw, int version = -1) {
  conv2d_backward_weight<T>(adj, dy, x, dw, version);
}

// db[co] = sum over n, h, w of dy[n, co, h, w]  (dy has adj.in_channels channels).
template <typename T>
void conv_transpose2d_backward_bias(const ConvGeometry& adj, const T* dy, T* db);

}  // namespace gasca
