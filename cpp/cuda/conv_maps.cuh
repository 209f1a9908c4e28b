// conv_maps.cuh: the three convolution passes written as matrix products, for the tile
// engine in tiled_gemm.cuh.  Each pass is a pair of operands (how to gather A(m, k) and
// B(k, n) straight from the tensors) and an output (where C[m, n] goes).
//
// Everything here is plain index arithmetic compiled for the host too (GASCA_HD), so that
// cpp/cuda/check_maps.cpp can multiply the maps out on a CPU and compare with a direct
// convolution: the part of the fast kernels that is easiest to get wrong, checked without
// a GPU.
//
// Notation (cpp/conv2d.h): x (N, Ci, H, W), w (Co, Ci, KH, KW), y (N, Co, OH, OW);
// strides SH, SW, paddings PH, PW, dilations DH, DW.  All offsets are int64_t.
//
//  pass             C (M x N)                 M     N            K
//  forward          y[n, co, oh, ow]          Co    N*OH*OW      Ci*KH*KW
//  backward-input   dx[n, ci, h, w], one      Ci    N*Hp*Wp      Co*Th*Tw
//                   stride phase at a time
//  backward-weight  dw[co, ci, i, j]          Co    Ci*KH*KW     N*OH*OW
#pragma once
#include "common.cuh"

