// bindings.cpp: gasca_core._C, the CPU kernels of cpp/ for NumPy arrays.
//
// This file only checks and forwards.  Every function validates, before any kernel touches
// memory: that each array argument is a numpy.ndarray (else TypeError), its rank, its dtype
// (float32 or float64, the same for all arrays of a call), C-contiguity and alignment
// (such arrays are rejected, never copied silently), that outputs are writeable and do not
// overlap the inputs, that shapes agree with each other and with the geometry, that the
// output size is positive and that stride/dilation >= 1, padding >= 0 and
// output_padding < stride.  Problems raise ValueError naming the argument and the shapes.
// The GIL is released around every kernel call.  See python/README.md for the contract.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "conv2d.h"
#include "conv_transpose2d.h"
#include "gemm.h"
#include "optim.h"

namespace py = pybind11;
using gasca::ConvGeometry;

namespace {

// Largest stride/padding/dilation accepted: far beyond any real network, small enough that
// no geometry formula can overflow int64.
constexpr int64_t kMaxParam = int64_t(1) << 30;

enum class DType { f32, f64 };

std::string shape_str(const py::array& a) {
  std::ostringstream s;
  s << "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) {
    if (i) s << ", ";
    s << a.shape(i);
  }
  if (a.ndim() == 1) s << ",";
  s << ")";
  return s.str();
}

template <typename... Ts>
std::string tuple_str(Ts... v) {
  std::ostringstream s;
  s << "(";
  int i = 0;
  ((s << (i++ ? ", " : "") << v), ...);
  s << ")";
  return s.str();
}

[[noreturn]] void value_error(const std::string& msg) { throw py::value_error(msg); }

// alpha/beta of gemm may be anything IEEE: narrowing a double beyond float's range to float
// is undefined behaviour in C++, so saturate it to +-inf explicitly.
template <typename T>
T narrow(double v) {
  if (std::is_same<T, float>::value && std::isfinite(v) &&
      std::fabs(v) > double(std::numeric_limits<float>::max()))
    return static_cast<T>(std::copysign(std::numeric_limits<double>::infinity(), v));
  return static_cast<T>(v);
}

// One array argument, checked once, with its name kept for error messages.
struct Arg {
  std::string name;
  py::array arr;
  DType dtype = DType::f32;

  int64_t dim(int i) const { return static_cast<int64_t>(arr.shape(i)); }
  int64_t size() const { return static_cast<int64_t>(arr.size()); }
  std::string shape() const { return shape_str(arr); }
  template <typename T>
  const T* cptr() const { return static_cast<const T*>(arr.data()); }
  template <typename T>
  T* mptr() { return static_cast<T*>(arr.mutable_data()); }
};

// Converts nothing: a non-ndarray is a TypeError, a wrong dtype/rank/layout a ValueError.
Arg check_array(const py::object& obj, const char* name, int rank, bool output) {
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(std::string(name) + " must be a numpy.ndarray, got " +
                         py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
  }
  Arg a;
  a.name = name;
  a.arr = py::reinterpret_borrow<py::array>(obj);
  // NumPy's own dtype equality (a dtype equal to float32 need not be the same object, e.g.
  // after unpickling); byte-swapped dtypes are not equivalent, so they stay rejected.
  auto& api = py::detail::npy_api::get();
  if (api.PyArray_EquivTypes_(a.arr.dtype().ptr(), py::dtype::of<float>().ptr())) {
    a.dtype = DType::f32;
  } else if (api.PyArray_EquivTypes_(a.arr.dtype().ptr(), py::dtype::of<double>().ptr())) {
    a.dtype = DType::f64;
  } else {
    value_error(std::string(name) + " has dtype " + py::str(a.arr.dtype()).cast<std::string>() +
                " (shape " + a.shape() + "); expected float32 or float64 in native byte order");
  }
  if (rank >= 0 && a.arr.ndim() != rank) {
    value_error(std::string(name) + " must be " + std::to_string(rank) + "-D, got " +
                std::to_string(a.arr.ndim()) + "-D array of shape " + a.shape());
  }
  if (!(a.arr.flags() & py::array::c_style)) {
    value_error(std::string(name) + " (shape " + a.shape() +
                ") is not C-contiguous; pass np.ascontiguousarray(" + name + ")");
  }
  if (!(a.arr.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_)) {
    value_error(std::string(name) + " (shape " + a.shape() +
                ") is not aligned to its dtype; pass a copy (np.array(" + name + "))");
  }
  if (output && !a.arr.writeable()) {
    value_error(std::string(name) + " (shape " + a.shape() + ") is read-only; it is an output");
  }
  return a;
}

