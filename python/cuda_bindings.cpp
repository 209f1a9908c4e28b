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
// needed to build this module.  Every function checks, before any kernel is queued: that
// each array argument exposes the interface (else TypeError: a NumPy array is not a GPU
// array), its rank, its dtype (float32 or float64, the same for all arrays of a call),
// C-contiguity, that it lives in device memory on the current device, that outputs are
// writeable and do not overlap the inputs, that shapes agree with each other and with the
// geometry, that the output size is positive and that stride/dilation >= 1, padding >= 0,
// output_padding < max(stride, dilation).  Problems raise ValueError naming the argument and
// the shapes.  The GIL is released around the launches; a failed launch raises RuntimeError
// naming the kernel and the CUDA error.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <cuda_runtime_api.h>

#include "conv2d.h"
#include "cuda/kernels.h"

namespace py = pybind11;
using gasca::ConvGeometry;
namespace gc = gasca::cuda;

namespace {

// Largest stride/padding/dilation accepted (as the CPU module): far beyond any real
// network, small enough that no geometry formula can overflow int64.
constexpr int64_t kMaxParam = int64_t(1) << 30;

enum class DType { f32, f64 };

template <typename... Ts>
std::string tuple_str(Ts... v) {
  std::ostringstream s;
  s << "(";
  int i = 0;
  ((s << (i++ ? ", " : "") << v), ...);
  s << ")";
  return s.str();
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << "(";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  if (shape.size() == 1) s << ",";
  s << ")";
  return s.str();
}

[[noreturn]] void value_error(const std::string& msg) { throw py::value_error(msg); }

std::string type_name(const py::handle& obj) {
  return py::str(py::type::of(obj).attr("__name__")).cast<std::string>();
}

// One array argument, read from its __cuda_array_interface__ and checked once.
struct Arg {
  std::string name;
  std::vector<int64_t> shape;
  DType dtype = DType::f32;
  std::uintptr_t ptr = 0;
  int64_t numel = 0;

