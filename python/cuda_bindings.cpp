// cuda_bindings.cpp: gasca_core._C_cuda, the CUDA kernels of cpp/cuda/ for CuPy arrays.
//
// The same functions, with the same arguments, as gasca_core._C (python/bindings.cpp; see
// python/README.md), plus a keyword `stream`: the integer handle of the cudaStream_t to
// queue the work on (CuPy's cupy.cuda.get_current_stream().ptr; 0 = the legacy default
// stream).  Nothing here synchronises with the host: the call returns once the kernels are
// queued.
//
// Arrays are read through the CUDA Array Interface (`__cuda_array_interface__`, the
// protocol CuPy, PyTorch and Numba share), so neither CuPy's headers nor CuPy itself are
// needed to build this module.  What every function checks before any kernel is queued is
// written once in arguments.h and shared with the CPU module (dtypes, ranks, shapes against
// each other and the geometry, stride/padding/dilation/output_padding, aliasing,
// hyper-parameters), so both modules accept and reject the same calls with the same
// messages.  What depends on the interface is here, in read_array: that each array argument
// exposes it (else TypeError: a NumPy array is not a GPU array), is C-contiguous, aligned,
// unmasked, writeable if it is an output, and lives in device memory on the current device.
// The GIL is released around the launches; a failed launch raises RuntimeError naming the
// kernel and the CUDA error.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include <cuda_runtime_api.h>

#include "arguments.h"
#include "conv2d.h"
#include "cuda/kernels.h"

namespace py = pybind11;
using namespace gasca::bind;
namespace gc = gasca::cuda;

namespace {

// The device memory check: the pointer must be device (or managed) memory of the current
// device, or the kernels would read another GPU's (or the host's) addresses.
void check_device_pointer(const Array& a) {
  // Empty arrays may carry any pointer (or none); the functions that cannot take them
  // reject them later, with a better message.  A non-empty array must point somewhere.
  if (a.numel == 0) return;
  if (a.ptr == 0)
    value_error(a.name + " (shape " + a.shape_s() + ") has a null data pointer but " +
                std::to_string(a.numel) + " elements");
  int current = 0;
  if (cudaGetDevice(&current) != cudaSuccess) {
    const cudaError_t err = cudaGetLastError();
    throw std::runtime_error(std::string("gasca_core._C_cuda: no usable CUDA device (") +
                             cudaGetErrorString(err) + ")");
  }
  cudaPointerAttributes attr{};
  const cudaError_t err = cudaPointerGetAttributes(&attr, reinterpret_cast<const void*>(a.ptr));
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear it: it is the caller's error, not a kernel's
    value_error(a.name + " (shape " + a.shape_s() + ") does not point to CUDA memory (" +
                cudaGetErrorString(err) + ")");
  }
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
    value_error(a.name + " (shape " + a.shape_s() +
                ") is not in device memory; expected a CuPy array on the GPU");
  if (attr.type == cudaMemoryTypeDevice && attr.device != current)
    value_error(a.name + " (shape " + a.shape_s() + ") lives on GPU " +
                std::to_string(attr.device) + " but the current device is GPU " +
                std::to_string(current) + "; call it inside `with cupy.cuda.Device(" +
                std::to_string(attr.device) + "):`");
}

// strides: None means C-contiguous; otherwise they must be the C-contiguous ones
// (dimensions of extent 1 may carry any stride).
bool is_c_contiguous(const Array& a, const py::object& strides) {
  if (strides.is_none() || a.numel == 0) return true;
  const auto s = strides.cast<py::tuple>();
  if (s.size() != a.shape.size()) return false;
  int64_t expect = a.dtype == DType::f32 ? 4 : 8;
  for (size_t i = a.shape.size(); i-- > 0;) {
    if (a.shape[i] != 1 && s[i].cast<int64_t>() != expect) return false;
    expect *= a.shape[i];
  }
  return true;
}

