// conv2d_fast.cpp: conv2d version 2, the fast one: forward, backward-input and
// backward-weight as matrix products built from the fast gemm's pieces (gemm_internal.h),
// with no column matrix materialised whole and threads that never write where another does.
//
// Versions of conv2d (the full map atop conv2d.cpp):
//   0  reference     conv2d.cpp
//   1  im2col+gemm   conv2d_im2col.cpp
//   2  fast          conv2d_fast.cpp (this file: the kernels), from these pieces:
//                      conv2d_rows.h         row copies (masked AVX-512 runs, stride-2 split)
//                      conv2d_phase_image.h  the zero-padded, phase-split image; runs;
//                                            reading / adding back blocks of the column matrix
//                      conv2d_packing.h      column-matrix blocks packed as gemm B panels
//                      conv2d_threads.h      how many threads, and which slice is whose
//
// Each image is first copied once into its phase image (conv2d_phase_image.h): every run
// of im2col/col2im is then a contiguous, bounds-check-free copy or add of one row segment.
//   forward          implicit gemm when output rows are whole (or half) SIMD vectors
//                    (forward_implicit: the micro-kernel reads its B operand straight out of
//                    the phase image, no im2col at all); otherwise im2col writes straight
//                    into the packed B panels (forward_packed).  The packed weight is
//                    shared by all threads.  The bias starts the implicit gemm's
//                    accumulators; forward_packed adds it per block.
//   backward-input   backward_input_phased: by stride phases, each a stride-1 correlation
//                    of the zero-padded dy with a sub-kernel, the forward's implicit gemm
//                    again; the phases' blocks interleaved into dx at the end.  When its
//                    conditions fail (dilation, few input channels, phase rows that are not
//                    whole or half vectors): backward_input_blocked, W^T dy in cache-sized
//                    column blocks, col2im'd into a phase image of dx, merged at the end.
//   backward-weight  backward_weight_implicit: dW^T = col dy^T, the column matrix read in
//                    place out of the phase image (A operand), per-thread sums added at the
//                    end; backward_weight_gemm (col^T gathered into packed panels) when
//                    C_out is not a whole number of panels; backward_weight_small when dW is
//                    small (gasca layer 1: 32 x 25, up to 64 KB of vector partial sums):
//                    dot products of contiguous rows with vector partial sums.
//   small maps       at most one register tile of output pixels per image (gasca-64-deep's
//                    4x4 and 2x2 outputs), batch > 1: all three passes as one product over
//                    the images' column matrices side by side (forward_batched,
//                    backward_input_batched, backward_weight_batched), on the fast gemm
//                    (the forward on its pieces).
// Small convolutions (under ~4 MFLOP per thread) run on one thread.  Geometries whose phase
// image would be mostly padding (strides/paddings far beyond the image) take version 1's
// path instead (phase_image_is_reasonable), with the caller's gemm version; the small-map
// path calls the fastest gemm (version 2); every other path is built from that gemm's
// pieces and calls no gemm version at all.  An output smaller than the natural size (the
// transposed convolution's adjoint, conv2d.h) needs nothing special: every loop runs over
// out_h x out_w, and the phase image covers whatever those outputs read.
#include "simd.h"  // first: it includes <immintrin.h> (see the note there)

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "conv2d.h"
#include "conv2d_packing.h"
#include "conv2d_phase_image.h"
#include "conv2d_rows.h"
#include "conv2d_threads.h"
#include "conv2d_versions.h"
#include "gemm.h"
#include "gemm_internal.h"
#include "gemm_micro.h"
#include "workspace.h"

namespace gasca {
namespace conv2d_v2 {

using detail::ceil_div;
using detail::round_up;

// forward as an implicit gemm: when every output row is a whole number of SIMD vectors
// (OW % W == 0: gasca layers 1 and 2 in float), a tile of NR output pixels is NR / W
// vectors, each a contiguous run of one row of the phase-split image for every tap (or
// half-vectors, two per vector, when OW % (W / 2) == 0).  The
// micro-kernel then reads B in place (micro_kernel_indirect) and nothing is packed but the
// weight: the column matrix exists nowhere, not even one panel at a time.
// With output rows of W / 2 pixels (gasca layer 3 in float: 8), each vector is assembled
// from two half-vectors on consecutive output rows.
template <typename T>
static bool forward_implicit_applies(const ConvGeometry& g) {
  constexpr int W = Simd<T>::W;
  return g.out_w % W == 0 || (W >= 2 && g.out_w % (W / 2) == 0);
}

// The implicit gemm of the forward and of the stride-phase backward-input: C (m x P, row
// stride ldc) = A (m x kdim, packed by pack_a_deep) times B, whose column q is never built:
// element k of it is base[row_off[k] + pixel(q)].  Every piece of W pixels (or W / 2 with
// `halves`) of a tile must be a contiguous run of one row.  Tiles [t0, t1) of NR pixels;
// `init` (m values, or null) starts the accumulators of the first K block (a bias).
//
// K goes in as few blocks as kImplicitKC allows, of equal depth (gasca-64 layer 2's 800
// steps in one block, not the gemm's 256 + 256 + 256 + 32): every block but the first
// reads C back and writes it again, and with two threads those passes over C cost more than
// the A panels that a deeper block streams from L2 (one block: +11% on that layer's forward,
// measured).
constexpr int64_t kImplicitKC = 1024;

template <typename T, class Pixel>
static void implicit_gemm(int64_t m, int64_t kdim, const T* ap, const T* base,
                          const int64_t* row_off, int64_t P, Pixel pixel, bool halves,
                          int64_t t0, int64_t t1, T* c, int64_t ldc, const T* init) {
  using B = detail::GemmBlocking<T>;
  constexpr int MR = B::MR, NR = B::NR, W = Simd<T>::W, NV = NR / W;
  const int piece = halves ? W / 2 : W, pieces = halves ? 2 * NV : NV;
  const int64_t m_panels = ceil_div(m, MR);
  const int64_t blocks = ceil_div(kdim, kImplicitKC);
  for (int64_t kb = 0; kb < blocks; ++kb) {
    const int64_t k0 = kdim * kb / blocks, kc = kdim * (kb + 1) / blocks - k0;
    // Tiles outer, weight panels inner: the tile's kc rows of B (scattered over the image)
    // stay in L1 while every weight panel of the block streams past them in order, which
    // the hardware prefetcher follows.
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t q0 = t * NR;
      int64_t vec_off[2 * NV];
      for (int v = 0; v < pieces; ++v)  // past the last pixel, repeat the first piece
        vec_off[v] = pixel(q0 + v * piece < P ? q0 + v * piece : q0);  // (loaded, never stored)
      const int nr = static_cast<int>(std::min<int64_t>(NR, P - q0));
      for (int64_t ip = 0; ip < m_panels; ++ip) {
        const T* a_panel = ap + (ip * kdim + k0) * MR;
        const int mr = static_cast<int>(std::min<int64_t>(MR, m - ip * MR));
        // Ask for the tile's lines of C now, for writing: the tile stores them only after
        // its kc steps, and a store that misses the cache would otherwise hold up the next
        // tile's start (+37% on gasca-64 layer 1's forward, 25 steps a tile, one thread).
        for (int i = 0; i < mr; ++i)
          for (int j = 0; j < nr; j += 64 / int(sizeof(T)))
            __builtin_prefetch(c + (ip * MR + i) * ldc + q0 + j, 1, 3);
        detail::micro_kernel_indirect<T>(kc, a_panel, base, row_off + k0, vec_off, halves,
                                         c + ip * MR * ldc + q0, ldc, T(1), kb == 0 ? T(0) : T(1),
                                         mr, nr, kb == 0 && init ? init + ip * MR : nullptr);
      }
    }
  }
}

template <typename T>
static void forward_implicit(const ConvGeometry& g, const T* x, const T* w, const T* bias, T* y) {
  constexpr int NR = detail::GemmBlocking<T>::NR, W = Simd<T>::W;
  const int64_t kdim = g.in_channels * g.kernel_h * g.kernel_w;
  const int64_t P = g.out_h * g.out_w, Co = g.out_channels;
  const int64_t image = g.in_channels * g.in_h * g.in_w;
  const PhaseImage pi = make_phase_image(g);
  const int64_t tiles = ceil_div(P, NR);
  const bool halves = g.out_w % W != 0;  // rows of W / 2 pixels: two pieces per vector
  // output pixel q reads its window from row (q / out_w) * stride_h, column q % out_w
  const auto pixel = [&g, &pi](int64_t q) { return (q / g.out_w) * g.stride_h * pi.cols + q % g.out_w; };
  // Split an image between threads only when there are fewer images than threads.
  const int nt_all = conv_threads(g, g.batch * tiles);
  const int64_t chunks = g.batch >= nt_all ? 1 : std::min<int64_t>(tiles, ceil_div(nt_all, g.batch));
  const int64_t tiles_per_chunk = ceil_div(tiles, chunks);
  const int64_t items = g.batch * chunks;
  const int nt = conv_threads(g, items);

  const int64_t a_size = round_up(detail::packed_a_size<T>(Co, kdim), 64);
  const int64_t per_thread = round_up(pi.size, 64);
  T* ws = detail::scratch<T>(detail::kSlotColumns, a_size + nt * per_thread);
  int64_t* row_off = detail::scratch<int64_t>(detail::kSlotSpare, kdim);
  detail::pack_a_deep<T>(Co, kdim, w, kdim, ws);
  tap_offsets(g, pi, row_off);

#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    T* xp = ws + a_size + thread_id() * per_thread;
    int64_t split = -1;
#pragma omp for schedule(dynamic)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t n = item / chunks;
      const int64_t t0 = (item % chunks) * tiles_per_chunk, t1 = std::min(tiles, t0 + tiles_per_chunk);
      if (t0 >= t1) continue;
      if (split != n) {
        phase_split(g, pi, x + n * image, xp, split >= 0);
        split = n;
      }
      // The bias starts the accumulators of the first K block: no pass of its own.
      implicit_gemm<T>(Co, kdim, ws, xp, row_off, P, pixel, halves, t0, t1, y + n * Co * P, P,
                       bias);
    }
  }
}

