// 2-D convolution (cross-correlation, NCHW, groups, stride, padding, dilation): forward,
// input gradient and weight gradient. Algorithms: "direct", one thread per output element
// summing its taps in a fixed order (the baseline); "implicit_gemm" (forward), the GEMM
// y[m, k] = sum_d A[m, d] B[d, k] over M = N*P*Q output positions, K filters and depth
// D = C/groups * R * S, with A gathered from x on the fly (no im2col buffer): shared-memory
// tiles of BM x BK and BK x BN, double-buffered, TM x TN outputs per thread in registers.
#include "common.cuh"

namespace fastcnn {

// A convolution: x (N, C, H, W), weight (K, C / groups, R, S), y (N, K, P, Q). Kernels take
// it as plain arguments (CONV_SHAPE) and rebuild it (CONV_ARGUMENTS).
struct ConvShape {
    int N, C, H, W, K, R, S, P, Q, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
        groups;
    __device__ int channels_per_group() const { return C / groups; }
    __device__ int filters_per_group() const { return K / groups; }
};

#define CONV_SHAPE                                                                         \
    int N, int C, int H, int W, int K, int R, int S, int P, int Q, int stride_h,            \
        int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, int groups
#define CONV_ARGUMENTS                                                                     \
    {N, C, H, W, K, R, S, P, Q, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, \
     groups}

// y[n, k, p, q] = bias[k] + sum over c, r, s of x[n, c, h, w] * weight[k, c, r, s].
template <typename T, bool with_bias>
__global__ void conv2d_forward_direct(const T* __restrict__ x, const T* __restrict__ weight,
                                      const T* __restrict__ bias, T* __restrict__ y,
                                      CONV_SHAPE) {
    const ConvShape g CONV_ARGUMENTS;
    const index_t outputs = static_cast<index_t>(g.N) * g.K * g.P * g.Q;
    const int Cg = g.channels_per_group(), Kg = g.filters_per_group();
    for (index_t i = grid_start(); i < outputs; i += grid_stride()) {
        const int q = static_cast<int>(i % g.Q), p = static_cast<int>(i / g.Q % g.P);
        const int k = static_cast<int>(i / (static_cast<index_t>(g.P) * g.Q) % g.K);
        const index_t n = i / (static_cast<index_t>(g.K) * g.P * g.Q);
        const int c0 = k / Kg * Cg;
        T total = T(0);
        for (int c = 0; c < Cg; ++c) {
            const T* plane = x + (n * g.C + c0 + c) * g.H * g.W;
            const T* filter = weight + (static_cast<index_t>(k) * Cg + c) * g.R * g.S;
            for (int r = 0; r < g.R; ++r) {
                const int h = p * g.stride_h - g.pad_h + r * g.dilation_h;
                if (h < 0 || h >= g.H) continue;
                for (int s = 0; s < g.S; ++s) {
                    const int w = q * g.stride_w - g.pad_w + s * g.dilation_w;
                    if (w >= 0 && w < g.W) {
                        total += plane[static_cast<index_t>(h) * g.W + w] * filter[r * g.S + s];
                    }
                }
            }
        }
        y[i] = with_bias ? total + bias[k] : total;
    }
}

// grad_x[n, c, h, w] = sum over the k of c's group and the taps (r, s) whose output (p, q)
// reads (h, w): h = p * stride - pad + r * dilation.
template <typename T>
__global__ void conv2d_input_gradient_direct(const T* __restrict__ grad_y,
                                             const T* __restrict__ weight,
                                             T* __restrict__ grad_x, CONV_SHAPE) {
    const ConvShape g CONV_ARGUMENTS;
    const index_t inputs = static_cast<index_t>(g.N) * g.C * g.H * g.W;
    const int Cg = g.channels_per_group(), Kg = g.filters_per_group();
    for (index_t i = grid_start(); i < inputs; i += grid_stride()) {
        const int w = static_cast<int>(i % g.W), h = static_cast<int>(i / g.W % g.H);
        const int c = static_cast<int>(i / (static_cast<index_t>(g.H) * g.W) % g.C);
        const index_t n = i / (static_cast<index_t>(g.C) * g.H * g.W);
        const int k0 = c / Cg * Kg, c_in_group = c % Cg;
        T total = T(0);
        for (int k = k0; k < k0 + Kg; ++k) {
            const T* plane = grad_y + (n * g.K + k) * g.P * g.Q;
            const T* filter = weight + (static_cast<index_t>(k) * Cg + c_in_group) * g.R * g.S;
            for (int r = 0; r < g.R; ++r) {
                const int ph = h + g.pad_h - r * g.dilation_h;
                if (ph < 0 || ph % g.stride_h) continue;
                const int p = ph / g.stride_h;
                if (p >= g.P) continue;
                for (int s = 0; s < g.S; ++s) {
                    const int qw = w + g.pad_w - s * g.dilation_w;
                    if (qw < 0 || qw % g.stride_w) continue;
                    const int q = qw / g.stride_w;
                    if (q < g.Q) total += plane[static_cast<index_t>(p) * g.Q + q] * filter[r * g.S + s];
                }
            }
        }
        grad_x[i] = total;
    }
}

// grad_weight[k, c, r, s] = sum over n, p, q of grad_y[n, k, p, q] * x[n, c0 + c, h, w].
// Accumulated in double: a weight sums N * P * Q products.
template <typename T>
__global__ void conv2d_weight_gradient_direct(const T* __restrict__ grad_y,
                                              const T* __restrict__ x,
                                              T* __restrict__ grad_weight, CONV_SHAPE) {
    const ConvShape g CONV_ARGUMENTS;
    const int Cg = g.channels_per_group(), Kg = g.filters_per_group();
    const index_t weights = static_cast<index_t>(g.K) * Cg * g.R * g.S;
    for (index_t i = grid_start(); i < weights; i += grid_stride()) {
        const int s = static_cast<int>(i % g.S), r = static_cast<int>(i / g.S % g.R);
        const int c = static_cast<int>(i / (static_cast<index_t>(g.R) * g.S) % Cg);
        const int k = static_cast<int>(i / (static_cast<index_t>(Cg) * g.R * g.S));
        const int channel = k / Kg * Cg + c;
        double total = 0.0;
        for (int n = 0; n < g.N; ++n) {
            const T* plane = x + (static_cast<index_t>(n) * g.C + channel) * g.H * g.W;
            const T* gradient = grad_y + (static_cast<index_t>(n) * g.K + k) * g.P * g.Q;
            for (int p = 0; p < g.P; ++p) {
                const int h = p * g.stride_h - g.pad_h + r * g.dilation_h;
                if (h < 0 || h >= g.H) continue;
                for (int q = 0; q < g.Q; ++q) {
                    const int w = q * g.stride_w - g.pad_w + s * g.dilation_w;
                    if (w >= 0 && w < g.W) {
                        total += static_cast<double>(gradient[static_cast<index_t>(p) * g.Q + q]) *
                                 plane[static_cast<index_t>(h) * g.W + w];
                    }
                }
            }
        }
        grad_weight[i] = static_cast<T>(total);
    }
}

// grad_bias[k] = sum over n, p, q of grad_y[n, k, p, q], in double.
template <typename T>
__global__ void conv2d_bias_gradient(const T* __restrict__ grad_y, T* __restrict__ grad_bias,
                                     int N, int K, index_t plane_size) {
    for (index_t k = grid_start(); k < K; k += grid_stride()) {
        double total = 0.0;
        for (int n = 0; n < N; ++n) {
            const T* plane = grad_y + (static_cast<index_t>(n) * K + k) * plane_size;
            for (index_t j = 0; j < plane_size; ++j) total += plane[j];
        }
        grad_bias[k] = static_cast<T>(total);
    }
}

// ---------------------------------------------------------------------------- implicit GEMM
// Blocks of a GEMM kernel an SM should hold at once: 512 threads' worth, which caps the
// registers at 128 a thread (ptxas otherwise caps a 64-thread block at 64 and spills).
#define GEMM_BLOCKS_PER_SM(BM, BN, TM, TN) (512 / ((BM / TM) * (BN / TN)))
// out[row, column] = sum over depth of A[row, depth] * B[depth, column], A and B gathered from
// the tensors by a Problem (forward, input gradient, weight gradient), never materialised.
// A block computes a BM x BN tile: per depth step of BK it loads the A and B tiles into
// shared memory (double-buffered: the next step's global loads are in flight while this one
// computes), each of its (BM / TM) * (BN / TN) threads a TM x TN block of outputs in
// registers: 2 * TM * TN * BK FLOPs against (TM + TN) * BK shared loads, 16-byte ones.
//
// A Problem gives rows(), columns(), depth(), Row row(r) / T a(Row, d) (0 outside), Column
// column(c) / T b(Column, d), and store(r, c, value); a_depth_major says A is contiguous
// along the depth (a thread loads A_PER consecutive depths of one row) rather than the rows
// (consecutive threads load consecutive rows); B is loaded along the depth.
//
// A Problem with gathers_pairs loads both along the rows and columns (BM == BN), so a
// thread's A and B elements of a step are at the same depths, and gives gather(row, column,
// d, a, b) for both at once: a table both read per depth (the input gradient's taps) is
// loaded once, and the step's depth check is one 32-bit compare per pair against the depths
// left. A row or column outside the tile gathers row(0)'s or column(0)'s values: they only
// reach outputs that are never stored. Other problems check each depth index (64-bit) as it
// is used, and zero the elements outside the tile (the forward and weight gradient spill
// with the step's predicates all live at once).
//
// A Problem with a_packs (b_packs) loads A (B) LANES = 16 / sizeof(T) elements at a time, one
// 16-byte load, along the direction a thread loads: a depth-major A and B along the depth
// (a_pack(row, d) / b_pack(column, d): depths d .. d + LANES - 1), any other A along the rows
// (a thread loads LANES consecutive rows at A_PER / LANES depths; a_pack(row, d): rows row ..
// row + LANES - 1, stored to shared memory as one 16-byte store, a warp's 512 bytes
// consecutive). The launch code chooses them only where those elements are contiguous and
// 16-byte aligned (the row length a multiple of LANES, the base pointer aligned), so a pack is
// wholly inside the tile's rows and depths or wholly outside; else the scalar loads above.

template <typename T, int BM, int BN, int BK, int TM, int TN, typename Problem>
__device__ __forceinline__ void gemm_tile(const Problem& problem, index_t row0, int column0,
                                          index_t depth_begin, index_t depth_end) {
    constexpr int THREADS = (BM / TM) * (BN / TN);
    constexpr int A_PER = BK * BM / THREADS;  // A elements a thread loads per depth step
    constexpr int B_PER = BK * BN / THREADS;
    constexpr int LANES = Lanes<T>::value;
    using Pack16 = Pack<T, LANES>;  // one 16-byte load
    // A along the rows in packs: LANES rows at A_DEPTHS depths a thread
    constexpr bool a_row_packs = Problem::a_packs && !Problem::a_depth_major;
    constexpr int A_DEPTHS = a_row_packs ? A_PER / LANES : A_PER;
    static_assert(A_PER * THREADS == BK * BM && BK % A_PER == 0 && THREADS % BM == 0, "A tile");
    static_assert(B_PER * THREADS == BK * BN && BK % B_PER == 0, "B tile");
    static_assert(!Problem::gathers_pairs || (BM == BN && THREADS % BN == 0), "pairs");
    static_assert(!Problem::a_packs || (A_PER % LANES == 0 && BM % LANES == 0), "A packs");
    static_assert(!Problem::b_packs || B_PER % LANES == 0, "B packs");
    static_assert(!Problem::gathers_pairs || !(Problem::a_packs || Problem::b_packs), "packs");
    FASTCNN_DYNAMIC_SHARED(T, As);  // [2][BK][BM], then B as [2][BK][BN]
    T* Bs = As + 2 * BK * BM;

    const int t = threadIdx.x;
    const int a_row = Problem::a_depth_major ? t / (BK / A_PER)
                      : a_row_packs          ? t % (BM / LANES) * LANES
                                             : t % BM;
    const int a_depth = Problem::a_depth_major ? t % (BK / A_PER) * A_PER
                        : a_row_packs          ? t / (BM / LANES) * A_DEPTHS
                                               : t / BM * A_PER;
    const bool a_inside = row0 + a_row < problem.rows();
    const typename Problem::Row row = problem.row(a_inside ? row0 + a_row : 0);
    const int b_column = Problem::gathers_pairs ? t % BN : t / (BK / B_PER);
    const int b_depth = Problem::gathers_pairs ? t / BN * B_PER : t % (BK / B_PER) * B_PER;
    const bool b_inside = column0 + b_column < problem.columns();
    const typename Problem::Column column = problem.column(b_inside ? column0 + b_column : 0);

    // a_next[i]: depth a_depth + i; in row packs a_next[i * LANES + v]: depth a_depth + i,
    // row a_row + v
    T a_next[A_PER], b_next[B_PER];
    auto load = [&](index_t d0) {
        if constexpr (Problem::gathers_pairs) {
            const int left = depth_end - d0 < BK ? static_cast<int>(depth_end - d0) : BK;
            const int depth_left = left - a_depth;
#pragma unroll
            for (int i = 0; i < A_PER; ++i) {
                if (i < depth_left) {
                    problem.gather(row, column, d0 + a_depth + i, a_next[i], b_next[i]);
                } else {
                    a_next[i] = b_next[i] = T(0);
                }
            }
        } else {
            if constexpr (Problem::a_packs) {
                constexpr int STEP = a_row_packs ? 1 : LANES;  // depths a pack spans
#pragma unroll
                for (int i = 0; i < A_PER / LANES; ++i) {
                    const index_t d = d0 + a_depth + i * STEP;
                    Pack16 pack;
                    if (a_inside && d < depth_end) {
                        pack = problem.a_pack(row, d);
                    } else {
#pragma unroll
                        for (int v = 0; v < LANES; ++v) pack.v[v] = T(0);
                    }
#pragma unroll
                    for (int v = 0; v < LANES; ++v) a_next[i * LANES + v] = pack.v[v];
                }
            } else {
#pragma unroll
                for (int i = 0; i < A_PER; ++i) {
                    const index_t d = d0 + a_depth + i;
                    a_next[i] = a_inside && d < depth_end ? problem.a(row, d) : T(0);
                }
            }
            if constexpr (Problem::b_packs) {
#pragma unroll
                for (int i = 0; i < B_PER / LANES; ++i) {
                    const index_t d = d0 + b_depth + i * LANES;
                    Pack16 pack;
                    if (b_inside && d < depth_end) {
                        pack = problem.b_pack(column, d);
                    } else {
#pragma unroll
                        for (int v = 0; v < LANES; ++v) pack.v[v] = T(0);
                    }
#pragma unroll
                    for (int v = 0; v < LANES; ++v) b_next[i * LANES + v] = pack.v[v];
                }
            } else {
#pragma unroll
                for (int i = 0; i < B_PER; ++i) {
                    const index_t d = d0 + b_depth + i;
                    b_next[i] = b_inside && d < depth_end ? problem.b(column, d) : T(0);
                }
            }
        }
    };
    // This thread's first A and B elements, one pointer each (with a_depth and a_row kept
    // apart instead, the 1x1 forward loading both operands in packs spills 16 bytes).
    T* const a_slot = As + a_depth * BM + a_row;
    T* const b_slot = Bs + b_depth * BN + b_column;
    auto store = [&](int buffer) {
        if constexpr (a_row_packs) {
#pragma unroll
            for (int i = 0; i < A_DEPTHS; ++i) {
                Pack16 pack;
#pragma unroll
                for (int v = 0; v < LANES; ++v) pack.v[v] = a_next[i * LANES + v];
                *reinterpret_cast<Pack16*>(a_slot + (buffer * BK + i) * BM) = pack;
            }
        } else {
#pragma unroll
            for (int i = 0; i < A_PER; ++i) a_slot[(buffer * BK + i) * BM] = a_next[i];
        }
#pragma unroll
        for (int i = 0; i < B_PER; ++i) b_slot[(buffer * BK + i) * BN] = b_next[i];
    };

    const int tx = t % (BN / TN), ty = t / (BN / TN);
    T accumulator[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) accumulator[i][j] = T(0);

    load(depth_begin);
    store(0);
    __syncthreads();
    int buffer = 0;
    for (index_t d0 = depth_begin; d0 < depth_end; d0 += BK) {
        const bool more = d0 + BK < depth_end;
        if (more) load(d0 + BK);
        const T* a = As + buffer * BK * BM + ty * TM;
        const T* b = Bs + buffer * BK * BN + tx * TN;
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            T a_fragment[TM], b_fragment[TN];
#pragma unroll
            for (int i = 0; i < TM; ++i) a_fragment[i] = a[kk * BM + i];
#pragma unroll
            for (int j = 0; j < TN; ++j) b_fragment[j] = b[kk * BN + j];
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) accumulator[i][j] += a_fragment[i] * b_fragment[j];
        }
        if (more) store(buffer ^ 1);
        __syncthreads();
        buffer ^= 1;
    }

