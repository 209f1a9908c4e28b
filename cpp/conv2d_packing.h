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

// Pack the transposed column matrix for backward-weight: B = col^T, rows = pixels
// [k0, k0+kc), columns = taps [j0, j0+nc), in NR-wide panels [kc][NR].  Row p of a panel
// holds NR taps of one pixel: NR elements of xp at the offsets off32[tap] from that pixel's
// base, i.e. a gather (AVX-512: 16 floats / 8 doubles per instruction).  This replaces
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
      for (int64_t p = 0; p < cn; ++p) {
        const T* src = xp + base[p];
        for (int64_t c = 0; c < cols; ++c) d[p * NR + c] = src[idx[c]];
        for (int64_t c = cols; c < NR; ++c) d[p * NR + c] = T(0);
      }
    }
  }
}

}  // namespace
}  // namespace conv2d_v2
}  // namespace gasca
