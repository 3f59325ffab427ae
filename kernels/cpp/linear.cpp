// Fully connected layer y = x @ weight.T + bias and its gradients, on (rows, features) arrays.
// Algorithm: the blocked GEMM of gemm.cpp, the transposes read through its strides; the
// bias gradient as column sums in double.
#include "gemm.hpp"
#include "kernels.hpp"

namespace fastcnn {
namespace {

// grad_bias[j] = sum_m grad_y[m][j] for the columns [begin, end), summed in float64.
template <typename T>
FASTCNN_SIMD void column_sums(const T *grad_y, T *grad_bias, index_t rows, index_t columns,
                              index_t begin, index_t end) {
    double sums[COLUMN_SUM_CHUNK];
    const index_t width = end - begin;
    for (index_t j = 0; j < width; ++j)
        sums[j] = 0;
    for (index_t m = 0; m < rows; ++m) {
        const T *row = grad_y + m * columns + begin;
        for (index_t j = 0; j < width; ++j)
            sums[j] += double(row[j]);
    }
    for (index_t j = 0; j < width; ++j)
        grad_bias[begin + j] = T(sums[j]);
}

}  // namespace

template <typename T>
void linear(const T *x, const T *weight, const T *bias, T *y, index_t rows, index_t in_features,
            index_t out_features, int threads) {
    // y (rows x out) = x (rows x in) weight.T: B[k][n] = weight[n][k]
    gemm(Product<T>{x, in_features, 1, weight, 1, in_features, y, out_features, rows,
                    out_features, in_features, bias},
         threads);
}

template <typename T>
void linear_backward(const T *grad_y, const T *x, const T *weight, T *grad_x, T *grad_weight,
                     T *grad_bias, index_t rows, index_t in_features, index_t out_features,
                     int threads) {
    if (grad_x != nullptr)  // grad_x (rows x in) = grad_y (rows x out) weight (out x in)
        gemm(Product<T>{grad_y, out_features, 1, weight, in_features, 1, grad_x, in_features,
                        rows, in_features, out_features, nullptr},
             threads);
    // grad_weight (out x in) = grad_y.T (out x rows) x (rows x in): A[i][k] = grad_y[k][i]
    gemm(Product<T>{grad_y, 1, out_features, x, in_features, 1, grad_weight, in_features,
                    out_features, in_features, rows, nullptr},
         threads);
    if (grad_bias != nullptr)
        parallel_for(out_features, COLUMN_SUM_CHUNK, threads, [=](index_t b, index_t e) {
            column_sums(grad_y, grad_bias, rows, out_features, b, e);
        });
}

#define FASTCNN_LINEAR(T)                                                                        \
    template void linear<T>(const T *, const T *, const T *, T *, index_t, index_t, index_t,     \
                            int);                                                                \
    template void linear_backward<T>(const T *, const T *, const T *, T *, T *, T *, index_t,    \
                                     index_t, index_t, int);
FASTCNN_LINEAR(float)
FASTCNN_LINEAR(double)

}  // namespace fastcnn
