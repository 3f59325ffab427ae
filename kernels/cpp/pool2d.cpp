// Max and average 2-D pooling, forward and backward, NCHW planes, float32 / float64, every option.
// Algorithm: one (n, c) plane per task; a padded row split into column phases, so every tap is a
// contiguous run with no bounds tests; backward gathers (average) or owns its plane (max).
//
// Memory-bound: a forward reads x and writes y, a backward reads grad_y (and x or the int64
// indices) and writes grad_x. A 112 x 112 float plane is 49 KiB: a task's plane and its row
// scratch stay in L2, so memory sees each byte once.
//
// Why phases: the window of output q starts at padded column q * stride_w, so tap s of a row's
// outputs reads columns s * dilation_w + q * stride_w, a strided gather. In the phase layout
// phase[k][j] = padded[j * stride_w + k] the same tap reads phase[k_s][o_s + q], q = 0, 1, ...
// (k_s, o_s: remainder and quotient of s * dilation_w by stride_w): contiguous, and the margins
// hold -inf (max) or 0 (average) where the padding is. Splitting a row is one pass in L1.
//
// Values (max and average forward) go separably: the window's rows reduced into one padded row,
// split into phases, then its columns. The maxima's positions fold the taps r-major, s inner,
// as PyTorch scans them: a larger value or a NaN replaces (the first maximum, else the last NaN).
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels.hpp"

