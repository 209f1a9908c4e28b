// conv2d_phase_image.h: the zero-padded, phase-split copy of an image that conv2d version 2
// (conv2d_fast.cpp) reads its column matrix from, and the runs it reads it in.
//
// Versions of conv2d (the full map atop conv2d.cpp):
//   0  reference     conv2d.cpp
//   1  im2col+gemm   conv2d_im2col.cpp
//   2  fast          conv2d_fast.cpp, from these pieces: conv2d_rows.h (row copies),
//                    conv2d_phase_image.h (this file), conv2d_packing.h, conv2d_threads.h
//
// What is here: the phase image's layout (PhaseImage) and when it is worth building
// (phase_image_is_reasonable; else version 2 takes version 1's path), building it from an
// image (phase_split) and merging a gradient image back out of it (phase_merge), the runs
// of output pixels along output rows (make_runs), reading any block of the column matrix
// out of it (im2col_block) and adding one back into it (col2im_block), and the offset of
// each kernel tap in it (tap_offsets).  Any output size up to the natural one works: the
// phase image is sized from out_h/out_w and the input, whichever reaches further.
#pragma once

#include <algorithm>
#include <cstdint>

#include "conv2d.h"
#include "conv2d_rows.h"
#include "gemm_internal.h"  // ceil_div

