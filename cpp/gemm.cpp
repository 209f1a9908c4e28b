// gemm.cpp: C = alpha * op(A) * op(B) + beta * C, row-major.
//
// Versions (pick one with `version`; -1 = the fastest, kGemmFastest below):
//   0  reference: the textbook triple loop, one dot product per element of C.
//   1  blocked + packed, portable micro-kernel, one thread: op(A) and op(B) are copied into
//      MR- and NR-wide panels (packing), so that a 4 x 16 tile of C is computed from two
//      sequential streams; KC x NC blocking keeps the panels in L1/L2.  Plain C++ that the
//      compiler vectorises; no intrinsics, no threads.  This is where most of the gain over
//      version 0 comes from: every element loaded is reused MR or NR times from registers.
//   2  version 1's packing and blocking with an explicit SIMD micro-kernel (AVX-512: an 8 x 32
//      float / 8 x 16 double tile in 16 zmm accumulators; AVX2/FMA: 6 x 16 / 6 x 8 in 12 ymm;
//      chosen at compile time, the build uses -march=native), multithreaded with OpenMP:
//      threads split the columns of C (or its rows when C is narrow) and pack their own B.
//
// Loop order of versions 1 and 2 (BLIS's, with the roles of A and B swapped because our
// vectors run along the rows of C):
//   for jc in columns of C, step NC         (a thread's share of C)
//     for pc in k, step KC                  pack B[pc:pc+KC, jc:jc+NC] -> L2-resident block
//       for ir in rows of C, step MR        A panel [KC][MR] (packed once, up front) -> L1
//         for jr in jc..jc+NC, step NR      micro-kernel: C[ir, jr] += A panel * B panel
// The A panel is reused across every B panel of the block from L1; the B block is reused
// across every A panel from L2; C's tile lives in registers for the whole KC loop.
//
// The pieces (packing, micro-kernel, macro-kernel) are exported through gemm_internal.h:
// conv2d_fast.cpp builds its products from them, including micro_kernel_indirect, the same
// register tile reading B in place from rows at given offsets (the implicit-gemm
// convolution, which never packs its column matrix).
//
// Every faster version is checked against version 0 by tests/test_kernels_gemm.py.
#include "gemm.h"
#include "simd.h"  // first: it includes <immintrin.h> (see the note there)

#include <algorithm>
#include <atomic>
#include <cstring>
#include <stdexcept>

#ifdef GASCA_OPENMP
#include <omp.h>
#endif

#include "gemm_internal.h"
#include "gemm_micro.h"
#include "workspace.h"

namespace gasca {

// ------------------------------------------------------------------ threads
namespace {
std::atomic<int> g_num_threads{0};  // 0 = not set: use OpenMP's default
}

int get_num_threads() {
#ifdef GASCA_OPENMP
  const int n = g_num_threads.load();
  return n > 0 ? n : omp_get_max_threads();
#else
  return 1;
#endif
}

void set_num_threads(int n) { g_num_threads.store(std::max(1, n)); }

// ------------------------------------------------------------------ version 0: reference
template <typename T>
static void gemm_reference(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha,
                           const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c,
                           int64_t ldc) {
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      T sum = 0;
      for (int64_t p = 0; p < k; ++p) {
        const T aip = ta ? a[p * lda + i] : a[i * lda + p];
        const T bpj = tb ? b[j * ldb + p] : b[p * ldb + j];
        sum += aip * bpj;
      }
      // beta == 0 must not read C: it may hold NaN or garbage.
      c[i * ldc + j] = beta == T(0) ? alpha * sum : alpha * sum + beta * c[i * ldc + j];
    }
  }
}

// ------------------------------------------------------------------ packing (versions 1, 2)
using detail::ceil_div;
using detail::round_up;

