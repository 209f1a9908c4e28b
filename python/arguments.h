// arguments.h: the argument checks of gasca_core._C (bindings.cpp, NumPy arrays) and
// gasca_core._C_cuda (cuda_bindings.cpp, CUDA arrays), written once for both.
//
// The two modules expose the same functions with the same contract (python/README.md).
// Everything that does not depend on *how* an array is reached lives here: reading
// stride/padding/dilation, the version and hyper-parameter checks, the convolution
// geometry, and the dtype/shape/aliasing checks of every function, in a fixed order, with
// fixed messages.  A module only supplies a `ReadArray` (NumPy's buffer, or
// `__cuda_array_interface__`) that turns one Python object into an `Array`, and calls its
// kernels with what the check_* function of each binding returns.  So the CPU and the CUDA
// module accept and reject exactly the same calls, with the same errors, by construction.
//
// Errors: ValueError for bad values, shapes, dtypes and layouts, TypeError for a wrong kind
// of object; every message names the argument and the shapes involved.
#pragma once

#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "conv2d.h"  // ConvGeometry and its inline formulas (the CUDA module links no cpp/*.cpp)

namespace gasca::bind {

namespace py = pybind11;

// Largest stride/padding/dilation accepted: far beyond any real network, small enough that
// no geometry formula below can overflow int64.
constexpr int64_t kMaxParam = int64_t(1) << 30;

// ------------------------------------------------------------------ messages
template <typename... Ts>
std::string tuple_str(Ts... v) {
  std::ostringstream s;
  s << "(";
  int i = 0;
  ((s << (i++ ? ", " : "") << v), ...);
  s << ")";
  return s.str();
}

// "(2, 3)", and "(5,)" for one dimension, as Python prints shapes.
inline std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << "(";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  if (shape.size() == 1) s << ",";
  s << ")";
  return s.str();
}

