// The matrix product the GEMM-based kernels share (linear, conv2d's im2col): gemm.cpp.
#pragma once

#include "common.hpp"
#include "vector.hpp"

namespace fastcnn {

// C (M x N, row stride ldc) = A (M x K) B (K x N), or C += A B with `accumulate`; A and B
// are read through strides, so either may be a transposed view. `bias`, if not null, is
// added to every row of C (bias[j] to column j).
template <typename T> struct Product {
    const T *a;
    index_t a_row_stride, a_k_stride;
    const T *b;
    index_t b_k_stride, b_column_stride;
    T *c;
    index_t ldc, M, N, K;
    const T *bias = nullptr;
    bool accumulate = false;
};

// The product on `threads` threads (tiles of C spread over them; each element of C is
// summed in the same order whatever the thread count).
template <typename T> void gemm(const Product<T> &p, int threads);

// The register-tile micro-kernel of the blocked GEMM, shared with the kernels that pack their
// own panels (winograd.cpp's 36 products). Inlined into the FASTCNN_SIMD clone that calls it.
namespace gemm_kernel {

constexpr int MR = 6;  // rows of the register tile

// The MR x NR tile (NR = NV vectors) at c: c (+)= a_panel b_panel over kc steps, the
// accumulators in registers; `rows` x `cols` of it are stored (the rest is padding).
template <typename T, int NV>
[[gnu::always_inline]] inline void micro_kernel(index_t kc, const T *a, const T *b, T *c,
                                                index_t ldc, index_t rows, index_t cols,
                                                bool accumulate) {
    using V = typename Vector<T>::type;
    using U = typename Vector<T>::unaligned;
    constexpr int L = int(sizeof(V) / sizeof(T)), NR = NV * L;
    V acc[MR][NV];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v)
            acc[i][v] = V{};
    for (index_t k = 0; k < kc; ++k) {
        V bv[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v)
            bv[v] = *reinterpret_cast<const U *>(b + k * NR + v * L);
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i) {
            const V av = a[k * MR + i] - V{};  // a broadcast (x - 0 keeps -0.0 and NaN)
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v)
                acc[i][v] += av * bv[v];
        }
    }
    if (rows == MR && cols == NR) {
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) {
                U *out = reinterpret_cast<U *>(c + i * ldc + v * L);
                *out = accumulate ? *out + acc[i][v] : acc[i][v];
            }
        return;
    }
    T tile[MR][NR];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v)
            *reinterpret_cast<U *>(&tile[i][v * L]) = acc[i][v];
    for (index_t i = 0; i < rows; ++i)
        for (index_t j = 0; j < cols; ++j)
            c[i * ldc + j] = accumulate ? c[i * ldc + j] + tile[i][j] : tile[i][j];
}

}  // namespace gemm_kernel

}  // namespace fastcnn
