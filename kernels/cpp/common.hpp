// What every C++ kernel shares: 64-bit indices, run-time SIMD dispatch, and the threads.
// Kernels take raw pointers and plain sizes; the Python layer has validated everything.
#pragma once

#include <algorithm>
#include <cstdint>

namespace fastcnn {

// Signed 64-bit: a tensor may pass 2^31 elements, and a window's offset may go negative.
using index_t = std::int64_t;

// FASTCNN_SIMD before a function compiles it three times, for AVX-512 (x86-64-v4), for
// AVX2 + FMA (x86-64-v3) and for any x86-64, and the loader picks one by the CPU (GCC and
// Clang `target_clones`, resolved once through an ifunc). A wheel built anywhere runs
// anywhere and still gets the wide vectors. Where the attribute does not compile (another
// architecture, no ifunc), CMake leaves FASTCNN_SIMD_CLONES undefined: one build.
#ifdef FASTCNN_SIMD_CLONES
#define FASTCNN_SIMD __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FASTCNN_SIMD
#endif

// The code path FASTCNN_SIMD functions take on this CPU: "avx512", "avx2" or "baseline".
const char *simd_path();

// body(begin, end) over [0, n) in pieces of `grain`, spread over `threads` OpenMP threads
// (a static schedule: each thread takes one run of neighbouring pieces). One piece, or one
// thread, runs here without entering the pool. `threads` comes from Python with every call
// (fastcnn.set_num_threads), so a call from any Python thread uses the same count.
template <typename Body> void parallel_for(index_t n, index_t grain, int threads, Body body) {
    if (threads <= 1 || n <= grain) {
        if (n > 0)
            body(index_t(0), n);
        return;
    }
    const index_t pieces = (n + grain - 1) / grain;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (index_t piece = 0; piece < pieces; ++piece)
        body(piece * grain, std::min(n, piece * grain + grain));
}

}  // namespace fastcnn
