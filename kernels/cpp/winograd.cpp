// 2-D convolution, 3x3 kernels, stride 1, dilation 1 (any padding, groups): forward, grad_x.
// Algorithm: Winograd F(4x4, 3x3) (Lavin & Gray 2016), the tile transforms vectorised across
// tiles, the 36 products on the blocked GEMM's micro-kernel (gemm.hpp).
//
// Per 4x4 output tile and channel, Y = A^T [sum_c (G w G^T) * (B^T d B)] A: 36 multiplies per
// 16 outputs instead of 144. Tiles are numbered across images, t = (n tiles_h + ti) tiles_w + tj,
// and cut into blocks of NT tiles, NT the micro-kernel's NR (32 floats or 16 doubles with
// AVX-512): one block is one B panel. Three stages:
//
// 1. The filter transform U = G w G^T, once a call, into MR-row panels of the micro-kernel's A
//    layout, U[group][xi][panel][c][MR] for the 36 transform points xi (36 K C elements: 4x
//    the weights; 590 KB at 64 x 64 channels in float32). With WINOGRAD_FEW_TILES tiles or
//    fewer (one or two blocks would read it), each task makes the part it uses instead, one xi
//    at a time (task_filter).
// 2. A task per (group, block, run of output-channel panels): the input transform of the
//    block's tiles, V[xi][c][tile] = (B^T d B)[xi] (36 C NT elements, in L2 at up to 128
//    channels): each run's six padded rows copied a channel ahead, then deinterleaved so that
//    element (r, s) of the NT patches is one row and the transform is vector arithmetic across
//    tiles; the products M[xi] (channels x NT) = U[xi] V[xi], xi outer so that V[xi] stays in
//    L1 across the output-channel panels while U streams; then the output transform of M into
//    y, across tiles as well, storing only the outputs inside y.
// 3. Tiles with a non-finite output are recomputed directly: a NaN or infinity in a patch
//    spreads over the whole tile through the transforms, so NaN lands where a direct sum puts
//    it.
//
// The input gradient of a 3x3 stride-1 convolution is this forward pass over grad_y with the
// flipped, transposed weight and padding 2 - pad (negative when pad > 2: grad_y cropped); the
// filter transform reads the weight through that view, so nothing is copied.
//
// Each output is computed by one task, its products summed over c in order and transformed in
// a fixed order, whatever the thread count: bitwise the same results on every run.
// Float32 accuracy: the transform constants (up to 8 in A, 5 in B) make the error 10-50x that
// of a direct sum: about 1e-5 of the output's scale on the ResNet-50 and VGG 3x3 layers.
#include <cstring>
#include <vector>

#include "gemm.hpp"
#include "kernels.hpp"
#include "vector.hpp"

