// Elementwise activations and their gradients on flat contiguous arrays (ReLU).
// Algorithm: one branch-free pass per element, written so the compiler emits SIMD selects.
#include "kernels.hpp"

namespace fastcnn {

// Memory-bound: 2 * sizeof(T) bytes moved per element, no arithmetic to speak of.
// `x < 0 ? 0 : x` (not `x > 0 ? x : 0`) so that relu(NaN) is NaN. Writing y == x
// (in place) is fine: element i reads only x[i] before writing y[i].
template <typename T> void relu(const T *x, T *y, std::size_t n) {
#pragma omp simd
    for (std::size_t i = 0; i < n; ++i)
        y[i] = x[i] < T(0) ? T(0) : x[i];
}

// grad_x = grad_y where x > 0, else 0 (also 0 where x is NaN); 3 * sizeof(T) bytes per element.
template <typename T>
void relu_backward(const T *grad_y, const T *x, T *grad_x, std::size_t n) {
#pragma omp simd
    for (std::size_t i = 0; i < n; ++i)
        grad_x[i] = x[i] > T(0) ? grad_y[i] : T(0);
}

template void relu<float>(const float *, float *, std::size_t);
template void relu<double>(const double *, double *, std::size_t);
template void relu_backward<float>(const float *, const float *, float *, std::size_t);
template void relu_backward<double>(const double *, const double *, double *, std::size_t);

}  // namespace fastcnn
