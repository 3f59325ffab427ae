"""Batch normalisation's per-channel float64 arithmetic, shared by the CPU backends whose
kernels make the sums and the elementwise passes (numba, cpp).

Kernels (x, y, grad_y, grad_x as (N, C, L); per-channel arrays float64 of C):

    normalize(x, mean, scale, shift, y)        y = (x - mean) * scale + shift
    gradient_sums(grad_y, x, shift, sums)      sums (C, 4): sum d, d^2, g, g d; d = x - shift
    input_gradient(grad_y, x, mean, scale, constant, slope, grad_x)
                                               grad_x = scale (g - constant - (x - mean) slope)

each per element in float64, so that a mean large against the spread cancels nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def invstd(var, eps):
    return 1.0 / np.sqrt(var.astype(np.float64) + eps)


def forward(normalize: Callable, x, mean, var, weight, bias, y, eps) -> None:
    scale = invstd(var, eps) * (1.0 if weight is None else weight.astype(np.float64))
    shift = np.zeros(x.shape[1]) if bias is None else bias.astype(np.float64)
    normalize(x, mean.astype(np.float64), np.ascontiguousarray(scale, np.float64), shift, y)


def backward(
    gradient_sums: Callable,
    normalize: Callable,
    input_gradient: Callable,
    grad_y, x, mean, var, weight, grad_x, grad_weight, grad_bias, eps, training,
) -> None:  # fmt: skip
    N, C, L = x.shape
    M = N * L
    shift = mean.astype(np.float64)
    sums = np.empty((C, 4))
    gradient_sums(grad_y, x, shift, sums)
    sum_d, sum_dd, sum_g, sum_gd = sums.T
    if training:
        # The batch statistics again, in float64: about a shift within a rounding of the
        # mean, sum d^2 / M - (sum d / M)^2 cancels nothing, as the two-pass variance.
        offset = sum_d / M
        mean64 = shift + offset
        var64 = np.maximum(sum_dd / M - offset * offset, 0.0)
        sum_g_centred = sum_gd - offset * sum_g
    else:
        mean64, var64, sum_g_centred = shift, var.astype(np.float64), sum_gd
    inverse = invstd(var64, eps)
    grad_bias[...] = sum_g
    grad_weight[...] = sum_g_centred * inverse
    if grad_x is None:
        return
    scale = inverse * (1.0 if weight is None else weight.astype(np.float64))
    if not training:  # fixed statistics: dx = scale grad_y, x not read (a NaN there stays out)
        zeros = np.zeros(C)
        normalize(grad_y, zeros, scale, zeros, grad_x)
        return
    # dx = scale (g - mean(g) - x_hat mean(g x_hat)), x_hat = (x - mean) invstd: the batch's
    # mean and variance depend on x too.
    input_gradient(grad_y, x, mean64, scale, sum_g / M, inverse**2 * sum_g_centred / M, grad_x)