// The fields of a __cuda_array_interface__ dict, checked.  A malformed dict (wrong types)
// surfaces as py::cast_error, which read_array turns into TypeError.
void read_interface(const py::object& obj, const py::dict& cai, bool output, Array& a) {
  for (const auto& d : cai["shape"].cast<py::tuple>()) a.shape.push_back(d.cast<int64_t>());
  const auto data = cai["data"].cast<py::tuple>();
  a.ptr = data[0].cast<std::uintptr_t>();
  const bool read_only = data[1].cast<bool>();
  if (output && read_only) read_only_error(a);
  const std::string typestr = cai["typestr"].cast<std::string>();
  if (typestr == "<f4")
    a.dtype = DType::f32;
  else if (typestr == "<f8")
    a.dtype = DType::f64;
  else
    dtype_error(a, py::hasattr(obj, "dtype") ? py::str(obj.attr("dtype")).cast<std::string>()
                                             : typestr);
  a.numel = 1;
  for (int64_t d : a.shape) {  // a malformed interface must not overflow the products
    if (d < 0 || (d > 0 && a.numel > (int64_t(1) << 62) / d))
      value_error(a.name + " has an impossible shape " + a.shape_s());
    a.numel *= d;
  }
  if (cai.contains("mask") && !cai["mask"].is_none())
    value_error(a.name + " is a masked array; masks are not supported");
  if (cai.contains("strides") && !is_c_contiguous(a, cai["strides"]))
    not_contiguous_error(a, "cupy");
  if (a.ptr % static_cast<std::uintptr_t>(a.dtype == DType::f32 ? 4 : 8) != 0)
    not_aligned_error(a, "cupy");
}

// A CUDA array as an Array.  Converts nothing: a non-CUDA array is a TypeError, a wrong
// dtype/rank/layout a ValueError.
Array read_array(const py::object& obj, const char* name, int rank, bool output) {
  if (!py::hasattr(obj, "__cuda_array_interface__")) {
    std::string hint;
    if (py::hasattr(obj, "__array_interface__"))
      hint = " (a host array: move it to the GPU with cupy.asarray, or call gasca_core._C)";
    throw py::type_error(std::string(name) +
                         " must be a CUDA array exposing __cuda_array_interface__ (a "
                         "cupy.ndarray), got " + type_name(obj) + hint);
  }
  py::dict cai;
  try {
    cai = obj.attr("__cuda_array_interface__").cast<py::dict>();
  } catch (const std::exception& e) {
    throw py::type_error(std::string(name) + ": could not read __cuda_array_interface__ (" +
                         e.what() + ")");
  }
  Array a;
  a.name = name;
  try {
    read_interface(obj, cai, output, a);
  } catch (const py::cast_error& e) {
    throw py::type_error(std::string(name) + ": malformed __cuda_array_interface__ (" +
                         e.what() + ")");
  }
  check_rank(a, rank);
  check_device_pointer(a);
  return a;
}

cudaStream_t as_stream(std::uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

// Runs `launch` (which queues kernels and returns their Status) with the GIL released, then
// turns a failed launch into RuntimeError naming the function and the kernel.
template <typename F>
void run(const char* function, F&& launch) {
  gc::Status s;
  {
    py::gil_scoped_release release;
    s = launch();
  }
  if (!s.ok())
    throw std::runtime_error(std::string("gasca_core._C_cuda.") + function + ": CUDA error " +
                             cudaGetErrorName(s.error) + " (" + cudaGetErrorString(s.error) +
                             ") at the launch of kernel " + (s.kernel ? s.kernel : "?") +
                             " (an error left by earlier asynchronous work is reported at the "
                             "next launch)");
}


// ------------------------------------------------------------------ conv2d
// A convolution pass's version and gemm version, with how many versions each family has
// here.  The CUDA convolutions call no gemm (their tiled implicit GEMM is their own), so
// gemm_version is checked, as by the CPU module, and then has nothing to choose.
Versions conv_versions(int version, int gemm_version) {
  return {version, gc::conv2d_num_versions(), gemm_version, gc::gemm_num_versions()};
}

void conv2d_forward(const py::object& x, const py::object& weight, const py::object& bias,
                    const py::object& out, const py::object& stride, const py::object& padding,
                    const py::object& dilation, int version, int gemm_version,
                    std::uintptr_t stream) {
  const ConvForward c = check_conv_forward(read_array, Conv::plain, x, weight, bias, out,
                                           plain_conv_args(stride, padding, dilation), 
                                           conv_versions(version, gemm_version));
  dispatch(c.x.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* b = c.has_bias ? c.bias.cptr<T>() : nullptr;
    run("conv2d_forward", [&] {
      return gc::conv2d_forward<T>(c.g, c.x.cptr<T>(), c.weight.cptr<T>(), b, c.out.mptr<T>(),
                                   version, as_stream(stream));
    });
  });
}

