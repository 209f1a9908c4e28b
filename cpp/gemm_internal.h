// gemm_internal.h: the pieces of the fast gemm (gemm.cpp, version 2) that the convolutions
// reuse to build their own matrix products without materialising im2col matrices.
//
// The fast gemm computes C (m x n) += op(A) (m x k) * op(B) (k x n) in tiles of MR x NR.
// Both operands are first copied ("packed") into the order in which the micro-kernel reads
// them, so that its inner loop touches memory strictly sequentially:
//
//   packed A:  for each KC-deep block of k, for each panel of MR rows:  [kc][MR]
//   packed B:  for each panel of NR columns (within one KC block):      [kc][NR]
//
// One micro-kernel call multiplies an MR x kc panel of A by a kc x NR panel of B and adds
// the MR x NR result into C with alpha/beta; its accumulators never leave the registers.
#pragma once
#include <algorithm>
#include <cstdint>

namespace gasca {
namespace detail {

template <typename T>
struct GemmBlocking;  // MR, NR, KC, NC of the fast micro-kernel for T (see gemm.cpp)

#if defined(__AVX512F__)
template <> struct GemmBlocking<float>  { static constexpr int MR = 8, NR = 32, KC = 256, NC = 512; };
template <> struct GemmBlocking<double> { static constexpr int MR = 8, NR = 16, KC = 256, NC = 256; };
#elif defined(__AVX2__) && defined(__FMA__)
template <> struct GemmBlocking<float>  { static constexpr int MR = 6, NR = 16, KC = 256, NC = 512; };
template <> struct GemmBlocking<double> { static constexpr int MR = 6, NR = 8, KC = 256, NC = 256; };
#else
template <> struct GemmBlocking<float>  { static constexpr int MR = 4, NR = 16, KC = 256, NC = 512; };
template <> struct GemmBlocking<double> { static constexpr int MR = 4, NR = 8, KC = 256, NC = 256; };
#endif

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// Elements of the packed copy of an m x k op(A).
template <typename T>
int64_t packed_a_size(int64_t m, int64_t k) {
  return round_up(m, GemmBlocking<T>::MR) * k;
}

// Pack all of op(A) (m x k; A row-major with row stride lda, transposed when trans_a),
// zero-padding the last panel to MR rows.  Panels [p0, p1) only (for parallel packing).
template <typename T>
void pack_a(bool trans_a, int64_t m, int64_t k, const T* a, int64_t lda, T* dst,
            int64_t panel_begin = 0, int64_t panel_end = -1);

// Pack all of A (m x k, row-major with row stride lda) as one K block of any depth: panel ip
// is [k][MR] at dst + ip * MR * k, so that a block of steps [k0, k0 + kc) of it starts at
// dst + (ip * k + k0) * MR.  The convolution's implicit gemm takes this layout to choose its
// own K blocks (conv2d_fast.cpp: deeper than KC, which saves passes over C).  Same size as
// packed_a_size.
template <typename T>
void pack_a_deep(int64_t m, int64_t k, const T* a, int64_t lda, T* dst);

// Where panel `panel` of KC block `kb` starts in a packed A of m rows.
template <typename T>
inline const T* packed_a_panel(const T* ap, int64_t m, int64_t kb, int64_t panel, int64_t k) {
  constexpr int MR = GemmBlocking<T>::MR, KC = GemmBlocking<T>::KC;
  const int64_t k0 = kb * KC;
  const int64_t kc = std::min<int64_t>(KC, k - k0);
  return ap + round_up(m, MR) * k0 + panel * MR * kc;
}

// Pack rows [k0, k0+kc) and columns [j0, j0+nc) of op(B) into NR-wide panels [kc][NR],
// zero-padding the last panel.
template <typename T>
void pack_b(bool trans_b, int64_t k0, int64_t kc, int64_t j0, int64_t nc, const T* b, int64_t ldb,
            T* dst);

// C[0:mr, 0:nr] = alpha * (Ap * Bp) + beta * C   (beta == 0: C not read)
// Ap: [kc][MR] panel, Bp: [kc][NR] panel, mr <= MR, nr <= NR.
template <typename T>
void micro_kernel(int64_t kc, const T* ap, const T* bp, T* c, int64_t ldc, T alpha, T beta,
                  int mr, int nr);

// The same tile reading B in place (the convolution's implicit gemm): micro_kernel_indirect,
// inline in gemm_micro.h.

// One KC block of the product for a block of C: rows of panels [panel0, panel1) of the
// packed A, all NR panels of the packed B block (nc columns starting at C's column 0).
template <typename T>
void macro_kernel(int64_t m, int64_t k, int64_t kb, const T* ap, int64_t panel0, int64_t panel1,
                  const T* bp, int64_t kc, int64_t nc, T* c, int64_t ldc, T alpha, T beta);

}  // namespace detail
}  // namespace gasca
