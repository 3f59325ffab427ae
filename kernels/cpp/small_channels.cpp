// Convolution with few input channels per group (LeNet c1, CIFAR stems, depthwise), as
// the Numba backend's small_channels.py: forward, input gradient (stride 1: the forward
// pass over grad_y with the flipped, transposed weight) and weight gradient.
//
// Per task (one image, one group, one block of output rows) the input rows the block needs
// are copied into a small buffer (the stage), zero-padded and split into stride phases, so
// that every tap t = (c, r, s) reads one contiguous run: output position j = i * width + q
// of the block reads stage[offsets[t] + j]. No padded copy of x is made and no tap tests
// bounds; the columns q >= Q of each row ((S - 1) * dilation / stride of them) are computed
// and dropped. Without padding and with stride 1 the stage would be x's own rows, and the
// taps read x in place.
//
// Forward: per NR positions of the block and up to MR output channels, every tap
// accumulates in registers (per tap NV vector loads for MR x NV FMAs), then the tile goes to
// y: x is read about once, y written once. Weight gradient: grad_w[k, t] is the dot product
// of grad_y's rows (staged to the same width, zero in the dropped columns) with tap t's run,
// 4 channels x 4 taps per sweep (1 x 9 with one output channel a group). Its sums go by
// fixed runs of tasks (in the vector's lanes, then in double), then the runs in order: the
// same result on every run and thread count.
#include <optional>
#include <vector>

#include "kernels.hpp"
#include "vector.hpp"

namespace fastcnn {
namespace {

constexpr index_t BLOCK = 1536;  // output positions per block: stage and tile stay in L1
constexpr int MR = 6;            // output channels per register tile
constexpr index_t RUNS = 16;     // runs of tasks the weight gradient sums separately

// The staged layout of one geometry.
struct Plan {
    index_t width, rows, height, stage, taps;
    std::vector<index_t> offsets;    // tap t's run in the stage
    std::vector<index_t> x_offsets;  // and in x, when the taps read x in place
    index_t reach;                   // the largest x offset (0 without taps)
    bool in_place;

    explicit Plan(const ConvShape &g) {
        const index_t Cg = g.C / g.G;
        width = g.Q + (g.S - 1) * g.dw / g.sw;
        rows = std::max<index_t>(1, std::min(g.P, BLOCK / std::max<index_t>(1, width)));
        height = rows + (g.R - 1) * g.dh / g.sh;
        stage = Cg * g.sh * g.sw * height * width;
        taps = Cg * g.R * g.S;
        offsets.reserve(std::size_t(taps));
        x_offsets.reserve(std::size_t(taps));
        for (index_t c = 0; c < Cg; ++c)
            for (index_t r = 0; r < g.R; ++r)
                for (index_t s = 0; s < g.S; ++s) {
                    const index_t rr = r * g.dh, ss = s * g.dw;
                    offsets.push_back((((c * g.sh + rr % g.sh) * g.sw + ss % g.sw) * height +
                                       rr / g.sh) * width +
                                      ss / g.sw);
                    x_offsets.push_back((c * g.H + rr) * g.W + ss);
                }
        reach = taps > 0 ? x_offsets.back() : 0;
        // Every side counts: "same" with an even kernel pads only the bottom / right, and in
        // place the last rows would read the next plane instead of zeros.
        in_place = g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0 &&
                   g.P + (g.R - 1) * g.dh == g.H && g.Q + (g.S - 1) * g.dw == g.W;
    }