  int64_t dim(int i) const { return shape[static_cast<size_t>(i)]; }
  int64_t nbytes() const { return numel * (dtype == DType::f32 ? 4 : 8); }
  std::string shape_s() const { return shape_str(shape); }
  std::string dtype_s() const { return dtype == DType::f32 ? "float32" : "float64"; }
  template <typename T>
  const T* cptr() const { return reinterpret_cast<const T*>(ptr); }
  template <typename T>
  T* mptr() const { return reinterpret_cast<T*>(ptr); }
};

// The device memory check: the pointer must be device (or managed) memory of the current
// device, or the kernels would read another GPU's (or the host's) addresses.
void check_device_pointer(const Arg& a) {
  // Empty arrays may carry any pointer (or none); the functions that cannot take them
  // reject them later, with a better message.
  if (a.ptr == 0 || a.numel == 0) return;
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

// Converts nothing: a non-CUDA array is a TypeError, a wrong dtype/rank/layout a ValueError.
Arg check_array(const py::object& obj, const char* name, int rank, bool output) {
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
  Arg a;
  a.name = name;
  try {
    for (const auto& d : cai["shape"].cast<py::tuple>()) a.shape.push_back(d.cast<int64_t>());
    const auto data = cai["data"].cast<py::tuple>();
    a.ptr = data[0].cast<std::uintptr_t>();
    const bool read_only = data[1].cast<bool>();
    if (output && read_only)
      value_error(a.name + " (shape " + a.shape_s() + ") is read-only; it is an output");
    const std::string typestr = cai["typestr"].cast<std::string>();
    if (typestr == "<f4") {
      a.dtype = DType::f32;
    } else if (typestr == "<f8") {
      a.dtype = DType::f64;
    } else {
      std::string dt = typestr;
      if (py::hasattr(obj, "dtype")) dt = py::str(obj.attr("dtype")).cast<std::string>();
      value_error(a.name + " has dtype " + dt + " (shape " + a.shape_s() +
                  "); expected float32 or float64 in native byte order");
    }
    a.numel = 1;
    for (int64_t d : a.shape) {  // a malformed interface must not overflow the products
      if (d < 0 || (d > 0 && a.numel > (int64_t(1) << 62) / d))
        value_error(a.name + " has an impossible shape " + a.shape_s());
      a.numel *= d;
    }
    if (cai.contains("mask") && !cai["mask"].is_none())
      value_error(a.name + " is a masked array; masks are not supported");
    // strides: None means C-contiguous; otherwise they must be the C-contiguous ones
    // (dimensions of extent 1 may carry any stride).
    if (cai.contains("strides") && !cai["strides"].is_none() && a.numel > 0) {
      const auto strides = cai["strides"].cast<py::tuple>();
      int64_t expect = a.dtype == DType::f32 ? 4 : 8;
      bool contiguous = strides.size() == a.shape.size();
      for (size_t i = a.shape.size(); contiguous && i-- > 0;) {
        if (a.shape[i] != 1 && strides[i].cast<int64_t>() != expect) contiguous = false;
        expect *= a.shape[i];
      }
      if (!contiguous)
        value_error(a.name + " (shape " + a.shape_s() +
                    ") is not C-contiguous; pass cupy.ascontiguousarray(" + a.name + ")");
    }
  } catch (const py::cast_error& e) {
    throw py::type_error(std::string(name) + ": malformed __cuda_array_interface__ (" +
                         e.what() + ")");
  }
  if (rank >= 0 && static_cast<int>(a.shape.size()) != rank)
    value_error(a.name + " must be " + std::to_string(rank) + "-D, got " +
                std::to_string(a.shape.size()) + "-D array of shape " + a.shape_s());
  check_device_pointer(a);
  return a;
}

void check_positive_dims(const Arg& a) {
  for (int64_t d : a.shape)
    if (d <= 0)
      value_error(a.name + " has an empty dimension: shape " + a.shape_s() +
                  "; every size must be positive");
}

void check_same_dtype(const std::vector<const Arg*>& args) {
  for (const Arg* a : args)
    if (a->dtype != args[0]->dtype)
      value_error("dtype mismatch: " + args[0]->name + " is " + args[0]->dtype_s() + " but " +
                  a->name + " is " + a->dtype_s() + "; all arrays must share one dtype");
}

bool overlaps(const Arg& a, const Arg& b) {
  return a.nbytes() > 0 && b.nbytes() > 0 && a.ptr < b.ptr + static_cast<uintptr_t>(b.nbytes()) &&
         b.ptr < a.ptr + static_cast<uintptr_t>(a.nbytes());
}

void check_no_overlap(const Arg& out, const std::vector<const Arg*>& inputs) {
  for (const Arg* in : inputs)
    if (overlaps(out, *in))
      value_error(out.name + " (shape " + out.shape_s() + ") shares memory with " + in->name +
                  " (shape " + in->shape_s() + "); outputs must not alias inputs");
}

void check_shape(const Arg& a, const std::vector<int64_t>& expect, const std::string& why) {
  if (a.shape != expect)
    value_error(a.name + " has shape " + a.shape_s() + " but " + shape_str(expect) +
                " was expected " + why);
}

// (h, w) from an int or a pair of ints.
std::pair<int64_t, int64_t> parse_pair(const py::handle& obj, const char* name, int64_t min_value) {
  auto as_int = [&](const py::handle& h) -> int64_t {
    if (!py::isinstance<py::int_>(h) || py::isinstance<py::bool_>(h))
      throw py::type_error(std::string(name) + " must be an int or a pair (h, w) of ints, got " +
                           py::repr(obj).cast<std::string>());
    try {
      return h.cast<int64_t>();
    } catch (const py::cast_error&) {
      value_error(std::string(name) + " = " + py::repr(obj).cast<std::string>() +
                  " is out of range");
    }
  };
  std::pair<int64_t, int64_t> v;
  if (py::isinstance<py::int_>(obj) && !py::isinstance<py::bool_>(obj)) {
    v.first = v.second = as_int(obj);
  } else if (py::isinstance<py::sequence>(obj) && !py::isinstance<py::str>(obj)) {
    py::sequence seq = py::reinterpret_borrow<py::sequence>(obj);
    if (py::len(seq) != 2)
      value_error(std::string(name) + " must be a pair (h, w), got " +
                  py::repr(obj).cast<std::string>());
    v.first = as_int(seq[0]);
    v.second = as_int(seq[1]);
  } else {
    throw py::type_error(std::string(name) + " must be an int or a pair (h, w) of ints, got " +
                         py::repr(obj).cast<std::string>());
  }
  if (v.first < min_value || v.second < min_value)
    value_error(std::string(name) + " = " + tuple_str(v.first, v.second) + " must be >= " +
                std::to_string(min_value));
  if (v.first > kMaxParam || v.second > kMaxParam)
    value_error(std::string(name) + " = " + tuple_str(v.first, v.second) + " is too large");
  return v;
}

void check_version(int version, int count, const char* family) {
  if (version < -1 || version >= count)
    value_error(std::string("version = ") + std::to_string(version) + " is not a " + family +
                " version: expected -1 (fastest) or 0.." + std::to_string(count - 1) +
                " (see versions())");
}

struct ConvParams {
  std::pair<int64_t, int64_t> stride, padding, dilation, output_padding{0, 0};
};

ConvParams parse_conv(const py::handle& stride, const py::handle& padding,
                      const py::handle& dilation) {
  ConvParams p;
  p.stride = parse_pair(stride, "stride", 1);
  p.padding = parse_pair(padding, "padding", 0);
  p.dilation = parse_pair(dilation, "dilation", 1);
  return p;
}

ConvParams parse_conv_t(const py::handle& stride, const py::handle& padding,
                        const py::handle& output_padding, const py::handle& dilation) {
  ConvParams p = parse_conv(stride, padding, dilation);
  p.output_padding = parse_pair(output_padding, "output_padding", 0);
  if (p.output_padding.first >= std::max(p.stride.first, p.dilation.first) ||
      p.output_padding.second >= std::max(p.stride.second, p.dilation.second))
    value_error("output_padding = " + tuple_str(p.output_padding.first, p.output_padding.second) +
                " must be smaller than max(stride, dilation) = " +
                tuple_str(std::max(p.stride.first, p.dilation.first),
                          std::max(p.stride.second, p.dilation.second)));
  return p;
}

// The output size of a convolution along one axis; <= 0 for impossible geometries.
// (The same formula as gasca::make_conv_geometry, which lives in the CPU library that this
// module does not link.)
int64_t conv_out_size(int64_t in, int64_t pad, int64_t dil, int64_t k, int64_t stride) {
  const int64_t span = in + 2 * pad - dil * (k - 1) - 1;
  return span < 0 ? 0 : span / stride + 1;
}

ConvGeometry make_geometry(int64_t batch, int64_t ci, int64_t h, int64_t w, int64_t co,
                           int64_t kh, int64_t kw, const ConvParams& p) {
  ConvGeometry g;
  g.batch = batch;
  g.in_channels = ci;
  g.in_h = h;
  g.in_w = w;
  g.out_channels = co;
  g.kernel_h = kh;
  g.kernel_w = kw;
  g.stride_h = p.stride.first;
  g.stride_w = p.stride.second;
  g.pad_h = p.padding.first;
  g.pad_w = p.padding.second;
  g.dilation_h = p.dilation.first;
  g.dilation_w = p.dilation.second;
  g.out_h = conv_out_size(h, g.pad_h, g.dilation_h, kh, g.stride_h);
  g.out_w = conv_out_size(w, g.pad_w, g.dilation_w, kw, g.stride_w);
  return g;
}

// Geometry of a convolution with input (N, Ci, H, W) and weight (Co, Ci, KH, KW); rejects an
// empty output.
ConvGeometry conv_geometry(const Arg& in, const Arg& weight, const ConvParams& p,
                           const char* in_role) {
  if (weight.dim(1) != in.dim(1))
    value_error("channel mismatch: " + in.name + " has shape " + in.shape_s() + " (" +
                std::to_string(in.dim(1)) + " " + in_role + " channels) but " + weight.name +
                " has shape " + weight.shape_s() + " (expects " + std::to_string(weight.dim(1)) +
                " input channels)");
  ConvGeometry g = make_geometry(in.dim(0), in.dim(1), in.dim(2), in.dim(3), weight.dim(0),
                                 weight.dim(2), weight.dim(3), p);
  if (g.out_h <= 0 || g.out_w <= 0)
    value_error("output size would be empty: input " + in.name + " " + in.shape_s() +
                " with kernel " + tuple_str(g.kernel_h, g.kernel_w) + ", stride " +
                tuple_str(g.stride_h, g.stride_w) + ", padding " + tuple_str(g.pad_h, g.pad_w) +
                ", dilation " + tuple_str(g.dilation_h, g.dilation_w) +
                " gives output (H, W) <= 0; the padded input is smaller than the dilated kernel");
  return g;
}

// Geometry of the convolution whose adjoint is the transposed convolution with input x
// (N, Ci, H, W) and weight (Ci, Co, KH, KW) (cpp/conv_transpose2d.h); checks that it maps
// back onto exactly (H, W).
ConvGeometry conv_t_geometry(const Arg& x, const Arg& weight, const ConvParams& p) {
  if (weight.dim(0) != x.dim(1))
    value_error("channel mismatch: " + x.name + " has shape " + x.shape_s() + " (" +
                std::to_string(x.dim(1)) + " input channels) but " + weight.name +
                " has shape " + weight.shape_s() +
                " (a transposed-convolution weight (C_in, C_out, KH, KW) for " +
                std::to_string(weight.dim(0)) + " input channels)");
  const int64_t oh = (x.dim(2) - 1) * p.stride.first - 2 * p.padding.first +
                     p.dilation.first * (weight.dim(2) - 1) + p.output_padding.first + 1;
  const int64_t ow = (x.dim(3) - 1) * p.stride.second - 2 * p.padding.second +
                     p.dilation.second * (weight.dim(3) - 1) + p.output_padding.second + 1;
  if (oh <= 0 || ow <= 0)
    value_error("output size would be empty: transposed convolution of " + x.name + " " +
                x.shape_s() + " with kernel " + tuple_str(weight.dim(2), weight.dim(3)) +
                ", stride " + tuple_str(p.stride.first, p.stride.second) + ", padding " +
                tuple_str(p.padding.first, p.padding.second) + " gives output " +
                tuple_str(oh, ow));
  // The adjoint convolution: image (N, Co, oh, ow) -> (N, Ci, H, W), weight read as
  // (out_channels = Ci, in_channels = Co, KH, KW).
  ConvGeometry adj = make_geometry(x.dim(0), weight.dim(1), oh, ow, x.dim(1), weight.dim(2),
                                   weight.dim(3), p);
  if (adj.out_h != x.dim(2) || adj.out_w != x.dim(3))
    value_error("output_padding = " + tuple_str(p.output_padding.first, p.output_padding.second) +
                " with stride " + tuple_str(p.stride.first, p.stride.second) + " and dilation " +
                tuple_str(p.dilation.first, p.dilation.second) + ": the output " +
                tuple_str(oh, ow) + " does not map back onto the input size " +
                tuple_str(x.dim(2), x.dim(3)) + " of " + x.name +
                " under the adjoint convolution; use output_padding < stride");
  return adj;
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

template <typename F>
void dispatch(DType d, F&& f) {
  if (d == DType::f32)
    f(float{});
  else
    f(double{});
}

// ------------------------------------------------------------------ conv2d
void conv2d_forward(const py::object& x_, const py::object& w_, const py::object& b_,
                    const py::object& out_, const py::object& stride, const py::object& padding,
                    const py::object& dilation, int version, std::uintptr_t stream) {
  Arg x = check_array(x_, "x", 4, false);
  Arg w = check_array(w_, "weight", 4, false);
  Arg out = check_array(out_, "out", 4, true);
  std::vector<const Arg*> all{&x, &w, &out};
  Arg b;
  const bool has_bias = !b_.is_none();
  if (has_bias) {
    b = check_array(b_, "bias", 1, false);
    all.push_back(&b);
  }
  check_same_dtype(all);
  for (const Arg* a : all) check_positive_dims(*a);
  check_version(version, gc::conv2d_num_versions(), "conv2d");
  ConvParams p = parse_conv(stride, padding, dilation);
  ConvGeometry g = conv_geometry(x, w, p, "input");
  if (has_bias)
    check_shape(b, {g.out_channels}, "(one bias per output channel of weight " + w.shape_s() + ")");
  check_shape(out, {g.batch, g.out_channels, g.out_h, g.out_w},
              "for x " + x.shape_s() + " and weight " + w.shape_s());
  check_no_overlap(out, has_bias ? std::vector<const Arg*>{&x, &w, &b}
                                 : std::vector<const Arg*>{&x, &w});
  dispatch(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* bp = has_bias ? b.cptr<T>() : nullptr;
    run("conv2d_forward", [&] {
      return gc::conv2d_forward<T>(g, x.cptr<T>(), w.cptr<T>(), bp, out.mptr<T>(), version,
                                   as_stream(stream));
    });
  });
}

void conv2d_backward_input(const py::object& dy_, const py::object& w_, const py::object& dx_,
                           const py::object& stride, const py::object& padding,
                           const py::object& dilation, int version, std::uintptr_t stream) {
  Arg dy = check_array(dy_, "grad_out", 4, false);
  Arg w = check_array(w_, "weight", 4, false);
  Arg dx = check_array(dx_, "grad_in", 4, true);
  check_same_dtype({&dy, &w, &dx});
  for (const Arg* a : {&dy, &w, &dx}) check_positive_dims(*a);
  check_version(version, gc::conv2d_num_versions(), "conv2d");
  ConvParams p = parse_conv(stride, padding, dilation);
  ConvGeometry g = conv_geometry(dx, w, p, "input");
  check_shape(dy, {g.batch, g.out_channels, g.out_h, g.out_w},
              "for grad_in " + dx.shape_s() + " and weight " + w.shape_s());
  check_no_overlap(dx, {&dy, &w});
  dispatch(dy.dtype, [&](auto tag) {
    using T = decltype(tag);
    run("conv2d_backward_input", [&] {
      return gc::conv2d_backward_input<T>(g, dy.cptr<T>(), w.cptr<T>(), nullptr, dx.mptr<T>(),
                                          version, as_stream(stream));
    });
  });
}

void conv2d_backward_weight(const py::object& x_, const py::object& dy_, const py::object& dw_,
                            const py::object& stride, const py::object& padding,
                            const py::object& dilation, int version, std::uintptr_t stream) {
  Arg x = check_array(x_, "x", 4, false);
  Arg dy = check_array(dy_, "grad_out", 4, false);
  Arg dw = check_array(dw_, "grad_weight", 4, true);
  check_same_dtype({&x, &dy, &dw});
  for (const Arg* a : {&x, &dy, &dw}) check_positive_dims(*a);
  check_version(version, gc::conv2d_num_versions(), "conv2d");
  ConvParams p = parse_conv(stride, padding, dilation);
  ConvGeometry g = conv_geometry(x, dw, p, "input");
  check_shape(dy, {g.batch, g.out_channels, g.out_h, g.out_w},
              "for x " + x.shape_s() + " and grad_weight " + dw.shape_s());
  check_no_overlap(dw, {&x, &dy});
  dispatch(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    run("conv2d_backward_weight", [&] {
      return gc::conv2d_backward_weight<T>(g, x.cptr<T>(), dy.cptr<T>(), dw.mptr<T>(), version,
                                           as_stream(stream));
    });
  });
}

void conv2d_backward_bias(const py::object& dy_, const py::object& db_, std::uintptr_t stream) {
  Arg dy = check_array(dy_, "grad_out", 4, false);
  Arg db = check_array(db_, "grad_bias", 1, true);
  check_same_dtype({&dy, &db});
  for (const Arg* a : {&dy, &db}) check_positive_dims(*a);
  check_shape(db, {dy.dim(1)}, "(one entry per channel of grad_out " + dy.shape_s() + ")");
  check_no_overlap(db, {&dy});
  dispatch(dy.dtype, [&](auto tag) {
    using T = decltype(tag);
    run("conv2d_backward_bias", [&] {
      return gc::conv2d_backward_bias<T>(dy.dim(0), dy.dim(1), dy.dim(2) * dy.dim(3),
                                         dy.cptr<T>(), db.mptr<T>(), as_stream(stream));
    });
  });
}

// ------------------------------------------------------------------ conv_transpose2d
void conv_transpose2d_forward(const py::object& x_, const py::object& w_, const py::object& b_,
                              const py::object& out_, const py::object& stride,
                              const py::object& padding, const py::object& output_padding,
                              const py::object& dilation, int version, std::uintptr_t stream) {
  Arg x = check_array(x_, "x", 4, false);
  Arg w = check_array(w_, "weight", 4, false);
  Arg out = check_array(out_, "out", 4, true);
  std::vector<const Arg*> all{&x, &w, &out};
  Arg b;
  const bool has_bias = !b_.is_none();
  if (has_bias) {
    b = check_array(b_, "bias", 1, false);
    all.push_back(&b);
  }
  check_same_dtype(all);
  for (const Arg* a : all) check_positive_dims(*a);
  check_version(version, gc::conv2d_num_versions(), "conv2d");
  ConvParams p = parse_conv_t(stride, padding, output_padding, dilation);
  ConvGeometry adj = conv_t_geometry(x, w, p);
  if (has_bias)
    check_shape(b, {adj.in_channels},
                "(one bias per output channel of weight " + w.shape_s() + ")");
  check_shape(out, {adj.batch, adj.in_channels, adj.in_h, adj.in_w},
              "for x " + x.shape_s() + " and weight " + w.shape_s());
  check_no_overlap(out, has_bias ? std::vector<const Arg*>{&x, &w, &b}
                                 : std::vector<const Arg*>{&x, &w});
  dispatch(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* bp = has_bias ? b.cptr<T>() : nullptr;
    run("conv_transpose2d_forward", [&] {
      return gc::conv_transpose2d_forward<T>(adj, x.cptr<T>(), w.cptr<T>(), bp, out.mptr<T>(),
                                             version, as_stream(stream));
    });
  });
}

