// ReLU, leaky ReLU, sigmoid, tanh and dropout, forward and backward, on flat arrays.
// Algorithm: one branch-free pass per element (SIMD selects), in chunks over the threads.
//
// Memory-bound: a forward reads x and writes y (2 * sizeof(T) bytes an element), a
// backward reads two arrays and writes one (3 * sizeof(T)). float32 exp (math.hpp) and tanh
// are polynomials the compiler vectorises (libm's are scalar calls); float64 calls libm.
// Every kernel may write in place (y == x): element i reads only its own inputs.
#include <cmath>

#include "kernels.hpp"
#include "math.hpp"

namespace fastcnn {
namespace {

// tanh(x) = (1 - e) / (1 + e) with e = exp(-2|x|), and x (1 - x^2/3 + 2x^4/15 - 17x^6/315)
// below |x| = 1/16, where 1 - e loses the leading digits (error < 1e-10 relative).
inline float tanh_of(float x) {
    const float magnitude = std::fabs(x);
    const float e = exp_nonpositive(-(magnitude + magnitude));
    const float large = (1.0f - e) / (1.0f + e);
    const float square = x * x;
    const float small =
        magnitude * (1.0f + square * (-1.0f / 3.0f + square * (2.0f / 15.0f +
                                                                 square * (-17.0f / 315.0f))));
    return std::copysign(magnitude < 0.0625f ? small : large, x);  // keeps NaN and -0.0
}

inline double tanh_of(double x) { return std::tanh(x); }

// --- the loops, one SIMD clone set each; [begin, end) of the flat arrays

template <typename T> FASTCNN_SIMD void relu_span(const T *x, T *y, index_t begin, index_t end) {
    for (index_t i = begin; i < end; ++i)
        y[i] = x[i] < T(0) ? T(0) : x[i];  // not `x > 0 ? x : 0`: relu(NaN) is NaN
}

template <typename T>
FASTCNN_SIMD void relu_backward_span(const T *grad_y, const T *x, T *grad_x, index_t begin,
                                     index_t end) {
    for (index_t i = begin; i < end; ++i)
        grad_x[i] = x[i] > T(0) ? grad_y[i] : T(0);
}

template <typename T>
FASTCNN_SIMD void leaky_relu_span(const T *x, T *y, T slope, index_t begin, index_t end) {
    for (index_t i = begin; i < end; ++i)
        y[i] = x[i] > T(0) ? x[i] : x[i] * slope;
}

template <typename T>
FASTCNN_SIMD void leaky_relu_backward_span(const T *grad_y, const T *x, T *grad_x, T slope,
                                           index_t begin, index_t end) {
    for (index_t i = begin; i < end; ++i)
        grad_x[i] = x[i] > T(0) ? grad_y[i] : grad_y[i] * slope;
}

template <typename T> FASTCNN_SIMD void sigmoid_span(const T *x, T *y, index_t begin, index_t end) {
    for (index_t i = begin; i < end; ++i) {
        // exp of -|x| never overflows: 1/(1+e) for x >= 0, e/(1+e) below; one division.
        const T value = x[i];
        const T e = exp_nonpositive(-std::fabs(value));
        const T reciprocal = T(1) / (T(1) + e);
        const T below = e * reciprocal;  // computed, then selected: a `?:` stays vectorised
        y[i] = value >= T(0) ? reciprocal : below;  // NaN: e and so y are NaN
    }
}

template <typename T>
FASTCNN_SIMD void sigmoid_backward_span(const T *grad_y, const T *y, T *grad_x, index_t begin,
                                        index_t end) {
    for (index_t i = begin; i < end; ++i)
        grad_x[i] = grad_y[i] * y[i] * (T(1) - y[i]);
}

template <typename T> FASTCNN_SIMD void tanh_span(const T *x, T *y, index_t begin, index_t end) {
    for (index_t i = begin; i < end; ++i)
        y[i] = tanh_of(x[i]);
}

template <typename T>
FASTCNN_SIMD void tanh_backward_span(const T *grad_y, const T *y, T *grad_x, index_t begin,
                                     index_t end) {
    for (index_t i = begin; i < end; ++i)
        grad_x[i] = grad_y[i] * (T(1) - y[i] * y[i]);
}

template <typename T>
FASTCNN_SIMD void dropout_span(const T *x, const bool *mask, T *y, T scale, index_t begin,
                               index_t end) {
    for (index_t i = begin; i < end; ++i)
        y[i] = x[i] * (T(mask[i]) * scale);  // a dropped NaN stays NaN, as in PyTorch
}

}  // namespace

template <typename T> void relu(const T *x, T *y, index_t n, int threads) {
    parallel_for(n, ELEMENTWISE_CHUNK, threads, [=](index_t b, index_t e) { relu_span(x, y, b, e); });
}

template <typename T>
void relu_backward(const T *grad_y, const T *x, T *grad_x, index_t n, int threads) {
    parallel_for(n, ELEMENTWISE_CHUNK, threads,
                 [=](index_t b, index_t e) { relu_backward_span(grad_y, x, grad_x, b, e); });
}

template <typename T> void leaky_relu(const T *x, T *y, T slope, index_t n, int threads) {
    parallel_for(n, ELEMENTWISE_CHUNK, threads,
                 [=](index_t b, index_t e) { leaky_relu_span(x, y, slope, b, e); });
}

template <typename T>
void leaky_relu_backward(const T *grad_y, const T *x, T *grad_x, T slope, index_t n,
                         int threads) {
    parallel_for(n, ELEMENTWISE_CHUNK, threads, [=](index_t b, index_t e) {
        leaky_relu_backward_span(grad_y, x, grad_x, slope, b, e);
    });
}

template <typename T> void sigmoid(const T *x, T *y, index_t n, int threads) {
    parallel_for(n, ELEMENTWISE_CHUNK, threads,
                 [=](index_t b, index_t e) { sigmoid_span(x, y, b, e); });
}

template <typename T>
void sigmoid_backward(const T *grad_y, const T *y, T *grad_x, index_t n, int threads) {
    parallel_for(n, ELEMENTWISE_CHUNK, threads,
                 [=](index_t b, index_t e) { sigmoid_backward_span(grad_y, y, grad_x, b, e); });
}

template <typename T> void tanh(const T *x, T *y, index_t n, int threads) {
    parallel_for(n, ELEMENTWISE_CHUNK, threads, [=](index_t b, index_t e) { tanh_span(x, y, b, e); });
}

template <typename T>
void tanh_backward(const T *grad_y, const T *y, T *grad_x, index_t n, int threads) {
    parallel_for(n, ELEMENTWISE_CHUNK, threads,
                 [=](index_t b, index_t e) { tanh_backward_span(grad_y, y, grad_x, b, e); });
}

template <typename T>
void dropout(const T *x, const bool *mask, T *y, T scale, index_t n, int threads) {
    parallel_for(n, ELEMENTWISE_CHUNK, threads,
                 [=](index_t b, index_t e) { dropout_span(x, mask, y, scale, b, e); });
}

#define FASTCNN_ACTIVATIONS(T)                                                                   \
    template void relu<T>(const T *, T *, index_t, int);                                         \
    template void relu_backward<T>(const T *, const T *, T *, index_t, int);                     \
    template void leaky_relu<T>(const T *, T *, T, index_t, int);                                \
    template void leaky_relu_backward<T>(const T *, const T *, T *, T, index_t, int);            \
    template void sigmoid<T>(const T *, T *, index_t, int);                                      \
    template void sigmoid_backward<T>(const T *, const T *, T *, index_t, int);                  \
    template void tanh<T>(const T *, T *, index_t, int);                                         \
    template void tanh_backward<T>(const T *, const T *, T *, index_t, int);                     \
    template void dropout<T>(const T *, const bool *, T *, T, index_t, int);
FASTCNN_ACTIVATIONS(float)
FASTCNN_ACTIVATIONS(double)

}  // namespace fastcnn
