// bindings.cpp: gasca_core._C, the CPU kernels of cpp/ for NumPy arrays.
//
// This file only reads arrays and forwards.  What every function checks, before any kernel
// touches memory, is written once in arguments.h and shared with the CUDA module: dtypes
// (float32 or float64, the same for all arrays of a call), ranks, that shapes agree with
// each other and with the geometry, that the output size is positive, stride/dilation >= 1,
// padding >= 0, output_padding < max(stride, dilation), that outputs do not overlap the
// inputs, and the hyper-parameters.  What depends on NumPy is here, in read_array: that
// each array argument is a numpy.ndarray (else TypeError), C-contiguous and aligned (such
// arrays are rejected, never copied silently) and, for outputs, writeable.  Problems raise
// ValueError naming the argument and the shapes.  The GIL is released around every kernel
// call.  See python/README.md for the contract.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <thread>

#include "arguments.h"
#include "conv2d.h"
#include "conv_transpose2d.h"
#include "eltwise.h"
#include "gemm.h"
#include "optim.h"
#include "symconv2d.h"

namespace py = pybind11;
using namespace gasca::bind;

namespace {

// A numpy.ndarray as an Array.  Converts nothing: a non-ndarray is a TypeError, a wrong
// dtype/rank/layout a ValueError.
Array read_array(const py::object& obj, const char* name, int rank, bool output) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string(name) + " must be a numpy.ndarray, got " + type_name(obj));
  const auto arr = py::reinterpret_borrow<py::array>(obj);
  Array a;
  a.name = name;
  for (py::ssize_t i = 0; i < arr.ndim(); ++i) a.shape.push_back(arr.shape(i));
  a.numel = static_cast<int64_t>(arr.size());
  a.ptr = reinterpret_cast<std::uintptr_t>(arr.data());
  // NumPy's own dtype equality (a dtype equal to float32 need not be the same object, e.g.
  // after unpickling); byte-swapped dtypes are not equivalent, so they stay rejected.
  auto& api = py::detail::npy_api::get();
  if (api.PyArray_EquivTypes_(arr.dtype().ptr(), py::dtype::of<float>().ptr()))
    a.dtype = DType::f32;
  else if (api.PyArray_EquivTypes_(arr.dtype().ptr(), py::dtype::of<double>().ptr()))
    a.dtype = DType::f64;
  else
    dtype_error(a, py::str(arr.dtype()).cast<std::string>());
  check_rank(a, rank);
  if (!(arr.flags() & py::array::c_style)) not_contiguous_error(a, "np");
  if (!(arr.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_)) not_aligned_error(a, "np");
  if (output && !arr.writeable()) read_only_error(a);
  return a;
}

// A convolution pass's version and the gemm version its gemm-based versions call, with how
// many versions each family has here, for the checks in arguments.h.
Versions conv_versions(int version, int gemm_version) {
  return {version, gasca::conv2d_num_versions(), gemm_version, gasca::gemm_num_versions()};
}

// ------------------------------------------------------------------ conv2d
void conv2d_forward(const py::object& x, const py::object& weight, const py::object& bias,
                    const py::object& out, const py::object& stride, const py::object& padding,
                    const py::object& dilation, int version, int gemm_version) {
  const ConvForward c = check_conv_forward(read_array, Conv::plain, x, weight, bias, out,
                                           plain_conv_args(stride, padding, dilation),
                                           conv_versions(version, gemm_version));
  dispatch(c.x.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* b = c.has_bias ? c.bias.cptr<T>() : nullptr;
    py::gil_scoped_release release;
    gasca::conv2d_forward<T>(c.g, c.x.cptr<T>(), c.weight.cptr<T>(), b, c.out.mptr<T>(), version,
                              gemm_version);
  });
}