#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const index_t r = row0 + ty * TM + i;
        if (r >= problem.rows()) continue;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const int c = column0 + tx * TN + j;
            if (c < problem.columns()) problem.store(r, c, accumulator[i][j]);
        }
    }
}

// Forward, per group: rows m = (n, p, q), columns the group's filters k, depth d = (c, r, s).
// taps[d] = (c * H * W + r * dilation_h * W + s * dilation_w, r * dilation_h, s * dilation_w),
// made by the launch code, replaces two integer divisions per gathered element with one
// cached 16-byte load. The weights are contiguous along the depth: b_packs where C/groups *
// R * S is a multiple of the lanes and the weights are 16-byte aligned.
template <typename T, bool with_bias, bool weight_packs>
struct ForwardProblem {
    static constexpr bool a_depth_major = false;  // x is contiguous along q: along the rows
    static constexpr bool gathers_pairs = false;
    static constexpr bool a_packs = false;
    static constexpr bool b_packs = weight_packs;
    using Pack16 = Pack<T, Lanes<T>::value>;
    const T* x;
    const T* weight;
    const T* bias;
    T* y;
    const int4* taps;
    ConvShape g;
    int group;

    __device__ index_t rows() const { return static_cast<index_t>(g.N) * g.P * g.Q; }
    __device__ int columns() const { return g.filters_per_group(); }
    __device__ index_t depth() const { return static_cast<index_t>(g.channels_per_group()) * g.R * g.S; }