namespace gasca {
namespace cuda {

// Out-of-image reads are the zero padding.
GASCA_HD bool inside(int64_t h, int64_t w, int64_t H, int64_t W) {
  return h >= 0 && h < H && w >= 0 && w < W;
}

// ============================================================ forward
// y[n, co, p] = bias[co] + sum_k w[co, k] * X(k, (n, p)),   k = (ci, i, j), p = (oh, ow)
// X is the im2col matrix of x: X((ci,i,j), (n,oh,ow)) = x[n, ci, oh*SH-PH+i*DH, ow*SW-PW+j*DW].

template <typename T>
struct ForwardWeights {  // A(co, k) = w[co, k]: the weight tensor is already a (Co, K) matrix
  const T* w;
  int64_t K;
  struct Line { const T* row; };
  struct Cursor { int64_t k; };
  GASCA_HD Line line(int64_t co) const { return {w + co * K}; }
  GASCA_HD Cursor cursor(int64_t k) const { return {k}; }
  GASCA_HD void advance(Cursor& c) const { ++c.k; }
  GASCA_HD T load(const Line& l, const Cursor& c) const { return l.row[c.k]; }
};

template <typename T>
struct ForwardImage {  // B(k, (n, oh, ow)) = the im2col matrix, gathered on the fly
  const T* x;
  int64_t C, H, W, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW;
  struct Line { const T* image; int64_t h0, w0; };  // image n, top-left tap of the window
  struct Cursor { int64_t ci, i, j; };              // k = (ci*KH + i)*KW + j
  GASCA_HD Line line(int64_t col) const {
    const int64_t n = col / (OH * OW), p = col - n * (OH * OW);
    const int64_t oh = p / OW, ow = p - oh * OW;
    return {x + n * C * H * W, oh * SH - PH, ow * SW - PW};
  }
  GASCA_HD Cursor cursor(int64_t k) const {
    const int64_t ci = k / (KH * KW), r = k - ci * (KH * KW);
    return {ci, r / KW, r % KW};
  }
  GASCA_HD void advance(Cursor& c) const {
    if (++c.j == KW) {
      c.j = 0;
      if (++c.i == KH) { c.i = 0; ++c.ci; }
    }
  }
  GASCA_HD T load(const Line& l, const Cursor& c) const {
    const int64_t h = l.h0 + c.i * DH, w = l.w0 + c.j * DW;
    return inside(h, w, H, W) ? l.image[(c.ci * H + h) * W + w] : T(0);
  }
};

template <typename T>
struct ForwardOut {  // C(co, (n, p)) -> y[n, co, p] (+ bias[co])
  T* y;
  const T* bias;  // may be nullptr
  int64_t Co, OHW;
  GASCA_HD int64_t col_offset(int64_t col) const {
    const int64_t n = col / OHW;
    return n * Co * OHW + (col - n * OHW);
  }
  GASCA_HD void write(int64_t co, int64_t off, T acc) const {
    y[off + co * OHW] = bias ? acc + bias[co] : acc;
  }
};

// ============================================================ backward-input
// dx[n, ci, h, w] = sum_{co, i, j} w[co, ci, i, j] dy[n, co, oh, ow]
//   over the taps with oh*SH = h + PH - i*DH and ow*SW = w + PW - j*DW exactly.
// With a stride, most (i, h) pairs have no such oh: as a plain GEMM over all taps, 3 in 4
// products would be multiplications by zero at stride 2.  But which taps are live depends
// only on h mod SH (the "phase" rh): for h = rh + SH*hh the live i form an arithmetic
// progression i = i0 + t*step with step = SH / gcd(SH, DH), and then
//   oh = hh + q0 - t*dq,   q0 = (rh + PH - i0*DH) / SH (exact),   dq = step*DH / SH.
// So the pass splits into SH*SW dense GEMMs, one per phase (rh, rw), each over only its
// live taps: no wasted multiplications.  Phase has the numbers; make_phase computes them.

struct PhaseAxis {  // one axis (h or w) of one phase
  int64_t r;      // the phase: output rows h = r + S*hh
  int64_t count;  // how many such rows: Hp
  int64_t i0, step, taps;  // live taps i = i0 + t*step, t < taps (taps may be 0)
  int64_t q0, dq;          // oh = hh + q0 - t*dq
};

GASCA_HD int64_t gcd64(int64_t a, int64_t b) {
  while (b != 0) { const int64_t t = a % b; a = b; b = t; }
  return a;
}

// Axis of length L (H or W) with kernel K, stride S, padding P, dilation D; phase r < S.
GASCA_HD PhaseAxis make_phase_axis(int64_t r, int64_t L, int64_t K, int64_t S, int64_t P,
                                   int64_t D) {
  PhaseAxis a{};
  a.r = r;
  a.count = r < L ? (L - r + S - 1) / S : 0;
  a.step = S / gcd64(S, D);
  a.i0 = -1;
  // Only taps i < K matter: a first live tap at K or beyond means no live taps at all (and
  // the bound keeps this loop short for absurd strides).
  for (int64_t i = 0; i < a.step && i < K && a.i0 < 0; ++i) {
    const int64_t num = r + P - i * D;  // must be a multiple of S
    if (((num % S) + S) % S == 0) a.i0 = i;
  }
  if (a.i0 < 0 || a.i0 >= K) {
    a.taps = 0;
    a.i0 = 0;
    a.q0 = 0;
    a.dq = 0;
    return a;
  }
  a.taps = (K - a.i0 + a.step - 1) / a.step;
  a.q0 = (r + P - a.i0 * D) / S;  // exact division (possibly of a negative number)
  a.dq = a.step * D / S;          // step*D = lcm(S, D): a multiple of S
  return a;
}

template <typename T>
struct InputWeights {  // A(ci, (co, th, tw)) = w[co, ci, i0h + th*steph, i0w + tw*stepw]
  const T* w;
  int64_t Ci, KH, KW;
  PhaseAxis ph, pw;
  struct Line { const T* base; };        // w[0, ci, :, :]
  struct Cursor { int64_t co, th, tw; };  // k = (co*Th + th)*Tw + tw
  GASCA_HD Line line(int64_t ci) const { return {w + ci * KH * KW}; }
  GASCA_HD Cursor cursor(int64_t k) const {
    const int64_t per = ph.taps * pw.taps;
    const int64_t co = k / per, r = k - co * per;
    return {co, r / pw.taps, r % pw.taps};
  }
  GASCA_HD void advance(Cursor& c) const {
    if (++c.tw == pw.taps) {
      c.tw = 0;
      if (++c.th == ph.taps) { c.th = 0; ++c.co; }
    }
  }
  GASCA_HD T load(const Line& l, const Cursor& c) const {
    const int64_t i = ph.i0 + c.th * ph.step, j = pw.i0 + c.tw * pw.step;
    return l.base[(c.co * Ci * KH + i) * KW + j];
  }
};

template <typename T>
struct InputGrads {  // B((co, th, tw), (n, hh, ww)) = dy[n, co, hh + q0h - th*dqh, ww + ...]
  const T* dy;
  int64_t Co, OH, OW;
  PhaseAxis ph, pw;
  struct Line { const T* image; int64_t oh0, ow0; };
  using Cursor = typename InputWeights<T>::Cursor;
  GASCA_HD Line line(int64_t col) const {
    const int64_t per = ph.count * pw.count;
    const int64_t n = col / per, r = col - n * per;
    const int64_t hh = r / pw.count, ww = r - hh * pw.count;
    return {dy + n * Co * OH * OW, hh + ph.q0, ww + pw.q0};
  }
  GASCA_HD Cursor cursor(int64_t k) const {
    const int64_t per = ph.taps * pw.taps;
    const int64_t co = k / per, r = k - co * per;
    return {co, r / pw.taps, r % pw.taps};
  }
  GASCA_HD void advance(Cursor& c) const {
    if (++c.tw == pw.taps) {
      c.tw = 0;
      if (++c.th == ph.taps) { c.th = 0; ++c.co; }
    }
  }
  GASCA_HD T load(const Line& l, const Cursor& c) const {
    const int64_t oh = l.oh0 - c.th * ph.dq, ow = l.ow0 - c.tw * pw.dq;
    return inside(oh, ow, OH, OW) ? l.image[(c.co * OH + oh) * OW + ow] : T(0);
  }
};

template <typename T>
struct InputOut {  // C(ci, (n, hh, ww)) -> dx[n, ci, rh + SH*hh, rw + SW*ww] (+ bias[ci])
  T* dx;
  const T* bias;  // the transposed convolution's bias, or nullptr
  int64_t Ci, H, W, SH, SW;
  PhaseAxis ph, pw;
  GASCA_HD int64_t col_offset(int64_t col) const {
    const int64_t per = ph.count * pw.count;
    const int64_t n = col / per, r = col - n * per;
    const int64_t hh = r / pw.count, ww = r - hh * pw.count;
    return n * Ci * H * W + (ph.r + SH * hh) * W + (pw.r + SW * ww);
  }
  GASCA_HD void write(int64_t ci, int64_t off, T acc) const {
    dx[off + ci * H * W] = bias ? acc + bias[ci] : acc;
  }
};

// ============================================================ backward-weight
// dw[co, (ci, i, j)] = sum_k dy[n, co, p] * X((ci, i, j), k),   k = (n, p = (oh, ow)):
// the same im2col matrix as the forward pass, now on the other side of the product.

template <typename T>
struct WeightGrads {  // A(co, (n, p)) = dy[n, co, p]
  const T* dy;
  int64_t Co, OHW;
  struct Line { const T* channel; };  // dy[0, co, :]
  struct Cursor { int64_t n, p; };
  GASCA_HD Line line(int64_t co) const { return {dy + co * OHW}; }
  GASCA_HD Cursor cursor(int64_t k) const {
    const int64_t n = k / OHW;
    return {n, k - n * OHW};
  }
  GASCA_HD void advance(Cursor& c) const {
    if (++c.p == OHW) { c.p = 0; ++c.n; }
  }
  GASCA_HD T load(const Line& l, const Cursor& c) const { return l.channel[c.n * Co * OHW + c.p]; }
};

template <typename T>
struct WeightImage {  // B((n, oh, ow), (ci, i, j)) = x[n, ci, oh*SH - PH + i*DH, ow*SW - PW + j*DW]
  const T* x;
  int64_t C, H, W, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW;
  struct Line { const T* channel; int64_t dh, dw; };  // x[0, ci], offset of tap (i, j)
  struct Cursor { int64_t n, oh, ow; };
  GASCA_HD Line line(int64_t col) const {
    const int64_t ci = col / (KH * KW), r = col - ci * (KH * KW);
    const int64_t i = r / KW, j = r - i * KW;
    return {x + ci * H * W, i * DH - PH, j * DW - PW};
  }
  GASCA_HD Cursor cursor(int64_t k) const {
    const int64_t n = k / (OH * OW), p = k - n * (OH * OW);
    return {n, p / OW, p % OW};
  }
  GASCA_HD void advance(Cursor& c) const {
    if (++c.ow == OW) {
      c.ow = 0;
      if (++c.oh == OH) { c.oh = 0; ++c.n; }
    }
  }
  GASCA_HD T load(const Line& l, const Cursor& c) const {
    const int64_t h = c.oh * SH + l.dh, w = c.ow * SW + l.dw;
    return inside(h, w, H, W) ? l.channel[c.n * C * H * W + h * W + w] : T(0);
  }
};

template <typename T>
struct WeightOut {  // C(co, col) -> dw[co, col]
  T* dw;
  int64_t cols;  // Ci*KH*KW
  GASCA_HD int64_t col_offset(int64_t col) const { return col; }
  GASCA_HD void write(int64_t co, int64_t off, T acc) const { dw[co * cols + off] = acc; }
};

}  // namespace cuda
}  // namespace gasca
