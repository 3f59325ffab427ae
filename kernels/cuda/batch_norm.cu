// Batch normalisation over the channels of x (N, C, L): the batch statistics, the affine
// normalisation, and its backward. Algorithm: one block per channel for the per-channel sums
// (double accumulators, block reductions in a fixed order: deterministic), a grid-stride
// elementwise pass for y and grad_x.
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
__global__ void batch_norm_statistics(const T* __restrict__ x, T* __restrict__ mean,
                                      T* __restrict__ var, int N, int C, index_t L) {
    const double count = static_cast<double>(N) * L;
    for (int c = blockIdx.x; c < C; c += gridDim.x) {
        const double mu =
            channel_sum(x, N, C, L, c, [&](index_t i) { return static_cast<double>(x[i]); }) / count;
        const double spread = channel_sum(x, N, C, L, c, [&](index_t i) {
            const double d = x[i] - mu;
            return d * d;
        });
        if (threadIdx.x == 0) {
            mean[c] = static_cast<T>(mu);
            var[c] = static_cast<T>(spread / count);
        }
    }
}

// y = (x - mean) / sqrt(var + eps) * weight + bias, per channel (weight, bias optional).
template <typename T>
__global__ void batch_norm_forward(const T* __restrict__ x, const T* __restrict__ mean,
                                   const T* __restrict__ var, const T* __restrict__ weight,
                                   const T* __restrict__ bias, T* __restrict__ y, int C,
                                   index_t L, index_t n_elements, double eps, int affine_weight,
                                   int affine_bias) {
    for (index_t i = grid_start(); i < n_elements; i += grid_stride()) {
        const int c = static_cast<int>(i / L % C);
        T value = (x[i] - mean[c]) / static_cast<T>(sqrt(static_cast<double>(var[c]) + eps));
        if (affine_weight) value *= weight[c];
        if (affine_bias) value += bias[c];
        y[i] = value;
    }
}

// Per channel: grad_bias = sum grad_y, grad_weight = sum grad_y * x_hat.
template <typename T>
__global__ void batch_norm_backward_sums(const T* __restrict__ grad_y, const T* __restrict__ x,
                                         const T* __restrict__ mean, const T* __restrict__ var,
                                         T* __restrict__ grad_weight, T* __restrict__ grad_bias,
                                         int N, int C, index_t L, double eps) {
    for (int c = blockIdx.x; c < C; c += gridDim.x) {
        const double mu = mean[c], inverse_std = 1.0 / sqrt(static_cast<double>(var[c]) + eps);
        const double sum_grad = channel_sum(grad_y, N, C, L, c, [&](index_t i) {
            return static_cast<double>(grad_y[i]);
        });
        const double sum_grad_normalized = channel_sum(grad_y, N, C, L, c, [&](index_t i) {
            return static_cast<double>(grad_y[i]) * ((x[i] - mu) * inverse_std);
        });
        if (threadIdx.x == 0) {
            grad_bias[c] = static_cast<T>(sum_grad);
            grad_weight[c] = static_cast<T>(sum_grad_normalized);
        }
    }
}

// grad_x = weight / sqrt(var + eps) * (grad_y - [training] (sum_grad + x_hat *
// sum_grad_normalized) / count).
template <typename T>
__global__ void batch_norm_input_gradient(const T* __restrict__ grad_y, const T* __restrict__ x,
                                          const T* __restrict__ mean, const T* __restrict__ var,
                                          const T* __restrict__ weight,
                                          const T* __restrict__ sum_grad,
                                          const T* __restrict__ sum_grad_normalized,
                                          T* __restrict__ grad_x, int C, index_t L,
                                          index_t n_elements, double count, double eps,
                                          int affine_weight, int training) {
    for (index_t i = grid_start(); i < n_elements; i += grid_stride()) {
        const int c = static_cast<int>(i / L % C);
        const double inverse_std = 1.0 / sqrt(static_cast<double>(var[c]) + eps);
        double g = grad_y[i];
        if (training) {
            const double normalized = (x[i] - static_cast<double>(mean[c])) * inverse_std;
            g -= (sum_grad[c] + normalized * sum_grad_normalized[c]) / count;
        }
        const double scale = affine_weight ? inverse_std * weight[c] : inverse_std;
        grad_x[i] = static_cast<T>(g * scale);
    }
}

}  // namespace fastcnn
