// tiled_gemm.cuh: the one tiled matrix-product engine every fast CUDA kernel stands on.
//
//   C[m, n] = sum_k A(m, k) * B(k, n)        0 <= m < M, 0 <= n < N, 0 <= k < K
//
// The engine never sees a convolution.  A and B are "operands": small structs that say how
// to fetch A(m, k) and B(k, n) from memory (conv_maps.cuh has the convolution ones, gemm.cu
// the plain-matrix ones), and the "output" struct says where C[m, n] goes and what to add.
// A convolution is a matrix product whose operands are gathered on the fly from the image
// instead of being unfolded into a column matrix first: an *implicit* GEMM.  That saves
// the column buffer (KH*KW times the image) and its round trip through memory.
//
// An operand has the shape
//   struct Operand {
//     struct Line;                      // what one row m of A (one column n of B) needs,
//     Line line(int64_t idx) const;     //   computed once per tile (divisions live here)
//     struct Cursor;                    // a position k along the reduction,
//     Cursor cursor(int64_t k) const;   //   decomposed once per tile...
//     void advance(Cursor&) const;      //   ...then moved k -> k+1 with no division
//     T load(const Line&, const Cursor&) const;   // the value, or 0 in the padding
//   };
// and the output has  int64_t col_offset(int64_t n)  and  void write(m, col_offset, acc).
//
// How a block works (one BM x BN tile of C, e.g. 64 x 64, BK = 16 (float) or 8 (double) k
// at a time; TileConfig below has the shapes):
//   - every thread owns one row of the A tile and one column of the B tile, and loads its
//     share of the next k-tile of both into registers (float: 64 threads, each 16 k of one
//     row and 16 k of one column): loads of the next k-tile are in flight
//     while the current one is multiplied out of shared memory (double buffering with
//     register staging, one __syncthreads per k-tile);
//   - the tile is stored k-major in shared memory (As[k][m], Bs[k][n]) so that the inner
//     loop reads a contiguous run of TM values of A and TN of B for each k;
//   - each thread accumulates a TM x TN block of C in registers (8 x 8 for float, 4 x 4 for
//     double in the square tiles, where twice the registers per value would spill): every value read
//     from shared memory feeds TN (or TM) multiply-adds, which is what moves the kernel from
//     memory-bound to compute-bound.  A thread's rows are two runs of TM/2, half a tile apart
//     (and its columns likewise), so that a warp's reads are broadcasts of a few addresses
//     and its stores to C come out as contiguous runs of 32 columns.
//   - split-K: blockIdx.z takes its own slice of k (k_chunk long) and writes its partial C
//     into a workspace plane; a second pass sums the planes in order (deterministic).  Used
//     where the tiles of C alone are too few to fill the GPU: always a risk for the weight
//     gradient (Co x Ci*KH*KW is small, the reduction over N*OH*OW is long), and for the
//     small layers of gasca-64 at batch 64.
#pragma once
#include "common.cuh"

