// optim.cpp: fused, in-place optimizer updates (one pass over param, grad and state).
//
// Versions (pick one with `version`; -1 = the fastest, kOptimFastest below):
//   0  reference: one scalar loop per update, the formulas written as PyTorch states them.
//   1  fast: the same arithmetic, split over the OpenMP threads in cache-sized chunks and
//      vectorised by the compiler (`omp simd`): each element is independent, so the only
//      work is to keep both cores and all SIMD lanes busy while streaming memory once.
//
// The formulas follow torch.optim.SGD / Adam / AdamW (foreach=False, capturable=False):
//   SGD:   g = grad + wd*p;  buf = first ? g : momentum*buf + (1 - dampening)*g
//          g = nesterov ? g + momentum*buf : buf;  p -= lr*g
//   Adam:  g = grad + wd*p (Adam) | p *= 1 - lr*wd (AdamW)
//          m = lerp(m, g, 1 - b1)           (torch's lerp, = b1*m + (1 - b1)*g)
//          v = b2*v + (1 - b2)*g*g
//          p -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// Every scalar constant (1 - b2, lr / (1 - b1^t), ...) is formed in double and rounded
// once to T, as PyTorch forms them in Python floats.
#include "optim.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "gemm.h"  // get_num_threads

namespace gasca {

namespace {

// The per-call scalars, rounded to T once.
template <typename T>
struct SgdConsts {
  T lr, momentum, keep, wd;  // keep = 1 - dampening
  bool has_wd, has_momentum, nesterov;
  explicit SgdConsts(const SgdHyper& h)
      : lr(T(h.lr)), momentum(T(h.momentum)), keep(T(1.0 - h.dampening)), wd(T(h.weight_decay)),
        has_wd(h.weight_decay != 0.0), has_momentum(h.momentum != 0.0), nesterov(h.nesterov) {}
};

template <typename T>
struct AdamConsts {
  T one_b1, one_b2, b2, eps, l2, decay, step_size, bc2_sqrt;
  bool lerp_low;  // torch's lerp takes a different (exact-at-the-ends) form for weight >= 0.5
  bool has_l2, has_decay;
  AdamConsts(const AdamHyper& h, int64_t step) {
    const double bc1 = 1.0 - std::pow(h.beta1, static_cast<double>(step));
    const double bc2 = 1.0 - std::pow(h.beta2, static_cast<double>(step));
    one_b1 = T(1.0 - h.beta1);
    one_b2 = T(1.0 - h.beta2);
    b2 = T(h.beta2);
    eps = T(h.eps);
    step_size = T(h.lr / bc1);
    bc2_sqrt = T(std::sqrt(bc2));
    lerp_low = (1.0 - h.beta1) < 0.5;
    has_l2 = !h.decoupled && h.weight_decay != 0.0;
    has_decay = h.decoupled && h.weight_decay != 0.0;
    l2 = T(h.weight_decay);
    decay = T(1.0 - h.lr * h.weight_decay);
  }
};

// m = lerp(m, g, w) exactly as torch computes it.
template <typename T>
inline T lerp(T m, T g, T w, bool low) {
  return low ? m + w * (g - m) : g - (g - m) * (T(1) - w);
}

}  // namespace

// ============================================================ version 0: reference
template <typename T>
static void sgd_reference(int64_t n, T* p, const T* grad, T* buf, const SgdConsts<T>& c,
                          bool first_step) {
  for (int64_t i = 0; i < n; ++i) {
    T g = grad[i];
    if (c.has_wd) g = g + c.wd * p[i];
    if (c.has_momentum) {
      buf[i] = first_step ? g : c.momentum * buf[i] + c.keep * g;
      g = c.nesterov ? g + c.momentum * buf[i] : buf[i];
    }
    p[i] = p[i] - c.lr * g;
  }
}

template <typename T>
static void adam_reference(int64_t n, T* p, const T* grad, T* m, T* v, const AdamConsts<T>& c) {
  for (int64_t i = 0; i < n; ++i) {
    T g = grad[i];
    if (c.has_decay) p[i] = p[i] * c.decay;
    if (c.has_l2) g = g + c.l2 * p[i];
    m[i] = lerp(m[i], g, c.one_b1, c.lerp_low);
    v[i] = v[i] * c.b2 + c.one_b2 * g * g;
    const T denom = std::sqrt(v[i]) / c.bc2_sqrt + c.eps;
    p[i] = p[i] - c.step_size * (m[i] / denom);
  }
}

// ============================================================ version 1: parallel + simd
// Chunks of 16K elements: large enough to amortise the fork, small enough to balance.
static constexpr int64_t kChunk = 1 << 14;

template <typename T>
static void sgd_fast(int64_t n, T* p, const T* grad, T* buf, const SgdConsts<T>& c,
                     bool first_step) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  // Loop-invariant branches: the compiler unswitches them, each variant vectorises.
  const bool has_wd = c.has_wd, nesterov = c.nesterov;
  const T lr = c.lr, wd = c.wd, mom = c.momentum, keep = c.keep;
#pragma omp parallel for schedule(static) num_threads(get_num_threads()) if (chunks > 1)
  for (int64_t k = 0; k < chunks; ++k) {
    const int64_t lo = k * kChunk, hi = std::min(n, lo + kChunk);
    if (!c.has_momentum) {
#pragma omp simd
      for (int64_t i = lo; i < hi; ++i) p[i] = p[i] - lr * (has_wd ? grad[i] + wd * p[i] : grad[i]);
    } else if (first_step) {
#pragma omp simd
      for (int64_t i = lo; i < hi; ++i) {
        const T g = has_wd ? grad[i] + wd * p[i] : grad[i];
        buf[i] = g;
        p[i] = p[i] - lr * (nesterov ? g + mom * g : g);
      }
    } else {
#pragma omp simd
      for (int64_t i = lo; i < hi; ++i) {
        const T g = has_wd ? grad[i] + wd * p[i] : grad[i];
        const T b = mom * buf[i] + keep * g;
        buf[i] = b;
        p[i] = p[i] - lr * (nesterov ? g + mom * b : b);
      }
    }
  }
}

