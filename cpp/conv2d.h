// conv2d.h: 2-D convolution (cross-correlation, as in PyTorch), NCHW, no groups.
//
//   x: (N, C_in, H, W)    w: (C_out, C_in, KH, KW)    bias: (C_out) or nullptr
//   y: (N, C_out, OH, OW),   y[n, co, oh, ow] = bias[co] + sum over ci, i, j of
//                            w[co, ci, i, j] * x[n, ci, oh*SH - PH + i*DH, ow*SW - PW + j*DW]
//                            (x is zero outside the image)
//
// OH x OW is normally the natural output size, conv_out_size() below: every window position
// that fits in the padded image.  It may also be smaller (but positive): then only the
// first OH rows and OW columns of outputs exist.  The forward pass computes just those;
// for the two gradients the missing outputs are absent, as if their gradient were zero.
// The transposed convolution needs this when its output_padding is >= its stride (see
// make_conv_transpose_geometry); every version of every pass, CPU and CUDA, accepts it.
//
// All outputs are overwritten (never accumulated into).  All index arithmetic is int64_t.
// `version` picks the implementation (see conv2d.cpp's top-of-file map); -1 = the fastest.
// `gemm_version` is the gemm version (gemm.h) that the versions built on gemm hand their
// products to: version 1 (im2col + gemm), and version 2 where it takes version 1's path;
// -1 = the fastest.  Versions that call no gemm ignore it.  Both are validated here.
//
// The geometry formulas below are the only copy in C++: the bindings' argument checks
// (python/arguments.h), the transposed convolution (conv_transpose2d.h) and the CUDA side
// use them.  (Python keeps its own, in src/gasca_core/backend.py.)
#pragma once
#include <cstdint>

namespace gasca {

struct ConvGeometry {
  int64_t batch = 0, in_channels = 0, in_h = 0, in_w = 0;
  int64_t out_channels = 0, kernel_h = 0, kernel_w = 0;
  int64_t stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dilation_h = 1, dilation_w = 1;
  // 1 <= out_h <= conv_out_size(in_h, ...), the same for out_w: the natural size
  // (make_conv_geometry) or an explicit smaller one (make_conv_transpose_geometry).
  int64_t out_h = 0, out_w = 0;
};

// ------------------------------------------------------------------ geometry
// The natural output length along one axis: the window positions o = 0, 1, ... whose last
// tap o*stride - pad + dil*(kernel - 1) still lies within the padded input (in + pad - 1).
// 0 when not even the first one does (span < 0: floor division, not rounding to 0) or for
// a stride < 1.  No overflow for stride/pad/dil up to 2**30 (the bindings' cap).
inline int64_t conv_out_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad,
                             int64_t dil) {
  const int64_t span = in + 2 * pad - dil * (kernel - 1) - 1;
  if (stride <= 0 || span < 0) return 0;
  return span / stride + 1;
}

// The output length of a transposed convolution (PyTorch's ConvTranspose2d) along one axis:
// input position t scatters into t*stride - pad + i*dil for the kernel taps i, and
// output_pad extra positions are kept at the far end.
inline int64_t conv_transpose_out_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad,
                                       int64_t output_pad, int64_t dil) {
  return (in - 1) * stride - 2 * pad + dil * (kernel - 1) + output_pad + 1;
}

// A convolution with its natural output size.  Does not validate: the bindings do (out_h
// and out_w come out 0 for impossible geometries, and callers must reject those).
inline ConvGeometry make_conv_geometry(int64_t batch, int64_t in_channels, int64_t in_h,
                                       int64_t in_w, int64_t out_channels, int64_t kernel_h,
                                       int64_t kernel_w, int64_t stride_h, int64_t stride_w,
                                       int64_t pad_h, int64_t pad_w, int64_t dilation_h,
                                       int64_t dilation_w) {
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
  g.out_h = conv_out_size(in_h, kernel_h, stride_h, pad_h, dilation_h);
  g.out_w = conv_out_size(in_w, kernel_w, stride_w, pad_w, dilation_w);
  return g;
}

// The adjoint relation.  A transposed convolution of x (N, C_in, H, W) with weight
// (C_in, C_out, KH, KW) is the adjoint of the convolution that maps an image of its output
// size (N, C_out, OH, OW), OH = conv_transpose_out_size(H, ...), back to (N, C_in, H, W)
// with the same weight read as (out_channels = C_in, in_channels = C_out, KH, KW): the same
// memory.  This returns that convolution's geometry.  Its output size is set to (H, W)
// explicitly: the natural one, conv_out_size(OH, ...) = H + output_pad / stride (floor),
// is larger when output_pad >= stride (PyTorch allows output_pad < max(stride, dilation)),
// and the outputs past H are exactly the ones the transposed convolution does not have.
inline ConvGeometry make_conv_transpose_geometry(
    int64_t batch, int64_t in_channels, int64_t in_h, int64_t in_w, int64_t out_channels,
    int64_t kernel_h, int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h,
    int64_t pad_w, int64_t output_pad_h, int64_t output_pad_w, int64_t dilation_h,
    int64_t dilation_w) {
  const int64_t oh = conv_transpose_out_size(in_h, kernel_h, stride_h, pad_h, output_pad_h, dilation_h);
  const int64_t ow = conv_transpose_out_size(in_w, kernel_w, stride_w, pad_w, output_pad_w, dilation_w);
  ConvGeometry adj = make_conv_geometry(batch, out_channels, oh, ow, in_channels, kernel_h,
                                        kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                                        dilation_w);
  adj.out_h = in_h;
  adj.out_w = in_w;
  return adj;
}

// ------------------------------------------------------------------ the passes
int conv2d_num_versions();
const char* conv2d_version_name(int version);
int conv2d_fastest_version();  // what version -1 picks

// y = conv(x, w) + bias
template <typename T>
void conv2d_forward(const ConvGeometry& g, const T* x, const T* w, const T* bias, T* y,
                    int version = -1, int gemm_version = -1);

// dx = conv^T(dy, w): the adjoint of the forward map with respect to x.  With `bias`
// (in_channels values), dx[n, ci] += bias[ci] as well: the transposed convolution's forward
// pass, whose bias the fast version adds while each image is still in cache.
template <typename T>
void conv2d_backward_input(const ConvGeometry& g, const T* dy, const T* w, T* dx,
                           int version = -1, int gemm_version = -1, const T* bias = nullptr);

// dw[co, ci, i, j] = sum_{n, oh, ow} dy[n, co, oh, ow] * x[n, ci, oh*SH - PH + i*DH, ow*SW - PW + j*DW]
template <typename T>
void conv2d_backward_weight(const ConvGeometry& g, const T* x, const T* dy, T* dw,
                            int version = -1, int gemm_version = -1);

// db[co] = sum_{n, oh, ow} dy[n, co, oh, ow]
template <typename T>
void conv2d_backward_bias(const ConvGeometry& g, const T* dy, T* db);

}  // namespace gasca