namespace gasca {
namespace cuda {

// Two tile shapes.  Square 64 x 64 is the default; narrow 32 x 128 (float) / 32 x 64
// (double) serves M <= 32, where a 64-row tile would multiply zeros in half its rows (the
// backward-input pass of a layer with 32 input channels, the forward pass of one with 32
// output channels).  A thread's TM x TN block and the k-depth BK set the register budget:
// 8 x 8 floats, or 4 x 4 doubles (8 x 8 doubles would spill).
template <typename T, bool Narrow>
struct TileConfig;
template <>
struct TileConfig<float, false> {
  static constexpr int BM = 64, BN = 64, BK = 16, TM = 8, TN = 8;
  static constexpr int THREADS = (BM / TM) * (BN / TN);  // 64
};
template <>
struct TileConfig<float, true> {
  static constexpr int BM = 32, BN = 128, BK = 16, TM = 4, TN = 8;
  static constexpr int THREADS = (BM / TM) * (BN / TN);  // 128
};
template <>
struct TileConfig<double, false> {
  static constexpr int BM = 64, BN = 64, BK = 8, TM = 4, TN = 4;
  static constexpr int THREADS = (BM / TM) * (BN / TN);  // 256
};
template <>
struct TileConfig<double, true> {
  static constexpr int BM = 32, BN = 64, BK = 8, TM = 2, TN = 4;
  static constexpr int THREADS = (BM / TM) * (BN / TN);  // 256
};

// GASCA_EMULATE_CUDA: check_tiles.cpp compiles the kernel for the CPU, one std::thread per
// CUDA thread, to test the tiling itself without a GPU.
#if defined(__CUDACC__) || defined(GASCA_EMULATE_CUDA)

template <typename T, class Cfg, class AOp, class BOp, class Out>
__global__ void __launch_bounds__(Cfg::THREADS)
    tiled_gemm_kernel(const AOp a, const BOp b, const Out out, int64_t M, int64_t N, int64_t K,
                      int64_t k_chunk) {
  constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK, TM = Cfg::TM, TN = Cfg::TN;
  constexpr int THREADS_X = BN / TN;  // threads along a row of the C tile
  constexpr int THREADS = Cfg::THREADS;
  constexpr int A_KPT = BK * BM / THREADS;  // k values of the A tile each thread loads
  constexpr int B_KPT = BK * BN / THREADS;
  static_assert(THREADS % BM == 0 && THREADS % BN == 0, "a thread owns one row/column");
  static_assert((BK * BM) % THREADS == 0 && (BK * BN) % THREADS == 0, "even load split");
  static_assert(TM % 2 == 0 && TN % 2 == 0, "rows and columns come in two runs");

  __shared__ T As[2][BK][BM];
  __shared__ T Bs[2][BK][BN];

  const int tid = static_cast<int>(threadIdx.x);
  const int tx = tid % THREADS_X, ty = tid / THREADS_X;
  // Which A row / B column this thread loads, and from which k in the tile.
  const int a_row = tid % BM, a_k0 = (tid / BM) * A_KPT;
  const int b_col = tid % BN, b_k0 = (tid / BN) * B_KPT;
  // The rows / columns of the C tile this thread accumulates (two runs each).
  auto row_of = [&](int i) { return (i < TM / 2 ? 0 : BM / 2) + ty * (TM / 2) + i % (TM / 2); };
  auto col_of = [&](int j) { return (j < TN / 2 ? 0 : BN / 2) + tx * (TN / 2) + j % (TN / 2); };

  const int64_t tiles_m = ceil_div(M, BM), tiles_n = ceil_div(N, BN);
  const int64_t k_begin = static_cast<int64_t>(blockIdx.z) * k_chunk;
  const int64_t k_end = k_begin + k_chunk < K ? k_begin + k_chunk : K;
  const int64_t num_k_tiles = k_end > k_begin ? ceil_div(k_end - k_begin, BK) : 0;

  // Grid-stride over the tiles of C; consecutive blocks take consecutive row tiles of the
  // same column tile, so the B data they share is still in L2.
  for (int64_t tile = blockIdx.x; tile < tiles_m * tiles_n; tile += gridDim.x) {
    const int64_t m0 = (tile % tiles_m) * BM, n0 = (tile / tiles_m) * BN;
    // Rows past M / columns past N load zeros; clamp their index so that line() only ever
    // sees a real row or column.
    const bool a_in = m0 + a_row < M, b_in = n0 + b_col < N;
    const auto a_line = a.line(a_in ? m0 + a_row : M - 1);
    const auto b_line = b.line(b_in ? n0 + b_col : N - 1);

    T a_reg[A_KPT], b_reg[B_KPT];
    auto fetch = [&](int64_t k_tile0) {  // global -> registers
      int64_t k = k_tile0 + a_k0;
      auto ca = a.cursor(k);
#pragma unroll
      for (int r = 0; r < A_KPT; ++r, ++k) {
        a_reg[r] = (a_in && k < k_end) ? a.load(a_line, ca) : T(0);
        a.advance(ca);
      }
      k = k_tile0 + b_k0;
      auto cb = b.cursor(k);
#pragma unroll
      for (int r = 0; r < B_KPT; ++r, ++k) {
        b_reg[r] = (b_in && k < k_end) ? b.load(b_line, cb) : T(0);
        b.advance(cb);
      }
    };
    auto stash = [&](int buf) {  // registers -> shared memory
#pragma unroll
      for (int r = 0; r < A_KPT; ++r) As[buf][a_k0 + r][a_row] = a_reg[r];
#pragma unroll
      for (int r = 0; r < B_KPT; ++r) Bs[buf][b_k0 + r][b_col] = b_reg[r];
    };

    T acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] = T(0);

    if (num_k_tiles > 0) {
      fetch(k_begin);
      stash(0);
      __syncthreads();
      for (int64_t t = 0; t < num_k_tiles; ++t) {
        const int cur = static_cast<int>(t & 1);
        const bool has_next = t + 1 < num_k_tiles;
        // Issue the next tile's global loads first: they complete while we multiply.
        if (has_next) fetch(k_begin + (t + 1) * BK);
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
          T af[TM], bf[TN];
#pragma unroll
          for (int i = 0; i < TM; ++i) af[i] = As[cur][kk][row_of(i)];
#pragma unroll
          for (int j = 0; j < TN; ++j) bf[j] = Bs[cur][kk][col_of(j)];
#pragma unroll
          for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int j = 0; j < TN; ++j) acc[i][j] += af[i] * bf[j];
        }
        // The other buffer was last read in iteration t-1, and every thread has passed the
        // barrier that ended it: safe to overwrite.  The barrier below publishes it.
        if (has_next) stash(cur ^ 1);
        __syncthreads();
      }
    }

