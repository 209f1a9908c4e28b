// symconv2d.h: the symmetry convolution, a 2-D convolution (cross-correlation, NCHW, no
// groups) whose kernels are mirror-symmetric left to right: about half the parameters of
// conv2d.h's, and half the multiplications.  (Issue 14, part 3: the extended GASCA paper's
// "convolutional layer with a reduced number of parameters that exploits facial symmetry";
// the paper gives no formula, so this is our interpretation.)
//
// Only half of each kernel is stored:
//
//   w_half: (C_out, C_in, KH, HW),   HW = ceil(KW / 2) = symconv_half_width(KW)
//
// and the full kernel it stands for is its mirror image about the centre column:
//
//   w[co, ci, i, j] = w_half[co, ci, i, min(j, KW-1-j)]        j = 0 .. KW-1
//
// (for an odd KW the centre column j = (KW-1)/2 is its own mirror).  KW itself cannot be
// read off w_half (HW = 2 stands for KW = 3 and KW = 4), so the geometry carries it:
// g.kernel_w is the full width KW.  Then, with x_j = x[n, ci, ih, ow*SW - PW + j*DW] (zero
// outside the image) and ih = oh*SH - PH + i*DH,
//
//   y[n, co, oh, ow] = bias[co] + sum_{ci, i, j < HW} w_half[co, ci, i, j] * s_j
//   s_j = x_j + x_{KW-1-j}   (for the centre column of an odd KW: x_j alone, counted once)
//
// "add the mirrored inputs, then multiply once".  The gradients:
//
//   dx               the adjoint of the forward map: conv2d's backward-input with the
//                    mirrored full kernel (each s_j sends its gradient to both its taps)
//   dw_half[..., j]  = dw[..., j] + dw[..., KW-1-j]   (the centre column once), dw being
//                    conv2d's weight gradient of the full kernel
//
// Every output is overwritten; out_h/out_w are the natural output size (conv2d.h's
// make_conv_geometry).  `version` picks the implementation (symconv2d.cpp's version map;
// -1 = the fastest); `gemm_version` is the gemm version (gemm.h) that version 1 hands its
// product to.  Both are validated here.
#pragma once
#include <cstdint>

#include "conv2d.h"  // ConvGeometry

namespace gasca {

// HW, the number of stored columns of a symmetric kernel of full width KW.
inline int64_t symconv_half_width(int64_t kernel_w) { return (kernel_w + 1) / 2; }

int symconv2d_num_versions();
const char* symconv2d_version_name(int version);
int symconv2d_fastest_version();  // what version -1 picks

// y = symconv(x, w_half) + bias.  x (N, Ci, H, W), w_half (Co, Ci, KH, HW), bias (Co) or
// nullptr, y (N, Co, OH, OW).
template <typename T>
void symconv2d_forward(const ConvGeometry& g, const T* x, const T* w_half, const T* bias, T* y,
                       int version = -1, int gemm_version = -1);

// dx (N, Ci, H, W) = the adjoint of the forward map applied to dy (N, Co, OH, OW).
template <typename T>
void symconv2d_backward_input(const ConvGeometry& g, const T* dy, const T* w_half, T* dx,
                              int version = -1, int gemm_version = -1);

// dw_half (Co, Ci, KH, HW) from x and dy.  (The bias gradient is conv2d_backward_bias's.)
template <typename T>
void symconv2d_backward_weight(const ConvGeometry& g, const T* x, const T* dy, T* dw_half,
                               int version = -1, int gemm_version = -1);

}  // namespace gasca