void check_positive_dims(const Arg& a) {
  for (py::ssize_t i = 0; i < a.arr.ndim(); ++i)
    if (a.arr.shape(i) <= 0)
      value_error(a.name + " has an empty dimension: shape " + a.shape() +
                  "; every size must be positive");
}

void check_same_dtype(const std::vector<const Arg*>& args) {
  for (const Arg* a : args)
    if (a->dtype != args[0]->dtype)
      value_error("dtype mismatch: " + args[0]->name + " is " +
                  py::str(args[0]->arr.dtype()).cast<std::string>() + " but " + a->name + " is " +
                  py::str(a->arr.dtype()).cast<std::string>() + "; all arrays must share one dtype");
}

bool overlaps(const Arg& a, const Arg& b) {
  const char* a0 = static_cast<const char*>(a.arr.data());
  const char* b0 = static_cast<const char*>(b.arr.data());
  const char* a1 = a0 + a.arr.nbytes();
  const char* b1 = b0 + b.arr.nbytes();
  return a.arr.nbytes() > 0 && b.arr.nbytes() > 0 && a0 < b1 && b0 < a1;
}

void check_no_overlap(const Arg& out, const std::vector<const Arg*>& inputs) {
  for (const Arg* in : inputs)
    if (overlaps(out, *in))
      value_error(out.name + " (shape " + out.shape() + ") shares memory with " + in->name +
                  " (shape " + in->shape() + "); outputs must not alias inputs");
}

void check_shape(const Arg& a, const std::vector<int64_t>& expect, const std::string& why) {
  bool ok = a.arr.ndim() == static_cast<py::ssize_t>(expect.size());
  for (size_t i = 0; ok && i < expect.size(); ++i) ok = a.dim(static_cast<int>(i)) == expect[i];
  if (!ok) {
    std::ostringstream s;
    s << "(";
    for (size_t i = 0; i < expect.size(); ++i) s << (i ? ", " : "") << expect[i];
    s << (expect.size() == 1 ? ",)" : ")");
    value_error(a.name + " has shape " + a.shape() + " but " + s.str() + " was expected " + why);
  }
}

