// eltwise.cpp: element-wise kernels of the activations (see eltwise.h for the formulas).
//
// Versions (pick one with `version`; -1 = the fastest, kEltwiseFastest below):
//   0  reference: the formula as eltwise.h writes it, one pass on one thread.
//   1  fast: the same loop, split over the OpenMP threads in cache-sized chunks.
//   Both loops are vectorised by the compiler (`omp simd`; the selects become blends, no
//   branches): each element is independent, so lanes and threads change no float.
//      NumPy runs these passes on one thread; a training step makes about twenty of them
//      over activations of up to 4 MB, where memory bandwidth, not arithmetic, is the limit,
//      and two cores draw more of it than one.
#include "eltwise.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "gemm.h"  // get_num_threads

namespace gasca {

namespace {
const char* const kEltwiseVersionNames[] = {
    "reference: one pass on one thread",
    "OpenMP chunks + SIMD",
};
constexpr int kEltwiseVersions = sizeof(kEltwiseVersionNames) / sizeof(kEltwiseVersionNames[0]);
constexpr int kEltwiseFastest = 1;

// Chunks of 16K elements: large enough to amortise the fork, small enough to balance.
constexpr int64_t kChunk = 1 << 14;

// y = max(x * s, x), written as the select NumPy's maximum makes: x * s unless x * s < x
// (a NaN on either side keeps x * s, which is then NaN too).
template <typename T>
inline T leaky(T x, T s) {
  const T xs = x * s;
  return xs < x ? x : xs;
}

int resolve(int version, const char* who) {
  if (version == -1) return kEltwiseFastest;
  if (version < 0 || version >= kEltwiseVersions)
    throw std::invalid_argument(std::string(who) + ": no such version");
  return version;
}

// body(lo, hi) over [0, n) in chunks: one thread (version 0) or the OpenMP threads.
template <class Body>
void over_chunks(int64_t n, bool parallel, Body body) {
  if (!parallel) return body(int64_t(0), n);
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(get_num_threads(), chunks)));
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t k = 0; k < chunks; ++k) body(k * kChunk, std::min(n, (k + 1) * kChunk));
}
}  // namespace

int eltwise_num_versions() { return kEltwiseVersions; }
const char* eltwise_version_name(int version) {
  return version >= 0 && version < kEltwiseVersions ? kEltwiseVersionNames[version] : "";
}
int eltwise_fastest_version() { return kEltwiseFastest; }

template <typename T>
void leaky_relu_forward(int64_t n, const T* x, T slope, T* y, int version) {
  const bool fast = resolve(version, "leaky_relu_forward") == 1;
  over_chunks(n, fast, [=](int64_t lo, int64_t hi) {
    const T s = slope;
    const T* xp = x;
    T* out = y;
#pragma omp simd
    for (int64_t i = lo; i < hi; ++i) out[i] = leaky(xp[i], s);
  });
}

template <typename T>
void leaky_relu_backward(int64_t n, const T* y, const T* dy, T slope, T* dx, int version) {
  const bool fast = resolve(version, "leaky_relu_backward") == 1;
  over_chunks(n, fast, [=](int64_t lo, int64_t hi) {
    // dy * max(float(y > 0), slope): 1 where y > 0, slope elsewhere (0 < slope <= 1), as
    // NumPy computes it.  Written as a select of dy and dy * slope, GCC kept a branch per
    // element instead of vectorising (30x slower on random signs).
    const T s = slope;
    const T* yp = y;
    const T* gp = dy;
    T* out = dx;
#pragma omp simd
    for (int64_t i = lo; i < hi; ++i) out[i] = gp[i] * std::max(T(yp[i] > T(0)), s);
  });
}

#define GASCA_INSTANTIATE(T)                                                         \
  template void leaky_relu_forward<T>(int64_t, const T*, T, T*, int);                \
  template void leaky_relu_backward<T>(int64_t, const T*, const T*, T, T*, int);
GASCA_INSTANTIATE(float)
GASCA_INSTANTIATE(double)
#undef GASCA_INSTANTIATE

}  // namespace gasca
