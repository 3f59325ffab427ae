// Declarations of the C++ kernels that bindings.cpp exposes, one block per op family.
// Each takes raw pointers, plain sizes and the thread count; Python validated the rest.
#pragma once

#include "common.hpp"

namespace fastcnn {

// activation.cpp (T = float or double; flat arrays of n elements). Arrays of at most one
// chunk run on the calling thread: starting the pool costs more than the work.
constexpr index_t ELEMENTWISE_CHUNK = index_t(1) << 16;
template <typename T> void relu(const T *x, T *y, index_t n, int threads);
template <typename T>
void relu_backward(const T *grad_y, const T *x, T *grad_x, index_t n, int threads);
template <typename T> void leaky_relu(const T *x, T *y, T slope, index_t n, int threads);
template <typename T>
void leaky_relu_backward(const T *grad_y, const T *x, T *grad_x, T slope, index_t n, int threads);
template <typename T> void sigmoid(const T *x, T *y, index_t n, int threads);
template <typename T>
void sigmoid_backward(const T *grad_y, const T *y, T *grad_x, index_t n, int threads);
template <typename T> void tanh(const T *x, T *y, index_t n, int threads);
template <typename T>
void tanh_backward(const T *grad_y, const T *y, T *grad_x, index_t n, int threads);
template <typename T>
void dropout(const T *x, const bool *mask, T *y, T scale, index_t n, int threads);

}  // namespace fastcnn