// (h, w) from an int or a pair of ints.
std::pair<int64_t, int64_t> parse_pair(const py::handle& obj, const char* name, int64_t min_value) {
  std::pair<int64_t, int64_t> v;
  // An int is anything with __index__ (Python ints, NumPy integers), but not a bool.
  auto is_int = [](const py::handle& h) {
    // numpy.bool_ is not an int either (cached: numpy is imported by then, never unloaded)
    static PyObject* np_bool = py::object(py::module_::import("numpy").attr("bool_")).release().ptr();
    return PyIndex_Check(h.ptr()) && !py::isinstance<py::bool_>(h) &&
           !PyObject_IsInstance(h.ptr(), np_bool);
  };
  auto as_int = [&](const py::handle& h) -> int64_t {
    if (!is_int(h))
      throw py::type_error(std::string(name) + " must be an int or a pair (h, w) of ints, got " +
                           py::repr(obj).cast<std::string>());
    py::int_ i = py::reinterpret_steal<py::int_>(PyNumber_Index(h.ptr()));
    if (!i) throw py::error_already_set();
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(i.ptr(), &overflow);
    if (overflow != 0)
      value_error(std::string(name) + " = " + py::repr(obj).cast<std::string>() + " is out of range");
    return static_cast<int64_t>(v);
  };
  if (is_int(obj)) {
    v.first = v.second = as_int(obj);
  } else if (py::isinstance<py::sequence>(obj) && !py::isinstance<py::str>(obj) &&
             !py::isinstance<py::bytes>(obj) && !PyByteArray_Check(obj.ptr())) {
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
  // PyTorch allows output_padding < max(stride, dilation); the adjoint convolution maps
  // back onto the input size only when output_padding < stride, so that is what we accept
  // (it is the same condition whenever dilation <= stride, as in every gasca model).
  if (p.output_padding.first >= std::max(p.stride.first, p.dilation.first) ||
      p.output_padding.second >= std::max(p.stride.second, p.dilation.second))
    value_error("output_padding = " + tuple_str(p.output_padding.first, p.output_padding.second) +
                " must be smaller than max(stride, dilation) = " +
                tuple_str(std::max(p.stride.first, p.dilation.first),
                          std::max(p.stride.second, p.dilation.second)));
  return p;
}

// Geometry of a convolution with input x-shaped (N, Ci, H, W) and weight (Co, Ci, KH, KW);
// rejects an empty output.
ConvGeometry conv_geometry(const Arg& in, const Arg& weight, const ConvParams& p,
                           const char* in_role) {
  if (weight.dim(1) != in.dim(1))
    value_error("channel mismatch: " + in.name + " has shape " + in.shape() + " (" +
                std::to_string(in.dim(1)) + " " + in_role + " channels) but " + weight.name +
                " has shape " + weight.shape() + " (expects " + std::to_string(weight.dim(1)) +
                " input channels)");
  ConvGeometry g = gasca::make_conv_geometry(
      in.dim(0), in.dim(1), in.dim(2), in.dim(3), weight.dim(0), weight.dim(2), weight.dim(3),
      p.stride.first, p.stride.second, p.padding.first, p.padding.second, p.dilation.first,
      p.dilation.second);
  if (g.out_h <= 0 || g.out_w <= 0)
    value_error("output size would be empty: input " + in.name + " " + in.shape() +
                " with kernel " + tuple_str(g.kernel_h, g.kernel_w) + ", stride " +
                tuple_str(g.stride_h, g.stride_w) + ", padding " + tuple_str(g.pad_h, g.pad_w) +
                ", dilation " + tuple_str(g.dilation_h, g.dilation_w) +
                " gives output (H, W) <= 0; the padded input is smaller than the dilated kernel");
  return g;
}

// Geometry of the convolution whose adjoint is the transposed convolution with input x
// (N, Ci, H, W) and weight (Ci, Co, KH, KW); checks that it maps back onto exactly (H, W).
ConvGeometry conv_t_geometry(const Arg& x, const Arg& weight, const ConvParams& p) {
  if (weight.dim(0) != x.dim(1))
    value_error("channel mismatch: " + x.name + " has shape " + x.shape() + " (" +
                std::to_string(x.dim(1)) + " input channels) but " + weight.name + " has shape " +
                weight.shape() + " (a transposed-convolution weight (C_in, C_out, KH, KW) for " +
                std::to_string(weight.dim(0)) + " input channels)");
  const int64_t oh = (x.dim(2) - 1) * p.stride.first - 2 * p.padding.first +
                     p.dilation.first * (weight.dim(2) - 1) + p.output_padding.first + 1;
  const int64_t ow = (x.dim(3) - 1) * p.stride.second - 2 * p.padding.second +
                     p.dilation.second * (weight.dim(3) - 1) + p.output_padding.second + 1;
  if (oh <= 0 || ow <= 0)
    value_error("output size would be empty: transposed convolution of " + x.name + " " +
                x.shape() + " with kernel " + tuple_str(weight.dim(2), weight.dim(3)) +
                ", stride " + tuple_str(p.stride.first, p.stride.second) + ", padding " +
                tuple_str(p.padding.first, p.padding.second) + " gives output " +
                tuple_str(oh, ow));
  ConvGeometry adj = gasca::make_conv_transpose_geometry(
      x.dim(0), x.dim(1), x.dim(2), x.dim(3), weight.dim(1), weight.dim(2), weight.dim(3),
      p.stride.first, p.stride.second, p.padding.first, p.padding.second, p.output_padding.first,
      p.output_padding.second, p.dilation.first, p.dilation.second);
  if (adj.out_h != x.dim(2) || adj.out_w != x.dim(3))
    value_error("output_padding = " + tuple_str(p.output_padding.first, p.output_padding.second) +
                " with stride " + tuple_str(p.stride.first, p.stride.second) + " and dilation " +
                tuple_str(p.dilation.first, p.dilation.second) + ": the output " +
                tuple_str(oh, ow) + " does not map back onto the input size " +
                tuple_str(x.dim(2), x.dim(3)) + " of " + x.name +
                " under the adjoint convolution; use output_padding < stride");
  return adj;
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
                    const py::object& dilation, int version) {
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
  check_version(version, gasca::conv2d_num_versions(), "conv2d");
  ConvParams p = parse_conv(stride, padding, dilation);
  ConvGeometry g = conv_geometry(x, w, p, "input");
  if (has_bias) check_shape(b, {g.out_channels}, "(one bias per output channel of weight " + w.shape() + ")");
  check_shape(out, {g.batch, g.out_channels, g.out_h, g.out_w},
              "for x " + x.shape() + " and weight " + w.shape());
  check_no_overlap(out, has_bias ? std::vector<const Arg*>{&x, &w, &b} : std::vector<const Arg*>{&x, &w});
  dispatch(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.cptr<T>();
    const T* wp = w.cptr<T>();
    const T* bp = has_bias ? b.cptr<T>() : nullptr;
    T* yp = out.mptr<T>();
    py::gil_scoped_release release;
    gasca::conv2d_forward<T>(g, xp, wp, bp, yp, version);
  });
}

