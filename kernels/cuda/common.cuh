// What every fastcnn kernel file shares: index types, 16-byte packs, and the grid-stride loop.
// The same source compiles with NVRTC for the GPU and with g++ for the CPU emulator (cuda-emu).
#pragma once

#include "emulate/portable.cuh"

#ifndef INFINITY  // NVRTC has no math.h (nvcc's runtime header and g++ bring it)
#define INFINITY __int_as_float(0x7f800000)
#endif

namespace fastcnn {

// Element counts and offsets are 64-bit: a tensor may pass 2^31 elements.
using index_t = long long;

// W elements loaded or stored as one aligned access (16 bytes for float x 4 or double x 2):
// an array member indexed only by constants stays in registers.
template <typename T, int W>
struct alignas(sizeof(T) * W) Pack {
    T v[W];
};

// The elements of a 16-byte access.
template <typename T>
struct Lanes {
    static constexpr int value = 16 / sizeof(T);
};

// The first index of this thread and the stride over the whole grid, 64-bit.
__device__ __forceinline__ index_t grid_start() {
    return static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ index_t grid_stride() {
    return static_cast<index_t>(gridDim.x) * blockDim.x;
}

}  // namespace fastcnn

namespace fastcnn {

// The block's dynamic shared memory (the launch's shared_mem bytes), as T.
template <typename T>
__device__ __forceinline__ T* dynamic_shared() {
    FASTCNN_DYNAMIC_SHARED(T, memory);
    return memory;
}

struct Sum {
    template <typename T>
    __device__ T operator()(T a, T b) const { return a + b; }
};

// The larger, NaN if either is NaN (NaN must win every comparison it would lose).
struct NanMax {
    template <typename T>
    __device__ T operator()(T a, T b) const { return (b > a || b != b) ? b : a; }
};

// Combine v over the block; every thread gets the result. The block's threads are a
// multiple of 32; scratch holds one value per warp (blockDim.x / 32, of the dynamic shared
// memory). The warps' partial results combine in warp order in every thread: the result
// does not depend on timing, so a run repeats bitwise.
template <typename T, typename Op>
__device__ T block_reduce(T v, T* scratch, Op op) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
    }
    const int warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    if ((threadIdx.x & 31) == 0) scratch[warp] = v;
    __syncthreads();
    v = scratch[0];
    for (int i = 1; i < warps; ++i) v = op(v, scratch[i]);
    __syncthreads();  // scratch is free again
    return v;
}

}  // namespace fastcnn
