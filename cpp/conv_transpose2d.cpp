// conv_transpose2d.cpp: the transposed convolution, written as what it is: the adjoint of
// a convolution.  Its forward pass is conv2d's backward-input pass (plus a bias), its input
// gradient is conv2d's forward pass and its weight gradient is conv2d's weight gradient with
// the two activations swapped (see conv_transpose2d.h).  No new loops live here: every
// version of conv2d (reference, im2col, fast) serves the transposed convolution as well.
#include "conv_transpose2d.h"

namespace gasca {

template <typename T>
void conv_transpose2d_forward(const ConvGeometry& adj, const T* x, const T* w, const T* bias, T* y,
                              int version, int gemm_version) {
  // x is the adjoint convolution's output-gradient-shaped tensor (N, adj.out_channels, H, W);
  // y is its input-shaped tensor (N, adj.in_channels, OH, OW).
  // the bias rides along: the fast version adds it to each image while it is in cache
  conv2d_backward_input<T>(adj, x, w, y, version, gemm_version, bias);
}

template <typename T>
void conv_transpose2d_backward_bias(const ConvGeometry& adj, const T* dy, T* db) {
  // dy has the transposed convolution's output shape = the adjoint convolution's input shape.
  ConvGeometry g;
  g.batch = adj.batch;
  g.out_channels = adj.in_channels;
  g.out_h = adj.in_h;
  g.out_w = adj.in_w;
  conv2d_backward_bias<T>(g, dy, db);
}

template void conv_transpose2d_forward<float>(const ConvGeometry&, const float*, const float*,
                                              const float*, float*, int, int);
template void conv_transpose2d_forward<double>(const ConvGeometry&, const double*, const double*,
                                               const double*, double*, int, int);
template void conv_transpose2d_backward_bias<float>(const ConvGeometry&, const float*, float*);
template void conv_transpose2d_backward_bias<double>(const ConvGeometry&, const double*, double*);

}  // namespace gasca