void conv2d_backward_input(const py::object& dy_, const py::object& w_, const py::object& dx_,
                           const py::object& stride, const py::object& padding,
                           const py::object& dilation, int version) {
  Arg dy = check_array(dy_, "grad_out", 4, false);
  Arg w = check_array(w_, "weight", 4, false);
  Arg dx = check_array(dx_, "grad_in", 4, true);
  check_same_dtype({&dy, &w, &dx});
  for (const Arg* a : {&dy, &w, &dx}) check_positive_dims(*a);
  check_version(version, gasca::conv2d_num_versions(), "conv2d");
  ConvParams p = parse_conv(stride, padding, dilation);
  ConvGeometry g = conv_geometry(dx, w, p, "input");
  check_shape(dy, {g.batch, g.out_channels, g.out_h, g.out_w},
              "for grad_in " + dx.shape() + " and weight " + w.shape());
  check_no_overlap(dx, {&dy, &w});
  dispatch(dy.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* dyp = dy.cptr<T>();
    const T* wp = w.cptr<T>();
    T* dxp = dx.mptr<T>();
    py::gil_scoped_release release;
    gasca::conv2d_backward_input<T>(g, dyp, wp, dxp, version);
  });
}

void conv2d_backward_weight(const py::object& x_, const py::object& dy_, const py::object& dw_,
                            const py::object& stride, const py::object& padding,
                            const py::object& dilation, int version) {
  Arg x = check_array(x_, "x", 4, false);
  Arg dy = check_array(dy_, "grad_out", 4, false);
  Arg dw = check_array(dw_, "grad_weight", 4, true);
  check_same_dtype({&x, &dy, &dw});
  for (const Arg* a : {&x, &dy, &dw}) check_positive_dims(*a);
  check_version(version, gasca::conv2d_num_versions(), "conv2d");
  ConvParams p = parse_conv(stride, padding, dilation);
  ConvGeometry g = conv_geometry(x, dw, p, "input");
  check_shape(dy, {g.batch, g.out_channels, g.out_h, g.out_w},
              "for x " + x.shape() + " and grad_weight " + dw.shape());
  check_no_overlap(dw, {&x, &dy});
  dispatch(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.cptr<T>();
    const T* dyp = dy.cptr<T>();
    T* dwp = dw.mptr<T>();
    py::gil_scoped_release release;
    gasca::conv2d_backward_weight<T>(g, xp, dyp, dwp, version);
  });
}

