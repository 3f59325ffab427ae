// A placeholder product (three loops) until the blocked GEMM lands here.
#include "gemm.hpp"

namespace fastcnn {

template <typename T> void gemm(const Product<T> &p, int threads) {
    parallel_for(p.M, 1, threads, [&](index_t begin, index_t end) {
        for (index_t i = begin; i < end; ++i)
            for (index_t j = 0; j < p.N; ++j) {
                T sum = p.accumulate ? p.c[i * p.ldc + j] : T(0);
                for (index_t k = 0; k < p.K; ++k)
                    sum += p.a[i * p.a_row_stride + k * p.a_k_stride] *
                           p.b[k * p.b_k_stride + j * p.b_column_stride];
                p.c[i * p.ldc + j] = sum + (p.bias ? p.bias[j] : T(0));
            }
    });
}

template void gemm<float>(const Product<float> &, int);
template void gemm<double>(const Product<double> &, int);

}  // namespace fastcnn