namespace fastcnn {
namespace {

using gemm_kernel::micro_kernel;
using gemm_kernel::MR;

// The weight of one convolution as the kernel reads it: tap t = 3 r + s of output channel k
// (within the group) and input channel c (within the group). The input gradient's view of
// the forward weight w[K, C/G, 3, 3] is w[g Kg + c, k, 2 - r, 2 - s] (flipped = true).
template <typename T> struct Filter {
    const T *w;
    index_t group_stride, k_stride, c_stride;
    bool flipped;

    T tap(index_t group, index_t k, index_t c, int t) const {
        return w[group * group_stride + k * k_stride + c * c_stride + (flipped ? 8 - t : t)];
    }
};

// Where one run of consecutive tiles of a tile row sits: image n, tile row ti, first tile
// column tj, `count` tiles at lanes [lane, lane + count) of the block.
struct Run {
    index_t n, ti, tj, count, lane;
};

// The runs of tiles [first, end) (at most NT runs for NT tiles); returns how many.
inline index_t block_runs(index_t first, index_t end, index_t tiles_h, index_t tiles_w,
                          Run *runs) {
    index_t count = 0;
    for (index_t tile = first; tile < end;) {
        const index_t n = tile / (tiles_h * tiles_w), rest = tile % (tiles_h * tiles_w);
        const index_t ti = rest / tiles_w, tj = rest % tiles_w;
        const index_t length = std::min(tiles_w - tj, end - tile);
        runs[count++] = {n, ti, tj, length, tile - first};
        tile += length;
    }
    return count;
}

// out = G[e] (x0, x1, x2) for one row e of G (6 x 3), n lanes. G's rows 0 and 5 have one
// non-zero: no multiply by 0 (an infinite weight gives inf, not NaN, as the direct sum).
template <typename T>
[[gnu::always_inline]] inline void filter_row(int e, const T *x0, const T *x1, const T *x2,
                                              T *out, index_t n) {
    const T quarter = T(0.25), sixth = T(1.0 / 6), twelfth = T(1.0 / 12), t24 = T(1.0 / 24);
    switch (e) {
    case 0:
        for (index_t i = 0; i < n; ++i)
            out[i] = x0[i] * quarter;
        break;
    case 1:
        for (index_t i = 0; i < n; ++i)
            out[i] = (x0[i] + x1[i] + x2[i]) * -sixth;
        break;
    case 2:
        for (index_t i = 0; i < n; ++i)
            out[i] = (x0[i] - x1[i] + x2[i]) * -sixth;
        break;
    case 3:
        for (index_t i = 0; i < n; ++i)
            out[i] = x0[i] * t24 + x1[i] * twelfth + x2[i] * sixth;
        break;
    case 4:
        for (index_t i = 0; i < n; ++i)
            out[i] = x0[i] * t24 - x1[i] * twelfth + x2[i] * sixth;
        break;
    default:
        for (index_t i = 0; i < n; ++i)
            out[i] = x2[i];
    }
}

// Input channels per step of the filter transform (its rows for the MR channels of a panel,
// 6 x (9 + 18 + 36) x 32 elements, stay in L2).
constexpr index_t FILTER_CHANNELS = 32;

// U's panel (group, output channels [panel MR, panel MR + MR)): for every xi, c < Cg, kk < MR,
// U[group][xi][panel][c][kk] = (G w G^T)[xi] of output channel panel MR + kk (0 past Kg).
// The MR channels of a step are transformed first, then stored MR at a time: one pass over
// U (stored channel by channel, a stride of MR, each line of U came back from memory MR
// times: the transform was a third of the time at 512 x 512 channels).
template <typename T>
FASTCNN_SIMD void filter_panel(const Filter<T> &f, T *U, index_t Kg, index_t Cg, index_t group,
                               index_t panel) {
    constexpr index_t B = FILTER_CHANNELS;
    const index_t panels = (Kg + MR - 1) / MR;
    T taps[9][B], rows[6][3][B], points[MR][36][B];
    for (index_t c0 = 0; c0 < Cg; c0 += B) {
        const index_t n = std::min(B, Cg - c0);
        for (int kk = 0; kk < MR; ++kk) {
            const index_t k = panel * MR + kk;
            if (k >= Kg) {
                for (int xi = 0; xi < 36; ++xi)
                    for (index_t c = 0; c < n; ++c)
                        points[kk][xi][c] = T(0);
                continue;
            }
            for (index_t c = 0; c < n; ++c)
                for (int t = 0; t < 9; ++t)
                    taps[t][c] = f.tap(group, k, c0 + c, t);
            for (int e = 0; e < 6; ++e)  // rows[e][s] = (G w)[e, s]
                for (int s = 0; s < 3; ++s)
                    filter_row(e, taps[s], taps[3 + s], taps[6 + s], rows[e][s], n);
            for (int e = 0; e < 6; ++e)  // points[e 6 + e2] = (G w G^T)[e, e2]
                for (int e2 = 0; e2 < 6; ++e2)
                    filter_row(e2, rows[e][0], rows[e][1], rows[e][2], points[kk][e * 6 + e2], n);
        }
        for (int xi = 0; xi < 36; ++xi) {
            T *out = U + ((group * 36 + xi) * panels + panel) * Cg * MR + c0 * MR;
            for (index_t c = 0; c < n; ++c)
                for (int kk = 0; kk < MR; ++kk)
                    out[c * MR + kk] = points[kk][xi][c];
        }
    }
}

// out[e step + j] = (B^T a)[e] for the six rows a[i in_step + j], j < NT.
// B^T = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
//        [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]].
// Six restrict pointers, not one with a step: with a step known only at run time GCC cannot
// tell the rows apart and leaves the loop scalar (the input transform was 3x slower).
template <typename T, index_t NT>
[[gnu::always_inline]] inline void input_rows(const T *__restrict in, index_t in_step,
                                              T *__restrict o0, T *__restrict o1,
                                              T *__restrict o2, T *__restrict o3,
                                              T *__restrict o4, T *__restrict o5) {
    const T two = T(2), four = T(4), five = T(5);
    for (index_t j = 0; j < NT; ++j) {
        const T a0 = in[j], a1 = in[in_step + j], a2 = in[2 * in_step + j];
        const T a3 = in[3 * in_step + j], a4 = in[4 * in_step + j], a5 = in[5 * in_step + j];
        o0[j] = four * a0 - five * a2 + a4;
        o1[j] = a3 + a4 - four * (a1 + a2);
        o2[j] = a4 - a3 + four * (a1 - a2);
        o3[j] = a4 - a2 + two * (a3 - a1);
        o4[j] = a4 - a2 - two * (a3 - a1);
        o5[j] = four * a1 - five * a3 + a5;
    }
}

template <typename T, index_t NT>
[[gnu::always_inline]] inline void input_pass(const T *in, index_t in_step, T *out,
                                              index_t out_step) {
    input_rows<T, NT>(in, in_step, out, out + out_step, out + 2 * out_step, out + 3 * out_step,
                      out + 4 * out_step, out + 5 * out_step);
}

// out[a step + j] = (A^T m)[a] (+ bias) for the six rows m[i in_step + j], j < NT.
// A^T = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]].
template <typename T, index_t NT>
[[gnu::always_inline]] inline void output_rows(const T *__restrict in, index_t in_step,
                                               T *__restrict o0, T *__restrict o1,
                                               T *__restrict o2, T *__restrict o3, T bias) {
    const T two = T(2), four = T(4), eight = T(8);
    for (index_t j = 0; j < NT; ++j) {
        const T m0 = in[j], m1 = in[in_step + j], m2 = in[2 * in_step + j];
        const T m3 = in[3 * in_step + j], m4 = in[4 * in_step + j], m5 = in[5 * in_step + j];
        o0[j] = bias + m0 + m1 + m2 + m3 + m4;
        o1[j] = bias + m1 - m2 + two * (m3 - m4);
        o2[j] = bias + m1 + m2 + four * (m3 + m4);
        o3[j] = bias + m1 - m2 + eight * (m3 - m4) + m5;
    }
}

template <typename T, index_t NT>
[[gnu::always_inline]] inline void output_pass(const T *in, index_t in_step, T *out,
                                               index_t out_step, T bias) {
    output_rows<T, NT>(in, in_step, out, out + out_step, out + 2 * out_step, out + 3 * out_step,
                       bias);
}

// Lanes of one vector (16 floats, 8 doubles): the patch rows are filled in whole chunks of
// this many tiles. A tile row of a 56 x 56 image is 14 tiles: loops to the run's length ran
// entirely in the scalar remainder (the input transform was 40% of the time).
template <typename T> constexpr index_t chunk() {
    return index_t(64 / sizeof(T));
}

// A patch row's length: the block's NT tiles and a chunk of slack (a run's last chunk).
template <typename T, index_t NT> constexpr index_t patch_stride() {
    return NT + chunk<T>();
}

// Integer vectors of as many lanes as Vector<T>, the masks of __builtin_shuffle.
typedef int int_vector __attribute__((vector_size(64)));
typedef long long long_vector __attribute__((vector_size(64)));
template <typename T> struct Lanes;
template <> struct Lanes<float> {
    using type = int_vector;
};
template <> struct Lanes<double> {
    using type = long_vector;
};

// o_s[t] = row[4 t + s] for s < 6, t < one chunk: the six columns of a chunk of patches in a
// row, as vector shuffles: phases 0-3 of 4 L elements from row, phases 0 and 1 of 4 L from
// row + 4 (columns 4 and 5 are columns 0 and 1 of the next patch). GCC vectorised the plain
// stride-4 loops element by element (an insert per element).
template <typename T>
[[gnu::always_inline]] inline void deinterleave(const T *row, T *o0, T *o1, T *o2, T *o3, T *o4,
                                                T *o5) {
    using V = typename Vector<T>::type;
    using U = typename Vector<T>::unaligned;
    // Of two vectors, phases 0 and 1 (pick0) or 2 and 3 (pick2) of their 2 L elements in 4;
    // of two such, both low halves (low) or both high halves (high).
    constexpr int L = int(chunk<T>()), H = L / 2;
    typename Lanes<T>::type pick0, pick2, low, high;
    for (int i = 0; i < L; ++i) {
        pick0[i] = i < H ? 4 * i : 4 * (i - H) + 1;
        pick2[i] = pick0[i] + 2;
        low[i] = i < H ? i : L + i - H;
        high[i] = low[i] + H;
    }
    const U *in = reinterpret_cast<const U *>(row);
    const V v0 = in[0], v1 = in[1], v2 = in[2], v3 = in[3];
    const V a01 = __builtin_shuffle(v0, v1, pick0), a23 = __builtin_shuffle(v2, v3, pick0);
    const V b01 = __builtin_shuffle(v0, v1, pick2), b23 = __builtin_shuffle(v2, v3, pick2);
    *reinterpret_cast<U *>(o0) = __builtin_shuffle(a01, a23, low);
    *reinterpret_cast<U *>(o1) = __builtin_shuffle(a01, a23, high);
    *reinterpret_cast<U *>(o2) = __builtin_shuffle(b01, b23, low);
    *reinterpret_cast<U *>(o3) = __builtin_shuffle(b01, b23, high);
    const U *next = reinterpret_cast<const U *>(row + 4);
    const V w0 = next[0], w1 = next[1], w2 = next[2], w3 = next[3];
    const V c01 = __builtin_shuffle(w0, w1, pick0), c23 = __builtin_shuffle(w2, w3, pick0);
    *reinterpret_cast<U *>(o4) = __builtin_shuffle(c01, c23, low);
    *reinterpret_cast<U *>(o5) = __builtin_shuffle(c01, c23, high);
}

// Elements of one padded row of a run in `lines`: 4 NT + 4 columns and slack.
template <typename T, index_t NT> constexpr index_t line_stride() {
    return 4 * NT + chunk<T>();
}

// Where a run's padded rows come from: row r of run i is lines[(i 6 + r) LS + c] = x[n, channel,
// 4 ti + r - pad_h, 4 tj - pad_w + c] for c in [lo, hi) (offset: that element's index counted
// from channel 0 of the group), 0 elsewhere; rows wholly in the padding have lo = hi.
struct RowSpan {
    index_t offset, lo, hi;
};

// lines = the padded rows of one input channel (x at its channel; the zeros are written once a
// task: only [lo, hi) changes from channel to channel). Copied a channel ahead of the rows the
// transform reads, so no load waits on the copy's stores (deinterleaving straight after
// copying, the loads spanning two stores stalled on store forwarding: half of the input
// transform). With `ahead`, the rows of the channel after are prefetched: each run reads a few
// hundred bytes of a plane and the next plane is H W elements away, which the hardware
// prefetchers do not follow.
template <typename T, index_t NT>
[[gnu::always_inline]] inline void copy_rows(const T *x, index_t plane, const RowSpan *spans,
                                             index_t count, bool ahead, T *lines) {
    using V = typename Vector<T>::type;
    using U = typename Vector<T>::unaligned;
    constexpr index_t L = chunk<T>(), LS = line_stride<T, NT>();
    for (index_t i = 0; i < count; ++i) {
        const RowSpan &span = spans[i];
        const T *row = x + span.offset;
        T *line = lines + i * LS;
        if (ahead)
            for (index_t c = span.lo; c < span.hi; c += L)
                __builtin_prefetch(row + plane + c);
        // Whole vectors, the last one overlapping the one before (no call to memcpy for a few
        // dozen elements); rows shorter than a vector element by element.
        if (span.hi - span.lo >= L) {
            for (index_t c = span.lo; c + L < span.hi; c += L)
                *reinterpret_cast<U *>(line + c) = V(*reinterpret_cast<const U *>(row + c));
            *reinterpret_cast<U *>(line + span.hi - L) =
                V(*reinterpret_cast<const U *>(row + span.hi - L));
        } else {
            for (index_t c = span.lo; c < span.hi; ++c)
                line[c] = row[c];
        }
    }
}

// V[xi][c][j] = (B^T d B)[xi] for the block's patches d of input channel c, from its padded
// rows (copy_rows). patches[(r 6 + s) PS + j] = padded input (4 ti + r, 4 tj + s) of lane j's
// tile (PS = patch_stride), filled a chunk of tiles at a time: a run's last chunk writes lanes
// past it (the next run's, written after, or the block's unused lanes, whose outputs are not
// stored).
template <typename T, index_t NT>
[[gnu::always_inline]] inline void transform_input(const T *lines, const Run *runs,
                                                   index_t run_count, index_t c, index_t Cg,
                                                   T *V, T *patches) {
    constexpr index_t L = chunk<T>(), PS = patch_stride<T, NT>(), LS = line_stride<T, NT>();
    alignas(64) T rows[36 * NT];
    for (index_t i = 0; i < run_count; ++i) {
        const Run &run = runs[i];
        for (int r = 0; r < 6; ++r) {
            const T *line = lines + (i * 6 + r) * LS;
            T *target = patches + r * 6 * PS + run.lane;
            for (index_t t = 0; t < run.count; t += L)
                deinterleave(line + 4 * t, target + t, target + PS + t, target + 2 * PS + t,
                             target + 3 * PS + t, target + 4 * PS + t, target + 5 * PS + t);
        }
    }
    for (int s = 0; s < 6; ++s)  // rows[e 6 + s] = (B^T d)[e, s]
        input_pass<T, NT>(patches + s * PS, 6 * PS, rows + s * NT, 6 * NT);
    T *out = V + c * NT;
    for (int e = 0; e < 6; ++e)  // V[e 6 + e2] = (B^T d B)[e, e2]
        input_pass<T, NT>(rows + e * 6 * NT, NT, out + e * 6 * Cg * NT, Cg * NT);
}

// One output computed directly (for the tiles whose transformed outputs are not finite).
template <typename T>
T direct_output(const T *x, const Filter<T> &f, const T *bias, const ConvShape &g, index_t n,
                index_t k, index_t p, index_t q) {
    const index_t Cg = g.C / g.G, Kg = g.K / g.G, group = k / Kg;
    T total = bias ? bias[k] : T(0);
    for (index_t c = 0; c < Cg; ++c) {
        const T *plane = x + (n * g.C + group * Cg + c) * g.H * g.W;
        for (int r = 0; r < 3; ++r) {
            const index_t h = p - g.ph + r;
            if (h < 0 || h >= g.H)
                continue;
            for (int s = 0; s < 3; ++s) {
                const index_t w = q - g.pw + s;
                if (w >= 0 && w < g.W)
                    total += f.tap(group, k % Kg, c, 3 * r + s) * plane[h * g.W + w];
            }
        }
    }
    return total;
}

// This thread's scratch of the tasks (V, M, the patches and a padded row), kept between calls.
template <typename T> T *task_buffer(std::size_t size) {
    thread_local std::vector<T> buffer;
    if (buffer.size() < size)
        buffer.resize(size);
    return buffer.data();
}

template <typename T, int NV> constexpr index_t lanes() {
    return NV * index_t(64 / sizeof(T));
}

// V, M, the patches, two sets of padded rows (NT runs at most) and, with the filter
// transformed by the task, its 9 taps, 3 rows of G w and one U[xi] (kc Cg elements each).
template <typename T, int NV> std::size_t task_size(index_t Cg, index_t kc, bool own_filter) {
    constexpr index_t NT = lanes<T, NV>();
    constexpr index_t PS = patch_stride<T, NT>(), LS = line_stride<T, NT>();
    return std::size_t(36 * Cg * NT + 36 * kc * NT + 36 * PS + 2 * 6 * NT * LS +
                       (own_filter ? 13 * kc * Cg : 0));
}

// What a task computes: the tiles [first, end) (one block) of output channels [k0, k0 + kc)
// of `group` (k0 and kc multiples of MR; channels past Kg are padding, not stored).
struct Task {
    index_t group, first, end, k0, kc;
};

// M[xi] = U[xi] V[xi] with U made here, one xi at a time, for the task's output channels
// only (as the Numba backend's winograd): taps[t] = w[k, c, t] in the A panels' layout
// ((panel, c, kk) for channel k0 + panel MR + kk), lines[s] = (G w)[e1, s] and u = U[xi] as
// flat arrays of kc Cg elements, so each step is one vector loop. For WINOGRAD_FEW_TILES
// or fewer tiles: a stored U would be read by one or two blocks only, and at 512 x 512
// channels it is 38 MB (float32) written and read back from memory, most of the time of the
// 7x7 layer.
template <typename T, int NV>
[[gnu::always_inline]] inline void task_filter(const Filter<T> &f, const Task &task, index_t Kg,
                                               index_t Cg, T *taps, const T *V, T *M) {
    constexpr index_t NT = lanes<T, NV>();
    const index_t size = task.kc * Cg;
    T *lines = taps + 9 * size, *u = lines + 3 * size;
    // The MR channels of a panel together: each step writes MR neighbours of every tap row
    // (one channel at a time, the 9 rows of 6 channels x 512 came back from L3 MR times).
    for (index_t panel = 0; panel < task.kc / MR; ++panel)
        for (index_t c = 0; c < Cg; ++c) {
            T *out = taps + (panel * Cg + c) * MR;
            for (int kk = 0; kk < MR; ++kk) {
                const index_t k = task.k0 + panel * MR + kk;
                for (int t = 0; t < 9; ++t)
                    out[t * size + kk] = k < Kg ? f.tap(task.group, k, c, t) : T(0);
            }
        }
    for (int e1 = 0; e1 < 6; ++e1) {
        for (int s = 0; s < 3; ++s)
            filter_row(e1, taps + s * size, taps + (3 + s) * size, taps + (6 + s) * size,
                       lines + s * size, size);
        for (int e2 = 0; e2 < 6; ++e2) {
            filter_row(e2, lines, lines + size, lines + 2 * size, u, size);
            const index_t xi = e1 * 6 + e2;
            for (index_t kk = 0; kk < task.kc; kk += MR)
                micro_kernel<T, NV>(Cg, u + kk * Cg, V + xi * Cg * NT,
                                    M + (xi * task.kc + kk) * NT, NT, MR, NT, false);
        }
    }
}

template <typename T, int NV>
FASTCNN_SIMD void winograd_task(const T *x, const Filter<T> &f, const T *U, const T *bias, T *y,
                                const ConvShape &g, const Task &task) {
    constexpr index_t NT = lanes<T, NV>(), PS = patch_stride<T, NT>(), L = chunk<T>();
    const index_t Cg = g.C / g.G, Kg = g.K / g.G, panels = (Kg + MR - 1) / MR;
    const index_t tiles_h = (g.P + 3) / 4, tiles_w = (g.Q + 3) / 4;
    constexpr index_t LS = line_stride<T, NT>();
    T *V = task_buffer<T>(task_size<T, NV>(Cg, task.kc, U == nullptr));
    T *M = V + 36 * Cg * NT;
    T *patches = M + 36 * task.kc * NT;
    T *lines = patches + 36 * PS;       // two sets of 6 rows a run
    T *taps = lines + 2 * 6 * NT * LS;  // with U == nullptr only
    Run runs[NT];
    const index_t run_count = block_runs(task.first, task.end, tiles_h, tiles_w, runs);
    const index_t used = task.end - task.first;
    for (index_t i = 0; i < 36; ++i)  // lanes past the last tile: zero patches
        for (index_t j = used; j < NT; ++j)
            patches[i * PS + j] = T(0);
    // The padded rows of each run, in whole chunks of tiles: zeros once, then [lo, hi) of
    // each channel.
    RowSpan spans[6 * NT];
    for (index_t i = 0; i < run_count; ++i) {
        const Run &run = runs[i];
        const index_t first = 4 * run.tj - g.pw, width = 4 * ((run.count + L - 1) / L * L) + 4;
        const index_t lo = std::min(width, std::max<index_t>(0, -first));
        const index_t hi = std::max(lo, std::min(width, g.W - first));
        for (int r = 0; r < 6; ++r) {
            const index_t h = 4 * run.ti + r - g.ph;
            const bool inside = h >= 0 && h < g.H;
            const index_t base = (run.n * g.C + task.group * Cg) * g.H * g.W;
            spans[i * 6 + r] = {inside ? base + h * g.W + first : 0, lo, inside ? hi : lo};
        }
    }
    const index_t line_count = 6 * run_count, plane = g.H * g.W;
    std::memset(lines, 0, std::size_t(2 * line_count * LS) * sizeof(T));
    copy_rows<T, NT>(x, plane, spans, line_count, Cg > 1, lines);
    for (index_t c = 0; c < Cg; ++c) {
        if (c + 1 < Cg)
            copy_rows<T, NT>(x + (c + 1) * plane, plane, spans, line_count, c + 2 < Cg,
                             lines + (c + 1) % 2 * line_count * LS);
        transform_input<T, NT>(lines + c % 2 * line_count * LS, runs, run_count, c, Cg, V,
                               patches);
    }
    // M[xi][kk][j] = sum_c U[xi][k0 + kk][c] V[xi][c][j]
    if (U) {
        for (index_t xi = 0; xi < 36; ++xi)
            for (index_t kk = 0; kk < task.kc; kk += MR) {
                const T *a = U + ((task.group * 36 + xi) * panels + (task.k0 + kk) / MR) * Cg * MR;
                micro_kernel<T, NV>(Cg, a, V + xi * Cg * NT, M + (xi * task.kc + kk) * NT, NT, MR,
                                    NT, false);
            }
    } else {
        task_filter<T, NV>(f, task, Kg, Cg, taps, V, M);
    }
    alignas(64) T half[24 * NT], out[16 * NT], interleaved[4 * 4 * NT], bad[NT];
    const index_t channels = std::min(task.kc, Kg - task.k0);
    for (index_t kk = 0; kk < channels; ++kk) {
        const index_t k = task.group * Kg + task.k0 + kk;
        const T *m = M + kk * NT;
        const index_t step = task.kc * NT;  // from xi to xi + 1
        for (int e2 = 0; e2 < 6; ++e2)  // half[a 6 + e2] = (A^T m)[a, e2]
            output_pass<T, NT>(m + e2 * step, 6 * step, half + e2 * NT, 6 * NT, T(0));
        for (int a = 0; a < 4; ++a)  // out[a 4 + b] = (A^T m A)[a, b] + bias
            output_pass<T, NT>(half + a * 6 * NT, NT, out + a * 4 * NT, NT, bias ? bias[k] : T(0));
        for (index_t j = 0; j < NT; ++j)
            bad[j] = T(0);
        for (int ab = 0; ab < 16; ++ab)  // NaN in a lane iff one of its outputs is not finite
            for (index_t j = 0; j < NT; ++j)
                bad[j] += out[ab * NT + j] - out[ab * NT + j];
        // interleaved[a][4 j + b] = out[a 4 + b][j]: row a of every tile, in y's column order
        for (int a = 0; a < 4; ++a)
            for (index_t j = 0; j < NT; ++j)
                for (int b = 0; b < 4; ++b)
                    interleaved[a * 4 * NT + 4 * j + b] = out[(a * 4 + b) * NT + j];
        for (index_t i = 0; i < run_count; ++i) {
            const Run &run = runs[i];
            const index_t columns = std::min(4 * run.count, g.Q - 4 * run.tj);
            const index_t rows = std::min<index_t>(4, g.P - 4 * run.ti);
            T *plane = y + (run.n * g.K + k) * g.P * g.Q;
            for (index_t a = 0; a < rows; ++a)
                std::memcpy(plane + (4 * run.ti + a) * g.Q + 4 * run.tj,
                            interleaved + a * 4 * NT + 4 * run.lane,
                            std::size_t(columns) * sizeof(T));
            for (index_t t = 0; t < run.count; ++t) {
                if (bad[run.lane + t] == T(0))
                    continue;
                const index_t tj = run.tj + t;
                for (index_t a = 0; a < rows; ++a)
                    for (index_t b = 0; b < std::min<index_t>(4, g.Q - 4 * tj); ++b)
                        plane[(4 * run.ti + a) * g.Q + 4 * tj + b] =
                            direct_output(x, f, bias, g, run.n, k, 4 * run.ti + a, 4 * tj + b);
            }
        }
    }
}

// Tasks at least this many per thread when the blocks are few (the output channels are then
// split, each part repeating the block's input transform).
constexpr index_t TASKS_PER_THREAD = 4;

template <typename T, int NV>
void winograd(const T *x, const Filter<T> &f, const T *bias, T *y, const ConvShape &g,
              int threads) {
    constexpr index_t NT = lanes<T, NV>();
    const index_t Cg = g.C / g.G, Kg = g.K / g.G, panels = (Kg + MR - 1) / MR;
    const index_t tiles = g.N * ((g.P + 3) / 4) * ((g.Q + 3) / 4);
    if (tiles == 0)
        return;
    // The filter transform, kept between calls on the calling thread (no page faults); with
    // few tiles, each task makes its part (task_filter).
    T *U = nullptr;
    if (tiles > WINOGRAD_FEW_TILES) {
        thread_local std::vector<T> transformed;
        const std::size_t size = std::size_t(g.G * 36 * panels * Cg * MR);
        if (transformed.size() < size)
            transformed.resize(size);
        U = transformed.data();
        parallel_for(g.G * panels, 1, threads, [&](index_t begin, index_t end) {
            for (index_t i = begin; i < end; ++i)
                filter_panel(f, U, Kg, Cg, i / panels, i % panels);
        });
    }
    const index_t blocks = (tiles + NT - 1) / NT;
    const index_t wanted = threads > 1 ? TASKS_PER_THREAD * threads : 1;
    const index_t parts = std::min(panels, std::max<index_t>(1, (wanted + g.G * blocks - 1) /
                                                                    (g.G * blocks)));
    const index_t per_part = (panels + parts - 1) / parts;  // output-channel panels a task
    const index_t chunks = (panels + per_part - 1) / per_part;
    const index_t tasks = g.G * blocks * chunks;
    auto run = [&](index_t i) {
        const index_t group = i / (blocks * chunks), block = i / chunks % blocks;
        const index_t k0 = i % chunks * per_part * MR;
        const index_t kc = std::min(per_part * MR, panels * MR - k0);
        const Task task{group, block * NT, std::min(tiles, block * NT + NT), k0, kc};
        winograd_task<T, NV>(x, f, U, bias, y, g, task);
    };
    if (threads <= 1 || tasks == 1) {
        for (index_t i = 0; i < tasks; ++i)
            run(i);
        return;
    }
    // Tasks differ in cost (the last block, the last panels): handed out one at a time.
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (index_t i = 0; i < tasks; ++i)
        run(i);
}

template <typename T>
void winograd(const T *x, const Filter<T> &f, const T *bias, T *y, const ConvShape &g,
              int threads) {
    // The micro-kernel's width as the GEMM's: 2 vectors with AVX-512, else 1.
    if (wide_registers())
        winograd<T, 2>(x, f, bias, y, g, threads);
    else
        winograd<T, 1>(x, f, bias, y, g, threads);
}

}  // namespace

template <typename T>
void conv2d_winograd(const T *x, const T *w, const T *bias, T *y, const ConvShape &g,
                     int threads) {
    const index_t Cg = g.C / g.G, Kg = g.K / g.G;
    const Filter<T> f{w, Kg * Cg * 9, Cg * 9, 9, false};
    winograd(x, f, bias, y, g, threads);
}

template <typename T>
void conv2d_winograd_input_gradient(const T *grad_y, const T *w, T *grad_x, const ConvShape &g,
                                    int threads) {
    // grad_x = the forward convolution of grad_y (K channels, P x Q) by w'[c, k] = w[k, c]
    // flipped, padding 2 - pad, on the transposed geometry.
    const ConvShape t{g.N, g.K, g.P, g.Q, g.C, 3, 3, g.H, g.W, 1, 1, 2 - g.ph, 2 - g.pw, 1, 1, g.G};
    const index_t Cg = g.C / g.G, Kg = g.K / g.G;
    const Filter<T> f{w, Kg * Cg * 9, 9, Cg * 9, true};
    winograd(grad_y, f, static_cast<const T *>(nullptr), grad_x, t, threads);
}

#define FASTCNN_WINOGRAD(T)                                                                      \
    template void conv2d_winograd<T>(const T *, const T *, const T *, T *, const ConvShape &,   \
                                     int);                                                       \
    template void conv2d_winograd_input_gradient<T>(const T *, const T *, T *, const ConvShape &, \
                                                    int);
FASTCNN_WINOGRAD(float)
FASTCNN_WINOGRAD(double)

}  // namespace fastcnn
