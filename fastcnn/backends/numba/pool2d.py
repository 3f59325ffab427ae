"""Max and average 2-D pooling, forward and backward, NCHW, float32 / float64, every option.
Algorithm: one (n, c) plane per parallel task; separable passes over rows held in L1 (a
vertical pass over the window's rows, then a horizontal pass over the window's columns).

Each plane is 112 x 112 x 4 B = 49 KiB in the benchmark shape, so a task's input, output
and scratch stay in L2 and memory sees each byte once: the forward reads x and writes y,
a backward reads grad_y (and x when it must find the maxima again) and writes grad_x.
Borders never reach the inner loops: a row buffer with fill-value margins (-inf for max,
0 for average) stands in for the padding, and the column loops run over the window
positions that stay inside x. Column strides 1 and 2 are compiled as constants so that
LLVM vectorises the strided loads with shuffles instead of gathers.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import prange

from fastcnn._shapes import PoolGeometry
from fastcnn.backends import register
from fastcnn.backends.numba._setup import jit

# ---------------------------------------------------------------------------- index helpers


@jit(inline="always")
def _ceil_div(a, b):
    return -((-a) // b)


@jit(inline="always")
def _window_columns(W, Q, stride_w, column_offset):
    """The outputs q whose tap at column q * stride_w + column_offset lies inside [0, W)."""
    first = max(0, _ceil_div(-column_offset, stride_w))
    stop = min(Q, (W - 1 - column_offset) // stride_w + 1)
    return first, max(first, stop)


# ---------------------------------------------------------------------------- row passes
# ``stride`` is a compile-time constant at the call sites that matter (see _by_stride).


@jit(inline="always")
def _max_into(target, row):
    """target = max(target, row) elementwise; a NaN in either gives NaN."""
    for w in range(target.size):
        value = row[w]
        current = target[w]
        target[w] = value if (value > current) | (value != value) else current


@jit(inline="always")
def _horizontal_max(padded, y_row, S, dilation_w, stride):
    """y_row[q] = max over s of padded[q * stride + s * dilation_w] (NaN wins)."""
    for q in range(y_row.size):
        y_row[q] = padded[q * stride]
    for s in range(1, S):
        shifted = padded[s * dilation_w :]
        for q in range(y_row.size):
            value = shifted[q * stride]
            current = y_row[q]
            y_row[q] = value if (value > current) | (value != value) else current


@jit(inline="always")
def _horizontal_sum(padded, y_row, reciprocals, S, stride):
    """y_row[q] = reciprocals[q] x sum over s of padded[q * stride + s]."""
    for q in range(y_row.size):
        y_row[q] = padded[q * stride]
    for s in range(1, S):
        shifted = padded[s:]
        for q in range(y_row.size):
            y_row[q] += shifted[q * stride]
    for q in range(y_row.size):
        y_row[q] *= reciprocals[q]


@jit(inline="always")
def _spread_row(shares, expanded, S, stride):
    """expanded[q * stride + s] += shares[q] for every s: one row of average-pool gradient."""
    expanded[:] = 0
    for s in range(S):
        shifted = expanded[s:]
        for q in range(shares.size):
            shifted[q * stride] += shares[q]


@jit(inline="always")
def _argmax_tap(row, best, where, first_position, stride):
    """Fold one window tap into the running maxima: the first maximum wins, and a NaN
    replaces anything (so the last NaN wins), scanning taps r-major then s."""
    for k in range(best.size):
        value = row[k * stride]
        current = best[k]
        take = (value > current) | (value != value)
        best[k] = value if take else current
        where[k] = first_position + k * stride if take else where[k]


# ---------------------------------------------------------------------------- plane passes


@jit(inline="always")
def _vertical_max(plane, inner, p, H, W, R, stride_h, pad_h, dilation_h):
    """inner[w] = max over the window rows of output row p (all -inf if none is inside)."""
    started = False
    for r in range(R):
        h = p * stride_h - pad_h + r * dilation_h
        if 0 <= h < H:
            row = plane[h * W : h * W + W]
            if started:
                _max_into(inner, row)
            else:
                inner[:] = row
                started = True
    if not started:
        inner[:] = -np.inf


@jit(inline="always")
def _vertical_sum(plane, inner, p, H, W, R, stride_h, pad_h):
    started = False
    for r in range(R):
        h = p * stride_h - pad_h + r
        if 0 <= h < H:
            row = plane[h * W : h * W + W]
            if started:
                for w in range(W):
                    inner[w] += row[w]
            else:
                inner[:] = row
                started = True
    if not started:
        inner[:] = 0


@jit(inline="always")
def _argmax_output_row(plane, best, where, p, g, stride):
    """best[q], where[q]: value and flat position of the maximum of window (p, q)."""
    H, W, R, S, Q, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w = g
    best[:] = -np.inf
    where[:] = -1
    first_row = -1
    for r in range(R):
        h = p * stride_h - pad_h + r * dilation_h
        if not 0 <= h < H:
            continue
        if first_row < 0:
            first_row = h
        for s in range(S):
            column_offset = s * dilation_w - pad_w
            first, stop = _window_columns(W, Q, stride_w, column_offset)
            if first == stop:
                continue
            column = first * stride_w + column_offset
            _argmax_tap(
                plane[h * W + column :],
                best[first:stop],
                where[first:stop],
                h * W + column,
                stride,
            )
    # A window of -inf only (or with no tap inside x) points at its first tap inside x,
    # as PyTorch's kernel does.
    for q in range(Q):
        if where[q] < 0:
            column = q * stride_w - pad_w
            while column < 0:
                column += dilation_w
            where[q] = max(first_row, 0) * W + min(column, W - 1)


# ---------------------------------------------------------------------------- kernels


@jit(parallel=True)
def _max_pool_values(x, y, g):
    H, W, R, S, Q, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w = g
    P = y.shape[1] // Q
    width = max(pad_w + W, (Q - 1) * stride_w + (S - 1) * dilation_w + 1)
    for plane_index in prange(x.shape[0]):
        plane, y_plane = x[plane_index], y[plane_index]
        padded = np.full(width, -np.inf, x.dtype)
        inner = padded[pad_w : pad_w + W]
        for p in range(P):
            _vertical_max(plane, inner, p, H, W, R, stride_h, pad_h, dilation_h)
            y_row = y_plane[p * Q : p * Q + Q]
            if stride_w == 2:
                _horizontal_max(padded, y_row, S, dilation_w, 2)
            elif stride_w == 1:
                _horizontal_max(padded, y_row, S, dilation_w, 1)
            else:
                _horizontal_max(padded, y_row, S, dilation_w, stride_w)


@jit(parallel=True)
def _max_pool_with_indices(x, y, indices, g):
    Q, stride_w = g[4], g[6]
    P = y.shape[1] // Q
    for plane_index in prange(x.shape[0]):
        plane, y_plane, where = x[plane_index], y[plane_index], indices[plane_index]
        for p in range(P):
            best, where_row = y_plane[p * Q : p * Q + Q], where[p * Q : p * Q + Q]
            if stride_w == 2:
                _argmax_output_row(plane, best, where_row, p, g, 2)
            elif stride_w == 1:
                _argmax_output_row(plane, best, where_row, p, g, 1)
            else:
                _argmax_output_row(plane, best, where_row, p, g, stride_w)


@jit(parallel=True)
def _max_pool_backward_given_indices(grad_y, indices, grad_x):
    # Scatter one plane per task: the plane is the task's own, so no two threads add
    # into the same element, and the plane (49 KiB) stays in L2 while it is written.
    for plane_index in prange(grad_x.shape[0]):
        gradient, where, grad_plane = grad_y[plane_index], indices[plane_index], grad_x[plane_index]
        grad_plane[:] = 0
        for k in range(gradient.size):
            grad_plane[where[k]] += gradient[k]


@jit(parallel=True)
def _max_pool_backward_search(grad_y, x, grad_x, g):
    Q, stride_w = g[4], g[6]
    P = grad_y.shape[1] // Q
    for plane_index in prange(grad_x.shape[0]):
        plane, gradient, grad_plane = x[plane_index], grad_y[plane_index], grad_x[plane_index]
        best = np.empty(Q, x.dtype)
        where = np.empty(Q, np.int64)
        grad_plane[:] = 0
        for p in range(P):
            if stride_w == 2:
                _argmax_output_row(plane, best, where, p, g, 2)
            elif stride_w == 1:
                _argmax_output_row(plane, best, where, p, g, 1)
            else:
                _argmax_output_row(plane, best, where, p, g, stride_w)
            row = gradient[p * Q : p * Q + Q]
            for q in range(Q):
                grad_plane[where[q]] += row[q]


@jit(parallel=True)
def _avg_pool(x, y, reciprocals, H, W, R, S, stride_h, stride_w, pad_h, pad_w):
    P, Q = reciprocals.shape
    width = max(pad_w + W, (Q - 1) * stride_w + S)
    for plane_index in prange(x.shape[0]):
        plane, y_plane = x[plane_index], y[plane_index]
        padded = np.zeros(width, x.dtype)
        inner = padded[pad_w : pad_w + W]
        for p in range(P):
            _vertical_sum(plane, inner, p, H, W, R, stride_h, pad_h)
            y_row = y_plane[p * Q : p * Q + Q]
            if stride_w == 2:
                _horizontal_sum(padded, y_row, reciprocals[p], S, 2)
            elif stride_w == 1:
                _horizontal_sum(padded, y_row, reciprocals[p], S, 1)
            else:
                _horizontal_sum(padded, y_row, reciprocals[p], S, stride_w)


@jit(parallel=True)
def _avg_pool_backward(grad_y, grad_x, reciprocals, H, W, R, S, stride_h, stride_w, pad_h, pad_w):
    # Gather form: each output row's gradient is spread over padded columns once
    # (expanded, P x width scratch: 25 KiB here), then every grad_x row is written once as
    # the sum of the expanded rows whose windows cover it.
    P, Q = reciprocals.shape
    width = max(pad_w + W, (Q - 1) * stride_w + S)
    for plane_index in prange(grad_x.shape[0]):
        gradient, grad_plane = grad_y[plane_index], grad_x[plane_index]
        expanded = np.empty((P, width), grad_x.dtype)
        shares = np.empty(Q, grad_x.dtype)
        for p in range(P):
            row, scale = gradient[p * Q : p * Q + Q], reciprocals[p]
            for q in range(Q):
                shares[q] = row[q] * scale[q]
            if stride_w == 2:
                _spread_row(shares, expanded[p], S, 2)
            elif stride_w == 1:
                _spread_row(shares, expanded[p], S, 1)
            else:
                _spread_row(shares, expanded[p], S, stride_w)
        for h in range(H):
            first = max(0, _ceil_div(h + pad_h - R + 1, stride_h))
            last = min(P - 1, (h + pad_h) // stride_h)
            target = grad_plane[h * W : h * W + W]
            if first > last:
                target[:] = 0
                continue
            target[:] = expanded[first, pad_w : pad_w + W]
            for p in range(first + 1, last + 1):
                source = expanded[p, pad_w : pad_w + W]
                for w in range(W):
                    target[w] += source[w]


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
    padded input, then (without count_include_pad) to the input itself."""

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


@register("max_pool2d", "numba")
def max_pool2d(x, y, indices, g: PoolGeometry) -> None:
    if indices is None:
        _max_pool_values(_planes(x, g), _planes(y, g), _max_geometry(g))
    else:
        _max_pool_with_indices(_planes(x, g), _planes(y, g), _planes(indices, g), _max_geometry(g))


@register("max_pool2d_backward", "numba")
def max_pool2d_backward(grad_y, x, indices, grad_x, g: PoolGeometry) -> None:
    if indices is None:
        _max_pool_backward_search(
            _planes(grad_y, g), _planes(x, g), _planes(grad_x, g), _max_geometry(g)
        )
    else:
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
