// The matrix product the GEMM-based kernels share (linear, conv2d's im2col): gemm.cpp.
#pragma once

#include "common.hpp"

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

}  // namespace fastcnn
