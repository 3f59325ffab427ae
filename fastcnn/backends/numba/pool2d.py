"""Max and average 2-D pooling, forward and backward, NCHW, float32 / float64, every option.
Algorithm: one (n, c) plane per parallel task; padded rows split into column phases (column u
to phase u % stride_w), so every window tap is a contiguous run; no bounds in inner loops.

Each plane is 112 x 112 x 4 B = 49 KiB in the benchmark shape, so a task's input, output
and scratch stay in L2 and memory sees each byte once: the forward reads x and writes y,
a backward reads grad_y (and x when it must find the maxima again) and writes grad_x.

Why phases: the window of output q starts at padded column q * stride_w, so tap s of every
output of a row reads columns s * dilation_w + q * stride_w, a stride-2 gather for the usual
3x3/2 pool, which LLVM does with scalar loads or gather instructions. In the phase layout
phase[k, j] = padded[j * stride_w + k], the same tap reads phase[k_s, o_s + q] for q = 0, 1,
... (k_s, o_s the remainder and quotient of s * dilation_w by stride_w): contiguous, and no
bounds in the loop, because the margins hold -inf (max) or 0 (average) where the padding is.
Splitting a row into phases is one interleaved copy in L1.

Values only (max and average forward) go separably, per output row: the window's rows
reduced into one padded row (contiguous, W wide), split into phases, then its columns.
Finding the maxima' positions (max forward with indices, max backward without) splits the
whole plane by row and column phase, so each tap is one flat loop over all windows.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from numba import prange

from fastcnn import _census
from fastcnn._shapes import PoolGeometry
from fastcnn.backends import register
from fastcnn.backends.numba._setup import jit
from fastcnn.backends.numba.workspace import scratch

# ---------------------------------------------------------------------------- row helpers


@jit(inline="always")
def _ceil_div(a, b):
    return -((-a) // b)


@jit(inline="always")
def _phase_length(W, Q, S, stride_w, pad_w, dilation_w):
    """Columns per phase: the padded row must hold pad_w + W columns and every window."""
    width = max(pad_w + W, (Q - 1) * stride_w + (S - 1) * dilation_w + 1)
    return _ceil_div(width, stride_w)


@jit(inline="always")
def _split_phases(padded, phases, stride):
    """phases[k, j] = padded[j * stride + k]."""
    for j in range(phases.shape[1]):
        for k in range(stride):
            phases[k, j] = padded[j * stride + k]


@jit(inline="always")
def _merge_phases(phases, padded, stride):
    """padded[j * stride + k] = phases[k, j]: the inverse of _split_phases."""
    for j in range(phases.shape[1]):
        for k in range(stride):
            padded[j * stride + k] = phases[k, j]


@jit(inline="always")
def _to_phases(padded, phases, stride_w):
    # The common strides as constants: LLVM unrolls the phase loop and vectorises.
    if stride_w == 2:
        _split_phases(padded, phases, 2)
    elif stride_w == 1:
        phases[0, :] = padded
    else:
        _split_phases(padded, phases, stride_w)


@jit(inline="always")
def _from_phases(phases, padded, stride_w):
    if stride_w == 2:
        _merge_phases(phases, padded, 2)
    elif stride_w == 1:
        padded[:] = phases[0, :]
    else:
        _merge_phases(phases, padded, stride_w)


@jit(inline="always")
def _tap(phases, s, Q, stride_w, dilation_w):
    """The Q values that tap s of a window row reads, for q = 0 .. Q-1 (a contiguous view)."""
    column = s * dilation_w
    first = column // stride_w
    return phases[column - first * stride_w, first : first + Q]


@jit(inline="always")
def _max_into(target, source):
    """target = max(target, source) elementwise; a NaN in either gives NaN."""
    for i in range(target.size):
        value = source[i]
        current = target[i]
        target[i] = value if (value > current) | (value != value) else current


@jit(inline="always")
def _add_into(target, source):
    for i in range(target.size):
        target[i] += source[i]


@jit(inline="always")
def _argmax_tap(source, best, where, first_position, stride):
    """Fold one window tap into the running maxima: a larger value replaces, so the first
    maximum stays; a NaN replaces anything, so the last NaN stays (taps come r-major)."""
    for q in range(best.size):
        value = source[q]
        current = best[q]
        take = (value > current) | (value != value)
        best[q] = value if take else current
        where[q] = first_position + q * stride if take else where[q]


# ---------------------------------------------------------------------------- plane passes


@jit(inline="always")
def _vertical_max(plane, inner, p, H, W, R, stride_h, pad_h, dilation_h):
    """inner[w] = max over the rows of output row p's windows (-inf if none is inside)."""
    started = False
    for r in range(R):
        h = p * stride_h - pad_h + r * dilation_h
        if 0 <= h < H:
            if started:
                _max_into(inner, plane[h * W : h * W + W])
            else:
                inner[:] = plane[h * W : h * W + W]
                started = True
    if not started:
        inner[:] = -np.inf