void conv2d_backward_bias(const py::object& dy_, const py::object& db_) {
  Arg dy = check_array(dy_, "grad_out", 4, false);
  Arg db = check_array(db_, "grad_bias", 1, true);
  check_same_dtype({&dy, &db});
  for (const Arg* a : {&dy, &db}) check_positive_dims(*a);
  check_shape(db, {dy.dim(1)}, "(one entry per channel of grad_out " + dy.shape() + ")");
  check_no_overlap(db, {&dy});
  ConvGeometry g;
  g.batch = dy.dim(0);
  g.out_channels = dy.dim(1);
  g.out_h = dy.dim(2);
  g.out_w = dy.dim(3);
  dispatch(dy.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* dyp = dy.cptr<T>();
    T* dbp = db.mptr<T>();
    py::gil_scoped_release release;
    gasca::conv2d_backward_bias<T>(g, dyp, dbp);
  });
}

// ------------------------------------------------------------------ conv_transpose2d
void conv_transpose2d_forward(const py::object& x_, const py::object& w_, const py::object& b_,
                              const py::object& out_, const py::object& stride,
                              const py::object& padding, const py::object& output_padding,
                              const py::object& dilation, int version) {
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
  check_version(version, gasca::conv2d_num_versions(), "conv2d");
  ConvParams p = parse_conv_t(stride, padding, output_padding, dilation);
  ConvGeometry adj = conv_t_geometry(x, w, p);
  if (has_bias) check_shape(b, {adj.in_channels}, "(one bias per output channel of weight " + w.shape() + ")");
  check_shape(out, {adj.batch, adj.in_channels, adj.in_h, adj.in_w},
              "for x " + x.shape() + " and weight " + w.shape());
  check_no_overlap(out, has_bias ? std::vector<const Arg*>{&x, &w, &b} : std::vector<const Arg*>{&x, &w});
  dispatch(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.cptr<T>();
    const T* wp = w.cptr<T>();
    const T* bp = has_bias ? b.cptr<T>() : nullptr;
    T* yp = out.mptr<T>();
    py::gil_scoped_release release;
    gasca::conv_transpose2d_forward<T>(adj, xp, wp, bp, yp, version);
  });
}

void conv_transpose2d_backward_input(const py::object& dy_, const py::object& w_,
                                     const py::object& dx_, const py::object& stride,
                                     const py::object& padding, const py::object& output_padding,
                                     const py::object& dilation, int version) {
  Arg dy = check_array(dy_, "grad_out", 4, false);
  Arg w = check_array(w_, "weight", 4, false);
  Arg dx = check_array(dx_, "grad_in", 4, true);
  check_same_dtype({&dy, &w, &dx});
  for (const Arg* a : {&dy, &w, &dx}) check_positive_dims(*a);
  check_version(version, gasca::conv2d_num_versions(), "conv2d");
  ConvParams p = parse_conv_t(stride, padding, output_padding, dilation);
  ConvGeometry adj = conv_t_geometry(dx, w, p);
  check_shape(dy, {adj.batch, adj.in_channels, adj.in_h, adj.in_w},
              "for grad_in " + dx.shape() + " and weight " + w.shape());
  check_no_overlap(dx, {&dy, &w});
  dispatch(dy.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* dyp = dy.cptr<T>();
    const T* wp = w.cptr<T>();
    T* dxp = dx.mptr<T>();
    py::gil_scoped_release release;
    gasca::conv_transpose2d_backward_input<T>(adj, dyp, wp, dxp, version);
  });
}

