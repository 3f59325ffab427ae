// The Python module fastcnn._cpp: nanobind wrappers that turn NumPy arrays into pointers.
// Every kernel exists once per dtype (name_float32, name_float64); fastcnn/backends/cpp.py
// picks by dtype and passes the thread count. Every array is .noconvert(): a wrong dtype or
// layout raises TypeError instead of being copied (a copied output would silently lose the
// result); inputs are const, so read-only arrays are taken. The GIL is released while a
// kernel runs.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/array.h>
#include <nanobind/stl/optional.h>

#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

#include "kernels.hpp"

namespace nb = nanobind;
using fastcnn::index_t;

namespace {

template <typename T> using Flat = nb::ndarray<T, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
// (rows, columns), C-contiguous: the kernels read the sizes from it.
template <typename T> using Rows = nb::ndarray<T, nb::ndim<2>, nb::c_contig, nb::device::cpu>;

// A cheap safety net under the Python layer's validation; raised as ValueError.
void check_sizes(std::size_t expected, std::initializer_list<std::size_t> sizes) {
    for (std::size_t size : sizes)
        if (size != expected)
            throw std::invalid_argument("array lengths differ: " + std::to_string(size) +
                                        " vs " + std::to_string(expected));
}

int checked_threads(int threads) {
    if (threads < 1)
        throw std::invalid_argument("threads must be >= 1, got " + std::to_string(threads));
    return threads;
}

void check_shape(const char *name, std::size_t rows, std::size_t columns, std::size_t want_rows,
                 std::size_t want_columns) {
    if (rows != want_rows || columns != want_columns)
        throw std::invalid_argument(std::string(name) + " has shape (" + std::to_string(rows) +
                                    ", " + std::to_string(columns) + "), expected (" +
                                    std::to_string(want_rows) + ", " +
                                    std::to_string(want_columns) + ")");
}

template <typename T> void check_same_shape(const char *name, const Rows<T> &array,
                                            std::size_t rows, std::size_t columns) {
    check_shape(name, array.shape(0), array.shape(1), rows, columns);
}

// An optional array (None: nullptr), checked against its length.
template <typename T> T *optional_data(const Flat<T> &array, std::size_t expected) {
    if (!array.is_valid())
        return nullptr;
    check_sizes(expected, {array.size()});
    return array.data();
}

constexpr auto release_gil = nb::call_guard<nb::gil_scoped_release>();

// ---------------------------------------------------------------------------- activation.cpp

// forward(x, y, threads) and backward(grad_y, saved, grad_x, threads): saved is x or y.
template <typename T> using Unary = void (*)(const T *, T *, index_t, int);
template <typename T> using UnaryBackward = void (*)(const T *, const T *, T *, index_t, int);

template <typename T>
void bind_unary(nb::module_ &m, const std::string &name, const std::string &dtype,
                Unary<T> forward, UnaryBackward<T> backward, const char *saved) {
    m.def((name + "_" + dtype).c_str(),
          [forward](Flat<const T> x, Flat<T> y, int threads) {
              check_sizes(y.size(), {x.size()});
              forward(x.data(), y.data(), index_t(y.size()), checked_threads(threads));
          },
          nb::arg("x").noconvert(), nb::arg("y").noconvert(), nb::arg("threads"), release_gil);
    m.def((name + "_backward_" + dtype).c_str(),
          [backward](Flat<const T> grad_y, Flat<const T> kept, Flat<T> grad_x, int threads) {
              check_sizes(grad_x.size(), {grad_y.size(), kept.size()});
              backward(grad_y.data(), kept.data(), grad_x.data(), index_t(grad_x.size()),
                       checked_threads(threads));
          },
          nb::arg("grad_y").noconvert(), nb::arg(saved).noconvert(),
          nb::arg("grad_x").noconvert(), nb::arg("threads"), release_gil);
}

template <typename T> void bind_activation(nb::module_ &m, const std::string &dtype) {
    bind_unary<T>(m, "relu", dtype, fastcnn::relu<T>, fastcnn::relu_backward<T>, "x");
    bind_unary<T>(m, "sigmoid", dtype, fastcnn::sigmoid<T>, fastcnn::sigmoid_backward<T>, "y");
    bind_unary<T>(m, "tanh", dtype, fastcnn::tanh<T>, fastcnn::tanh_backward<T>, "y");
    m.def(("leaky_relu_" + dtype).c_str(),
          [](Flat<const T> x, Flat<T> y, double slope, int threads) {
              check_sizes(y.size(), {x.size()});
              fastcnn::leaky_relu<T>(x.data(), y.data(), T(slope), index_t(y.size()),
                                     checked_threads(threads));
          },
          nb::arg("x").noconvert(), nb::arg("y").noconvert(), nb::arg("negative_slope"),
          nb::arg("threads"), release_gil);
    m.def(("leaky_relu_backward_" + dtype).c_str(),
          [](Flat<const T> grad_y, Flat<const T> x, Flat<T> grad_x, double slope, int threads) {
              check_sizes(grad_x.size(), {grad_y.size(), x.size()});
              fastcnn::leaky_relu_backward<T>(grad_y.data(), x.data(), grad_x.data(), T(slope),
                                              index_t(grad_x.size()), checked_threads(threads));
          },
          nb::arg("grad_y").noconvert(), nb::arg("x").noconvert(),
          nb::arg("grad_x").noconvert(), nb::arg("negative_slope"), nb::arg("threads"),
          release_gil);
    m.def(("dropout_" + dtype).c_str(),
          [](Flat<const T> x, Flat<const bool> mask, Flat<T> y, double scale, int threads) {
              check_sizes(y.size(), {x.size(), mask.size()});
              fastcnn::dropout<T>(x.data(), mask.data(), y.data(), T(scale), index_t(y.size()),
                                  checked_threads(threads));
          },
          nb::arg("x").noconvert(), nb::arg("mask").noconvert(), nb::arg("y").noconvert(),
          nb::arg("scale"), nb::arg("threads"), release_gil);
}

// ---------------------------------------------------------------------------- conv2d.cpp

// (N, C, H, W, K, R, S, P, Q, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
// groups): fastcnn/backends/cpp.py passes a ConvGeometry in this order.
using Geometry = std::array<index_t, 16>;

fastcnn::ConvShape conv_shape(const Geometry &a) {
    return {a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7],
            a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]};
}

