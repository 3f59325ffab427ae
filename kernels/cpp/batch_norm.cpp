// Batch normalisation over the channels of x (N, C, L): statistics, forward and backward.
// Algorithm: per-channel sums in double (the statistics in two passes: the mean, then the
// squared deviations; the backward's four sums about a given mean in one), and elementwise
// passes from the centred value x - mean formed in double per element, so that a mean large
// against the spread cancels nothing in the data's precision. The per-channel arithmetic
// between the kernels is Python's (fastcnn/backends/_batch_norm.py), shared with Numba.
//
// Traffic: statistics read x twice; forward reads x and writes y; backward reads grad_y and
// x twice (the sums, then the gradient) and writes grad_x. Channels (sums) and rows (N*C of
// L elements, elementwise) go to the threads; each sum runs in a fixed order.
#include "kernels.hpp"

namespace fastcnn {
namespace {

// Rows of L elements a piece of work should have (about 2^15 elements) before it takes a
// thread of its own.
inline index_t rows_per_piece(index_t L) {
    return std::max<index_t>(1, BATCH_NORM_PIECE / std::max<index_t>(1, L));
}

template <typename T>
FASTCNN_SIMD void channel_statistics(const T *x, double *mean, double *var, index_t N, index_t C,
                                     index_t L, index_t c) {
    double total = 0.0;
    for (index_t n = 0; n < N; ++n) {
        const T *row = x + (n * C + c) * L;
#pragma omp simd reduction(+ : total)
        for (index_t i = 0; i < L; ++i)
            total += double(row[i]);
    }
    const double m = total / double(N * L);
    double squares = 0.0;
    for (index_t n = 0; n < N; ++n) {
        const T *row = x + (n * C + c) * L;
#pragma omp simd reduction(+ : squares)
        for (index_t i = 0; i < L; ++i) {
            const double d = double(row[i]) - m;
            squares += d * d;
        }
    }
    mean[c] = m;
    var[c] = squares / double(N * L);
}

template <typename T>
FASTCNN_SIMD void normalize_row(const T *x, T *y, double mean, double scale, double shift,
                                index_t L) {
    for (index_t i = 0; i < L; ++i)
        y[i] = T((double(x[i]) - mean) * scale + shift);
}

template <typename T>
FASTCNN_SIMD void channel_gradient_sums(const T *grad_y, const T *x, double shift, double *sums,
                                        index_t N, index_t C, index_t L, index_t c) {
    double d_total = 0.0, dd_total = 0.0, g_total = 0.0, gd_total = 0.0;
    for (index_t n = 0; n < N; ++n) {
        const T *g = grad_y + (n * C + c) * L, *row = x + (n * C + c) * L;
#pragma omp simd reduction(+ : d_total, dd_total, g_total, gd_total)
        for (index_t i = 0; i < L; ++i) {
            const double d = double(row[i]) - shift, gradient = double(g[i]);
            d_total += d;
            dd_total += d * d;
            g_total += gradient;
            gd_total += gradient * d;
        }
    }
    sums[4 * c] = d_total;
    sums[4 * c + 1] = dd_total;
    sums[4 * c + 2] = g_total;
    sums[4 * c + 3] = gd_total;
}

template <typename T>
FASTCNN_SIMD void input_gradient_row(const T *grad_y, const T *x, T *grad_x, double mean,
                                     double scale, double constant, double slope, index_t L) {
    for (index_t i = 0; i < L; ++i)
        grad_x[i] = T(scale * (double(grad_y[i]) - constant - (double(x[i]) - mean) * slope));
}

}  // namespace

template <typename T>
void batch_norm_statistics(const T *x, double *mean, double *var, index_t N, index_t C,
                           index_t L, int threads) {
    parallel_for(C, std::max<index_t>(1, rows_per_piece(N * L)), threads,
                 [&](index_t begin, index_t end) {
                     for (index_t c = begin; c < end; ++c)
                         channel_statistics(x, mean, var, N, C, L, c);
                 });
}

template <typename T>
void batch_norm_normalize(const T *x, const double *mean, const double *scale,
                          const double *shift, T *y, index_t N, index_t C, index_t L,
                          int threads) {
    parallel_for(N * C, rows_per_piece(L), threads, [&](index_t begin, index_t end) {
        for (index_t row = begin; row < end; ++row) {
            const index_t c = row % C;
            normalize_row(x + row * L, y + row * L, mean[c], scale[c], shift[c], L);
        }
    });
}

template <typename T>
void batch_norm_gradient_sums(const T *grad_y, const T *x, const double *shift, double *sums,
                              index_t N, index_t C, index_t L, int threads) {
    parallel_for(C, std::max<index_t>(1, rows_per_piece(N * L)), threads,
                 [&](index_t begin, index_t end) {
                     for (index_t c = begin; c < end; ++c)
                         channel_gradient_sums(grad_y, x, shift[c], sums, N, C, L, c);
                 });
}

template <typename T>
void batch_norm_input_gradient(const T *grad_y, const T *x, const double *mean,
                               const double *scale, const double *constant, const double *slope,
                               T *grad_x, index_t N, index_t C, index_t L, int threads) {
    parallel_for(N * C, rows_per_piece(L), threads, [&](index_t begin, index_t end) {
        for (index_t row = begin; row < end; ++row) {
            const index_t c = row % C;
            input_gradient_row(grad_y + row * L, x + row * L, grad_x + row * L, mean[c],
                               scale[c], constant[c], slope[c], L);
        }
    });
}

#define FASTCNN_BATCH_NORM(T)                                                                    \
    template void batch_norm_statistics<T>(const T *, double *, double *, index_t, index_t,     \
                                           index_t, int);                                        \
    template void batch_norm_normalize<T>(const T *, const double *, const double *,            \
                                          const double *, T *, index_t, index_t, index_t, int);  \
    template void batch_norm_gradient_sums<T>(const T *, const T *, const double *, double *,   \
                                              index_t, index_t, index_t, int);                   \
    template void batch_norm_input_gradient<T>(const T *, const T *, const double *,            \
                                               const double *, const double *, const double *,   \
                                               T *, index_t, index_t, index_t, int);
FASTCNN_BATCH_NORM(float)
FASTCNN_BATCH_NORM(double)

}  // namespace fastcnn