void conv2d_backward_input(const py::object& grad_out, const py::object& weight,
                           const py::object& grad_in, const py::object& stride,
                           const py::object& padding, const py::object& dilation, int version,
                           int gemm_version, std::uintptr_t stream) {
  const ConvBackwardInput c =
      check_conv_backward_input(read_array, Conv::plain, grad_out, weight, grad_in,
                                plain_conv_args(stride, padding, dilation), 
                                conv_versions(version, gemm_version));
  dispatch(c.grad_out.dtype, [&](auto tag) {
    using T = decltype(tag);
    run("conv2d_backward_input", [&] {
      return gc::conv2d_backward_input<T>(c.g, c.grad_out.cptr<T>(), c.weight.cptr<T>(),
                                          nullptr, c.grad_in.mptr<T>(), version,
                                          as_stream(stream));
    });
  });
}

void conv2d_backward_weight(const py::object& x, const py::object& grad_out,
                            const py::object& grad_weight, const py::object& stride,
                            const py::object& padding, const py::object& dilation, int version,
                            int gemm_version, std::uintptr_t stream) {
  const ConvBackwardWeight c =
      check_conv_backward_weight(read_array, Conv::plain, x, grad_out, grad_weight,
                                 plain_conv_args(stride, padding, dilation), 
                                 conv_versions(version, gemm_version));
  dispatch(c.x.dtype, [&](auto tag) {
    using T = decltype(tag);
    run("conv2d_backward_weight", [&] {
      return gc::conv2d_backward_weight<T>(c.g, c.x.cptr<T>(), c.grad_out.cptr<T>(),
                                           c.grad_weight.mptr<T>(), version, as_stream(stream));
    });
  });
}

void conv2d_backward_bias(const py::object& grad_out, const py::object& grad_bias,
                          std::uintptr_t stream) {
  const ConvBackwardBias c = check_conv_backward_bias(read_array, grad_out, grad_bias);
  const Array& dy = c.grad_out;
  dispatch(dy.dtype, [&](auto tag) {
    using T = decltype(tag);
    run("conv2d_backward_bias", [&] {
      return gc::conv2d_backward_bias<T>(dy.dim(0), dy.dim(1), dy.dim(2) * dy.dim(3),
                                         dy.cptr<T>(), c.grad_bias.mptr<T>(), as_stream(stream));
    });
  });
}

// ------------------------------------------------------------------ conv_transpose2d
// c.g is the geometry of the adjoint convolution (cpp/conv_transpose2d.h).
void conv_transpose2d_forward(const py::object& x, const py::object& weight,
                              const py::object& bias, const py::object& out,
                              const py::object& stride, const py::object& padding,
                              const py::object& output_padding, const py::object& dilation,
                              int version, int gemm_version, std::uintptr_t stream) {
  const ConvForward c = check_conv_forward(read_array, Conv::transposed, x, weight, bias, out,
                                           {stride, padding, output_padding, dilation}, 
                                           conv_versions(version, gemm_version));
  dispatch(c.x.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* b = c.has_bias ? c.bias.cptr<T>() : nullptr;
    run("conv_transpose2d_forward", [&] {
      return gc::conv_transpose2d_forward<T>(c.g, c.x.cptr<T>(), c.weight.cptr<T>(), b,
                                             c.out.mptr<T>(), version, as_stream(stream));
    });
  });
}

void conv_transpose2d_backward_input(const py::object& grad_out, const py::object& weight,
                                     const py::object& grad_in, const py::object& stride,
                                     const py::object& padding, const py::object& output_padding,
                                     const py::object& dilation, int version,
                                     int gemm_version, std::uintptr_t stream) {
  const ConvBackwardInput c =
      check_conv_backward_input(read_array, Conv::transposed, grad_out, weight, grad_in,
                                {stride, padding, output_padding, dilation}, 
                                conv_versions(version, gemm_version));
  dispatch(c.grad_out.dtype, [&](auto tag) {
    using T = decltype(tag);
    run("conv_transpose2d_backward_input", [&] {
      return gc::conv_transpose2d_backward_input<T>(c.g, c.grad_out.cptr<T>(),
                                                    c.weight.cptr<T>(), c.grad_in.mptr<T>(),
                                                    version, as_stream(stream));
    });
  });
}

void conv_transpose2d_backward_weight(const py::object& x, const py::object& grad_out,
                                      const py::object& grad_weight, const py::object& stride,
                                      const py::object& padding, const py::object& output_padding,
                                      const py::object& dilation, int version,
                                      int gemm_version, std::uintptr_t stream) {
  const ConvBackwardWeight c =
      check_conv_backward_weight(read_array, Conv::transposed, x, grad_out, grad_weight,
                                 {stride, padding, output_padding, dilation}, 
                                 conv_versions(version, gemm_version));
  dispatch(c.x.dtype, [&](auto tag) {
    using T = decltype(tag);
    run("conv_transpose2d_backward_weight", [&] {
      return gc::conv_transpose2d_backward_weight<T>(c.g, c.x.cptr<T>(), c.grad_out.cptr<T>(),
                                                     c.grad_weight.mptr<T>(), version,
                                                     as_stream(stream));
    });
  });
}