template <typename T> using Forward = void (*)(const T *, const T *, const T *, T *,
                                               const fastcnn::ConvShape &, int);
template <typename T>
using Gradient = void (*)(const T *, const T *, T *, const fastcnn::ConvShape &, int);

// conv2d_<algorithm>_<dtype>, conv2d_<algorithm>_input_gradient_<dtype> and, unless
// weight_gradient is null, conv2d_<algorithm>_weight_gradient_<dtype>.
template <typename T>
void bind_conv2d_algorithm(nb::module_ &m, const std::string &algorithm, const std::string &dtype,
                           Forward<T> forward, Gradient<T> input_gradient,
                           Gradient<T> weight_gradient) {
    const std::string name = "conv2d_" + algorithm + "_";
    m.def((name + dtype).c_str(),
          [forward](Flat<const T> x, Flat<const T> w, std::optional<Flat<const T>> bias,
                    Flat<T> y, const Geometry &geometry, int threads) {
              const auto g = conv_shape(geometry);
              check_sizes(std::size_t(g.N * g.C * g.H * g.W), {x.size()});
              check_sizes(std::size_t(g.K * (g.C / g.G) * g.R * g.S), {w.size()});
              check_sizes(std::size_t(g.N * g.K * g.P * g.Q), {y.size()});
              if (bias)
                  check_sizes(std::size_t(g.K), {bias->size()});
              forward(x.data(), w.data(), bias ? bias->data() : nullptr, y.data(), g,
                      checked_threads(threads));
          },
          nb::arg("x").noconvert(), nb::arg("weight").noconvert(),
          nb::arg("bias").noconvert().none(), nb::arg("y").noconvert(), nb::arg("geometry"),
          nb::arg("threads"), release_gil);
    m.def((name + "input_gradient_" + dtype).c_str(),
          [input_gradient](Flat<const T> grad_y, Flat<const T> w, Flat<T> grad_x,
                           const Geometry &geometry, int threads) {
              const auto g = conv_shape(geometry);
              check_sizes(std::size_t(g.N * g.K * g.P * g.Q), {grad_y.size()});
              check_sizes(std::size_t(g.K * (g.C / g.G) * g.R * g.S), {w.size()});
              check_sizes(std::size_t(g.N * g.C * g.H * g.W), {grad_x.size()});
              input_gradient(grad_y.data(), w.data(), grad_x.data(), g, checked_threads(threads));
          },
          nb::arg("grad_y").noconvert(), nb::arg("weight").noconvert(),
          nb::arg("grad_x").noconvert(), nb::arg("geometry"), nb::arg("threads"), release_gil);
    if (!weight_gradient)  // an algorithm without a weight gradient of its own
        return;
    m.def((name + "weight_gradient_" + dtype).c_str(),
          [weight_gradient](Flat<const T> grad_y, Flat<const T> x, Flat<T> grad_w,
                            const Geometry &geometry, int threads) {
              const auto g = conv_shape(geometry);
              check_sizes(std::size_t(g.N * g.K * g.P * g.Q), {grad_y.size()});
              check_sizes(std::size_t(g.N * g.C * g.H * g.W), {x.size()});
              check_sizes(std::size_t(g.K * (g.C / g.G) * g.R * g.S), {grad_w.size()});
              weight_gradient(grad_y.data(), x.data(), grad_w.data(), g, checked_threads(threads));
          },
          nb::arg("grad_y").noconvert(), nb::arg("x").noconvert(),
          nb::arg("grad_weight").noconvert(), nb::arg("geometry"), nb::arg("threads"),
          release_gil);
}

