// The SIMD path the FASTCNN_SIMD clones take on this CPU, as show_config() reports it.
// Algorithm: the same feature tests as the loader's resolver (x86-64-v4, x86-64-v3).
#include "common.hpp"

namespace fastcnn {

const char *simd_path() {
#ifdef FASTCNN_SIMD_CLONES
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
        return "avx512";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return "avx2";
#endif
    return "baseline";
}

}  // namespace fastcnn