namespace gasca {
namespace conv2d_v2 {
namespace {  // private to conv2d_fast.cpp, the one file that includes this

using detail::ceil_div;

// ------------------------------------------------------------ the phase-split image
// im2col reads x[ci, oh*sh - ph + i*dh, ow*sw - pw + j*dw] for a run of consecutive ow: a
// strided read that may fall into the padding at either end.  Both problems go away if the
// image is first copied once, zero-padded, with its columns split by phase (column mod sw):
//
//   xp[ci][phase][r][k] = x[ci, r - ph, k*sw + phase - pw]        (0 outside the image)
//
// Tap (ci, i, j) of pixel (oh, ow) is then xp[ci][(j*dw) % sw][oh*sh + i*dh][ow + (j*dw)/sw]:
// a run of output pixels is a contiguous, bounds-check-free copy.  The copy costs one pass
// over the image, against C_in*KH*KW/(sh*sw) passes' worth of im2col reads.  col2im works
// the same way in reverse: contiguous adds into a zeroed phase image, merged back at the end.
struct PhaseImage {
  int64_t rows = 0, cols = 0;  // of one phase plane
  int64_t plane = 0;           // rows * cols
  int64_t channel = 0;         // stride_w * plane
  int64_t size = 0;            // in_channels * channel
};

inline PhaseImage make_phase_image(const ConvGeometry& g) {
  PhaseImage p;
  const int64_t sw = g.stride_w;
  p.rows = std::max((g.out_h - 1) * g.stride_h + (g.kernel_h - 1) * g.dilation_h + 1, g.in_h + g.pad_h);
  p.cols = std::max(g.out_w + ((g.kernel_w - 1) * g.dilation_w) / sw, ceil_div(g.in_w + g.pad_w, sw));
  p.plane = p.rows * p.cols;
  p.channel = sw * p.plane;
  p.size = g.in_channels * p.channel;
  return p;
}

// The phase image pays off for ordinary geometries, where it is about the size of the padded
// input.  With strides, paddings or dilations far larger than the image (legal: the bindings
// accept up to 2**30) it would be mostly padding, gigabytes of it, or its size would not
// even fit in int64.  Version 2 then falls back to version 1, whose scratch is the column
// matrix (C_in*KH*KW x OH*OW: bounded by the arrays the caller passed).  Estimated in
// double first, so that nothing can overflow.
inline bool phase_image_is_reasonable(const ConvGeometry& g) {
  const double sw = double(g.stride_w);
  const double rows = std::max(double(g.out_h - 1) * double(g.stride_h) +
                                   double(g.kernel_h - 1) * double(g.dilation_h) + 1.0,
                               double(g.in_h) + double(g.pad_h));
  const double cols = std::max(double(g.out_w) + double(g.kernel_w - 1) * double(g.dilation_w) / sw,
                               (double(g.in_w) + double(g.pad_w)) / sw + 1.0);
  const double size = double(g.in_channels) * sw * rows * cols;
  const double kdim = double(g.in_channels) * double(g.kernel_h) * double(g.kernel_w);
  const double budget = 4.0 * (double(g.in_channels) * double(g.in_h) * double(g.in_w) +
                               kdim * double(g.out_h) * double(g.out_w)) + 65536.0;
  return size <= budget && size < 9.0e15;
}

// The padding of a phase image (its rows and columns outside the image) is zero and sits in
// the same places for every image of one geometry.  So a thread that builds the phase images
// of several images in the same buffer zeroes it once, for its first image, and afterwards
// copies only the image's pixels over the last ones (padding_is_zero: xp already holds a
// phase image of this geometry).  Zeroing the padding row by row instead, a few elements at
// a time, cost ~10% of gasca layer 2's forward pass.
template <typename T>
void phase_split(const ConvGeometry& g, const PhaseImage& pi, const T* x, T* xp,
                 bool padding_is_zero) {
  if (!padding_is_zero) std::fill(xp, xp + pi.size, T(0));
  const int64_t sw = g.stride_w;
  // image row h is phase row h + pad_h (pi.rows >= in_h + pad_h)
  const int64_t r0 = g.pad_h, r1 = g.pad_h + g.in_h;
  // Stride 2: one pass over each row.  Column c goes to phase (c + pw) % 2 at (c + pw) / 2:
  // the even columns to phase pw % 2 from pw / 2 on, the odd ones to the other from
  // (pw + 1) / 2 on, when both fit in the phase rows.  Reading each row once instead of
  // once per phase made gasca layer 2's forward 4% faster and layer 3's 7% (AVX2, one
  // thread).
  if (sw == 2 && (g.pad_w + g.in_w + 1) / 2 <= pi.cols) {
    const int64_t pe = g.pad_w % 2, oe = g.pad_w / 2, oo = (g.pad_w + 1) / 2;
    for (int64_t ci = 0; ci < g.in_channels; ++ci) {
      T* even = xp + ci * pi.channel + pe * pi.plane + oe;
      T* odd = xp + ci * pi.channel + (1 - pe) * pi.plane + oo;
      for (int64_t r = r0; r < r1; ++r)
        split_stride2(even + r * pi.cols, odd + r * pi.cols, x + (ci * g.in_h + r - r0) * g.in_w,
                      g.in_w);
    }
    return;
  }
  for (int64_t ci = 0; ci < g.in_channels; ++ci)
    for (int64_t ph = 0; ph < sw; ++ph) {
      T* plane = xp + ci * pi.channel + ph * pi.plane;
      // column k holds x column k*sw + ph - pw: inside the image for k in [k0, k1)
      const int64_t shift = ph - g.pad_w;
      const int64_t k0 = std::min(pi.cols, shift >= 0 ? int64_t(0) : (-shift + sw - 1) / sw);
      const int64_t k1 = std::max(k0, std::min(pi.cols, (g.in_w - 1 - shift) < 0 ? int64_t(0) : (g.in_w - 1 - shift) / sw + 1));
      if (k1 == k0) continue;
      for (int64_t r = r0; r < r1; ++r) {
        T* row = plane + r * pi.cols;
        const T* src = x + (ci * g.in_h + (r - g.pad_h)) * g.in_w + shift;
        if (sw == 1)
          copy_run(row + k0, src + k0, k1 - k0);
        else if (sw == 2)
          copy_stride2(row + k0, src + 2 * k0, k1 - k0);
        else
          for (int64_t k = k0; k < k1; ++k) row[k] = src[k * sw];
      }
    }
}

// dx = the image part of a phase image of gradients (overwrites dx).
template <typename T>
void phase_merge(const ConvGeometry& g, const PhaseImage& pi, const T* xp, T* dx) {
  const int64_t sw = g.stride_w;
  for (int64_t ci = 0; ci < g.in_channels; ++ci)
    for (int64_t h = 0; h < g.in_h; ++h) {
      T* out = dx + (ci * g.in_h + h) * g.in_w;
      const T* rows = xp + ci * pi.channel + (h + g.pad_h) * pi.cols;
      // Column w of dx is column (w + pw) / sw of phase (w + pw) % sw: walk each phase.
      for (int64_t ph = 0; ph < sw; ++ph) {
        const int64_t w0 = ((ph - g.pad_w) % sw + sw) % sw;  // first w of this phase
        const T* src = rows + ph * pi.plane + (w0 + g.pad_w) / sw;
        if (w0 >= g.in_w) continue;
        if (sw == 1)
          copy_run(out, src, g.in_w);
        else if (sw == 2)
          store_stride2(out + w0, src, (g.in_w - w0 + 1) / 2);
        else
          for (int64_t w = w0, k = 0; w < g.in_w; w += sw, ++k) out[w] = src[k];
      }
    }
}

// Output pixels [q0, q1) come in runs along output rows: run (oh, ow0, ow1) covers pixels
// (oh, ow) for ow in [ow0, ow1), at column pos = q - q0 of the block.  Computing the runs
// once per block keeps integer division out of the per-tap loops.
struct Run {
  int64_t oh, ow0, len, pos;
};
constexpr int kMaxRuns = 64;

inline int make_runs(const ConvGeometry& g, int64_t q0, int64_t q1, Run* runs) {
  int count = 0;
  for (int64_t q = q0; q < q1;) {
    const int64_t oh = q / g.out_w, ow0 = q % g.out_w;
    const int64_t len = std::min(g.out_w - ow0, q1 - q);
    runs[count++] = Run{oh, ow0, len, q - q0};
    q += len;
  }
  return count;
}

// Rows [r0, r1) (taps (ci, i, j)) and columns [q0, q1) (output pixels) of the column
// matrix of the phase-split image xp, written to dst with row stride ld.
template <typename T>
void im2col_block(const ConvGeometry& g, const PhaseImage& pi, const T* xp, int64_t r0,
                  int64_t r1, int64_t q0, int64_t q1, T* dst, int64_t ld) {
  Run runs[kMaxRuns];
  const int64_t chunk = (kMaxRuns - 2) * g.out_w;
  const int64_t kk = g.kernel_h * g.kernel_w;
  for (int64_t c0 = q0; c0 < q1; c0 += chunk) {
    const int64_t c1 = std::min(q1, c0 + chunk);
    const int nruns = make_runs(g, c0, c1, runs);
    int64_t ci = r0 / kk, i = (r0 % kk) / g.kernel_w, j = r0 % g.kernel_w;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t jj = j * g.dilation_w;
      const T* plane = xp + ci * pi.channel + (jj % g.stride_w) * pi.plane + jj / g.stride_w +
                       i * g.dilation_h * pi.cols;
      T* row = dst + (r - r0) * ld + (c0 - q0);
      for (int k = 0; k < nruns; ++k) {
        const Run& u = runs[k];
        copy_run(row + u.pos, plane + u.oh * g.stride_h * pi.cols + u.ow0, u.len);
      }
      if (++j == g.kernel_w) {
        j = 0;
        if (++i == g.kernel_h) i = 0, ++ci;
      }
    }
  }
}

// The adjoint of im2col_block: add rows [r0, r1), columns [q0, q1) of a column matrix (row
// stride ld) onto the phase image dxp of the pixels they were read from.
template <typename T>
void col2im_block(const ConvGeometry& g, const PhaseImage& pi, const T* col, int64_t r0,
                  int64_t r1, int64_t q0, int64_t q1, int64_t ld, T* dxp) {
  Run runs[kMaxRuns];
  const int64_t chunk = (kMaxRuns - 2) * g.out_w;
  const int64_t kk = g.kernel_h * g.kernel_w;
  for (int64_t c0 = q0; c0 < q1; c0 += chunk) {
    const int64_t c1 = std::min(q1, c0 + chunk);
    const int nruns = make_runs(g, c0, c1, runs);
    int64_t ci = r0 / kk, i = (r0 % kk) / g.kernel_w, j = r0 % g.kernel_w;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t jj = j * g.dilation_w;
      T* plane = dxp + ci * pi.channel + (jj % g.stride_w) * pi.plane + jj / g.stride_w +
                 i * g.dilation_h * pi.cols;
      const T* row = col + (r - r0) * ld + (c0 - q0);
      for (int k = 0; k < nruns; ++k) {
        const Run& u = runs[k];
        add_run(plane + u.oh * g.stride_h * pi.cols + u.ow0, row + u.pos, u.len);
      }
      if (++j == g.kernel_w) {
        j = 0;
        if (++i == g.kernel_h) i = 0, ++ci;
      }
    }
  }
}

// Offset of tap (ci, i, j) in the phase image, relative to the base oh*sh*cols + ow of its
// pixel (oh, ow): the same for every pixel and every image.
template <typename I>
void tap_offsets(const ConvGeometry& g, const PhaseImage& pi, I* off) {
  const int64_t kdim = g.in_channels * g.kernel_h * g.kernel_w;
  for (int64_t r = 0; r < kdim; ++r) {
    const int64_t ci = r / (g.kernel_h * g.kernel_w), i = (r / g.kernel_w) % g.kernel_h,
                  jj = (r % g.kernel_w) * g.dilation_w;
    off[r] = static_cast<I>(ci * pi.channel + (jj % g.stride_w) * pi.plane + jj / g.stride_w +
                            i * g.dilation_h * pi.cols);
  }
}

}  // namespace
}  // namespace conv2d_v2
}  // namespace gasca
