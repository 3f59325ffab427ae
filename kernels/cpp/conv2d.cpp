// 2-D convolution (NCHW, any stride, padding, dilation and groups), forward and backward.
// Algorithms: "direct", per output plane row updates y[p, :] += w * x[ih, off + q * stride];
// "im2col", per image and group one GEMM over the unfolded input (gemm.hpp).
//
// Each thread owns whole planes of what it writes (forward: y[n, k]; input gradient:
// grad_x[n, c]; weight gradient: grad_w[k, c]), so no two threads touch one element and
// the sums run in a fixed order: bitwise the same result on every run and thread count.
// Work: N*K*P*Q*(C/G)*R*S multiply-adds a direction. The row loops are unit-stride for
// stride 1, where the compiler vectorises them; the planes are L1/L2-resident.
#include <vector>

#include "gemm.hpp"
#include "kernels.hpp"

namespace fastcnn {
namespace {

// The outputs q in [first, last) whose tap iw = q * stride + offset lies in [0, size).
struct Span {
    index_t first, last;
};

inline Span valid_outputs(index_t offset, index_t stride, index_t size, index_t outputs) {
    const index_t first = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
    const index_t last = size - offset <= 0 ? 0 : (size - offset + stride - 1) / stride;
    return {first, std::min(last, outputs)};
}

// Multiply-adds a piece of work should have before it is worth a thread of its own.
constexpr index_t PIECE_WORK = index_t(1) << 16;

inline index_t planes_per_piece(index_t work_per_plane) {
    return std::max<index_t>(1, PIECE_WORK / std::max<index_t>(1, work_per_plane));
}

// y[n, k] = bias[k] + sum over c, r, s of w[k, c, r, s] * x[n, group's c, shifted]
template <typename T>
FASTCNN_SIMD void forward_plane(const T *x, const T *w, const T *bias, T *y,
                                const ConvShape &g, index_t n, index_t k) {
    const index_t Cg = g.C / g.G, Kg = g.K / g.G, group = k / Kg;
    T *plane = y + (n * g.K + k) * g.P * g.Q;
    const T start = bias ? bias[k] : T(0);
    for (index_t i = 0; i < g.P * g.Q; ++i)
        plane[i] = start;
    for (index_t c = 0; c < Cg; ++c) {
        const T *input = x + (n * g.C + group * Cg + c) * g.H * g.W;
        const T *taps = w + (k * Cg + c) * g.R * g.S;
        for (index_t r = 0; r < g.R; ++r) {
            for (index_t p = 0; p < g.P; ++p) {
                const index_t ih = p * g.sh - g.ph + r * g.dh;
                if (ih < 0 || ih >= g.H)
                    continue;
                const T *row = input + ih * g.W;
                T *out = plane + p * g.Q;
                for (index_t s = 0; s < g.S; ++s) {
                    const T tap = taps[r * g.S + s];
                    const index_t offset = s * g.dw - g.pw;
                    const Span q = valid_outputs(offset, g.sw, g.W, g.Q);
                    if (g.sw == 1) {
                        const T *shifted = row + offset;
                        for (index_t j = q.first; j < q.last; ++j)
                            out[j] += tap * shifted[j];
                    } else {
                        for (index_t j = q.first; j < q.last; ++j)
                            out[j] += tap * row[j * g.sw + offset];
                    }
                }
            }
        }
    }
}

// grad_x[n, c] = sum over the group's k, r, s of w[k, c, r, s] * grad_y[n, k] placed back
// where the forward read it. The plane is this thread's alone.
template <typename T>
FASTCNN_SIMD void input_gradient_plane(const T *grad_y, const T *w, T *grad_x,
                                       const ConvShape &g, index_t n, index_t c) {
    const index_t Cg = g.C / g.G, Kg = g.K / g.G, group = c / Cg, channel = c % Cg;
    T *plane = grad_x + (n * g.C + c) * g.H * g.W;
    for (index_t i = 0; i < g.H * g.W; ++i)
        plane[i] = T(0);
    for (index_t kk = 0; kk < Kg; ++kk) {
        const index_t k = group * Kg + kk;
        const T *gradient = grad_y + (n * g.K + k) * g.P * g.Q;
        const T *taps = w + (k * Cg + channel) * g.R * g.S;
        for (index_t r = 0; r < g.R; ++r) {
            for (index_t p = 0; p < g.P; ++p) {
                const index_t ih = p * g.sh - g.ph + r * g.dh;
                if (ih < 0 || ih >= g.H)
                    continue;
                T *row = plane + ih * g.W;
                const T *in = gradient + p * g.Q;
                for (index_t s = 0; s < g.S; ++s) {
                    const T tap = taps[r * g.S + s];
                    const index_t offset = s * g.dw - g.pw;
                    const Span q = valid_outputs(offset, g.sw, g.W, g.Q);
                    if (g.sw == 1) {
                        T *shifted = row + offset;
                        for (index_t j = q.first; j < q.last; ++j)
                            shifted[j] += tap * in[j];
                    } else {
                        for (index_t j = q.first; j < q.last; ++j)
                            row[j * g.sw + offset] += tap * in[j];
                    }
                }
            }
        }
    }
}

// sum over j of a[j] * b[j * stride], in T with the compiler's vector lanes as partial sums.
template <typename T>
inline T strided_dot(const T *a, const T *b, index_t stride, index_t first, index_t last) {
    T sum = T(0);
    if (stride == 1) {
#pragma omp simd reduction(+ : sum)
        for (index_t j = first; j < last; ++j)
            sum += a[j] * b[j];
    } else {
        for (index_t j = first; j < last; ++j)
            sum += a[j] * b[j * stride];
    }
    return sum;
}

// grad_w[k, c, :, :] = sum over n, p, q of grad_y[n, k, p, q] * x[n, group's c, shifted]:
// each row's dot product in T, the rows' sum in double (N*P rows may be many).
template <typename T>
FASTCNN_SIMD void weight_gradient_plane(const T *grad_y, const T *x, T *grad_w,
                                        const ConvShape &g, index_t k, index_t c,
                                        double *sums) {
    const index_t Cg = g.C / g.G, Kg = g.K / g.G, group = k / Kg;
    for (index_t t = 0; t < g.R * g.S; ++t)
        sums[t] = 0.0;
    for (index_t n = 0; n < g.N; ++n) {
        const T *gradient = grad_y + (n * g.K + k) * g.P * g.Q;
        const T *input = x + (n * g.C + group * Cg + c) * g.H * g.W;
        for (index_t p = 0; p < g.P; ++p) {
            const T *in = gradient + p * g.Q;
            for (index_t r = 0; r < g.R; ++r) {
                const index_t ih = p * g.sh - g.ph + r * g.dh;
                if (ih < 0 || ih >= g.H)
                    continue;
                const T *row = input + ih * g.W;
                for (index_t s = 0; s < g.S; ++s) {
                    const index_t offset = s * g.dw - g.pw;
                    const Span q = valid_outputs(offset, g.sw, g.W, g.Q);
                    if (q.first < q.last)
                        sums[r * g.S + s] += strided_dot(in, row + offset, g.sw, q.first, q.last);
                }
            }
        }
    }
    T *out = grad_w + (k * Cg + c) * g.R * g.S;
    for (index_t t = 0; t < g.R * g.S; ++t)
        out[t] = T(sums[t]);
}

// grad_bias[k] = sum over n, p, q of grad_y[n, k, p, q], in double.
template <typename T>
FASTCNN_SIMD void bias_gradient_channel(const T *grad_y, T *grad_bias, const ConvShape &g,
                                        index_t k) {
    double total = 0.0;
    for (index_t n = 0; n < g.N; ++n) {
        const T *plane = grad_y + (n * g.K + k) * g.P * g.Q;
#pragma omp simd reduction(+ : total)
        for (index_t i = 0; i < g.P * g.Q; ++i)
            total += double(plane[i]);
    }
    grad_bias[k] = T(total);
}

// ---------------------------------------------------------------------------- im2col

// A 1x1 convolution with stride 1 and no padding reads x as it is: no unfolding.
inline bool pointwise(const ConvShape &g) {
    return g.R == 1 && g.S == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0;
}

// This thread's unfolding buffer, kept between calls.
template <typename T> T *unfold_buffer(std::size_t size) {
    thread_local std::vector<T> buffer;
    if (buffer.size() < size)
        buffer.resize(size);
    return buffer.data();
}

// col[(c R + r) S + s][p Q + q] = x[c, p sh - ph + r dh, q sw - pw + s dw], 0 in the padding,
// for the Cg planes of one image's group.
template <typename T>
FASTCNN_SIMD void im2col(const T *x, T *col, const ConvShape &g, index_t channels) {
    for (index_t c = 0; c < channels; ++c)
        for (index_t r = 0; r < g.R; ++r)
            for (index_t s = 0; s < g.S; ++s) {
                T *row = col + ((c * g.R + r) * g.S + s) * g.P * g.Q;
                const index_t offset = s * g.dw - g.pw;
                const Span q = valid_outputs(offset, g.sw, g.W, g.Q);
                for (index_t p = 0; p < g.P; ++p) {
                    T *out = row + p * g.Q;
                    const index_t ih = p * g.sh - g.ph + r * g.dh;
                    if (ih < 0 || ih >= g.H || q.first >= q.last) {
                        for (index_t j = 0; j < g.Q; ++j)
                            out[j] = T(0);
                        continue;
                    }
                    const T *in = x + (c * g.H + ih) * g.W + offset;
                    for (index_t j = 0; j < q.first; ++j)
                        out[j] = T(0);
                    if (g.sw == 1)
                        for (index_t j = q.first; j < q.last; ++j)
                            out[j] = in[j];
                    else
                        for (index_t j = q.first; j < q.last; ++j)
                            out[j] = in[j * g.sw];
                    for (index_t j = q.last; j < g.Q; ++j)
                        out[j] = T(0);
                }
            }
}

// The adjoint: grad_x[c, ih, iw] += col[...] over every tap that read it, in a fixed order,
// into the (zeroed) Cg planes of one image's group, which belong to this thread alone.
template <typename T>
FASTCNN_SIMD void col2im(const T *col, T *grad_x, const ConvShape &g, index_t channels) {
    for (index_t i = 0; i < channels * g.H * g.W; ++i)
        grad_x[i] = T(0);
    for (index_t c = 0; c < channels; ++c)
        for (index_t r = 0; r < g.R; ++r)
            for (index_t s = 0; s < g.S; ++s) {
                const T *row = col + ((c * g.R + r) * g.S + s) * g.P * g.Q;
                const index_t offset = s * g.dw - g.pw;
                const Span q = valid_outputs(offset, g.sw, g.W, g.Q);
                for (index_t p = 0; p < g.P; ++p) {
                    const index_t ih = p * g.sh - g.ph + r * g.dh;
                    if (ih < 0 || ih >= g.H)
                        continue;
                    const T *in = row + p * g.Q;
                    T *out = grad_x + (c * g.H + ih) * g.W + offset;
                    if (g.sw == 1)
                        for (index_t j = q.first; j < q.last; ++j)
                            out[j] += in[j];
                    else
                        for (index_t j = q.first; j < q.last; ++j)
                            out[j * g.sw] += in[j];
                }
            }
}

template <typename T>
FASTCNN_SIMD void add_channel_bias(T *y, const T *bias, index_t channels, index_t size) {
    for (index_t k = 0; k < channels; ++k)
        for (index_t i = 0; i < size; ++i)
            y[k * size + i] += bias[k];
}

// Images over the threads when there are enough of them (each image's GEMMs on one thread),
// else one image at a time with the GEMM's tiles over the threads.
template <typename Body>
void over_images(const ConvShape &g, int threads, Body body) {
    if (g.N >= threads) {
        parallel_for(g.N, 1, threads, [&](index_t begin, index_t end) {
            for (index_t n = begin; n < end; ++n)
                body(n, 1);
        });
    } else {
        for (index_t n = 0; n < g.N; ++n)
            body(n, threads);
    }
}

}  // namespace

template <typename T>
void conv2d_im2col(const T *x, const T *w, const T *bias, T *y, const ConvShape &g,
                   int threads) {
    const index_t Cg = g.C / g.G, Kg = g.K / g.G, depth = Cg * g.R * g.S, PQ = g.P * g.Q;
    over_images(g, threads, [&](index_t n, int gemm_threads) {
        T *col = pointwise(g) ? nullptr : unfold_buffer<T>(std::size_t(depth * PQ));
        for (index_t group = 0; group < g.G; ++group) {
            const T *input = x + (n * g.C + group * Cg) * g.H * g.W;
            if (col)
                im2col(input, col, g, Cg);
            T *out = y + (n * g.K + group * Kg) * PQ;
            // y[n, group] (Kg x PQ) = w[group] (Kg x depth) col (depth x PQ)
            gemm(Product<T>{w + group * Kg * depth, depth, 1, col ? col : input, PQ, 1, out, PQ,
                            Kg, PQ, depth},
                 gemm_threads);
            if (bias)
                add_channel_bias(out, bias + group * Kg, Kg, PQ);
        }
    });
}

template <typename T>
void conv2d_im2col_input_gradient(const T *grad_y, const T *w, T *grad_x, const ConvShape &g,
                                  int threads) {
    const index_t Cg = g.C / g.G, Kg = g.K / g.G, depth = Cg * g.R * g.S, PQ = g.P * g.Q;
    over_images(g, threads, [&](index_t n, int gemm_threads) {
        T *col = pointwise(g) ? nullptr : unfold_buffer<T>(std::size_t(depth * PQ));
        for (index_t group = 0; group < g.G; ++group) {
            T *planes = grad_x + (n * g.C + group * Cg) * g.H * g.W;
            // col (depth x PQ) = w[group].T (depth x Kg) grad_y[n, group] (Kg x PQ)
            gemm(Product<T>{w + group * Kg * depth, 1, depth,
                            grad_y + (n * g.K + group * Kg) * PQ, PQ, 1, col ? col : planes, PQ,
                            depth, PQ, Kg},
                 gemm_threads);
            if (col)
                col2im(col, planes, g, Cg);
        }
    });
}

template <typename T>
void conv2d_im2col_weight_gradient(const T *grad_y, const T *x, T *grad_w, const ConvShape &g,
                                   int threads) {
    const index_t Cg = g.C / g.G, Kg = g.K / g.G, depth = Cg * g.R * g.S, PQ = g.P * g.Q;
    const index_t size = g.K * depth;
    // Each of `parts` runs of images sums into its own copy (the first into grad_w itself),
    // then the copies are added in order: a fixed order for a given thread count.
    const index_t parts = g.N >= threads ? threads : 1;
    std::vector<T> copies(std::size_t((parts - 1) * size));
    const int gemm_threads = parts == 1 ? threads : 1;
    auto run = [&](index_t part) {
        T *sums = part == 0 ? grad_w : copies.data() + (part - 1) * size;
        T *col = pointwise(g) ? nullptr : unfold_buffer<T>(std::size_t(depth * PQ));
        for (index_t n = part * g.N / parts; n < (part + 1) * g.N / parts; ++n)
            for (index_t group = 0; group < g.G; ++group) {
                const T *input = x + (n * g.C + group * Cg) * g.H * g.W;
                if (col)
                    im2col(input, col, g, Cg);
                const T *unfolded = col ? col : input;
                // sums[group] (Kg x depth) += grad_y[n, group] (Kg x PQ) col.T (PQ x depth)
                Product<T> product{grad_y + (n * g.K + group * Kg) * PQ, PQ, 1, unfolded, 1, PQ,
                                   sums + group * Kg * depth, depth, Kg, depth, PQ};
                product.accumulate = n > part * g.N / parts;
                gemm(product, gemm_threads);
            }
    };
    if (g.N == 0) {
        for (index_t i = 0; i < size; ++i)
            grad_w[i] = T(0);
        return;
    }
    if (parts == 1) {
        run(0);
    } else {
#pragma omp parallel for num_threads(int(parts)) schedule(static, 1)
        for (index_t part = 0; part < parts; ++part)
            run(part);
    }
    for (index_t part = 1; part < parts; ++part) {
        const T *copy = copies.data() + (part - 1) * size;
        for (index_t i = 0; i < size; ++i)
            grad_w[i] += copy[i];
    }
}

template <typename T>
void conv2d_direct(const T *x, const T *w, const T *bias, T *y, const ConvShape &g,
                   int threads) {
    const index_t work = g.P * g.Q * (g.C / g.G) * g.R * g.S;
    parallel_for(g.N * g.K, planes_per_piece(work), threads, [&](index_t begin, index_t end) {
        for (index_t plane = begin; plane < end; ++plane)
            forward_plane(x, w, bias, y, g, plane / g.K, plane % g.K);
    });
}

template <typename T>
void conv2d_direct_input_gradient(const T *grad_y, const T *w, T *grad_x, const ConvShape &g,
                                  int threads) {
    const index_t work = g.P * g.Q * (g.K / g.G) * g.R * g.S;
    parallel_for(g.N * g.C, planes_per_piece(work), threads, [&](index_t begin, index_t end) {
        for (index_t plane = begin; plane < end; ++plane)
            input_gradient_plane(grad_y, w, grad_x, g, plane / g.C, plane % g.C);
    });
}

template <typename T>
void conv2d_direct_weight_gradient(const T *grad_y, const T *x, T *grad_w, const ConvShape &g,
                                   int threads) {
    const index_t Cg = g.C / g.G;
    const index_t work = g.N * g.P * g.Q * g.R * g.S;
    parallel_for(g.K * Cg, planes_per_piece(work), threads, [&](index_t begin, index_t end) {
        std::vector<double> sums(std::size_t(g.R * g.S));
        for (index_t pair = begin; pair < end; ++pair)
            weight_gradient_plane(grad_y, x, grad_w, g, pair / Cg, pair % Cg, sums.data());
    });
}

template <typename T>
void conv2d_bias_gradient(const T *grad_y, T *grad_bias, const ConvShape &g, int threads) {
    parallel_for(g.K, planes_per_piece(g.N * g.P * g.Q), threads,
                 [&](index_t begin, index_t end) {
                     for (index_t k = begin; k < end; ++k)
                         bias_gradient_channel(grad_y, grad_bias, g, k);
                 });
}

#define FASTCNN_CONV2D(T)                                                                        \
    template void conv2d_direct<T>(const T *, const T *, const T *, T *, const ConvShape &, int); \
    template void conv2d_direct_input_gradient<T>(const T *, const T *, T *, const ConvShape &,  \
                                                  int);                                          \
    template void conv2d_direct_weight_gradient<T>(const T *, const T *, T *, const ConvShape &, \
                                                   int);                                         \
    template void conv2d_bias_gradient<T>(const T *, T *, const ConvShape &, int);              \
    template void conv2d_im2col<T>(const T *, const T *, const T *, T *, const ConvShape &, int); \
    template void conv2d_im2col_input_gradient<T>(const T *, const T *, T *, const ConvShape &,  \
                                                  int);                                          \
    template void conv2d_im2col_weight_gradient<T>(const T *, const T *, T *, const ConvShape &, \
                                                   int);
FASTCNN_CONV2D(float)
FASTCNN_CONV2D(double)

}  // namespace fastcnn