void conv2d_backward_input(const py::object& grad_out, const py::object& weight,
                           const py::object& grad_in, const py::object& stride,
                           const py::object& padding, const py::object& dilation, int version, int gemm_version) {
  const ConvBackwardInput c =
      check_conv_backward_input(read_array, Conv::plain, grad_out, weight, grad_in,
                                plain_conv_args(stride, padding, dilation),
                                conv_versions(version, gemm_version));
  dispatch(c.grad_out.dtype, [&](auto tag) {
    using T = decltype(tag);
    py::gil_scoped_release release;
    gasca::conv2d_backward_input<T>(c.g, c.grad_out.cptr<T>(), c.weight.cptr<T>(),
                                    c.grad_in.mptr<T>(), version, gemm_version);
  });
}

void conv2d_backward_weight(const py::object& x, const py::object& grad_out,
                            const py::object& grad_weight, const py::object& stride,
                            const py::object& padding, const py::object& dilation, int version, int gemm_version) {
  const ConvBackwardWeight c =
      check_conv_backward_weight(read_array, Conv::plain, x, grad_out, grad_weight,
                                 plain_conv_args(stride, padding, dilation),
                                 conv_versions(version, gemm_version));
  dispatch(c.x.dtype, [&](auto tag) {
    using T = decltype(tag);
    py::gil_scoped_release release;
    gasca::conv2d_backward_weight<T>(c.g, c.x.cptr<T>(), c.grad_out.cptr<T>(),
                                     c.grad_weight.mptr<T>(), version, gemm_version);
  });
}

void conv2d_backward_bias(const py::object& grad_out, const py::object& grad_bias) {
  const ConvBackwardBias c = check_conv_backward_bias(read_array, grad_out, grad_bias);
  // The kernel reads only the output side of the geometry: (N, C, H, W) of grad_out.
  gasca::ConvGeometry g;
  g.batch = c.grad_out.dim(0);
  g.out_channels = c.grad_out.dim(1);
  g.out_h = c.grad_out.dim(2);
  g.out_w = c.grad_out.dim(3);
  dispatch(c.grad_out.dtype, [&](auto tag) {
    using T = decltype(tag);
    py::gil_scoped_release release;
    gasca::conv2d_backward_bias<T>(g, c.grad_out.cptr<T>(), c.grad_bias.mptr<T>());
  });
}

// ------------------------------------------------------------------ conv_transpose2d
// c.g is the geometry of the adjoint convolution (cpp/conv_transpose2d.h).
void conv_transpose2d_forward(const py::object& x, const py::object& weight,
                              const py::object& bias, const py::object& out,
                              const py::object& stride, const py::object& padding,
                              const py::object& output_padding, const py::object& dilation,
                              int version, int gemm_version) {
  const ConvForward c = check_conv_forward(read_array, Conv::transposed, x, weight, bias, out,
                                           {stride, padding, output_padding, dilation},
                                           conv_versions(version, gemm_version));
  dispatch(c.x.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* b = c.has_bias ? c.bias.cptr<T>() : nullptr;
    py::gil_scoped_release release;
    gasca::conv_transpose2d_forward<T>(c.g, c.x.cptr<T>(), c.weight.cptr<T>(), b,
                                       c.out.mptr<T>(), version,
                              gemm_version);
  });
}

void conv_transpose2d_backward_input(const py::object& grad_out, const py::object& weight,
                                     const py::object& grad_in, const py::object& stride,
                                     const py::object& padding, const py::object& output_padding,
                                     const py::object& dilation, int version, int gemm_version) {
  const ConvBackwardInput c =
      check_conv_backward_input(read_array, Conv::transposed, grad_out, weight, grad_in,
                                {stride, padding, output_padding, dilation},
                                conv_versions(version, gemm_version));
  dispatch(c.grad_out.dtype, [&](auto tag) {
    using T = decltype(tag);
    py::gil_scoped_release release;
    gasca::conv_transpose2d_backward_input<T>(c.g, c.grad_out.cptr<T>(), c.weight.cptr<T>(),
                                              c.grad_in.mptr<T>(), version, gemm_version);
  });
}

