// check_maps.cpp: the index maps of the fast CUDA kernels (conv_maps.cuh), checked on the CPU.
//
// The tiled kernels are a generic matrix-product engine plus these maps; the maps are where
// a convolution's index arithmetic lives, so this program multiplies them out with a plain
// triple loop on the host and compares with a direct convolution, for many random
// geometries (strides, paddings, dilations, odd sizes, outputs smaller than the natural
// size).  It also checks that advance() walks k exactly as cursor() decomposes it, and that
// the stride phases of the backward-input pass write every element of dx exactly once.  No
// GPU needed:
//
//   g++ -std=c++17 -O1 -I cpp -I /usr/local/cuda/include cpp/cuda/check_maps.cpp -o /tmp/check_maps
//   (tests/test_cuda_host.py builds and runs it)
//   /tmp/check_maps
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "check_reference.h"
#include "conv_maps.cuh"

using namespace gasca;
using namespace gasca::cuda;

static int failures = 0;
#define CHECK(cond, ...)                      \
  do {                                        \
    if (!(cond)) {                            \
      ++failures;                             \
      if (failures < 20) {                    \
        std::printf("FAIL %s: ", #cond);      \
        std::printf(__VA_ARGS__);             \
        std::printf("\n");                    \
      }                                       \
    }                                         \
  } while (0)

// C[m, n] = sum_k A(m, k) B(k, n) with the operands' own cursor/advance, k walked in runs
// of `run` from a fresh cursor (as a thread of the engine does), and write() to the output.
template <class AOp, class BOp, class Out>
void multiply(const AOp& a, const BOp& b, const Out& out, int64_t M, int64_t N, int64_t K,
              int run) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      const auto la = a.line(m);
      const auto lb = b.line(n);
      double acc = 0;
      for (int64_t k0 = 0; k0 < K; k0 += run) {
        auto ca = a.cursor(k0);
        auto cb = b.cursor(k0);
        for (int64_t k = k0; k < K && k < k0 + run; ++k) {
          acc += double(a.load(la, ca)) * double(b.load(lb, cb));
          a.advance(ca);
          b.advance(cb);
        }
      }
      out.write(m, out.col_offset(n), acc);
    }
}

