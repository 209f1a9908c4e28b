// kernels.h: the CUDA entry points of gasca_core, one host function per kernel family.
//
// These mirror the CPU API (cpp/conv2d.h, cpp/conv_transpose2d.h, cpp/optim.h, cpp/gemm.h)
// argument for argument, with two differences:
//   - every pointer is a device pointer, and the work is queued on `stream` (0 = the legacy
//     default stream); nothing here synchronises with the host;
//   - instead of throwing, each function returns a Status: the CUDA error of the first
//     launch that failed and that kernel's name, so the bindings can raise a Python error
//     that names the kernel.
// Arguments are NOT validated here (the bindings do it, as on the CPU side): shapes must be
// consistent, out_h/out_w positive and at most the natural size (smaller: the transposed
// convolution's adjoint when output_padding >= stride, see cpp/conv2d.h; every version of
// every pass computes just those outputs), version in [-1, num_versions).
//
// Version maps (each .cu file repeats its own in detail):
//   conv2d:  0 naive (one thread per output element)  1 tiled implicit GEMM
//   gemm:    0 naive (one thread per element of C)     1 tiled (the same tile engine)
//   optim:   0 naive (one thread per element)          1 grid-stride, 4 elements per thread
#pragma once
#include <cstdint>

#include <cuda_runtime_api.h>

#include "conv2d.h"  // ConvGeometry and its inline formulas (nothing of the CPU library is linked)

namespace gasca {
namespace cuda {

struct Status {
  cudaError_t error = cudaSuccess;
  const char* kernel = nullptr;  // the kernel whose launch failed; nullptr when ok
  bool ok() const { return error == cudaSuccess; }
};

// ---------------------------------------------------------------- conv2d (conv2d.cu)
int conv2d_num_versions();
const char* conv2d_version_name(int version);

// y = conv(x, w) + bias.   x (N,Ci,H,W), w (Co,Ci,KH,KW), bias (Co) or nullptr, y (N,Co,OH,OW)
template <typename T>
Status conv2d_forward(const ConvGeometry& g, const T* x, const T* w, const T* bias, T* y,
                      int version, cudaStream_t stream);

// dx = conv^T(dy, w) (+ bias[ci] when bias is not nullptr: that is the transposed
// convolution's forward pass, fused).   dy (N,Co,OH,OW), dx (N,Ci,H,W)
template <typename T>
Status conv2d_backward_input(const ConvGeometry& g, const T* dy, const T* w, const T* bias,
                             T* dx, int version, cudaStream_t stream);

// dw[co,ci,i,j] = sum_{n,oh,ow} dy[n,co,oh,ow] x[n,ci,oh*SH-PH+i*DH,ow*SW-PW+j*DW]
template <typename T>
Status conv2d_backward_weight(const ConvGeometry& g, const T* x, const T* dy, T* dw,
                              int version, cudaStream_t stream);

// db[c] = sum_{n,p} dy[n,c,p] over dy (batch, channels, pixels): serves both convolutions.
template <typename T>
Status conv2d_backward_bias(int64_t batch, int64_t channels, int64_t pixels, const T* dy, T* db,
                            cudaStream_t stream);

// ---------------------------------------------------------------- conv_transpose2d
// `adj` is the geometry of the convolution whose adjoint the transposed convolution is
// (make_conv_transpose_geometry in cpp/conv2d.h; cpp/conv_transpose2d.h): nothing below is
// a new kernel.
template <typename T>
inline Status conv_transpose2d_forward(const ConvGeometry& adj, const T* x, const T* w,
                                       const T* bias, T* y, int version, cudaStream_t stream) {
  return conv2d_backward_input<T>(adj, x, w, bias, y, version, stream);
}
template <typename T>
inline Status conv_transpose2d_backward_input(const ConvGeometry& adj, const T* dy, const T* w,
                                              T* dx, int version, cudaStream_t stream) {
  return conv2d_forward<T>(adj, dy, w, nullptr, dx, version, stream);
}
template <typename T>
inline Status conv_transpose2d_backward_weight(const ConvGeometry& adj, const T* x, const T* dy,
                                               T* dw, int version, cudaStream_t stream) {
  return conv2d_backward_weight<T>(adj, dy, x, dw, version, stream);
}

// ---------------------------------------------------------------- gemm (gemm.cu)
int gemm_num_versions();
const char* gemm_version_name(int version);

// C = alpha op(A) op(B) + beta C, row-major, as cpp/gemm.h (beta == 0: C is never read).
template <typename T>
Status gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
            int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc, int version,
            cudaStream_t stream);

// ---------------------------------------------------------------- optim (optim.cu)
int optim_num_versions();
const char* optim_version_name(int version);

// The formulas of cpp/optim.h / optim.cpp, element for element.  The hyperparameters come
// in double, as PyTorch holds them (Python floats): every derived constant (1 - beta2,
// lr / (1 - beta1^step), ...) is formed in double and rounded once to T, as the CPU does.
template <typename T>
Status sgd_step(int64_t n, T* param, const T* grad, T* momentum_buf, double lr, double momentum,
                double dampening, double weight_decay, bool nesterov, bool first_step,
                int version, cudaStream_t stream);

template <typename T>
Status adam_step(int64_t n, T* param, const T* grad, T* exp_avg, T* exp_avg_sq, int64_t step,
                 double lr, double beta1, double beta2, double eps, double weight_decay,
                 bool decoupled, int version, cudaStream_t stream);

}  // namespace cuda
}  // namespace gasca