    struct Row {
        const T* image;  // x[n, group's first channel]
        index_t origin;  // h0 * W + w0: the window's top-left, which may lie in the padding
        int h0, w0;
    };
    __device__ Row row(index_t m) const {
        const index_t PQ = static_cast<index_t>(g.P) * g.Q;
        const index_t n = m / PQ;
        const int pq = static_cast<int>(m % PQ);
        const int h0 = pq / g.Q * g.stride_h - g.pad_h, w0 = pq % g.Q * g.stride_w - g.pad_w;
        return {x + (n * g.C + static_cast<index_t>(group) * g.channels_per_group()) * g.H * g.W,
                static_cast<index_t>(h0) * g.W + w0, h0, w0};
    }
    __device__ T a(const Row& row, index_t d) const {
        const int4 tap = taps[d];
        const int h = row.h0 + tap.y, w = row.w0 + tap.z;
        if (h < 0 || h >= g.H || w < 0 || w >= g.W) return T(0);
        return row.image[row.origin + tap.x];
    }

    using Column = const T*;  // the filter's weights, contiguous along the depth
    __device__ Column column(int k) const {
        return weight + (static_cast<index_t>(group) * g.filters_per_group() + k) * depth();
    }
    __device__ T b(Column filter, index_t d) const { return filter[d]; }
    __device__ Pack16 b_pack(Column filter, index_t d) const {
        return *reinterpret_cast<const Pack16*>(filter + d);
    }

