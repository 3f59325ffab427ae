"""Depthwise convolution (one input channel per group, any channel multiplier), fwd + bwd.
Algorithm: direct per-plane loops, vectorised over the output row, bounds hoisted per tap.

Memory-bound: 2 * R * S FLOPs per output against one read of x and one write of y,
so the kernel reads x once, with no padded copy, and keeps each output row in L1.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from fastcnn._shapes import ConvGeometry
from fastcnn.backends.numba._setup import jit


@jit
def _column_range(s, Q, W, stride_w, pad_w, dilation_w):
    """Outputs q whose tap s reads a column inside x: q_lo <= q < q_hi."""
    shift = s * dilation_w - pad_w  # column = q * stride_w + shift
    q_lo = min(max(0, -(shift // stride_w)), Q)
    q_hi = max(min(Q, (W - 1 - shift) // stride_w + 1), q_lo)
    return q_lo, q_hi, shift


@jit(parallel=True)
def _forward(x, w, bias, y, N, C, H, W, K, R, S, P, Q, sh, sw, ph, pw, dh, dw):
    multiplier = K // C
    for plane in prange(N * K):
        n, k = plane // K, plane % K
        source = (n * C + k // multiplier) * H * W
        for p in range(P):
            out = y[(plane * P + p) * Q : (plane * P + p + 1) * Q]
            for q in range(Q):
                out[q] = bias[k]
            for r in range(R):
                h = p * sh - ph + r * dh
                if h < 0 or h >= H:
                    continue
                row = source + h * W
                for s in range(S):
                    weight = w[(k * R + r) * S + s]
                    q_lo, q_hi, shift = _column_range(s, Q, W, sw, pw, dw)
                    first = row + q_lo * sw + shift
                    if sw == 1:
                        inputs = x[first : first + q_hi - q_lo]
                        for i in range(q_hi - q_lo):
                            out[q_lo + i] += weight * inputs[i]
                    else:
                        inputs = x[first : first + (q_hi - q_lo) * sw]
                        for i in range(q_hi - q_lo):
                            out[q_lo + i] += weight * inputs[i * sw]


def forward(x, weight, bias, y, g: ConvGeometry) -> None:
    bias = np.zeros(g.K, x.dtype) if bias is None else bias
    _forward(
        x.reshape(-1), weight.reshape(-1), bias, y.reshape(-1), g.N, g.C, g.H, g.W, g.K,
        g.R, g.S, g.P, g.Q, g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.dilation_h, g.dilation_w,
    )  # fmt: skip


@jit(parallel=True)
def _backward(gy, x, w, gx, gw, N, C, H, W, K, R, S, P, Q, sh, sw, ph, pw, dh, dw):
    """One task per input channel c: it alone writes grad_x[:, c] and the gradients of
    its output channels c*m .. c*m + m-1, so no two tasks touch the same element."""
    multiplier = K // C
    for c in prange(C):
        for t in range(multiplier * R * S):
            gw[c * multiplier * R * S + t] = 0
        for n in range(N):
            source = (n * C + c) * H * W
            for i in range(H * W):
                gx[source + i] = 0
            for k in range(c * multiplier, (c + 1) * multiplier):
                for p in range(P):
                    grads = gy[((n * K + k) * P + p) * Q : ((n * K + k) * P + p + 1) * Q]
                    for r in range(R):
                        h = p * sh - ph + r * dh
                        if h < 0 or h >= H:
                            continue
                        row = source + h * W
                        for s in range(S):
                            weight = w[(k * R + r) * S + s]
                            q_lo, q_hi, shift = _column_range(s, Q, W, sw, pw, dw)
                            total = 0.0
                            for q in range(q_lo, q_hi):
                                column = row + q * sw + shift
                                gx[column] += weight * grads[q]
                                total += grads[q] * x[column]
                            gw[(k * R + r) * S + s] += total


def backward(grad_y, x, weight, grad_x, grad_weight, g: ConvGeometry) -> None:
    _backward(
        grad_y.reshape(-1), x.reshape(-1), weight.reshape(-1), grad_x.reshape(-1),
        grad_weight.reshape(-1), g.N, g.C, g.H, g.W, g.K, g.R, g.S, g.P, g.Q,
        g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.dilation_h, g.dilation_w,
    )  # fmt: skip
