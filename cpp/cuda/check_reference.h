// The direct definitions the host checks (check_maps.cpp, check_tiles.cpp) hold the CUDA
// index maps and tile engine to: one convolution's output (with its bias), input gradient
// (with the bias a transposed convolution adds to it) and weight gradient, in double, as
// plain loops over every (image, output channel, output pixel, input channel, tap).
// Host code only; not part of the extension.
#pragma once

#include <cstdint>
#include <vector>

namespace gasca::cuda {

struct DirectConv {
  std::vector<double> y, dx, dw;
};

// g: a ConvGeometry (its out_h / out_w may be smaller than the natural size); x, w, dy,
// bias (Co) and bias_in (Ci) hold float or double.
template <typename Geometry, typename V>
DirectConv direct_conv(const Geometry& g, const V& x, const V& w, const V& dy, const V& bias,
                       const V& bias_in) {
  const int64_t Nb = g.batch, Ci = g.in_channels, Co = g.out_channels, H = g.in_h, W = g.in_w,
                KH = g.kernel_h, KW = g.kernel_w, OH = g.out_h, OW = g.out_w;
  DirectConv r{std::vector<double>(dy.size(), 0), std::vector<double>(x.size(), 0),
               std::vector<double>(w.size(), 0)};
  for (int64_t n = 0; n < Nb; ++n)
    for (int64_t co = 0; co < Co; ++co)
      for (int64_t oh = 0; oh < OH; ++oh)
        for (int64_t ow = 0; ow < OW; ++ow) {
          const int64_t yi = ((n * Co + co) * OH + oh) * OW + ow;
          r.y[yi] += bias[co];
          for (int64_t ci = 0; ci < Ci; ++ci)
            for (int64_t i = 0; i < KH; ++i)
              for (int64_t j = 0; j < KW; ++j) {
                const int64_t h = oh * g.stride_h - g.pad_h + i * g.dilation_h;
                const int64_t ww = ow * g.stride_w - g.pad_w + j * g.dilation_w;
                if (h < 0 || h >= H || ww < 0 || ww >= W) continue;
                const int64_t xi = ((n * Ci + ci) * H + h) * W + ww;
                const int64_t wi = ((co * Ci + ci) * KH + i) * KW + j;
                r.y[yi] += double(w[wi]) * double(x[xi]);
                r.dx[xi] += double(w[wi]) * double(dy[yi]);
                r.dw[wi] += double(dy[yi]) * double(x[xi]);
              }
        }
  for (int64_t n = 0; n < Nb; ++n)
    for (int64_t ci = 0; ci < Ci; ++ci)
      for (int64_t p = 0; p < H * W; ++p) r.dx[(n * Ci + ci) * H * W + p] += bias_in[ci];
  return r;
}

}  // namespace gasca::cuda
