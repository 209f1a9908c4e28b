// conv_transpose2d.h: transposed convolution ("deconvolution"), NCHW, no groups.
//
// A transposed convolution is the adjoint of a convolution: its forward pass is exactly
// conv2d's backward-input pass, and its input gradient is conv2d's forward pass.  So
// nothing here is a new kernel: we describe the transposed convolution by the geometry of
// the convolution it is the adjoint of, and call conv2d's kernels.
//
//   x: (N, C_in, H, W)     w: (C_in, C_out, KH, KW)   (PyTorch's layout for ConvTranspose2d)
//   y: (N, C_out, OH, OW)  OH = (H - 1)*SH - 2*PH + DH*(KH - 1) + OPH + 1   (same for OW;
//                          conv_transpose_out_size in conv2d.h), OPH < max(SH, DH)
//
// The adjoint convolution maps (N, C_out, OH, OW) -> (N, C_in, H, W) with weight
// (C_in, C_out, KH, KW) read as (out_channels, in_channels, KH, KW): the same memory.  Its
// geometry, `adj` below, comes from make_conv_transpose_geometry (conv2d.h), which also
// says why its output size (H, W) may be smaller than its natural one (output_padding >=
// stride): every conv2d pass accepts that.  `version` and `gemm_version` are conv2d's (conv2d.h).
#pragma once
#include "conv2d.h"

namespace gasca {

// y = conv_transpose(x, w) + bias: conv2d's backward-input pass, then the bias.
template <typename T>
void conv_transpose2d_forward(const ConvGeometry& adj, const T* x, const T* w, const T* bias,
                              T* y, int version = -1, int gemm_version = -1);

// dx = conv(dy, w): conv2d's forward pass, no bias.
template <typename T>
inline void conv_transpose2d_backward_input(const ConvGeometry& adj, const T* dy, const T* w,
                                            T* dx, int version = -1,
                                            int gemm_version = -1) {
  conv2d_forward<T>(adj, dy, w, nullptr, dx, version, gemm_version);
}

// dw = conv2d's weight gradient with the roles of input and output gradient swapped:
// in the adjoint convolution, dy plays the input image and x plays the output gradient.
template <typename T>
inline void conv_transpose2d_backward_weight(const ConvGeometry& adj, const T* x, const T* dy,
                                             T* dw, int version = -1,
                                             int gemm_version = -1) {
  conv2d_backward_weight<T>(adj, dy, x, dw, version, gemm_version);
}

// db[co] = sum over n, h, w of dy[n, co, h, w]  (dy has adj.in_channels channels).
template <typename T>
void conv_transpose2d_backward_bias(const ConvGeometry& adj, const T* dy, T* db);

}  // namespace gasca
