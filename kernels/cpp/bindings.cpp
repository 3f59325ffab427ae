// The Python module fastcnn._cpp: nanobind wrappers that turn NumPy arrays into pointers.
// Every function exists once per dtype (name_float32, name_float64); fastcnn/backends/cpp.py
// picks by dtype. Every array is .noconvert(): a wrong dtype or layout raises TypeError
// instead of being copied (a copied output would silently lose the result). The GIL is
// released while a kernel runs.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <stdexcept>
#include <string>

#include "kernels.hpp"

namespace nb = nanobind;

namespace {

template <typename T> using In = nb::ndarray<const T, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
template <typename T> using Out = nb::ndarray<T, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

// A cheap safety net under the Python layer's validation; raised as ValueError.
void check_same_size(std::size_t a, std::size_t b) {
    if (a != b)
        throw std::invalid_argument("array lengths differ: " + std::to_string(a) + " vs " +
                                    std::to_string(b));
}

template <typename T> void bind_activation(nb::module_ &m, const std::string &dtype) {
    m.def(("relu_" + dtype).c_str(),
          [](In<T> x, Out<T> y) {
              check_same_size(x.size(), y.size());
              fastcnn::relu<T>(x.data(), y.data(), y.size());
          },
          nb::arg("x").noconvert(), nb::arg("y").noconvert(),
          nb::call_guard<nb::gil_scoped_release>());
    m.def(("relu_backward_" + dtype).c_str(),
          [](In<T> grad_y, In<T> x, Out<T> grad_x) {
              check_same_size(grad_y.size(), grad_x.size());
              check_same_size(x.size(), grad_x.size());
              fastcnn::relu_backward<T>(grad_y.data(), x.data(), grad_x.data(), grad_x.size());
          },
          nb::arg("grad_y").noconvert(), nb::arg("x").noconvert(),
          nb::arg("grad_x").noconvert(), nb::call_guard<nb::gil_scoped_release>());
}

}  // namespace

NB_MODULE(_cpp, m) {
    m.doc() = "fastcnn's C++ kernels; call them through fastcnn.functional";
    bind_activation<float>(m, "float32");
    bind_activation<double>(m, "float64");
}
