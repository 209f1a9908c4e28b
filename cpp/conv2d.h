// conv2d.h: 2-D convolution (cross-correlation, as in PyTorch), NCHW, no groups.
//
//   x: (N, C_in, H, W)    w: (C_out, C_in, KH, KW)    bias: (C_out) or nullptr
//   y: (N, C_out, OH, OW) with OH = (H + 2*PH - DH*(KH-1) - 1) / SH + 1   (same for OW)
//
// All outputs are overwritten (never accumulated into).  All index arithmetic is int64_t.
// `version` picks the implementation (see conv2d.cpp's top-of-file map); -1 = the fastest.
#pragma once
#include <cstdint>

namespace gasca {

struct ConvGeometry {
  int64_t batch = 0, in_channels = 0, in_h = 0, in_w = 0;
  int64_t out_channels = 0, kernel_h = 0, kernel_w = 0;
  int64_t stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dilation_h = 1, dilation_w = 1;
  int64_t out_h = 0, out_w = 0;  // derived: filled in by make_conv_geometry
};

// Fills out_h/out_w from the rest.  Does not validate: the bindings do (out_h/out_w may
// come out <= 0 for impossible geometries, and callers must reject those).
ConvGeometry make_conv_geometry(int64_t batch, int64_t in_channels, int64_t in_h, int64_t in_w,
                                int64_t out_channels, int64_t kernel_h, int64_t kernel_w,
                                int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
                                int64_t dilation_h, int64_t dilation_w);

int conv2d_num_versions();
const char* conv2d_version_name(int version);

// y = conv(x, w) + bias
template <typename T>
void conv2d_forward(const ConvGeometry& g, const T* x, const T* w, const T* bias, T* y,
                    int version = -1);

// dx = conv^T(dy, w): the adjoint of the forward map with respect to x.
template <typename T>
void conv2d_backward_input(const ConvGeometry& g, const T* dy, const T* w, T* dx,
                           int version = -1);

// dw[co, ci, i, j] = sum_{n, oh, ow} dy[n, co, oh, ow] * x[n, ci, oh*SH - PH + i*DH, ow*SW - PW + j*DW]
template <typename T>
void conv2d_backward_weight(const ConvGeometry& g, const T* x, const T* dy, T* dw,
                            int version = -1);

// db[co] = sum_{n, oh, ow} dy[n, co, oh, ow]
template <typename T>
void conv2d_backward_bias(const ConvGeometry& g, const T* dy, T* db);

}  // namespace gasca