void conv_transpose2d_backward_input(const py::object& dy_, const py::object& w_,
                                     const py::object& dx_, const py::object& stride,
                                     const py::object& padding, const py::object& output_padding,
                                     const py::object& dilation, int version,
                                     std::uintptr_t stream) {
  Arg dy = check_array(dy_, "grad_out", 4, false);
  Arg w = check_array(w_, "weight", 4, false);
  Arg dx = check_array(dx_, "grad_in", 4, true);
  check_same_dtype({&dy, &w, &dx});
  for (const Arg* a : {&dy, &w, &dx}) check_positive_dims(*a);
  check_version(version, gc::conv2d_num_versions(), "conv2d");
  ConvParams p = parse_conv_t(stride, padding, output_padding, dilation);
  ConvGeometry adj = conv_t_geometry(dx, w, p);
  check_shape(dy, {adj.batch, adj.in_channels, adj.in_h, adj.in_w},
              "for grad_in " + dx.shape_s() + " and weight " + w.shape_s());
  check_no_overlap(dx, {&dy, &w});
  dispatch(dy.dtype, [&](auto tag) {
    using T = decltype(tag);
    run("conv_transpose2d_backward_input", [&] {
      return gc::conv_transpose2d_backward_input<T>(adj, dy.cptr<T>(), w.cptr<T>(),
                                                    dx.mptr<T>(), version, as_stream(stream));
    });
  });
}