// forward with the column matrix packed: for any other output width, each KC x NC block of
// the column matrix is copied once, straight from the phase image into the gemm's B
// panels (pack_b_im2col), and multiplied by the weight, packed once for all images.
template <typename T>
static void forward_packed(const ConvGeometry& g, const T* x, const T* w, const T* bias, T* y) {
  using B = detail::GemmBlocking<T>;
  constexpr int MR = B::MR, NR = B::NR, KC = B::KC, NC = B::NC;
  const int64_t kdim = g.in_channels * g.kernel_h * g.kernel_w;
  const int64_t P = g.out_h * g.out_w, Co = g.out_channels;
  const int64_t image = g.in_channels * g.in_h * g.in_w;
  // Column blocks: at most NC pixels, balanced within an image.
  const int64_t blocks_per_image = ceil_div(P, NC);
  const int64_t nc_max = round_up(ceil_div(P, blocks_per_image), NR);
  const int64_t items = g.batch * blocks_per_image;
  const int nt = conv_threads(g, items);

  const PhaseImage pi = make_phase_image(g);
  const int64_t a_size = round_up(detail::packed_a_size<T>(Co, kdim), 64);
  const int64_t b_size = round_up(std::min<int64_t>(KC, kdim) * nc_max, 64);
  const int64_t per_thread = b_size + round_up(pi.size, 64);
  T* ws = detail::scratch<T>(detail::kSlotColumns, a_size + nt * per_thread);
  detail::pack_a<T>(false, Co, kdim, w, kdim, ws);  // the weight, packed once for all images
  const int64_t m_panels = ceil_div(Co, MR);

#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    T* bp = ws + a_size + thread_id() * per_thread;
    T* xp = bp + b_size;
    int64_t split = -1;  // the image now in xp (split again if the next item is another's)
#pragma omp for schedule(dynamic)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t n = item / blocks_per_image, blk = item % blocks_per_image;
      const int64_t q0 = blk * nc_max, nc = std::min(nc_max, P - q0);
      if (nc <= 0) continue;
      if (split != n) {
        phase_split(g, pi, x + n * image, xp, split >= 0);
        split = n;
      }
      T* yn = y + n * Co * P;
      for (int64_t kb = 0; kb * KC < kdim; ++kb) {
        const int64_t k0 = kb * KC, kc = std::min<int64_t>(KC, kdim - k0);
        pack_b_im2col(g, pi, xp, k0, kc, q0, nc, bp);
        detail::macro_kernel<T>(Co, kdim, kb, ws, 0, m_panels, bp, kc, nc, yn + q0, P, T(1),
                                kb == 0 ? T(0) : T(1));
      }
      if (bias)
        for (int64_t co = 0; co < Co; ++co) {
          T* row = yn + co * P + q0;
          const T b = bias[co];
#pragma omp simd
          for (int64_t q = 0; q < nc; ++q) row[q] += b;
        }
    }
  }
}

// backward-input: W^T dy in cache-sized column blocks, each added back at once by col2im
// into a padded phase image of dx, merged into dx at the end.  Threads own whole images.
template <typename T>
static void backward_input_blocked(const ConvGeometry& g, const T* dy, const T* w, const T* bias,
                                   T* dx) {
  using B = detail::GemmBlocking<T>;
  constexpr int MR = B::MR, NR = B::NR, KC = B::KC;
  const int64_t kdim = g.in_channels * g.kernel_h * g.kernel_w;
  const int64_t P = g.out_h * g.out_w, Co = g.out_channels;
  const int64_t image = g.in_channels * g.in_h * g.in_w;
  // Column blocks sized so that the block of W^T dy (kdim x nc) stays within ~256 KB (L2).
  const int64_t want = std::max<int64_t>(NR, round_up((int64_t(256) << 10) / int64_t(sizeof(T)) / std::max<int64_t>(kdim, 1), NR));
  const int64_t blocks_per_image = ceil_div(P, std::min(want, round_up(P, NR)));
  const int64_t nc_max = round_up(ceil_div(P, blocks_per_image), NR);
  const int nt = conv_threads(g, g.batch);

  const int64_t a_size = round_up(detail::packed_a_size<T>(kdim, Co), 64);
  const int64_t b_size = round_up(std::min<int64_t>(KC, Co) * nc_max, 64);
  const int64_t c_size = round_up(kdim * nc_max, 64);
  const PhaseImage pi = make_phase_image(g);
  const int64_t per_thread = b_size + c_size + round_up(pi.size, 64);
  T* ws = detail::scratch<T>(detail::kSlotColumns, a_size + nt * per_thread);
  detail::pack_a<T>(true, kdim, Co, w, kdim, ws);  // W^T: (kdim x Co), packed once
  const int64_t m_panels = ceil_div(kdim, MR);

  // Threads own whole images: no two threads ever add into the same gradient.  Images are
  // handed out one at a time (conv2d_threads.h).
#pragma omp parallel for schedule(dynamic) num_threads(nt) if (nt > 1)
  for (int64_t n = 0; n < g.batch; ++n) {
    T* bp = ws + a_size + thread_id() * per_thread;
    T* col = bp + b_size;
    T* dxp = col + c_size;  // the gradient, accumulated as a padded phase image
    const T* dyn = dy + n * Co * P;
    std::fill(dxp, dxp + pi.size, T(0));
    for (int64_t q0 = 0; q0 < P; q0 += nc_max) {
      const int64_t nc = std::min(nc_max, P - q0);
      for (int64_t kb = 0; kb * KC < Co; ++kb) {
        const int64_t k0 = kb * KC, kc = std::min<int64_t>(KC, Co - k0);
        detail::pack_b<T>(false, k0, kc, q0, nc, dyn, P, bp);
        detail::macro_kernel<T>(kdim, Co, kb, ws, 0, m_panels, bp, kc, nc, col, nc, T(1),
                                kb == 0 ? T(0) : T(1));
      }
      col2im_block(g, pi, col, 0, kdim, q0, q0 + nc, nc, dxp);
    }
    phase_merge(g, pi, dxp, dx + n * image);
    if (bias)  // the transposed convolution's bias, while the image is still in cache
      detail::add_channel_bias<T>(1, g.in_channels, g.in_h * g.in_w, bias, dx + n * image);
  }
}


