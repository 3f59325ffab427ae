"""Convolution forward and input gradient through explicit column matrices (im2col).
Algorithm: im2col / col2im around the GEMM micro-kernel (gemm.py); 1x1 = a plain GEMM.

Forward: each task builds the column block of one image, group and chunk of output
positions (T = C/G*R*S rows x 256 columns, in L2) and multiplies the packed weights
into y directly. A 1x1 stride-1 unpadded convolution needs no columns: the channels
of x are the rows of B. Input gradient: columns = W^T @ grad_y per image and group,
then col2im adds them into grad_x (gathering per image, so no two tasks write alike).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from fastcnn._shapes import ConvGeometry
from fastcnn.backends.numba._setup import jit
from fastcnn.backends.numba.direct import pack_weights
from fastcnn.backends.numba.gemm import MR, NR, multiply_rows, pack_a, panels

CHUNK = 4 * NR


@jit
def _im2col_block(x, x0, j0, count, C, H, W, R, S, Q, sh, sw, ph, pw, dh, dw, columns, ld):
    """columns[t*ld + j] = x[x0 + c, p*sh - ph + r*dh, q*sw - pw + s*dw] (0 outside) for
    the output positions idx = j0 + j = p*Q + q, j < count; t = (c, r, s)."""
    t = 0
    for c in range(C):
        for r in range(R):
            for s in range(S):
                out = t * ld - j0
                idx = j0
                while idx < j0 + count:
                    p = idx // Q
                    q_end = min(Q, j0 + count - p * Q)
                    h = p * sh - ph + r * dh
                    for q in range(idx - p * Q, q_end):
                        w = q * sw - pw + s * dw
                        inside = 0 <= h < H and 0 <= w < W
                        columns[out + p * Q + q] = x[x0 + (c * H + h) * W + w] if inside else 0
                    idx = p * Q + q_end
                t += 1


@jit(parallel=True)
def _forward(x, packed, init, y, N, C, H, W, K, G, R, S, P, Q, sh, sw, ph, pw, dh, dw, plain):
    Cg, Kg = C // G, K // G
    T = Cg * R * S
    PQ = P * Q
    chunks = (PQ + CHUNK - 1) // CHUNK
    group = (Kg + MR - 1) // MR * T * MR
    for task in prange(N * G * chunks):
        n = task // (G * chunks)
        g = task // chunks % G
        j0 = task % chunks * CHUNK
        count = min(CHUNK, PQ - j0)
        x0 = (n * C + g * Cg) * H * W
        tail = np.empty(T * NR, y.dtype)
        if plain:  # 1x1, stride 1, no padding: row c of B is channel c of x
            offsets = np.arange(T) * H * W
            multiply_rows(
                packed, g * group, Kg, T, x, offsets, x0 + j0, count, PQ - j0,
                y, (n * K + g * Kg) * PQ + j0, PQ, init, g * Kg, False, tail,
            )  # fmt: skip
            continue
        columns = np.empty(T * CHUNK + NR, y.dtype)
        _im2col_block(x, x0, j0, count, Cg, H, W, R, S, Q, sh, sw, ph, pw, dh, dw, columns, CHUNK)
        multiply_rows(
            packed, g * group, Kg, T, columns, np.arange(T) * CHUNK, 0, count, CHUNK + NR,
            y, (n * K + g * Kg) * PQ + j0, PQ, init, g * Kg, False, tail,
        )  # fmt: skip


def forward(x, weight, bias, y, g: ConvGeometry) -> None:
    G, Kg = g.groups, g.K // g.groups
    T = g.C // G * g.R * g.S
    packed = np.empty(G * panels(Kg) * T * MR, x.dtype)
    pack_weights(weight.reshape(-1), G, Kg, T, packed)
    init = np.zeros(g.K, x.dtype) if bias is None else bias
    plain = (g.R, g.S, g.stride_h, g.stride_w, g.pad_h, g.pad_w) == (1, 1, 1, 1, 0, 0)
    _forward(
        x.reshape(-1), packed, init, y.reshape(-1), g.N, g.C, g.H, g.W, g.K, G, g.R, g.S,
        g.P, g.Q, g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.dilation_h, g.dilation_w, plain,
    )  # fmt: skip


@jit(parallel=True)
def _input_gradient(gy, w, gx, N, C, H, W, K, G, R, S, P, Q, sh, sw, ph, pw, dh, dw):
    """grad_x[n, c, h, w] = sum over taps and outputs that read (h, w) of
    W[k, c, r, s] * grad_y[n, k, p, q]. FLOPs: 2 * N * K * P * Q * T."""
    Cg, Kg = C // G, K // G
    T = Cg * R * S
    PQ = P * Q
    zero = np.zeros(T, gx.dtype)
    for task in prange(N * G):
        n, g = task // G, task % G
        # A = W_g^T (T x Kg), packed; B = grad_y rows of this image and group.
        packed = np.empty((T + MR - 1) // MR * Kg * MR, gx.dtype)
        pack_a(w, g * Kg * T, 1, T, T, Kg, packed, 0)
        columns = np.empty(T * PQ, gx.dtype)
        tail = np.empty(Kg * NR, gx.dtype)
        multiply_rows(
            packed, 0, T, Kg, gy, np.arange(Kg) * PQ, (n * K + g * Kg) * PQ, PQ, PQ,
            columns, 0, PQ, zero, 0, False, tail,
        )  # fmt: skip
        x0 = (n * C + g * Cg) * H * W
        for i in range(Cg * H * W):
            gx[x0 + i] = 0
        t = 0
        for c in range(Cg):
            for r in range(R):
                for s in range(S):
                    for p in range(P):
                        h = p * sh - ph + r * dh
                        if h < 0 or h >= H:
                            continue
                        shift = s * dw - pw
                        q_lo = min(max(0, -(shift // sw)), Q)
                        q_hi = max(min(Q, (W - 1 - shift) // sw + 1), q_lo)
                        row = x0 + (c * H + h) * W + shift
                        for q in range(q_lo, q_hi):
                            gx[row + q * sw] += columns[t * PQ + p * Q + q]
                    t += 1


def input_gradient(grad_y, weight, grad_x, g: ConvGeometry) -> None:
    _input_gradient(
        grad_y.reshape(-1), weight.reshape(-1), grad_x.reshape(-1), g.N, g.C, g.H, g.W, g.K,
        g.groups, g.R, g.S, g.P, g.Q, g.stride_h, g.stride_w, g.pad_h, g.pad_w,
        g.dilation_h, g.dilation_w,
    )  # fmt: skip
