// Softmax, log-softmax and softmax cross-entropy (class indices or class probabilities),
// forward and backward, over the rows of (M, C). Algorithm: one block per row (rows grid-
// strided over the blocks): the row's NaN-aware maximum, then sum exp(x - max), both block
// reductions; exp only ever sees x - max <= 0, so any logit size (1e8 included) is safe.
#include "common.cuh"

namespace fastcnn {

// Per row: its maximum, sum exp(x - maximum) and the log of that sum, in every thread.
template <typename T>
struct RowStatistics {
    T maximum, sum, log_sum;
};

template <typename T>
__device__ RowStatistics<T> row_statistics(const T* __restrict__ row, int C, T* scratch) {
    T maximum = -INFINITY;
    for (int c = threadIdx.x; c < C; c += blockDim.x) maximum = NanMax()(maximum, row[c]);
    maximum = block_reduce(maximum, scratch, NanMax());
    T total = T(0);
    for (int c = threadIdx.x; c < C; c += blockDim.x) total += exp(row[c] - maximum);
    total = block_reduce(total, scratch, Sum());
    return {maximum, total, static_cast<T>(log(total))};
}

template <typename T, bool logarithm>
__global__ void softmax_forward(const T* __restrict__ x, T* __restrict__ y, index_t rows, int C) {
    T* scratch = dynamic_shared<T>();
    for (index_t m = blockIdx.x; m < rows; m += gridDim.x) {
        const T* row = x + m * C;
        T* out = y + m * C;
        const RowStatistics<T> s = row_statistics(row, C, scratch);
        if (logarithm) {
            for (int c = threadIdx.x; c < C; c += blockDim.x) out[c] = row[c] - s.maximum - s.log_sum;
        } else {
            const T scale = T(1) / s.sum;
            for (int c = threadIdx.x; c < C; c += blockDim.x) out[c] = exp(row[c] - s.maximum) * scale;
        }
    }
}

// -log p[c] = (max - x[c]) + log sum exp(x - max): both terms >= 0. A class of weight 0 adds
// nothing, also where its p is 0 (a -inf logit).
template <typename T>
__device__ __forceinline__ T weighted_nll(T weight, T maximum, T value, T log_sum) {
    return weight != T(0) ? weight * ((maximum - value) + log_sum) : T(0);
}

// losses[m] = (1 - s) w[label] * -log p[label] + s / C * sum_c w[c] * -log p[c]; 0 for an
// ignored row (label -1).
template <typename T>
__global__ void cross_entropy_forward(const T* __restrict__ logits,
                                      const long long* __restrict__ labels,
                                      const T* __restrict__ weight, double smoothing,
                                      T* __restrict__ losses, index_t rows, int C) {
    T* scratch = dynamic_shared<T>();
    for (index_t m = blockIdx.x; m < rows; m += gridDim.x) {
        const long long label = labels[m];  // the same in every thread: uniform branches
        if (label < 0) {
            if (threadIdx.x == 0) losses[m] = T(0);
            continue;
        }
        const T* row = logits + m * C;
        const RowStatistics<T> s = row_statistics(row, C, scratch);
        T loss = weighted_nll(static_cast<T>((1 - smoothing) * weight[label]), s.maximum,
                              row[label], s.log_sum);
        if (smoothing != 0) {
            T spread = T(0);
            for (int c = threadIdx.x; c < C; c += blockDim.x) {
                spread += weighted_nll(weight[c], s.maximum, row[c], s.log_sum);
            }
            spread = block_reduce(spread, scratch, Sum());
            loss += static_cast<T>(smoothing / C) * spread;
        }
        if (threadIdx.x == 0) losses[m] = loss;
    }
}

// grad[m, c] = row_scale[m] * (mass * softmax[c] - target[c]), the target being
// (1 - s) w[label] on the label plus s / C * w[c] on every class, its mass the sum.
template <typename T>
__global__ void cross_entropy_backward(const T* __restrict__ logits,
                                       const long long* __restrict__ labels,
                                       const T* __restrict__ weight, double smoothing,
                                       const T* __restrict__ row_scale, T* __restrict__ grad,
                                       index_t rows, int C) {
    T* scratch = dynamic_shared<T>();
    for (index_t m = blockIdx.x; m < rows; m += gridDim.x) {
        const long long label = labels[m];
        T* out = grad + m * C;
        if (label < 0) {
            for (int c = threadIdx.x; c < C; c += blockDim.x) out[c] = T(0);
            continue;
        }
        const T* row = logits + m * C;
        const RowStatistics<T> s = row_statistics(row, C, scratch);
        const T on_label = static_cast<T>((1 - smoothing) * weight[label]);
        const T spread = static_cast<T>(smoothing / C);
        T mass = on_label;
        if (smoothing != 0) {
            T weight_sum = T(0);
            for (int c = threadIdx.x; c < C; c += blockDim.x) weight_sum += weight[c];
            mass += spread * block_reduce(weight_sum, scratch, Sum());
        }
        const T scale = row_scale[m] * mass / s.sum;
        const T shift = row_scale[m] * spread;
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            T value = exp(row[c] - s.maximum) * scale - shift * weight[c];
            if (c == label) value -= row_scale[m] * on_label;
            out[c] = value;
        }
    }
}

// losses[m] = sum_c target[m, c] * -log p[c] (class weights and smoothing folded in).
template <typename T>
__global__ void soft_cross_entropy_forward(const T* __restrict__ logits,
                                           const T* __restrict__ targets,
                                           T* __restrict__ losses, index_t rows, int C) {
    T* scratch = dynamic_shared<T>();
    for (index_t m = blockIdx.x; m < rows; m += gridDim.x) {
        const T* row = logits + m * C;
        const T* target = targets + m * C;
        const RowStatistics<T> s = row_statistics(row, C, scratch);
        T loss = T(0);
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            loss += weighted_nll(target[c], s.maximum, row[c], s.log_sum);
        }
        loss = block_reduce(loss, scratch, Sum());
        if (threadIdx.x == 0) losses[m] = loss;
    }
}

template <typename T>
__global__ void soft_cross_entropy_backward(const T* __restrict__ logits,
                                            const T* __restrict__ targets,
                                            const T* __restrict__ row_scale,
                                            T* __restrict__ grad, index_t rows, int C) {
    T* scratch = dynamic_shared<T>();
    for (index_t m = blockIdx.x; m < rows; m += gridDim.x) {
        const T* row = logits + m * C;
        const T* target = targets + m * C;
        const RowStatistics<T> s = row_statistics(row, C, scratch);
        T mass = T(0);
        for (int c = threadIdx.x; c < C; c += blockDim.x) mass += target[c];
        mass = block_reduce(mass, scratch, Sum());
        const T scale = row_scale[m] * mass / s.sum;
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            grad[m * C + c] = exp(row[c] - s.maximum) * scale - row_scale[m] * target[c];
        }
    }
}

}  // namespace fastcnn