@jit(inline="always")
def _vertical_sum(plane, inner, p, H, W, R, stride_h, pad_h):
    started = False
    for r in range(R):
        h = p * stride_h - pad_h + r
        if 0 <= h < H:
            if started:
                _add_into(inner, plane[h * W : h * W + W])
            else:
                inner[:] = plane[h * W : h * W + W]
                started = True
    if not started:
        inner[:] = 0


# The phase plane: a whole padded plane split by row phase and column phase,
# phase_plane[kh, kw, i, j] = padded[i * stride_h + kh, j * stride_w + kw]. In it, tap (r, s)
# of all windows at once is one contiguous run of P x columns elements (output (p, q) reads
# element (p, q) of the run), so a pass over every window is R x S long, flat loops; the
# columns - Q extra elements per row are computed and thrown away.

NO_TAP = np.int32(-(2**31))  # marks a window whose maximum is not found yet


@jit(inline="always")
def _phase_plane_shape(H, W, R, S, P, Q, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w):
    """(rows, columns) of one phase: room for the padded input and for every tap's run, plus
    a slack row for the run of the last tap, which reads columns - Q elements past row P."""
    rows = max(_ceil_div(pad_h + H, stride_h), P + (R - 1) * dilation_h // stride_h) + 1
    columns = max(_ceil_div(pad_w + W, stride_w), Q + (S - 1) * dilation_w // stride_w)
    return rows, columns


@jit(inline="always")
def _split_row_stride_2(row, even, odd, pad_w):
    """even[j], odd[j] = columns 2j and 2j + 1 of the padded row (column w of row is pad_w + w)."""
    W = row.size
    first = (pad_w + 1) // 2  # the pairs whose two columns both lie in row
    stop = max(first, (W - 2 + pad_w) // 2 + 1)
    pairs = row[2 * first - pad_w :]
    even_run, odd_run = even[first:stop], odd[first:stop]
    for j in range(stop - first):
        even_run[j] = pairs[2 * j]
        odd_run[j] = pairs[2 * j + 1]
    # The at most one column left at each end.
    if 2 * first - pad_w > 0:  # w = 0, at an odd column
        odd[pad_w // 2] = row[0]
    if 2 * stop - pad_w < W:  # w = W - 1, at an even column
        even[(W - 1 + pad_w) // 2] = row[W - 1]


@jit(inline="always")
def _fill_phase_plane(plane, phase_plane, H, W, stride_h, stride_w, pad_h, pad_w):
    """Copy a plane into the phase plane; its padding cells keep their fill value. The
    stride test sits outside the row loops: inside, it made the copy 2.5x slower."""
    if stride_w == 2:
        for h in range(H):
            kh, i = (h + pad_h) % stride_h, (h + pad_h) // stride_h
            _split_row_stride_2(
                plane[h * W : h * W + W], phase_plane[kh, 0, i], phase_plane[kh, 1, i], pad_w
            )
    elif stride_w == 1:
        for h in range(H):
            kh, i = (h + pad_h) % stride_h, (h + pad_h) // stride_h
            target, row = phase_plane[kh, 0, i], plane[h * W : h * W + W]
            for w in range(W):
                target[pad_w + w] = row[w]
    else:
        for h in range(H):
            kh, i = (h + pad_h) % stride_h, (h + pad_h) // stride_h
            for w in range(W):
                column = w + pad_w
                phase_plane[kh, column % stride_w, i][column // stride_w] = plane[h * W + w]


@jit(inline="always")
def _argmax_plane(phase_plane, best, offsets, P, g):
    """best[p * columns + q]: the maximum of window (p, q), PyTorch's pick (the last NaN, else
    the first maximum, taps r-major then s); offsets[...]: its flat input position minus
    p * stride_h * W + q * stride_w, or NO_TAP if every tap is -inf or padding."""
    W, R, S, stride_h, stride_w = g[1], g[2], g[3], g[5], g[6]
    pad_h, pad_w, dilation_h, dilation_w = g[7], g[8], g[9], g[10]
    rows, columns = phase_plane.shape[2], phase_plane.shape[3]
    flat = phase_plane.reshape(-1)
    size = P * columns
    best[:] = -np.inf
    offsets[:] = NO_TAP
    for r in range(R):
        for s in range(S):
            row_shift, column_shift = r * dilation_h, s * dilation_w
            kh, oh = row_shift % stride_h, row_shift // stride_h
            kw, ow = column_shift % stride_w, column_shift // stride_w
            start = ((kh * stride_w + kw) * rows + oh) * columns + ow
            source = flat[start : start + size]
            offset = np.int32((row_shift - pad_h) * W + column_shift - pad_w)
            # Padding cells hold -inf and never replace (value > -inf is false).
            for t in range(size):
                value = source[t]
                current = best[t]
                take = (value > current) | (value != value)
                best[t] = value if take else current
                offsets[t] = offset if take else offsets[t]


@jit(inline="always")
def _first_tap_inside(p, q, g):
    """The flat position reported for a window of -inf only: its first tap inside x, or
    -1 when the window lies wholly in the padding (no gradient flows from it)."""
    H, W, R, S = g[0], g[1], g[2], g[3]
    stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w = g[5], g[6], g[7], g[8], g[9], g[10]
    h, w = p * stride_h - pad_h, q * stride_w - pad_w
    r = 0
    while r < R and h < 0:
        h += dilation_h
        r += 1
    s = 0
    while s < S and w < 0:
        w += dilation_w
        s += 1
    if r == R or s == S or h >= H or w >= W:
        return -1
    return h * W + w


@jit(inline="always")
def _positions_row(offsets_row, positions, p, g):
    """positions[q] = flat input position of window (p, q)'s maximum."""
    W, stride_h, stride_w = g[1], g[5], g[6]
    base = p * stride_h * W
    missing = False
    for q in range(positions.size):
        offset = offsets_row[q]
        missing |= offset == NO_TAP
        positions[q] = base + q * stride_w + offset
    if missing:
        for q in range(positions.size):
            if offsets_row[q] == NO_TAP:
                positions[q] = _first_tap_inside(p, q, g)


@jit(inline="always")
def _plane_tasks(planes):
    """Planes per task: a few per task, so each task's phase plane is filled once per task."""
    per_task = 4
    return per_task, (planes + per_task - 1) // per_task


def _search_workspace(g: PoolGeometry, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-task buffers of the phase-plane search, kept between calls: the phase planes
    (tasks, phase-plane size), the best values and the offsets (tasks, P x columns)."""
    rows, columns = _phase_plane_shape(
        g.H, g.W, g.R, g.S, g.P, g.Q, g.stride_h, g.stride_w, g.pad_h, g.pad_w,
        g.dilation_h, g.dilation_w,
    )  # fmt: skip
    tasks = _plane_tasks(g.N * g.C)[1]
    plane_size = g.stride_h * g.stride_w * rows * columns
    run = g.P * columns
    return (
        scratch("max_pool2d_phase_planes", tasks * plane_size, dtype).reshape(tasks, plane_size),
        scratch("max_pool2d_best", tasks * run, dtype).reshape(tasks, run),
        scratch("max_pool2d_offsets", tasks * run, np.int32).reshape(tasks, run),
    )


@jit(inline="always")
def _task_workspace(workspace, task, g, rows, columns, P):
    """A task's phase plane (its padding at -inf), best values and offsets, from workspace."""
    stride_h, stride_w = g[5], g[6]
    planes, best, offsets = workspace
    flat = planes[task]
    flat[:] = -np.inf
    return flat.reshape((stride_h, stride_w, rows, columns)), best[task], offsets[task]


# ---------------------------------------------------------------------------- kernels
# x, y and the gradients arrive as (N*C, plane size); g is _max_geometry's tuple.


@jit(parallel=True)
def _max_pool_values(x, y, g):
    # Separable: the max over the window's rows (contiguous, W wide), then over its columns.
    H, W, R, S, Q, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w = g
    P = y.shape[1] // Q
    length = _phase_length(W, Q, S, stride_w, pad_w, dilation_w)
    for plane_index in prange(x.shape[0]):
        plane, y_plane = x[plane_index], y[plane_index]
        padded = np.full(stride_w * length, -np.inf, x.dtype)
        phases = np.empty((stride_w, length), x.dtype)
        inner = padded[pad_w : pad_w + W]
        for p in range(P):
            _vertical_max(plane, inner, p, H, W, R, stride_h, pad_h, dilation_h)
            _to_phases(padded, phases, stride_w)
            y_row = y_plane[p * Q : p * Q + Q]
            y_row[:] = _tap(phases, 0, Q, stride_w, dilation_w)
            for s in range(1, S):
                _max_into(y_row, _tap(phases, s, Q, stride_w, dilation_w))


@jit(parallel=True)
def _max_pool_with_indices(x, y, indices, g, workspace):
    H, W, R, S, Q, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w = g
    P = y.shape[1] // Q
    rows, columns = _phase_plane_shape(
        H, W, R, S, P, Q, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w
    )
    per_task, tasks = _plane_tasks(x.shape[0])
    for task in prange(tasks):
        phase_plane, best, offsets = _task_workspace(workspace, task, g, rows, columns, P)
        for plane_index in range(task * per_task, min(task * per_task + per_task, x.shape[0])):
            _fill_phase_plane(x[plane_index], phase_plane, H, W, stride_h, stride_w, pad_h, pad_w)
            _argmax_plane(phase_plane, best, offsets, P, g)
            y_plane, where = y[plane_index], indices[plane_index]
            for p in range(P):
                y_plane[p * Q : p * Q + Q] = best[p * columns : p * columns + Q]
                _positions_row(offsets[p * columns :], where[p * Q : p * Q + Q], p, g)


# ---------------------------------------------------------------------------- direct path
# Stride equal to the kernel, no padding, dilation 1 and every window inside x (LeNet's
# 2x2/2): a plain window loop, with the positions found in the same pass and several
# planes per task, so a small plane (24 x 24, 8 x 8) pays no phase split or scratch setup.


@jit(inline="always")
def _direct_max_plane(plane, y_plane, W, R, S, P, Q):
    for p in range(P):
        top = p * R * W
        y_row = y_plane[p * Q : p * Q + Q]
        for q in range(Q):
            start = top + q * S
            best = plane[start]
            for r in range(R):
                for s in range(S):
                    value = plane[start + r * W + s]
                    best = value if (value > best) | (value != value) else best
            y_row[q] = best


@jit(inline="always")
def _direct_argmax_plane(plane, y_plane, where, W, R, S, P, Q):
    """PyTorch's pick: taps r-major, a larger value or a NaN replaces (the first maximum,
    else the last NaN)."""
    for p in range(P):
        top = p * R * W
        y_row, where_row = y_plane[p * Q : p * Q + Q], where[p * Q : p * Q + Q]
        for q in range(Q):
            start = top + q * S
            best = plane[start]
            at = start
            for r in range(R):
                for s in range(S):
                    position = start + r * W + s
                    value = plane[position]
                    take = (value > best) | (value != value)
                    best = value if take else best
                    at = position if take else at
            y_row[q] = best
            where_row[q] = at


@jit(inline="always")
def _direct_max_plane_2x2(plane, y_plane, W, P, Q):
    for p in range(P):
        top, bottom = plane[2 * p * W : 2 * p * W + W], plane[2 * p * W + W : 2 * p * W + 2 * W]
        y_row = y_plane[p * Q : p * Q + Q]
        for q in range(Q):
            a, b, c, d = top[2 * q], top[2 * q + 1], bottom[2 * q], bottom[2 * q + 1]
            upper = b if (b > a) | (b != b) else a
            lower = d if (d > c) | (d != d) else c
            y_row[q] = lower if (lower > upper) | (lower != lower) else upper


@jit(inline="always")
def _direct_argmax_plane_2x2(plane, y_plane, where, codes, W, P, Q):
    """Each window row reduced first, then the lower row's pick against the upper's: every
    tap of the lower row comes later in the scan, so this is the sequential rule. The
    window's column offset goes to codes (float32, the lanes of the values) and becomes an
    index in a second loop: computed as int64 in the same loop, LLVM's code measured 4x
    slower."""
    one, zero, width = np.float32(1), np.float32(0), np.float32(W)
    for p in range(P):
        base = 2 * p * W
        top, bottom = plane[base : base + W], plane[base + W : base + 2 * W]
        y_row, where_row = y_plane[p * Q : p * Q + Q], where[p * Q : p * Q + Q]
        for q in range(Q):
            a, b, c, d = top[2 * q], top[2 * q + 1], bottom[2 * q], bottom[2 * q + 1]
            upper_right = (b > a) | (b != b)
            upper = b if upper_right else a
            lower_right = (d > c) | (d != d)
            lower = d if lower_right else c
            below = (lower > upper) | (lower != lower)
            y_row[q] = lower if below else upper
            lower_code = width + (one if lower_right else zero)
            codes[q] = lower_code if below else (one if upper_right else zero)
        for q in range(Q):
            where_row[q] = base + 2 * q + np.int64(codes[q])


@jit(inline="always")
def _direct_backward_plane_2x2(plane, gradient, grad_plane, codes, W, P, Q):
    """grad_x of a 2x2/2 pool: the windows do not overlap, so each element gets its window's
    gradient if it is the window's pick (found as in _direct_argmax_plane_2x2), else 0."""
    one, zero, width = np.float32(1), np.float32(0), np.float32(W)
    for p in range(P):
        base = 2 * p * W
        top, bottom = plane[base : base + W], plane[base + W : base + 2 * W]
        for q in range(Q):
            a, b, c, d = top[2 * q], top[2 * q + 1], bottom[2 * q], bottom[2 * q + 1]
            upper_right = (b > a) | (b != b)
            upper = b if upper_right else a
            lower_right = (d > c) | (d != d)
            lower = d if lower_right else c
            below = (lower > upper) | (lower != lower)
            lower_code = width + (one if lower_right else zero)
            codes[q] = lower_code if below else (one if upper_right else zero)
        g_row = gradient[p * Q : p * Q + Q]
        g_top, g_bottom = grad_plane[base : base + W], grad_plane[base + W : base + 2 * W]
        for q in range(Q):
            code, value = codes[q], g_row[q]
            g_top[2 * q] = value if code == zero else 0.0
            g_top[2 * q + 1] = value if code == one else 0.0
            g_bottom[2 * q] = value if code == width else 0.0
            g_bottom[2 * q + 1] = value if code == width + one else 0.0
        for w in range(2 * Q, W):  # columns no window covers
            g_top[w] = 0
            g_bottom[w] = 0
    grad_plane[2 * P * W :] = 0  # rows no window covers


@jit(parallel=True)
def _max_pool_backward_direct(grad_y, x, grad_x, codes, W, Q, per_task):
    P = grad_y.shape[1] // Q
    planes = x.shape[0]
    for task in prange((planes + per_task - 1) // per_task):
        for i in range(task * per_task, min(task * per_task + per_task, planes)):
            _direct_backward_plane_2x2(x[i], grad_y[i], grad_x[i], codes[task], W, P, Q)


@jit(parallel=True)
def _max_pool_direct(x, y, W, R, S, Q, per_task):
    P = y.shape[1] // Q
    planes = x.shape[0]
    for task in prange((planes + per_task - 1) // per_task):
        for i in range(task * per_task, min(task * per_task + per_task, planes)):
            if R == 2 and S == 2:
                _direct_max_plane_2x2(x[i], y[i], W, P, Q)
            else:
                _direct_max_plane(x[i], y[i], W, R, S, P, Q)


@jit(parallel=True)
def _max_pool_direct_indices(x, y, indices, codes, W, R, S, Q, per_task):
    # codes: (tasks, Q) float32 scratch, a row per task.
    P = y.shape[1] // Q
    planes = x.shape[0]
    for task in prange((planes + per_task - 1) // per_task):
        for i in range(task * per_task, min(task * per_task + per_task, planes)):
            if R == 2 and S == 2:
                _direct_argmax_plane_2x2(x[i], y[i], indices[i], codes[task], W, P, Q)
            else:
                _direct_argmax_plane(x[i], y[i], indices[i], W, R, S, P, Q)


@jit(parallel=True)
def _max_pool_backward_given_indices(grad_y, indices, grad_x):
    # Scatter one plane per task: the plane is the task's own, so no two threads add
    # into the same element, and the plane (49 KiB) stays in L2 while it is written.
    for plane_index in prange(grad_x.shape[0]):
        gradient, where, grad_plane = grad_y[plane_index], indices[plane_index], grad_x[plane_index]
        grad_plane[:] = 0
        for k in range(gradient.size):
            position = where[k]  # checked to lie in [-1, H*W); -1: wholly in the padding
            if position >= 0:
                grad_plane[np.uint64(position)] += gradient[k]


@jit(parallel=True)
def _max_pool_backward_search(grad_y, x, grad_x, g, workspace):
    H, W, R, S, Q, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w = g
    P = grad_y.shape[1] // Q
    rows, columns = _phase_plane_shape(
        H, W, R, S, P, Q, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w
    )
    per_task, tasks = _plane_tasks(x.shape[0])
    for task in prange(tasks):
        phase_plane, best, offsets = _task_workspace(workspace, task, g, rows, columns, P)
        for plane_index in range(task * per_task, min(task * per_task + per_task, x.shape[0])):
            _fill_phase_plane(x[plane_index], phase_plane, H, W, stride_h, stride_w, pad_h, pad_w)
            _argmax_plane(phase_plane, best, offsets, P, g)
            # Scatter into the task's own plane: no other thread writes it.
            gradient, grad_plane = grad_y[plane_index], grad_x[plane_index]
            grad_plane[:] = 0
            for p in range(P):
                offsets_row, row = offsets[p * columns :], gradient[p * Q : p * Q + Q]
                base = p * stride_h * W
                for q in range(Q):
                    offset = offsets_row[q]
                    if offset == NO_TAP:
                        position = _first_tap_inside(p, q, g)
                        if position < 0:
                            continue  # a window wholly in the padding
                    else:
                        position = base + q * stride_w + offset
                    # Unsigned: the position is not negative here, and Numba then skips
                    # the negative-index fix-up.
                    grad_plane[np.uint64(position)] += row[q]


@jit(parallel=True)
def _avg_pool(x, y, reciprocals, H, W, R, S, stride_h, stride_w, pad_h, pad_w):
    # Separable, as _max_pool_values: the sum over the window's rows, then over its columns.
    P, Q = reciprocals.shape
    length = _phase_length(W, Q, S, stride_w, pad_w, 1)
    for plane_index in prange(x.shape[0]):
        plane, y_plane = x[plane_index], y[plane_index]
        padded = np.zeros(stride_w * length, x.dtype)
        phases = np.empty((stride_w, length), x.dtype)
        inner = padded[pad_w : pad_w + W]
        for p in range(P):
            _vertical_sum(plane, inner, p, H, W, R, stride_h, pad_h)
            _to_phases(padded, phases, stride_w)
            y_row = y_plane[p * Q : p * Q + Q]
            y_row[:] = _tap(phases, 0, Q, stride_w, 1)
            for s in range(1, S):
                _add_into(y_row, _tap(phases, s, Q, stride_w, 1))
            scale = reciprocals[p]
            for q in range(Q):
                y_row[q] *= scale[q]


@jit(parallel=True)
def _avg_pool_backward(grad_y, grad_x, reciprocals, H, W, R, S, stride_h, stride_w, pad_h, pad_w):
    # Gather form, each grad_x element written once. Output row p's gradient shares are
    # added into its taps' phase runs, merged back to a padded row (expanded[p]: P x width
    # scratch, 25 KiB here); then each grad_x row is the sum of the expanded rows of the
    # output rows whose windows cover it.
    P, Q = reciprocals.shape
    length = _phase_length(W, Q, S, stride_w, pad_w, 1)
    for plane_index in prange(grad_x.shape[0]):
        gradient, grad_plane = grad_y[plane_index], grad_x[plane_index]
        expanded = np.empty((P, stride_w * length), grad_x.dtype)
        phases = np.empty((stride_w, length), grad_x.dtype)
        shares = np.empty(Q, grad_x.dtype)
        for p in range(P):
            row, scale = gradient[p * Q : p * Q + Q], reciprocals[p]
            for q in range(Q):
                shares[q] = row[q] * scale[q]
            phases[:] = 0
            for s in range(S):
                _add_into(_tap(phases, s, Q, stride_w, 1), shares)
            _from_phases(phases, expanded[p], stride_w)
        for h in range(H):
            first = max(0, _ceil_div(h + pad_h - R + 1, stride_h))
            last = min(P - 1, (h + pad_h) // stride_h)
            target = grad_plane[h * W : h * W + W]
            if first > last:
                target[:] = 0
                continue
            target[:] = expanded[first, pad_w : pad_w + W]
            for p in range(first + 1, last + 1):
                _add_into(target, expanded[p, pad_w : pad_w + W])


# ---------------------------------------------------------------------------- registered kernels


def _planes(array, g: PoolGeometry):
    """(N, C, h, w) as (N*C, h*w): a view, the arrays are C-contiguous."""
    return array.reshape(g.N * g.C, -1)


def _max_geometry(g: PoolGeometry) -> tuple[int, ...]:
    return (
        g.H,
        g.W,
        g.R,
        g.S,
        g.Q,
        g.stride_h,
        g.stride_w,
        g.pad_h,
        g.pad_w,
        g.dilation_h,
        g.dilation_w,
    )


@functools.lru_cache(maxsize=64)
def _avg_reciprocals(g: PoolGeometry, dtype: np.dtype) -> np.ndarray:
    """(P, Q) 1 / divisor of each window, by PyTorch's rule: the window is clipped to the
    padded input, then (without count_include_pad) to the input itself; or the
    divisor_override."""
    if g.divisor_override is not None:
        reciprocals = np.full((g.P, g.Q), 1.0 / g.divisor_override, dtype)
        reciprocals.flags.writeable = False
        return reciprocals

    def one_axis(size, pad, kernel, stride, outputs):
        start = np.arange(outputs) * stride - pad
        end = np.minimum(start + kernel, size + pad)
        if g.count_include_pad:
            return end - start
        return np.minimum(end, size) - np.maximum(start, 0)

    rows = one_axis(g.H, g.pad_h, g.R, g.stride_h, g.P)
    columns = one_axis(g.W, g.pad_w, g.S, g.stride_w, g.Q)
    reciprocals = (1.0 / np.outer(rows, columns).astype(np.float64)).astype(dtype)
    reciprocals.flags.writeable = False
    return reciprocals


def _avg_arguments(g: PoolGeometry) -> tuple[int, ...]:
    return (g.H, g.W, g.R, g.S, g.stride_h, g.stride_w, g.pad_h, g.pad_w)


def _direct(g: PoolGeometry) -> bool:
    """Stride equal to the kernel, no padding, dilation 1, every window inside x. The caller
    also asks for rows of fewer than 16 outputs except for the 2x2 pool with indices: on
    wider rows LLVM's 16-lane window loop measured slower than the phase path."""
    return (
        g.stride_h == g.R
        and g.stride_w == g.S
        and g.pad_h == 0
        and g.pad_w == 0
        and g.dilation_h == 1
        and g.dilation_w == 1
        and g.P * g.R <= g.H
        and g.Q * g.S <= g.W
    )


def _planes_per_task(g: PoolGeometry) -> int:
    """Enough planes per task to amortise a task's start (about 32 K input elements), but
    still several tasks per thread to balance."""
    planes = g.N * g.C
    balanced = -(-planes // (4 * numba.get_num_threads()))
    return max(1, min(balanced, -(-32768 // max(1, g.H * g.W))))


_census.declare(
    "numba",
    "max_pool2d.direct",
    "max_pool2d.direct_indices",
    "max_pool2d.search",
    "max_pool2d.search_indices",
    "max_pool2d_backward.direct_2x2",
    "max_pool2d_backward.search",
    "max_pool2d_backward.given_indices",
)

#: Rows of fewer outputs than this take the direct window loop (see :func:`_direct`).
DIRECT_ROWS = 16


@register("max_pool2d", "numba")
def max_pool2d(x, y, indices, g: PoolGeometry) -> None:
    if _direct(g):
        per_task = _planes_per_task(g)
        if indices is None and g.Q < DIRECT_ROWS:
            _census.record("numba", "max_pool2d.direct")
            _max_pool_direct(_planes(x, g), _planes(y, g), g.W, g.R, g.S, g.Q, per_task)
            return
        if indices is not None and (g.Q < DIRECT_ROWS or g.R == g.S == 2):
            _census.record("numba", "max_pool2d.direct_indices")
            tasks = -(-(g.N * g.C) // per_task)
            codes = scratch("max_pool2d_codes", tasks * g.Q, np.float32).reshape(tasks, g.Q)
            _max_pool_direct_indices(
                _planes(x, g), _planes(y, g), _planes(indices, g), codes, g.W, g.R, g.S, g.Q,
                per_task,
            )  # fmt: skip
            return
    if indices is None:
        _census.record("numba", "max_pool2d.search")
        _max_pool_values(_planes(x, g), _planes(y, g), _max_geometry(g))
    else:
        _census.record("numba", "max_pool2d.search_indices")
        _max_pool_with_indices(
            _planes(x, g), _planes(y, g), _planes(indices, g), _max_geometry(g),
            _search_workspace(g, x.dtype),
        )  # fmt: skip


@register("max_pool2d_backward", "numba")
def max_pool2d_backward(grad_y, x, indices, grad_x, g: PoolGeometry) -> None:
    if indices is None and _direct(g) and g.R == g.S == 2:
        _census.record("numba", "max_pool2d_backward.direct_2x2")
        per_task = _planes_per_task(g)
        tasks = -(-(g.N * g.C) // per_task)
        codes = scratch("max_pool2d_codes", tasks * g.Q, np.float32).reshape(tasks, g.Q)
        _max_pool_backward_direct(
            _planes(grad_y, g), _planes(x, g), _planes(grad_x, g), codes, g.W, g.Q, per_task
        )
        return
    if indices is None:
        _census.record("numba", "max_pool2d_backward.search")
        _max_pool_backward_search(
            _planes(grad_y, g), _planes(x, g), _planes(grad_x, g), _max_geometry(g),
            _search_workspace(g, x.dtype),
        )  # fmt: skip
    else:
        _census.record("numba", "max_pool2d_backward.given_indices")
        _max_pool_backward_given_indices(
            _planes(grad_y, g), _planes(indices, g), _planes(grad_x, g)
        )


@register("avg_pool2d", "numba")
def avg_pool2d(x, y, g: PoolGeometry) -> None:
    reciprocals = _avg_reciprocals(g, x.dtype)
    _avg_pool(_planes(x, g), _planes(y, g), reciprocals, *_avg_arguments(g))


@register("avg_pool2d_backward", "numba")
def avg_pool2d_backward(grad_y, grad_x, g: PoolGeometry) -> None:
    reciprocals = _avg_reciprocals(g, grad_x.dtype)
    _avg_pool_backward(_planes(grad_y, g), _planes(grad_x, g), reciprocals, *_avg_arguments(g))
