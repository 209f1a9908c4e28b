// eltwise.h: element-wise kernels of the autograd's activations, over one flat buffer.
// Each reads its inputs once and writes its output once.
//
// LeakyReLU with 0 < slope <= 1 (the only slopes it takes; other slopes stay in NumPy):
//   forward:  y = max(x * slope, x)        x where x > 0 (x * slope <= x there), x * slope
//                                          elsewhere; NaN stays NaN, -0 stays -0
//   backward: dx = y > 0 ? dy : dy * slope  y > 0 exactly where x > 0, so the forward's
//                                          output is all the backward keeps
// The same floats, bit for bit, as NumPy's np.maximum(x * s, x) and
// np.maximum(float(x > 0), s) * dy (gasca_core.functional.LeakyReLU's NumPy path).
#pragma once
#include <cstdint>

namespace gasca {

int eltwise_num_versions();
const char* eltwise_version_name(int version);
int eltwise_fastest_version();  // what version -1 picks

template <typename T>
void leaky_relu_forward(int64_t n, const T* x, T slope, T* y, int version = -1);

template <typename T>
void leaky_relu_backward(int64_t n, const T* y, const T* dy, T slope, T* dx, int version = -1);

}  // namespace gasca
