// 2-D convolution (cross-correlation, NCHW, groups, stride, padding, dilation): forward,
// input gradient and weight gradient. Algorithm "direct": one thread per output element,
// summing its taps in a fixed order (deterministic; the reference-shaped baseline the tiled
// implicit-GEMM kernels are measured against).
#include "common.cuh"

namespace fastcnn {

// A convolution: x (N, C, H, W), weight (K, C / groups, R, S), y (N, K, P, Q). Kernels take
// it as plain arguments (CONV_SHAPE) and rebuild it (CONV_ARGUMENTS).
struct ConvShape {
    int N, C, H, W, K, R, S, P, Q, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
        groups;
    __device__ int channels_per_group() const { return C / groups; }
    __device__ int filters_per_group() const { return K / groups; }
};

#define CONV_SHAPE                                                                         \
    int N, int C, int H, int W, int K, int R, int S, int P, int Q, int stride_h,            \
        int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, int groups
#define CONV_ARGUMENTS                                                                     \
    {N, C, H, W, K, R, S, P, Q, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, \
     groups}

// y[n, k, p, q] = bias[k] + sum over c, r, s of x[n, c, h, w] * weight[k, c, r, s].
template <typename T, bool with_bias>
__global__ void conv2d_forward_direct(const T* __restrict__ x, const T* __restrict__ weight,
                                      const T* __restrict__ bias, T* __restrict__ y,
                                      CONV_SHAPE) {
    const ConvShape g CONV_ARGUMENTS;
    const index_t outputs = static_cast<index_t>(g.N) * g.K * g.P * g.Q;
    const int Cg = g.channels_per_group(), Kg = g.filters_per_group();
    for (index_t i = grid_start(); i < outputs; i += grid_stride()) {
        const int q = static_cast<int>(i % g.Q), p = static_cast<int>(i / g.Q % g.P);
        const int k = static_cast<int>(i / (static_cast<index_t>(g.P) * g.Q) % g.K);
        const index_t n = i / (static_cast<index_t>(g.K) * g.P * g.Q);
        const int c0 = k / Kg * Cg;
        T total = T(0);
        for (int c = 0; c < Cg; ++c) {
            const T* plane = x + (n * g.C + c0 + c) * g.H * g.W;
            const T* filter = weight + (static_cast<index_t>(k) * Cg + c) * g.R * g.S;
            for (int r = 0; r < g.R; ++r) {
                const int h = p * g.stride_h - g.pad_h + r * g.dilation_h;
                if (h < 0 || h >= g.H) continue;
                for (int s = 0; s < g.S; ++s) {
                    const int w = q * g.stride_w - g.pad_w + s * g.dilation_w;
                    if (w >= 0 && w < g.W) {
                        total += plane[static_cast<index_t>(h) * g.W + w] * filter[r * g.S + s];
                    }
                }
            }
        }
        y[i] = with_bias ? total + bias[k] : total;
    }
}

// grad_x[n, c, h, w] = sum over the k of c's group and the taps (r, s) whose output (p, q)
// reads (h, w): h = p * stride - pad + r * dilation.
template <typename T>
__global__ void conv2d_input_gradient_direct(const T* __restrict__ grad_y,
                                             const T* __restrict__ weight,
                                             T* __restrict__ grad_x, CONV_SHAPE) {
    const ConvShape g CONV_ARGUMENTS;
    const index_t inputs = static_cast<index_t>(g.N) * g.C * g.H * g.W;
    const int Cg = g.channels_per_group(), Kg = g.filters_per_group();
    for (index_t i = grid_start(); i < inputs; i += grid_stride()) {
        const int w = static_cast<int>(i % g.W), h = static_cast<int>(i / g.W % g.H);
        const int c = static_cast<int>(i / (static_cast<index_t>(g.H) * g.W) % g.C);
        const index_t n = i / (static_cast<index_t>(g.C) * g.H * g.W);
        const int k0 = c / Cg * Kg, c_in_group = c % Cg;
        T total = T(0);
        for (int k = k0; k < k0 + Kg; ++k) {
            const T* plane = grad_y + (n * g.K + k) * g.P * g.Q;
            const T* filter = weight + (static_cast<index_t>(k) * Cg + c_in_group) * g.R * g.S;
            for (int r = 0; r < g.R; ++r) {
                const int ph = h + g.pad_h - r * g.dilation_h;
                if (ph < 0 || ph % g.stride_h) continue;
                const int p = ph / g.stride_h;
                if (p >= g.P) continue;
                for (int s = 0; s < g.S; ++s) {
                    const int qw = w + g.pad_w - s * g.dilation_w;
                    if (qw < 0 || qw % g.stride_w) continue;
                    const int q = qw / g.stride_w;
                    if (q < g.Q) total += plane[static_cast<index_t>(p) * g.Q + q] * filter[r * g.S + s];
                }
            }
        }
        grad_x[i] = total;
    }
}

// grad_weight[k, c, r, s] = sum over n, p, q of grad_y[n, k, p, q] * x[n, c0 + c, h, w].
// Accumulated in double: a weight sums N * P * Q products.
template <typename T>
__global__ void conv2d_weight_gradient_direct(const T* __restrict__ grad_y,
                                              const T* __restrict__ x,
                                              T* __restrict__ grad_weight, CONV_SHAPE) {
    const ConvShape g CONV_ARGUMENTS;
    const int Cg = g.channels_per_group(), Kg = g.filters_per_group();
    const index_t weights = static_cast<index_t>(g.K) * Cg * g.R * g.S;
    for (index_t i = grid_start(); i < weights; i += grid_stride()) {
        const int s = static_cast<int>(i % g.S), r = static_cast<int>(i / g.S % g.R);
        const int c = static_cast<int>(i / (static_cast<index_t>(g.R) * g.S) % Cg);
        const int k = static_cast<int>(i / (static_cast<index_t>(Cg) * g.R * g.S));
        const int channel = k / Kg * Cg + c;
        double total = 0.0;
        for (int n = 0; n < g.N; ++n) {
            const T* plane = x + (static_cast<index_t>(n) * g.C + channel) * g.H * g.W;
            const T* gradient = grad_y + (static_cast<index_t>(n) * g.K + k) * g.P * g.Q;
            for (int p = 0; p < g.P; ++p) {
                const int h = p * g.stride_h - g.pad_h + r * g.dilation_h;
                if (h < 0 || h >= g.H) continue;
                for (int q = 0; q < g.Q; ++q) {
                    const int w = q * g.stride_w - g.pad_w + s * g.dilation_w;
                    if (w >= 0 && w < g.W) {
                        total += static_cast<double>(gradient[static_cast<index_t>(p) * g.Q + q]) *
                                 plane[static_cast<index_t>(h) * g.W + w];
                    }
                }
            }
        }
        grad_weight[i] = static_cast<T>(total);
    }
}

// grad_bias[k] = sum over n, p, q of grad_y[n, k, p, q], in double.
template <typename T>
__global__ void conv2d_bias_gradient(const T* __restrict__ grad_y, T* __restrict__ grad_bias,
                                     int N, int K, index_t plane_size) {
    for (index_t k = grid_start(); k < K; k += grid_stride()) {
        double total = 0.0;
        for (int n = 0; n < N; ++n) {
            const T* plane = grad_y + (static_cast<index_t>(n) * K + k) * plane_size;
            for (index_t j = 0; j < plane_size; ++j) total += plane[j];
        }
        grad_bias[k] = static_cast<T>(total);
    }
}

}  // namespace fastcnn
