// optim.cu: fused, in-place optimizer updates on the GPU, element for element the
// arithmetic of cpp/optim.cpp (so the two agree step for step, to rounding).
//
// Versions (pick one with `version`; -1 = the last, fastest):
//   0  naive: one thread per element (a grid-stride loop, so any n is covered).
//   1  vectorised: each thread moves 16 bytes of every buffer per load (4 floats or 2
//      doubles) when all buffers are 16-byte aligned, which cuts the number of memory
//      instructions by that factor; the update is memory-bound, so this is where the time
//      goes.  Unaligned buffers fall back to version 0's loop.
//
// The formulas (torch.optim.SGD / Adam / AdamW, see cpp/optim.h and cpp/optim.cpp):
//   SGD:   g = grad + wd*p;  buf = first ? g : momentum*buf + (1 - dampening)*g
//          g = nesterov ? g + momentum*buf : buf;  p -= lr*g
//   Adam:  g = grad + wd*p (Adam) | p *= 1 - lr*wd (AdamW)
//          m = lerp(m, g, 1 - b1)   (torch's lerp, = b1*m + (1 - b1)*g)
//          v = b2*v + (1 - b2)*g*g
//          p -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// Every scalar constant is formed in double on the host and rounded once to T, exactly as
// the CPU kernels form them, so the two differ only by the GPU's fused multiply-adds.
#include <cmath>
#include <cstdint>

#include "common.cuh"