// Shortest round-trip form of a double ("0.001", "inf"), for hyper-parameter messages.
inline std::string num_str(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

inline std::string type_name(const py::handle& obj) {
  return py::str(py::type::of(obj).attr("__name__")).cast<std::string>();
}

[[noreturn]] inline void value_error(const std::string& msg) { throw py::value_error(msg); }

// ------------------------------------------------------------------ one array argument
enum class DType { f32, f64 };

// An array argument once a module has read it: its name (for messages), shape, dtype and
// the address of its first element.  Host or device address is the module's business:
// nothing in this header dereferences it.  The Python object stays owned by the caller
// for the whole call, so the address stays valid while the kernel runs.
struct Array {
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

// A module's reader: checks that `obj` is an array of its kind (TypeError otherwise) with a
// float32/float64 dtype, C-contiguous, of rank `rank` (any if < 0), writeable if `output`,
// and returns it as an Array.
using ReadArray = Array (*)(const py::object& obj, const char* name, int rank, bool output);

// The reader's messages that do not depend on the kind of array.
[[noreturn]] inline void dtype_error(const Array& a, const std::string& dtype) {
  value_error(a.name + " has dtype " + dtype + " (shape " + a.shape_s() +
              "); expected float32 or float64 in native byte order");
}

inline void check_rank(const Array& a, int rank) {
  if (rank >= 0 && static_cast<int>(a.shape.size()) != rank)
    value_error(a.name + " must be " + std::to_string(rank) + "-D, got " +
                std::to_string(a.shape.size()) + "-D array of shape " + a.shape_s());
}

// `module` names the library whose ascontiguousarray fixes it ("np", "cupy").
[[noreturn]] inline void not_contiguous_error(const Array& a, const char* module) {
  value_error(a.name + " (shape " + a.shape_s() + ") is not C-contiguous; pass " + module +
              ".ascontiguousarray(" + a.name + ")");
}

// The kernels dereference the data as float*/double*: an address that is not a multiple of
// the element size is undefined behaviour on the CPU and a sticky misaligned-address error
// (the whole CUDA context lost) on the GPU.
[[noreturn]] inline void not_aligned_error(const Array& a, const char* module) {
  value_error(a.name + " (shape " + a.shape_s() + ") is not aligned to its dtype; pass a copy (" +
              module + ".array(" + a.name + "))");
}

[[noreturn]] inline void read_only_error(const Array& a) {
  value_error(a.name + " (shape " + a.shape_s() + ") is read-only; it is an output");
}

// ------------------------------------------------------------------ checks between arrays
inline void check_positive_dims(const Array& a) {
  for (int64_t d : a.shape)
    if (d <= 0)
      value_error(a.name + " has an empty dimension: shape " + a.shape_s() +
                  "; every size must be positive");
}

inline void check_same_dtype(const std::vector<const Array*>& args) {
  for (const Array* a : args)
    if (a->dtype != args[0]->dtype)
      value_error("dtype mismatch: " + args[0]->name + " is " + args[0]->dtype_s() + " but " +
                  a->name + " is " + a->dtype_s() + "; all arrays must share one dtype");
}

inline void check_same_shape(const std::vector<const Array*>& args) {
  for (const Array* a : args)
    if (a->shape != args[0]->shape)
      value_error("shape mismatch: " + args[0]->name + " has shape " + args[0]->shape_s() +
                  " but " + a->name + " has shape " + a->shape_s() + "; all must match");
}

// `why` says where the expected shape comes from ("for x (...) and weight (...)").
inline void check_shape(const Array& a, const std::vector<int64_t>& expect,
                        const std::string& why) {
  if (a.shape != expect)
    value_error(a.name + " has shape " + a.shape_s() + " but " + shape_str(expect) +
                " was expected " + why);
}

// Byte ranges, not just first addresses: a view into the middle of an input aliases it too.
inline bool overlaps(const Array& a, const Array& b) {
  return a.nbytes() > 0 && b.nbytes() > 0 &&
         a.ptr < b.ptr + static_cast<std::uintptr_t>(b.nbytes()) &&
         b.ptr < a.ptr + static_cast<std::uintptr_t>(a.nbytes());
}

// A kernel writing `out` while reading an input it overlaps would read its own results.
inline void check_no_overlap(const Array& out, const std::vector<const Array*>& inputs) {
  for (const Array* in : inputs)
    if (overlaps(out, *in))
      value_error(out.name + " (shape " + out.shape_s() + ") shares memory with " + in->name +
                  " (shape " + in->shape_s() + "); outputs must not alias inputs");
}

// The optimizers update several arrays in place at once: no two may share memory.
inline void check_distinct(const std::vector<const Array*>& args) {
  for (size_t i = 0; i < args.size(); ++i)
    for (size_t j = i + 1; j < args.size(); ++j)
      if (overlaps(*args[i], *args[j]))
        value_error(args[i]->name + " and " + args[j]->name +
                    " share memory; they must be distinct");
}

// ------------------------------------------------------------------ scalar arguments
// An int is anything with __index__ (Python ints, NumPy integers, as PyTorch accepts), but
// not a bool: stride=True is a mistake, not stride 1.
inline bool is_int(const py::handle& h) {
  // numpy.bool_ has no __index__ in new NumPy but had one in old; looked up once (NumPy is
  // a dependency of the package, imported by then, and never unloaded).
  static PyObject* np_bool =
      py::object(py::module_::import("numpy").attr("bool_")).release().ptr();
  return PyIndex_Check(h.ptr()) && !py::isinstance<py::bool_>(h) &&
         !PyObject_IsInstance(h.ptr(), np_bool);
}

// (h, w) from an int or a pair of ints, each in min_value .. kMaxParam.
inline std::pair<int64_t, int64_t> parse_pair(const py::handle& obj, const char* name,
                                              int64_t min_value) {
  auto got = [&] { return py::repr(obj).cast<std::string>(); };  // only for messages
  auto type_error = [&] {
    return py::type_error(std::string(name) + " must be an int or a pair (h, w) of ints, got " +
                          got());
  };
  auto as_int = [&](const py::handle& h) -> int64_t {
    if (!is_int(h)) throw type_error();
    py::int_ i = py::reinterpret_steal<py::int_>(PyNumber_Index(h.ptr()));
    if (!i) throw py::error_already_set();
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(i.ptr(), &overflow);
    if (overflow != 0) value_error(std::string(name) + " = " + got() + " is out of range");
    return static_cast<int64_t>(v);
  };
  // str, bytes and bytearray are sequences too, but "12" or b"12" is not a pair of ints.
  auto is_pair_like = [](const py::handle& h) {
    return py::isinstance<py::sequence>(h) && !py::isinstance<py::str>(h) &&
           !py::isinstance<py::bytes>(h) && !PyByteArray_Check(h.ptr());
  };
  std::pair<int64_t, int64_t> v;
  if (is_int(obj)) {
    v.first = v.second = as_int(obj);
  } else if (is_pair_like(obj)) {
    py::sequence seq = py::reinterpret_borrow<py::sequence>(obj);
    if (py::len(seq) != 2) value_error(std::string(name) + " must be a pair (h, w), got " + got());
    v.first = as_int(seq[0]);
    v.second = as_int(seq[1]);
  } else {
    throw type_error();
  }
  if (v.first < min_value || v.second < min_value)
    value_error(std::string(name) + " = " + tuple_str(v.first, v.second) + " must be >= " +
                std::to_string(min_value));
  if (v.first > kMaxParam || v.second > kMaxParam)
    value_error(std::string(name) + " = " + tuple_str(v.first, v.second) + " is too large");
  return v;
}

// `count` versions of the kernel family exist; -1 asks for the fastest.  `arg` is the
// argument's name in the binding ("version", or "gemm_version" for a convolution's gemm).
inline void check_version(int version, int count, const char* family,
                          const char* arg = "version") {
  if (version < -1 || version >= count)
    value_error(std::string(arg) + " = " + std::to_string(version) + " is not a " + family +
                " version: expected -1 (fastest) or 0.." + std::to_string(count - 1) +
                " (see versions())");
}

// A convolution pass's two version arguments and how many versions each family has: its
// own (conv2d) and the gemm that its gemm-based versions call (cpp/conv2d.h).
struct Versions {
  int version, num_versions, gemm_version, gemm_num_versions;
};

// A hyper-parameter must be finite and, for float32 arrays, within float32's range: the
// kernels hold it in the arrays' precision, and narrowing a larger double to float is
// undefined behaviour in C++.
inline void check_finite(double v, const char* name, DType d) {
  if (!std::isfinite(v)) value_error(std::string(name) + " = " + num_str(v) + " must be finite");
  if (d == DType::f32 && std::fabs(v) > double(std::numeric_limits<float>::max()))
    value_error(std::string(name) + " = " + num_str(v) + " is beyond float32's range");
}

inline void check_finite_nonneg(double v, const char* name, DType d) {
  check_finite(v, name, d);
  if (!(v >= 0.0)) value_error(std::string(name) + " = " + num_str(v) + " must be >= 0");
}

// gemm's alpha/beta may be anything IEEE (no check): saturate what float cannot hold to
// +-inf explicitly, since the plain cast would be undefined behaviour.
template <typename T>
T narrow(double v) {
  if (std::is_same<T, float>::value && std::isfinite(v) &&
      std::fabs(v) > double(std::numeric_limits<float>::max()))
    return static_cast<T>(std::copysign(std::numeric_limits<double>::infinity(), v));
  return static_cast<T>(v);
}

// Calls f(float{}) or f(double{}), so one generic lambda serves both dtypes.
template <typename F>
void dispatch(DType d, F&& f) {
  if (d == DType::f32)
    f(float{});
  else
    f(double{});
}

// The names of a kernel family's versions, index = version number.
inline py::list version_names(int count, const char* (*name)(int)) {
  py::list l;
  for (int i = 0; i < count; ++i) l.append(name(i));
  return l;
}

// ------------------------------------------------------------------ convolution geometry
// Which convolution a pass belongs to.  A transposed convolution is described by the
// geometry of the plain convolution it is the adjoint of (cpp/conv_transpose2d.h), so the
// two kinds share every check; they differ only in which side of that geometry an array is.
enum class Conv { plain, transposed };

// stride, padding, output_padding, dilation as Python passed them (output_padding is only
// read for a transposed convolution).
struct ConvArgs {
  py::handle stride, padding, output_padding, dilation;
};

inline ConvArgs plain_conv_args(const py::handle& stride, const py::handle& padding,
                                const py::handle& dilation) {
  return ConvArgs{stride, padding, py::handle(), dilation};
}

struct ConvParams {
  std::pair<int64_t, int64_t> stride, padding, dilation, output_padding{0, 0};
};

inline ConvParams parse_conv_params(Conv kind, const ConvArgs& args) {
  ConvParams p;
  p.stride = parse_pair(args.stride, "stride", 1);
  p.padding = parse_pair(args.padding, "padding", 0);
  p.dilation = parse_pair(args.dilation, "dilation", 1);
  if (kind == Conv::plain) return p;
  p.output_padding = parse_pair(args.output_padding, "output_padding", 0);
  // PyTorch's bound.  (Where output_padding >= stride, the adjoint convolution has an
  // output smaller than its natural size: see make_conv_transpose_geometry in conv2d.h.)
  const int64_t limit_h = std::max(p.stride.first, p.dilation.first);
  const int64_t limit_w = std::max(p.stride.second, p.dilation.second);
  if (p.output_padding.first >= limit_h || p.output_padding.second >= limit_w)
    value_error("output_padding = " + tuple_str(p.output_padding.first, p.output_padding.second) +
                " must be smaller than max(stride, dilation) = " + tuple_str(limit_h, limit_w));
  return p;
}

// A convolution's geometry from the arrays' sizes and the parameters: conv2d.h's formulas
// (the one copy, shared with the kernels; inline there, as the CUDA module links nothing of
// the CPU library).
inline ConvGeometry make_geometry(int64_t batch, int64_t ci, int64_t h, int64_t w, int64_t co,
                                  int64_t kh, int64_t kw, const ConvParams& p) {
  return make_conv_geometry(batch, ci, h, w, co, kh, kw, p.stride.first, p.stride.second,
                            p.padding.first, p.padding.second, p.dilation.first,
                            p.dilation.second);
}

// Geometry of a convolution with input `in` (N, Ci, H, W) and weight (Co, Ci, KH, KW);
// rejects an empty output.
inline ConvGeometry conv_geometry(const Array& in, const Array& weight, const ConvParams& p) {
  if (weight.dim(1) != in.dim(1))
    value_error("channel mismatch: " + in.name + " has shape " + in.shape_s() + " (" +
                std::to_string(in.dim(1)) + " input channels) but " + weight.name +
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
// (N, Ci, H, W) and weight (Ci, Co, KH, KW): make_conv_transpose_geometry (conv2d.h).  Its
// image is the transposed convolution's output (checked non-empty here); its output is
// x's (H, W), at most its natural size for any output_padding >= 0 (conv2d.h).
inline ConvGeometry conv_t_geometry(const Array& x, const Array& weight, const ConvParams& p) {
  if (weight.dim(0) != x.dim(1))
    value_error("channel mismatch: " + x.name + " has shape " + x.shape_s() + " (" +
                std::to_string(x.dim(1)) + " input channels) but " + weight.name +
                " has shape " + weight.shape_s() +
                " (a transposed-convolution weight (C_in, C_out, KH, KW) for " +
                std::to_string(weight.dim(0)) + " input channels)");
  // The adjoint convolution: image (N, Co, oh, ow) -> (N, Ci, H, W), weight read as
  // (out_channels = Ci, in_channels = Co, KH, KW).
  const ConvGeometry adj = make_conv_transpose_geometry(
      x.dim(0), x.dim(1), x.dim(2), x.dim(3), weight.dim(1), weight.dim(2), weight.dim(3),
      p.stride.first, p.stride.second, p.padding.first, p.padding.second,
      p.output_padding.first, p.output_padding.second, p.dilation.first, p.dilation.second);
  if (adj.in_h <= 0 || adj.in_w <= 0)
    value_error("output size would be empty: transposed convolution of " + x.name + " " +
                x.shape_s() + " with kernel " + tuple_str(weight.dim(2), weight.dim(3)) +
                ", stride " + tuple_str(p.stride.first, p.stride.second) + ", padding " +
                tuple_str(p.padding.first, p.padding.second) + " gives output " +
                tuple_str(adj.in_h, adj.in_w));
  return adj;
}

// ------------------------------------------------------------------ the convolution passes
// Every pass has three 4-D arrays: `image` (N, Ci, H, W) and `weight`, which fix the
// geometry, and a third whose shape follows from it: the pass's output side (N, Co, OH, OW),
// `out` or `grad_out`.  For a transposed convolution the geometry returned is the adjoint
// convolution's, on which image is the output and the output side is the input.

// The checks every pass starts with once its arrays are read: one dtype, no empty
// dimension, a known version and gemm version; then stride/padding/... are read.
inline ConvParams check_conv_start(Conv kind, const std::vector<const Array*>& all,
                                   const ConvArgs& args, const Versions& v) {
  check_same_dtype(all);
  for (const Array* a : all) check_positive_dims(*a);
  check_version(v.version, v.num_versions, "conv2d");
  check_version(v.gemm_version, v.gemm_num_versions, "gemm", "gemm_version");
  return parse_conv_params(kind, args);
}

inline ConvGeometry pass_geometry(Conv kind, const Array& image, const Array& weight,
                                  const ConvParams& p) {
  return kind == Conv::plain ? conv_geometry(image, weight, p) : conv_t_geometry(image, weight, p);
}

// The shape (N, Co, OH, OW) of the pass's output side under geometry g.
inline std::vector<int64_t> output_side_shape(Conv kind, const ConvGeometry& g) {
  if (kind == Conv::plain) return {g.batch, g.out_channels, g.out_h, g.out_w};
  return {g.batch, g.in_channels, g.in_h, g.in_w};
}

inline void check_output_side(const Array& a, const std::vector<int64_t>& expect,
                              const Array& image, const Array& weight) {
  check_shape(a, expect, "for " + image.name + " " + image.shape_s() + " and " + weight.name +
                             " " + weight.shape_s());
}

// out (N, Co, OH, OW) = conv(x (N, Ci, H, W), weight) + bias (Co) or None.
struct ConvForward {
  Array x, weight, bias, out;
  bool has_bias = false;
  ConvGeometry g;
};

inline ConvForward check_conv_forward(ReadArray read, Conv kind, const py::object& x,
                                      const py::object& weight, const py::object& bias,
                                      const py::object& out, const ConvArgs& args,
                                      const Versions& v) {
  ConvForward c;
  c.x = read(x, "x", 4, false);
  c.weight = read(weight, "weight", 4, false);
  c.out = read(out, "out", 4, true);
  std::vector<const Array*> all{&c.x, &c.weight, &c.out};
  std::vector<const Array*> inputs{&c.x, &c.weight};
  c.has_bias = !bias.is_none();
  if (c.has_bias) {
    c.bias = read(bias, "bias", 1, false);
    all.push_back(&c.bias);
    inputs.push_back(&c.bias);
  }
  const ConvParams p = check_conv_start(kind, all, args, v);
  c.g = pass_geometry(kind, c.x, c.weight, p);
  const std::vector<int64_t> out_shape = output_side_shape(kind, c.g);
  if (c.has_bias)
    check_shape(c.bias, {out_shape[1]},
                "(one bias per output channel of weight " + c.weight.shape_s() + ")");
  check_output_side(c.out, out_shape, c.x, c.weight);
  check_no_overlap(c.out, inputs);
  return c;
}

// grad_in (N, Ci, H, W), the input gradient, from grad_out (N, Co, OH, OW) and weight.
struct ConvBackwardInput {
  Array grad_out, weight, grad_in;
  ConvGeometry g;
};

inline ConvBackwardInput check_conv_backward_input(ReadArray read, Conv kind,
                                                   const py::object& grad_out,
                                                   const py::object& weight,
                                                   const py::object& grad_in, const ConvArgs& args,
                                                   const Versions& v) {
  ConvBackwardInput c;
  c.grad_out = read(grad_out, "grad_out", 4, false);
  c.weight = read(weight, "weight", 4, false);
  c.grad_in = read(grad_in, "grad_in", 4, true);
  const ConvParams p =
      check_conv_start(kind, {&c.grad_out, &c.weight, &c.grad_in}, args, v);
  c.g = pass_geometry(kind, c.grad_in, c.weight, p);  // grad_in has the image's shape
  check_output_side(c.grad_out, output_side_shape(kind, c.g), c.grad_in, c.weight);
  check_no_overlap(c.grad_in, {&c.grad_out, &c.weight});
  return c;
}

// grad_weight, the weight gradient, from x (N, Ci, H, W) and grad_out (N, Co, OH, OW).
struct ConvBackwardWeight {
  Array x, grad_out, grad_weight;
  ConvGeometry g;
};

inline ConvBackwardWeight check_conv_backward_weight(ReadArray read, Conv kind,
                                                     const py::object& x,
                                                     const py::object& grad_out,
                                                     const py::object& grad_weight,
                                                     const ConvArgs& args, const Versions& v) {
  ConvBackwardWeight c;
  c.x = read(x, "x", 4, false);
  c.grad_out = read(grad_out, "grad_out", 4, false);
  c.grad_weight = read(grad_weight, "grad_weight", 4, true);
  const ConvParams p =
      check_conv_start(kind, {&c.x, &c.grad_out, &c.grad_weight}, args, v);
  c.g = pass_geometry(kind, c.x, c.grad_weight, p);  // grad_weight has the weight's shape
  check_output_side(c.grad_out, output_side_shape(kind, c.g), c.x, c.grad_weight);
  check_no_overlap(c.grad_weight, {&c.x, &c.grad_out});
  return c;
}

// grad_bias (C) = grad_out (N, C, H, W) summed over N, H, W (both kinds of convolution).
struct ConvBackwardBias {
  Array grad_out, grad_bias;
};

inline ConvBackwardBias check_conv_backward_bias(ReadArray read, const py::object& grad_out,
                                                 const py::object& grad_bias) {
  ConvBackwardBias c;
  c.grad_out = read(grad_out, "grad_out", 4, false);
  c.grad_bias = read(grad_bias, "grad_bias", 1, true);
  check_same_dtype({&c.grad_out, &c.grad_bias});
  for (const Array* a : {&c.grad_out, &c.grad_bias}) check_positive_dims(*a);
  check_shape(c.grad_bias, {c.grad_out.dim(1)},
              "(one entry per channel of grad_out " + c.grad_out.shape_s() + ")");
  check_no_overlap(c.grad_bias, {&c.grad_out});
  return c;
}

// ------------------------------------------------------------------ symmetry convolution
// symconv2d (cpp/symconv2d.h): the weight is the left half w_half (Co, Ci, KH, HW) of a
// mirror-symmetric kernel of full width kernel_width = KW, HW = ceil(KW/2).  KW is passed
// explicitly (HW = 2 stands for KW = 3 and 4) and must agree with the weight's last
// dimension.  Only the CPU module binds it (on the GPU, gasca_core mirrors w_half into a
// full kernel and calls conv2d), but the checks live here with the others.

// kernel_width: a Python int (not a bool), 1 .. kMaxParam.
inline int64_t parse_kernel_width(const py::handle& obj) {
  if (!is_int(obj))
    throw py::type_error("kernel_width must be an int (the full kernel width KW), got " +
                         py::repr(obj).cast<std::string>());
  py::int_ i = py::reinterpret_steal<py::int_>(PyNumber_Index(obj.ptr()));
  if (!i) throw py::error_already_set();
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(i.ptr(), &overflow);
  if (overflow != 0 || v < 1 || v > kMaxParam)
    value_error("kernel_width = " + py::repr(obj).cast<std::string>() +
                " must be a full kernel width in 1.." + std::to_string(kMaxParam));
  return static_cast<int64_t>(v);
}

// The shared start of the three passes: one dtype, no empty dimension, known versions, the
// parameters, and a half-width weight (named `weight_name`) that fits kernel_width.
inline ConvParams check_symconv_start(const std::vector<const Array*>& all, const Array& weight,
                                      int64_t kernel_width, const ConvArgs& args,
                                      const Versions& v) {
  check_same_dtype(all);
  for (const Array* a : all) check_positive_dims(*a);
  check_version(v.version, v.num_versions, "symconv2d");
  check_version(v.gemm_version, v.gemm_num_versions, "gemm", "gemm_version");
  const int64_t hw = (kernel_width + 1) / 2;
  if (weight.dim(3) != hw)
    value_error(weight.name + " has shape " + weight.shape_s() + " but a symmetric kernel of " +
                "kernel_width " + std::to_string(kernel_width) + " stores ceil(" +
                std::to_string(kernel_width) + "/2) = " + std::to_string(hw) +
                " columns (its last dimension)");
  return parse_conv_params(Conv::plain, args);
}

// The geometry of the full (mirrored) convolution of `in` (N, Ci, H, W) with the half
// weight (Co, Ci, KH, HW) of full width kernel_width; rejects an empty output.
inline ConvGeometry symconv_geometry(const Array& in, const Array& weight, int64_t kernel_width,
                                     const ConvParams& p) {
  if (weight.dim(1) != in.dim(1))
    value_error("channel mismatch: " + in.name + " has shape " + in.shape_s() + " (" +
                std::to_string(in.dim(1)) + " input channels) but " + weight.name +
                " has shape " + weight.shape_s() + " (expects " + std::to_string(weight.dim(1)) +
                " input channels)");
  ConvGeometry g = make_geometry(in.dim(0), in.dim(1), in.dim(2), in.dim(3), weight.dim(0),
                                 weight.dim(2), kernel_width, p);
  if (g.out_h <= 0 || g.out_w <= 0)
    value_error("output size would be empty: input " + in.name + " " + in.shape_s() +
                " with kernel " + tuple_str(g.kernel_h, g.kernel_w) + ", stride " +
                tuple_str(g.stride_h, g.stride_w) + ", padding " + tuple_str(g.pad_h, g.pad_w) +
                ", dilation " + tuple_str(g.dilation_h, g.dilation_w) +
                " gives output (H, W) <= 0; the padded input is smaller than the dilated kernel");
  return g;
}

inline ConvForward check_symconv_forward(ReadArray read, const py::object& x,
                                         const py::object& weight, const py::object& bias,
                                         const py::object& out, const py::object& kernel_width,
                                         const ConvArgs& args, const Versions& v) {
  ConvForward c;
  c.x = read(x, "x", 4, false);
  c.weight = read(weight, "weight", 4, false);
  c.out = read(out, "out", 4, true);
  std::vector<const Array*> all{&c.x, &c.weight, &c.out};
  std::vector<const Array*> inputs{&c.x, &c.weight};
  c.has_bias = !bias.is_none();
  if (c.has_bias) {
    c.bias = read(bias, "bias", 1, false);
    all.push_back(&c.bias);
    inputs.push_back(&c.bias);
  }
  const int64_t kw = parse_kernel_width(kernel_width);
  const ConvParams p = check_symconv_start(all, c.weight, kw, args, v);
  c.g = symconv_geometry(c.x, c.weight, kw, p);
  const std::vector<int64_t> out_shape{c.g.batch, c.g.out_channels, c.g.out_h, c.g.out_w};
  if (c.has_bias)
    check_shape(c.bias, {out_shape[1]},
                "(one bias per output channel of weight " + c.weight.shape_s() + ")");
  check_output_side(c.out, out_shape, c.x, c.weight);
  check_no_overlap(c.out, inputs);
  return c;
}

inline ConvBackwardInput check_symconv_backward_input(ReadArray read, const py::object& grad_out,
                                                      const py::object& weight,
                                                      const py::object& grad_in,
                                                      const py::object& kernel_width,
                                                      const ConvArgs& args, const Versions& v) {
  ConvBackwardInput c;
  c.grad_out = read(grad_out, "grad_out", 4, false);
  c.weight = read(weight, "weight", 4, false);
  c.grad_in = read(grad_in, "grad_in", 4, true);
  const int64_t kw = parse_kernel_width(kernel_width);
  const ConvParams p =
      check_symconv_start({&c.grad_out, &c.weight, &c.grad_in}, c.weight, kw, args, v);
  c.g = symconv_geometry(c.grad_in, c.weight, kw, p);  // grad_in has the image's shape
  check_output_side(c.grad_out, {c.g.batch, c.g.out_channels, c.g.out_h, c.g.out_w}, c.grad_in,
                    c.weight);
  check_no_overlap(c.grad_in, {&c.grad_out, &c.weight});
  return c;
}

inline ConvBackwardWeight check_symconv_backward_weight(ReadArray read, const py::object& x,
                                                        const py::object& grad_out,
                                                        const py::object& grad_weight,
                                                        const py::object& kernel_width,
                                                        const ConvArgs& args, const Versions& v) {
  ConvBackwardWeight c;
  c.x = read(x, "x", 4, false);
  c.grad_out = read(grad_out, "grad_out", 4, false);
  c.grad_weight = read(grad_weight, "grad_weight", 4, true);
  const int64_t kw = parse_kernel_width(kernel_width);
  const ConvParams p =
      check_symconv_start({&c.x, &c.grad_out, &c.grad_weight}, c.grad_weight, kw, args, v);
  c.g = symconv_geometry(c.x, c.grad_weight, kw, p);  // grad_weight has w_half's shape
  check_output_side(c.grad_out, {c.g.batch, c.g.out_channels, c.g.out_h, c.g.out_w}, c.x,
                    c.grad_weight);
  check_no_overlap(c.grad_weight, {&c.x, &c.grad_out});
  return c;
}

// ------------------------------------------------------------------ gemm
// c (m, n) = alpha op(a) (m, k) op(b) (k, n) + beta c, op = transpose or not.
struct Gemm {
  Array a, b, c;
  int64_t m = 0, n = 0, k = 0, lda = 1, ldb = 1, ldc = 1;
};

inline Gemm check_gemm(ReadArray read, const py::object& a, const py::object& b,
                       const py::object& c, bool trans_a, bool trans_b, int version,
                       int num_versions) {
  Gemm s;
  s.a = read(a, "a", 2, false);
  s.b = read(b, "b", 2, false);
  s.c = read(c, "c", 2, true);
  check_same_dtype({&s.a, &s.b, &s.c});
  check_version(version, num_versions, "gemm");
  s.m = trans_a ? s.a.dim(1) : s.a.dim(0);
  s.k = trans_a ? s.a.dim(0) : s.a.dim(1);
  const int64_t kb = trans_b ? s.b.dim(1) : s.b.dim(0);
  s.n = trans_b ? s.b.dim(0) : s.b.dim(1);
  if (s.k != kb)
    value_error("inner dimensions differ: op(a) is " + tuple_str(s.m, s.k) + " (a " +
                s.a.shape_s() + (trans_a ? ", transposed" : "") + ") but op(b) is " +
                tuple_str(kb, s.n) + " (b " + s.b.shape_s() + (trans_b ? ", transposed" : "") +
                ")");
  check_shape(s.c, {s.m, s.n},
              "for op(a) " + tuple_str(s.m, s.k) + " times op(b) " + tuple_str(kb, s.n));
  check_no_overlap(s.c, {&s.a, &s.b});
  // Leading dimensions of row-major storage; at least 1 even for empty matrices (BLAS rule).
  s.lda = std::max<int64_t>(s.a.dim(1), 1);
  s.ldb = std::max<int64_t>(s.b.dim(1), 1);
  s.ldc = std::max<int64_t>(s.c.dim(1), 1);
  return s;
}

// ------------------------------------------------------------------ optimizers
// The optimizer arrays: any rank, one shape and dtype for all, updated in place.
inline void check_optim_arrays(const std::vector<const Array*>& all, int version,
                               int num_versions) {
  check_same_dtype(all);
  check_same_shape(all);
  check_distinct(all);
  check_version(version, num_versions, "optim");
}

struct SgdStep {
  Array param, grad, momentum_buf;
  bool has_buf = false;
};

inline SgdStep check_sgd_step(ReadArray read, const py::object& param, const py::object& grad,
                              const py::object& momentum_buf, double lr, double momentum,
                              double dampening, double weight_decay, bool nesterov, int version,
                              int num_versions) {
  SgdStep s;
  s.param = read(param, "param", -1, true);
  s.grad = read(grad, "grad", -1, false);
  std::vector<const Array*> all{&s.param, &s.grad};
  s.has_buf = !momentum_buf.is_none();
  if (s.has_buf) {
    s.momentum_buf = read(momentum_buf, "momentum_buf", -1, true);
    all.push_back(&s.momentum_buf);
  }
  check_optim_arrays(all, version, num_versions);
  const DType d = s.param.dtype;
  check_finite_nonneg(lr, "lr", d);
  check_finite_nonneg(momentum, "momentum", d);
  check_finite(dampening, "dampening", d);
  check_finite_nonneg(weight_decay, "weight_decay", d);
  if (momentum != 0.0 && !s.has_buf)
    value_error("momentum = " + std::to_string(momentum) + " needs a momentum_buf array (shape " +
                s.param.shape_s() + "), got None");
  if (nesterov && (momentum <= 0.0 || dampening != 0.0))
    value_error("nesterov momentum requires momentum > 0 and dampening = 0");
  return s;
}

struct AdamStep {
  Array param, grad, exp_avg, exp_avg_sq;
};

inline AdamStep check_adam_step(ReadArray read, const py::object& param, const py::object& grad,
                                const py::object& exp_avg, const py::object& exp_avg_sq,
                                int64_t step, double lr, double beta1, double beta2, double eps,
                                double weight_decay, int version, int num_versions) {
  AdamStep s;
  s.param = read(param, "param", -1, true);
  s.grad = read(grad, "grad", -1, false);
  s.exp_avg = read(exp_avg, "exp_avg", -1, true);
  s.exp_avg_sq = read(exp_avg_sq, "exp_avg_sq", -1, true);
  check_optim_arrays({&s.param, &s.grad, &s.exp_avg, &s.exp_avg_sq}, version, num_versions);
  if (step < 1)
    value_error("step = " + std::to_string(step) + " must be >= 1 (1-based, after this update)");
  const DType d = s.param.dtype;
  check_finite_nonneg(lr, "lr", d);
  check_finite_nonneg(eps, "eps", d);
  check_finite_nonneg(weight_decay, "weight_decay", d);
  // The bias corrections divide by 1 - beta**step: beta = 1 would divide by zero.
  if (!(beta1 >= 0.0 && beta1 < 1.0))
    value_error("beta1 = " + std::to_string(beta1) + " must be in [0, 1)");
  if (!(beta2 >= 0.0 && beta2 < 1.0))
    value_error("beta2 = " + std::to_string(beta2) + " must be in [0, 1)");
  return s;
}

// ------------------------------------------------------------------ element-wise
// LeakyReLU's two passes (cpp/eltwise.h): arrays of one dtype and one shape (any rank), the
// output distinct from the inputs, and 0 < negative_slope <= 1 (the form the kernels compute;
// the autograd keeps other slopes in NumPy).
struct LeakyRelu {
  Array in, grad, out;  // grad: backward only
};

inline void check_leaky_slope(double slope, DType d) {
  check_finite(slope, "negative_slope", d);
  if (!(slope > 0.0 && slope <= 1.0))
    value_error("negative_slope = " + num_str(slope) +
                " must be in (0, 1]: the kernels compute max(x * slope, x)");
}

inline LeakyRelu check_leaky_relu_forward(ReadArray read, const py::object& x,
                                          const py::object& out, double slope, int version,
                                          int num_versions) {
  LeakyRelu c;
  c.in = read(x, "x", -1, false);
  c.out = read(out, "out", -1, true);
  check_same_dtype({&c.in, &c.out});
  check_same_shape({&c.in, &c.out});
  check_distinct({&c.in, &c.out});
  check_version(version, num_versions, "eltwise");
  check_leaky_slope(slope, c.in.dtype);
  return c;
}

inline LeakyRelu check_leaky_relu_backward(ReadArray read, const py::object& y,
                                           const py::object& grad_out, const py::object& grad_in,
                                           double slope, int version, int num_versions) {
  LeakyRelu c;
  c.in = read(y, "y", -1, false);
  c.grad = read(grad_out, "grad_out", -1, false);
  c.out = read(grad_in, "grad_in", -1, true);
  check_same_dtype({&c.in, &c.grad, &c.out});
  check_same_shape({&c.in, &c.grad, &c.out});
  check_distinct({&c.in, &c.out});
  check_distinct({&c.grad, &c.out});
  check_version(version, num_versions, "eltwise");
  check_leaky_slope(slope, c.in.dtype);
  return c;
}

}  // namespace gasca::bind