template <typename T> void bind_conv2d(nb::module_ &m, const std::string &dtype) {
    bind_conv2d_algorithm<T>(m, "direct", dtype, fastcnn::conv2d_direct<T>,
                             fastcnn::conv2d_direct_input_gradient<T>,
                             fastcnn::conv2d_direct_weight_gradient<T>);
    bind_conv2d_algorithm<T>(m, "im2col", dtype, fastcnn::conv2d_im2col<T>,
                             fastcnn::conv2d_im2col_input_gradient<T>,
                             fastcnn::conv2d_im2col_weight_gradient<T>);
    bind_conv2d_algorithm<T>(m, "small_channels", dtype, fastcnn::conv2d_small_channels<T>,
                             fastcnn::conv2d_small_channels_input_gradient<T>,
                             fastcnn::conv2d_small_channels_weight_gradient<T>);
    bind_conv2d_algorithm<T>(m, "winograd", dtype, fastcnn::conv2d_winograd<T>,
                             fastcnn::conv2d_winograd_input_gradient<T>, nullptr);
    m.def(("conv2d_bias_gradient_" + dtype).c_str(),
          [](Flat<const T> grad_y, Flat<T> grad_bias, const Geometry &geometry, int threads) {
              const auto g = conv_shape(geometry);
              check_sizes(std::size_t(g.N * g.K * g.P * g.Q), {grad_y.size()});
              check_sizes(std::size_t(g.K), {grad_bias.size()});
              fastcnn::conv2d_bias_gradient<T>(grad_y.data(), grad_bias.data(), g,
                                               checked_threads(threads));
          },
          nb::arg("grad_y").noconvert(), nb::arg("grad_bias").noconvert(), nb::arg("geometry"),
          nb::arg("threads"), release_gil);
}

// ---------------------------------------------------------------------------- pool2d.cpp