    __device__ void store(index_t m, int k, T value) const {
        const index_t PQ = static_cast<index_t>(g.P) * g.Q;
        const int filter = group * g.filters_per_group() + k;
        if (with_bias) value += bias[filter];
        y[(m / PQ * g.K + filter) * PQ + m % PQ] = value;
    }
};

// Forward of a 1x1, stride-1, unpadded convolution: A is x itself, (n, c, h*w) with the
// positions contiguous, so the gather is one multiply-add of an offset (no division, no
// bounds check). a_packs where H * W is a multiple of the lanes and x is 16-byte aligned: a
// pack is LANES consecutive positions of one image.
template <typename T, bool with_bias, bool x_packs, bool weight_packs>
struct PointwiseForwardProblem : ForwardProblem<T, with_bias, weight_packs> {
    using Base = ForwardProblem<T, with_bias, weight_packs>;
    static constexpr bool a_packs = x_packs;
    struct Row {
        const T* position;  // x[n, group's first channel, h, w]
    };
    __device__ Row row(index_t m) const {
        const index_t HW = static_cast<index_t>(this->g.H) * this->g.W;
        const index_t n = m / HW;
        const index_t first = (n * this->g.C + static_cast<index_t>(this->group) *
                               this->g.channels_per_group()) * HW;
        return {this->x + first + m % HW};
    }
    __device__ T a(const Row& row, index_t c) const {
        return row.position[c * static_cast<index_t>(this->g.H) * this->g.W];
    }
    __device__ typename Base::Pack16 a_pack(const Row& row, index_t c) const {
        const index_t HW = static_cast<index_t>(this->g.H) * this->g.W;
        return *reinterpret_cast<const typename Base::Pack16*>(row.position + c * HW);
    }
};

