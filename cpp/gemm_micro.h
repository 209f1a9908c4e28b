// gemm_micro.h: the register tile of the fast gemm (version 2), in a header so that the
// convolution's implicit gemm (conv2d_fast.cpp) inlines it: a call per tile costs as much
// as a tenth of the tile's work when a K block is short (gasca layer 1: 25 taps).
//
// Include simd.h first (it brings <immintrin.h>; see the note there).
#pragma once
#include <cstdint>

#include "gemm_internal.h"
#include "simd.h"

#if defined(__GNUC__)
#define GASCA_ALWAYS_INLINE __attribute__((always_inline))
#else
#define GASCA_ALWAYS_INLINE
#endif

namespace gasca {
namespace detail {

// Write an MR x NR accumulator tile (row-major in acc) into C with alpha/beta, clipped.
template <typename T, int NR>
inline void store_tile(const T* acc, T* c, int64_t ldc, T alpha, T beta, int mr, int nr) {
  for (int i = 0; i < mr; ++i) {
    T* ci = c + i * ldc;
    const T* ai = acc + i * NR;
    if (beta == T(0))
      for (int j = 0; j < nr; ++j) ci[j] = alpha * ai[j];
    else
      for (int j = 0; j < nr; ++j) ci[j] = alpha * ai[j] + beta * ci[j];
  }
}

#ifdef GASCA_GEMM_SIMD
// The register tile: MR x NR of C in MR * NV vector accumulators (NV = NR / W).  Each step of
// k loads NV vectors of B, broadcasts MR scalars of A, and issues MR * NV independent FMAs:
// enough independent chains to cover the FMA latency, few enough to stay in registers.
//
// `brow(p, v)` loads vector v of row p of the B panel: from the packed panel for gemm, or
// from rows of a phase-split image for the convolution's implicit gemm (no packing).
//
// An edge panel of at most MR / 2 valid rows (gasca's 32 and 128 output channels leave 2 of
// 6 in the last panel) would still cost the full tile's time.  It takes micro_kernel_half:
// MR / 2 rows with two sets of accumulators, one for even and one for odd steps of k, so
// that as many independent FMA chains are in flight as in the full tile, in half the time.
template <typename T, class ARow, class BRow>
inline void micro_kernel_half(int64_t kc, ARow arow, BRow brow, T* c, int64_t ldc,
                                     T alpha, T beta, int mr, int nr, const T* init) {
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int MR = GemmBlocking<T>::MR, NR = GemmBlocking<T>::NR, W = S::W, NV = NR / W;
  constexpr int H = MR / 2;
  V even[H][NV], odd[H][NV];
#pragma GCC unroll 8
  for (int i = 0; i < H; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) even[i][v] = odd[i][v] = S::zero();
  if (init)
    for (int i = 0; i < mr; ++i)
      for (int v = 0; v < NV; ++v) even[i][v] = S::set1(init[i]);
  int64_t p = 0;
  for (; p + 1 < kc; p += 2) {
    // Step p into the even set, then step p + 1 into the odd one: only one step's B vectors
    // are live at a time, so that the 2 * H * NV accumulators fit AVX2's 16 registers too
    // (interleaving the two steps spilled two accumulators to the stack there).
    V bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = brow(p, v);
#pragma GCC unroll 8
    for (int i = 0; i < H; ++i) {
      const V a = S::set1(arow(p, i));
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) even[i][v] = S::fma(a, bv[v], even[i][v]);
    }
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = brow(p + 1, v);
#pragma GCC unroll 8
    for (int i = 0; i < H; ++i) {
      const V a = S::set1(arow(p + 1, i));
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) odd[i][v] = S::fma(a, bv[v], odd[i][v]);
    }
  }
  if (p < kc) {
    V b0[NV];
    for (int v = 0; v < NV; ++v) b0[v] = brow(p, v);
    for (int i = 0; i < H; ++i) {
      const V a0 = S::set1(arow(p, i));
      for (int v = 0; v < NV; ++v) even[i][v] = S::fma(a0, b0[v], even[i][v]);
    }
  }
  alignas(64) T tile[H * NR];
  for (int i = 0; i < H; ++i)
    for (int v = 0; v < NV; ++v) S::store(tile + i * NR + v * W, S::add(even[i][v], odd[i][v]));
  store_tile<T, NR>(tile, c, ldc, alpha, beta, mr, nr);
}

// The full tile.  `arow(p, i)` reads element i of step p of the A panel: from the packed
// panel for gemm (micro_kernel_impl), or out of the phase image for the weight gradient's
// implicit gemm (micro_kernel_gather_a).
template <typename T, class ARow, class BRow>
GASCA_ALWAYS_INLINE inline void micro_kernel_ab(int64_t kc, ARow arow, BRow brow, T* c,
                                                int64_t ldc, T alpha, T beta, int mr, int nr,
                                                const T* init = nullptr) {
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int MR = GemmBlocking<T>::MR, NR = GemmBlocking<T>::NR, W = S::W, NV = NR / W;
  if (mr <= MR / 2) return micro_kernel_half<T>(kc, arow, brow, c, ldc, alpha, beta, mr, nr, init);
  V acc[MR][NV];
  if (init && mr == MR) {  // the accumulators start at the row's initial value (a bias)
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = S::set1(init[i]);
  } else {
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = S::zero();
    if (init)  // an edge panel: only its mr rows have values (the rest are never stored)
      for (int i = 0; i < mr; ++i)
        for (int v = 0; v < NV; ++v) acc[i][v] = S::set1(init[i]);
  }
#pragma GCC unroll 4
  for (int64_t p = 0; p < kc; ++p) {
    V bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = brow(p, v);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const V a = S::set1(arow(p, i));
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = S::fma(a, bv[v], acc[i][v]);
    }
  }
  if (mr == MR && nr == NR) {
    const V va = S::set1(alpha);
    if (beta == T(0)) {
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) S::store(c + i * ldc + v * W, S::mul(va, acc[i][v]));
    } else if (beta == T(1) && alpha == T(1)) {
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v)
          S::store(c + i * ldc + v * W, S::add(acc[i][v], S::load(c + i * ldc + v * W)));
    } else {
      const V vb = S::set1(beta);
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v)
          S::store(c + i * ldc + v * W,
                   S::fma(va, acc[i][v], S::mul(vb, S::load(c + i * ldc + v * W))));
    }
  } else {  // edge tile: spill to memory, store the valid part
    alignas(64) T tile[MR * NR];
    for (int i = 0; i < MR; ++i)
      for (int v = 0; v < NV; ++v) S::store(tile + i * NR + v * W, acc[i][v]);
    store_tile<T, NR>(tile, c, ldc, alpha, beta, mr, nr);
  }
}

