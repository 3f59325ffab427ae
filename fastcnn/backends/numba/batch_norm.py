"""Batch normalisation over the channels of (N, C, L): statistics, forward, backward.
Algorithm: per channel sums in float64 (two passes: the mean, then the squared
deviations); forward and input gradient as one affine map per channel, y = a[c] x + b[c]
(and grad_x = a[c] grad_y + b[c] x + c[c]), with the per-channel coefficients made in
the driver from the sums.

Traffic: statistics read x twice; forward reads x and writes y; backward reads grad_y and
x twice (the sums, then the gradient) and writes grad_x.
"""

from __future__ import annotations

import numpy as np
from numba import prange

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
def _affine(x, a, b, y):
    """y[n, c] = a[c] * x[n, c] + b[c]."""
    N, C, L = x.shape
    for task in prange(N * C):
        n, c = task // C, task % C
        row, out = x[n, c], y[n, c]
        scale, shift = a[c], b[c]
        for i in range(L):
            out[i] = row[i] * scale + shift


@jit(parallel=True)
def _gradient_sums(grad_y, x, mean, sum_g, sum_gx):
    """Per channel: sum of grad_y, and of grad_y * (x - mean), in float64."""
    N, C, L = x.shape
    for c in prange(C):
        g_total = 0.0
        gx_total = 0.0
        m = mean[c]
        for n in range(N):
            g, row = grad_y[n, c], x[n, c]
            for i in range(L):
                g_total += g[i]
                gx_total += g[i] * (row[i] - m)
        sum_g[c] = g_total
        sum_gx[c] = gx_total


@jit(parallel=True)
def _input_gradient(grad_y, x, a, b, constant, grad_x):
    """grad_x[n, c] = a[c] * grad_y[n, c] + b[c] * x[n, c] + constant[c]."""
    N, C, L = x.shape
    for task in prange(N * C):
        n, c = task // C, task % C
        g, row, out = grad_y[n, c], x[n, c], grad_x[n, c]
        p, q, r = a[c], b[c], constant[c]
        for i in range(L):
            out[i] = p * g[i] + q * row[i] + r


def _invstd(var, eps):
    return 1.0 / np.sqrt(var.astype(np.float64) + eps)


@register("batch_norm_statistics", "numba")
def batch_norm_statistics(x, mean, var) -> None:
    _statistics(x, mean, var)


@register("batch_norm", "numba")
def batch_norm(x, mean, var, weight, bias, y, eps) -> None:
    scale = _invstd(var, eps) * (1.0 if weight is None else weight)
    shift = (0.0 if bias is None else bias) - mean * scale
    _affine(x, scale.astype(x.dtype), np.asarray(shift, np.float64).astype(x.dtype), y)


@register("batch_norm_backward", "numba")
def batch_norm_backward(
    grad_y, x, mean, var, weight, grad_x, grad_weight, grad_bias, eps, training
) -> None:
    C = x.shape[1]
    sum_g, sum_gx = np.empty(C), np.empty(C)
    _gradient_sums(grad_y, x, mean.astype(x.dtype), sum_g, sum_gx)
    invstd = _invstd(var, eps)
    grad_bias[...] = sum_g
    grad_weight[...] = sum_gx * invstd
    if grad_x is None:
        return
    a = invstd * (1.0 if weight is None else weight.astype(np.float64))
    dtype = x.dtype
    if not training:  # fixed statistics: dx = a grad_y, x not read (a NaN there stays out)
        _affine(grad_y, a.astype(dtype), np.zeros(C, dtype), grad_x)
        return
    # dx = a (g - sum_g / M - (x - mean) invstd^2 sum_gx / M): the batch's mean and
    # variance depend on x too.
    M = x.shape[0] * x.shape[2]
    b = -a * invstd**2 * sum_gx / M
    constant = -a * sum_g / M - b * mean
    _input_gradient(grad_y, x, a.astype(dtype), b.astype(dtype), constant.astype(dtype), grad_x)