void conv_transpose2d_backward_weight(const py::object& x_, const py::object& dy_,
                                      const py::object& dw_, const py::object& stride,
                                      const py::object& padding, const py::object& output_padding,
                                      const py::object& dilation, int version,
                                      std::uintptr_t stream) {
  Arg x = check_array(x_, "x", 4, false);
  Arg dy = check_array(dy_, "grad_out", 4, false);
  Arg dw = check_array(dw_, "grad_weight", 4, true);
  check_same_dtype({&x, &dy, &dw});
  for (const Arg* a : {&x, &dy, &dw}) check_positive_dims(*a);
  check_version(version, gc::conv2d_num_versions(), "conv2d");
  ConvParams p = parse_conv_t(stride, padding, output_padding, dilation);
  ConvGeometry adj = conv_t_geometry(x, dw, p);
  check_shape(dy, {adj.batch, adj.in_channels, adj.in_h, adj.in_w},
              "for x " + x.shape_s() + " and grad_weight " + dw.shape_s());
  check_no_overlap(dw, {&x, &dy});
  dispatch(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    run("conv_transpose2d_backward_weight", [&] {
      return gc::conv_transpose2d_backward_weight<T>(adj, x.cptr<T>(), dy.cptr<T>(),
                                                     dw.mptr<T>(), version, as_stream(stream));
    });
  });
}