// The tile with a packed A panel ([kc][MR]).
template <typename T, class BRow>
GASCA_ALWAYS_INLINE inline void micro_kernel_impl(int64_t kc, const T* ap, BRow brow, T* c,
                                                  int64_t ldc, T alpha, T beta, int mr, int nr,
                                                  const T* init = nullptr) {
  constexpr int MR = GemmBlocking<T>::MR;
  micro_kernel_ab<T>(kc, [ap](int64_t p, int i) { return ap[p * MR + i]; }, brow, c, ldc, alpha,
                     beta, mr, nr, init);
}

// The tile with the A panel read in place and B packed ([kc][NR]): element i of step p of A
// is rows[i][pix[p]] (MR row pointers; rows past mr repeat a valid one and are never
// stored).  The weight gradient reads its column matrix this way out of the phase image:
// row i is a kernel tap, pix[p] the offset of output pixel p.
template <typename T>
inline void micro_kernel_gather_a(int64_t kc, const T* const* rows, const int64_t* pix,
                                  const T* bp, T* c, int64_t ldc, T alpha, T beta, int mr,
                                  int nr) {
  using S = Simd<T>;
  constexpr int NR = GemmBlocking<T>::NR, W = S::W;
  micro_kernel_ab<T>(kc, [rows, pix](int64_t p, int i) { return rows[i][pix[p]]; },
                     [bp](int64_t p, int v) { return S::load(bp + p * NR + v * W); }, c, ldc,
                     alpha, beta, mr, nr);
}

// The same tile with the B panel read in place instead of packed: row p of the panel is
// NR / W vectors (W = the SIMD width, Simd<T>::W) at base + row_off[p] + vec_off[v].  With
// `halves`, each vector is two half-vectors at vec_off[2v] and vec_off[2v + 1] (for output
// rows of W / 2 pixels).  The convolution's implicit gemm reads its column matrix this way
// straight out of the phase-split image.  (A build without SIMD has W = 1: NR offsets.)
// `init`, when given, holds mr values: row i's accumulators start at init[i] instead of 0,
// so C[i, :] = alpha * (init[i] + (Ap * Bp)[i, :]) + beta * C[i, :] (the convolution's bias,
// added in the first K block without a pass of its own over the output).
template <typename T>
GASCA_ALWAYS_INLINE inline void micro_kernel_indirect(int64_t kc, const T* ap, const T* base,
                                                      const int64_t* row_off,
                                                      const int64_t* vec_off, bool halves, T* c,
                                                      int64_t ldc, T alpha, T beta, int mr,
                                                      int nr, const T* init) {
  using S = Simd<T>;
  if (halves)  // each vector from two half-vectors at independent offsets
    micro_kernel_impl<T>(kc, ap,
                         [base, row_off, vec_off](int64_t p, int v) {
                           const T* r = base + row_off[p];
                           return S::load_halves(r + vec_off[2 * v], r + vec_off[2 * v + 1]);
                         },
                         c, ldc, alpha, beta, mr, nr, init);
  else
    micro_kernel_impl<T>(kc, ap,
                         [base, row_off, vec_off](int64_t p, int v) {
                           return S::load(base + row_off[p] + vec_off[v]);
                         },
                         c, ldc, alpha, beta, mr, nr, init);
}
#else
template <typename T>
inline void micro_kernel_indirect(int64_t kc, const T* ap, const T* base, const int64_t* row_off,
                           const int64_t* vec_off, bool /*halves: W = 1 has none*/, T* c,
                           int64_t ldc, T alpha, T beta, int mr, int nr, const T* init) {
  constexpr int MR = GemmBlocking<T>::MR, NR = GemmBlocking<T>::NR;
  T acc[MR * NR] = {};
  if (init)
    for (int i = 0; i < mr; ++i)
      for (int j = 0; j < NR; ++j) acc[i * NR + j] = init[i];
  for (int64_t p = 0; p < kc; ++p)
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[i * NR + j] += ap[p * MR + i] * base[row_off[p] + vec_off[j]];
  store_tile<T, NR>(acc, c, ldc, alpha, beta, mr, nr);
}
template <typename T>
inline void micro_kernel_gather_a(int64_t kc, const T* const* rows, const int64_t* pix,
                                  const T* bp, T* c, int64_t ldc, T alpha, T beta, int mr,
                                  int nr) {
  constexpr int MR = GemmBlocking<T>::MR, NR = GemmBlocking<T>::NR;
  T acc[MR * NR] = {};
  for (int64_t p = 0; p < kc; ++p)
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[i * NR + j] += rows[i][pix[p]] * bp[p * NR + j];
  store_tile<T, NR>(acc, c, ldc, alpha, beta, mr, nr);
}
#endif

}  // namespace detail
}  // namespace gasca
