// GCC / Clang vectors of 64 bytes, 16 floats or 8 doubles: one AVX-512 register, two AVX2
// ones, four SSE ones, so one source serves every FASTCNN_SIMD clone. The unaligned twins
// (as immintrin.h's __m512_u) load and store anywhere.
#pragma once

#include <cstring>

#include "common.hpp"

namespace fastcnn {

typedef float float_vector __attribute__((vector_size(64)));
typedef double double_vector __attribute__((vector_size(64)));
typedef float float_vector_unaligned
    __attribute__((vector_size(64), aligned(alignof(float)), may_alias));
typedef double double_vector_unaligned
    __attribute__((vector_size(64), aligned(alignof(double)), may_alias));

template <typename T> struct Vector;
template <> struct Vector<float> {
    using type = float_vector;
    using unaligned = float_vector_unaligned;
};
template <> struct Vector<double> {
    using type = double_vector;
    using unaligned = double_vector_unaligned;
};

// Whether the FASTCNN_SIMD clones run AVX-512 here: 32 vector registers, where AVX2 has 16
// (of half the width), so register tiles take twice the vectors.
inline bool wide_registers() {
    static const bool wide = std::strcmp(simd_path(), "avx512") == 0;
    return wide;
}

}  // namespace fastcnn
