// The matrix product C (+)= A B that linear and conv2d's im2col share (gemm.hpp).
// Algorithm: a blocked GEMM of our own: per K block of KC, panels of A and B packed (zero-
// padded at the edges), an MR x NR register tile of accumulators per micro-kernel call;
// tiles of C over the threads.
//
// Each product is 2 M N K FLOPs over (M K + K N + M N) elements: compute-bound from a few
// dozen rows on. The tile of C a thread computes never changes how an element is summed
// (k in order, in KC blocks), so results do not depend on the thread count. Blocking: a B
// micro-panel (KC x NR) stays in L1 while A micro-panels stream from the A block (MC x KC,
// in L2); the B block (KC x NC) is in L2 as well.
#include "gemm.hpp"
#include "vector.hpp"

#include <algorithm>
#include <type_traits>
#include <vector>

namespace fastcnn {
namespace {

using gemm_kernel::micro_kernel;
using gemm_kernel::MR;

constexpr index_t KC = 256;  // K per block: a B micro-panel of 256 x 32 floats is 32 KiB
constexpr index_t MC = 96;   // rows of C per tile (a multiple of MR)
constexpr index_t NC = 256;  // columns of C per tile (a multiple of NR)


// A thread's packing buffers, kept between calls (no allocation in the steady state).
template <typename T> T *workspace(int which, std::size_t size) {
    thread_local std::vector<T> buffers[2];
    if (buffers[which].size() < size)
        buffers[which].resize(size);
    return buffers[which].data();
}

typedef float float8 __attribute__((vector_size(32)));
typedef float float8_unaligned __attribute__((vector_size(32), aligned(alignof(float)), may_alias));
typedef int int8 __attribute__((vector_size(32)));

// out[j][i] = in[i][j] for an 8 x 8 block of floats (rows `in_stride` / `out_stride` apart):
// unpack, shuffle and 128-bit permutes (24 shuffles for 64 elements, AVX's vunpcklps /
// vshufps / vperm2f128), where the element loop stores one float at a time.
[[gnu::always_inline]] inline void transpose_8x8(const float *in, index_t in_stride, float *out,
                                                 index_t out_stride) {
    float8 r[8], t[8];
    for (int i = 0; i < 8; ++i)
        r[i] = *reinterpret_cast<const float8_unaligned *>(in + i * in_stride);
    for (int i = 0; i < 8; i += 2) {
        t[i] = __builtin_shuffle(r[i], r[i + 1], int8{0, 8, 1, 9, 4, 12, 5, 13});
        t[i + 1] = __builtin_shuffle(r[i], r[i + 1], int8{2, 10, 3, 11, 6, 14, 7, 15});
    }
    for (int i = 0; i < 8; i += 4)  // r[i + c]: columns c and c + 4 of rows i .. i + 3
        for (int j = 0; j < 2; ++j) {
            r[i + 2 * j] =
                __builtin_shuffle(t[i + j], t[i + j + 2], int8{0, 1, 8, 9, 4, 5, 12, 13});
            r[i + 2 * j + 1] =
                __builtin_shuffle(t[i + j], t[i + j + 2], int8{2, 3, 10, 11, 6, 7, 14, 15});
        }
    for (int i = 0; i < 4; ++i) {
        *reinterpret_cast<float8_unaligned *>(out + i * out_stride) =
            __builtin_shuffle(r[i], r[i + 4], int8{0, 1, 2, 3, 8, 9, 10, 11});
        *reinterpret_cast<float8_unaligned *>(out + (i + 4) * out_stride) =
            __builtin_shuffle(r[i], r[i + 4], int8{4, 5, 6, 7, 12, 13, 14, 15});
    }
}

// pack and micro_kernel (gemm.hpp) are inlined into the FASTCNN_SIMD clone that calls them
// (else they compile for the baseline target only, as one function called per tile).
//
// dst = ceil(count / W) panels of kc steps of W lanes: panel p, step k, lane r holds
// src[(p W + r) lane_stride + k k_stride], 0 past `count` (the edge tiles' padding).
template <typename T, int W>
[[gnu::always_inline]] inline void pack(const T *src, index_t lane_stride, index_t k_stride,
                                        index_t count, index_t kc, T *dst) {
    for (index_t p = 0; p < count; p += W) {
        const index_t lanes = std::min<index_t>(W, count - p);
        const T *base = src + p * lane_stride;
        T *panel = dst + p * kc;
        if (lanes == W && k_stride == 1) {  // W rows along k: a transpose, in 8 x W blocks
            index_t k = 0;
            if constexpr (std::is_same_v<T, float> && W % 8 == 0)
                for (; k + 8 <= kc; k += 8)
                    for (index_t r = 0; r < W; r += 8)
                        transpose_8x8(base + r * lane_stride + k, lane_stride, panel + k * W + r,
                                      W);
            for (; k + 8 <= kc; k += 8)
                for (index_t r = 0; r < W; ++r)
#pragma GCC unroll 8
                    for (index_t kk = 0; kk < 8; ++kk)
                        panel[(k + kk) * W + r] = base[r * lane_stride + k + kk];
            for (; k < kc; ++k)
                for (index_t r = 0; r < W; ++r)
                    panel[k * W + r] = base[r * lane_stride + k];
        } else if (lanes == W && lane_stride == 1) {  // read each step along the lanes
            for (index_t k = 0; k < kc; ++k)
                for (index_t r = 0; r < W; ++r)
                    panel[k * W + r] = base[k * k_stride + r];
        } else {
            for (index_t k = 0; k < kc; ++k)
                for (index_t r = 0; r < W; ++r)
                    panel[k * W + r] = r < lanes ? base[r * lane_stride + k * k_stride] : T(0);
        }
    }
}

// The tile of C at rows [i0, i0 + rows), columns [j0, j0 + cols): over all of K, then the bias.
template <typename T, int NV>
FASTCNN_SIMD void gemm_tile(const Product<T> &p, index_t i0, index_t rows, index_t j0,
                            index_t cols) {
    constexpr index_t NR = NV * index_t(64 / sizeof(T));
    T *a_pack = workspace<T>(0, std::size_t((rows + MR - 1) / MR * MR * KC));
    T *b_pack = workspace<T>(1, std::size_t((cols + NR - 1) / NR * NR * KC));
    T *c = p.c + i0 * p.ldc + j0;
    for (index_t k0 = 0; k0 < p.K; k0 += KC) {
        const index_t kc = std::min(KC, p.K - k0);
        pack<T, MR>(p.a + i0 * p.a_row_stride + k0 * p.a_k_stride, p.a_row_stride,
                    p.a_k_stride, rows, kc, a_pack);
        pack<T, int(NR)>(p.b + j0 * p.b_column_stride + k0 * p.b_k_stride, p.b_column_stride,
                         p.b_k_stride, cols, kc, b_pack);
        for (index_t jr = 0; jr < cols; jr += NR)
            for (index_t ir = 0; ir < rows; ir += MR)
                micro_kernel<T, NV>(kc, a_pack + ir * kc, b_pack + jr * kc,
                                    c + ir * p.ldc + jr, p.ldc, std::min<index_t>(MR, rows - ir),
                                    std::min(NR, cols - jr), k0 > 0 || p.accumulate);
    }
    for (index_t i = 0; i < rows; ++i) {
        T *row = c + i * p.ldc;
        if (p.K == 0 && !p.accumulate)
            for (index_t j = 0; j < cols; ++j)
                row[j] = T(0);
        if (p.bias != nullptr)
            for (index_t j = 0; j < cols; ++j)
                row[j] += p.bias[j0 + j];
    }
}

// Tiles of MC x NC over the threads; with few tiles, shorter ones (about 4 a thread).
template <typename T, int NV> void gemm_tiles(const Product<T> &p, int threads) {
    const index_t column_tiles = (p.N + NC - 1) / NC;
    index_t tile_rows = MC;
    if (threads > 1) {
        const index_t wanted = (4 * index_t(threads) + column_tiles - 1) / column_tiles;
        const index_t rows = (p.M + wanted - 1) / wanted;
        tile_rows = std::min(MC, std::max<index_t>(MR, (rows + MR - 1) / MR * MR));
    }
    const index_t row_tiles = (p.M + tile_rows - 1) / tile_rows;
    parallel_for(row_tiles * column_tiles, 1, threads, [&](index_t begin, index_t end) {
        for (index_t t = begin; t < end; ++t) {
            const index_t i0 = t / column_tiles * tile_rows, j0 = t % column_tiles * NC;
            gemm_tile<T, NV>(p, i0, std::min(tile_rows, p.M - i0), j0, std::min(NC, p.N - j0));
        }
    });
}

}  // namespace

// AVX-512: a 6 x 2-vector tile (12 accumulators of 32); elsewhere 6 x 1 vector, which is
// 12 AVX2 registers of the 16 (6 x 2 would spill there).
template <typename T> void gemm(const Product<T> &p, int threads) {
    if (p.M == 0 || p.N == 0)
        return;
    if (wide_registers())
        gemm_tiles<T, 2>(p, threads);
    else
        gemm_tiles<T, 1>(p, threads);
}


template void gemm<float>(const Product<float> &, int);
template void gemm<double>(const Product<double> &, int);

}  // namespace fastcnn