// Input gradient, per group and stride phase (stride decomposition): the inputs (h, w) of a
// phase are those with (h + pad) % stride alike, h = h_first + i * stride_h and w = w_first
// + j * stride_w, and only the taps (r, s) with r * dilation_h = h_first + pad_h (mod
// stride_h) (and so for s) reach them, at p = i - tap_h, q = j - tap_w. So each phase is a
// dense GEMM like a unit stride's: rows (n, i, j), columns the group's channels c, depth
// d = (k, r, s) over the phase's taps (none skipped by the stride); a unit stride is the one
// phase h_first = w_first = 0. taps[d] = (k * P * Q - tap_h * Q - tap_w, tap_h, tap_w,
// k * C/groups * R * S + r * S + s), made by the launch code: a gathered element costs a
// bounds check and an add.
template <typename T>
struct InputGradientProblem {
    static constexpr bool a_depth_major = false;
    static constexpr bool gathers_pairs = true;  // A and B read the same taps[d]
    static constexpr bool a_packs = false, b_packs = false;
    const T* grad_y;
    const T* weight;
    T* grad_x;
    const int4* taps;  // this phase's
    ConvShape g;
    int group;
    int h_first, w_first, phase_h, phase_w;  // the phase's first input and its extent
    int phase_depth;  // its taps: K/groups times its (r, s)

    __device__ index_t rows() const { return static_cast<index_t>(g.N) * phase_h * phase_w; }
    __device__ int columns() const { return g.channels_per_group(); }
    __device__ index_t depth() const { return phase_depth; }

    struct Row {
        const T* origin;  // grad_y[n, group's first filter] + i * Q + j
        int i, j;
    };
    __device__ Row row(index_t m) const {
        const index_t ij_count = static_cast<index_t>(phase_h) * phase_w;
        const index_t n = m / ij_count;
        const int ij = static_cast<int>(m % ij_count), i = ij / phase_w, j = ij % phase_w;
        const index_t first = n * g.K + static_cast<index_t>(group) * g.filters_per_group();
        return {grad_y + first * g.P * g.Q + static_cast<index_t>(i) * g.Q + j, i, j};
    }
    using Column = const T*;  // weight[group's first filter, c]
    __device__ Column column(int c) const {
        const index_t first = static_cast<index_t>(group) * g.filters_per_group();
        return weight + (first * g.channels_per_group() + c) * g.R * g.S;
    }

