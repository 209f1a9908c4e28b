// conv_transpose2d.cpp: the transposed convolution, written as what it is: the adjoint of
// a convolution.  Its forward pass is conv2d's backward-input pass (plus a bias), its input
// gradient is conv2d's forward pass and its weight gradient is conv2d's weight gradient with
// the two activations swapped (see conv_transpose2d.h).  No new loops live here: every
// version of conv2d (reference, im2col, fast) serves the transposed convolution as well.
#include "conv_transpose2d.h"

#include <algorithm>

#include "gemm.h"  // get_num_threads

namespace gasca {

// y[n, c, :, :] += bias[c]: one streaming pass, split over the threads when it is large
// (2M elements for the mirror of gasca layer 2: a few percent of the convolution itself).
template <typename T>
static void add_channel_bias(int64_t batch, int64_t channels, int64_t plane, const T* bias, T* y) {
  const int64_t planes = batch * channels;
  const int nt = static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>({int64_t(get_num_threads()), planes, planes * plane >> 18})));
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t q = 0; q < planes; ++q) {
    T* p = y + q * plane;
    const T b = bias[q % channels];
#pragma omp simd
    for (int64_t k = 0; k < plane; ++k) p[k] += b;
  }
}

template <typename T>
void conv_transpose2d_forward(const ConvGeometry& adj, const T* x, const T* w, const T* bias, T* y,
                              int version, int gemm_version) {
  // x is the adjoint convolution's output-gradient-shaped tensor (N, adj.out_channels, H, W);
  // y is its input-shaped tensor (N, adj.in_channels, OH, OW).
  conv2d_backward_input<T>(adj, x, w, y, version, gemm_version);
  if (bias) add_channel_bias(adj.batch, adj.in_channels, adj.in_h * adj.in_w, bias, y);
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
