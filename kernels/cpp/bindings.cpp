// The Python module fastcnn._cpp: nanobind wrappers that turn NumPy arrays into pointers.
// Every kernel exists once per dtype (name_float32, name_float64); fastcnn/backends/cpp.py
// picks by dtype and passes the thread count. Every array is .noconvert(): a wrong dtype or
// layout raises TypeError instead of being copied (a copied output would silently lose the
// result); inputs are const, so read-only arrays are taken. The GIL is released while a
// kernel runs.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

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

}  // namespace

NB_MODULE(_cpp, m) {
    m.doc() = "fastcnn's C++ kernels; call them through fastcnn.functional";
    m.def("simd_path", &fastcnn::simd_path,
          "The SIMD code path this CPU runs: avx512, avx2 or baseline.");
    m.attr("ELEMENTWISE_CHUNK") = fastcnn::ELEMENTWISE_CHUNK;
    m.attr("SOFTMAX_BLOCK") = fastcnn::SOFTMAX_BLOCK;
    m.attr("LINEAR_THREADED_FLOPS") = fastcnn::LINEAR_THREADED_FLOPS;
    bind_activation<float>(m, "float32");
    bind_activation<double>(m, "float64");
    bind_softmax<float>(m, "float32");
    bind_softmax<double>(m, "float64");
    bind_linear<float>(m, "float32");
    bind_linear<double>(m, "float64");
}