    __device__ void gather(const Row& row, Column filter, index_t d, T& a, T& b) const {
        const int4 tap = taps[d];
        const unsigned p = row.i - tap.y, q = row.j - tap.z;  // negative ones wrap past P, Q
        a = p < static_cast<unsigned>(g.P) && q < static_cast<unsigned>(g.Q) ? row.origin[tap.x]
                                                                             : T(0);
        b = filter[tap.w];
    }

    __device__ void store(index_t m, int c, T value) const {
        const index_t ij_count = static_cast<index_t>(phase_h) * phase_w;
        const int ij = static_cast<int>(m % ij_count);
        const int h = h_first + ij / phase_w * g.stride_h, w = w_first + ij % phase_w * g.stride_w;
        const index_t channel = static_cast<index_t>(group) * g.channels_per_group() + c;
        grad_x[((m / ij_count * g.C + channel) * g.H + h) * g.W + w] = value;
    }
};

// Weight gradient, per group: rows the group's filters k, columns e = (c, r, s), depth
// j = (n, p, q) (split over blocks: each writes its partial sums to a workspace row).
// positions[j], made by the launch code, holds both gathers' 64-bit offsets and the window's
// corner: per element one table load, an add for grad_y, and a bounds check and an add for x.
// The offsets are in bytes (the table is made per element size): an element's address is
// one 64-bit add.
struct alignas(16) Position {
    index_t image;     // of x[n, 0, h0, w0]: (n * C * H * W + h0 * W + w0) * sizeof(T)
    int h0, w0;        // p * stride_h, q * stride_w (before the padding)
    index_t gradient;  // of grad_y[n, 0, p, q]: (n * K * P * Q + p * Q + q) * sizeof(T)
    int unused[2];
};

template <typename T, typename Value = T>
__device__ __forceinline__ Value at_byte_offset(const T* origin, index_t bytes) {
    return *reinterpret_cast<const Value*>(reinterpret_cast<const char*>(origin) + bytes);
}

// a_packs where P * Q is a multiple of the lanes and grad_y is 16-byte aligned: a pack is
// LANES consecutive (p, q) of one image, at the offset of its first.
template <typename T, bool gradient_packs>
struct WeightGradientProblem {
    static constexpr bool a_depth_major = true;  // grad_y is contiguous along (p, q)
    static constexpr bool gathers_pairs = false;  // x is contiguous along (h, w) too
    static constexpr bool a_packs = gradient_packs, b_packs = false;
    using Pack16 = Pack<T, Lanes<T>::value>;
    const T* grad_y;
    const T* x;
    T* partial;  // this split's [groups][K/groups][C/groups * R * S]
    const Position* positions;
    ConvShape g;
    int group;

    __device__ index_t rows() const { return g.filters_per_group(); }
    __device__ int columns() const { return g.channels_per_group() * g.R * g.S; }
    __device__ index_t depth() const { return static_cast<index_t>(g.N) * g.P * g.Q; }

    using Row = const T*;  // grad_y[0, filter]
    __device__ Row row(index_t k) const {
        return grad_y + (static_cast<index_t>(group) * g.filters_per_group() + k) * g.P * g.Q;
    }
    __device__ T a(Row gradient, index_t j) const {
        return at_byte_offset(gradient, positions[j].gradient);
    }
    __device__ Pack16 a_pack(Row gradient, index_t j) const {
        return at_byte_offset<T, Pack16>(gradient, positions[j].gradient);
    }

    struct Column {
        const T* origin;  // x[0, channel] + (r * dilation - pad) * W + s * dilation - pad
        int r_offset, s_offset;  // r * dilation - pad, s * dilation - pad
    };
    __device__ Column column(int e) const {
        const int RS = g.R * g.S;
        const int c = e / RS, rs = e % RS;
        const index_t channel = static_cast<index_t>(group) * g.channels_per_group() + c;
        const int r_offset = rs / g.S * g.dilation_h - g.pad_h;
        const int s_offset = rs % g.S * g.dilation_w - g.pad_w;
        return {x + channel * g.H * g.W + static_cast<index_t>(r_offset) * g.W + s_offset,
                r_offset, s_offset};
    }
    __device__ T b(const Column& column, index_t j) const {
        const Position& position = positions[j];
        const unsigned h = position.h0 + column.r_offset, w = position.w0 + column.s_offset;
        if (h >= static_cast<unsigned>(g.H) || w >= static_cast<unsigned>(g.W)) return T(0);
        return at_byte_offset(column.origin, position.image);
    }

    __device__ void store(index_t k, int e, T value) const {
        partial[(static_cast<index_t>(group) * g.filters_per_group() + k) * columns() + e] = value;
    }
};