// backward-input by stride phases (dilation 1): no column matrix, no col2im.  Index the
// padded input by r = h + pad_h, c = w + pad_w and split it into its sh x sw phases
// (a, b) = (r mod sh, c mod sw), r = sh*u + a, c = sw*v + b.  A tap (i, j) reaches phase
// (a, b) only if i = a + sh*i', j = b + sw*j', from output pixel (u - i', v - j'), so
//
//   dx[ci, r, c] = sum over co, i', j' of  w[co, ci, a + sh*i', b + sw*j'] * dy[co, u - i', v - j']
//
// For each phase this is a stride-1 correlation of dy (zero-padded) with a sub-kernel: the
// forward's implicit gemm again (micro_kernel_indirect reading dy in place), with
// M = in_channels, K = out_channels x its taps, N = its pixels.  Each phase's pixels are
// written to their own compact block and the blocks are interleaved into dx at the end.
struct InputPhase {
  int64_t a = 0, b = 0;       // row and column phase
  int64_t kh = 0, kw = 0;     // its taps: i' < kh, j' < kw
  int64_t u0 = 0, U = 0;      // its rows u in [u0, u0 + U) (those inside the image)
  int64_t v0 = 0, V = 0;      // its columns v in [v0, v0 + V)
  int64_t kdim = 0;           // out_channels * kh * kw
  int64_t out = 0;            // where its U x V pixels start within one channel of the output
  int64_t packed = 0;         // where its packed weight starts
  int64_t taps = 0;           // where its tap offsets start
  bool halves = false;        // rows of V = W / 2 pixels (two pieces per vector)
};

struct InputPhases {
  int64_t count = 0;
  InputPhase p[64];           // sh * sw <= 64 (else the blocked path)
  int64_t top = 0, left = 0;  // dy's padding in its padded copy: max kh - 1, max kw - 1
  int64_t rows = 0, cols = 0, plane = 0;  // the padded copy of one channel of dy
};

// The range [first, first + count) of q with q*s + phase in [lo, hi).
inline void phase_range(int64_t lo, int64_t hi, int64_t s, int64_t phase, int64_t& first,
                        int64_t& count) {
  first = lo > phase ? ceil_div(lo - phase, s) : 0;
  const int64_t last = hi - 1 - phase;  // q*s <= last
  count = last < 0 ? 0 : std::max<int64_t>(0, last / s - first + 1);
}

template <typename T>
static bool make_input_phases(const ConvGeometry& g, InputPhases& ph) {
  constexpr int W = Simd<T>::W, MR = detail::GemmBlocking<T>::MR;
  const int64_t sh = g.stride_h, sw = g.stride_w;
  // Worth it with whole register tiles of input channels and no dilation; sh * sw phases.
  if (g.dilation_h != 1 || g.dilation_w != 1 || g.in_channels < 2 * MR) return false;
  if (sh > 8 || sw > 8 || sh * sw > 64) return false;
  ph.count = sh * sw;
  int64_t out = 0, max_u = 0, max_v = 0;
  for (int64_t a = 0; a < sh; ++a)
    for (int64_t b = 0; b < sw; ++b) {
      InputPhase& q = ph.p[a * sw + b];
      q.a = a, q.b = b;
      q.kh = a < g.kernel_h ? ceil_div(g.kernel_h - a, sh) : 0;
      q.kw = b < g.kernel_w ? ceil_div(g.kernel_w - b, sw) : 0;
      phase_range(g.pad_h, g.pad_h + g.in_h, sh, a, q.u0, q.U);
      phase_range(g.pad_w, g.pad_w + g.in_w, sw, b, q.v0, q.V);
      q.kdim = g.out_channels * q.kh * q.kw;
      q.out = out;
      out += q.U * q.V;
      if (q.U * q.V == 0) continue;
      // every vector of a tile must lie in one row of the phase
      if (q.V % W == 0) q.halves = false;
      else if (W >= 2 && q.V % (W / 2) == 0) q.halves = true;
      else return false;
      max_u = std::max(max_u, q.u0 + q.U);
      max_v = std::max(max_v, q.v0 + q.V);
    }
  ph.top = ceil_div(g.kernel_h, sh) - 1;
  ph.left = ceil_div(g.kernel_w, sw) - 1;
  ph.rows = max_u + ph.top;
  ph.cols = max_v + ph.left;
  ph.plane = ph.rows * ph.cols;
  // Huge paddings put the image's phases far from dy: the padded copy would be mostly zeros.
  const double copy = double(g.out_channels) * double(ph.rows) * double(ph.cols);
  const double budget = 4.0 * (double(g.out_channels) * double(g.out_h) * double(g.out_w) +
                               double(g.in_channels) * double(g.in_h) * double(g.in_w)) + 65536.0;
  return copy <= budget;
}

