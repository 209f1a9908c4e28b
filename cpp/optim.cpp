// optim.cpp: fused, in-place optimizer updates (one pass over param, grad and state).
//
// Versions (pick one with `version`; -1 = the last, fastest):
//   0  reference: one scalar loop per update, the formulas written as PyTorch states them.
//   1  fast: the same arithmetic, split over the OpenMP threads in cache-sized chunks and
//      vectorised by the compiler (`omp simd`): each element is independent, so the only
//      work is to keep both cores and all SIMD lanes busy while streaming memory once.
//
// The formulas follow torch.optim.SGD / Adam / AdamW (foreach=False, capturable=False):
//   SGD:   g = grad + wd*p;  buf = first ? g : momentum*buf + (1 - dampening)*g
//          g = nesterov ? g + momentum*buf : buf;  p -= lr*g
//   Adam:  g = grad + wd*p (Adam) | p *= 1 - lr*wd (AdamW)
//          m += (1 - b1)*(g - m)            (torch's lerp, same as b1*m + (1 - b1)*g)
//          v = b2*v + (1 - b2)*g*g
//          p -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// The bias corrections are computed in double, as PyTorch computes them in Python floats.
#include "optim.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "gemm.h"  // get_num_threads

namespace gasca {

// ============================================================ version 0: reference
template <typename T>
static void sgd_reference(int64_t n, T* p, const T* grad, T* buf, T lr, T momentum, T dampening,
                          T wd, bool nesterov, bool first_step) {
  for (int64_t i = 0; i < n; ++i) {
    T g = grad[i];
    if (wd != T(0)) g = g + wd * p[i];
    if (momentum != T(0)) {
      buf[i] = first_step ? g : momentum * buf[i] + (T(1) - dampening) * g;
      g = nesterov ? g + momentum * buf[i] : buf[i];
    }
    p[i] -= lr * g;
  }
}

template <typename T>
static void adam_reference(int64_t n, T* p, const T* grad, T* m, T* v, T lr, T beta1, T beta2,
                           T eps, T wd, bool decoupled, T step_size, T bc2_sqrt) {
  for (int64_t i = 0; i < n; ++i) {
    T g = grad[i];
    if (wd != T(0)) {
      if (decoupled)
        p[i] *= T(1) - lr * wd;
      else
        g = g + wd * p[i];
    }
    m[i] += (T(1) - beta1) * (g - m[i]);
    v[i] = beta2 * v[i] + (T(1) - beta2) * g * g;
    const T denom = std::sqrt(v[i]) / bc2_sqrt + eps;
    p[i] -= step_size * (m[i] / denom);
  }
}

// ============================================================ version 1: parallel + simd
// Chunks of 16K elements: large enough to amortise the fork, small enough to balance.
static constexpr int64_t kChunk = 1 << 14;

template <typename T>
static void sgd_fast(int64_t n, T* p, const T* grad, T* buf, T lr, T momentum, T dampening, T wd,
                     bool nesterov, bool first_step) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  const T keep = T(1) - dampening;
  // wd == 0 must not touch p (0 * inf would be NaN where the reference leaves p alone).
  const bool has_wd = wd != T(0);
#pragma omp parallel for schedule(static) num_threads(get_num_threads()) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t lo = c * kChunk, hi = std::min(n, lo + kChunk);
    if (momentum == T(0)) {
#pragma omp simd
      for (int64_t i = lo; i < hi; ++i) p[i] -= lr * (has_wd ? grad[i] + wd * p[i] : grad[i]);
    } else if (first_step) {
#pragma omp simd
      for (int64_t i = lo; i < hi; ++i) {
        const T g = has_wd ? grad[i] + wd * p[i] : grad[i];
        buf[i] = g;
        p[i] -= lr * (nesterov ? g + momentum * g : g);
      }
    } else {
#pragma omp simd
      for (int64_t i = lo; i < hi; ++i) {
        const T g = has_wd ? grad[i] + wd * p[i] : grad[i];
        const T b = momentum * buf[i] + keep * g;
        buf[i] = b;
        p[i] -= lr * (nesterov ? g + momentum * b : b);
      }
    }
  }
}