// Grid: (rows / BM, columns / BN, groups).
template <typename T, int BM, int BN, int BK, int TM, int TN, bool with_bias, bool weight_packs>
__global__ void __launch_bounds__((BM / TM) * (BN / TN), GEMM_BLOCKS_PER_SM(BM, BN, TM, TN))
conv2d_forward_implicit_gemm(const T* __restrict__ x, const T* __restrict__ weight,
                             const T* __restrict__ bias, T* __restrict__ y,
                             const int4* __restrict__ taps, CONV_SHAPE) {
    const ForwardProblem<T, with_bias, weight_packs> problem{
        x, weight, bias, y, taps, CONV_ARGUMENTS, static_cast<int>(blockIdx.z)};
    gemm_tile<T, BM, BN, BK, TM, TN>(problem, static_cast<index_t>(blockIdx.x) * BM,
                                     blockIdx.y * BN, 0, problem.depth());
}

template <typename T, int BM, int BN, int BK, int TM, int TN, bool with_bias, bool x_packs,
          bool weight_packs>
__global__ void __launch_bounds__((BM / TM) * (BN / TN), GEMM_BLOCKS_PER_SM(BM, BN, TM, TN))
conv2d_forward_pointwise_gemm(const T* __restrict__ x, const T* __restrict__ weight,
                              const T* __restrict__ bias, T* __restrict__ y, CONV_SHAPE) {
    const PointwiseForwardProblem<T, with_bias, x_packs, weight_packs> problem{
        {x, weight, bias, y, nullptr, CONV_ARGUMENTS, static_cast<int>(blockIdx.z)}};
    gemm_tile<T, BM, BN, BK, TM, TN>(problem, static_cast<index_t>(blockIdx.x) * BM,
                                     blockIdx.y * BN, 0, problem.depth());
}

// Grid: (the largest phase's rows / BM, columns / BN, groups * phases). table[2 * f] =
// (h_first, w_first, extent h, extent w) and table[2 * f + 1] = (first tap, taps) of phase f,
// its taps in the same table; a block past its phase's rows returns.
template <typename T, int BM, int BN, int BK, int TM, int TN>
__global__ void __launch_bounds__((BM / TM) * (BN / TN), GEMM_BLOCKS_PER_SM(BM, BN, TM, TN))
conv2d_input_gradient_implicit_gemm(const T* __restrict__ grad_y, const T* __restrict__ weight,
                                    T* __restrict__ grad_x, const int4* __restrict__ table,
                                    CONV_SHAPE) {
    const ConvShape g CONV_ARGUMENTS;
    const int phase = blockIdx.z / g.groups;
    const int4 extent = table[2 * phase], taps = table[2 * phase + 1];
    const InputGradientProblem<T> problem{grad_y, weight, grad_x, table + taps.x, g,
                                          static_cast<int>(blockIdx.z % g.groups), extent.x,
                                          extent.y, extent.z, extent.w, taps.y};
    const index_t row0 = static_cast<index_t>(blockIdx.x) * BM;
    if (row0 >= problem.rows()) return;  // the whole block: no barrier is left waiting
    gemm_tile<T, BM, BN, BK, TM, TN>(problem, row0, blockIdx.y * BN, 0, problem.depth());
}

// Grid: (rows / BM, columns / BN, groups * splits); split s sums depths [s * chunk, (s + 1) *
// chunk) into workspace[s] (chunk a multiple of BK).
template <typename T, int BM, int BN, int BK, int TM, int TN, bool gradient_packs>
__global__ void __launch_bounds__((BM / TM) * (BN / TN), GEMM_BLOCKS_PER_SM(BM, BN, TM, TN))
conv2d_weight_gradient_implicit_gemm(const T* __restrict__ grad_y, const T* __restrict__ x,
                                     T* __restrict__ workspace,
                                     const Position* __restrict__ positions, index_t chunk,
                                     CONV_SHAPE) {
    const ConvShape g CONV_ARGUMENTS;
    const int split = blockIdx.z / g.groups, group = blockIdx.z % g.groups;
    const index_t weights = static_cast<index_t>(g.K) * g.channels_per_group() * g.R * g.S;
    const WeightGradientProblem<T, gradient_packs> problem{
        grad_y, x, workspace + split * weights, positions, g, group};
    const index_t begin = split * chunk;
    const index_t end = begin + chunk < problem.depth() ? begin + chunk : problem.depth();
    gemm_tile<T, BM, BN, BK, TM, TN>(problem, static_cast<index_t>(blockIdx.x) * BM,
                                     blockIdx.y * BN, begin, end);
}

// grad_weight[i] = sum over the splits, in split order (deterministic), of workspace[s][i].
template <typename T>
__global__ void sum_splits(const T* __restrict__ workspace, T* __restrict__ out, index_t size,
                           int splits) {
    for (index_t i = grid_start(); i < size; i += grid_stride()) {
        T total = workspace[i];
        for (int s = 1; s < splits; ++s) total += workspace[s * size + i];
        out[i] = total;
    }
}