void conv_transpose2d_backward_weight(const py::object& x_, const py::object& dy_,
                                      const py::object& dw_, const py::object& stride,
                                      const py::object& padding, const py::object& output_padding,
                                      const py::object& dilation, int version) {
  Arg x = check_array(x_, "x", 4, false);
  Arg dy = check_array(dy_, "grad_out", 4, false);
  Arg dw = check_array(dw_, "grad_weight", 4, true);
  check_same_dtype({&x, &dy, &dw});
  for (const Arg* a : {&x, &dy, &dw}) check_positive_dims(*a);
  check_version(version, gasca::conv2d_num_versions(), "conv2d");
  ConvParams p = parse_conv_t(stride, padding, output_padding, dilation);
  ConvGeometry adj = conv_t_geometry(x, dw, p);
  check_shape(dy, {adj.batch, adj.in_channels, adj.in_h, adj.in_w},
              "for x " + x.shape() + " and grad_weight " + dw.shape());
  check_no_overlap(dw, {&x, &dy});
  dispatch(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.cptr<T>();
    const T* dyp = dy.cptr<T>();
    T* dwp = dw.mptr<T>();
    py::gil_scoped_release release;
    gasca::conv_transpose2d_backward_weight<T>(adj, xp, dyp, dwp, version);
  });
}

// ------------------------------------------------------------------ gemm
void gemm(const py::object& a_, const py::object& b_, const py::object& c_, bool trans_a,
          bool trans_b, double alpha, double beta, int version) {
  Arg a = check_array(a_, "a", 2, false);
  Arg b = check_array(b_, "b", 2, false);
  Arg c = check_array(c_, "c", 2, true);
  check_same_dtype({&a, &b, &c});
  check_version(version, gasca::gemm_num_versions(), "gemm");
  const int64_t m = trans_a ? a.dim(1) : a.dim(0);
  const int64_t k = trans_a ? a.dim(0) : a.dim(1);
  const int64_t kb = trans_b ? b.dim(1) : b.dim(0);
  const int64_t n = trans_b ? b.dim(0) : b.dim(1);
  if (k != kb)
    value_error("inner dimensions differ: op(a) is " + tuple_str(m, k) + " (a " + a.shape() +
                (trans_a ? ", transposed" : "") + ") but op(b) is " + tuple_str(kb, n) + " (b " +
                b.shape() + (trans_b ? ", transposed" : "") + ")");
  check_shape(c, {m, n}, "for op(a) " + tuple_str(m, k) + " times op(b) " + tuple_str(kb, n));
  check_no_overlap(c, {&a, &b});
  const int64_t lda = std::max<int64_t>(a.dim(1), 1), ldb = std::max<int64_t>(b.dim(1), 1),
                ldc = std::max<int64_t>(c.dim(1), 1);
  dispatch(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* ap = a.cptr<T>();
    const T* bp = b.cptr<T>();
    T* cp = c.mptr<T>();
    py::gil_scoped_release release;
    gasca::gemm<T>(trans_a, trans_b, m, n, k, narrow<T>(alpha), ap, lda, bp, ldb, narrow<T>(beta),
                   cp, ldc, version);
  });
}

// ------------------------------------------------------------------ optimizers
void check_same_shape(const std::vector<const Arg*>& args) {
  for (const Arg* a : args)
    if (a->arr.ndim() != args[0]->arr.ndim() ||
        !std::equal(a->arr.shape(), a->arr.shape() + a->arr.ndim(), args[0]->arr.shape()))
      value_error("shape mismatch: " + args[0]->name + " has shape " + args[0]->shape() + " but " +
                  a->name + " has shape " + a->shape() + "; all must match");
}

void check_distinct(const std::vector<const Arg*>& args) {
  for (size_t i = 0; i < args.size(); ++i)
    for (size_t j = i + 1; j < args.size(); ++j)
      if (overlaps(*args[i], *args[j]))
        value_error(args[i]->name + " and " + args[j]->name + " share memory; they must be distinct");
}

