"""Convolution forward for 3x3 kernels, stride 1, dilation 1 (any padding, groups).
Algorithm: Winograd F(2x2, 3x3) (Lavin & Gray 2016) with batched GEMMs on the micro-kernel.

Per 2x2 output tile and channel, Y = A^T [sum_c (G g G^T) * (B^T d B)] A: 16 multiplies
per tile and channel pair instead of 36 (2.25x fewer). Each task takes 64 tiles of one
group (they may span images): input transform into V (16 x Cg x 64), 16 GEMMs
M[xi] = U[xi] (Kg x Cg) @ V[xi] (Cg x 64), output transform. A NaN or infinity in a
window spreads over the whole tile through the transforms, so a tile with a non-finite
output is recomputed directly: NaN lands exactly where the reference puts it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from numba import prange

from fastcnn._shapes import ConvGeometry
from fastcnn.backends.numba._setup import jit
from fastcnn.backends.numba.gemm import MR, NR, multiply_rows, pack_a, panels
from fastcnn.backends.numba.phases import PhaseLayout, split_phases

#: Filter transform G (4x3) of F(2x2, 3x3).
FILTER_TRANSFORM = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])


@jit
def _input_transform(buffer, tile_offsets, Cg, channel, width, V):
    """V[xi, c, j] = (B^T d B)[xi] for the 4x4 input patch d of tile j, channel c.
    B^T = [[1,0,-1,0], [0,1,1,0], [0,-1,1,0], [0,1,0,-1]]. 32 adds per patch."""
    d = np.empty(16, V.dtype)
    u = np.empty(16, V.dtype)
    for c in range(Cg):
        for j in range(NR):
            base = tile_offsets[j] + c * channel
            for a in range(4):
                for b in range(4):
                    d[a * 4 + b] = buffer[base + a * width + b]
            for b in range(4):  # columns: u = B^T d
                u[0 * 4 + b] = d[0 * 4 + b] - d[2 * 4 + b]
                u[1 * 4 + b] = d[1 * 4 + b] + d[2 * 4 + b]
                u[2 * 4 + b] = d[2 * 4 + b] - d[1 * 4 + b]
                u[3 * 4 + b] = d[1 * 4 + b] - d[3 * 4 + b]
            for a in range(4):  # rows: (B^T d) B
                out = (a * 4 * Cg + c) * NR + j
                step = Cg * NR
                V[out] = u[a * 4 + 0] - u[a * 4 + 2]
                V[out + step] = u[a * 4 + 1] + u[a * 4 + 2]
                V[out + 2 * step] = u[a * 4 + 2] - u[a * 4 + 1]
                V[out + 3 * step] = u[a * 4 + 1] - u[a * 4 + 3]


@jit
def _direct_output(x, w, bias, n, k, p, q, C, H, W, Kg, Cg, pad_h, pad_w):
    """One output computed directly (for tiles the transforms made non-finite)."""
    g = k // Kg
    total = bias[k]
    for c in range(Cg):
        for r in range(3):
            h = p - pad_h + r
            if 0 <= h < H:
                for s in range(3):
                    col = q - pad_w + s
                    if 0 <= col < W:
                        total += (
                            w[((k * Cg + c) * 3 + r) * 3 + s]
                            * x[((n * C + g * Cg + c) * H + h) * W + col]
                        )
    return total


@jit(parallel=True)
def _forward(buffer, image, channel, width, packed, x, w, bias, y, N, C, H, W, K, G, P, Q, ph, pw):
    Cg, Kg = C // G, K // G
    tiles_h, tiles_w = (P + 1) // 2, (Q + 1) // 2
    tiles = N * tiles_h * tiles_w
    blocks = (tiles + NR - 1) // NR
    group = (Kg + MR - 1) // MR * Cg * MR
    zero = np.zeros(Kg, y.dtype)
    for task in prange(blocks * G):
        block, g = task // G, task % G
        tile_offsets = np.empty(NR, np.int64)
        tile_outputs = np.empty(NR, np.int64)  # n*K*P*Q + 2ti*Q + 2tj, or -1
        for j in range(NR):
            tile = block * NR + j
            if tile >= tiles:  # pad the block with a copy of tile 0; never stored
                tile = 0
            n, rest = tile // (tiles_h * tiles_w), tile % (tiles_h * tiles_w)
            ti, tj = rest // tiles_w, rest % tiles_w
            tile_offsets[j] = n * image + g * Cg * channel + 2 * ti * width + 2 * tj
            inside = block * NR + j < tiles
            tile_outputs[j] = n * K * P * Q + 2 * ti * Q + 2 * tj if inside else -1
        V = np.empty(16 * Cg * NR, y.dtype)
        _input_transform(buffer, tile_offsets, Cg, channel, width, V)
        M = np.empty(16 * Kg * NR, y.dtype)
        offsets = np.arange(Cg) * NR
        for xi in range(16):
            multiply_rows(
                packed, (g * 16 + xi) * group, Kg, Cg, V, offsets, xi * Cg * NR, NR, NR,
                M, xi * Kg * NR, NR, zero, 0, False, V,
            )  # fmt: skip
        # Output transform: Y = A^T m A, A^T = [[1, 1, 1, 0], [0, 1, -1, -1]].
        out = np.empty(4, y.dtype)
        for kk in range(Kg):
            k = g * Kg + kk
            for j in range(NR):
                if tile_outputs[j] < 0:
                    continue
                m = kk * NR + j
                s = Kg * NR  # stride between the 16 transform positions
                # rows of A^T m: top = m0 + m1 + m2, bottom = m1 - m2 - m3 (per column b)
                t0 = M[m] + M[m + 4 * s] + M[m + 8 * s]
                t1 = M[m + s] + M[m + 5 * s] + M[m + 9 * s]
                t2 = M[m + 2 * s] + M[m + 6 * s] + M[m + 10 * s]
                t3 = M[m + 3 * s] + M[m + 7 * s] + M[m + 11 * s]
                u0 = M[m + 4 * s] - M[m + 8 * s] - M[m + 12 * s]
                u1 = M[m + 5 * s] - M[m + 9 * s] - M[m + 13 * s]
                u2 = M[m + 6 * s] - M[m + 10 * s] - M[m + 14 * s]
                u3 = M[m + 7 * s] - M[m + 11 * s] - M[m + 15 * s]
                out[0] = bias[k] + t0 + t1 + t2
                out[1] = bias[k] + t1 - t2 - t3
                out[2] = bias[k] + u0 + u1 + u2
                out[3] = bias[k] + u1 - u2 - u3
                first = tile_outputs[j] + k * P * Q
                n = tile_outputs[j] // (K * P * Q)
                p0 = (tile_outputs[j] % (P * Q)) // Q
                q0 = tile_outputs[j] % Q
                finite = np.isfinite(out[0]) and np.isfinite(out[1])
                finite = finite and np.isfinite(out[2]) and np.isfinite(out[3])
                for a in range(2):
                    for b in range(2):
                        if p0 + a < P and q0 + b < Q:
                            value = out[a * 2 + b]
                            if not finite:
                                value = _direct_output(
                                    x, w, bias, n, k, p0 + a, q0 + b, C, H, W, Kg, Cg, ph, pw
                                )
                            y[first + a * Q + b] = value


def forward(x, weight, bias, y, g: ConvGeometry) -> None:
    G, Kg, Cg = g.groups, g.K // g.groups, g.C // g.groups
    # Whole tiles: the phase buffer covers an even number of output rows and columns.
    even = dataclasses.replace(g, P=g.P + g.P % 2, Q=g.Q + g.Q % 2)
    layout = PhaseLayout(even)
    buffer = np.empty(layout.size, x.dtype)
    split_phases(
        x.reshape(-1), g.N, g.C, g.H, g.W, 1, 1, g.pad_h, g.pad_w,
        layout.height, layout.width, buffer,
    )  # fmt: skip
    # U[g, xi, k, c] = (G w G^T)[xi] for w = weight[g*Kg + k, c], in float64 then rounded.
    w = weight.reshape(G, Kg, Cg, 3, 3).astype(np.float64)
    U = np.einsum("ar,gkcrs,bs->gabkc", FILTER_TRANSFORM, w, FILTER_TRANSFORM)
    U = np.ascontiguousarray(U, dtype=x.dtype).reshape(-1)
    group = panels(Kg) * Cg * MR
    packed = np.empty(G * 16 * group, x.dtype)
    for xi in range(G * 16):
        pack_a(U, xi * Kg * Cg, Cg, 1, Kg, Cg, packed, xi * group)
    bias = np.zeros(g.K, x.dtype) if bias is None else bias
    _forward(
        buffer, layout.image, layout.channel, layout.width, packed, x.reshape(-1),
        weight.reshape(-1), bias, y.reshape(-1), g.N, g.C, g.H, g.W, g.K, G, g.P, g.Q,
        g.pad_h, g.pad_w,
    )  # fmt: skip
