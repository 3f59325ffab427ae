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

// conv2d.cpp: NCHW, weight (K, C / G, R, S); pad_h / pad_w are the top / left padding, the
// output size P x Q implies the rest. bias may be null.
struct ConvShape {
    index_t N, C, H, W, K, R, S, P, Q, sh, sw, ph, pw, dh, dw, G;
};
template <typename T>
void conv2d_direct(const T *x, const T *w, const T *bias, T *y, const ConvShape &g, int threads);
template <typename T>
void conv2d_direct_input_gradient(const T *grad_y, const T *w, T *grad_x, const ConvShape &g,
                                  int threads);
template <typename T>
void conv2d_direct_weight_gradient(const T *grad_y, const T *x, T *grad_w, const ConvShape &g,
                                   int threads);
template <typename T>
void conv2d_im2col(const T *x, const T *w, const T *bias, T *y, const ConvShape &g, int threads);
template <typename T>
void conv2d_im2col_input_gradient(const T *grad_y, const T *w, T *grad_x, const ConvShape &g,
                                  int threads);
template <typename T>
void conv2d_im2col_weight_gradient(const T *grad_y, const T *x, T *grad_w, const ConvShape &g,
                                   int threads);
template <typename T>
void conv2d_bias_gradient(const T *grad_y, T *grad_bias, const ConvShape &g, int threads);

}  // namespace fastcnn