    int64_t col_off[TN];
    bool col_in[TN];
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int64_t n = n0 + col_of(j);
      col_in[j] = n < N;
      col_off[j] = col_in[j] ? out.col_offset(n) : 0;
    }
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const int64_t m = m0 + row_of(i);
      if (m >= M) continue;
#pragma unroll
      for (int j = 0; j < TN; ++j)
        if (col_in[j]) out.write(m, col_off[j], acc[i][j]);
    }
  }
}

// ---------------------------------------------------------------- split-K, deterministically
// With split-K, slice z of the reduction writes its partial C into its own plane of a
// workspace, ws[z][m][n]; a second pass adds the planes in a fixed order (z = 0, 1, ...)
// and hands each sum to the real output.  No atomics: the result does not depend on which
// slice finishes first, so every run gives the same bits.
template <typename T>
struct SliceOut {
  T* ws;
  int64_t M, N;
  GASCA_HD int64_t col_offset(int64_t col) const { return col; }
  GASCA_HD void write(int64_t m, int64_t off, T acc) const {
    ws[(static_cast<int64_t>(blockIdx.z) * M + m) * N + off] = acc;
  }
};

// Element idx = m*N + n of the reduction pass (shared with check_tiles.cpp).
template <typename T, class Out>
GASCA_HD void reduce_slices_one(const T* ws, int64_t slices, int64_t M, int64_t N,
                                const Out& out, int64_t idx) {
  const int64_t m = idx / N, n = idx - m * N;
  T sum = ws[m * N + n];
  for (int64_t z = 1; z < slices; ++z) sum += ws[(z * M + m) * N + n];
  out.write(m, out.col_offset(n), sum);
}

#endif  // __CUDACC__ || GASCA_EMULATE_CUDA

#if defined(__CUDACC__)

template <typename T, class Out>
__global__ void reduce_slices_kernel(const T* __restrict__ ws, int64_t slices, int64_t M,
                                     int64_t N, const Out out) {
  for (int64_t idx = global_thread_index(); idx < M * N; idx += global_thread_count())
    reduce_slices_one(ws, slices, M, N, out, idx);
}

// Workspace cap for split-K: beyond it, fewer (longer) slices.
constexpr int64_t kMaxSplitWorkspaceBytes = int64_t(256) << 20;