int main() {
  std::mt19937_64 gen(7);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(gen); };
  std::normal_distribution<double> normal;
  int cases = 0, smaller = 0;
  for (int trial = 0; trial < 400; ++trial) {
    ConvGeometry g;
    g.batch = pick(1, 3);
    g.in_channels = pick(1, 4);
    g.out_channels = pick(1, 4);
    g.kernel_h = pick(1, 5);
    g.kernel_w = pick(1, 5);
    g.stride_h = pick(1, 4);
    g.stride_w = pick(1, 4);
    g.dilation_h = pick(1, 3);
    g.dilation_w = pick(1, 3);
    g.pad_h = pick(0, 3);
    g.pad_w = pick(0, 3);
    g.in_h = pick(1, 12);
    g.in_w = pick(1, 12);
    g.out_h = conv_out_size(g.in_h, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h);
    g.out_w = conv_out_size(g.in_w, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w);
    if (g.out_h <= 0 || g.out_w <= 0) continue;
    // One geometry in four with an output smaller than the natural size, on one axis or
    // both (the transposed convolution's adjoint when output_padding >= stride, conv2d.h).
    if (pick(0, 3) == 0) {
      const int64_t natural = g.out_h * g.out_w;
      g.out_h = pick(1, static_cast<int>(g.out_h));
      g.out_w = pick(1, static_cast<int>(g.out_w));
      smaller += g.out_h * g.out_w < natural;
    }
    ++cases;
    const int64_t Nb = g.batch, Ci = g.in_channels, Co = g.out_channels, H = g.in_h,
                  W = g.in_w, KH = g.kernel_h, KW = g.kernel_w, OH = g.out_h, OW = g.out_w;
    std::vector<double> x(Nb * Ci * H * W), w(Co * Ci * KH * KW), dy(Nb * Co * OH * OW),
        bias(Co), bias_in(Ci);
    for (auto* v : {&x, &w, &dy, &bias, &bias_in})
      for (auto& e : *v) e = normal(gen);

    // Direct definitions.
    const DirectConv ref = direct_conv(g, x, w, dy, bias, bias_in);
    const std::vector<double>&y_ref = ref.y, &dx_ref = ref.dx, &dw_ref = ref.dw;

    const int run = pick(1, 9);  // k values a thread walks from one cursor
    // Forward.
    std::vector<double> y(dy.size(), NAN);
    const int64_t K = Ci * KH * KW;
    multiply(ForwardWeights<double>{w.data(), K},
             ForwardImage<double>{x.data(), Ci, H, W, OH, OW, KH, KW, g.stride_h, g.stride_w,
                                  g.pad_h, g.pad_w, g.dilation_h, g.dilation_w},
             ForwardOut<double>{y.data(), bias.data(), Co, OH * OW}, Co, Nb * OH * OW, K, run);
    for (size_t i = 0; i < y.size(); ++i)
      CHECK(std::fabs(y[i] - y_ref[i]) < 1e-9, "forward trial %d index %zu: %g vs %g", trial, i,
            y[i], y_ref[i]);

    // Backward-input, phase by phase; count the writes to each element.
    std::vector<double> dx(x.size(), NAN);
    std::vector<int> writes(x.size(), 0);
    for (int64_t rh = 0; rh < g.stride_h; ++rh)
      for (int64_t rw = 0; rw < g.stride_w; ++rw) {
        const PhaseAxis ph = make_phase_axis(rh, H, KH, g.stride_h, g.pad_h, g.dilation_h);
        const PhaseAxis pw = make_phase_axis(rw, W, KW, g.stride_w, g.pad_w, g.dilation_w);
        if (ph.count == 0 || pw.count == 0) continue;
        const InputOut<double> out{dx.data(), bias_in.data(), Ci, H, W, g.stride_h, g.stride_w,
                                   ph, pw};
        const int64_t cols = Nb * ph.count * pw.count;
        for (int64_t c = 0; c < cols; ++c)
          for (int64_t ci = 0; ci < Ci; ++ci) writes[out.col_offset(c) + ci * H * W]++;
        multiply(InputWeights<double>{w.data(), Ci, KH, KW, ph, pw},
                 InputGrads<double>{dy.data(), Co, OH, OW, ph, pw}, out, Ci, cols,
                 Co * ph.taps * pw.taps, run);
      }
    for (size_t i = 0; i < dx.size(); ++i) {
      CHECK(writes[i] == 1, "backward-input trial %d index %zu written %d times", trial, i,
            writes[i]);
      CHECK(std::fabs(dx[i] - dx_ref[i]) < 1e-9, "backward-input trial %d index %zu: %g vs %g",
            trial, i, dx[i], dx_ref[i]);
    }

    // Backward-weight, with the reduction cut into slices as split-K does (each slice
    // starts from a fresh cursor: `run` plays the slice length here).
    std::vector<double> dw(w.size(), 0.0);
    multiply(WeightGrads<double>{dy.data(), Co, OH * OW},
             WeightImage<double>{x.data(), Ci, H, W, OH, OW, KH, KW, g.stride_h, g.stride_w,
                                 g.pad_h, g.pad_w, g.dilation_h, g.dilation_w},
             WeightOut<double>{dw.data(), K}, Co, K, Nb * OH * OW, run);
    for (size_t i = 0; i < dw.size(); ++i)
      CHECK(std::fabs(dw[i] - dw_ref[i]) < 1e-9, "backward-weight trial %d index %zu: %g vs %g",
            trial, i, dw[i], dw_ref[i]);
  }
  std::printf("%d geometries checked (%d with an output smaller than the natural size), %d failures\n",
              cases, smaller, failures);
  return failures == 0 ? 0 : 1;
}
