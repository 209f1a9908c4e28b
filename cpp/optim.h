// optim.h: fused, in-place optimizer updates over one flat parameter buffer.
// Each reads the parameter, its gradient and its state once and writes them once.
// Formulas follow PyTorch's torch.optim.SGD / Adam / AdamW exactly (see optim.cpp).
#pragma once
#include <cstdint>

namespace gasca {

int optim_num_versions();
const char* optim_version_name(int version);

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

}  // namespace gasca