// op(A) rows [i0, i0+MR) x cols [k0, k0+kc) -> dst[kc][MR], zero rows past m.
template <typename T, int MR>
static void pack_a_panel(bool ta, int64_t m, const T* a, int64_t lda, int64_t i0, int64_t k0,
                         int64_t kc, T* dst) {
  const int64_t rows = std::min<int64_t>(MR, m - i0);
  if (ta) {  // op(A)(i, p) = a[p*lda + i]: MR contiguous elements per p
    for (int64_t p = 0; p < kc; ++p) {
      const T* src = a + (k0 + p) * lda + i0;
      T* d = dst + p * MR;
      for (int64_t r = 0; r < rows; ++r) d[r] = src[r];
      for (int64_t r = rows; r < MR; ++r) d[r] = T(0);
    }
  } else {  // op(A)(i, p) = a[i*lda + p]: read each row sequentially, write with stride MR
    for (int64_t r = 0; r < rows; ++r) {
      const T* src = a + (i0 + r) * lda + k0;
      for (int64_t p = 0; p < kc; ++p) dst[p * MR + r] = src[p];
    }
    for (int64_t r = rows; r < MR; ++r)
      for (int64_t p = 0; p < kc; ++p) dst[p * MR + r] = T(0);
  }
}

template <typename T, int MR, int KC>
static void pack_a_all(bool ta, int64_t m, int64_t k, const T* a, int64_t lda, T* dst,
                       int64_t panel_begin, int64_t panel_end) {
  const int64_t mp = round_up(m, MR);
  if (panel_end < 0) panel_end = mp / MR;
  for (int64_t k0 = 0; k0 < k; k0 += KC) {
    const int64_t kc = std::min<int64_t>(KC, k - k0);
    for (int64_t ip = panel_begin; ip < panel_end; ++ip)
      pack_a_panel<T, MR>(ta, m, a, lda, ip * MR, k0, kc, dst + mp * k0 + ip * MR * kc);
  }
}

// op(B) rows [k0, k0+kc) x cols [j0, j0+nc) -> NR-wide panels [kc][NR], zero cols past nc.
template <typename T, int NR>
static void pack_b_block(bool tb, int64_t k0, int64_t kc, int64_t j0, int64_t nc, const T* b,
                         int64_t ldb, T* dst) {
  const int64_t panels = ceil_div(nc, NR);
  if (!tb) {
    // op(B)(p, j) = b[p*ldb + j]: walk each row of B once, left to right, dealing its NR-wide
    // pieces out to the panels (row by row keeps the reads on one page at a time).
    for (int64_t p = 0; p < kc; ++p) {
      const T* src = b + (k0 + p) * ldb + j0;
      for (int64_t jp = 0; jp < panels; ++jp) {
        const int64_t cols = std::min<int64_t>(NR, nc - jp * NR);
        T* dp = dst + jp * NR * kc + p * NR;
        if (cols == NR) {
          std::memcpy(dp, src + jp * NR, sizeof(T) * NR);
        } else {
          for (int64_t c = 0; c < cols; ++c) dp[c] = src[jp * NR + c];
          for (int64_t c = cols; c < NR; ++c) dp[c] = T(0);
        }
      }
    }
    return;
  }
  // op(B)(p, j) = b[j*ldb + p]: a transpose.
  for (int64_t jp = 0; jp < panels; ++jp) {
    const int64_t cols = std::min<int64_t>(NR, nc - jp * NR);
    T* d = dst + jp * NR * kc;
#if defined(__AVX512F__)
    // Full panels: each row of the panel is NR elements, one from each of NR rows of b, so
    // gather them a vector at a time (Zen 4 / Skylake gathers beat scalar transposes here).
    if (cols == NR && ldb <= (int64_t(1) << 31) / NR) {
      if constexpr (sizeof(T) == 4 && NR % 16 == 0) {
        const __m512i idx = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(static_cast<int>(ldb)));
        for (int64_t p = 0; p < kc; ++p)
          for (int v = 0; v < NR / 16; ++v)
            _mm512_storeu_ps(reinterpret_cast<float*>(d + p * NR + v * 16),
                             _mm512_mask_i32gather_ps(_mm512_setzero_ps(), __mmask16(0xFFFF), idx, reinterpret_cast<const float*>(
                                                          b + (j0 + jp * NR + v * 16) * ldb + k0 + p), 4));
        continue;
      } else if constexpr (sizeof(T) == 8 && NR % 8 == 0) {
        const __m256i idx = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                               _mm256_set1_epi32(static_cast<int>(ldb)));
        for (int64_t p = 0; p < kc; ++p)
          for (int v = 0; v < NR / 8; ++v)
            _mm512_storeu_pd(reinterpret_cast<double*>(d + p * NR + v * 8),
                             _mm512_mask_i32gather_pd(_mm512_setzero_pd(), __mmask8(0xFF), idx, reinterpret_cast<const double*>(
                                                          b + (j0 + jp * NR + v * 8) * ldb + k0 + p), 8));
        continue;
      }
    }