// How many K-slices make the tiles of C fill the GPU: about four blocks per SM, but never a
// slice shorter than four k-tiles (below that the extra pass costs more than it saves).
template <class Cfg>
int64_t split_k_for(int64_t tiles, int64_t K) {
  if (tiles == 0 || K == 0) return 1;
  const int64_t want = ceil_div(4 * int64_t(multiprocessor_count()), tiles);
  const int64_t most = K / (4 * Cfg::BK);
  const int64_t s = want < most ? want : most;
  return s < 1 ? 1 : s;
}

template <typename T, class Cfg, class AOp, class BOp, class Out>
Status launch_tiled_gemm_with(const char* kernel_name, const AOp& a, const BOp& b,
                              const Out& out, int64_t M, int64_t N, int64_t K, bool split_k,
                              cudaStream_t stream) {
  const int64_t tiles = ceil_div(M, Cfg::BM) * ceil_div(N, Cfg::BN);
  if (tiles == 0) return Status{};
  const int64_t max_blocks = int64_t(1) << 20;  // the tile loop covers the rest
  const unsigned grid_x = static_cast<unsigned>(tiles < max_blocks ? tiles : max_blocks);
  int64_t splits = split_k ? split_k_for<Cfg>(tiles, K) : 1;
  const int64_t plane = M * N * static_cast<int64_t>(sizeof(T));
  if (splits > 1 && splits * plane > kMaxSplitWorkspaceBytes)
    splits = kMaxSplitWorkspaceBytes / plane;
  // Each slice is a whole number of k-tiles; recount the slices after rounding.
  const int64_t k_chunk = splits > 1 ? ceil_div(ceil_div(K, splits), Cfg::BK) * Cfg::BK : 0;
  const int64_t slices = splits > 1 ? ceil_div(K, k_chunk) : 1;
  T* ws = slices > 1 ? static_cast<T*>(workspace_alloc(slices * plane, stream)) : nullptr;
  if (ws == nullptr) {
    // One slice covering all of K (k_chunk = K rounded up to whole k-tiles, at least one).
    const int64_t whole = K > 0 ? ceil_div(K, Cfg::BK) * Cfg::BK : Cfg::BK;
    tiled_gemm_kernel<T, Cfg, AOp, BOp, Out>
        <<<dim3(grid_x, 1, 1), Cfg::THREADS, 0, stream>>>(a, b, out, M, N, K, whole);
    return launch_status(kernel_name);
  }
  const SliceOut<T> partial{ws, M, N};
  tiled_gemm_kernel<T, Cfg, AOp, BOp, SliceOut<T>>
      <<<dim3(grid_x, 1, static_cast<unsigned>(slices)), Cfg::THREADS, 0, stream>>>(
          a, b, partial, M, N, K, k_chunk);
  Status s = launch_status(kernel_name);
  if (s.ok()) {
    reduce_slices_kernel<T, Out><<<elementwise_blocks(M * N), kElementwiseThreads, 0, stream>>>(
        ws, slices, M, N, out);
    s = launch_status("reduce_slices_kernel (split-K sum)");
  }
  workspace_free(ws, stream);  // stream-ordered: reused only after both kernels have run
  return s;
}

// Launches the engine on `stream`, with the narrow tiles when M <= 32.  split_k = true lets
// it cut K into slices when the tiles of C alone are too few to fill the GPU (summed
// deterministically, above).  Returns the launch status.
template <typename T, class AOp, class BOp, class Out>
Status launch_tiled_gemm(const char* kernel_name, const AOp& a, const BOp& b, const Out& out,
                         int64_t M, int64_t N, int64_t K, bool split_k, cudaStream_t stream) {
  if (M <= TileConfig<T, true>::BM)
    return launch_tiled_gemm_with<T, TileConfig<T, true>>(kernel_name, a, b, out, M, N, K,
                                                          split_k, stream);
  return launch_tiled_gemm_with<T, TileConfig<T, false>>(kernel_name, a, b, out, M, N, K,
                                                         split_k, stream);
}

#endif  // __CUDACC__

}  // namespace cuda
}  // namespace gasca