// The geometry as 13 ints: (planes, H, W, P, Q, R, S, stride_h, stride_w, pad_h, pad_w,
// dilation_h, dilation_w); planes = N * C. Arrays are the planes flattened.
using PoolInts = std::array<index_t, 13>;

fastcnn::PoolGeometry pool_geometry(const PoolInts &v) {
    return {v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12]};
}

std::size_t input_size(const fastcnn::PoolGeometry &g) { return std::size_t(g.planes * g.H * g.W); }
std::size_t output_size(const fastcnn::PoolGeometry &g) { return std::size_t(g.planes * g.P * g.Q); }

template <typename T> using PoolForward = void (*)(const T *, T *, const fastcnn::PoolGeometry &, int);
template <typename T>
using PoolForwardIndices = void (*)(const T *, T *, std::int64_t *, const fastcnn::PoolGeometry &,
                                    int);
template <typename T>
using PoolBackwardSearch = void (*)(const T *, const T *, T *, const fastcnn::PoolGeometry &, int);

template <typename T>
void bind_max_forward(nb::module_ &m, const std::string &name, const std::string &dtype,
                      PoolForward<T> values, PoolForwardIndices<T> with_indices) {
    m.def((name + "_" + dtype).c_str(),
          [values](Flat<const T> x, Flat<T> y, const PoolInts &geometry, int threads) {
              const auto g = pool_geometry(geometry);
              check_sizes(input_size(g), {x.size()});
              check_sizes(output_size(g), {y.size()});
              values(x.data(), y.data(), g, checked_threads(threads));
          },
          nb::arg("x").noconvert(), nb::arg("y").noconvert(), nb::arg("geometry"),
          nb::arg("threads"), release_gil);
    m.def((name + "_indices_" + dtype).c_str(),
          [with_indices](Flat<const T> x, Flat<T> y, Flat<std::int64_t> indices,
                         const PoolInts &geometry, int threads) {
              const auto g = pool_geometry(geometry);
              check_sizes(input_size(g), {x.size()});
              check_sizes(output_size(g), {y.size(), indices.size()});
              with_indices(x.data(), y.data(), indices.data(), g, checked_threads(threads));
          },
          nb::arg("x").noconvert(), nb::arg("y").noconvert(), nb::arg("indices").noconvert(),
          nb::arg("geometry"), nb::arg("threads"), release_gil);
}

template <typename T>
void bind_max_backward(nb::module_ &m, const std::string &name, PoolBackwardSearch<T> search) {
    m.def(name.c_str(),
          [search](Flat<const T> grad_y, Flat<const T> x, Flat<T> grad_x, const PoolInts &geometry,
                   int threads) {
              const auto g = pool_geometry(geometry);
              check_sizes(input_size(g), {x.size(), grad_x.size()});
              check_sizes(output_size(g), {grad_y.size()});
              search(grad_y.data(), x.data(), grad_x.data(), g, checked_threads(threads));
          },
          nb::arg("grad_y").noconvert(), nb::arg("x").noconvert(), nb::arg("grad_x").noconvert(),
          nb::arg("geometry"), nb::arg("threads"), release_gil);
}

