// Activations (ReLU, leaky ReLU, sigmoid, tanh) and dropout, forward and backward, elementwise.
// Algorithm: a grid-stride loop of 16-byte packs (4 floats or 2 doubles) over aligned arrays,
// then the scalar tail; each element reads its inputs once and writes its output once.
#include "common.cuh"

namespace fastcnn {

// Each op: forward(x, parameter) -> y, and backward(grad_y, saved, parameter) -> grad_x,
// where saved is what the backward reads (x for ReLU and leaky ReLU, y for sigmoid and tanh).
template <typename T>
struct Relu {
    // x < 0 ? 0 : x keeps NaN (a comparison with NaN is false)
    __device__ static T forward(T x, T) { return x < T(0) ? T(0) : x; }
    __device__ static T backward(T grad_y, T x, T) { return x > T(0) ? grad_y : T(0); }
};

template <typename T>
struct LeakyRelu {
    __device__ static T forward(T x, T slope) { return x > T(0) ? x : x * slope; }
    __device__ static T backward(T grad_y, T x, T slope) {
        return x > T(0) ? grad_y : grad_y * slope;
    }
};

template <typename T>
struct Sigmoid {
    // exp of a non-positive number never overflows: 1/(1+e^-x) for x >= 0, e^x/(1+e^x) below
    __device__ static T forward(T x, T) {
        T e = exp(-fabs(x));
        return x >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
    }
    __device__ static T backward(T grad_y, T y, T) { return grad_y * y * (T(1) - y); }
};

template <typename T>
struct Tanh {
    __device__ static T forward(T x, T) { return tanh(x); }
    __device__ static T backward(T grad_y, T y, T) { return grad_y * (T(1) - y * y); }
};

// y = op(x) over n elements; packed: x and y are 16-byte aligned (checked by the launcher).
template <typename T, typename Op, bool packed>
__global__ void unary_forward(const T* __restrict__ x, T* __restrict__ y, index_t n, T parameter) {
    constexpr int W = packed ? Lanes<T>::value : 1;
    const index_t packs = n / W;
    for (index_t i = grid_start(); i < packs; i += grid_stride()) {
        Pack<T, W> in = reinterpret_cast<const Pack<T, W>*>(x)[i];
        Pack<T, W> out;
#pragma unroll
        for (int k = 0; k < W; ++k) out.v[k] = Op::forward(in.v[k], parameter);
        reinterpret_cast<Pack<T, W>*>(y)[i] = out;
    }
    for (index_t i = packs * W + grid_start(); i < n; i += grid_stride()) {
        y[i] = Op::forward(x[i], parameter);
    }
}

// grad_x = op'(grad_y, saved) over n elements.
template <typename T, typename Op, bool packed>
__global__ void unary_backward(const T* __restrict__ grad_y, const T* __restrict__ saved,
                               T* __restrict__ grad_x, index_t n, T parameter) {
    constexpr int W = packed ? Lanes<T>::value : 1;
    const index_t packs = n / W;
    for (index_t i = grid_start(); i < packs; i += grid_stride()) {
        Pack<T, W> g = reinterpret_cast<const Pack<T, W>*>(grad_y)[i];
        Pack<T, W> s = reinterpret_cast<const Pack<T, W>*>(saved)[i];
        Pack<T, W> out;
#pragma unroll
        for (int k = 0; k < W; ++k) out.v[k] = Op::backward(g.v[k], s.v[k], parameter);
        reinterpret_cast<Pack<T, W>*>(grad_x)[i] = out;
    }
    for (index_t i = packs * W + grid_start(); i < n; i += grid_stride()) {
        grad_x[i] = Op::backward(grad_y[i], saved[i], parameter);
    }
}

// y = x * mask * scale (the same for the gradient): a dropped NaN stays NaN, as PyTorch.
// mask holds one byte per element (NumPy's bool), 0 or 1.
template <typename T, bool packed>
__global__ void dropout(const T* __restrict__ x, const unsigned char* __restrict__ mask,
                        T* __restrict__ y, index_t n, T scale) {
    constexpr int W = packed ? Lanes<T>::value : 1;
    const index_t packs = n / W;
    for (index_t i = grid_start(); i < packs; i += grid_stride()) {
        Pack<T, W> in = reinterpret_cast<const Pack<T, W>*>(x)[i];
        Pack<unsigned char, W> keep = reinterpret_cast<const Pack<unsigned char, W>*>(mask)[i];
        Pack<T, W> out;
#pragma unroll
        for (int k = 0; k < W; ++k) out.v[k] = in.v[k] * (T(keep.v[k]) * scale);
        reinterpret_cast<Pack<T, W>*>(y)[i] = out;
    }
    for (index_t i = packs * W + grid_start(); i < n; i += grid_stride()) {
        y[i] = x[i] * (T(mask[i]) * scale);
    }
}

}  // namespace fastcnn