// ------------------------------------------------------------------ gemm
void gemm(const py::object& a_, const py::object& b_, const py::object& c_, bool trans_a,
          bool trans_b, double alpha, double beta, int version, std::uintptr_t stream) {
  Arg a = check_array(a_, "a", 2, false);
  Arg b = check_array(b_, "b", 2, false);
  Arg c = check_array(c_, "c", 2, true);
  check_same_dtype({&a, &b, &c});
  check_version(version, gc::gemm_num_versions(), "gemm");
  const int64_t m = trans_a ? a.dim(1) : a.dim(0);
  const int64_t k = trans_a ? a.dim(0) : a.dim(1);
  const int64_t kb = trans_b ? b.dim(1) : b.dim(0);
  const int64_t n = trans_b ? b.dim(0) : b.dim(1);
  if (k != kb)
    value_error("inner dimensions differ: op(a) is " + tuple_str(m, k) + " (a " + a.shape_s() +
                (trans_a ? ", transposed" : "") + ") but op(b) is " + tuple_str(kb, n) + " (b " +
                b.shape_s() + (trans_b ? ", transposed" : "") + ")");
  check_shape(c, {m, n}, "for op(a) " + tuple_str(m, k) + " times op(b) " + tuple_str(kb, n));
  check_no_overlap(c, {&a, &b});
  const int64_t lda = std::max<int64_t>(a.dim(1), 1), ldb = std::max<int64_t>(b.dim(1), 1),
                ldc = std::max<int64_t>(c.dim(1), 1);
  dispatch(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    run("gemm", [&] {
      return gc::gemm<T>(trans_a, trans_b, m, n, k, static_cast<T>(alpha), a.cptr<T>(), lda,
                         b.cptr<T>(), ldb, static_cast<T>(beta), c.mptr<T>(), ldc, version,
                         as_stream(stream));
    });
  });
}

