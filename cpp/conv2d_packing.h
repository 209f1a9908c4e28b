// conv2d_packing.h: conv2d version 2's packing: the column matrix (or its transpose) of a
// phase-split image copied straight into the fast gemm's B panels (gemm_internal.h), for
// the products that cannot read it in place.
//
// Versions of conv2d (the full map atop conv2d.cpp):
//   0  reference     conv2d.cpp
//   1  im2col+gemm   conv2d_im2col.cpp
//   2  fast          conv2d_fast.cpp, from these pieces: conv2d_rows.h (row copies),
//                    conv2d_phase_image.h, conv2d_packing.h (this file), conv2d_threads.h
//
// pack_b_im2col serves the forward pass when its output rows are not whole SIMD vectors
// (forward_packed); pack_b_taps serves the weight gradient (backward_weight_gemm).
#pragma once

#include "simd.h"  // first: it includes <immintrin.h> (see the note there)

#include <algorithm>
#include <cstdint>

#include "conv2d.h"
#include "conv2d_phase_image.h"
#include "conv2d_rows.h"    // low_mask16 / low_mask8
#include "gemm_internal.h"  // GemmBlocking

namespace gasca {
namespace conv2d_v2 {
namespace {  // private to conv2d_fast.cpp, the one file that includes this

// Pack rows [k0, k0+kc) x columns [q0, q0+nc) of image x's column matrix straight into the
// fast gemm's B panels ([kc][NR] each), zero columns past the last pixel.
template <typename T>
void pack_b_im2col(const ConvGeometry& g, const PhaseImage& pi, const T* xp, int64_t k0,
                   int64_t kc, int64_t q0, int64_t nc, T* dst) {
  constexpr int NR = detail::GemmBlocking<T>::NR;
  for (int64_t jp = 0; jp * NR < nc; ++jp) {
    const int64_t a = q0 + jp * NR, cols = std::min<int64_t>(NR, nc - jp * NR);
    T* panel = dst + jp * NR * kc;
    im2col_block(g, pi, xp, k0, k0 + kc, a, a + cols, panel, NR);
    if (cols < NR)
      for (int64_t p = 0; p < kc; ++p)
        for (int64_t c = cols; c < NR; ++c) panel[p * NR + c] = T(0);
  }
}

#if defined(__AVX2__) && !defined(__AVX512F__)
// Transpose an 8 x 8 block of floats held in 8 registers (row c in r[c] -> column c): pairs
// interleaved, then quadruples, then the 128-bit halves swapped across registers.
inline void transpose8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}
#endif

// Pack the transposed column matrix for backward-weight: B = col^T, rows = pixels
// [k0, k0+kc), columns = taps [j0, j0+nc), in NR-wide panels [kc][NR].  Row p of a panel
// holds NR taps of one pixel: NR elements of xp at the offsets off32[tap] from that pixel's
// base, i.e. a gather (AVX-512: 16 floats / 8 doubles per instruction; AVX2, float: 8
// pixels of a row at once, loaded as runs and transposed in registers).  This replaces
// building the column block and transposing it, one full pass over the data instead of two.
template <typename T>
void pack_b_taps(const ConvGeometry& g, const PhaseImage& pi, const T* xp, const int32_t* off32,
                 int64_t k0, int64_t kc, int64_t j0, int64_t nc, T* dst) {
  constexpr int NR = detail::GemmBlocking<T>::NR;
  int64_t base[256];
  for (int64_t c0 = 0; c0 < kc; c0 += 256) {
    const int64_t cn = std::min<int64_t>(256, kc - c0);
    int64_t oh = (k0 + c0) / g.out_w, ow = (k0 + c0) % g.out_w;
    for (int64_t p = 0; p < cn; ++p) {
      base[p] = oh * g.stride_h * pi.cols + ow;
      if (++ow == g.out_w) ow = 0, ++oh;
    }
    for (int64_t jp = 0; jp * NR < nc; ++jp) {
      const int64_t cols = std::min<int64_t>(NR, nc - jp * NR);
      const int32_t* idx = off32 + j0 + jp * NR;
      T* d = dst + jp * NR * kc + c0 * NR;
#if defined(__AVX512F__)
      if constexpr (sizeof(T) == 4) {
        constexpr int NV = NR / 16;
        __m512i iv[NV];
        __mmask16 mk[NV];
        for (int v = 0; v < NV; ++v) {
          mk[v] = low_mask16(cols - v * 16);
          iv[v] = _mm512_maskz_loadu_epi32(mk[v], idx + v * 16);
        }
        for (int64_t p = 0; p < cn; ++p)
          for (int v = 0; v < NV; ++v)
            _mm512_storeu_ps(reinterpret_cast<float*>(d + p * NR + v * 16),
                             _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mk[v], iv[v],
                                                      reinterpret_cast<const float*>(xp + base[p]), 4));
        continue;
      } else {
        constexpr int NV = NR / 8;
        __m256i iv[NV];
        __mmask8 mk[NV];
        for (int v = 0; v < NV; ++v) {
          mk[v] = low_mask8(cols - v * 8);
          iv[v] = _mm256_maskz_loadu_epi32(mk[v], idx + v * 8);
        }
        for (int64_t p = 0; p < cn; ++p)
          for (int v = 0; v < NV; ++v)
            _mm512_storeu_pd(reinterpret_cast<double*>(d + p * NR + v * 8),
                             _mm512_mask_i32gather_pd(_mm512_setzero_pd(), mk[v], iv[v],
                                                      reinterpret_cast<const double*>(xp + base[p]), 8));
        continue;
      }
#endif
      for (int64_t p = 0; p < cn;) {
#if defined(__AVX2__) && !defined(__AVX512F__)
        // No fast gather on AVX2 machines: read 8 pixels at a time instead.  When 8
        // consecutive pixels sit at consecutive offsets (one output row: base strictly
        // increases, so a difference of 7 over 7 steps means every step is 1), tap c's 8
        // values are one contiguous run; 8 taps' runs, transposed in registers, are 8
        // rows of the panel.  A quarter of the instructions of the element-wise copy.
        if constexpr (sizeof(T) == 4) {
          if (p + 8 <= cn && base[p + 7] == base[p] + 7) {
            const float* src = reinterpret_cast<const float*>(xp + base[p]);
            for (int h = 0; h * 8 < NR; ++h) {
              __m256 r[8];
              for (int c = 0; c < 8; ++c)
                r[c] = h * 8 + c < cols ? _mm256_loadu_ps(src + idx[h * 8 + c]) : _mm256_setzero_ps();
              transpose8(r);
              float* out = reinterpret_cast<float*>(d + p * NR + h * 8);
              for (int j = 0; j < 8; ++j) _mm256_storeu_ps(out + j * NR, r[j]);
            }
            p += 8;
            continue;
          }
        }
#endif
        const T* src = xp + base[p];
        for (int64_t c = 0; c < cols; ++c) d[p * NR + c] = src[idx[c]];
        for (int64_t c = cols; c < NR; ++c) d[p * NR + c] = T(0);
        ++p;
      }
    }
  }
}

}  // namespace
}  // namespace conv2d_v2
}  // namespace gasca