template <typename T>
static void backward_input_phased(const ConvGeometry& g, const InputPhases& ph, const T* dy,
                                  const T* w, const T* bias, T* dx) {
  using B = detail::GemmBlocking<T>;
  constexpr int NR = B::NR;
  const int64_t Ci = g.in_channels, Co = g.out_channels, KH = g.kernel_h, KW = g.kernel_w;
  const int64_t image = Ci * g.in_h * g.in_w, P_dy = g.out_h * g.out_w;
  const int64_t sh = g.stride_h, sw = g.stride_w;
  InputPhases phases = ph;

  // Each phase's sub-kernel as an (in_channels x kdim) matrix, packed for the micro-kernel,
  // and the offset of each of its taps (co, i', j') in the padded copy of dy.
  int64_t a_total = 0, taps_total = 0, kdim_max = 0;
  for (int64_t f = 0; f < phases.count; ++f) {
    InputPhase& q = phases.p[f];
    q.packed = a_total, q.taps = taps_total;
    a_total += round_up(detail::packed_a_size<T>(Ci, q.kdim), 64);
    taps_total += q.kdim;
    kdim_max = std::max(kdim_max, q.kdim);
  }
  const int64_t dyp_size = round_up(Co * phases.plane, 64);
  const int nt = conv_threads(g, g.batch);
  const int64_t per_thread = dyp_size + round_up(image, 64);
  T* ws = detail::scratch<T>(detail::kSlotColumns, a_total + nt * per_thread);
  T* gathered = detail::scratch<T>(detail::kSlotPartial, std::max<int64_t>(1, Ci * kdim_max));
  int64_t* tap_off = detail::scratch<int64_t>(detail::kSlotSpare, std::max<int64_t>(1, taps_total));
  for (int64_t f = 0; f < phases.count; ++f) {
    const InputPhase& q = phases.p[f];
    if (q.kdim == 0) continue;
    for (int64_t ci = 0; ci < Ci; ++ci)
      for (int64_t co = 0, k = 0; co < Co; ++co)
        for (int64_t i = 0; i < q.kh; ++i)
          for (int64_t j = 0; j < q.kw; ++j, ++k)
            gathered[ci * q.kdim + k] = w[((co * Ci + ci) * KH + q.a + sh * i) * KW + q.b + sw * j];
    detail::pack_a_deep<T>(Ci, q.kdim, gathered, q.kdim, ws + q.packed);
    for (int64_t co = 0, k = 0; co < Co; ++co)
      for (int64_t i = 0; i < q.kh; ++i)
        for (int64_t j = 0; j < q.kw; ++j, ++k)
          tap_off[q.taps + k] = co * phases.plane + (phases.top - i) * phases.cols + (phases.left - j);
  }
  const int64_t copy_rows = std::min(g.out_h, phases.rows - phases.top);
  const int64_t copy_cols = std::min(g.out_w, phases.cols - phases.left);
  // Stride 2: the rows of each parity a are merged from both phases (a, *) in one pass
  // when those tile them exactly (+3-6% on the backward-input of gasca layers 2 and 3 and
  // gasca-64-deep's levels 2 and 3, AVX-512, two threads, against a masked expand per
  // phase): merge[a] = {the phase holding columns 0, 2, ..., the one holding 1, 3, ...}.
  // Image column c = 2 * v + b - pad_w, so phase b's first column is 2 * v0 + b - pad_w.
  const InputPhase* merge[8][2] = {};  // (sh <= 8: make_input_phases)
  if (sw == 2)
    for (int64_t a = 0; a < sh; ++a) {
      const InputPhase& p0 = phases.p[a * 2];
      const InputPhase& p1 = phases.p[a * 2 + 1];
      const int64_t c0 = 2 * p0.v0 - g.pad_w, c1 = 2 * p1.v0 + 1 - g.pad_w;
      const InputPhase& ev = c0 < c1 ? p0 : p1;
      const InputPhase& od = c0 < c1 ? p1 : p0;
      if (std::min(c0, c1) == 0 && std::max(c0, c1) == 1 && ev.V == (g.in_w + 1) / 2 &&
          od.V == g.in_w / 2)
        merge[a][0] = &ev, merge[a][1] = &od;
    }

#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    T* dyp = ws + a_total + thread_id() * per_thread;
    T* outp = dyp + dyp_size;  // the phases' blocks, channel by channel (image elements)
    bool zeroed = false;       // dyp's padding is zero (it is the same for every image)
#pragma omp for schedule(dynamic)
    for (int64_t n = 0; n < g.batch; ++n) {
      if (!zeroed) std::fill(dyp, dyp + Co * phases.plane, T(0)), zeroed = true;
      const T* dyn = dy + n * Co * P_dy;
      for (int64_t co = 0; co < Co; ++co)
        for (int64_t oh = 0; oh < copy_rows; ++oh)
          copy_run(dyp + co * phases.plane + (oh + phases.top) * phases.cols + phases.left,
                   dyn + (co * g.out_h + oh) * g.out_w, copy_cols);
      for (int64_t f = 0; f < phases.count; ++f) {
        const InputPhase& q = phases.p[f];
        const int64_t P = q.U * q.V;
        if (P == 0) continue;
        T* c = outp + q.out;  // row ci of this phase's block is at c + ci * (in_h * in_w)
        const int64_t ldc = g.in_h * g.in_w;
        if (q.kdim == 0) {  // no tap reaches this phase (kernel smaller than the stride)
          for (int64_t ci = 0; ci < Ci; ++ci) std::fill(c + ci * ldc, c + ci * ldc + P, T(0));
          continue;
        }
        // phase pixel p is (u0 + p / V, v0 + p % V) in the padded copy of dy
        const auto pixel = [&q, &phases](int64_t p) {
          return (q.u0 + p / q.V) * phases.cols + q.v0 + p % q.V;
        };
        implicit_gemm<T>(Ci, q.kdim, ws + q.packed, dyp, tap_off + q.taps, P, pixel, q.halves, 0,
                         ceil_div(P, NR), c, ldc, nullptr);
      }
      // Interleave the phases' blocks into dx: image row h is row u = (h + pad_h - a) / sh
      // of the phases (a, *), a = (h + pad_h) mod sh; its columns alternate between them.
      T* dxn = dx + n * image;
      for (int64_t ci = 0; ci < Ci; ++ci)
        for (int64_t h = 0; h < g.in_h; ++h) {
          const int64_t r = h + g.pad_h, a = r % sh;
          T* row = dxn + (ci * g.in_h + h) * g.in_w;
          const T* block = outp + ci * g.in_h * g.in_w;  // channel ci of the phases' blocks
          if (sw == 2 && merge[a][0]) {
            const InputPhase& ev = *merge[a][0];
            const InputPhase& od = *merge[a][1];
            merge_stride2(row, block + ev.out + (r / sh - ev.u0) * ev.V,
                          block + od.out + (r / sh - od.u0) * od.V, g.in_w);
            continue;
          }
          for (int64_t b = 0; b < sw; ++b) {
            const InputPhase& q = phases.p[a * sw + b];
            if (q.V == 0) continue;
            const T* src = block + q.out + (r / sh - q.u0) * q.V;
            T* dst = row + sw * q.v0 + b - g.pad_w;
            if (sw == 1)
              copy_run(dst, src, q.V);
            else if (sw == 2)
              store_stride2(dst, src, q.V);
            else
              for (int64_t v = 0; v < q.V; ++v) dst[v * sw] = src[v];
          }
        }
      if (bias)  // the transposed convolution's bias, while the image is still in cache
        detail::add_channel_bias<T>(1, Ci, g.in_h * g.in_w, bias, dxn);
    }
  }
}

// backward-weight when dW is small (gasca layer 1: 32 x 25; gasca-64-deep's: 16 x 16): a
// gemm over the pixels would spend more time packing than multiplying (each packed element
// feeds only 2 * C_out FLOPs), so instead each dW[co, tap] is a dot product of two
// contiguous rows, dy[co, :] and col[tap, :], kept as a vector of partial sums that runs
// along the pixels.  A tile of (co, tap) pairs shares its loads (AVX-512's 4 x 5: 9 vector
// loads feed 20 FMAs).  The vector sums live in a per-thread buffer across the whole batch
// and are reduced once at the end.  Up to 64 KB of partial sums: beyond, the implicit gemm
// wins (gasca-64-deep's level 2, 32 x 256: 1.65x this path, whose small tile reloads its
// operands far more often than the gemm's).
template <typename T, int MT, int NT>
static inline void dot_tile(const T* dy, const T* col, int64_t pv, int64_t ld, T* acc,
                            int64_t acc_ld, int64_t co, int64_t tap) {
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int W = S::W;
  V a[MT][NT];
  for (int u = 0; u < MT; ++u)
    for (int v = 0; v < NT; ++v) a[u][v] = S::load(acc + ((co + u) * acc_ld + tap + v) * W);
  for (int64_t q = 0; q < pv; q += W) {
    V d[MT], c[NT];
    for (int u = 0; u < MT; ++u) d[u] = S::load(dy + (co + u) * ld + q);
    for (int v = 0; v < NT; ++v) c[v] = S::load(col + (tap + v) * ld + q);
    for (int u = 0; u < MT; ++u)
      for (int v = 0; v < NT; ++v) a[u][v] = S::fma(d[u], c[v], a[u][v]);
  }
  for (int u = 0; u < MT; ++u)
    for (int v = 0; v < NT; ++v) S::store(acc + ((co + u) * acc_ld + tap + v) * W, a[u][v]);
}