// ---------------------------------------------------------------------------- depthwise
// Depthwise (one input channel per group, K = C * multiplier): every output reads R * S
// values of one plane, so the op is memory-bound; threads run along q, so a warp's loads
// are consecutive. The weight gradient reduces over N * P * Q in one block per (filter,
// tap), in a fixed order.

template <typename T, bool with_bias>
__global__ void conv2d_forward_depthwise(const T* __restrict__ x, const T* __restrict__ weight,
                                         const T* __restrict__ bias, T* __restrict__ y,
                                         CONV_SHAPE) {
    const ConvShape g CONV_ARGUMENTS;
    const int multiplier = g.K / g.C;
    const index_t outputs = static_cast<index_t>(g.N) * g.K * g.P * g.Q;
    for (index_t i = grid_start(); i < outputs; i += grid_stride()) {
        const int q = static_cast<int>(i % g.Q), p = static_cast<int>(i / g.Q % g.P);
        const index_t nk = i / (static_cast<index_t>(g.P) * g.Q);
        const int k = static_cast<int>(nk % g.K);
        const T* plane = x + (nk / g.K * g.C + k / multiplier) * g.H * g.W;
        const T* filter = weight + static_cast<index_t>(k) * g.R * g.S;
        T total = with_bias ? bias[k] : T(0);
        for (int r = 0; r < g.R; ++r) {
            const int h = p * g.stride_h - g.pad_h + r * g.dilation_h;
            if (h < 0 || h >= g.H) continue;
            for (int s = 0; s < g.S; ++s) {
                const int w = q * g.stride_w - g.pad_w + s * g.dilation_w;
                if (w >= 0 && w < g.W) total += plane[static_cast<index_t>(h) * g.W + w] * filter[r * g.S + s];
            }
        }
        y[i] = total;
    }
}

template <typename T>
__global__ void conv2d_input_gradient_depthwise(const T* __restrict__ grad_y,
                                                const T* __restrict__ weight,
                                                T* __restrict__ grad_x, CONV_SHAPE) {
    const ConvShape g CONV_ARGUMENTS;
    const int multiplier = g.K / g.C;
    const index_t inputs = static_cast<index_t>(g.N) * g.C * g.H * g.W;
    for (index_t i = grid_start(); i < inputs; i += grid_stride()) {
        const int w = static_cast<int>(i % g.W), h = static_cast<int>(i / g.W % g.H);
        const index_t nc = i / (static_cast<index_t>(g.H) * g.W);
        const int c = static_cast<int>(nc % g.C);
        const index_t n = nc / g.C;
        T total = T(0);
        for (int k = c * multiplier; k < (c + 1) * multiplier; ++k) {
            const T* plane = grad_y + (n * g.K + k) * g.P * g.Q;
            const T* filter = weight + static_cast<index_t>(k) * g.R * g.S;
            for (int r = 0; r < g.R; ++r) {
                const int ph = h + g.pad_h - r * g.dilation_h;
                if (ph < 0 || ph % g.stride_h || ph / g.stride_h >= g.P) continue;
                for (int s = 0; s < g.S; ++s) {
                    const int qw = w + g.pad_w - s * g.dilation_w;
                    if (qw < 0 || qw % g.stride_w || qw / g.stride_w >= g.Q) continue;
                    total += plane[static_cast<index_t>(ph / g.stride_h) * g.Q + qw / g.stride_w] *
                             filter[r * g.S + s];
                }
            }
        }
        grad_x[i] = total;
    }
}

// Grid: (K, R * S); a block per weight, its threads over (n, p, q), double partial sums.
template <typename T>
__global__ void conv2d_weight_gradient_depthwise(const T* __restrict__ grad_y,
                                                 const T* __restrict__ x,
                                                 T* __restrict__ grad_weight, CONV_SHAPE) {
    const ConvShape g CONV_ARGUMENTS;
    const int multiplier = g.K / g.C;
    const int k = blockIdx.x, r = blockIdx.y / g.S, s = blockIdx.y % g.S;
    const index_t PQ = static_cast<index_t>(g.P) * g.Q, count = g.N * PQ;
    double total = 0.0;
    for (index_t j = threadIdx.x; j < count; j += blockDim.x) {
        const index_t n = j / PQ;
        const int pq = static_cast<int>(j % PQ);
        const int h = pq / g.Q * g.stride_h - g.pad_h + r * g.dilation_h;
        const int w = pq % g.Q * g.stride_w - g.pad_w + s * g.dilation_w;
        if (h < 0 || h >= g.H || w < 0 || w >= g.W) continue;
        const T gradient = grad_y[(n * g.K + k) * PQ + pq];
        total += static_cast<double>(gradient) *
                 x[((n * g.C + k / multiplier) * g.H + h) * static_cast<index_t>(g.W) + w];
    }
    total = block_reduce(total, dynamic_shared<double>(), Sum());
    if (threadIdx.x == 0) grad_weight[static_cast<index_t>(k) * g.R * g.S + blockIdx.y] = static_cast<T>(total);
}

}  // namespace fastcnn