void conv_transpose2d_backward_weight(const py::object& x, const py::object& grad_out,
                                      const py::object& grad_weight, const py::object& stride,
                                      const py::object& padding, const py::object& output_padding,
                                      const py::object& dilation, int version, int gemm_version) {
  const ConvBackwardWeight c =
      check_conv_backward_weight(read_array, Conv::transposed, x, grad_out, grad_weight,
                                 {stride, padding, output_padding, dilation},
                                 conv_versions(version, gemm_version));
  dispatch(c.x.dtype, [&](auto tag) {
    using T = decltype(tag);
    py::gil_scoped_release release;
    gasca::conv_transpose2d_backward_weight<T>(c.g, c.x.cptr<T>(), c.grad_out.cptr<T>(),
                                               c.grad_weight.mptr<T>(), version, gemm_version);
  });
}

// ------------------------------------------------------------------ symconv2d
// The symmetry convolution (cpp/symconv2d.h): weight is the half-width w_half
// (Co, Ci, KH, ceil(KW/2)) and kernel_width the full width KW.
Versions sym_versions(int version, int gemm_version) {
  return {version, gasca::symconv2d_num_versions(), gemm_version, gasca::gemm_num_versions()};
}

void symconv2d_forward(const py::object& x, const py::object& weight, const py::object& bias,
                       const py::object& out, const py::object& kernel_width,
                       const py::object& stride, const py::object& padding,
                       const py::object& dilation, int version, int gemm_version) {
  const ConvForward c = check_symconv_forward(read_array, x, weight, bias, out, kernel_width,
                                              plain_conv_args(stride, padding, dilation),
                                              sym_versions(version, gemm_version));
  dispatch(c.x.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* b = c.has_bias ? c.bias.cptr<T>() : nullptr;
    py::gil_scoped_release release;
    gasca::symconv2d_forward<T>(c.g, c.x.cptr<T>(), c.weight.cptr<T>(), b, c.out.mptr<T>(),
                                version, gemm_version);
  });
}

void symconv2d_backward_input(const py::object& grad_out, const py::object& weight,
                              const py::object& grad_in, const py::object& kernel_width,
                              const py::object& stride, const py::object& padding,
                              const py::object& dilation, int version, int gemm_version) {
  const ConvBackwardInput c = check_symconv_backward_input(
      read_array, grad_out, weight, grad_in, kernel_width,
      plain_conv_args(stride, padding, dilation), sym_versions(version, gemm_version));
  dispatch(c.grad_out.dtype, [&](auto tag) {
    using T = decltype(tag);
    py::gil_scoped_release release;
    gasca::symconv2d_backward_input<T>(c.g, c.grad_out.cptr<T>(), c.weight.cptr<T>(),
                                       c.grad_in.mptr<T>(), version, gemm_version);
  });
}

void symconv2d_backward_weight(const py::object& x, const py::object& grad_out,
                               const py::object& grad_weight, const py::object& kernel_width,
                               const py::object& stride, const py::object& padding,
                               const py::object& dilation, int version, int gemm_version) {
  const ConvBackwardWeight c = check_symconv_backward_weight(
      read_array, x, grad_out, grad_weight, kernel_width,
      plain_conv_args(stride, padding, dilation), sym_versions(version, gemm_version));
  dispatch(c.x.dtype, [&](auto tag) {
    using T = decltype(tag);
    py::gil_scoped_release release;
    gasca::symconv2d_backward_weight<T>(c.g, c.x.cptr<T>(), c.grad_out.cptr<T>(),
                                        c.grad_weight.mptr<T>(), version, gemm_version);
  });
}