template <typename T> void bind_pool2d(nb::module_ &m, const std::string &dtype) {
    bind_max_forward<T>(m, "max_pool2d", dtype, fastcnn::max_pool2d<T>,
                        fastcnn::max_pool2d_indices<T>);
    bind_max_forward<T>(m, "max_pool2d_2x2", dtype, fastcnn::max_pool2d_2x2<T>,
                        fastcnn::max_pool2d_2x2_indices<T>);
    bind_max_backward<T>(m, "max_pool2d_backward_" + dtype, fastcnn::max_pool2d_backward<T>);
    bind_max_backward<T>(m, "max_pool2d_backward_2x2_" + dtype,
                         fastcnn::max_pool2d_backward_2x2<T>);
    m.def(("max_pool2d_backward_indices_" + dtype).c_str(),
          [](Flat<const T> grad_y, Flat<const std::int64_t> indices, Flat<T> grad_x,
             const PoolInts &geometry, int threads) {
              const auto g = pool_geometry(geometry);
              check_sizes(input_size(g), {grad_x.size()});
              check_sizes(output_size(g), {grad_y.size(), indices.size()});
              fastcnn::max_pool2d_backward_indices<T>(grad_y.data(), indices.data(),
                                                      grad_x.data(), g, checked_threads(threads));
          },
          nb::arg("grad_y").noconvert(), nb::arg("indices").noconvert(),
          nb::arg("grad_x").noconvert(), nb::arg("geometry"), nb::arg("threads"), release_gil);
    m.def(("avg_pool2d_" + dtype).c_str(),
          [](Flat<const T> x, Flat<T> y, const PoolInts &geometry, bool count_include_pad,
             index_t divisor_override, int threads) {
              const auto g = pool_geometry(geometry);
              check_sizes(input_size(g), {x.size()});
              check_sizes(output_size(g), {y.size()});
              fastcnn::avg_pool2d<T>(x.data(), y.data(), g, count_include_pad, divisor_override,
                                     checked_threads(threads));
          },
          nb::arg("x").noconvert(), nb::arg("y").noconvert(), nb::arg("geometry"),
          nb::arg("count_include_pad"), nb::arg("divisor_override"), nb::arg("threads"),
          release_gil);
    m.def(("avg_pool2d_backward_" + dtype).c_str(),
          [](Flat<const T> grad_y, Flat<T> grad_x, const PoolInts &geometry,
             bool count_include_pad, index_t divisor_override, int threads) {
              const auto g = pool_geometry(geometry);
              check_sizes(input_size(g), {grad_x.size()});
              check_sizes(output_size(g), {grad_y.size()});
              fastcnn::avg_pool2d_backward<T>(grad_y.data(), grad_x.data(), g, count_include_pad,
                                              divisor_override, checked_threads(threads));
          },
          nb::arg("grad_y").noconvert(), nb::arg("grad_x").noconvert(), nb::arg("geometry"),
          nb::arg("count_include_pad"), nb::arg("divisor_override"), nb::arg("threads"),
          release_gil);
    m.def(("avg_pool2d_2x2_" + dtype).c_str(),
          [](Flat<const T> x, Flat<T> y, const PoolInts &geometry, index_t divisor_override,
             int threads) {
              const auto g = pool_geometry(geometry);
              check_sizes(input_size(g), {x.size()});
              check_sizes(output_size(g), {y.size()});
              fastcnn::avg_pool2d_2x2<T>(x.data(), y.data(), g, divisor_override,
                                         checked_threads(threads));
          },
          nb::arg("x").noconvert(), nb::arg("y").noconvert(), nb::arg("geometry"),
          nb::arg("divisor_override"), nb::arg("threads"), release_gil);
    m.def(("avg_pool2d_backward_2x2_" + dtype).c_str(),
          [](Flat<const T> grad_y, Flat<T> grad_x, const PoolInts &geometry,
             index_t divisor_override, int threads) {
              const auto g = pool_geometry(geometry);
              check_sizes(input_size(g), {grad_x.size()});
              check_sizes(output_size(g), {grad_y.size()});
              fastcnn::avg_pool2d_backward_2x2<T>(grad_y.data(), grad_x.data(), g,
                                                  divisor_override, checked_threads(threads));
          },
          nb::arg("grad_y").noconvert(), nb::arg("grad_x").noconvert(), nb::arg("geometry"),
          nb::arg("divisor_override"), nb::arg("threads"), release_gil);
}

// ---------------------------------------------------------------------------- softmax.cpp