// The tile: MT rows of dy by NT taps, MT * NT vector accumulators.  4 x 5 = 20 of
// AVX-512's 32 registers.  AVX2 has 16, where 20 accumulators spilled: 2 x 5 (10, plus 2
// rows of dy and the taps' vectors) was the fastest of 2x4, 2x5, 2x6, 3x4, 3x5 and 4x3,
// 1.19x the 4 x 5 tile on gasca-64-deep's level 2 and 1.38x on gasca-64's layer 1.
#if defined(__AVX512F__)
constexpr int kDotRows = 4, kDotTaps = 5;
#else
constexpr int kDotRows = 2, kDotTaps = 5;
#endif

template <typename T, int MT>
static inline void dot_row(const T* dy, const T* col, int64_t pv, int64_t ld, T* acc,
                           int64_t kdim, int64_t co) {
  constexpr int NT = kDotTaps;
  int64_t tap = 0;
  for (; tap + NT <= kdim; tap += NT) dot_tile<T, MT, NT>(dy, col, pv, ld, acc, kdim, co, tap);
  for (; tap < kdim; ++tap) dot_tile<T, MT, 1>(dy, col, pv, ld, acc, kdim, co, tap);
}

template <typename T>
static bool backward_weight_small_applies(const ConvGeometry& g) {
  const int64_t kdim = g.in_channels * g.kernel_h * g.kernel_w;
  return g.out_channels * kdim * Simd<T>::W * int64_t(sizeof(T)) <= (int64_t(64) << 10);
}

template <typename T>
static void backward_weight_small(const ConvGeometry& g, const T* x, const T* dy, T* dw) {
  using S = Simd<T>;
  constexpr int W = S::W;
  const int64_t kdim = g.in_channels * g.kernel_h * g.kernel_w;
  const int64_t P = g.out_h * g.out_w, Co = g.out_channels;
  const int64_t PV = round_up(P, W);  // rows padded with zeros to whole vectors
  const int64_t image = g.in_channels * g.in_h * g.in_w;
  const int nt = conv_threads(g, g.batch);
  const int64_t acc_size = round_up(Co * kdim * W, 64);
  const int64_t col_size = round_up(kdim * PV, 64);
  const int64_t dy_size = P == PV ? 0 : round_up(Co * PV, 64);
  const PhaseImage pi = make_phase_image(g);
  const int64_t per_thread = acc_size + col_size + dy_size + round_up(pi.size, 64);
  T* ws = detail::scratch<T>(detail::kSlotColumns, nt * per_thread);

#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const int tid = thread_id(), nth = thread_count();
    T* acc = ws + tid * per_thread;
    T* col = acc + acc_size;
    T* dyp = col + col_size;
    T* xp = dyp + dy_size;
    std::fill(acc, acc + Co * kdim * W, T(0));
    if (PV != P) {  // the padding columns stay zero for the whole batch
      for (int64_t r = 0; r < kdim; ++r) std::fill(col + r * PV + P, col + (r + 1) * PV, T(0));
      for (int64_t co = 0; co < Co; ++co) std::fill(dyp + co * PV + P, dyp + (co + 1) * PV, T(0));
    }
    const int64_t n0 = g.batch * tid / nth, n1 = g.batch * (tid + 1) / nth;
    for (int64_t n = n0; n < n1; ++n) {
      phase_split(g, pi, x + n * image, xp, n > n0);
      im2col_block(g, pi, xp, 0, kdim, 0, P, col, PV);
      const T* d = dy + n * Co * P;
      if (PV != P) {
        for (int64_t co = 0; co < Co; ++co) std::memcpy(dyp + co * PV, d + co * P, sizeof(T) * P);
        d = dyp;
      }
      int64_t co = 0;
      for (; co + kDotRows <= Co; co += kDotRows) dot_row<T, kDotRows>(d, col, PV, PV, acc, kdim, co);
      for (; co < Co; ++co) dot_row<T, 1>(d, col, PV, PV, acc, kdim, co);
    }
#pragma omp barrier
    // dw[e] = sum over threads and lanes of the partial sums; elements split between threads.
    const int64_t e0 = Co * kdim * tid / nth, e1 = Co * kdim * (tid + 1) / nth;
    for (int64_t e = e0; e < e1; ++e) {
      typename S::V v = S::load(ws + e * W);
      for (int t = 1; t < nth; ++t) v = S::add(v, S::load(ws + t * per_thread + e * W));
      dw[e] = S::sum(v);
    }
  }
}

// backward-weight as a gemm: each thread accumulates dy_n col_n^T over its own images into
// a private dW (col_n^T's packed panels gathered straight from the phase image,
// pack_b_taps); the partial sums are added at the end.
template <typename T>
static void backward_weight_gemm(const ConvGeometry& g, const T* x, const T* dy, T* dw) {
  using B = detail::GemmBlocking<T>;
  constexpr int MR = B::MR, NR = B::NR, KC = B::KC, NC = B::NC;
  const int64_t kdim = g.in_channels * g.kernel_h * g.kernel_w;
  const int64_t P = g.out_h * g.out_w, Co = g.out_channels;
  const int64_t image = g.in_channels * g.in_h * g.in_w;
  const int nt = conv_threads(g, g.batch);
  const int64_t wsize = Co * kdim;

  // Per thread: the packed dy_n (A), a packed block of col_n^T (B, gathered straight from the
  // phase image), a private dW (threads > 0) and the phase-split image.
  const PhaseImage pi = make_phase_image(g);
  if (pi.size >= (int64_t(1) << 31)) throw std::invalid_argument("conv2d: image too large");
  const int64_t a_size = round_up(detail::packed_a_size<T>(Co, P), 64);
  const int64_t nc_max = std::min<int64_t>(NC, round_up(kdim, NR));
  const int64_t b_size = round_up(std::min<int64_t>(KC, P) * nc_max, 64);
  const int64_t part_offset = a_size + b_size;
  const int64_t per_thread = part_offset + round_up(wsize, 64) + round_up(pi.size, 64);
  T* ws = detail::scratch<T>(detail::kSlotColumns, nt * per_thread);
  int32_t* off32 = detail::scratch<int32_t>(detail::kSlotSpare, kdim);
  tap_offsets(g, pi, off32);
  const int64_t m_panels = ceil_div(Co, MR);

#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const int tid = thread_id(), nth = thread_count();
    T* ap = ws + tid * per_thread;
    T* bp = ap + a_size;
    T* acc = tid == 0 ? dw : ap + part_offset;
    T* xp = ap + part_offset + round_up(wsize, 64);
    const int64_t n0 = g.batch * tid / nth, n1 = g.batch * (tid + 1) / nth;
    bool first = true;
    for (int64_t n = n0; n < n1; ++n) {
      detail::pack_a<T>(false, Co, P, dy + n * Co * P, P, ap);
      phase_split(g, pi, x + n * image, xp, n > n0);
      for (int64_t kb = 0; kb * KC < P; ++kb) {
        const int64_t k0 = kb * KC, kc = std::min<int64_t>(KC, P - k0);
        for (int64_t jc = 0; jc < kdim; jc += nc_max) {
          const int64_t nc = std::min(nc_max, kdim - jc);
          pack_b_taps(g, pi, xp, off32, k0, kc, jc, nc, bp);
          detail::macro_kernel<T>(Co, P, kb, ap, 0, m_panels, bp, kc, nc, acc + jc, kdim, T(1),
                                  first ? T(0) : T(1));
        }
        first = false;
      }
    }
    if (first) std::fill(acc, acc + wsize, T(0));  // a thread with no images
#pragma omp barrier
    // dw += the other threads' partial sums, the elements split between the threads.
    const int64_t e0 = wsize * tid / nth, e1 = wsize * (tid + 1) / nth;
    for (int t = 1; t < nth; ++t) {
      const T* part = ws + t * per_thread + part_offset;
#pragma omp simd
      for (int64_t e = e0; e < e1; ++e) dw[e] += part[e];
    }
  }
}