    index_t blocks(const ConvShape &g) const { return (g.P + rows - 1) / rows; }
};

// Where the forward pass writes: y[n, k, p, q] at data + (n K + k) plane + p row + q column.
// A plain output is (P Q, Q, 1); one stride phase (a, b) of a strided input gradient writes
// every sh-th row and sw-th column of grad_x: (H W, sh W, sw), from a W + b.
template <typename T> struct Output {
    T *data;
    index_t plane, row, column;
};

// This thread's buffer `which`, at least `size` elements, kept between calls.
template <typename T> T *scratch(int which, std::size_t size) {
    thread_local std::vector<T> buffers[4];
    if (buffers[which].size() < size)
        buffers[which].resize(size);
    return buffers[which].data();
}

// stage[((c sh + a) sw + b) height width + i width + j] =
// input[c, (p0 + i) sh + a - ph, j sw + b - pw], 0 outside; input is the group's first plane.
// The outputs j in [lo, hi) of one stage row with 0 <= j stride + shift < size (the rest
// of [0, width) is padding).
struct Run {
    index_t lo, hi;
};

inline Run inside(index_t shift, index_t stride, index_t size, index_t width) {
    const index_t lo = std::min(shift >= 0 ? 0 : (-shift + stride - 1) / stride, width);
    const index_t last = size - 1 - shift;
    return {lo, std::clamp(last < 0 ? 0 : last / stride + 1, lo, width)};
}

template <typename T>
FASTCNN_SIMD void stage_rows(const T *input, const ConvShape &g, const Plan &p, index_t p0,
                             T *stage) {
    const index_t Cg = g.C / g.G, plane = p.height * p.width, width = p.width;
    for (index_t c = 0; c < Cg; ++c)
        for (index_t a = 0; a < g.sh; ++a)
            for (index_t i = 0; i < p.height; ++i) {
                const index_t h = (p0 + i) * g.sh + a - g.ph;
                T *first = stage + ((c * g.sh + a) * g.sw) * plane + i * width;
                if (h < 0 || h >= g.H) {
                    for (index_t b = 0; b < g.sw; ++b)
                        for (index_t j = 0; j < width; ++j)
                            first[b * plane + j] = T(0);
                    continue;
                }
                const T *row = input + (c * g.H + h) * g.W;
                // Stride 2: both column phases from one pass over the row (GCC's vector
                // deinterleave), where each is inside the row; the ends element by element.
                index_t both_lo = width, both_hi = width;
                if (g.sw == 2) {
                    const Run even = inside(-g.pw, 2, g.W, width);
                    const Run odd = inside(1 - g.pw, 2, g.W, width);
                    both_lo = std::max(even.lo, odd.lo);
                    both_hi = std::max(both_lo, std::min(even.hi, odd.hi));
                    const T *pairs = row + 2 * both_lo - g.pw;
                    T *out_even = first + both_lo, *out_odd = first + plane + both_lo;
                    for (index_t j = 0; j < both_hi - both_lo; ++j) {
                        out_even[j] = pairs[2 * j];
                        out_odd[j] = pairs[2 * j + 1];
                    }
                }
                for (index_t b = 0; b < g.sw; ++b) {
                    // out[j] = row[j sw + shift] where 0 <= j sw + shift < W
                    T *out = first + b * plane;
                    const index_t shift = b - g.pw;
                    const Run run = inside(shift, g.sw, g.W, width);
                    for (index_t j = 0; j < run.lo; ++j)
                        out[j] = T(0);
                    if (g.sw == 1) {
                        const T *in = row + shift;
                        for (index_t j = run.lo; j < run.hi; ++j)
                            out[j] = in[j];
                    } else {  // around the run both phases took, if any
                        for (index_t j = run.lo; j < std::min(run.hi, both_lo); ++j)
                            out[j] = row[j * g.sw + shift];
                        for (index_t j = std::max(run.lo, both_hi); j < run.hi; ++j)
                            out[j] = row[j * g.sw + shift];
                    }
                    for (index_t j = run.hi; j < width; ++j)
                        out[j] = T(0);
                }
            }
}

// Where the taps of one block (image n, group, output rows from p0) read: x itself when the
// plan reads in place and the block's `reads` positions from its start stay inside x, else
// the stage, filled here, with `tail` zeros past it for the reads past the last position.
template <typename T> struct Source {
    const T *data;
    const index_t *offsets;
};

template <typename T>
Source<T> block_source(const T *x, index_t x_size, const ConvShape &g, const Plan &p, index_t n,
                       index_t group, index_t p0, index_t reads, index_t tail) {
    const T *input = x + (n * g.C + group * (g.C / g.G)) * g.H * g.W;
    const T *data = input + p0 * g.W;
    if (p.in_place && (data - x) + reads + p.reach <= x_size)
        return {data, p.x_offsets.data()};
    T *stage = scratch<T>(0, std::size_t(p.stage + tail));
    for (index_t j = p.stage; j < p.stage + tail; ++j)
        stage[j] = T(0);
    stage_rows(input, g, p, p0, stage);
    return {stage, p.offsets.data()};
}

// tile[i][0 .. NR) = sum over t of a[t M + i] * data[offsets[t] + j0 ..] (+ bias[i]), i < M.
template <typename T, int M, int NV>
[[gnu::always_inline]] inline void tap_tile(const T *a, const T *data, const index_t *offsets,
                                            index_t taps, index_t j0, const T *bias, T *tile) {
    using V = typename Vector<T>::type;
    using U = typename Vector<T>::unaligned;
    constexpr int L = int(sizeof(V) / sizeof(T));
    V acc[M][NV] = {};
    const T *base = data + j0;
    for (index_t t = 0; t < taps; ++t) {
        const T *b = base + offsets[t];
        V bv[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v)
            bv[v] = *reinterpret_cast<const U *>(b + v * L);
#pragma GCC unroll 8
        for (int i = 0; i < M; ++i) {
            const V av = a[t * M + i] - V{};  // a broadcast (x - 0 keeps -0.0 and NaN)
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v)
                acc[i][v] += av * bv[v];
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) {
        const T start = bias ? bias[i] : T(0);  // (no + 0 without a bias: it would turn -0 to 0)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v)
            *reinterpret_cast<U *>(tile + (i * NV + v) * L) = bias ? acc[i][v] + start : acc[i][v];
    }
}

// Output channels k .. k + M of one block: NR positions at a time, every tap into the
// register tile, then the tile's real columns to y (out: channel k's first row of the block).
// One function per M and clone: inlined together into one loop, GCC kept half of the
// accumulators on the stack.
template <typename T, int M, int NV>
__attribute__((noinline)) FASTCNN_SIMD void panel_block(const T *a, const T *data,
                                                        const index_t *offsets, index_t taps,
                                                        index_t used, const T *bias,
                                                        Output<T> out, index_t Q,
                                                        index_t width) {
    constexpr index_t NR = NV * index_t(64 / sizeof(T));
    alignas(64) T tile[M * NR];
    for (index_t j0 = 0; j0 < used; j0 += NR) {
        tap_tile<T, M, NV>(a, data, offsets, taps, j0, bias, tile);
        const index_t count = std::min(NR, used - j0);
        for (index_t i = j0 / width; i <= (j0 + count - 1) / width; ++i) {
            const index_t q_lo = std::max<index_t>(0, j0 - i * width);
            const index_t q_hi = std::min(Q, j0 + count - i * width);
            for (index_t kk = 0; kk < M; ++kk) {
                T *row = out.data + kk * out.plane + i * out.row;
                const T *in = tile + kk * NR + i * width - j0;
                if (out.column == 1)
                    for (index_t q = q_lo; q < q_hi; ++q)
                        row[q] = in[q];
                else
                    for (index_t q = q_lo; q < q_hi; ++q)
                        row[q * out.column] = in[q];
            }
        }
    }
}

// The forward pass of image n, group `group`, output rows [p0, p0 + rows) (rows <= p.rows):
// y at the group's first channel, row p0. panels: per group, Kg channels in panels of MR
// (the last narrower), each taps x m.
template <typename T, int NV>
void forward_block(const T *x, index_t x_size, const T *panels, const T *bias, Output<T> y,
                   const ConvShape &g, const Plan &p, index_t n, index_t group, index_t p0,
                   index_t rows) {
    constexpr index_t NR = NV * index_t(64 / sizeof(T));
    const index_t Kg = g.K / g.G;
    const index_t used = (rows - 1) * p.width + g.Q;
    // The last tile reads NR positions from its start.
    const auto [data, offsets] =
        block_source(x, x_size, g, p, n, group, p0, (used + NR - 1) / NR * NR, NR);
    for (index_t k0 = 0; k0 < Kg; k0 += MR) {
        const index_t m = std::min<index_t>(MR, Kg - k0), k = group * Kg + k0;
        const T *a = panels + k * p.taps, *b = bias ? bias + k : nullptr;
        Output<T> out = y;
        out.data += k0 * y.plane;
        using Kernel = decltype(&panel_block<T, 1, NV>);
        static constexpr Kernel kernels[MR] = {
            panel_block<T, 1, NV>, panel_block<T, 2, NV>, panel_block<T, 3, NV>,
            panel_block<T, 4, NV>, panel_block<T, 5, NV>, panel_block<T, 6, NV>};
        kernels[m - 1](a, data, offsets, p.taps, used, b, out, g.Q, p.width);
    }
}

// One task of the forward pass: image n, group `group`, a block of p.rows output rows.
template <typename T, int NV>
void forward_task(const T *x, index_t x_size, const T *panels, const T *bias, Output<T> y,
                  const ConvShape &g, const Plan &p, index_t task) {
    const index_t blocks = p.blocks(g);
    const index_t n = task / (g.G * blocks), group = task / blocks % g.G;
    const index_t p0 = task % blocks * p.rows, rows = std::min(p.rows, g.P - p0);
    y.data += (n * g.K + group * (g.K / g.G)) * y.plane + p0 * y.row;
    forward_block<T, NV>(x, x_size, panels, bias, y, g, p, n, group, p0, rows);
}

// panels[k0 taps + t m + i] = weight(k0 + i, t) for each panel of channels k0 .. k0 + m:
// MR channels, fewer in the last panel of a group.
template <typename T, typename Weight>
void pack_panels(index_t K, index_t Kg, index_t taps, Weight weight, T *panels) {
    index_t m = 0;
    for (index_t k0 = 0; k0 < K; k0 += m) {
        m = std::min<index_t>(MR, (k0 / Kg + 1) * Kg - k0);
        T *panel = panels + k0 * taps;
        for (index_t t = 0; t < taps; ++t)
            for (index_t i = 0; i < m; ++i)
                panel[t * m + i] = weight(k0 + i, t);
    }
}

template <typename T>
void forward_tasks(const T *x, const T *panels, const T *bias, Output<T> y, const ConvShape &g,
                   int threads) {
    const Plan p(g);
    const index_t tasks = g.N * g.G * p.blocks(g), x_size = g.N * g.C * g.H * g.W;
    if (g.P == 0 || g.Q == 0)
        return;
    const bool wide = wide_registers();
    parallel_for(tasks, 1, threads, [&](index_t begin, index_t end) {
        for (index_t task = begin; task < end; ++task) {
            if (wide)
                forward_task<T, 2>(x, x_size, panels, bias, y, g, p, task);
            else
                forward_task<T, 1>(x, x_size, panels, bias, y, g, p, task);
        }
    });
}

// lanes[a][b] += the lane-wise sums over j < count of grads[a][j] data[offsets[b] + j], for
// the A rows of grads and B taps (count a multiple of the vector length, `live` x `taps` of
// the tile stored). The lanes are summed once per run: per task they would cost as much as
// the products when the block is small (LeNet c2: 136 positions).
template <typename T, int A, int B>
[[gnu::always_inline]] inline void dots(const T *const *grads, const T *data,
                                        const index_t *offsets, index_t count, T *lanes,
                                        index_t lane_row, index_t live, index_t taps) {
    using V = typename Vector<T>::type;
    using U = typename Vector<T>::unaligned;
    constexpr int L = int(sizeof(V) / sizeof(T));
    V acc[A][B] = {};
    for (index_t j = 0; j < count; j += L) {
        V gv[A], sv[B];
#pragma GCC unroll 16
        for (int a = 0; a < A; ++a)
            gv[a] = *reinterpret_cast<const U *>(grads[a] + j);
#pragma GCC unroll 16
        for (int b = 0; b < B; ++b)
            sv[b] = *reinterpret_cast<const U *>(data + offsets[b] + j);
#pragma GCC unroll 16
        for (int a = 0; a < A; ++a)
#pragma GCC unroll 16
            for (int b = 0; b < B; ++b)
                acc[a][b] += gv[a] * sv[b];
    }
    for (index_t a = 0; a < live; ++a)
        for (index_t b = 0; b < taps; ++b)
            *reinterpret_cast<U *>(lanes + a * lane_row + b * L) += acc[a][b];
}

// One task of the weight gradient, added into lanes ((K x taps) x the vector length).
template <typename T, int A, int B>
FASTCNN_SIMD void weight_gradient_task(const T *grad_y, const T *x, index_t x_size,
                                       const ConvShape &g, const Plan &p, index_t task,
                                       T *lanes) {
    constexpr index_t L = 64 / sizeof(T);
    const index_t Kg = g.K / g.G, blocks = p.blocks(g);
    const index_t n = task / (g.G * blocks), group = task / blocks % g.G;
    const index_t p0 = task % blocks * p.rows, rows = std::min(p.rows, g.P - p0);
    const index_t used = (rows - 1) * p.width + g.Q, count = (used + L - 1) / L * L;
    const auto [data, offsets] = block_source(x, x_size, g, p, n, group, p0, count, L);
    // grad_y's rows at the block's width, zero in the dropped columns and past `used`.
    T *grads = scratch<T>(1, std::size_t(Kg * count));
    for (index_t kk = 0; kk < Kg; ++kk) {
        T *row = grads + kk * count;
        const T *in = grad_y + ((n * g.K + group * Kg + kk) * g.P + p0) * g.Q;
        for (index_t j = 0; j < count; ++j)
            row[j] = T(0);
        for (index_t i = 0; i < rows; ++i)
            for (index_t q = 0; q < g.Q; ++q)
                row[i * p.width + q] = in[i * g.Q + q];
    }
    // Edge tiles repeat the last channel or tap; the repeats are not stored.
    for (index_t k0 = 0; k0 < Kg; k0 += A) {
        const T *rows_of[A];
        for (int a = 0; a < A; ++a)
            rows_of[a] = grads + std::min<index_t>(k0 + a, Kg - 1) * count;
        for (index_t t0 = 0; t0 < p.taps; t0 += B) {
            index_t taps[B];
            for (int b = 0; b < B; ++b)
                taps[b] = offsets[std::min<index_t>(t0 + b, p.taps - 1)];
            T *out = lanes + ((group * Kg + k0) * p.taps + t0) * L;
            dots<T, A, B>(rows_of, data, taps, count, out, p.taps * L,
                          std::min<index_t>(A, Kg - k0), std::min<index_t>(B, p.taps - t0));
        }
    }
}

}  // namespace

template <typename T>
void conv2d_small_channels(const T *x, const T *w, const T *bias, T *y, const ConvShape &g,
                           int threads) {
    const index_t taps = (g.C / g.G) * g.R * g.S;
    std::vector<T> panels(std::size_t(g.K * taps));
    pack_panels<T>(g.K, g.K / g.G, taps, [&](index_t k, index_t t) { return w[k * taps + t]; },
                   panels.data());
    forward_tasks(x, panels.data(), bias, Output<T>{y, g.P * g.Q, g.Q, 1}, g, threads);
}

// The taps of one dimension that reach input phase `a` (positions a, a + stride, ...) of a
// strided convolution, as a stride-1 convolution of grad_y: tap j (0 <= j < count) is the
// forward's tap first - j step, reading grad_y at i - pad + j dilation for phase position i.
struct PhaseTaps {
    index_t count = 0, first = 0, step = 1, pad = 0, dilation = 1;
};

inline PhaseTaps phase_taps(index_t a, index_t taps, index_t stride, index_t pad,
                            index_t dilation) {
    // Tap r reaches phase position i when a + pad - r dilation = (p - i) stride for an
    // output p: grad_y's row i + e_r, e_r = (a + pad - r dilation) / stride.
    PhaseTaps t;
    index_t r0 = 0;
    while (r0 < taps && (a + pad - r0 * dilation) % stride != 0)
        ++r0;
    if (r0 == taps)
        return t;
    index_t step = 1;
    while ((step * dilation) % stride != 0)
        ++step;
    t.count = (taps - 1 - r0) / step + 1;
    t.step = step;
    t.first = r0 + (t.count - 1) * step;       // flipped: tap j is r = first - j step
    t.dilation = step * dilation / stride;     // e_r falls by this from one tap to the next
    const index_t e_first = (a + pad - t.first * dilation) / stride;
    t.pad = -e_first;  // tap 0 reads grad_y at i + e_first
    return t;
}

// One stride phase of a strided input gradient as a stride-1 convolution of grad_y (see
// conv2d_small_channels_input_gradient).
template <typename T> struct Phase {
    index_t rows, cols;  // grad_x's positions in this phase
    PhaseTaps along_h, along_w;
    ConvShape shape;
    std::optional<Plan> plan;  // none where no tap reaches the phase: zero there
    std::vector<T> panels;

    Phase(const T *w, const ConvShape &g, index_t a, index_t b)
        : rows((g.H - a + g.sh - 1) / g.sh), cols((g.W - b + g.sw - 1) / g.sw),
          along_h(phase_taps(a, g.R, g.sh, g.ph, g.dh)),
          along_w(phase_taps(b, g.S, g.sw, g.pw, g.dw)),
          shape{g.N,   g.K,   g.P,   g.Q, g.C, along_h.count, along_w.count, rows, cols, 1, 1,
                along_h.pad, along_w.pad, along_h.dilation, along_w.dilation, g.G} {
        if (along_h.count == 0 || along_w.count == 0 || rows <= 0 || cols <= 0)
            return;
        plan.emplace(shape);
        const index_t Cg = g.C / g.G, Kg = g.K / g.G, RS = g.R * g.S;
        const index_t window = along_h.count * along_w.count, taps = Kg * window;
        panels.resize(std::size_t(g.C * taps));
        auto flipped = [&](index_t c, index_t tap) {
            const index_t group = c / Cg, k = group * Kg + tap / window;
            const index_t j = tap / along_w.count % along_h.count, l = tap % along_w.count;
            const index_t r = along_h.first - j * along_h.step;
            const index_t s = along_w.first - l * along_w.step;
            return w[(k * Cg + c % Cg) * RS + r * g.S + s];
        };
        pack_panels<T>(g.C, Cg, taps, flipped, panels.data());
    }
};

// A block of rows [i0, i0 + R) of every phase's output (buffers: phase by phase, Cg x R x
// cols each) into grad_x's rows (i0 + i) sh + a of image n's group.
template <typename T>
FASTCNN_SIMD void merge_block(const std::vector<Phase<T>> &phases, const T *buffers,
                              const index_t *starts, T *grad_x, const ConvShape &g, index_t n,
                              index_t group, index_t i0, index_t R) {
    const index_t Cg = g.C / g.G;
    for (index_t c = 0; c < Cg; ++c)
        for (index_t i = 0; i < R; ++i)
            for (index_t a = 0; a < g.sh; ++a) {
                const index_t ih = (i0 + i) * g.sh + a;
                if (ih >= g.H)
                    break;
                T *out = grad_x + ((n * g.C + group * Cg + c) * g.H + ih) * g.W;
                auto row = [&](index_t b) {
                    const index_t phase = a * g.sw + b;
                    return buffers + starts[phase] + (c * R + i) * phases[phase].cols;
                };
                if (g.sw == 2) {  // both column phases in one loop: interleaving stores
                    const T *even = row(0), *odd = row(1);
                    for (index_t j = 0; j < g.W / 2; ++j) {
                        out[2 * j] = even[j];
                        out[2 * j + 1] = odd[j];
                    }
                    if (g.W % 2)
                        out[g.W - 1] = even[g.W / 2];
                    continue;
                }
                for (index_t b = 0; b < g.sw; ++b) {
                    const T *in = row(b);
                    for (index_t j = 0; j < phases[a * g.sw + b].cols; ++j)
                        out[j * g.sw + b] = in[j];
                }
            }
}

template <typename T>
void conv2d_small_channels_input_gradient(const T *grad_y, const T *w, T *grad_x,
                                          const ConvShape &g, int threads) {
    // Per stride phase (a, b) of grad_x (every input position with ih % sh = a, iw % sw =
    // b), grad_x there = conv2d(grad_y, w') over the taps that reach it, with
    // w'[c, k, j, l] = w[k, c, r_j, s_l] (flipped) per group: a stride-1 convolution, the
    // forward pass of this file. Stride 1 is the one phase, padding (R - 1) dilation - pad
    // (negative: a crop), written to grad_x directly. Strided, a task computes one block of
    // rows of every phase into buffers and merges them into grad_x's rows: written to grad_x
    // phase by phase, every sw-th element a scalar store, they cost twice the convolution
    // (MobileNet's 3x3/2 depthwise), and a merge of whole phases read them back from memory.
    // A phase no tap reaches is zero.
    std::vector<Phase<T>> phases;
    for (index_t a = 0; a < g.sh; ++a)
        for (index_t b = 0; b < g.sw; ++b)
            phases.emplace_back(w, g, a, b);
    const index_t Cg = g.C / g.G, gy_size = g.N * g.K * g.P * g.Q;
    const bool wide = wide_registers();
    if (g.sh == 1 && g.sw == 1) {
        const Phase<T> &only = phases[0];
        if (only.plan)
            forward_tasks(grad_y, only.panels.data(), static_cast<const T *>(nullptr),
                          Output<T>{grad_x, g.H * g.W, g.W, 1}, only.shape, threads);
        else  // a padding past the kernel's reach on every side: no tap reaches grad_x
            for (index_t i = 0; i < g.N * g.C * g.H * g.W; ++i)
                grad_x[i] = T(0);
        return;
    }
    // Blocks of R rows of every phase: the fewest any phase's plan takes.
    index_t R = phases[0].rows;
    std::vector<index_t> starts(phases.size() + 1, 0);
    for (std::size_t i = 0; i < phases.size(); ++i) {
        if (phases[i].plan)
            R = std::min(R, phases[i].plan->rows);
    }
    R = std::max<index_t>(R, 1);
    for (std::size_t i = 0; i < phases.size(); ++i)
        starts[i + 1] = starts[i] + Cg * R * std::max<index_t>(phases[i].cols, 0);
    const index_t blocks = (phases[0].rows + R - 1) / R, tasks = g.N * g.G * blocks;
    if (g.H == 0 || g.W == 0)
        return;
    parallel_for(tasks, 1, threads, [&](index_t begin, index_t end) {
        T *buffers = scratch<T>(3, std::size_t(starts.back()));
        for (index_t task = begin; task < end; ++task) {
            const index_t n = task / (g.G * blocks), group = task / blocks % g.G;
            const index_t i0 = task % blocks * R;
            for (std::size_t i = 0; i < phases.size(); ++i) {
                const Phase<T> &phase = phases[i];
                const index_t rows = std::min(R, phase.rows - i0);
                if (rows <= 0)
                    continue;
                T *out = buffers + starts[i];
                if (!phase.plan) {
                    for (index_t j = 0; j < starts[i + 1] - starts[i]; ++j)
                        out[j] = T(0);
                    continue;
                }
                const Output<T> target{out, R * phase.cols, phase.cols, 1};
                if (wide)
                    forward_block<T, 2>(grad_y, gy_size, phase.panels.data(), nullptr, target,
                                        phase.shape, *phase.plan, n, group, i0, rows);
                else
                    forward_block<T, 1>(grad_y, gy_size, phase.panels.data(), nullptr, target,
                                        phase.shape, *phase.plan, n, group, i0, rows);
            }
            merge_block(phases, buffers, starts.data(), grad_x, g, n, group, i0, R);
        }
    });
}

template <typename T>
void conv2d_small_channels_weight_gradient(const T *grad_y, const T *x, T *grad_w,
                                           const ConvShape &g, int threads) {
    const Plan p(g);
    const index_t size = g.K * p.taps, tasks = g.N * g.G * p.blocks(g);
    const index_t runs = std::min(RUNS, tasks), x_size = g.N * g.C * g.H * g.W;
    constexpr index_t L = 64 / sizeof(T);
    std::vector<double> sums(std::size_t(std::max<index_t>(runs, 1) * size), 0.0);
    const bool wide = wide_registers();
    if (g.P > 0 && g.Q > 0)
        parallel_for(runs, 1, threads, [&](index_t begin, index_t end) {
            T *lanes = scratch<T>(2, std::size_t(size * L));
            for (index_t run = begin; run < end; ++run) {
                for (index_t i = 0; i < size * L; ++i)
                    lanes[i] = T(0);
                for (index_t task = run * tasks / runs; task < (run + 1) * tasks / runs; ++task) {
                    if (g.K == g.G)  // one output channel a group (depthwise): taps wide
                        weight_gradient_task<T, 1, 9>(grad_y, x, x_size, g, p, task, lanes);
                    else if (wide)
                        weight_gradient_task<T, 4, 4>(grad_y, x, x_size, g, p, task, lanes);
                    else
                        weight_gradient_task<T, 2, 2>(grad_y, x, x_size, g, p, task, lanes);
                }
                double *out = sums.data() + run * size;
                for (index_t i = 0; i < size; ++i)
                    for (index_t l = 0; l < L; ++l)
                        out[i] += double(lanes[i * L + l]);
            }
        });
    for (index_t i = 0; i < size; ++i) {
        double total = 0.0;
        for (index_t run = 0; run < runs; ++run)
            total += sums[std::size_t(run * size + i)];
        grad_w[i] = T(total);
    }
}

#define FASTCNN_SMALL_CHANNELS(T)                                                               \
    template void conv2d_small_channels<T>(const T *, const T *, const T *, T *,               \
                                           const ConvShape &, int);                            \
    template void conv2d_small_channels_input_gradient<T>(const T *, const T *, T *,           \
                                                          const ConvShape &, int);             \
    template void conv2d_small_channels_weight_gradient<T>(const T *, const T *, T *,          \
                                                           const ConvShape &, int);
FASTCNN_SMALL_CHANNELS(float)
FASTCNN_SMALL_CHANNELS(double)

}  // namespace fastcnn
