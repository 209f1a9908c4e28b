// conv2d_versions.h: the entry points of conv2d's faster versions, for the dispatch in
// conv2d.cpp (and for version 2, which hands the geometries it is not made for to version 1).
// Not part of the public API (conv2d.h): call conv2d_forward & co with `version` instead.
//
// Versions of conv2d (the full map atop conv2d.cpp):
//   0  reference     conv2d.cpp (static there: nothing else calls it)
//   1  im2col+gemm   conv2d_im2col.cpp     namespace conv2d_v1
//   2  fast          conv2d_fast.cpp       namespace conv2d_v2
//
// Each version has the three passes of conv2d.h with the same arguments and contract
// (outputs overwritten; out_h/out_w up to the natural size), for T = float and double.
// `gemm_version` (already validated by the dispatch) is the gemm version a version built
// on gemm calls: version 1's products, and version 2 where it hands a geometry to version 1.
#pragma once

#include "conv2d.h"

namespace gasca {

namespace conv2d_v1 {
template <typename T>
void forward(const ConvGeometry& g, const T* x, const T* w, const T* bias, T* y, int gemm_version);
// dx = conv^T(dy, w), plus bias[ci] on channel ci when bias is given (see conv2d.h).
template <typename T>
void backward_input(const ConvGeometry& g, const T* dy, const T* w, T* dx, int gemm_version,
                    const T* bias);
template <typename T>
void backward_weight(const ConvGeometry& g, const T* x, const T* dy, T* dw, int gemm_version);
}  // namespace conv2d_v1

namespace conv2d_v2 {
template <typename T>
void forward(const ConvGeometry& g, const T* x, const T* w, const T* bias, T* y, int gemm_version);
// dx = conv^T(dy, w), plus bias[ci] on channel ci when bias is given (see conv2d.h).
template <typename T>
void backward_input(const ConvGeometry& g, const T* dy, const T* w, T* dx, int gemm_version,
                    const T* bias);
template <typename T>
void backward_weight(const ConvGeometry& g, const T* x, const T* dy, T* dw, int gemm_version);
}  // namespace conv2d_v2

namespace detail {
// y[n, c, :, :] += bias[c] over a (batch, channels, plane) tensor (conv2d.cpp).
template <typename T>
void add_channel_bias(int64_t batch, int64_t channels, int64_t plane, const T* bias, T* y);
}  // namespace detail

// The explicit instantiations each version's file ends with, inside its namespace.
#define GASCA_CONV2D_INSTANTIATE_VERSION(T)                                                  \
  template void forward<T>(const ConvGeometry&, const T*, const T*, const T*, T*, int);     \
  template void backward_input<T>(const ConvGeometry&, const T*, const T*, T*, int, const T*); \
  template void backward_weight<T>(const ConvGeometry&, const T*, const T*, T*, int);

}  // namespace gasca