template <typename T> void bind_softmax(nb::module_ &m, const std::string &dtype) {
    using Kernel = void (*)(const T *, T *, index_t, index_t, int);
    for (auto [name, kernel] : {std::pair<const char *, Kernel>{"softmax", fastcnn::softmax<T>},
                                {"log_softmax", fastcnn::log_softmax<T>}})
        m.def((std::string(name) + "_" + dtype).c_str(),
              [kernel](Rows<const T> x, Rows<T> y, int threads) {
                  check_same_shape("y", y, x.shape(0), x.shape(1));
                  kernel(x.data(), y.data(), index_t(x.shape(0)), index_t(x.shape(1)),
                         checked_threads(threads));
              },
              nb::arg("x").noconvert(), nb::arg("y").noconvert(), nb::arg("threads"),
              release_gil);
    m.def(("cross_entropy_" + dtype).c_str(),
          [](Rows<const T> logits, Flat<const std::int64_t> labels, Flat<const T> weight,
             double smoothing, Flat<T> losses, int threads) {
              check_sizes(logits.shape(0), {labels.size(), losses.size()});
              check_sizes(logits.shape(1), {weight.size()});
              fastcnn::cross_entropy<T>(logits.data(), labels.data(), weight.data(), smoothing,
                                        losses.data(), index_t(logits.shape(0)),
                                        index_t(logits.shape(1)), checked_threads(threads));
          },
          nb::arg("logits").noconvert(), nb::arg("labels").noconvert(),
          nb::arg("weight").noconvert(), nb::arg("smoothing"), nb::arg("losses").noconvert(),
          nb::arg("threads"), release_gil);
    m.def(("cross_entropy_backward_" + dtype).c_str(),
          [](Rows<const T> logits, Flat<const std::int64_t> labels, Flat<const T> weight,
             double smoothing, Flat<const T> row_scale, Rows<T> grad_logits, int threads) {
              check_sizes(logits.shape(0), {labels.size(), row_scale.size()});
              check_sizes(logits.shape(1), {weight.size()});
              check_same_shape("grad_logits", grad_logits, logits.shape(0), logits.shape(1));
              fastcnn::cross_entropy_backward<T>(
                  logits.data(), labels.data(), weight.data(), smoothing, row_scale.data(),
                  grad_logits.data(), index_t(logits.shape(0)), index_t(logits.shape(1)),
                  checked_threads(threads));
          },
          nb::arg("logits").noconvert(), nb::arg("labels").noconvert(),
          nb::arg("weight").noconvert(), nb::arg("smoothing"), nb::arg("row_scale").noconvert(),
          nb::arg("grad_logits").noconvert(), nb::arg("threads"), release_gil);
    m.def(("soft_cross_entropy_" + dtype).c_str(),
          [](Rows<const T> logits, Rows<const T> targets, Flat<T> losses, int threads) {
              check_same_shape("targets", targets, logits.shape(0), logits.shape(1));
              check_sizes(logits.shape(0), {losses.size()});
              fastcnn::soft_cross_entropy<T>(logits.data(), targets.data(), losses.data(),
                                             index_t(logits.shape(0)), index_t(logits.shape(1)),
                                             checked_threads(threads));
          },
          nb::arg("logits").noconvert(), nb::arg("targets").noconvert(),
          nb::arg("losses").noconvert(), nb::arg("threads"), release_gil);
    m.def(("soft_cross_entropy_backward_" + dtype).c_str(),
          [](Rows<const T> logits, Rows<const T> targets, Flat<const T> row_scale,
             Rows<T> grad_logits, int threads) {
              check_same_shape("targets", targets, logits.shape(0), logits.shape(1));
              check_same_shape("grad_logits", grad_logits, logits.shape(0), logits.shape(1));
              check_sizes(logits.shape(0), {row_scale.size()});
              fastcnn::soft_cross_entropy_backward<T>(
                  logits.data(), targets.data(), row_scale.data(), grad_logits.data(),
                  index_t(logits.shape(0)), index_t(logits.shape(1)), checked_threads(threads));
          },
          nb::arg("logits").noconvert(), nb::arg("targets").noconvert(),
          nb::arg("row_scale").noconvert(), nb::arg("grad_logits").noconvert(),
          nb::arg("threads"), release_gil);
}

// ---------------------------------------------------------------------------- linear.cpp