template <typename T>
static void adam_fast(int64_t n, T* p, const T* grad, T* m, T* v, const AdamConsts<T>& c) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  const AdamConsts<T> k = c;  // a local copy: its fields stay in registers
#pragma omp parallel for schedule(static) num_threads(get_num_threads()) if (chunks > 1)
  for (int64_t q = 0; q < chunks; ++q) {
    const int64_t lo = q * kChunk, hi = std::min(n, lo + kChunk);
#pragma omp simd
    for (int64_t i = lo; i < hi; ++i) {
      T pi = p[i];
      if (k.has_decay) pi = pi * k.decay;
      const T g = k.has_l2 ? grad[i] + k.l2 * pi : grad[i];
      const T mi = lerp(m[i], g, k.one_b1, k.lerp_low);
      const T vi = v[i] * k.b2 + k.one_b2 * g * g;
      m[i] = mi;
      v[i] = vi;
      p[i] = pi - k.step_size * (mi / (std::sqrt(vi) / k.bc2_sqrt + k.eps));
    }
  }
}

// ============================================================ dispatch
static const char* const kOptimVersionNames[] = {
    "reference scalar loop",
    "OpenMP chunks + SIMD",
};
static constexpr int kOptimVersions = sizeof(kOptimVersionNames) / sizeof(kOptimVersionNames[0]);
static constexpr int kOptimFastest = 1;  // what version -1 picks (a version added after it does not move it)
static_assert(kOptimFastest < kOptimVersions, "kOptimFastest must name a version");

int optim_num_versions() { return kOptimVersions; }
int optim_fastest_version() { return kOptimFastest; }
const char* optim_version_name(int version) {
  return (version >= 0 && version < kOptimVersions) ? kOptimVersionNames[version] : "";
}

template <typename T>
void sgd_step(int64_t n, T* param, const T* grad, T* momentum_buf, const SgdHyper& h,
              bool first_step, int version) {
  if (version < -1) throw std::invalid_argument("sgd_step: no such version");
  if (version < 0) version = kOptimFastest;
  if (h.momentum != 0.0 && !momentum_buf)
    throw std::invalid_argument("sgd_step: momentum != 0 needs a momentum buffer");
  const SgdConsts<T> c(h);
  switch (version) {
    case 0: sgd_reference(n, param, grad, momentum_buf, c, first_step); return;
    case 1: sgd_fast(n, param, grad, momentum_buf, c, first_step); return;
    default: throw std::invalid_argument("sgd_step: no such version");
  }
}

template <typename T>
void adam_step(int64_t n, T* param, const T* grad, T* exp_avg, T* exp_avg_sq, int64_t step,
               const AdamHyper& h, int version) {
  if (version < -1) throw std::invalid_argument("adam_step: no such version");
  if (version < 0) version = kOptimFastest;
  if (step < 1) throw std::invalid_argument("adam_step: step is 1-based");
  const AdamConsts<T> c(h, step);
  switch (version) {
    case 0: adam_reference(n, param, grad, exp_avg, exp_avg_sq, c); return;
    case 1: adam_fast(n, param, grad, exp_avg, exp_avg_sq, c); return;
    default: throw std::invalid_argument("adam_step: no such version");
  }
}

template <typename T>
void sgd_step(int64_t n, T* param, const T* grad, T* momentum_buf, T lr, T momentum, T dampening,
              T weight_decay, bool nesterov, bool first_step, int version) {
  const SgdHyper h{lr, momentum, dampening, weight_decay, nesterov};
  sgd_step<T>(n, param, grad, momentum_buf, h, first_step, version);
}

template <typename T>
void adam_step(int64_t n, T* param, const T* grad, T* exp_avg, T* exp_avg_sq, int64_t step, T lr,
               T beta1, T beta2, T eps, T weight_decay, bool decoupled, int version) {
  const AdamHyper h{lr, beta1, beta2, eps, weight_decay, decoupled};
  adam_step<T>(n, param, grad, exp_avg, exp_avg_sq, step, h, version);
}

#define GASCA_INSTANTIATE(T)                                                                   \
  template void sgd_step<T>(int64_t, T*, const T*, T*, const SgdHyper&, bool, int);            \
  template void adam_step<T>(int64_t, T*, const T*, T*, T*, int64_t, const AdamHyper&, int);   \
  template void sgd_step<T>(int64_t, T*, const T*, T*, T, T, T, T, bool, bool, int);           \
  template void adam_step<T>(int64_t, T*, const T*, T*, T*, int64_t, T, T, T, T, T, bool, int);
GASCA_INSTANTIATE(float)
GASCA_INSTANTIATE(double)
#undef GASCA_INSTANTIATE

}  // namespace gasca
