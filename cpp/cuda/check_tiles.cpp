// check_tiles.cpp: the tile engine of tiled_gemm.cuh run on the CPU, one std::thread per CUDA
// thread and a std::barrier for __syncthreads, on the convolution maps of conv_maps.cuh.
//
// check_maps.cpp tests the index maps with a plain triple loop; this tests the tiling that
// version 1 adds on top (thread roles, shared-memory double buffering, register blocking,
// edge tiles, split-K slices and their ordered sum, the grid-stride tile loop) by running the very kernel source,
// with the same tile configurations, and comparing with a direct convolution.  Slow (a
// thread per CUDA thread) but needs no GPU:
//
//   g++ -std=c++20 -O1 -pthread -I cpp -I /usr/local/cuda/include \
//       cpp/cuda/check_tiles.cpp -o /tmp/check_tiles && /tmp/check_tiles
#include <barrier>
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <thread>
#include <vector>

#include <cuda_runtime.h>

// ---- a minimal CUDA execution model on host threads
#undef __global__
#undef __shared__
#undef __launch_bounds__
#define __global__
#define __shared__ static
#define __launch_bounds__(n)
struct EmuDim3 { unsigned x = 0, y = 0, z = 0; };
thread_local EmuDim3 emu_threadIdx, emu_blockIdx;
EmuDim3 emu_gridDim;
std::barrier<>* emu_barrier = nullptr;
#define threadIdx emu_threadIdx
#define blockIdx emu_blockIdx
#define gridDim emu_gridDim
inline void __syncthreads() { emu_barrier->arrive_and_wait(); }

#define GASCA_EMULATE_CUDA 1
#include "check_reference.h"
#include "conv_maps.cuh"
#include "tiled_gemm.cuh"

using namespace gasca;
using namespace gasca::cuda;

bool g_narrow = false;  // which tile shape emulate() uses

// Runs the kernel over a (grid_x, 1, slices) grid, block by block (blocks share the kernel's
// static "shared memory", so they must not overlap), threads of a block concurrently.
template <typename T, class Cfg, class A, class B, class O>
void run_grid(const A& a, const B& b, const O& out, int64_t M, int64_t N, int64_t K,
              int64_t k_chunk, unsigned grid_x, unsigned slices) {
  emu_gridDim = {grid_x, 1, slices};
  for (unsigned z = 0; z < slices; ++z)
    for (unsigned x = 0; x < grid_x; ++x) {
      std::barrier<> bar(Cfg::THREADS);
      emu_barrier = &bar;
      std::vector<std::thread> threads;
      for (int t = 0; t < Cfg::THREADS; ++t)
        threads.emplace_back([&, t] {
          emu_threadIdx = {static_cast<unsigned>(t), 0, 0};
          emu_blockIdx = {x, 0, z};
          tiled_gemm_kernel<T, Cfg, A, B, O>(a, b, out, M, N, K, k_chunk);
        });
      for (auto& th : threads) th.join();
    }
}

// As launch_tiled_gemm_with: one slice, or `splits` slices into a workspace summed in order.
template <typename T, class Cfg, class A, class B, class O>
void emulate_with(const A& a, const B& b, const O& out, int64_t M, int64_t N, int64_t K,
                  int64_t splits, unsigned grid_cap) {
  const int64_t tiles = ceil_div(M, Cfg::BM) * ceil_div(N, Cfg::BN);
  if (tiles == 0) return;
  const unsigned grid_x = static_cast<unsigned>(tiles < grid_cap ? tiles : grid_cap);
  const int64_t k_chunk = splits > 1 ? ceil_div(ceil_div(K, splits), Cfg::BK) * Cfg::BK : 0;
  const int64_t slices = splits > 1 && K > 0 ? ceil_div(K, k_chunk) : 1;
  if (slices == 1) {
    const int64_t whole = K > 0 ? ceil_div(K, Cfg::BK) * Cfg::BK : Cfg::BK;
    run_grid<T, Cfg>(a, b, out, M, N, K, whole, grid_x, 1);
    return;
  }
  std::vector<T> ws(slices * M * N, T(NAN));
  run_grid<T, Cfg>(a, b, SliceOut<T>{ws.data(), M, N}, M, N, K, k_chunk, grid_x,
                   static_cast<unsigned>(slices));
  for (int64_t idx = 0; idx < M * N; ++idx) reduce_slices_one(ws.data(), slices, M, N, out, idx);
}

// Both tile shapes are checked on every problem (the launcher picks one by M).
template <typename T, class A, class B, class O>
void emulate(const A& a, const B& b, const O& out, int64_t M, int64_t N, int64_t K,
             int64_t splits, unsigned grid_cap) {
  if (g_narrow)
    emulate_with<T, TileConfig<T, true>>(a, b, out, M, N, K, splits, grid_cap);
  else
    emulate_with<T, TileConfig<T, false>>(a, b, out, M, N, K, splits, grid_cap);
}

static int failures = 0;

template <typename T>
void check(const char* what, const std::vector<T>& got, const std::vector<double>& want,
           int trial) {
  double scale = 1;
  for (double v : want) scale = std::max(scale, std::fabs(v));
  const double tol = (sizeof(T) == 4 ? 1e-5 : 1e-12) * scale;
  for (size_t i = 0; i < got.size(); ++i)
    if (!(std::fabs(got[i] - want[i]) <= tol)) {
      if (++failures < 10)
        std::printf("FAIL %s (%s, %s tiles) trial %d index %zu: %g vs %g\n", what,
                    sizeof(T) == 4 ? "float" : "double", g_narrow ? "narrow" : "square", trial,
                    i, double(got[i]), want[i]);
      return;
    }
}

