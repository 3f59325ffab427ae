// 2-D max and average pooling over NCHW planes, forward and backward, PyTorch's rules.
// Algorithm: one thread per output in the forward; the backward gathers (one thread per input
// element finds the windows that hold it), so no two threads write one element and the
// result is deterministic without atomics.
#include "common.cuh"

namespace fastcnn {

// A pooling window: planes = N * C, each H x W in, P x Q out, R x S taps. Kernels take it
// as plain arguments (POOL_SHAPE) and rebuild it (POOL_ARGUMENTS).
struct PoolShape {
    index_t planes;
    int H, W, P, Q, R, S, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
};

#define POOL_SHAPE                                                                        \
    index_t planes, int H, int W, int P, int Q, int R, int S, int stride_h, int stride_w, \
        int pad_h, int pad_w, int dilation_h, int dilation_w
#define POOL_ARGUMENTS \
    {planes, H, W, P, Q, R, S, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w}

// The tap PyTorch reports: the last NaN if the window holds one, else the first maximum;
// a window of -inf reports its first tap inside x, one wholly in the padding -inf and -1.
template <typename T>
__device__ void window_max(const T* __restrict__ plane, const PoolShape& g, int p, int q,
                           T& best, long long& where) {
    best = -INFINITY;
    where = -1;
    bool seen_nan = false;
    for (int r = 0; r < g.R; ++r) {
        const int h = p * g.stride_h - g.pad_h + r * g.dilation_h;
        if (h < 0 || h >= g.H) continue;
        for (int s = 0; s < g.S; ++s) {
            const int w = q * g.stride_w - g.pad_w + s * g.dilation_w;
            if (w < 0 || w >= g.W) continue;
            const T value = plane[static_cast<index_t>(h) * g.W + w];
            const long long position = static_cast<long long>(h) * g.W + w;
            if (value != value) {
                best = value;
                where = position;
                seen_nan = true;
            } else if (!seen_nan && (where < 0 || value > best)) {
                best = value;
                where = position;
            }
        }
    }
}

template <typename T, bool with_indices>
__global__ void max_pool2d_forward(const T* __restrict__ x, T* __restrict__ y,
                                   long long* __restrict__ indices, POOL_SHAPE) {
    const PoolShape g POOL_ARGUMENTS;
    const index_t outputs = g.planes * g.P * g.Q;
    for (index_t i = grid_start(); i < outputs; i += grid_stride()) {
        const index_t plane = i / (static_cast<index_t>(g.P) * g.Q);
        const int p = static_cast<int>(i / g.Q % g.P), q = static_cast<int>(i % g.Q);
        T best;
        long long where;
        window_max(x + plane * g.H * g.W, g, p, q, best, where);
        y[i] = best;
        if (with_indices) indices[i] = where;
    }
}

// grad_x[z] = sum of grad_y over the windows whose recorded maximum is z.
template <typename T>
__global__ void max_pool2d_backward(const T* __restrict__ grad_y,
                                    const long long* __restrict__ indices,
                                    T* __restrict__ grad_x, POOL_SHAPE) {
    const PoolShape g POOL_ARGUMENTS;
    const index_t inputs = g.planes * g.H * g.W;
    for (index_t i = grid_start(); i < inputs; i += grid_stride()) {
        const index_t plane = i / (static_cast<index_t>(g.H) * g.W);
        const int h = static_cast<int>(i / g.W % g.H), w = static_cast<int>(i % g.W);
        const long long position = static_cast<long long>(h) * g.W + w;
        const index_t base = plane * g.P * g.Q;
        T total = T(0);
        for (int r = 0; r < g.R; ++r) {
            const int ph = h + g.pad_h - r * g.dilation_h;
            if (ph < 0 || ph % g.stride_h) continue;
            const int p = ph / g.stride_h;
            if (p >= g.P) continue;
            for (int s = 0; s < g.S; ++s) {
                const int qw = w + g.pad_w - s * g.dilation_w;
                if (qw < 0 || qw % g.stride_w) continue;
                const int q = qw / g.stride_w;
                if (q >= g.Q) continue;
                const index_t o = base + static_cast<index_t>(p) * g.Q + q;
                // (r, s) is the one tap of window (p, q) at z: each window counts once
                if (indices[o] == position) total += grad_y[o];
            }
        }
        grad_x[i] = total;
    }
}

// PyTorch's divisor of window (p, q): the window clipped to the padded input, then (without
// count_include_pad) to the input itself; or divisor_override where it is nonzero.
__device__ __forceinline__ int average_divisor(const PoolShape& g, int p, int q,
                                               int count_include_pad, int divisor_override) {
    if (divisor_override) return divisor_override;
    int h0 = p * g.stride_h - g.pad_h, w0 = q * g.stride_w - g.pad_w;
    int h1 = min(h0 + g.R, g.H + g.pad_h), w1 = min(w0 + g.S, g.W + g.pad_w);
    if (count_include_pad) return (h1 - h0) * (w1 - w0);
    h0 = max(h0, 0);
    w0 = max(w0, 0);
    h1 = min(h1, g.H);
    w1 = min(w1, g.W);
    return (h1 - h0) * (w1 - w0);
}

template <typename T>
__global__ void avg_pool2d_forward(const T* __restrict__ x, T* __restrict__ y, POOL_SHAPE,
                                   int count_include_pad, int divisor_override) {
    const PoolShape g POOL_ARGUMENTS;
    const index_t outputs = g.planes * g.P * g.Q;
    for (index_t i = grid_start(); i < outputs; i += grid_stride()) {
        const index_t plane = i / (static_cast<index_t>(g.P) * g.Q);
        const int p = static_cast<int>(i / g.Q % g.P), q = static_cast<int>(i % g.Q);
        const T* in = x + plane * g.H * g.W;
        T total = T(0);
        for (int r = 0; r < g.R; ++r) {
            const int h = p * g.stride_h - g.pad_h + r;
            if (h < 0 || h >= g.H) continue;
            for (int s = 0; s < g.S; ++s) {
                const int w = q * g.stride_w - g.pad_w + s;
                if (w >= 0 && w < g.W) total += in[static_cast<index_t>(h) * g.W + w];
            }
        }
        y[i] = total / T(average_divisor(g, p, q, count_include_pad, divisor_override));
    }
}

// grad_x[z] = sum over the windows holding z of grad_y / divisor.
template <typename T>
__global__ void avg_pool2d_backward(const T* __restrict__ grad_y, T* __restrict__ grad_x,
                                    POOL_SHAPE, int count_include_pad, int divisor_override) {
    const PoolShape g POOL_ARGUMENTS;
    const index_t inputs = g.planes * g.H * g.W;
    for (index_t i = grid_start(); i < inputs; i += grid_stride()) {
        const index_t plane = i / (static_cast<index_t>(g.H) * g.W);
        const int h = static_cast<int>(i / g.W % g.H), w = static_cast<int>(i % g.W);
        const index_t base = plane * g.P * g.Q;
        T total = T(0);
        // windows p with p * stride - pad <= h < p * stride - pad + R
        const int p_first = max(0, (h + g.pad_h - g.R + g.stride_h) / g.stride_h);
        const int p_last = min(g.P - 1, (h + g.pad_h) / g.stride_h);
        const int q_first = max(0, (w + g.pad_w - g.S + g.stride_w) / g.stride_w);
        const int q_last = min(g.Q - 1, (w + g.pad_w) / g.stride_w);
        for (int p = p_first; p <= p_last; ++p) {
            for (int q = q_first; q <= q_last; ++q) {
                const T share = grad_y[base + static_cast<index_t>(p) * g.Q + q];
                total += share / T(average_divisor(g, p, q, count_include_pad, divisor_override));
            }
        }
        grad_x[i] = total;
    }
}

}  // namespace fastcnn