// backward-weight as an implicit gemm, transposed: dW^T (kdim x C_out) = col_n (kdim x P)
// dy_n^T (P x C_out), summed over the images.  The micro-kernel reads its A operand, the
// column matrix, straight out of the phase image (micro_kernel_gather_a: row i of a panel is
// a kernel tap, element p its value at output pixel p), so nothing is gathered but dy_n^T,
// packed once per image (C_out x P: a tenth to a thirtieth of the column matrix in gasca).
// Each thread sums its own images into a private dW^T; the sums are added in thread order
// and transposed into dw at the end.  Taken when C_out is a whole number of NR-wide panels
// (gasca: 32, 64, 128); otherwise backward_weight_gemm, whose panels run along C_out.
template <typename T>
static bool backward_weight_implicit_applies(const ConvGeometry& g) {
  return g.out_channels % detail::GemmBlocking<T>::NR == 0;
}

template <typename T>
static void backward_weight_implicit(const ConvGeometry& g, const T* x, const T* dy, T* dw) {
  using B = detail::GemmBlocking<T>;
  constexpr int MR = B::MR, NR = B::NR, KC = B::KC;
  const int64_t kdim = g.in_channels * g.kernel_h * g.kernel_w;
  const int64_t P = g.out_h * g.out_w, Co = g.out_channels;
  const int64_t image = g.in_channels * g.in_h * g.in_w;
  const int nt = conv_threads(g, g.batch);
  const PhaseImage pi = make_phase_image(g);

  // Per thread: the packed block of dy_n^T (B), a private dW^T and the phase image.
  const int64_t b_size = round_up(std::min<int64_t>(KC, P) * Co, 64);
  const int64_t acc_size = round_up(kdim * Co, 64);
  const int64_t per_thread = b_size + acc_size + round_up(pi.size, 64);
  T* ws = detail::scratch<T>(detail::kSlotColumns, nt * per_thread);
  int64_t* tap = detail::scratch<int64_t>(detail::kSlotSpare, kdim + P);
  int64_t* pix = tap + kdim;  // offset of output pixel q's window in the phase image
  tap_offsets(g, pi, tap);
  for (int64_t q = 0; q < P; ++q) pix[q] = (q / g.out_w) * g.stride_h * pi.cols + q % g.out_w;
  const int64_t m_panels = ceil_div(kdim, MR), n_panels = Co / NR;

#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const int tid = thread_id(), nth = thread_count();
    T* bp = ws + tid * per_thread;
    T* acc = bp + b_size;  // dW^T: kdim x Co
    T* xp = acc + acc_size;
    const int64_t n0 = g.batch * tid / nth, n1 = g.batch * (tid + 1) / nth;
    bool first = true;
    for (int64_t n = n0; n < n1; ++n) {
      phase_split(g, pi, x + n * image, xp, n > n0);
      const T* dyn = dy + n * Co * P;
      for (int64_t kb = 0; kb * KC < P; ++kb) {
        const int64_t k0 = kb * KC, kc = std::min<int64_t>(KC, P - k0);
        detail::pack_b<T>(true, k0, kc, 0, Co, dyn, P, bp);  // rows k0.. of dy_n^T
        for (int64_t ip = 0; ip < m_panels; ++ip) {
          const int mr = static_cast<int>(std::min<int64_t>(MR, kdim - ip * MR));
          const T* rows[MR];  // the panel's taps; rows past mr repeat its last one
          for (int i = 0; i < MR; ++i) rows[i] = xp + tap[ip * MR + std::min(i, mr - 1)];
          for (int64_t jp = 0; jp < n_panels; ++jp)
            detail::micro_kernel_gather_a<T>(kc, rows, pix + k0, bp + jp * NR * kc,
                                             acc + ip * MR * Co + jp * NR, Co, T(1),
                                             first ? T(0) : T(1), mr, NR);
        }
        first = false;
      }
    }
    if (first) std::fill(acc, acc + kdim * Co, T(0));  // a thread with no images
#pragma omp barrier
    // dw[co, k] = the threads' dW^T[k, co], added in thread order; elements split by thread.
    const int64_t e0 = kdim * Co * tid / nth, e1 = kdim * Co * (tid + 1) / nth;
    for (int64_t e = e0; e < e1; ++e) {
      const int64_t co = e / kdim, k = e % kdim;
      T sum = ws[b_size + k * Co + co];
      for (int t = 1; t < nth; ++t) sum += ws[t * per_thread + b_size + k * Co + co];
      dw[e] = sum;
    }
  }
}

// ============================================================ small output maps
// With a few output pixels per image (gasca-64-deep's last levels: 4x4 and 2x2 maps), every
// per-image product above is a few columns wide: narrower than one register tile, so most
// of each tile is wasted, and the whole weight streams past once per image for 4 or 16
// columns of work.  Then the images' column matrices, side by side, make one product with
// G * P columns (G images of P pixels; column i*P + q is pixel q of image n0 + i):
//   forward          Y (Co x GP) = W col,    scattered into y image by image, plus the bias
//   backward-input   dcol = W^T dY,          added back onto each image (col2im)
//   backward-weight  dW (+)= dY col^T
// where dY (Co x GP) is dy with its images side by side.  The gradients call the fast gemm
// (gemm.cpp, version 2) on an explicit col; the forward builds no col at all: the gemm's B
// panels are gathered straight from the padded images (pack_b_batched) and multiplied by
// its pieces (11% faster on level 4 than building col and calling gemm).  Images go in
// groups of G, so that col stays within kBatchedColumns elements.  gasca-64-deep's level 5
// (2x2 outputs): its six passes went from 0.33-0.66x PyTorch's to 1.1-1.8x (2.7-3.3x the
// per-image paths); level 4 (4x4): gradients 9-22% faster, forward 1.04x.
//
// The columns are read from (and added back onto) a zero-padded copy of each image, with
// no phase split: a map this small is a few rows of a few pixels, and the phase image's
// stride-2 copies cost more than they save here.  Tap r = (ci, i, j) of output pixel
// q = (oh, ow) is then element off[r] + pix[q] of the padded image, with
//   off[r] = (ci * rows + i * dh) * cols + j * dw,   pix[q] = oh * sh * cols + ow * sw.
struct PaddedImage {
  int64_t rows = 0, cols = 0, size = 0;  // of one channel: rows x cols; all channels: size
  int64_t* off = nullptr;                // kdim tap offsets
  int64_t* pix = nullptr;                // P pixel offsets
};