template <typename T>
void run_trial(const ConvGeometry& g, int trial, std::mt19937_64& gen) {
  std::normal_distribution<double> normal;
  const int64_t Nb = g.batch, Ci = g.in_channels, Co = g.out_channels, H = g.in_h, W = g.in_w,
                KH = g.kernel_h, KW = g.kernel_w, OH = g.out_h, OW = g.out_w;
  std::vector<T> x(Nb * Ci * H * W), w(Co * Ci * KH * KW), dy(Nb * Co * OH * OW), bias(Co),
      bias_in(Ci);
  for (auto* v : {&x, &w, &dy, &bias, &bias_in})
    for (auto& e : *v) e = T(normal(gen));
  const DirectConv ref = direct_conv(g, x, w, dy, bias, bias_in);
  const std::vector<double>&y_ref = ref.y, &dx_ref = ref.dx, &dw_ref = ref.dw;

  const unsigned grid_cap = 1 + trial % 3;  // small caps exercise the grid-stride tile loop
  const int64_t splits = 1 + trial % 4;      // split-K slices, summed in order
  const int64_t K = Ci * KH * KW;
  std::vector<T> y(dy.size(), T(NAN));
  emulate<T>(ForwardWeights<T>{w.data(), K},
             ForwardImage<T>{x.data(), Ci, H, W, OH, OW, KH, KW, g.stride_h, g.stride_w, g.pad_h,
                             g.pad_w, g.dilation_h, g.dilation_w},
             ForwardOut<T>{y.data(), bias.data(), Co, OH * OW}, Co, Nb * OH * OW, K, splits,
             grid_cap);
  check("forward", y, y_ref, trial);

  std::vector<T> dx(x.size(), T(NAN));
  for (int64_t rh = 0; rh < g.stride_h && rh < H; ++rh)
    for (int64_t rw = 0; rw < g.stride_w && rw < W; ++rw) {
      const PhaseAxis ph = make_phase_axis(rh, H, KH, g.stride_h, g.pad_h, g.dilation_h);
      const PhaseAxis pw = make_phase_axis(rw, W, KW, g.stride_w, g.pad_w, g.dilation_w);
      if (ph.count == 0 || pw.count == 0) continue;
      emulate<T>(InputWeights<T>{w.data(), Ci, KH, KW, ph, pw},
                 InputGrads<T>{dy.data(), Co, OH, OW, ph, pw},
                 InputOut<T>{dx.data(), bias_in.data(), Ci, H, W, g.stride_h, g.stride_w, ph, pw},
                 Ci, Nb * ph.count * pw.count, Co * ph.taps * pw.taps, splits, grid_cap);
    }
  check("backward-input", dx, dx_ref, trial);

  std::vector<T> dw(w.size(), T(NAN));
  emulate<T>(WeightGrads<T>{dy.data(), Co, OH * OW},
             WeightImage<T>{x.data(), Ci, H, W, OH, OW, KH, KW, g.stride_h, g.stride_w, g.pad_h,
                            g.pad_w, g.dilation_h, g.dilation_w},
             WeightOut<T>{dw.data(), K}, Co, K, Nb * OH * OW, splits, grid_cap);
  check("backward-weight", dw, dw_ref, trial);
}

int main() {
  std::mt19937_64 gen(11);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(gen); };
  int cases = 0, smaller = 0;
  for (int trial = 0; cases < 24; ++trial) {
    ConvGeometry g;
    const bool big = trial % 4 == 0;  // channels across the 64-wide tile edges
    g.batch = pick(1, 3);
    g.in_channels = big ? pick(20, 70) : pick(1, 5);
    g.out_channels = big ? pick(50, 140) : pick(1, 6);
    g.kernel_h = pick(1, 5);
    g.kernel_w = pick(1, 5);
    g.stride_h = pick(1, 3);
    g.stride_w = pick(1, 3);
    g.dilation_h = pick(1, 2);
    g.dilation_w = pick(1, 2);
    g.pad_h = pick(0, 2);
    g.pad_w = pick(0, 2);
    g.in_h = pick(1, 13);
    g.in_w = pick(1, 13);
    g.out_h = conv_out_size(g.in_h, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h);
    g.out_w = conv_out_size(g.in_w, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w);
    if (g.out_h <= 0 || g.out_w <= 0) continue;
    // Every fourth geometry with an output smaller than the natural size (the transposed
    // convolution's adjoint when output_padding >= stride, conv2d.h).
    if (trial % 4 == 1) {
      const int64_t natural = g.out_h * g.out_w;
      g.out_h = pick(1, static_cast<int>(g.out_h));
      g.out_w = pick(1, static_cast<int>(g.out_w));
      smaller += g.out_h * g.out_w < natural;
    }
    ++cases;
    for (bool narrow : {false, true}) {
      g_narrow = narrow;
      run_trial<float>(g, trial, gen);
      run_trial<double>(g, trial, gen);
    }
  }
  std::printf("%d geometries checked (float and double, both tile shapes; %d with an output "
              "smaller than the natural size), %d failures\n", cases, smaller, failures);
  return failures == 0 ? 0 : 1;
}
