// 2-D convolution (cross-correlation, NCHW, groups, stride, padding, dilation): forward,
// input gradient and weight gradient. Algorithms: "direct", one thread per output element
// summing its taps in a fixed order (the baseline); "implicit_gemm" (forward), the GEMM
// y[m, k] = sum_d A[m, d] B[d, k] over M = N*P*Q output positions, K filters and depth
// D = C/groups * R * S, with A gathered from x on the fly (no im2col buffer): shared-memory
// tiles of BM x BK and BK x BN, double-buffered, TM x TN outputs per thread in registers.
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

// The implicit GEMM forward. Grid: (M / BM, K/groups / BN, groups); block: (BM / TM) * (BN /
// TN) threads, each loading BK * BM / threads elements of A and BK * BN / threads of B per
// depth step and computing a TM x TN block of outputs. Per depth step of BK: 2 * TM * TN *
// BK FLOPs a thread against (TM + TN) * BK shared loads (TM = TN = 8: 8 FLOPs a load).
template <typename T, int BM, int BN, int BK, int TM, int TN, bool with_bias>
__global__ void __launch_bounds__((BM / TM) * (BN / TN))
conv2d_forward_implicit_gemm(const T* __restrict__ x, const T* __restrict__ weight,
                             const T* __restrict__ bias, T* __restrict__ y, CONV_SHAPE) {
    constexpr int THREADS = (BM / TM) * (BN / TN);
    constexpr int A_PER = BK * BM / THREADS;  // A elements a thread loads per depth step
    constexpr int B_PER = BK * BN / THREADS;
    static_assert(THREADS % BM == 0 && A_PER * THREADS == BK * BM, "A tile loading");
    static_assert(B_PER * THREADS == BK * BN && BK % B_PER == 0, "B tile loading");
    const ConvShape g CONV_ARGUMENTS;
    const int Cg = g.channels_per_group(), Kg = g.filters_per_group();
    const int RS = g.R * g.S, D = Cg * RS;
    const index_t PQ = static_cast<index_t>(g.P) * g.Q, M = g.N * PQ;
    const int group = blockIdx.z;
    const index_t m0 = static_cast<index_t>(blockIdx.x) * BM;
    const int k0 = blockIdx.y * BN;

    // shared: A as [2][BK][BM], B as [2][BK][BN] (double-buffered)
    T* As = dynamic_shared<T>();
    T* Bs = As + 2 * BK * BM;

    // This thread's A row (one output position) and its first depth index within a step.
    const int a_row = threadIdx.x % BM, a_depth = threadIdx.x / BM * A_PER;
    const index_t m_load = m0 + a_row;
    const bool m_inside = m_load < M;
    const index_t n_load = m_inside ? m_load / PQ : 0;
    const int pq = static_cast<int>(m_inside ? m_load % PQ : 0);
    const int h_origin = pq / g.Q * g.stride_h - g.pad_h;
    const int w_origin = pq % g.Q * g.stride_w - g.pad_w;
    const T* x_image = x + (n_load * g.C + static_cast<index_t>(group) * Cg) * g.H * g.W;
    // This thread's B column (one filter) and its first depth index within a step.
    const int b_column = threadIdx.x / (BK / B_PER), b_depth = threadIdx.x % (BK / B_PER) * B_PER;
    const int k_load = k0 + b_column;
    const T* filter = weight + (static_cast<index_t>(group) * Kg + k_load) * D;

    T a_next[A_PER], b_next[B_PER];
    auto load = [&](int d0) {
#pragma unroll
        for (int i = 0; i < A_PER; ++i) {
            const int d = d0 + a_depth + i;
            T value = T(0);
            if (m_inside && d < D) {
                const int c = d / RS, rs = d % RS;
                const int h = h_origin + rs / g.S * g.dilation_h;
                const int w = w_origin + rs % g.S * g.dilation_w;
                if (h >= 0 && h < g.H && w >= 0 && w < g.W) {
                    value = x_image[(static_cast<index_t>(c) * g.H + h) * g.W + w];
                }
            }
            a_next[i] = value;
        }
#pragma unroll
        for (int i = 0; i < B_PER; ++i) {
            const int d = d0 + b_depth + i;
            b_next[i] = (k_load < Kg && d < D) ? filter[d] : T(0);
        }
    };
    auto store = [&](int buffer) {
#pragma unroll
        for (int i = 0; i < A_PER; ++i) As[(buffer * BK + a_depth + i) * BM + a_row] = a_next[i];
#pragma unroll
        for (int i = 0; i < B_PER; ++i) Bs[(buffer * BK + b_depth + i) * BN + b_column] = b_next[i];
    };

    // This thread's outputs: rows ty*TM.., columns tx*TN.. of the block's tile.
    const int tx = threadIdx.x % (BN / TN), ty = threadIdx.x / (BN / TN);
    T accumulator[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) accumulator[i][j] = T(0);

    load(0);
    store(0);
    __syncthreads();
    int buffer = 0;
    for (int d0 = 0; d0 < D; d0 += BK) {
        const bool more = d0 + BK < D;
        if (more) load(d0 + BK);  // global loads in flight while this step computes
        const T* a = As + buffer * BK * BM + ty * TM;
        const T* b = Bs + buffer * BK * BN + tx * TN;
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            T a_fragment[TM], b_fragment[TN];
#pragma unroll
            for (int i = 0; i < TM; ++i) a_fragment[i] = a[kk * BM + i];
#pragma unroll
            for (int j = 0; j < TN; ++j) b_fragment[j] = b[kk * BN + j];
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) accumulator[i][j] += a_fragment[i] * b_fragment[j];
        }
        if (more) store(buffer ^ 1);
        __syncthreads();
        buffer ^= 1;
    }

#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const index_t m = m0 + ty * TM + i;
        if (m >= M) continue;
        const index_t n = m / PQ, position = m % PQ;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const int k = k0 + tx * TN + j;
            if (k >= Kg) continue;
            const int filter_index = group * Kg + k;
            T value = accumulator[i][j];
            if (with_bias) value += bias[filter_index];
            y[(n * g.K + filter_index) * PQ + position] = value;
        }
    }
}

}  // namespace fastcnn
