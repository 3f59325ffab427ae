// Batch normalisation over the channels of x (N, C, L): the batch statistics, the affine
// normalisation, and its backward. Algorithm: one block per channel for the per-channel sums
// (double accumulators, block reductions in a fixed order: deterministic), a grid-stride
// elementwise pass for y and grad_x; statistics and per-element arithmetic in double for
// every T (x - mean is formed in double), only loads and stores in T. The statistics
// themselves (mean, var) are double arrays: a float mean rounded to 1e-7 of 1e3 would be
// an error of 1e-4 in every x - mean.
#include "common.cuh"

namespace fastcnn {

// The element (n, l) of channel c is x[(n * C + c) * L + l]; a block walks its channel's
// N * L elements with its threads.
template <typename T, typename F>
__device__ double channel_sum(const T* __restrict__ x, int N, int C, index_t L, int c, F term) {
    double total = 0.0;
    const index_t count = static_cast<index_t>(N) * L;
    for (index_t j = threadIdx.x; j < count; j += blockDim.x) {
        const index_t n = j / L, l = j % L;
        total += term((n * C + c) * L + l);
    }
    return block_reduce(total, dynamic_shared<double>(), Sum());
}

// mean[c] and the biased var[c] over n and l (two passes: the variance of the centred
// values, which keeps large means from cancelling the variance away).
template <typename T>
__global__ void batch_norm_statistics(const T* __restrict__ x, double* __restrict__ mean,
                                      double* __restrict__ var, int N, int C, index_t L) {
    const double count = static_cast<double>(N) * L;
    for (int c = blockIdx.x; c < C; c += gridDim.x) {
        const double mu =
            channel_sum(x, N, C, L, c, [&](index_t i) { return static_cast<double>(x[i]); }) / count;
        const double spread = channel_sum(x, N, C, L, c, [&](index_t i) {
            const double d = x[i] - mu;
            return d * d;
        });
        if (threadIdx.x == 0) {
            mean[c] = mu;
            var[c] = spread / count;
        }
    }
}

// y = (x - mean) / sqrt(var + eps) * weight + bias, per channel (weight, bias optional), in
// double per element: x - mean cancels nothing when the mean is large against the spread.
// 1 / sqrt(var + eps) is rounded to T (one rounding, as y's own), which keeps float's
// per-element division in float.
template <typename T>
__global__ void batch_norm_forward(const T* __restrict__ x, const double* __restrict__ mean,
                                   const double* __restrict__ var, const T* __restrict__ weight,
                                   const T* __restrict__ bias, T* __restrict__ y, int C,
                                   index_t L, index_t n_elements, double eps, int affine_weight,
                                   int affine_bias) {
    for (index_t i = grid_start(); i < n_elements; i += grid_stride()) {
        const int c = static_cast<int>(i / L % C);
        const T inverse_std =
            static_cast<T>(1) / static_cast<T>(sqrt(var[c] + eps));
        double value = (static_cast<double>(x[i]) - mean[c]) *
                       static_cast<double>(inverse_std);
        if (affine_weight) value *= static_cast<double>(weight[c]);
        if (affine_bias) value += static_cast<double>(bias[c]);
        y[i] = static_cast<T>(value);
    }
}

// The backward's per-channel terms, in double whatever T is: coefficients holds four rows
// of C, the mean, 1 / sqrt(var + eps), mean(grad_y) and mean(grad_y * x_hat) (the last two
// used in training only).
enum Coefficient { kMean = 0, kInverseStd = 1, kMeanGrad = 2, kMeanGradNormalized = 3 };

// Per channel: grad_bias = sum grad_y, grad_weight = sum grad_y * x_hat, and the
// coefficients. One pass of four double sums about the given mean, d = x - mean[c]: sum d,
// d^2, grad_y, grad_y d. In training the mean and variance are the batch's, again in double
// (eval's running statistics arrive rounded to T): about a shift near the mean,
// sum d^2 / count - (sum d / count)^2 cancels nothing, as the two-pass variance.
template <typename T>
__global__ void batch_norm_backward_sums(const T* __restrict__ grad_y, const T* __restrict__ x,
                                         const double* __restrict__ mean,
                                         const double* __restrict__ var,
                                         T* __restrict__ grad_weight, T* __restrict__ grad_bias,
                                         double* __restrict__ coefficients, int N, int C,
                                         index_t L, double eps, int training) {
    const index_t count = static_cast<index_t>(N) * L;
    double* scratch = dynamic_shared<double>();
    for (int c = blockIdx.x; c < C; c += gridDim.x) {
        const double shift = mean[c];
        double sum_d = 0.0, sum_dd = 0.0, sum_g = 0.0, sum_gd = 0.0;
        for (index_t j = threadIdx.x; j < count; j += blockDim.x) {
            const index_t n = j / L, l = j % L, i = (n * C + c) * L + l;
            const double d = static_cast<double>(x[i]) - shift, g = grad_y[i];
            sum_d += d;
            sum_dd += d * d;
            sum_g += g;
            sum_gd += g * d;
        }
        sum_d = block_reduce(sum_d, scratch, Sum());
        sum_dd = block_reduce(sum_dd, scratch, Sum());
        sum_g = block_reduce(sum_g, scratch, Sum());
        sum_gd = block_reduce(sum_gd, scratch, Sum());
        double offset = 0.0, variance = var[c], sum_g_centred = sum_gd;
        if (training) {
            offset = sum_d / count;
            variance = sum_dd / count - offset * offset;
            variance = variance < 0.0 ? 0.0 : variance;  // a NaN stays
            sum_g_centred = sum_gd - offset * sum_g;
        }
        const double inverse_std = 1.0 / sqrt(variance + eps);
        if (threadIdx.x == 0) {
            grad_bias[c] = static_cast<T>(sum_g);
            grad_weight[c] = static_cast<T>(sum_g_centred * inverse_std);
            coefficients[kMean * C + c] = shift + offset;
            coefficients[kInverseStd * C + c] = inverse_std;
            coefficients[kMeanGrad * C + c] = sum_g / count;
            coefficients[kMeanGradNormalized * C + c] = sum_g_centred * inverse_std / count;
        }
    }
}

// grad_x = weight / sqrt(var + eps) * (grad_y - [training] (mean(grad_y) + x_hat *
// mean(grad_y * x_hat))), x_hat = (x - mean) / sqrt(var + eps), in double per element
// (x is not read outside training).
template <typename T>
__global__ void batch_norm_input_gradient(const T* __restrict__ grad_y, const T* __restrict__ x,
                                          const T* __restrict__ weight,
                                          const double* __restrict__ coefficients,
                                          T* __restrict__ grad_x, int C, index_t L,
                                          index_t n_elements, int affine_weight, int training) {
    for (index_t i = grid_start(); i < n_elements; i += grid_stride()) {
        const int c = static_cast<int>(i / L % C);
        const double inverse_std = coefficients[kInverseStd * C + c];
        double g = grad_y[i];
        if (training) {
            const double normalized =
                (static_cast<double>(x[i]) - coefficients[kMean * C + c]) * inverse_std;
            g -= coefficients[kMeanGrad * C + c] +
                 normalized * coefficients[kMeanGradNormalized * C + c];
        }
        const double scale =
            affine_weight ? inverse_std * static_cast<double>(weight[c]) : inverse_std;
        grad_x[i] = static_cast<T>(g * scale);
    }
}

}  // namespace fastcnn