// ------------------------------------------------------------------ optimizers
void check_same_shape(const std::vector<const Arg*>& args) {
  for (const Arg* a : args)
    if (a->shape != args[0]->shape)
      value_error("shape mismatch: " + args[0]->name + " has shape " + args[0]->shape_s() +
                  " but " + a->name + " has shape " + a->shape_s() + "; all must match");
}

void check_distinct(const std::vector<const Arg*>& args) {
  for (size_t i = 0; i < args.size(); ++i)
    for (size_t j = i + 1; j < args.size(); ++j)
      if (overlaps(*args[i], *args[j]))
        value_error(args[i]->name + " and " + args[j]->name +
                    " share memory; they must be distinct");
}

void check_finite_nonneg(double v, const char* name) {
  if (!(v >= 0.0)) value_error(std::string(name) + " = " + std::to_string(v) + " must be >= 0");
}

void sgd_step(const py::object& p_, const py::object& g_, const py::object& buf_, double lr,
              double momentum, double dampening, double weight_decay, bool nesterov,
              bool first_step, int version, std::uintptr_t stream) {
  Arg p = check_array(p_, "param", -1, true);
  Arg g = check_array(g_, "grad", -1, false);
  std::vector<const Arg*> all{&p, &g};
  Arg buf;
  const bool has_buf = !buf_.is_none();
  if (has_buf) {
    buf = check_array(buf_, "momentum_buf", -1, true);
    all.push_back(&buf);
  }
  check_same_dtype(all);
  check_same_shape(all);
  check_distinct(all);
  check_version(version, gc::optim_num_versions(), "optim");
  check_finite_nonneg(lr, "lr");
  check_finite_nonneg(momentum, "momentum");
  check_finite_nonneg(weight_decay, "weight_decay");
  if (momentum != 0.0 && !has_buf)
    value_error("momentum = " + std::to_string(momentum) + " needs a momentum_buf array (shape " +
                p.shape_s() + "), got None");
  if (nesterov && (momentum <= 0.0 || dampening != 0.0))
    value_error("nesterov momentum requires momentum > 0 and dampening = 0");
  dispatch(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    T* bp = has_buf ? buf.mptr<T>() : nullptr;
    run("sgd_step", [&] {
      return gc::sgd_step<T>(p.numel, p.mptr<T>(), g.cptr<T>(), bp, lr, momentum, dampening,
                             weight_decay, nesterov, first_step, version, as_stream(stream));
    });
  });
}