#endif
    for (int64_t c = 0; c < cols; ++c) {
      const T* src = b + (j0 + jp * NR + c) * ldb + k0;
      for (int64_t p = 0; p < kc; ++p) d[p * NR + c] = src[p];
    }
    for (int64_t c = cols; c < NR; ++c)
      for (int64_t p = 0; p < kc; ++p) d[p * NR + c] = T(0);
  }
}

// ------------------------------------------------------------------ version 1 micro-kernel
// A 4 x 16 tile in plain C++: the compiler keeps acc in vector registers and vectorises the
// j loop; the i loop is unrolled.
static constexpr int kPortableMR = 4, kPortableNR = 16, kPortableKC = 256, kPortableNC = 512;

template <typename T>
static void micro_kernel_portable(int64_t kc, const T* ap, const T* bp, T* c, int64_t ldc,
                                  T alpha, T beta, int mr, int nr) {
  constexpr int MR = kPortableMR, NR = kPortableNR;
  T acc[MR * NR] = {};
  for (int64_t p = 0; p < kc; ++p) {
    const T* a = ap + p * MR;
    const T* b = bp + p * NR;
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i)
#pragma omp simd
      for (int j = 0; j < NR; ++j) acc[i * NR + j] += a[i] * b[j];
  }
  detail::store_tile<T, NR>(acc, c, ldc, alpha, beta, mr, nr);
}

template <typename T>
static void gemm_blocked_portable(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha,
                                  const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c,
                                  int64_t ldc) {
  constexpr int MR = kPortableMR, NR = kPortableNR, KC = kPortableKC, NC = kPortableNC;
  const int64_t mp = round_up(m, MR);
  T* ap = detail::scratch<T>(detail::kSlotGemm, mp * k + int64_t(KC) * NC);
  T* bp = ap + mp * k;
  pack_a_all<T, MR, KC>(ta, m, k, a, lda, ap, 0, -1);
  for (int64_t jc = 0; jc < n; jc += NC) {
    const int64_t nc = std::min<int64_t>(NC, n - jc);
    for (int64_t k0 = 0; k0 < k; k0 += KC) {
      const int64_t kc = std::min<int64_t>(KC, k - k0);
      pack_b_block<T, NR>(tb, k0, kc, jc, nc, b, ldb, bp);
      const T beta_k = k0 == 0 ? beta : T(1);  // later K blocks accumulate
      for (int64_t ip = 0; ip * MR < m; ++ip) {
        const T* a_panel = ap + mp * k0 + ip * MR * kc;
        for (int64_t jp = 0; jp * NR < nc; ++jp)
          micro_kernel_portable<T>(kc, a_panel, bp + jp * NR * kc, c + ip * MR * ldc + jc + jp * NR,
                                   ldc, alpha, beta_k, static_cast<int>(std::min<int64_t>(MR, m - ip * MR)),
                                   static_cast<int>(std::min<int64_t>(NR, nc - jp * NR)));
      }
    }
  }
}