template <typename T>
static void adam_fast(int64_t n, T* p, const T* grad, T* m, T* v, T lr, T beta1, T beta2, T eps,
                      T wd, bool decoupled, T step_size, T bc2_sqrt) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  const T one_b1 = T(1) - beta1, one_b2 = T(1) - beta2;
  const T decay = decoupled ? T(1) - lr * wd : T(1);  // AdamW's multiplicative decay
  const bool has_l2 = !decoupled && wd != T(0);       // Adam's L2 term
  const bool has_decay = decoupled && wd != T(0);
#pragma omp parallel for schedule(static) num_threads(get_num_threads()) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t lo = c * kChunk, hi = std::min(n, lo + kChunk);
#pragma omp simd
    for (int64_t i = lo; i < hi; ++i) {
      T pi = p[i];
      if (has_decay) pi *= decay;
      const T g = has_l2 ? grad[i] + wd * pi : grad[i];
      T mi = m[i];
      mi += one_b1 * (g - mi);
      const T vi = beta2 * v[i] + one_b2 * g * g;
      m[i] = mi;
      v[i] = vi;
      p[i] = pi - step_size * (mi / (std::sqrt(vi) / bc2_sqrt + eps));
    }
  }
}

// ============================================================ dispatch
static const char* const kOptimVersionNames[] = {
    "reference scalar loop",
    "OpenMP chunks + SIMD",
};
static constexpr int kOptimVersions = sizeof(kOptimVersionNames) / sizeof(kOptimVersionNames[0]);

int optim_num_versions() { return kOptimVersions; }
const char* optim_version_name(int version) {
  return (version >= 0 && version < kOptimVersions) ? kOptimVersionNames[version] : "";
}

template <typename T>
void sgd_step(int64_t n, T* param, const T* grad, T* momentum_buf, T lr, T momentum, T dampening,
              T weight_decay, bool nesterov, bool first_step, int version) {
  if (version < 0) version = kOptimVersions - 1;
  if (momentum != T(0) && !momentum_buf)
    throw std::invalid_argument("sgd_step: momentum != 0 needs a momentum buffer");
  switch (version) {
    case 0:
      sgd_reference(n, param, grad, momentum_buf, lr, momentum, dampening, weight_decay, nesterov,
                    first_step);
      return;
    case 1:
      sgd_fast(n, param, grad, momentum_buf, lr, momentum, dampening, weight_decay, nesterov,
               first_step);
      return;
    default:
      throw std::invalid_argument("sgd_step: no such version");
  }
}

template <typename T>
void adam_step(int64_t n, T* param, const T* grad, T* exp_avg, T* exp_avg_sq, int64_t step, T lr,
               T beta1, T beta2, T eps, T weight_decay, bool decoupled, int version) {
  if (version < 0) version = kOptimVersions - 1;
  if (step < 1) throw std::invalid_argument("adam_step: step is 1-based");
  const double bc1 = 1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(step));
  const T step_size = static_cast<T>(static_cast<double>(lr) / bc1);
  const T bc2_sqrt = static_cast<T>(std::sqrt(bc2));
  switch (version) {
    case 0:
      adam_reference(n, param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, weight_decay,
                     decoupled, step_size, bc2_sqrt);
      return;
    case 1:
      adam_fast(n, param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, weight_decay,
                decoupled, step_size, bc2_sqrt);
      return;
    default:
      throw std::invalid_argument("adam_step: no such version");
  }
}

template void sgd_step<float>(int64_t, float*, const float*, float*, float, float, float, float,
                              bool, bool, int);
template void sgd_step<double>(int64_t, double*, const double*, double*, double, double, double,
                               double, bool, bool, int);
template void adam_step<float>(int64_t, float*, const float*, float*, float*, int64_t, float, float,
                               float, float, float, bool, int);
template void adam_step<double>(int64_t, double*, const double*, double*, double*, int64_t, double,
                                double, double, double, double, bool, int);

}  // namespace gasca
