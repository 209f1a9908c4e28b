// conv2d_rows.h: the row copies of conv2d version 2 (conv2d_fast.cpp), AVX-512 where built.
//
// Versions of conv2d (the full map atop conv2d.cpp):
//   0  reference     conv2d.cpp
//   1  im2col+gemm   conv2d_im2col.cpp
//   2  fast          conv2d_fast.cpp, from these pieces: conv2d_rows.h (this file: the
//                    row copies), conv2d_phase_image.h, conv2d_packing.h, conv2d_threads.h
//
// Every copy in version 2 is one of these, moving one run of an image row: the zero-padded
// phase image is built from rows (phase_split), the column matrix is read from and added
// back into it in runs (im2col_block, col2im_block), and the gradient image is merged back
// from it (phase_merge); see conv2d_phase_image.h.
#pragma once

#include "simd.h"  // first: it includes <immintrin.h> (see the note there)

#include <algorithm>
#include <cstdint>

namespace gasca {
namespace conv2d_v2 {
namespace {  // private to conv2d_fast.cpp, the one file that includes this

// Row copies.  copy_run / add_run: dst[k] = src[k] / dst[k] += src[k] for short runs (a
// run is one output row segment: 8 to 32 elements in gasca), a vector at a time with a
// masked tail under AVX-512.  A stride-2 row (every gasca layer) is split into its two
// phases in one pass where the phase rows hold it (split_stride2: AVX-512 permutes, AVX2
// shuffles, for float), and the stride-phase backward-input merges a row back from both
// phases in one pass (merge_stride2: AVX-512 permutes).  For the other cases copy_stride2 /
// store_stride2 move one phase at a time: under AVX-512 a two-register permute (gather) and
// an expand (scatter), masked so that nothing outside [src, src + 2n - 1) is touched;
// elsewhere scalar (AVX2's masked stores are slow).
template <typename T>
inline void copy_stride2(T* out, const T* src, int64_t n) {
  for (int64_t k = 0; k < n; ++k) out[k] = src[2 * k];
}
template <typename T>
inline void store_stride2(T* d, const T* in, int64_t n) {
  for (int64_t k = 0; k < n; ++k) d[2 * k] = in[k];
}
// even[k] = src[2k], odd[k] = src[2k + 1] for the n elements of src (n even or odd): a
// stride-2 row split into both phases in one pass (vectorised for float: AVX-512
// permutes, AVX2 shuffles).
template <typename T>
inline void split_stride2(T* even, T* odd, const T* src, int64_t n) {
  int64_t k = 0;
  for (; 2 * k + 1 < n; ++k) even[k] = src[2 * k], odd[k] = src[2 * k + 1];
  if (2 * k < n) even[k] = src[2 * k];
}
// The inverse: dst[2k] = even[k] for k < (n + 1) / 2, dst[2k + 1] = odd[k] for k < n / 2 (a
// row of n elements merged from its two stride-2 phases in one pass; AVX-512 permutes for
// float).
template <typename T>
inline void merge_stride2(T* dst, const T* even, const T* odd, int64_t n) {
  int64_t k = 0;
  for (; 2 * k + 1 < n; ++k) dst[2 * k] = even[k], dst[2 * k + 1] = odd[k];
  if (2 * k < n) dst[2 * k] = even[k];
}
#if defined(__AVX512F__)
inline __mmask16 low_mask16(int64_t count) {  // the lowest min(count, 16) lanes
  return count >= 16 ? __mmask16(0xFFFF) : count <= 0 ? __mmask16(0) : __mmask16((1u << count) - 1);
}
inline __mmask8 low_mask8(int64_t count) {
  return count >= 8 ? __mmask8(0xFF) : count <= 0 ? __mmask8(0) : __mmask8((1u << count) - 1);
}
template <>
inline void copy_stride2<float>(float* out, const float* src, int64_t n) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  for (; n > 0; n -= 16, out += 16, src += 32) {
    const int64_t span = 2 * std::min<int64_t>(n, 16) - 1;  // elements of src read
    const __m512 a = _mm512_maskz_loadu_ps(low_mask16(span), src);
    const __m512 b = _mm512_maskz_loadu_ps(low_mask16(span - 16), src + 16);
    _mm512_mask_storeu_ps(out, low_mask16(n), _mm512_permutex2var_ps(a, even, b));
  }
}
template <>
inline void copy_stride2<double>(double* out, const double* src, int64_t n) {
  const __m512i even = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
  for (; n > 0; n -= 8, out += 8, src += 16) {
    const int64_t span = 2 * std::min<int64_t>(n, 8) - 1;
    const __m512d a = _mm512_maskz_loadu_pd(low_mask8(span), src);
    const __m512d b = _mm512_maskz_loadu_pd(low_mask8(span - 8), src + 8);
    _mm512_mask_storeu_pd(out, low_mask8(n), _mm512_permutex2var_pd(a, even, b));
  }
}
template <>
inline void store_stride2<float>(float* d, const float* in, int64_t n) {
  const __m512i upper = _mm512_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15);
  for (; n > 0; n -= 16, in += 16, d += 32) {
    const int64_t span = 2 * std::min<int64_t>(n, 16) - 1;  // elements of d touched
    const __m512 v = _mm512_maskz_loadu_ps(low_mask16(n), in);
    const __m512 lo = _mm512_maskz_expand_ps(0x5555, v);  // in[0..7] -> even lanes
    const __m512 hi = _mm512_maskz_expand_ps(0x5555, _mm512_permutex2var_ps(v, upper, v));
    _mm512_mask_storeu_ps(d, low_mask16(span) & 0x5555, lo);  // odd lanes untouched
    _mm512_mask_storeu_ps(d + 16, low_mask16(span - 16) & 0x5555, hi);
  }
}
template <>
inline void store_stride2<double>(double* d, const double* in, int64_t n) {
  const __m512i upper = _mm512_setr_epi64(4, 5, 6, 7, 4, 5, 6, 7);
  for (; n > 0; n -= 8, in += 8, d += 16) {
    const int64_t span = 2 * std::min<int64_t>(n, 8) - 1;
    const __m512d v = _mm512_maskz_loadu_pd(low_mask8(n), in);
    const __m512d lo = _mm512_maskz_expand_pd(0x55, v);
    const __m512d hi = _mm512_maskz_expand_pd(0x55, _mm512_permutex2var_pd(v, upper, v));
    _mm512_mask_storeu_pd(d, low_mask8(span) & 0x55, lo);
    _mm512_mask_storeu_pd(d + 8, low_mask8(span - 8) & 0x55, hi);
  }
}
// Two registers of src (32 elements) give 16 even and 16 odd ones; the last, partial pair
// is read and written under masks, so nothing outside src[0, n), even[0, ceil(n / 2)) and
// odd[0, n / 2) is touched.  (In place of a masked copy per phase, each computing its own
// masks: gasca layer 3's forward spent 12% of its time there, one thread, AVX-512.)
template <>
inline void split_stride2<float>(float* even, float* odd, const float* src, int64_t n) {
  const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  for (; n >= 32; n -= 32, src += 32, even += 16, odd += 16) {
    const __m512 a = _mm512_loadu_ps(src), b = _mm512_loadu_ps(src + 16);
    _mm512_storeu_ps(even, _mm512_permutex2var_ps(a, ie, b));
    _mm512_storeu_ps(odd, _mm512_permutex2var_ps(a, io, b));
  }
  if (n > 0) {
    const __m512 a = _mm512_maskz_loadu_ps(low_mask16(n), src);
    const __m512 b = _mm512_maskz_loadu_ps(low_mask16(n - 16), src + 16);
    _mm512_mask_storeu_ps(even, low_mask16((n + 1) / 2), _mm512_permutex2var_ps(a, ie, b));
    _mm512_mask_storeu_ps(odd, low_mask16(n / 2), _mm512_permutex2var_ps(a, io, b));
  }
}
template <>
inline void merge_stride2<float>(float* dst, const float* even, const float* odd, int64_t n) {
  const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  for (; n >= 32; n -= 32, dst += 32, even += 16, odd += 16) {
    const __m512 e = _mm512_loadu_ps(even), o = _mm512_loadu_ps(odd);
    _mm512_storeu_ps(dst, _mm512_permutex2var_ps(e, lo, o));
    _mm512_storeu_ps(dst + 16, _mm512_permutex2var_ps(e, hi, o));
  }
  if (n > 0) {
    const __m512 e = _mm512_maskz_loadu_ps(low_mask16((n + 1) / 2), even);
    const __m512 o = _mm512_maskz_loadu_ps(low_mask16(n / 2), odd);
    _mm512_mask_storeu_ps(dst, low_mask16(n), _mm512_permutex2var_ps(e, lo, o));
    _mm512_mask_storeu_ps(dst + 16, low_mask16(n - 16), _mm512_permutex2var_ps(e, hi, o));
  }
}
#elif defined(__AVX2__)
// The even elements of a = src[0, 8) and b = src[8, 16), in order: shufps takes a0 a2 b0 b2
// within each 128-bit half, and a 64-bit permute puts the four pairs in order.
inline __m256 even_lanes(__m256 a, __m256 b) {
  const __m256 s = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));  // a0 a2 b0 b2 | a4 a6 b4 b6
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(s), _MM_SHUFFLE(3, 1, 2, 0)));
}
inline __m256 odd_lanes(__m256 a, __m256 b) {
  const __m256 s = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));  // a1 a3 b1 b3 | a5 a7 b5 b7
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(s), _MM_SHUFFLE(3, 1, 2, 0)));
}
template <>
inline void split_stride2<float>(float* even, float* odd, const float* src, int64_t n) {
  int64_t k = 0;
  for (; 2 * k + 16 <= n; k += 8) {
    const __m256 a = _mm256_loadu_ps(src + 2 * k), b = _mm256_loadu_ps(src + 2 * k + 8);
    _mm256_storeu_ps(even + k, even_lanes(a, b));
    _mm256_storeu_ps(odd + k, odd_lanes(a, b));
  }
  for (; 2 * k + 1 < n; ++k) even[k] = src[2 * k], odd[k] = src[2 * k + 1];
  if (2 * k < n) even[k] = src[2 * k];
}
#endif