void adam_step(const py::object& p_, const py::object& g_, const py::object& m_,
               const py::object& v_, int64_t step, double lr, double beta1, double beta2,
               double eps, double weight_decay, bool decoupled, int version,
               std::uintptr_t stream) {
  Arg p = check_array(p_, "param", -1, true);
  Arg g = check_array(g_, "grad", -1, false);
  Arg m = check_array(m_, "exp_avg", -1, true);
  Arg v = check_array(v_, "exp_avg_sq", -1, true);
  check_same_dtype({&p, &g, &m, &v});
  check_same_shape({&p, &g, &m, &v});
  check_distinct({&p, &g, &m, &v});
  check_version(version, gc::optim_num_versions(), "optim");
  if (step < 1)
    value_error("step = " + std::to_string(step) + " must be >= 1 (1-based, after this update)");
  check_finite_nonneg(lr, "lr");
  check_finite_nonneg(eps, "eps");
  check_finite_nonneg(weight_decay, "weight_decay");
  if (!(beta1 >= 0.0 && beta1 < 1.0))
    value_error("beta1 = " + std::to_string(beta1) + " must be in [0, 1)");
  if (!(beta2 >= 0.0 && beta2 < 1.0))
    value_error("beta2 = " + std::to_string(beta2) + " must be in [0, 1)");
  dispatch(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    run("adam_step", [&] {
      return gc::adam_step<T>(p.numel, p.mptr<T>(), g.cptr<T>(), m.mptr<T>(), v.mptr<T>(), step,
                              lr, beta1, beta2, eps, weight_decay, decoupled, version,
                              as_stream(stream));
    });
  });
}