namespace gasca {
namespace cuda {

static const char* const kOptimVersionNames[] = {
    "naive: one thread per element",
    "vectorised: 16-byte loads and stores, grid-stride",
};
static constexpr int kOptimVersions = sizeof(kOptimVersionNames) / sizeof(kOptimVersionNames[0]);

int optim_num_versions() { return kOptimVersions; }
const char* optim_version_name(int version) {
  return (version >= 0 && version < kOptimVersions) ? kOptimVersionNames[version] : "";
}

// The per-call scalars, rounded to T once (the same constants as cpp/optim.cpp forms).
template <typename T>
struct SgdArgs {
  T lr, momentum, keep, wd;  // keep = 1 - dampening
  bool has_wd, has_momentum, nesterov, first_step;
};

template <typename T>
struct AdamArgs {
  T one_b1, one_b2, b2, eps, l2, decay, step_size, bc2_sqrt;
  bool lerp_low;  // torch's lerp takes its exact-at-the-ends form for weights >= 0.5
  bool has_l2, has_decay;
};

// One element of each update, shared by both versions.  buf/m/v are read and written
// through references so the vectorised kernel can apply it to registers.
template <typename T>
__device__ __forceinline__ void sgd_update(T& p, T grad, T& buf, const SgdArgs<T>& s) {
  T g = grad;
  if (s.has_wd) g = g + s.wd * p;  // wd == 0 never reads p (0 * inf would be NaN)
  if (s.has_momentum) {
    buf = s.first_step ? g : s.momentum * buf + s.keep * g;
    g = s.nesterov ? g + s.momentum * buf : buf;
  }
  p = p - s.lr * g;
}

template <typename T>
__device__ __forceinline__ void adam_update(T& p, T grad, T& m, T& v, const AdamArgs<T>& s) {
  if (s.has_decay) p = p * s.decay;  // AdamW: decay the weight itself
  const T g = s.has_l2 ? grad + s.l2 * p : grad;  // Adam: L2 penalty through the gradient
  m = s.lerp_low ? m + s.one_b1 * (g - m) : g - (g - m) * (T(1) - s.one_b1);
  v = v * s.b2 + s.one_b2 * g * g;
  p = p - s.step_size * (m / (sqrt(v) / s.bc2_sqrt + s.eps));
}

// ============================================================ version 0: naive
template <typename T>
__global__ void sgd_naive(int64_t n, T* __restrict__ p, const T* __restrict__ grad,
                          T* __restrict__ buf, SgdArgs<T> s) {
  for (int64_t i = global_thread_index(); i < n; i += global_thread_count()) {
    T b = buf ? buf[i] : T(0);
    sgd_update(p[i], grad[i], b, s);
    if (buf) buf[i] = b;
  }
}

template <typename T>
__global__ void adam_naive(int64_t n, T* __restrict__ p, const T* __restrict__ grad,
                           T* __restrict__ m, T* __restrict__ v, AdamArgs<T> s) {
  for (int64_t i = global_thread_index(); i < n; i += global_thread_count())
    adam_update(p[i], grad[i], m[i], v[i], s);
}

// ============================================================ version 1: vectorised
// A 16-byte pack: the compiler turns a load of one into a single 128-bit instruction.
template <typename T>
struct alignas(16) Pack {
  static constexpr int size = 16 / sizeof(T);
  T v[size];
};

template <typename T>
__global__ void sgd_vectorised(int64_t n, T* __restrict__ p, const T* __restrict__ grad,
                               T* __restrict__ buf, SgdArgs<T> s) {
  constexpr int V = Pack<T>::size;
  const int64_t packs = n / V;
  auto* p4 = reinterpret_cast<Pack<T>*>(p);
  const auto* g4 = reinterpret_cast<const Pack<T>*>(grad);
  auto* b4 = reinterpret_cast<Pack<T>*>(buf);
  for (int64_t i = global_thread_index(); i < packs; i += global_thread_count()) {
    Pack<T> pp = p4[i];
    const Pack<T> gg = g4[i];
    Pack<T> bb;
    if (buf && !s.first_step) bb = b4[i];  // the first step only writes the buffer
#pragma unroll
    for (int e = 0; e < V; ++e) {
      if (!buf || s.first_step) bb.v[e] = T(0);
      sgd_update(pp.v[e], gg.v[e], bb.v[e], s);
    }
    p4[i] = pp;
    if (buf) b4[i] = bb;
  }
  // The last n % V elements, one per thread.
  for (int64_t i = packs * V + global_thread_index(); i < n; i += global_thread_count()) {
    T b = buf ? buf[i] : T(0);
    sgd_update(p[i], grad[i], b, s);
    if (buf) buf[i] = b;
  }
}

template <typename T>
__global__ void adam_vectorised(int64_t n, T* __restrict__ p, const T* __restrict__ grad,
                                T* __restrict__ m, T* __restrict__ v, AdamArgs<T> s) {
  constexpr int V = Pack<T>::size;
  const int64_t packs = n / V;
  auto* p4 = reinterpret_cast<Pack<T>*>(p);
  const auto* g4 = reinterpret_cast<const Pack<T>*>(grad);
  auto* m4 = reinterpret_cast<Pack<T>*>(m);
  auto* v4 = reinterpret_cast<Pack<T>*>(v);
  for (int64_t i = global_thread_index(); i < packs; i += global_thread_count()) {
    Pack<T> pp = p4[i], mm = m4[i], vv = v4[i];
    const Pack<T> gg = g4[i];
#pragma unroll
    for (int e = 0; e < V; ++e) adam_update(pp.v[e], gg.v[e], mm.v[e], vv.v[e], s);
    p4[i] = pp;
    m4[i] = mm;
    v4[i] = vv;
  }
  for (int64_t i = packs * V + global_thread_index(); i < n; i += global_thread_count())
    adam_update(p[i], grad[i], m[i], v[i], s);
}

// ============================================================ dispatch
static bool aligned16(const void* ptr) {
  return ptr == nullptr || reinterpret_cast<std::uintptr_t>(ptr) % 16 == 0;
}

template <typename T>
Status sgd_step(int64_t n, T* param, const T* grad, T* momentum_buf, double lr, double momentum,
                double dampening, double weight_decay, bool nesterov, bool first_step,
                int version, cudaStream_t stream) {
  if (version < 0) version = kOptimVersions - 1;
  if (n == 0) return Status{};
  // momentum == 0 never touches the buffer (the bindings allow None for it then).
  T* buf = momentum != 0.0 ? momentum_buf : nullptr;
  const SgdArgs<T> s{T(lr),          T(momentum),      T(1.0 - dampening), T(weight_decay),
                     weight_decay != 0.0, momentum != 0.0, nesterov,           first_step};
  if (version == 1 && aligned16(param) && aligned16(grad) && aligned16(buf)) {
    const int64_t packs = n / Pack<T>::size;
    sgd_vectorised<T><<<elementwise_blocks(packs > 0 ? packs : n), kElementwiseThreads, 0,
                        stream>>>(n, param, grad, buf, s);
    return launch_status("sgd_vectorised");
  }
  sgd_naive<T><<<elementwise_blocks(n), kElementwiseThreads, 0, stream>>>(n, param, grad, buf,
                                                                          s);
  return launch_status("sgd_naive");
}

template <typename T>
Status adam_step(int64_t n, T* param, const T* grad, T* exp_avg, T* exp_avg_sq, int64_t step,
                 double lr, double beta1, double beta2, double eps, double weight_decay,
                 bool decoupled, int version, cudaStream_t stream) {
  if (version < 0) version = kOptimVersions - 1;
  if (n == 0) return Status{};
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  AdamArgs<T> s;
  s.one_b1 = T(1.0 - beta1);
  s.one_b2 = T(1.0 - beta2);
  s.b2 = T(beta2);
  s.eps = T(eps);
  s.l2 = T(weight_decay);
  s.decay = T(1.0 - lr * weight_decay);
  s.step_size = T(lr / bc1);
  s.bc2_sqrt = T(std::sqrt(bc2));
  s.lerp_low = (1.0 - beta1) < 0.5;
  s.has_l2 = !decoupled && weight_decay != 0.0;
  s.has_decay = decoupled && weight_decay != 0.0;
  if (version == 1 && aligned16(param) && aligned16(grad) && aligned16(exp_avg) &&
      aligned16(exp_avg_sq)) {
    const int64_t packs = n / Pack<T>::size;
    adam_vectorised<T><<<elementwise_blocks(packs > 0 ? packs : n), kElementwiseThreads, 0,
                         stream>>>(n, param, grad, exp_avg, exp_avg_sq, s);
    return launch_status("adam_vectorised");
  }
  adam_naive<T><<<elementwise_blocks(n), kElementwiseThreads, 0, stream>>>(
      n, param, grad, exp_avg, exp_avg_sq, s);
  return launch_status("adam_naive");
}

template Status sgd_step<float>(int64_t, float*, const float*, float*, double, double, double,
                                double, bool, bool, int, cudaStream_t);
template Status sgd_step<double>(int64_t, double*, const double*, double*, double, double,
                                 double, double, bool, bool, int, cudaStream_t);
template Status adam_step<float>(int64_t, float*, const float*, float*, float*, int64_t, double,
                                 double, double, double, double, bool, int, cudaStream_t);
template Status adam_step<double>(int64_t, double*, const double*, double*, double*, int64_t,
                                  double, double, double, double, double, bool, int,
                                  cudaStream_t);

}  // namespace cuda
}  // namespace gasca