template <typename T>
inline void copy_run(T* dst, const T* src, int64_t n) {
  for (int64_t k = 0; k < n; ++k) dst[k] = src[k];
}
template <typename T>
inline void add_run(T* dst, const T* src, int64_t n) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) dst[k] += src[k];
}
#if defined(__AVX512F__)
template <>
inline void copy_run<float>(float* dst, const float* src, int64_t n) {
  for (; n >= 16; n -= 16, dst += 16, src += 16) _mm512_storeu_ps(dst, _mm512_loadu_ps(src));
  if (n > 0) _mm512_mask_storeu_ps(dst, low_mask16(n), _mm512_maskz_loadu_ps(low_mask16(n), src));
}
template <>
inline void copy_run<double>(double* dst, const double* src, int64_t n) {
  for (; n >= 8; n -= 8, dst += 8, src += 8) _mm512_storeu_pd(dst, _mm512_loadu_pd(src));
  if (n > 0) _mm512_mask_storeu_pd(dst, low_mask8(n), _mm512_maskz_loadu_pd(low_mask8(n), src));
}
template <>
inline void add_run<float>(float* dst, const float* src, int64_t n) {
  for (; n >= 16; n -= 16, dst += 16, src += 16)
    _mm512_storeu_ps(dst, _mm512_add_ps(_mm512_loadu_ps(dst), _mm512_loadu_ps(src)));
  if (n > 0) {
    const __mmask16 m = low_mask16(n);
    _mm512_mask_storeu_ps(dst, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, dst), _mm512_maskz_loadu_ps(m, src)));
  }
}
template <>
inline void add_run<double>(double* dst, const double* src, int64_t n) {
  for (; n >= 8; n -= 8, dst += 8, src += 8)
    _mm512_storeu_pd(dst, _mm512_add_pd(_mm512_loadu_pd(dst), _mm512_loadu_pd(src)));
  if (n > 0) {
    const __mmask8 m = low_mask8(n);
    _mm512_mask_storeu_pd(dst, m, _mm512_add_pd(_mm512_maskz_loadu_pd(m, dst), _mm512_maskz_loadu_pd(m, src)));
  }
}
#endif

}  // namespace
}  // namespace conv2d_v2
}  // namespace gasca