// bias, grad_x and grad_bias may be None.
template <typename T> void bind_linear(nb::module_ &m, const std::string &dtype) {
    m.def(("linear_" + dtype).c_str(),
          [](Rows<const T> x, Rows<const T> weight, Flat<const T> bias, Rows<T> y, int threads) {
              const std::size_t rows = x.shape(0), in = x.shape(1), out = weight.shape(0);
              check_same_shape("weight", weight, out, in);
              check_same_shape("y", y, rows, out);
              fastcnn::linear<T>(x.data(), weight.data(), optional_data(bias, out), y.data(),
                                 index_t(rows), index_t(in), index_t(out),
                                 checked_threads(threads));
          },
          nb::arg("x").noconvert(), nb::arg("weight").noconvert(),
          nb::arg("bias").noconvert().none(), nb::arg("y").noconvert(), nb::arg("threads"),
          release_gil);
    m.def(("linear_backward_" + dtype).c_str(),
          [](Rows<const T> grad_y, Rows<const T> x, Rows<const T> weight, Rows<T> grad_x,
             Rows<T> grad_weight, Flat<T> grad_bias, int threads) {
              const std::size_t rows = x.shape(0), in = x.shape(1), out = weight.shape(0);
              check_same_shape("grad_y", grad_y, rows, out);
              check_same_shape("weight", weight, out, in);
              check_same_shape("grad_weight", grad_weight, out, in);
              if (grad_x.is_valid())
                  check_same_shape("grad_x", grad_x, rows, in);
              fastcnn::linear_backward<T>(grad_y.data(), x.data(), weight.data(),
                                          grad_x.is_valid() ? grad_x.data() : nullptr,
                                          grad_weight.data(), optional_data(grad_bias, out),
                                          index_t(rows), index_t(in), index_t(out),
                                          checked_threads(threads));
          },
          nb::arg("grad_y").noconvert(), nb::arg("x").noconvert(),
          nb::arg("weight").noconvert(), nb::arg("grad_x").noconvert().none(),
          nb::arg("grad_weight").noconvert(), nb::arg("grad_bias").noconvert().none(),
          nb::arg("threads"), release_gil);
}

// ---------------------------------------------------------------------------- batch_norm.cpp