template <typename T>
constexpr int64_t kBatchedPixels = detail::GemmBlocking<T>::NR;
constexpr int64_t kBatchedColumns = int64_t(1) << 20;

// (Callers have checked phase_image_is_reasonable: the padded image is about as large.)
template <typename T>
static bool batched_applies(const ConvGeometry& g) {
  return g.batch > 1 && g.out_h * g.out_w <= kBatchedPixels<T>;
}

// Images per group: as many as keep the column matrix within kBatchedColumns elements.
inline int64_t batched_group(const ConvGeometry& g) {
  const int64_t per_image = g.in_channels * g.kernel_h * g.kernel_w * g.out_h * g.out_w;
  return std::max<int64_t>(1, std::min<int64_t>(g.batch, kBatchedColumns / std::max<int64_t>(1, per_image)));
}

// The padded image's layout (rows, cols: whatever reaches further, the outputs' windows or
// the image) and the offsets, in the calling thread's spare scratch slot.
inline PaddedImage make_padded_image(const ConvGeometry& g) {
  PaddedImage pd;
  pd.rows = std::max((g.out_h - 1) * g.stride_h + (g.kernel_h - 1) * g.dilation_h + 1, g.pad_h + g.in_h);
  pd.cols = std::max((g.out_w - 1) * g.stride_w + (g.kernel_w - 1) * g.dilation_w + 1, g.pad_w + g.in_w);
  pd.size = g.in_channels * pd.rows * pd.cols;
  const int64_t kdim = g.in_channels * g.kernel_h * g.kernel_w, P = g.out_h * g.out_w;
  pd.off = detail::scratch<int64_t>(detail::kSlotSpare, kdim + P);
  pd.pix = pd.off + kdim;
  for (int64_t r = 0; r < kdim; ++r) {
    const int64_t ci = r / (g.kernel_h * g.kernel_w), i = (r / g.kernel_w) % g.kernel_h,
                  j = r % g.kernel_w;
    pd.off[r] = (ci * pd.rows + i * g.dilation_h) * pd.cols + j * g.dilation_w;
  }
  for (int64_t q = 0; q < P; ++q)
    pd.pix[q] = (q / g.out_w) * g.stride_h * pd.cols + (q % g.out_w) * g.stride_w;
  return pd;
}

// The image part of a padded image: row h of channel ci is row h + pad_h from column pad_w.
template <typename T>
inline T* padded_row(const ConvGeometry& g, const PaddedImage& pd, T* xpad, int64_t ci, int64_t h) {
  return xpad + (ci * pd.rows + h + g.pad_h) * pd.cols + g.pad_w;
}

// xpad = the zero-padded copy of one image.
template <typename T>
static void pad_image(const ConvGeometry& g, const PaddedImage& pd, const T* x, T* xpad) {
  std::fill(xpad, xpad + pd.size, T(0));
  for (int64_t ci = 0; ci < g.in_channels; ++ci)
    for (int64_t h = 0; h < g.in_h; ++h)
      copy_run(padded_row(g, pd, xpad, ci, h), x + (ci * g.in_h + h) * g.in_w, g.in_w);
}

// col (kdim x G*P) = the column matrices of the G padded images side by side, row by row
// (threads own rows): no two threads ever write into one cache line, which they would if
// they owned images (one image's piece of a row is 16 bytes at P = 4).
template <typename T>
static void batched_columns(const ConvGeometry& g, const PaddedImage& pd, int64_t G,
                            const T* xpads, int64_t per, T* col, int nt) {
  const int64_t kdim = g.in_channels * g.kernel_h * g.kernel_w, P = g.out_h * g.out_w;
  const int64_t ld = G * P;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t r = 0; r < kdim; ++r) {
    T* dst = col + r * ld;
    const T* src = xpads + pd.off[r];
    for (int64_t i = 0; i < G; ++i, dst += P, src += per)
      for (int64_t q = 0; q < P; ++q) dst[q] = src[pd.pix[q]];
  }
}

// The forward's B operand without the column matrix: rows [k0, k0 + kc) and columns
// [j0, j0 + nc) of it (column j: pixel j % P of image j / P), gathered from the padded
// images straight into the gemm's panels ([kc][NR] each; columns past nc are zero).
template <typename T>
static void pack_b_batched(const PaddedImage& pd, const T* xpads, int64_t per, int64_t P,
                           int64_t k0, int64_t kc, int64_t j0, int64_t nc, T* dst) {
  constexpr int NR = detail::GemmBlocking<T>::NR;
  for (int64_t jp = 0; jp * NR < nc; ++jp) {
    const int cols = static_cast<int>(std::min<int64_t>(NR, nc - jp * NR));
    const T* base[NR];  // where each column's window starts
    for (int c = 0; c < cols; ++c) {
      const int64_t j = j0 + jp * NR + c;
      base[c] = xpads + (j / P) * per + pd.pix[j % P];
    }
    T* row = dst + jp * NR * kc;
    for (int64_t k = 0; k < kc; ++k, row += NR) {
      const int64_t o = pd.off[k0 + k];
      for (int c = 0; c < cols; ++c) row[c] = base[c][o];
      for (int c = cols; c < NR; ++c) row[c] = T(0);
    }
  }
}

// What the three passes share: the sizes, the group, the threads and the padded images'
// layout (`per` elements apart in scratch).
struct SmallMaps {
  int64_t kdim, P, Co, G, image;
  int nt;
  PaddedImage pd;
  int64_t per;

  explicit SmallMaps(const ConvGeometry& g)
      : kdim(g.in_channels * g.kernel_h * g.kernel_w), P(g.out_h * g.out_w), Co(g.out_channels),
        G(batched_group(g)), image(g.in_channels * g.in_h * g.in_w), nt(conv_threads(g, G)),
        pd(make_padded_image(g)), per(round_up(pd.size, 64)) {}

  // The gradients' scratch: col (kdim x G*P), then dY (Co x G*P) at col + col_size().
  int64_t col_size() const { return round_up(kdim * G * P, 64); }
  template <typename T>
  T* columns() const { return detail::scratch<T>(detail::kSlotColumns, col_size() + Co * G * P); }
};

// dY (Co x G*P) = dy of images [n0, n0 + G) side by side.
template <typename T>
static void batched_gather_dy(const ConvGeometry& g, const T* dy, int64_t n0, int64_t G, T* dY) {
  const int64_t P = g.out_h * g.out_w, Co = g.out_channels;
  for (int64_t co = 0; co < Co; ++co)
    for (int64_t i = 0; i < G; ++i)
      std::memcpy(dY + co * G * P + i * P, dy + ((n0 + i) * Co + co) * P, sizeof(T) * P);
}

