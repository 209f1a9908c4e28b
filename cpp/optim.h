// optim.h: fused, in-place optimizer updates over one flat parameter buffer.
// Each reads the parameter, its gradient and its state once and writes them once.
// Formulas follow PyTorch's torch.optim.SGD / Adam / AdamW exactly (see optim.cpp).
#pragma once
#include <cstdint>

namespace gasca {

int optim_num_versions();
const char* optim_version_name(int version);
int optim_fastest_version();  // what version -1 picks

// SGD with momentum, dampening, Nesterov and (L2) weight decay.
//   g = grad + weight_decay * p
//   if momentum != 0:  buf = first_step ? g : momentum * buf + (1 - dampening) * g
//                      g   = nesterov ? g + momentum * buf : buf
//   p -= lr * g
// momentum_buf may be nullptr when momentum == 0.
template <typename T>
void sgd_step(int64_t n, T* param, const T* grad, T* momentum_buf, T lr, T momentum,
              T dampening, T weight_decay, bool nesterov, bool first_step, int version = -1);

// Adam (decoupled == false: L2 weight decay added to the gradient) and
// AdamW (decoupled == true: p *= 1 - lr * weight_decay before the step), with bias
// correction.  `step` is the 1-based step count after this update.
//   m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
//   p -= lr * (m / (1 - b1^step)) / (sqrt(v / (1 - b2^step)) + eps)
template <typename T>
void adam_step(int64_t n, T* param, const T* grad, T* exp_avg, T* exp_avg_sq, int64_t step,
               T lr, T beta1, T beta2, T eps, T weight_decay, bool decoupled, int version = -1);

// The same updates with the hyperparameters in double, as PyTorch holds them (Python
// floats): derived constants such as 1 - beta2 or 1 - lr * weight_decay are formed in double
// and rounded once, so a float32 update matches torch.optim's to the last bit or so
// (1 - 0.999f is 1.3e-5 away from 0.001f).  The signatures above forward to these.
struct SgdHyper {
  double lr = 0, momentum = 0, dampening = 0, weight_decay = 0;
  bool nesterov = false;
};
struct AdamHyper {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
  bool decoupled = false;
};

template <typename T>
void sgd_step(int64_t n, T* param, const T* grad, T* momentum_buf, const SgdHyper& h,
              bool first_step, int version = -1);

template <typename T>
void adam_step(int64_t n, T* param, const T* grad, T* exp_avg, T* exp_avg_sq, int64_t step,
               const AdamHyper& h, int version = -1);

}  // namespace gasca
