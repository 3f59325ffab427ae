"""Batch normalisation over the channels of (N, C, L): statistics, forward, backward.
Algorithm: per channel sums in float64 (the statistics in two passes: the mean, then the
squared deviations; the backward's about the given mean); forward and input gradient
elementwise from the centred value x - mean, formed in float64 per element, so that a mean
large against the spread cancels nothing in the data's precision.

The per-channel float64 arithmetic between the kernels is fastcnn/backends/_batch_norm.py's,
shared with the cpp backend.

Traffic: statistics read x twice; forward reads x and writes y; backward reads grad_y and
x twice (the sums, then the gradient) and writes grad_x.
"""

from __future__ import annotations

from numba import prange

from fastcnn.backends import _batch_norm as host
from fastcnn.backends import register
from fastcnn.backends.numba._setup import jit


@jit(parallel=True)
def _statistics(x, mean, var):
    N, C, L = x.shape
    for c in prange(C):
        total = 0.0
        for n in range(N):
            row = x[n, c]
            for i in range(L):
                total += row[i]
        m = total / (N * L)
        squares = 0.0
        for n in range(N):
            row = x[n, c]
            for i in range(L):
                d = row[i] - m
                squares += d * d
        mean[c] = m
        var[c] = squares / (N * L)


@jit(parallel=True)
def _normalize(x, mean, scale, shift, y):
    """y[n, c] = (x[n, c] - mean[c]) * scale[c] + shift[c], in float64 per element."""
    N, C, L = x.shape
    for task in prange(N * C):
        n, c = task // C, task % C
        row, out = x[n, c], y[n, c]
        m, a, b = mean[c], scale[c], shift[c]
        for i in range(L):
            out[i] = (row[i] - m) * a + b


@jit(parallel=True)
def _gradient_sums(grad_y, x, shift, sums):
    """Per channel c, in float64, with d = x - shift[c]: the sums of d, d^2, grad_y and
    grad_y * d (sums[c, 0:4])."""
    N, C, L = x.shape
    for c in prange(C):
        d_total = 0.0
        dd_total = 0.0
        g_total = 0.0
        gd_total = 0.0
        s = shift[c]
        for n in range(N):
            g, row = grad_y[n, c], x[n, c]
            for i in range(L):
                d = row[i] - s
                d_total += d
                dd_total += d * d
                g_total += g[i]
                gd_total += g[i] * d
        sums[c, 0] = d_total
        sums[c, 1] = dd_total
        sums[c, 2] = g_total
        sums[c, 3] = gd_total


@jit(parallel=True)
def _input_gradient(grad_y, x, mean, scale, constant, slope, grad_x):
    """grad_x[n, c] = scale[c] * (grad_y - constant[c] - (x - mean[c]) * slope[c]), in
    float64 per element."""
    N, C, L = x.shape
    for task in prange(N * C):
        n, c = task // C, task % C
        g, row, out = grad_y[n, c], x[n, c], grad_x[n, c]
        m, a, k, q = mean[c], scale[c], constant[c], slope[c]
        for i in range(L):
            out[i] = a * (g[i] - k - (row[i] - m) * q)


@register("batch_norm_statistics", "numba")
def batch_norm_statistics(x, mean, var) -> None:
    _statistics(x, mean, var)


@register("batch_norm", "numba")
def batch_norm(x, mean, var, weight, bias, y, eps) -> None:
    host.forward(_normalize, x, mean, var, weight, bias, y, eps)


@register("batch_norm_backward", "numba")
def batch_norm_backward(
    grad_y, x, mean, var, weight, grad_x, grad_weight, grad_bias, eps, training
) -> None:
    host.backward(
        _gradient_sums, _normalize, _input_gradient,
        grad_y, x, mean, var, weight, grad_x, grad_weight, grad_bias, eps, training,
    )  # fmt: skip