// ------------------------------------------------------------------ gemm
void gemm(const py::object& a, const py::object& b, const py::object& c, bool trans_a,
          bool trans_b, double alpha, double beta, int version) {
  const Gemm s = check_gemm(read_array, a, b, c, trans_a, trans_b, version,
                            gasca::gemm_num_versions());
  dispatch(s.a.dtype, [&](auto tag) {
    using T = decltype(tag);
    py::gil_scoped_release release;
    gasca::gemm<T>(trans_a, trans_b, s.m, s.n, s.k, narrow<T>(alpha), s.a.cptr<T>(), s.lda,
                   s.b.cptr<T>(), s.ldb, narrow<T>(beta), s.c.mptr<T>(), s.ldc, version);
  });
}

// ------------------------------------------------------------------ optimizers
void sgd_step(const py::object& param, const py::object& grad, const py::object& momentum_buf,
              double lr, double momentum, double dampening, double weight_decay, bool nesterov,
              bool first_step, int version) {
  const SgdStep s = check_sgd_step(read_array, param, grad, momentum_buf, lr, momentum,
                                   dampening, weight_decay, nesterov, version,
                                   gasca::optim_num_versions());
  const gasca::SgdHyper h{lr, momentum, dampening, weight_decay, nesterov};
  dispatch(s.param.dtype, [&](auto tag) {
    using T = decltype(tag);
    T* buf = s.has_buf ? s.momentum_buf.mptr<T>() : nullptr;
    py::gil_scoped_release release;
    gasca::sgd_step<T>(s.param.numel, s.param.mptr<T>(), s.grad.cptr<T>(), buf, h, first_step,
                       version);
  });
}

void adam_step(const py::object& param, const py::object& grad, const py::object& exp_avg,
               const py::object& exp_avg_sq, int64_t step, double lr, double beta1, double beta2,
               double eps, double weight_decay, bool decoupled, int version) {
  const AdamStep s = check_adam_step(read_array, param, grad, exp_avg, exp_avg_sq, step, lr,
                                     beta1, beta2, eps, weight_decay, version,
                                     gasca::optim_num_versions());
  const gasca::AdamHyper h{lr, beta1, beta2, eps, weight_decay, decoupled};
  dispatch(s.param.dtype, [&](auto tag) {
    using T = decltype(tag);
    py::gil_scoped_release release;
    gasca::adam_step<T>(s.param.numel, s.param.mptr<T>(), s.grad.cptr<T>(), s.exp_avg.mptr<T>(),
                        s.exp_avg_sq.mptr<T>(), step, h, version);
  });
}

// ------------------------------------------------------------------ element-wise
void leaky_relu_forward(const py::object& x, const py::object& out, double negative_slope,
                        int version) {
  const LeakyRelu c = check_leaky_relu_forward(read_array, x, out, negative_slope, version,
                                               gasca::eltwise_num_versions());
  dispatch(c.in.dtype, [&](auto tag) {
    using T = decltype(tag);
    py::gil_scoped_release release;
    gasca::leaky_relu_forward<T>(c.in.numel, c.in.cptr<T>(), T(negative_slope), c.out.mptr<T>(),
                                 version);
  });
}

void leaky_relu_backward(const py::object& y, const py::object& grad_out,
                         const py::object& grad_in, double negative_slope, int version) {
  const LeakyRelu c = check_leaky_relu_backward(read_array, y, grad_out, grad_in, negative_slope,
                                                version, gasca::eltwise_num_versions());
  dispatch(c.in.dtype, [&](auto tag) {
    using T = decltype(tag);
    py::gil_scoped_release release;
    gasca::leaky_relu_backward<T>(c.in.numel, c.in.cptr<T>(), c.grad.cptr<T>(), T(negative_slope),
                                  c.out.mptr<T>(), version);
  });
}