// ------------------------------------------------------------------ gemm
void gemm(const py::object& a, const py::object& b, const py::object& c, bool trans_a,
          bool trans_b, double alpha, double beta, int version, std::uintptr_t stream) {
  const Gemm s = check_gemm(read_array, a, b, c, trans_a, trans_b, version,
                            gc::gemm_num_versions());
  dispatch(s.a.dtype, [&](auto tag) {
    using T = decltype(tag);
    run("gemm", [&] {
      return gc::gemm<T>(trans_a, trans_b, s.m, s.n, s.k, narrow<T>(alpha), s.a.cptr<T>(), s.lda,
                         s.b.cptr<T>(), s.ldb, narrow<T>(beta), s.c.mptr<T>(), s.ldc, version,
                         as_stream(stream));
    });
  });
}

// ------------------------------------------------------------------ optimizers
void sgd_step(const py::object& param, const py::object& grad, const py::object& momentum_buf,
              double lr, double momentum, double dampening, double weight_decay, bool nesterov,
              bool first_step, int version, std::uintptr_t stream) {
  const SgdStep s = check_sgd_step(read_array, param, grad, momentum_buf, lr, momentum,
                                   dampening, weight_decay, nesterov, version,
                                   gc::optim_num_versions());
  dispatch(s.param.dtype, [&](auto tag) {
    using T = decltype(tag);
    T* buf = s.has_buf ? s.momentum_buf.mptr<T>() : nullptr;
    run("sgd_step", [&] {
      return gc::sgd_step<T>(s.param.numel, s.param.mptr<T>(), s.grad.cptr<T>(), buf, lr,
                             momentum, dampening, weight_decay, nesterov, first_step, version,
                             as_stream(stream));
    });
  });
}

void adam_step(const py::object& param, const py::object& grad, const py::object& exp_avg,
               const py::object& exp_avg_sq, int64_t step, double lr, double beta1, double beta2,
               double eps, double weight_decay, bool decoupled, int version,
               std::uintptr_t stream) {
  const AdamStep s = check_adam_step(read_array, param, grad, exp_avg, exp_avg_sq, step, lr,
                                     beta1, beta2, eps, weight_decay, version,
                                     gc::optim_num_versions());
  dispatch(s.param.dtype, [&](auto tag) {
    using T = decltype(tag);
    run("adam_step", [&] {
      return gc::adam_step<T>(s.param.numel, s.param.mptr<T>(), s.grad.cptr<T>(),
                              s.exp_avg.mptr<T>(), s.exp_avg_sq.mptr<T>(), step, lr, beta1,
                              beta2, eps, weight_decay, decoupled, version, as_stream(stream));
    });
  });
}

// ------------------------------------------------------------------ device
py::dict versions() {
  py::dict d;
  d["gemm"] = version_names(gc::gemm_num_versions(), gc::gemm_version_name);
  d["conv2d"] = version_names(gc::conv2d_num_versions(), gc::conv2d_version_name);
  d["optim"] = version_names(gc::optim_num_versions(), gc::optim_version_name);
  return d;
}

// The version -1 picks in each family: the last one, in every CUDA family.
py::dict fastest_versions() {
  py::dict d;
  d["gemm"] = gc::gemm_num_versions() - 1;
  d["conv2d"] = gc::conv2d_num_versions() - 1;
  d["optim"] = gc::optim_num_versions() - 1;
  return d;
}

// 0 where there is no driver or no GPU: asking must never raise.
int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