// ------------------------------------------------------------------ version 2 micro-kernel
namespace detail {

#ifdef GASCA_GEMM_SIMD
template <typename T>
void micro_kernel(int64_t kc, const T* ap, const T* bp, T* c, int64_t ldc, T alpha, T beta,
                  int mr, int nr) {
  using S = Simd<T>;
  constexpr int NR = GemmBlocking<T>::NR, W = S::W;
  micro_kernel_impl<T>(kc, ap, [bp](int64_t p, int v) { return S::load(bp + p * NR + v * W); },
                       c, ldc, alpha, beta, mr, nr);
}

#else
// No SIMD instruction set known at compile time: the portable kernel, at the fast blocking.
template <typename T>
void micro_kernel(int64_t kc, const T* ap, const T* bp, T* c, int64_t ldc, T alpha, T beta,
                  int mr, int nr) {
  constexpr int MR = GemmBlocking<T>::MR, NR = GemmBlocking<T>::NR;
  T acc[MR * NR] = {};
  for (int64_t p = 0; p < kc; ++p)
    for (int i = 0; i < MR; ++i)
#pragma omp simd
      for (int j = 0; j < NR; ++j) acc[i * NR + j] += ap[p * MR + i] * bp[p * NR + j];
  store_tile<T, NR>(acc, c, ldc, alpha, beta, mr, nr);
}

#endif

template <typename T>
void pack_a(bool trans_a, int64_t m, int64_t k, const T* a, int64_t lda, T* dst,
            int64_t panel_begin, int64_t panel_end) {
  pack_a_all<T, GemmBlocking<T>::MR, GemmBlocking<T>::KC>(trans_a, m, k, a, lda, dst, panel_begin,
                                                          panel_end);
}

template <typename T>
void pack_a_deep(int64_t m, int64_t k, const T* a, int64_t lda, T* dst) {
  constexpr int MR = GemmBlocking<T>::MR;
  for (int64_t ip = 0; ip * MR < m; ++ip)
    pack_a_panel<T, MR>(false, m, a, lda, ip * MR, 0, k, dst + ip * MR * k);
}

template <typename T>
void pack_b(bool trans_b, int64_t k0, int64_t kc, int64_t j0, int64_t nc, const T* b, int64_t ldb,
            T* dst) {
  pack_b_block<T, GemmBlocking<T>::NR>(trans_b, k0, kc, j0, nc, b, ldb, dst);
}

// The order of the tiles: B panels outer, A panels inner, in blocks of kMacroPanels A
// panels.  A B panel (kc x NR: 32 KB under AVX-512) is the operand the tile loads whole
// vectors of, NR floats a step against A's MR scalars, so it is the one to keep in L1
// while the block's A panels stream past it from L2 (the block: 32 panels of 256 steps,
// 256 KB under AVX-512, 192 KB under AVX2, within L2).  With A panels outer instead, every
// B panel came from L2 again for each A panel: this order made the gemm 1.06-1.5x faster on
// 1024^3 and the small-map convolutions' shapes (AVX-512, Zen 4, two threads, interleaved).
constexpr int64_t kMacroPanels = 32;

template <typename T>
void macro_kernel(int64_t m, int64_t k, int64_t kb, const T* ap, int64_t panel0, int64_t panel1,
                  const T* bp, int64_t kc, int64_t nc, T* c, int64_t ldc, T alpha, T beta) {
  constexpr int MR = GemmBlocking<T>::MR, NR = GemmBlocking<T>::NR;
  for (int64_t i0 = panel0; i0 < panel1; i0 += kMacroPanels) {
    const int64_t i1 = std::min(panel1, i0 + kMacroPanels);
    for (int64_t jp = 0; jp * NR < nc; ++jp) {
      const int nr = static_cast<int>(std::min<int64_t>(NR, nc - jp * NR));
      for (int64_t ip = i0; ip < i1; ++ip) {
        const int mr = static_cast<int>(std::min<int64_t>(MR, m - ip * MR));
        micro_kernel<T>(kc, packed_a_panel<T>(ap, m, kb, ip, k), bp + jp * NR * kc,
                        c + ip * MR * ldc + jp * NR, ldc, alpha, beta, mr, nr);
      }
    }
  }
}

#define GASCA_INSTANTIATE(T)                                                                   \
  template void micro_kernel<T>(int64_t, const T*, const T*, T*, int64_t, T, T, int, int);     \
  template void pack_a<T>(bool, int64_t, int64_t, const T*, int64_t, T*, int64_t, int64_t);    \
  template void pack_a_deep<T>(int64_t, int64_t, const T*, int64_t, T*);                       \
  template void pack_b<T>(bool, int64_t, int64_t, int64_t, int64_t, const T*, int64_t, T*);    \
  template void macro_kernel<T>(int64_t, int64_t, int64_t, const T*, int64_t, int64_t,         \
                                const T*, int64_t, int64_t, T*, int64_t, T, T);
GASCA_INSTANTIATE(float)
GASCA_INSTANTIATE(double)
#undef GASCA_INSTANTIATE

}  // namespace detail