template <typename T>
static void forward_batched(const ConvGeometry& g, const T* x, const T* w, const T* bias, T* y) {
  using B = detail::GemmBlocking<T>;
  constexpr int MR = B::MR, NR = B::NR, KC = B::KC, NC = B::NC;
  const SmallMaps sm(g);
  const int64_t kdim = sm.kdim, P = sm.P, Co = sm.Co, G = sm.G, image = sm.image, per = sm.per;
  const PaddedImage& pd = sm.pd;
  const int nt = sm.nt;
  // Y's columns in one block per thread (at most NC), like the gemm's own split.
  const int64_t nc_max = std::min<int64_t>(NC, round_up(ceil_div(G * P, nt), NR));
  const int64_t a_size = round_up(detail::packed_a_size<T>(Co, kdim), 64);
  const int64_t y_size = round_up(Co * G * P, 64), b_size = round_up(std::min<int64_t>(KC, kdim) * nc_max, 64);
  T* ws = detail::scratch<T>(detail::kSlotColumns, a_size + y_size + nt * b_size);
  T* Y = ws + a_size;
  T* xpads = detail::scratch<T>(detail::kSlotPartial, G * per);
  const int64_t m_panels = ceil_div(Co, MR);
  // One parallel region: the threads share out the weight's packing, then for each group
  // of images its padding, Y's column blocks and the scatter into y, each loop ending in
  // the barrier the next one needs.
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const int tid = thread_id(), nth = thread_count();
    detail::pack_a<T>(false, Co, kdim, w, kdim, ws, m_panels * tid / nth, m_panels * (tid + 1) / nth);
    T* bp = ws + a_size + y_size + tid * b_size;
    for (int64_t n0 = 0; n0 < g.batch; n0 += G) {
      const int64_t gn = std::min(G, g.batch - n0), GP = gn * P;
#pragma omp for schedule(static)
      for (int64_t i = 0; i < gn; ++i) pad_image(g, pd, x + (n0 + i) * image, xpads + i * per);
#pragma omp for schedule(static)
      for (int64_t blk = 0; blk < ceil_div(GP, nc_max); ++blk) {
        const int64_t j0 = blk * nc_max, nc = std::min(nc_max, GP - j0);
        for (int64_t kb = 0; kb * KC < kdim; ++kb) {
          const int64_t k0 = kb * KC, kc = std::min<int64_t>(KC, kdim - k0);
          pack_b_batched(pd, xpads, per, P, k0, kc, j0, nc, bp);
          detail::macro_kernel<T>(Co, kdim, kb, ws, 0, m_panels, bp, kc, nc, Y + j0, GP, T(1),
                                  kb == 0 ? T(0) : T(1));
        }
      }
#pragma omp for schedule(static)
      for (int64_t i = 0; i < gn; ++i)
        for (int64_t co = 0; co < Co; ++co) {
          const T b = bias ? bias[co] : T(0);
          const T* src = Y + co * GP + i * P;
          T* dst = y + ((n0 + i) * Co + co) * P;
          for (int64_t q = 0; q < P; ++q) dst[q] = src[q] + b;
        }
    }
  }
}

template <typename T>
static void backward_input_batched(const ConvGeometry& g, const T* dy, const T* w, const T* bias,
                                   T* dx) {
  const SmallMaps sm(g);
  const PaddedImage& pd = sm.pd;
  T* col = sm.columns<T>();
  T* dY = col + sm.col_size();
  T* dxpads = detail::scratch<T>(detail::kSlotPartial, sm.nt * sm.per);  // dx's, one a thread
  for (int64_t n0 = 0; n0 < g.batch; n0 += sm.G) {
    const int64_t gn = std::min(sm.G, g.batch - n0), GP = gn * sm.P;
    batched_gather_dy(g, dy, n0, gn, dY);
    gemm<T>(true, false, sm.kdim, GP, sm.Co, T(1), w, sm.kdim, dY, GP, T(0), col, GP,
            gemm_fastest_version());
    // col2im: threads own images (each adds into its own padded image; reading columns
    // that another thread reads costs nothing).  The pixels of one tap never overlap.
#pragma omp parallel num_threads(sm.nt) if (sm.nt > 1)
    {
      T* dxpad = dxpads + thread_id() * sm.per;
#pragma omp for schedule(dynamic)
      for (int64_t i = 0; i < gn; ++i) {
        std::fill(dxpad, dxpad + pd.size, T(0));
        const T* src = col + i * sm.P;
        for (int64_t r = 0; r < sm.kdim; ++r, src += GP) {
          T* dst = dxpad + pd.off[r];
          for (int64_t q = 0; q < sm.P; ++q) dst[pd.pix[q]] += src[q];
        }
        T* dxn = dx + (n0 + i) * sm.image;
        for (int64_t ci = 0; ci < g.in_channels; ++ci)
          for (int64_t h = 0; h < g.in_h; ++h)
            copy_run(dxn + (ci * g.in_h + h) * g.in_w, padded_row(g, pd, dxpad, ci, h), g.in_w);
        if (bias) detail::add_channel_bias<T>(1, g.in_channels, g.in_h * g.in_w, bias, dxn);
      }
    }
  }
}

template <typename T>
static void backward_weight_batched(const ConvGeometry& g, const T* x, const T* dy, T* dw) {
  const SmallMaps sm(g);
  T* col = sm.columns<T>();
  T* dY = col + sm.col_size();
  T* xpads = detail::scratch<T>(detail::kSlotPartial, sm.G * sm.per);  // x's, one an image
  for (int64_t n0 = 0; n0 < g.batch; n0 += sm.G) {
    const int64_t gn = std::min(sm.G, g.batch - n0), GP = gn * sm.P;
#pragma omp parallel for schedule(static) num_threads(sm.nt) if (sm.nt > 1)
    for (int64_t i = 0; i < gn; ++i)
      pad_image(g, sm.pd, x + (n0 + i) * sm.image, xpads + i * sm.per);
    batched_columns(g, sm.pd, gn, xpads, sm.per, col, sm.nt);
    batched_gather_dy(g, dy, n0, gn, dY);
    // dW (Co x kdim) (+)= dY (Co x GP) col^T (GP x kdim); groups in order: reproducible
    gemm<T>(false, true, sm.Co, sm.kdim, GP, T(1), dY, GP, col, GP, n0 == 0 ? T(0) : T(1), dw,
            sm.kdim, gemm_fastest_version());
  }
}

// ============================================================ the entry points
template <typename T>
void forward(const ConvGeometry& g, const T* x, const T* w, const T* bias, T* y,
             int gemm_version) {
  if (!phase_image_is_reasonable(g)) return conv2d_v1::forward(g, x, w, bias, y, gemm_version);
  if (batched_applies<T>(g)) return forward_batched(g, x, w, bias, y);
  if (forward_implicit_applies<T>(g)) return forward_implicit(g, x, w, bias, y);
  forward_packed(g, x, w, bias, y);
}

template <typename T>
void backward_input(const ConvGeometry& g, const T* dy, const T* w, T* dx, int gemm_version,
                    const T* bias) {
  if (batched_applies<T>(g) && phase_image_is_reasonable(g))
    return backward_input_batched(g, dy, w, bias, dx);
  InputPhases phases;
  if (make_input_phases<T>(g, phases)) return backward_input_phased(g, phases, dy, w, bias, dx);
  if (!phase_image_is_reasonable(g))
    return conv2d_v1::backward_input(g, dy, w, dx, gemm_version, bias);
  backward_input_blocked(g, dy, w, bias, dx);
}

template <typename T>
void backward_weight(const ConvGeometry& g, const T* x, const T* dy, T* dw, int gemm_version) {
  if (!phase_image_is_reasonable(g))
    return conv2d_v1::backward_weight(g, x, dy, dw, gemm_version);
  if (backward_weight_small_applies<T>(g)) return backward_weight_small(g, x, dy, dw);
  if (batched_applies<T>(g)) return backward_weight_batched(g, x, dy, dw);
  if (backward_weight_implicit_applies<T>(g)) return backward_weight_implicit(g, x, dy, dw);
  backward_weight_gemm(g, x, dy, dw);
}

GASCA_CONV2D_INSTANTIATE_VERSION(float)
GASCA_CONV2D_INSTANTIATE_VERSION(double)

}  // namespace conv2d_v2
}  // namespace gasca