void synchronize() {
  cudaError_t err;
  {
    py::gil_scoped_release release;
    err = cudaDeviceSynchronize();
  }
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("gasca_core._C_cuda.synchronize: CUDA error ") +
                             cudaGetErrorName(err) + " (" + cudaGetErrorString(err) +
                             "), from work queued earlier on this device");
}

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() =
      "gasca_core CUDA kernels (cpp/cuda/) for CuPy arrays (any __cuda_array_interface__); "
      "the same functions as gasca_core._C plus stream=<cudaStream_t as int>; see "
      "python/README.md";
  using py::arg;

  m.def("conv2d_forward", &conv2d_forward, arg("x"), arg("weight"), arg("bias").none(true),
        arg("out"), arg("stride") = 1, arg("padding") = 0, arg("dilation") = 1,
        arg("version") = -1, arg("gemm_version") = -1, py::kw_only(), arg("stream") = 0,
        "out (N,Co,OH,OW) = conv2d(x (N,Ci,H,W), weight (Co,Ci,KH,KW)) + bias (Co) or None");
  m.def("conv2d_backward_input", &conv2d_backward_input, arg("grad_out"), arg("weight"),
        arg("grad_in"), arg("stride") = 1, arg("padding") = 0, arg("dilation") = 1,
        arg("version") = -1, arg("gemm_version") = -1, py::kw_only(), arg("stream") = 0,
        "grad_in (N,Ci,H,W) = conv2d's adjoint applied to grad_out");
  m.def("conv2d_backward_weight", &conv2d_backward_weight, arg("x"), arg("grad_out"),
        arg("grad_weight"), arg("stride") = 1, arg("padding") = 0, arg("dilation") = 1,
        arg("version") = -1, arg("gemm_version") = -1, py::kw_only(), arg("stream") = 0,
        "grad_weight (Co,Ci,KH,KW) from x and grad_out");
  m.def("conv2d_backward_bias", &conv2d_backward_bias, arg("grad_out"), arg("grad_bias"),
        py::kw_only(), arg("stream") = 0,
        "grad_bias (C) = grad_out (N,C,H,W) summed over N, H, W");
  m.def("conv_transpose2d_forward", &conv_transpose2d_forward, arg("x"), arg("weight"),
        arg("bias").none(true), arg("out"), arg("stride") = 1, arg("padding") = 0,
        arg("output_padding") = 0, arg("dilation") = 1, arg("version") = -1, arg("gemm_version") = -1, py::kw_only(),
        arg("stream") = 0,
        "out (N,Co,OH,OW) = conv_transpose2d(x (N,Ci,H,W), weight (Ci,Co,KH,KW)) + bias");
  m.def("conv_transpose2d_backward_input", &conv_transpose2d_backward_input, arg("grad_out"),
        arg("weight"), arg("grad_in"), arg("stride") = 1, arg("padding") = 0,
        arg("output_padding") = 0, arg("dilation") = 1, arg("version") = -1, arg("gemm_version") = -1, py::kw_only(),
        arg("stream") = 0,
        "grad_in (N,Ci,H,W) of a transposed convolution (a plain convolution of grad_out)");
  m.def("conv_transpose2d_backward_weight", &conv_transpose2d_backward_weight, arg("x"),
        arg("grad_out"), arg("grad_weight"), arg("stride") = 1, arg("padding") = 0,
        arg("output_padding") = 0, arg("dilation") = 1, arg("version") = -1, arg("gemm_version") = -1, py::kw_only(),
        arg("stream") = 0, "grad_weight (Ci,Co,KH,KW) of a transposed convolution");
  m.def("gemm", &gemm, arg("a"), arg("b"), arg("c"), arg("trans_a") = false,
        arg("trans_b") = false, arg("alpha") = 1.0, arg("beta") = 0.0, arg("version") = -1,
        py::kw_only(), arg("stream") = 0,
        "c = alpha * op(a) @ op(b) + beta * c (c is not read when beta == 0)");
  m.def("sgd_step", &sgd_step, arg("param"), arg("grad"), arg("momentum_buf").none(true),
        arg("lr"), arg("momentum") = 0.0, arg("dampening") = 0.0, arg("weight_decay") = 0.0,
        arg("nesterov") = false, arg("first_step") = false, arg("version") = -1, py::kw_only(),
        arg("stream") = 0, "in-place SGD step (torch.optim.SGD's formulas)");
  m.def("adam_step", &adam_step, arg("param"), arg("grad"), arg("exp_avg"), arg("exp_avg_sq"),
        arg("step"), arg("lr") = 1e-3, arg("beta1") = 0.9, arg("beta2") = 0.999,
        arg("eps") = 1e-8, arg("weight_decay") = 0.0, arg("decoupled") = false,
        arg("version") = -1, py::kw_only(), arg("stream") = 0,
        "in-place Adam (decoupled=False) / AdamW (decoupled=True) step");
  m.def("versions", &versions, "{'gemm': [...], 'conv2d': [...], 'optim': [...]}: version names");
  m.def("fastest_versions", &fastest_versions,
        "{'gemm': v, 'conv2d': v, 'optim': v}: the version -1 picks in each family");
  m.def("device_count", &device_count, "number of visible CUDA devices (0 without a driver)");
  m.def("synchronize", &synchronize,
        "wait for all work on the current device; raises RuntimeError on a CUDA error");
}