// ------------------------------------------------------------------ module
py::dict versions() {
  py::dict d;
  d["gemm"] = version_names(gasca::gemm_num_versions(), gasca::gemm_version_name);
  d["conv2d"] = version_names(gasca::conv2d_num_versions(), gasca::conv2d_version_name);
  d["optim"] = version_names(gasca::optim_num_versions(), gasca::optim_version_name);
  d["symconv2d"] = version_names(gasca::symconv2d_num_versions(), gasca::symconv2d_version_name);
  d["eltwise"] = version_names(gasca::eltwise_num_versions(), gasca::eltwise_version_name);
  return d;
}

// The version -1 picks in each family (not always the last: a version added after the
// fastest does not move it).
py::dict fastest_versions() {
  py::dict d;
  d["gemm"] = gasca::gemm_fastest_version();
  d["conv2d"] = gasca::conv2d_fastest_version();
  d["optim"] = gasca::optim_fastest_version();
  d["symconv2d"] = gasca::symconv2d_fastest_version();
  d["eltwise"] = gasca::eltwise_fastest_version();
  return d;
}

// More threads than 4 per core only adds overhead, and asking OpenMP for thousands can fail
// to create them (libgomp then aborts the process).
void set_num_threads(int n) {
  const int limit = std::max(8, 4 * static_cast<int>(std::thread::hardware_concurrency()));
  if (n < 1 || n > limit)
    value_error("set_num_threads: n = " + std::to_string(n) + " must be in 1.." +
                std::to_string(limit) + " (4 per CPU)");
  gasca::set_num_threads(n);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "gasca_core CPU kernels (cpp/) for NumPy arrays; see python/README.md";
  using py::arg;

  m.def("conv2d_forward", &conv2d_forward, arg("x"), arg("weight"), arg("bias").none(true),
        arg("out"), arg("stride") = 1, arg("padding") = 0, arg("dilation") = 1,
        arg("version") = -1, arg("gemm_version") = -1,
        "out (N,Co,OH,OW) = conv2d(x (N,Ci,H,W), weight (Co,Ci,KH,KW)) + bias (Co) or None");
  m.def("conv2d_backward_input", &conv2d_backward_input, arg("grad_out"), arg("weight"),
        arg("grad_in"), arg("stride") = 1, arg("padding") = 0, arg("dilation") = 1,
        arg("version") = -1, arg("gemm_version") = -1, "grad_in (N,Ci,H,W) = conv2d's adjoint applied to grad_out");
  m.def("conv2d_backward_weight", &conv2d_backward_weight, arg("x"), arg("grad_out"),
        arg("grad_weight"), arg("stride") = 1, arg("padding") = 0, arg("dilation") = 1,
        arg("version") = -1, arg("gemm_version") = -1, "grad_weight (Co,Ci,KH,KW) from x and grad_out");
  m.def("conv2d_backward_bias", &conv2d_backward_bias, arg("grad_out"), arg("grad_bias"),
        "grad_bias (C) = grad_out (N,C,H,W) summed over N, H, W");
  m.def("conv_transpose2d_forward", &conv_transpose2d_forward, arg("x"), arg("weight"),
        arg("bias").none(true), arg("out"), arg("stride") = 1, arg("padding") = 0,
        arg("output_padding") = 0, arg("dilation") = 1, arg("version") = -1, arg("gemm_version") = -1,
        "out (N,Co,OH,OW) = conv_transpose2d(x (N,Ci,H,W), weight (Ci,Co,KH,KW)) + bias");
  m.def("conv_transpose2d_backward_input", &conv_transpose2d_backward_input, arg("grad_out"),
        arg("weight"), arg("grad_in"), arg("stride") = 1, arg("padding") = 0,
        arg("output_padding") = 0, arg("dilation") = 1, arg("version") = -1, arg("gemm_version") = -1,
        "grad_in (N,Ci,H,W) of a transposed convolution (a plain convolution of grad_out)");
  m.def("conv_transpose2d_backward_weight", &conv_transpose2d_backward_weight, arg("x"),
        arg("grad_out"), arg("grad_weight"), arg("stride") = 1, arg("padding") = 0,
        arg("output_padding") = 0, arg("dilation") = 1, arg("version") = -1, arg("gemm_version") = -1,
        "grad_weight (Ci,Co,KH,KW) of a transposed convolution");
  m.def("symconv2d_forward", &symconv2d_forward, arg("x"), arg("weight"),
        arg("bias").none(true), arg("out"), arg("kernel_width"), arg("stride") = 1,
        arg("padding") = 0, arg("dilation") = 1, arg("version") = -1, arg("gemm_version") = -1,
        "out (N,Co,OH,OW) = symmetric conv2d(x (N,Ci,H,W), weight (Co,Ci,KH,ceil(KW/2)) mirrored "
        "to width kernel_width = KW) + bias (Co) or None");
  m.def("symconv2d_backward_input", &symconv2d_backward_input, arg("grad_out"), arg("weight"),
        arg("grad_in"), arg("kernel_width"), arg("stride") = 1, arg("padding") = 0,
        arg("dilation") = 1, arg("version") = -1, arg("gemm_version") = -1,
        "grad_in (N,Ci,H,W) of the symmetric convolution");
  m.def("symconv2d_backward_weight", &symconv2d_backward_weight, arg("x"), arg("grad_out"),
        arg("grad_weight"), arg("kernel_width"), arg("stride") = 1, arg("padding") = 0,
        arg("dilation") = 1, arg("version") = -1, arg("gemm_version") = -1,
        "grad_weight (Co,Ci,KH,ceil(KW/2)) of the symmetric convolution: the full kernel's "
        "gradient folded onto its stored half");
  m.def("gemm", &gemm, arg("a"), arg("b"), arg("c"), arg("trans_a") = false,
        arg("trans_b") = false, arg("alpha") = 1.0, arg("beta") = 0.0, arg("version") = -1,
        "c = alpha * op(a) @ op(b) + beta * c (c is not read when beta == 0)");
  m.def("sgd_step", &sgd_step, arg("param"), arg("grad"), arg("momentum_buf").none(true),
        arg("lr"), arg("momentum") = 0.0, arg("dampening") = 0.0, arg("weight_decay") = 0.0,
        arg("nesterov") = false, arg("first_step") = false, arg("version") = -1,
        "in-place SGD step (torch.optim.SGD's formulas)");
  m.def("adam_step", &adam_step, arg("param"), arg("grad"), arg("exp_avg"), arg("exp_avg_sq"),
        arg("step"), arg("lr") = 1e-3, arg("beta1") = 0.9, arg("beta2") = 0.999,
        arg("eps") = 1e-8, arg("weight_decay") = 0.0, arg("decoupled") = false,
        arg("version") = -1, "in-place Adam (decoupled=False) / AdamW (decoupled=True) step");
  m.def("leaky_relu_forward", &leaky_relu_forward, arg("x"), arg("out"), arg("negative_slope"),
        arg("version") = -1,
        "out = max(x * negative_slope, x), 0 < negative_slope <= 1 (LeakyReLU)");
  m.def("leaky_relu_backward", &leaky_relu_backward, arg("y"), arg("grad_out"), arg("grad_in"),
        arg("negative_slope"), arg("version") = -1,
        "grad_in = grad_out where y > 0, grad_out * negative_slope elsewhere (y: the forward's "
        "output)");
  m.def("versions", &versions, "{'gemm': [...], 'conv2d': [...], 'optim': [...], 'symconv2d': [...], 'eltwise': [...]}: version names");
  m.def("fastest_versions", &fastest_versions,
        "{'gemm': v, 'conv2d': v, 'optim': v, 'symconv2d': v, 'eltwise': v}: the version -1 picks "
        "in each family");
  m.def("get_num_threads", &gasca::get_num_threads, "threads the CPU kernels use");
  m.def("set_num_threads", &set_num_threads, arg("n"),
        "set the threads the CPU kernels use (1 .. 4 per CPU)");
}
