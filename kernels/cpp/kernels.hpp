// Declarations of the C++ kernels that bindings.cpp exposes, one block per op family.
// Kernels take raw pointers and plain sizes; the Python layer has validated everything.
#pragma once

#include <cstddef>

namespace fastcnn {

// activation.cpp (T = float or double)
template <typename T> void relu(const T *x, T *y, std::size_t n);
template <typename T> void relu_backward(const T *grad_y, const T *x, T *grad_x, std::size_t n);

}  // namespace fastcnn