std::string num_str(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

// A hyperparameter must be finite and, for float32 arrays, within float32's range (the
// kernels hold it in the arrays' precision).
void check_finite(double v, const char* name, DType d) {
  if (!std::isfinite(v)) value_error(std::string(name) + " = " + num_str(v) + " must be finite");
  if (d == DType::f32 && std::fabs(v) > double(std::numeric_limits<float>::max()))
    value_error(std::string(name) + " = " + num_str(v) + " is beyond float32's range");
}

void check_finite_nonneg(double v, const char* name, DType d) {
  check_finite(v, name, d);
  if (!(v >= 0.0)) value_error(std::string(name) + " = " + num_str(v) + " must be >= 0");
}



void sgd_step(const py::object& p_, const py::object& g_, const py::object& buf_, double lr,
              double momentum, double dampening, double weight_decay, bool nesterov,
              bool first_step, int version) {
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
  check_version(version, gasca::optim_num_versions(), "optim");
  check_finite_nonneg(lr, "lr", p.dtype);
  check_finite_nonneg(momentum, "momentum", p.dtype);
  check_finite(dampening, "dampening", p.dtype);
  check_finite_nonneg(weight_decay, "weight_decay", p.dtype);
  if (momentum != 0.0 && !has_buf)
    value_error("momentum = " + std::to_string(momentum) + " needs a momentum_buf array (shape " +
                p.shape() + "), got None");
  if (nesterov && (momentum <= 0.0 || dampening != 0.0))
    value_error("nesterov momentum requires momentum > 0 and dampening = 0");
  const int64_t n = p.size();
  dispatch(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    T* pp = p.mptr<T>();
    const T* gp = g.cptr<T>();
    T* bp = has_buf ? buf.mptr<T>() : nullptr;
    py::gil_scoped_release release;
    gasca::SgdHyper h;
    h.lr = lr;
    h.momentum = momentum;
    h.dampening = dampening;
    h.weight_decay = weight_decay;
    h.nesterov = nesterov;
    gasca::sgd_step<T>(n, pp, gp, bp, h, first_step, version);
  });
}

void adam_step(const py::object& p_, const py::object& g_, const py::object& m_,
               const py::object& v_, int64_t step, double lr, double beta1, double beta2,
               double eps, double weight_decay, bool decoupled, int version) {
  Arg p = check_array(p_, "param", -1, true);
  Arg g = check_array(g_, "grad", -1, false);
  Arg m = check_array(m_, "exp_avg", -1, true);
  Arg v = check_array(v_, "exp_avg_sq", -1, true);
  check_same_dtype({&p, &g, &m, &v});
  check_same_shape({&p, &g, &m, &v});
  check_distinct({&p, &g, &m, &v});
  check_version(version, gasca::optim_num_versions(), "optim");
  if (step < 1) value_error("step = " + std::to_string(step) + " must be >= 1 (1-based, after this update)");
  check_finite_nonneg(lr, "lr", p.dtype);
  check_finite_nonneg(eps, "eps", p.dtype);
  check_finite_nonneg(weight_decay, "weight_decay", p.dtype);
  if (!(beta1 >= 0.0 && beta1 < 1.0)) value_error("beta1 = " + std::to_string(beta1) + " must be in [0, 1)");
  if (!(beta2 >= 0.0 && beta2 < 1.0)) value_error("beta2 = " + std::to_string(beta2) + " must be in [0, 1)");
  const int64_t n = p.size();
  dispatch(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    T* pp = p.mptr<T>();
    const T* gp = g.cptr<T>();
    T* mp = m.mptr<T>();
    T* vp = v.mptr<T>();
    py::gil_scoped_release release;
    gasca::AdamHyper h;
    h.lr = lr;
    h.beta1 = beta1;
    h.beta2 = beta2;
    h.eps = eps;
    h.weight_decay = weight_decay;
    h.decoupled = decoupled;
    gasca::adam_step<T>(n, pp, gp, mp, vp, step, h, version);
  });
}