// x and the like (N, C, L) flattened; statistics and per-channel terms float64 arrays of C.
template <typename T> void bind_batch_norm(nb::module_ &m, const std::string &dtype) {
    using Doubles = Flat<const double>;
    m.def(("batch_norm_statistics_" + dtype).c_str(),
          [](Flat<const T> x, Flat<double> mean, Flat<double> var, index_t N, index_t C,
             index_t L, int threads) {
              check_sizes(std::size_t(N * C * L), {x.size()});
              check_sizes(std::size_t(C), {mean.size(), var.size()});
              fastcnn::batch_norm_statistics<T>(x.data(), mean.data(), var.data(), N, C, L,
                                                checked_threads(threads));
          },
          nb::arg("x").noconvert(), nb::arg("mean").noconvert(), nb::arg("var").noconvert(),
          nb::arg("N"), nb::arg("C"), nb::arg("L"), nb::arg("threads"), release_gil);
    m.def(("batch_norm_normalize_" + dtype).c_str(),
          [](Flat<const T> x, Doubles mean, Doubles scale, Doubles shift, Flat<T> y, index_t N,
             index_t C, index_t L, int threads) {
              check_sizes(std::size_t(N * C * L), {x.size(), y.size()});
              check_sizes(std::size_t(C), {mean.size(), scale.size(), shift.size()});
              fastcnn::batch_norm_normalize<T>(x.data(), mean.data(), scale.data(), shift.data(),
                                               y.data(), N, C, L, checked_threads(threads));
          },
          nb::arg("x").noconvert(), nb::arg("mean").noconvert(), nb::arg("scale").noconvert(),
          nb::arg("shift").noconvert(), nb::arg("y").noconvert(), nb::arg("N"), nb::arg("C"),
          nb::arg("L"), nb::arg("threads"), release_gil);
    m.def(("batch_norm_gradient_sums_" + dtype).c_str(),
          [](Flat<const T> grad_y, Flat<const T> x, Doubles shift, Flat<double> sums, index_t N,
             index_t C, index_t L, int threads) {
              check_sizes(std::size_t(N * C * L), {grad_y.size(), x.size()});
              check_sizes(std::size_t(C), {shift.size()});
              check_sizes(std::size_t(4 * C), {sums.size()});
              fastcnn::batch_norm_gradient_sums<T>(grad_y.data(), x.data(), shift.data(),
                                                   sums.data(), N, C, L,
                                                   checked_threads(threads));
          },
          nb::arg("grad_y").noconvert(), nb::arg("x").noconvert(), nb::arg("shift").noconvert(),
          nb::arg("sums").noconvert(), nb::arg("N"), nb::arg("C"), nb::arg("L"),
          nb::arg("threads"), release_gil);
    m.def(("batch_norm_input_gradient_" + dtype).c_str(),
          [](Flat<const T> grad_y, Flat<const T> x, Doubles mean, Doubles scale, Doubles constant,
             Doubles slope, Flat<T> grad_x, index_t N, index_t C, index_t L, int threads) {
              check_sizes(std::size_t(N * C * L), {grad_y.size(), x.size(), grad_x.size()});
              check_sizes(std::size_t(C),
                          {mean.size(), scale.size(), constant.size(), slope.size()});
              fastcnn::batch_norm_input_gradient<T>(grad_y.data(), x.data(), mean.data(),
                                                    scale.data(), constant.data(), slope.data(),
                                                    grad_x.data(), N, C, L,
                                                    checked_threads(threads));
          },
          nb::arg("grad_y").noconvert(), nb::arg("x").noconvert(), nb::arg("mean").noconvert(),
          nb::arg("scale").noconvert(), nb::arg("constant").noconvert(),
          nb::arg("slope").noconvert(), nb::arg("grad_x").noconvert(), nb::arg("N"),
          nb::arg("C"), nb::arg("L"), nb::arg("threads"), release_gil);
}

}  // namespace

NB_MODULE(_cpp, m) {
    m.doc() = "fastcnn's C++ kernels; call them through fastcnn.functional";
    m.def("simd_path", &fastcnn::simd_path,
          "The SIMD code path this CPU runs: avx512, avx2 or baseline.");
    m.attr("ELEMENTWISE_CHUNK") = fastcnn::ELEMENTWISE_CHUNK;
#ifdef FASTCNN_SANITIZED
    m.attr("sanitized") = true;  // built with -fsanitize=address,undefined
#else
    m.attr("sanitized") = false;
#endif
    bind_activation<float>(m, "float32");
    bind_activation<double>(m, "float64");
    bind_conv2d<float>(m, "float32");
    bind_conv2d<double>(m, "float64");
    m.attr("WINOGRAD_FEW_TILES") = fastcnn::WINOGRAD_FEW_TILES;
    m.attr("POOL_CHUNK") = fastcnn::POOL_CHUNK;
    m.attr("POOL_SHORT_ROW") = fastcnn::POOL_SHORT_ROW;
    bind_pool2d<float>(m, "float32");
    bind_pool2d<double>(m, "float64");
    m.attr("SOFTMAX_BLOCK") = fastcnn::SOFTMAX_BLOCK;
    m.attr("LINEAR_THREADED_FLOPS") = fastcnn::LINEAR_THREADED_FLOPS;
    bind_softmax<float>(m, "float32");
    bind_softmax<double>(m, "float64");
    bind_linear<float>(m, "float32");
    bind_linear<double>(m, "float64");
    m.attr("BATCH_NORM_PIECE") = fastcnn::BATCH_NORM_PIECE;
    bind_batch_norm<float>(m, "float32");
    bind_batch_norm<double>(m, "float64");
}