template <typename T>
static void gemm_fast(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
                      int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  using B = detail::GemmBlocking<T>;
  constexpr int MR = B::MR, NR = B::NR, KC = B::KC, NC = B::NC;
  const int64_t m_panels = ceil_div(m, MR), n_panels = ceil_div(n, NR);
  // Threads: one per ~2 MFLOP of work at least, so that tiny products do not pay a fork.
  const int64_t work = m * n * k;
  int nt = static_cast<int>(std::min<int64_t>(get_num_threads(), std::max<int64_t>(1, work >> 20)));
  // Split the columns of C when there are enough of them, else its rows.
  const bool split_n = n_panels >= 2 * nt || m_panels < nt;
  if (split_n) nt = static_cast<int>(std::min<int64_t>(nt, n_panels));
  else nt = static_cast<int>(std::min<int64_t>(nt, m_panels));
  nt = std::max(nt, 1);

  const int64_t a_size = detail::round_up(detail::packed_a_size<T>(m, k), 64);
  const int64_t b_size = int64_t(KC) * round_up(std::min<int64_t>(NC, n), NR);
  T* ws = detail::scratch<T>(detail::kSlotGemm, a_size + nt * b_size);

#pragma omp parallel num_threads(nt) if (nt > 1)
  {
#ifdef GASCA_OPENMP
    const int tid = omp_get_thread_num();
    const int nth = omp_get_num_threads();
#else
    const int tid = 0, nth = 1;
#endif
    // Pack all of op(A) once, the threads sharing the panels.
    {
      const int64_t p0 = m_panels * tid / nth, p1 = m_panels * (tid + 1) / nth;
      detail::pack_a<T>(ta, m, k, a, lda, ws, p0, p1);
    }
#pragma omp barrier
    T* bp = ws + a_size + tid * b_size;
    int64_t j_begin = 0, j_end = n, panel0 = 0, panel1 = m_panels;
    if (split_n) {
      j_begin = std::min(n, n_panels * tid / nth * NR);
      j_end = std::min(n, n_panels * (tid + 1) / nth * NR);
    } else {
      panel0 = m_panels * tid / nth;
      panel1 = m_panels * (tid + 1) / nth;
    }
    for (int64_t jc = j_begin; jc < j_end; jc += NC) {
      const int64_t nc = std::min<int64_t>(NC, j_end - jc);
      for (int64_t kb = 0; kb * KC < k; ++kb) {
        const int64_t k0 = kb * KC, kc = std::min<int64_t>(KC, k - k0);
        detail::pack_b<T>(tb, k0, kc, jc, nc, b, ldb, bp);
        detail::macro_kernel<T>(m, k, kb, ws, panel0, panel1, bp, kc, nc, c + jc, ldc, alpha,
                                kb == 0 ? beta : T(1));
      }
    }
  }
}

// ------------------------------------------------------------------ dispatch
static const char* const kGemmVersionNames[] = {
    "reference triple loop",
    "blocked + packed, portable 4x16 micro-kernel, 1 thread",
#if defined(__AVX512F__)
    "blocked + packed, AVX-512 8x32 (f32) / 8x16 (f64) micro-kernel, OpenMP",
#elif defined(__AVX2__) && defined(__FMA__)
    "blocked + packed, AVX2/FMA 6x16 (f32) / 6x8 (f64) micro-kernel, OpenMP",
#else
    "blocked + packed, portable micro-kernel, OpenMP",
#endif
};
static constexpr int kGemmVersions = sizeof(kGemmVersionNames) / sizeof(kGemmVersionNames[0]);
static constexpr int kGemmFastest = 2;  // what version -1 picks (a version added after it does not move it)
static_assert(kGemmFastest < kGemmVersions, "kGemmFastest must name a version");

int gemm_num_versions() { return kGemmVersions; }
int gemm_fastest_version() { return kGemmFastest; }
const char* gemm_version_name(int version) {
  return (version >= 0 && version < kGemmVersions) ? kGemmVersionNames[version] : "";
}

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
          int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc, int version) {
  if (version < -1 || version >= kGemmVersions) throw std::invalid_argument("gemm: no such version");
  if (version < 0) version = kGemmFastest;
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {  // C = beta * C (and never read C when beta == 0)
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == T(0) ? T(0) : beta * c[i * ldc + j];
    return;
  }
  switch (version) {
    case 0: gemm_reference<T>(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc); return;
    case 1: gemm_blocked_portable<T>(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc); return;
    case 2: gemm_fast<T>(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc); return;
  }
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                          const float*, int64_t, float, float*, int64_t, int);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*,
                           int64_t, const double*, int64_t, double, double*, int64_t, int);

}  // namespace gasca