py::dict versions() {
  auto names = [](int count, const char* (*name)(int)) {
    py::list l;
    for (int i = 0; i < count; ++i) l.append(name(i));
    return l;
  };
  py::dict d;
  d["gemm"] = names(gasca::gemm_num_versions(), gasca::gemm_version_name);
  d["conv2d"] = names(gasca::conv2d_num_versions(), gasca::conv2d_version_name);
  d["optim"] = names(gasca::optim_num_versions(), gasca::optim_version_name);
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "gasca_core CPU kernels (cpp/) for NumPy arrays; see python/README.md";
  using py::arg;
  const auto none = py::none();

  m.def("conv2d_forward", &conv2d_forward, arg("x"), arg("weight"), arg("bias").none(true),
        arg("out"), arg("stride") = 1, arg("padding") = 0, arg("dilation") = 1,
        arg("version") = -1,
        "out (N,Co,OH,OW) = conv2d(x (N,Ci,H,W), weight (Co,Ci,KH,KW)) + bias (Co) or None");
  m.def("conv2d_backward_input", &conv2d_backward_input, arg("grad_out"), arg("weight"),
        arg("grad_in"), arg("stride") = 1, arg("padding") = 0, arg("dilation") = 1,
        arg("version") = -1, "grad_in (N,Ci,H,W) = conv2d's adjoint applied to grad_out");
  m.def("conv2d_backward_weight", &conv2d_backward_weight, arg("x"), arg("grad_out"),
        arg("grad_weight"), arg("stride") = 1, arg("padding") = 0, arg("dilation") = 1,
        arg("version") = -1, "grad_weight (Co,Ci,KH,KW) from x and grad_out");
  m.def("conv2d_backward_bias", &conv2d_backward_bias, arg("grad_out"), arg("grad_bias"),
        "grad_bias (C) = grad_out (N,C,H,W) summed over N, H, W");
  m.def("conv_transpose2d_forward", &conv_transpose2d_forward, arg("x"), arg("weight"),
        arg("bias").none(true), arg("out"), arg("stride") = 1, arg("padding") = 0,
        arg("output_padding") = 0, arg("dilation") = 1, arg("version") = -1,
        "out (N,Co,OH,OW) = conv_transpose2d(x (N,Ci,H,W), weight (Ci,Co,KH,KW)) + bias");
  m.def("conv_transpose2d_backward_input", &conv_transpose2d_backward_input, arg("grad_out"),
        arg("weight"), arg("grad_in"), arg("stride") = 1, arg("padding") = 0,
        arg("output_padding") = 0, arg("dilation") = 1, arg("version") = -1,
        "grad_in (N,Ci,H,W) of a transposed convolution (a plain convolution of grad_out)");
  m.def("conv_transpose2d_backward_weight", &conv_transpose2d_backward_weight, arg("x"),
        arg("grad_out"), arg("grad_weight"), arg("stride") = 1, arg("padding") = 0,
        arg("output_padding") = 0, arg("dilation") = 1, arg("version") = -1,
        "grad_weight (Ci,Co,KH,KW) of a transposed convolution");
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
  m.def("versions", &versions, "{'gemm': [...], 'conv2d': [...], 'optim': [...]}: version names");
  m.def("get_num_threads", &gasca::get_num_threads, "threads the CPU kernels use");
  m.def("set_num_threads", [](int n) {
    // More threads than 4 per core only adds overhead, and asking OpenMP for thousands
    // can fail to create them (libgomp then aborts the process).
    const int limit = std::max(8, 4 * static_cast<int>(std::thread::hardware_concurrency()));
    if (n < 1 || n > limit)
      value_error("set_num_threads: n = " + std::to_string(n) + " must be in 1.." +
                  std::to_string(limit) + " (4 per CPU)");
    gasca::set_num_threads(n);
  }, arg("n"), "set the threads the CPU kernels use (1 .. 4 per CPU)");
  (void)none;
}
