// Softmax, log-softmax and softmax cross-entropy (loss and gradient) over the rows of (M, C).
// Algorithm: per row, the maximum, one pass of exp(x - max) summed, one scaling pass (each a
// SIMD reduction or map); blocks of about SOFTMAX_BLOCK elements of rows over the threads.
//
// exp only ever sees x - max <= 0, so it cannot overflow for any logit (1e8 included), and
// a NaN anywhere in a row makes the row's maximum, and so every output, NaN. As the Numba
// backend: logarithms, shifts and the loss sums in float64; the sums of exponentials in T.
// Traffic: softmax and log-softmax read and write M x C x sizeof(T) bytes once each; the
// loss reads the logits once; its gradient reads them (and the targets) and writes it.
#include <cmath>
#include <limits>

#include "kernels.hpp"
#include "math.hpp"

namespace fastcnn {
namespace {

// The largest element; NaN if the row holds one (-inf for a row of -inf, or none).
template <typename T> inline T row_max(const T *row, index_t n) {
    T best = -std::numeric_limits<T>::infinity();
    int any_nan = 0;
#pragma omp simd reduction(max : best) reduction(| : any_nan)
    for (index_t i = 0; i < n; ++i) {
        best = row[i] > best ? row[i] : best;
        any_nan |= row[i] != row[i];
    }
    return any_nan ? std::numeric_limits<T>::quiet_NaN() : best;
}

// out = exp(row - maximum); returns their sum (>= 1 unless the row holds NaN).
template <typename T> inline T row_exp_sum(const T *row, index_t n, T maximum, T *out) {
    T total = 0;
#pragma omp simd reduction(+ : total)
    for (index_t i = 0; i < n; ++i) {
        const T e = exp_nonpositive(row[i] - maximum);
        out[i] = e;
        total += e;
    }
    return total;
}

// log of the sum of exp(row - maximum), without storing the exponentials.
template <typename T> inline double row_log_sum_exp(const T *row, index_t n, T maximum) {
    T total = 0;
#pragma omp simd reduction(+ : total)
    for (index_t i = 0; i < n; ++i)
        total += exp_nonpositive(row[i] - maximum);
    return std::log(double(total));
}

// -log p[c] = (max - x[c]) + log sum exp(x - max): both terms >= 0; the first exact in T.
template <typename T> inline double minus_log_p(T maximum, T logit, double log_sum) {
    return double(maximum - logit) + log_sum;
}

template <typename T> inline void softmax_row(const T *row, index_t n, T *out) {
    const T maximum = row_max(row, n);
    const T scale = T(1.0 / double(row_exp_sum(row, n, maximum, out)));
#pragma omp simd
    for (index_t i = 0; i < n; ++i)
        out[i] *= scale;
}

template <typename T> inline void log_softmax_row(const T *row, index_t n, T *out) {
    const T maximum = row_max(row, n);
    // In float64: max + log_sum rounded to float32 would lose log_sum next to 1e8.
    const double shift = double(maximum) + row_log_sum_exp(row, n, maximum);
#pragma omp simd
    for (index_t i = 0; i < n; ++i)
        out[i] = T(double(row[i]) - shift);
}

// w[label] * -log p[label], mixed with smoothing * mean_c(w[c] * -log p[c]); 0 for an
// ignored row (label -1). A class of weight 0 adds 0, also where its p is 0 (-inf logit).
template <typename T>
inline T cross_entropy_row(const T *row, index_t n, std::int64_t label, const T *weight,
                           double smoothing) {
    if (label < 0)
        return T(0);
    const T maximum = row_max(row, n);
    const double log_sum = row_log_sum_exp(row, n, maximum);
    const double on_label = (1 - smoothing) * double(weight[label]);
    double loss = on_label != 0 ? on_label * minus_log_p(maximum, row[label], log_sum) : 0.0;
    if (smoothing != 0) {
        double spread = 0;
#pragma omp simd reduction(+ : spread)
        for (index_t c = 0; c < n; ++c) {
            const T w = weight[c];
            spread += w != 0 ? double(w) * minus_log_p(maximum, row[c], log_sum) : 0.0;
        }
        loss += smoothing / double(n) * spread;
    }
    return T(loss);
}

// row_scale * (mass * softmax - target): the target puts (1 - smoothing) * w[label] on the
// label and smoothing / C * w[c] on every class; mass is its sum (weight_sum = sum_c w[c]).
template <typename T>
inline void cross_entropy_backward_row(const T *row, index_t n, std::int64_t label,
                                       const T *weight, double smoothing, T weight_sum,
                                       T row_scale, T *grad) {
    if (label < 0) {
        for (index_t i = 0; i < n; ++i)
            grad[i] = T(0);
        return;
    }
    const T maximum = row_max(row, n);
    const double total = double(row_exp_sum(row, n, maximum, grad));
    const double on_label = (1 - smoothing) * double(weight[label]);
    if (smoothing == 0) {
        const T scale = T(double(row_scale) * on_label / total);
#pragma omp simd
        for (index_t i = 0; i < n; ++i)
            grad[i] *= scale;
    } else {
        const double spread = smoothing / double(n);
        const T scale = T(double(row_scale) * (on_label + spread * double(weight_sum)) / total);
        const T shift = T(double(row_scale) * spread);
#pragma omp simd
        for (index_t i = 0; i < n; ++i)
            grad[i] = grad[i] * scale - shift * weight[i];
    }
    grad[label] = T(double(grad[label]) - double(row_scale) * on_label);
}

// sum_c target[c] * -log p[c] (class weights and smoothing already in the target).
template <typename T> inline T soft_cross_entropy_row(const T *row, index_t n, const T *target) {
    const T maximum = row_max(row, n);
    const double log_sum = row_log_sum_exp(row, n, maximum);
    double loss = 0;
#pragma omp simd reduction(+ : loss)
    for (index_t c = 0; c < n; ++c) {
        const T t = target[c];
        loss += t != 0 ? double(t) * minus_log_p(maximum, row[c], log_sum) : 0.0;
    }
    return T(loss);
}

template <typename T>
inline void soft_cross_entropy_backward_row(const T *row, index_t n, const T *target,
                                            T row_scale, T *grad) {
    const T maximum = row_max(row, n);
    const T total = row_exp_sum(row, n, maximum, grad);
    T mass = 0;
#pragma omp simd reduction(+ : mass)
    for (index_t c = 0; c < n; ++c)
        mass += target[c];
    const T scale = row_scale * mass / total;
#pragma omp simd
    for (index_t i = 0; i < n; ++i)
        grad[i] = grad[i] * scale - row_scale * target[i];
}

// --- the loops over rows [begin, end), one SIMD clone set each

template <typename T>
FASTCNN_SIMD void softmax_rows(const T *x, T *y, index_t n, index_t begin, index_t end) {
    for (index_t m = begin; m < end; ++m)
        softmax_row(x + m * n, n, y + m * n);
}

template <typename T>
FASTCNN_SIMD void log_softmax_rows(const T *x, T *y, index_t n, index_t begin, index_t end) {
    for (index_t m = begin; m < end; ++m)
        log_softmax_row(x + m * n, n, y + m * n);
}

template <typename T>
FASTCNN_SIMD void cross_entropy_rows(const T *logits, const std::int64_t *labels,
                                     const T *weight, double smoothing, T *losses, index_t n,
                                     index_t begin, index_t end) {
    for (index_t m = begin; m < end; ++m)
        losses[m] = cross_entropy_row(logits + m * n, n, labels[m], weight, smoothing);
}

template <typename T>
FASTCNN_SIMD void cross_entropy_backward_rows(const T *logits, const std::int64_t *labels,
                                              const T *weight, double smoothing, T weight_sum,
                                              const T *row_scale, T *grad, index_t n,
                                              index_t begin, index_t end) {
    for (index_t m = begin; m < end; ++m)
        cross_entropy_backward_row(logits + m * n, n, labels[m], weight, smoothing, weight_sum,
                                   row_scale[m], grad + m * n);
}

template <typename T>
FASTCNN_SIMD void soft_cross_entropy_rows(const T *logits, const T *targets, T *losses,
                                          index_t n, index_t begin, index_t end) {
    for (index_t m = begin; m < end; ++m)
        losses[m] = soft_cross_entropy_row(logits + m * n, n, targets + m * n);
}

template <typename T>
FASTCNN_SIMD void soft_cross_entropy_backward_rows(const T *logits, const T *targets,
                                                   const T *row_scale, T *grad, index_t n,
                                                   index_t begin, index_t end) {
    for (index_t m = begin; m < end; ++m)
        soft_cross_entropy_backward_row(logits + m * n, n, targets + m * n, row_scale[m],
                                        grad + m * n);
}

// Rows per task: about SOFTMAX_BLOCK elements, at least one row.
inline index_t rows_per_block(index_t classes) {
    return std::max<index_t>(1, SOFTMAX_BLOCK / std::max<index_t>(1, classes));
}

}  // namespace

template <typename T> void softmax(const T *x, T *y, index_t rows, index_t classes, int threads) {
    parallel_for(rows, rows_per_block(classes), threads,
                 [=](index_t b, index_t e) { softmax_rows(x, y, classes, b, e); });
}

template <typename T>
void log_softmax(const T *x, T *y, index_t rows, index_t classes, int threads) {
    parallel_for(rows, rows_per_block(classes), threads,
                 [=](index_t b, index_t e) { log_softmax_rows(x, y, classes, b, e); });
}

template <typename T>
void cross_entropy(const T *logits, const std::int64_t *labels, const T *weight,
                   double smoothing, T *losses, index_t rows, index_t classes, int threads) {
    parallel_for(rows, rows_per_block(classes), threads, [=](index_t b, index_t e) {
        cross_entropy_rows(logits, labels, weight, smoothing, losses, classes, b, e);
    });
}

template <typename T>
void cross_entropy_backward(const T *logits, const std::int64_t *labels, const T *weight,
                            double smoothing, const T *row_scale, T *grad_logits, index_t rows,
                            index_t classes, int threads) {
    T weight_sum = 0;  // once for all rows, in the order each row would add it
    for (index_t c = 0; c < classes; ++c)
        weight_sum += weight[c];
    parallel_for(rows, rows_per_block(classes), threads, [=](index_t b, index_t e) {
        cross_entropy_backward_rows(logits, labels, weight, smoothing, weight_sum, row_scale,
                                    grad_logits, classes, b, e);
    });
}

template <typename T>
void soft_cross_entropy(const T *logits, const T *targets, T *losses, index_t rows,
                        index_t classes, int threads) {
    parallel_for(rows, rows_per_block(classes), threads, [=](index_t b, index_t e) {
        soft_cross_entropy_rows(logits, targets, losses, classes, b, e);
    });
}

template <typename T>
void soft_cross_entropy_backward(const T *logits, const T *targets, const T *row_scale,
                                 T *grad_logits, index_t rows, index_t classes, int threads) {
    parallel_for(rows, rows_per_block(classes), threads, [=](index_t b, index_t e) {
        soft_cross_entropy_backward_rows(logits, targets, row_scale, grad_logits, classes, b, e);
    });
}

#define FASTCNN_SOFTMAX(T)                                                                       \
    template void softmax<T>(const T *, T *, index_t, index_t, int);                             \
    template void log_softmax<T>(const T *, T *, index_t, index_t, int);                         \
    template void cross_entropy<T>(const T *, const std::int64_t *, const T *, double, T *,      \
                                   index_t, index_t, int);                                       \
    template void cross_entropy_backward<T>(const T *, const std::int64_t *, const T *, double,  \
                                            const T *, T *, index_t, index_t, int);              \
    template void soft_cross_entropy<T>(const T *, const T *, T *, index_t, index_t, int);       \
    template void soft_cross_entropy_backward<T>(const T *, const T *, const T *, T *, index_t,  \
                                                 index_t, int);
FASTCNN_SOFTMAX(float)
FASTCNN_SOFTMAX(double)

}  // namespace fastcnn