namespace fastcnn {
namespace {

template <typename T> constexpr T minus_infinity() { return -std::numeric_limits<T>::infinity(); }

// PyTorch's rule: a larger value or a NaN replaces the running maximum.
template <typename T> inline bool replaces(T value, T best) {
    return (value > best) | (value != value);
}

// The larger of a and b, NaN if either is (a + b then is): the value the rule above keeps, for
// the paths that need no position. One unordered test beside the max: the form with
// `b != b` and `a != a` measured 2.5x slower in the 2x2 loop, and GCC vectorises it badly.
template <typename T> inline T larger(T a, T b) {
    const T maximum = b > a ? b : a;
    return __builtin_isunordered(a, b) ? a + b : maximum;
}

// The same for a 2x2 window: the plain maximum, and the sum where a NaN is (a + b + c + d is
// NaN then); 2x faster than three larger().
template <typename T> inline T largest_of_four(T a, T b, T c, T d) {
    const T upper = b > a ? b : a, lower = d > c ? d : c;
    const T maximum = lower > upper ? lower : upper;
    return __builtin_isunordered(a, b) | __builtin_isunordered(c, d) ? (a + b) + (c + d) : maximum;
}

// ---------------------------------------------------------------------------- the row layout

// Columns per phase: the padded row holds pad_w + W columns and every window's last tap.
inline index_t phase_length(const PoolGeometry &g) {
    const index_t width =
        std::max(g.pad_w + g.W, (g.Q - 1) * g.stride_w + (g.S - 1) * g.dilation_w + 1);
    return (width + g.stride_w - 1) / g.stride_w;
}

// Where tap s's run starts in the phases: phase (s dw) % stride_w, column (s dw) / stride_w.
inline std::vector<index_t> tap_starts(const PoolGeometry &g, index_t length) {
    std::vector<index_t> starts(g.S);
    for (index_t s = 0; s < g.S; ++s) {
        const index_t column = s * g.dilation_w;
        starts[s] = (column % g.stride_w) * length + column / g.stride_w;
    }
    return starts;
}

// The first tap inside x of each window along one axis (-1: the window lies in the padding).
inline std::vector<index_t> first_inside(index_t outputs, index_t size, index_t kernel,
                                         index_t stride, index_t pad, index_t dilation) {
    std::vector<index_t> first(outputs);
    for (index_t o = 0; o < outputs; ++o) {
        const index_t start = o * stride - pad;
        const index_t tap = start >= 0 ? 0 : (-start + dilation - 1) / dilation;
        const index_t at = start + tap * dilation;
        first[o] = tap < kernel && at < size ? at : -1;
    }
    return first;
}

// phases[k * length + j] = padded[j * stride + k]; the common strides as constants, so the
// compiler unrolls the phase loop into interleaved vector loads.
template <index_t stride, typename T>
inline void split_fixed(const T *__restrict__ padded, T *__restrict__ phases, index_t length) {
    for (index_t j = 0; j < length; ++j)
        for (index_t k = 0; k < stride; ++k)
            phases[k * length + j] = padded[j * stride + k];
}

template <typename T>
inline void split_phases(const T *__restrict__ padded, T *__restrict__ phases, index_t length,
                         index_t stride) {
    if (stride == 2)
        split_fixed<2>(padded, phases, length);
    else if (stride == 3)
        split_fixed<3>(padded, phases, length);
    else
        for (index_t k = 0; k < stride; ++k)
            for (index_t j = 0; j < length; ++j)
                phases[k * length + j] = padded[j * stride + k];
}

// padded[j * stride + k] = phases[k * length + j]: the inverse of split_phases.
template <index_t stride, typename T>
inline void merge_fixed(const T *__restrict__ phases, T *__restrict__ padded, index_t length) {
    for (index_t j = 0; j < length; ++j)
        for (index_t k = 0; k < stride; ++k)
            padded[j * stride + k] = phases[k * length + j];
}

template <typename T>
inline void merge_phases(const T *__restrict__ phases, T *__restrict__ padded, index_t length,
                         index_t stride) {
    if (stride == 2)
        merge_fixed<2>(phases, padded, length);
    else if (stride == 3)
        merge_fixed<3>(phases, padded, length);
    else
        for (index_t k = 0; k < stride; ++k)
            for (index_t j = 0; j < length; ++j)
                padded[j * stride + k] = phases[k * length + j];
}

// A row of the padded input (its margins at the fill value) and its phases; with stride 1 the
// padded row is its own single phase.
template <typename T> struct PhaseRow {
    index_t length, stride;
    std::vector<T> padded, split;
    PhaseRow(const PoolGeometry &g, T fill)
        : length(phase_length(g)), stride(g.stride_w), padded(g.stride_w * length, fill),
          split(g.stride_w == 1 ? 0 : g.stride_w * length) {}
    T *inner(const PoolGeometry &g) { return padded.data() + g.pad_w; }
    const T *phases() {
        if (stride == 1)
            return padded.data();
        split_phases(padded.data(), split.data(), length, stride);
        return split.data();
    }
};

template <typename T> inline void copy_row(T *__restrict__ target, const T *__restrict__ source,
                                           index_t n) {
    for (index_t i = 0; i < n; ++i)
        target[i] = source[i];
}

template <typename T> inline void fill_row(T *__restrict__ target, T value, index_t n) {
    for (index_t i = 0; i < n; ++i)
        target[i] = value;
}

template <typename T>
inline void max_into(T *__restrict__ target, const T *__restrict__ source, index_t n) {
    for (index_t i = 0; i < n; ++i)
        target[i] = larger(target[i], source[i]);
}

template <typename T>
inline void add_into(T *__restrict__ target, const T *__restrict__ source, index_t n) {
    for (index_t i = 0; i < n; ++i)
        target[i] += source[i];
}

// ---------------------------------------------------------------------------- max, values

// inner[w] = the maximum over the rows of output row p's windows (-inf where none is inside).
template <typename T>
inline void vertical_max(const T *plane, T *inner, index_t p, const PoolGeometry &g) {
    bool started = false;
    for (index_t r = 0; r < g.R; ++r) {
        const index_t h = p * g.stride_h - g.pad_h + r * g.dilation_h;
        if (h < 0 || h >= g.H)
            continue;
        if (started)
            max_into(inner, plane + h * g.W, g.W);
        else
            copy_row(inner, plane + h * g.W, g.W);
        started = true;
    }
    if (!started)
        fill_row(inner, minus_infinity<T>(), g.W);
}

template <typename T>
FASTCNN_SIMD void max_pool_values_span(const T *x, T *y, PoolGeometry g, const index_t *starts,
                                       index_t begin, index_t end) {
    PhaseRow<T> row(g, minus_infinity<T>());
    T *inner = row.inner(g);
    for (index_t plane = begin; plane < end; ++plane) {
        const T *x_plane = x + plane * g.H * g.W;
        T *y_plane = y + plane * g.P * g.Q;
        for (index_t p = 0; p < g.P; ++p) {
            vertical_max(x_plane, inner, p, g);
            const T *phases = row.phases();
            T *y_row = y_plane + p * g.Q;
            copy_row(y_row, phases + starts[0], g.Q);
            for (index_t s = 1; s < g.S; ++s)
                max_into(y_row, phases + starts[s], g.Q);
        }
    }
}

// ---------------------------------------------------------------------------- max, positions

// Offsets of a window's pick from its corner p stride_h W + q stride_w: int32 for float (the
// lanes of the values) when they fit, else int64. NO_TAP: no tap has replaced -inf yet.
template <typename Offset> constexpr Offset NO_TAP = std::numeric_limits<Offset>::min();

// One tap of every window of a row: a larger value or a NaN replaces (the masks as Offset
// lanes, which GCC vectorises beside the values; inside argmax_row's loops it did not).
template <typename T, typename Offset>
inline void fold_tap(const T *__restrict__ tap, T *__restrict__ best, Offset *__restrict__ offset,
                     Offset here, index_t Q) {
    for (index_t q = 0; q < Q; ++q) {
        const T value = tap[q], current = best[q];
        const Offset take = -Offset(value > current) | -Offset(value != value);
        best[q] = take ? value : current;
        offset[q] = take ? here : offset[q];
    }
}

// Folds every tap of output row p, r-major, into best[q] and offset[q].
template <typename T, typename Offset>
inline void argmax_row(const T *x_plane, PhaseRow<T> &row, const index_t *starts, index_t p,
                       const PoolGeometry &g, T *__restrict__ best, Offset *__restrict__ offset) {
    fill_row(best, minus_infinity<T>(), g.Q);
    fill_row(offset, NO_TAP<Offset>, g.Q);
    T *inner = row.inner(g);
    for (index_t r = 0; r < g.R; ++r) {
        const index_t h = p * g.stride_h - g.pad_h + r * g.dilation_h;
        if (h < 0 || h >= g.H)
            continue;
        copy_row(inner, x_plane + h * g.W, g.W);
        const T *phases = row.phases();
        for (index_t s = 0; s < g.S; ++s)
            fold_tap(phases + starts[s], best, offset,
                     Offset((r * g.dilation_h - g.pad_h) * g.W + s * g.dilation_w - g.pad_w), g.Q);
    }
}

// The flat input position of each pick of output row p; a window of -inf only reports its
// first tap inside x, or -1 when it lies wholly in the padding.
template <typename Offset>
inline void positions_row(const Offset *__restrict__ offset, std::int64_t *__restrict__ where,
                          index_t p, const PoolGeometry &g, const index_t *first_row,
                          const index_t *first_column) {
    const index_t corner = p * g.stride_h * g.W;
    bool missing = false;
    for (index_t q = 0; q < g.Q; ++q) {
        missing |= offset[q] == NO_TAP<Offset>;
        where[q] = corner + q * g.stride_w + index_t(offset[q]);
    }
    if (missing)
        for (index_t q = 0; q < g.Q; ++q)
            if (offset[q] == NO_TAP<Offset>)
                where[q] = first_row[p] < 0 || first_column[q] < 0
                               ? -1
                               : first_row[p] * g.W + first_column[q];
}

struct PositionTables {
    std::vector<index_t> starts, first_row, first_column;
    explicit PositionTables(const PoolGeometry &g)
        : starts(tap_starts(g, phase_length(g))),
          first_row(first_inside(g.P, g.H, g.R, g.stride_h, g.pad_h, g.dilation_h)),
          first_column(first_inside(g.Q, g.W, g.S, g.stride_w, g.pad_w, g.dilation_w)) {}
};

template <typename T, typename Offset>
FASTCNN_SIMD void max_pool_indices_span(const T *x, T *y, std::int64_t *indices, PoolGeometry g,
                                        const PositionTables *tables, index_t begin,
                                        index_t end) {
    PhaseRow<T> row(g, minus_infinity<T>());
    std::vector<Offset> offset(g.Q);
    for (index_t plane = begin; plane < end; ++plane) {
        const T *x_plane = x + plane * g.H * g.W;
        for (index_t p = 0; p < g.P; ++p) {
            const index_t at = (plane * g.P + p) * g.Q;
            argmax_row(x_plane, row, tables->starts.data(), p, g, y + at, offset.data());
            positions_row(offset.data(), indices + at, p, g, tables->first_row.data(),
                          tables->first_column.data());
        }
    }
}

// The plane is this task's own: its gradient adds in output order, deterministically.
template <typename T, typename Offset>
FASTCNN_SIMD void max_pool_backward_search_span(const T *grad_y, const T *x, T *grad_x,
                                                PoolGeometry g, const PositionTables *tables,
                                                index_t begin, index_t end) {
    PhaseRow<T> row(g, minus_infinity<T>());
    std::vector<T> best(g.Q);
    std::vector<Offset> offset(g.Q);
    std::vector<std::int64_t> where(g.Q);
    for (index_t plane = begin; plane < end; ++plane) {
        const T *x_plane = x + plane * g.H * g.W;
        T *grad_plane = grad_x + plane * g.H * g.W;
        fill_row(grad_plane, T(0), g.H * g.W);
        for (index_t p = 0; p < g.P; ++p) {
            argmax_row(x_plane, row, tables->starts.data(), p, g, best.data(), offset.data());
            positions_row(offset.data(), where.data(), p, g, tables->first_row.data(),
                          tables->first_column.data());
            const T *gradient = grad_y + (plane * g.P + p) * g.Q;
            for (index_t q = 0; q < g.Q; ++q)
                if (where[q] >= 0)
                    grad_plane[where[q]] += gradient[q];
        }
    }
}

template <typename T>
void max_pool_backward_indices_span(const T *grad_y, const std::int64_t *indices, T *grad_x,
                                    PoolGeometry g, index_t begin, index_t end) {
    const index_t outputs = g.P * g.Q;
    for (index_t plane = begin; plane < end; ++plane) {
        T *grad_plane = grad_x + plane * g.H * g.W;
        const T *gradient = grad_y + plane * outputs;
        const std::int64_t *where = indices + plane * outputs;
        std::fill(grad_plane, grad_plane + g.H * g.W, T(0));
        for (index_t k = 0; k < outputs; ++k)
            if (where[k] >= 0)  // checked to lie in [-1, H*W); -1: wholly in the padding
                grad_plane[where[k]] += gradient[k];
    }
}

// ---------------------------------------------------------------------------- max, 2x2 / 2
// Stride 2, no padding, dilation 1, every window inside x: a plain window loop. Each window
// row is reduced first, then the lower row's pick against the upper's: every tap of the lower
// row comes later in the scan, so this is the sequential rule.

template <typename T>
FASTCNN_SIMD void max_pool_2x2_span(const T *x, T *y, PoolGeometry g, index_t begin,
                                    index_t end) {
    const index_t W = g.W;
    for (index_t plane = begin; plane < end; ++plane)
        for (index_t p = 0; p < g.P; ++p) {
            const T *__restrict__ top = x + plane * g.H * W + 2 * p * W;
            const T *__restrict__ bottom = top + W;
            T *__restrict__ y_row = y + (plane * g.P + p) * g.Q;
            for (index_t q = 0; q < g.Q; ++q)
                y_row[q] = largest_of_four(top[2 * q], top[2 * q + 1], bottom[2 * q],
                                           bottom[2 * q + 1]);
        }
}

// The pick's offset in its window, 0, 1, W or W + 1, in Offset lanes beside the values; then
// widened to int64 positions in a second loop (the mixed widths in one loop vectorise badly).
// The tests are Offset masks (0 or -1), not bools: GCC does not vectorise the bool form.
template <typename T, typename Offset>
[[gnu::always_inline]] inline void argmax_2x2(const T *__restrict__ top,
                                              const T *__restrict__ bottom, Offset width,
                                              index_t count, T *__restrict__ best,
                                              Offset *__restrict__ code) {
    for (index_t q = 0; q < count; ++q) {
        const T a = top[2 * q], b = top[2 * q + 1], c = bottom[2 * q], d = bottom[2 * q + 1];
        const Offset upper_right = -Offset(replaces(b, a)), lower_right = -Offset(replaces(d, c));
        const T upper = upper_right ? b : a;
        const T lower = lower_right ? d : c;
        const Offset lower_nan = (lower_right & -Offset(d != d)) | (~lower_right & -Offset(c != c));
        const Offset below = -Offset(lower > upper) | lower_nan;
        best[q] = below ? lower : upper;
        code[q] = below ? width - lower_right : -upper_right;
    }
}

// The row in chunks of a fixed length, the last one through zero-padded copies: a loop of
// the row's own length left rows shorter than a vector (LeNet's 12 and 4 columns) to the
// scalar remainder, whose selects GCC turns into branches that random data mispredicts:
// 17 ns an output at 4 columns, against 0.8 at 16.
template <typename T, typename Offset>
[[gnu::always_inline]] inline void argmax_row_2x2(const T *top, const T *bottom, index_t W,
                                                  index_t Q, T *best, Offset *code) {
    constexpr index_t CHUNK = 16;
    const Offset width = Offset(W);
    index_t q0 = 0;
    for (; q0 + CHUNK <= Q; q0 += CHUNK)
        argmax_2x2(top + 2 * q0, bottom + 2 * q0, width, CHUNK, best + q0, code + q0);
    if (q0 == Q)
        return;
    T upper[2 * CHUNK] = {}, lower[2 * CHUNK] = {}, picks[CHUNK];
    Offset codes[CHUNK];
    const index_t rest = Q - q0;
    for (index_t j = 0; j < 2 * rest; ++j) {
        upper[j] = top[2 * q0 + j];
        lower[j] = bottom[2 * q0 + j];
    }
    argmax_2x2(upper, lower, width, CHUNK, picks, codes);
    for (index_t j = 0; j < rest; ++j) {
        best[q0 + j] = picks[j];
        code[q0 + j] = codes[j];
    }
}

// Planes of rows shorter than a chunk (LeNet's pools: 12 and 4 columns), a chunk of windows
// across rows at a time, gathered into the chunk's lanes: 6.5 ns an output at 4 columns row
// by row (the copies of each padded row), 0.9 this way.
template <typename T, typename Offset>
[[gnu::always_inline]] inline void max_pool_2x2_indices_short(const T *x, T *y,
                                                              std::int64_t *indices,
                                                              const PoolGeometry &g,
                                                              index_t plane) {
    constexpr index_t CHUNK = POOL_SHORT_ROW;
    const index_t W = g.W, outputs = g.P * g.Q;
    const T *input = x + plane * g.H * W;
    T upper[2 * CHUNK] = {}, lower[2 * CHUNK] = {}, picks[CHUNK];
    Offset codes[CHUNK];
    std::int64_t corner[CHUNK];
    index_t p = 0, q = 0;
    for (index_t j0 = 0; j0 < outputs; j0 += CHUNK) {
        const index_t count = std::min(CHUNK, outputs - j0);
        for (index_t l = 0; l < count; ++l) {
            corner[l] = 2 * p * W + 2 * q;
            const T *top = input + corner[l];
            upper[2 * l] = top[0];
            upper[2 * l + 1] = top[1];
            lower[2 * l] = top[W];
            lower[2 * l + 1] = top[W + 1];
            if (++q == g.Q)
                q = 0, ++p;
        }
        argmax_2x2(upper, lower, Offset(W), CHUNK, picks, codes);
        T *out = y + plane * outputs + j0;
        std::int64_t *where = indices + plane * outputs + j0;
        for (index_t l = 0; l < count; ++l) {
            out[l] = picks[l];
            where[l] = corner[l] + std::int64_t(codes[l]);
        }
    }
}

template <typename T, typename Offset>
FASTCNN_SIMD void max_pool_2x2_indices_span(const T *x, T *y, std::int64_t *indices,
                                            PoolGeometry g, index_t begin, index_t end) {
    const index_t W = g.W;
    if (g.Q < POOL_SHORT_ROW) {
        for (index_t plane = begin; plane < end; ++plane)
            max_pool_2x2_indices_short<T, Offset>(x, y, indices, g, plane);
        return;
    }
    std::vector<Offset> code(g.Q);
    for (index_t plane = begin; plane < end; ++plane)
        for (index_t p = 0; p < g.P; ++p) {
            const T *top = x + plane * g.H * W + 2 * p * W;
            const index_t at = (plane * g.P + p) * g.Q;
            argmax_row_2x2(top, top + W, W, g.Q, y + at, code.data());
            std::int64_t *__restrict__ where = indices + at;
            const Offset *__restrict__ codes = code.data();
            for (index_t q = 0; q < g.Q; ++q)
                where[q] = 2 * p * W + 2 * q + index_t(codes[q]);
        }
}

// The windows do not overlap: each element gets its window's gradient if it is the pick,
// else 0, and is written once.
template <typename T, typename Offset>
FASTCNN_SIMD void max_pool_backward_2x2_span(const T *grad_y, const T *x, T *grad_x,
                                             PoolGeometry g, index_t begin, index_t end) {
    const index_t W = g.W;
    std::vector<T> best(g.Q);
    std::vector<Offset> code(g.Q);
    const Offset zero = 0, one = 1, width = Offset(W), width_one = Offset(W + 1);
    for (index_t plane = begin; plane < end; ++plane) {
        T *grad_plane = grad_x + plane * g.H * W;
        for (index_t p = 0; p < g.P; ++p) {
            const T *top = x + plane * g.H * W + 2 * p * W;
            argmax_row_2x2(top, top + W, W, g.Q, best.data(), code.data());
            const T *__restrict__ gradient = grad_y + (plane * g.P + p) * g.Q;
            const Offset *__restrict__ codes = code.data();
            T *__restrict__ grad_top = grad_plane + 2 * p * W;
            T *__restrict__ grad_bottom = grad_top + W;
            for (index_t q = 0; q < g.Q; ++q) {
                const T value = gradient[q];
                const Offset c = codes[q];
                grad_top[2 * q] = c == zero ? value : T(0);
                grad_top[2 * q + 1] = c == one ? value : T(0);
                grad_bottom[2 * q] = c == width ? value : T(0);
                grad_bottom[2 * q + 1] = c == width_one ? value : T(0);
            }
            for (index_t w = 2 * g.Q; w < W; ++w)  // columns no window covers
                grad_top[w] = grad_bottom[w] = T(0);
        }
        fill_row(grad_plane + 2 * g.P * W, T(0), (g.H - 2 * g.P) * W);  // rows no window covers
    }
}

// ---------------------------------------------------------------------------- average

// 1 / divisor of each window (P x Q), by PyTorch's rule: the window clipped to the padded
// input, then (without count_include_pad) to the input; or the divisor_override (0: none).
template <typename T>
std::vector<T> average_reciprocals(const PoolGeometry &g, bool count_include_pad,
                                   index_t divisor_override) {
    std::vector<T> reciprocals(g.P * g.Q);
    auto counts = [count_include_pad](index_t outputs, index_t size, index_t kernel,
                                      index_t stride, index_t pad) {
        std::vector<index_t> count(outputs);
        for (index_t o = 0; o < outputs; ++o) {
            const index_t start = o * stride - pad;
            const index_t end = std::min(start + kernel, size + pad);
            count[o] = count_include_pad ? end - start
                                         : std::min(end, size) - std::max(start, index_t(0));
        }
        return count;
    };
    const auto rows = counts(g.P, g.H, g.R, g.stride_h, g.pad_h);
    const auto columns = counts(g.Q, g.W, g.S, g.stride_w, g.pad_w);
    for (index_t p = 0; p < g.P; ++p)
        for (index_t q = 0; q < g.Q; ++q)
            reciprocals[p * g.Q + q] =
                T(1.0 / (divisor_override != 0 ? double(divisor_override)
                                               : double(rows[p]) * double(columns[q])));
    return reciprocals;
}

// inner[w] = the sum over the rows of output row p's windows (0 where none is inside).
template <typename T>
inline void vertical_sum(const T *plane, T *inner, index_t p, const PoolGeometry &g) {
    const index_t first = std::max(index_t(0), p * g.stride_h - g.pad_h);
    const index_t stop = std::min(g.H, p * g.stride_h - g.pad_h + g.R);
    if (first >= stop) {
        fill_row(inner, T(0), g.W);
        return;
    }
    copy_row(inner, plane + first * g.W, g.W);
    for (index_t h = first + 1; h < stop; ++h)
        add_into(inner, plane + h * g.W, g.W);
}

template <typename T>
FASTCNN_SIMD void avg_pool_span(const T *x, T *y, PoolGeometry g, const index_t *starts,
                                const T *reciprocals, index_t begin, index_t end) {
    PhaseRow<T> row(g, T(0));
    T *inner = row.inner(g);
    for (index_t plane = begin; plane < end; ++plane) {
        const T *x_plane = x + plane * g.H * g.W;
        for (index_t p = 0; p < g.P; ++p) {
            vertical_sum(x_plane, inner, p, g);
            const T *phases = row.phases();
            T *__restrict__ y_row = y + (plane * g.P + p) * g.Q;
            copy_row(y_row, phases + starts[0], g.Q);
            for (index_t s = 1; s < g.S; ++s)
                add_into(y_row, phases + starts[s], g.Q);
            const T *__restrict__ scale = reciprocals + p * g.Q;
            for (index_t q = 0; q < g.Q; ++q)
                y_row[q] *= scale[q];
        }
    }
}

// Gather: grad_x row h sums the shares (grad_y / divisor) of the output rows whose windows
// cover it (first_output[h] .. last_output[h], from tables), then spreads that Q-wide row
// over its windows' columns in the phase layout and merges it back: each grad_x element is
// written once.
template <typename T>
FASTCNN_SIMD void avg_pool_backward_span(const T *grad_y, T *grad_x, PoolGeometry g,
                                         const index_t *starts, const T *reciprocals,
                                         const index_t *first_output, const index_t *last_output,
                                         index_t begin, index_t end) {
    const index_t length = phase_length(g), stride = g.stride_w;
    std::vector<T> shares(g.P * g.Q), sum(g.Q), phases(stride * length),
        padded(stride == 1 ? 0 : stride * length);
    for (index_t plane = begin; plane < end; ++plane) {
        const T *__restrict__ gradient = grad_y + plane * g.P * g.Q;
        for (index_t k = 0; k < g.P * g.Q; ++k)
            shares[k] = gradient[k] * reciprocals[k];
        T *grad_plane = grad_x + plane * g.H * g.W;
        for (index_t h = 0; h < g.H; ++h) {
            T *grad_row = grad_plane + h * g.W;
            const index_t first = first_output[h], last = last_output[h];
            if (first > last) {
                fill_row(grad_row, T(0), g.W);
                continue;
            }
            copy_row(sum.data(), shares.data() + first * g.Q, g.Q);
            for (index_t p = first + 1; p <= last; ++p)
                add_into(sum.data(), shares.data() + p * g.Q, g.Q);
            fill_row(phases.data(), T(0), stride * length);
            for (index_t s = 0; s < g.S; ++s)
                add_into(phases.data() + starts[s], sum.data(), g.Q);
            const T *row = phases.data();
            if (stride != 1) {
                merge_phases(phases.data(), padded.data(), length, stride);
                row = padded.data();
            }
            copy_row(grad_row, row + g.pad_w, g.W);
        }
    }
}

// The 2x2 / 2 average with every window inside x: each divisor is 4 (or the override), one
// scale; forward sums each window once, backward writes each element its window's share.
template <typename T>
FASTCNN_SIMD void avg_pool_2x2_span(const T *x, T *y, PoolGeometry g, T scale, index_t begin,
                                    index_t end) {
    const index_t W = g.W;
    for (index_t plane = begin; plane < end; ++plane)
        for (index_t p = 0; p < g.P; ++p) {
            const T *__restrict__ top = x + plane * g.H * W + 2 * p * W;
            const T *__restrict__ bottom = top + W;
            T *__restrict__ y_row = y + (plane * g.P + p) * g.Q;
            for (index_t q = 0; q < g.Q; ++q)
                y_row[q] = ((top[2 * q] + top[2 * q + 1]) + (bottom[2 * q] + bottom[2 * q + 1])) *
                           scale;
        }
}

template <typename T>
FASTCNN_SIMD void avg_pool_backward_2x2_span(const T *grad_y, T *grad_x, PoolGeometry g, T scale,
                                             index_t begin, index_t end) {
    const index_t W = g.W;
    for (index_t plane = begin; plane < end; ++plane) {
        T *grad_plane = grad_x + plane * g.H * W;
        for (index_t p = 0; p < g.P; ++p) {
            const T *__restrict__ gradient = grad_y + (plane * g.P + p) * g.Q;
            T *__restrict__ grad_top = grad_plane + 2 * p * W;
            T *__restrict__ grad_bottom = grad_top + W;
            for (index_t q = 0; q < g.Q; ++q) {
                const T share = gradient[q] * scale;
                grad_top[2 * q] = grad_top[2 * q + 1] = share;
                grad_bottom[2 * q] = grad_bottom[2 * q + 1] = share;
            }
            for (index_t w = 2 * g.Q; w < W; ++w)  // columns no window covers
                grad_top[w] = grad_bottom[w] = T(0);
        }
        fill_row(grad_plane + 2 * g.P * W, T(0), (g.H - 2 * g.P) * W);  // rows no window covers
    }
}

// Planes per piece: about POOL_CHUNK input elements, so small inputs stay on one thread.
inline index_t plane_grain(const PoolGeometry &g) {
    return std::max(index_t(1), POOL_CHUNK / std::max(index_t(1), g.H * g.W));
}

// int32 offsets beside float values where every offset fits, else int64.
inline bool offsets_fit_int32(const PoolGeometry &g) {
    const index_t bound =
        (g.R * g.dilation_h + g.pad_h + 2) * (g.W + 2) + g.S * g.dilation_w + g.pad_w;
    return bound < index_t(std::numeric_limits<std::int32_t>::max());
}

// Offset = int32 for float where it fits, else int64; body(Offset{}) runs the chosen one.
template <typename T, typename Body> void with_offset_type(const PoolGeometry &g, Body body) {
    if (std::is_same<T, float>::value && offsets_fit_int32(g))
        body(std::int32_t{});
    else
        body(std::int64_t{});
}

}  // namespace

template <typename T> void max_pool2d(const T *x, T *y, const PoolGeometry &g, int threads) {
    const auto starts = tap_starts(g, phase_length(g));
    parallel_for(g.planes, plane_grain(g), threads, [&](index_t b, index_t e) {
        max_pool_values_span(x, y, g, starts.data(), b, e);
    });
}

template <typename T>
void max_pool2d_indices(const T *x, T *y, std::int64_t *indices, const PoolGeometry &g,
                        int threads) {
    const PositionTables tables(g);
    with_offset_type<T>(g, [&](auto offset) {
        using Offset = decltype(offset);
        parallel_for(g.planes, plane_grain(g), threads, [&](index_t b, index_t e) {
            max_pool_indices_span<T, Offset>(x, y, indices, g, &tables, b, e);
        });
    });
}

template <typename T> void max_pool2d_2x2(const T *x, T *y, const PoolGeometry &g, int threads) {
    parallel_for(g.planes, plane_grain(g), threads,
                 [&](index_t b, index_t e) { max_pool_2x2_span(x, y, g, b, e); });
}

template <typename T>
void max_pool2d_2x2_indices(const T *x, T *y, std::int64_t *indices, const PoolGeometry &g,
                            int threads) {
    with_offset_type<T>(g, [&](auto offset) {
        using Offset = decltype(offset);
        parallel_for(g.planes, plane_grain(g), threads, [&](index_t b, index_t e) {
            max_pool_2x2_indices_span<T, Offset>(x, y, indices, g, b, e);
        });
    });
}

template <typename T>
void max_pool2d_backward(const T *grad_y, const T *x, T *grad_x, const PoolGeometry &g,
                         int threads) {
    const PositionTables tables(g);
    with_offset_type<T>(g, [&](auto offset) {
        using Offset = decltype(offset);
        parallel_for(g.planes, plane_grain(g), threads, [&](index_t b, index_t e) {
            max_pool_backward_search_span<T, Offset>(grad_y, x, grad_x, g, &tables, b, e);
        });
    });
}

template <typename T>
void max_pool2d_backward_2x2(const T *grad_y, const T *x, T *grad_x, const PoolGeometry &g,
                             int threads) {
    with_offset_type<T>(g, [&](auto offset) {
        using Offset = decltype(offset);
        parallel_for(g.planes, plane_grain(g), threads, [&](index_t b, index_t e) {
            max_pool_backward_2x2_span<T, Offset>(grad_y, x, grad_x, g, b, e);
        });
    });
}

template <typename T>
void max_pool2d_backward_indices(const T *grad_y, const std::int64_t *indices, T *grad_x,
                                 const PoolGeometry &g, int threads) {
    parallel_for(g.planes, plane_grain(g), threads, [&](index_t b, index_t e) {
        max_pool_backward_indices_span(grad_y, indices, grad_x, g, b, e);
    });
}

template <typename T>
void avg_pool2d(const T *x, T *y, const PoolGeometry &g, bool count_include_pad,
                index_t divisor_override, int threads) {
    const auto starts = tap_starts(g, phase_length(g));
    const auto reciprocals = average_reciprocals<T>(g, count_include_pad, divisor_override);
    parallel_for(g.planes, plane_grain(g), threads, [&](index_t b, index_t e) {
        avg_pool_span(x, y, g, starts.data(), reciprocals.data(), b, e);
    });
}

template <typename T>
void avg_pool2d_backward(const T *grad_y, T *grad_x, const PoolGeometry &g,
                         bool count_include_pad, index_t divisor_override, int threads) {
    const auto starts = tap_starts(g, phase_length(g));
    const auto reciprocals = average_reciprocals<T>(g, count_include_pad, divisor_override);
    // Output rows whose windows cover input row h: p stride_h - pad_h <= h < that + R.
    std::vector<index_t> first_output(g.H), last_output(g.H);
    for (index_t h = 0; h < g.H; ++h) {
        const index_t low = h + g.pad_h - g.R + 1;  // p stride_h >= low
        first_output[h] = low <= 0 ? 0 : (low + g.stride_h - 1) / g.stride_h;
        last_output[h] = std::min(g.P - 1, (h + g.pad_h) / g.stride_h);
    }
    parallel_for(g.planes, plane_grain(g), threads, [&](index_t b, index_t e) {
        avg_pool_backward_span(grad_y, grad_x, g, starts.data(), reciprocals.data(),
                               first_output.data(), last_output.data(), b, e);
    });
}

template <typename T>
void avg_pool2d_2x2(const T *x, T *y, const PoolGeometry &g, index_t divisor_override,
                    int threads) {
    const T scale = T(1.0 / double(divisor_override != 0 ? divisor_override : 4));
    parallel_for(g.planes, plane_grain(g), threads,
                 [&](index_t b, index_t e) { avg_pool_2x2_span(x, y, g, scale, b, e); });
}

template <typename T>
void avg_pool2d_backward_2x2(const T *grad_y, T *grad_x, const PoolGeometry &g,
                             index_t divisor_override, int threads) {
    const T scale = T(1.0 / double(divisor_override != 0 ? divisor_override : 4));
    parallel_for(g.planes, plane_grain(g), threads, [&](index_t b, index_t e) {
        avg_pool_backward_2x2_span(grad_y, grad_x, g, scale, b, e);
    });
}

#define FASTCNN_POOL2D(T)                                                                        \
    template void max_pool2d<T>(const T *, T *, const PoolGeometry &, int);                      \
    template void max_pool2d_indices<T>(const T *, T *, std::int64_t *, const PoolGeometry &,    \
                                        int);                                                    \
    template void max_pool2d_2x2<T>(const T *, T *, const PoolGeometry &, int);                  \
    template void max_pool2d_2x2_indices<T>(const T *, T *, std::int64_t *,                      \
                                            const PoolGeometry &, int);                          \
    template void max_pool2d_backward<T>(const T *, const T *, T *, const PoolGeometry &, int);  \
    template void max_pool2d_backward_2x2<T>(const T *, const T *, T *, const PoolGeometry &,    \
                                             int);                                               \
    template void max_pool2d_backward_indices<T>(const T *, const std::int64_t *, T *,           \
                                                 const PoolGeometry &, int);                     \
    template void avg_pool2d<T>(const T *, T *, const PoolGeometry &, bool, index_t, int);       \
    template void avg_pool2d_backward<T>(const T *, T *, const PoolGeometry &, bool, index_t,    \
                                         int);                                                   \
    template void avg_pool2d_2x2<T>(const T *, T *, const PoolGeometry &, index_t, int);         \
    template void avg_pool2d_backward_2x2<T>(const T *, T *, const PoolGeometry &, index_t, int);
FASTCNN_POOL2D(float)
FASTCNN_POOL2D(double)

}  // namespace fastcnn