// ------------------------------------------------------------------ device
py::dict versions() {
  auto names = [](int count, const char* (*name)(int)) {
    py::list l;
    for (int i = 0; i < count; ++i) l.append(name(i));
    return l;
  };
  py::dict d;
  d["gemm"] = names(gc::gemm_num_versions(), gc::gemm_version_name);
  d["conv2d"] = names(gc::conv2d_num_versions(), gc::conv2d_version_name);
  d["optim"] = names(gc::optim_num_versions(), gc::optim_version_name);
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
        arg("version") = -1, py::kw_only(), arg("stream") = 0,
        "out (N,Co,OH,OW) = conv2d(x (N,Ci,H,W), weight (Co,Ci,KH,KW)) + bias (Co) or None");
  m.def("conv2d_backward_input", &conv2d_backward_input, arg("grad_out"), arg("weight"),
        arg("grad_in"), arg("stride") = 1, arg("padding") = 0, arg("dilation") = 1,
        arg("version") = -1, py::kw_only(), arg("stream") = 0,
        "grad_in (N,Ci,H,W) = conv2d's adjoint applied to grad_out");
  m.def("conv2d_backward_weight", &conv2d_backward_weight, arg("x"), arg("grad_out"),
        arg("grad_weight"), arg("stride") = 1, arg("padding") = 0, arg("dilation") = 1,
        arg("version") = -1, py::kw_only(), arg("stream") = 0,
        "grad_weight (Co,Ci,KH,KW) from x and grad_out");
  m.def("conv2d_backward_bias", &conv2d_backward_bias, arg("grad_out"), arg("grad_bias"),
        py::kw_only(), arg("stream") = 0,
        "grad_bias (C) = grad_out (N,C,H,W) summed over N, H, W");
  m.def("conv_transpose2d_forward", &conv_transpose2d_forward, arg("x"), arg("weight"),
        arg("bias").none(true), arg("out"), arg("stride") = 1, arg("padding") = 0,
        arg("output_padding") = 0, arg("dilation") = 1, arg("version") = -1, py::kw_only(),
        arg("stream") = 0,
        "out (N,Co,OH,OW) = conv_transpose2d(x (N,Ci,H,W), weight (Ci,Co,KH,KW)) + bias");
  m.def("conv_transpose2d_backward_input", &conv_transpose2d_backward_input, arg("grad_out"),
        arg("weight"), arg("grad_in"), arg("stride") = 1, arg("padding") = 0,
        arg("output_padding") = 0, arg("dilation") = 1, arg("version") = -1, py::kw_only(),
        arg("stream") = 0,
        "grad_in (N,Ci,H,W) of a transposed convolution (a plain convolution of grad_out)");
  m.def("conv_transpose2d_backward_weight", &conv_transpose2d_backward_weight, arg("x"),
        arg("grad_out"), arg("grad_weight"), arg("stride") = 1, arg("padding") = 0,
        arg("output_padding") = 0, arg("dilation") = 1, arg("version") = -1, py::kw_only(),
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
  m.def("device_count", &device_count, "number of visible CUDA devices (0 without a driver)");
  m.def("synchronize", &synchronize,
        "wait for all work on the current device; raises RuntimeError on a CUDA error");
}
