"""Convolution forward and weight gradient, any stride / padding / dilation / groups.
Algorithm: direct convolution over the phase-split input (phases.py), register-blocked
6 output channels x 64 output positions by the GEMM micro-kernel (gemm.py); no im2col.

Each task owns one image, one group and a chunk of the flat output index. For every
kernel tap t = (c, r, s) the micro-kernel reads the 64 positions as one contiguous
shifted row of the phase buffer, so bounds and padding never reach the inner loop.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from fastcnn.backends.numba._setup import jit
from fastcnn.backends.numba.gemm import KC, MR, NR, micro_kernel, multiply_rows, pack_a

#: Output positions per task: 4 micro-tiles wide; the weights of a group stay in L2.
CHUNK = 4 * NR


@jit
def pack_weights(weight, G, Kg, T, packed):
    """Each group's (Kg x T) weight matrix, packed into MR-row panels one after another."""
    group = (Kg + MR - 1) // MR * T * MR
    for g in range(G):
        pack_a(weight, g * Kg * T, T, 1, Kg, T, packed, g * group)


@jit(parallel=True)
def forward(buffer, image, group_stride, offsets, packed, G, Kg, columns, width, P, Q, init, y):
    """y[n, g*Kg + k, p, q] = init[k] + sum_t A_g[k, t] * buffer[n*image + g*group_stride +
    offsets[t] + p*width + q]. FLOPs: 2 * N * K * P * Q * T (plus the garbage columns)."""
    T = offsets.size
    K = G * Kg
    N = y.size // (K * P * Q)
    chunks = (columns + CHUNK - 1) // CHUNK
    group = (Kg + MR - 1) // MR * T * MR
    for task in prange(N * G * chunks):
        n = task // (G * chunks)
        g = task // chunks % G
        j0 = task % chunks * CHUNK
        count = min(CHUNK, columns - j0)
        b0 = n * image + g * group_stride + j0
        y0 = (n * K + g * Kg) * P * Q
        tail = np.empty(1, y.dtype)  # never used: the buffer has a panel of slack
        if width == Q:  # no garbage columns: the flat index is y's own
            multiply_rows(
                packed, g * group, Kg, T, buffer, offsets, b0, count, CHUNK + NR,
                y, y0 + j0, P * Q, init, g * Kg, False, tail,
            )  # fmt: skip
            continue
        out = np.empty(Kg * CHUNK, y.dtype)
        multiply_rows(
            packed, g * group, Kg, T, buffer, offsets, b0, count, CHUNK + NR,
            out, 0, CHUNK, init, g * Kg, False, tail,
        )  # fmt: skip
        for p in range(j0 // width, min((j0 + count - 1) // width + 1, P)):
            q_lo = max(0, j0 - p * width)
            q_hi = min(Q, j0 + count - p * width)
            for k in range(Kg):
                source = k * CHUNK + p * width - j0
                target = y0 + k * P * Q + p * Q
                for q in range(q_lo, q_hi):
                    y[target + q] = out[source + q]


@jit(parallel=True)
def weight_gradient(
    buffer, image, group_stride, offsets, grad_rows, N, G, Kg, columns, threads, partial
):
    """partial[part, g*Kg + k, t] = sum over this part's (image, column block) of
    grad_rows[n, g*Kg + k, idx] * buffer[n*image + g*group_stride + offsets[t] + idx].

    ``grad_rows`` is grad_y in the flat layout, zero in the garbage columns. The sum over
    images and positions is split into ``threads`` parts, each with its own copy of
    the gradient (summed by the caller): no two threads write the same element.
    FLOPs: 2 * N * K * T * columns.
    """
    T = offsets.size
    K = G * Kg
    blocks = (columns + KC - 1) // KC
    work = N * G * blocks
    panels_t = (T + NR - 1) // NR
    zero = np.zeros(Kg, partial.dtype)
    for part in prange(threads):
        a = np.empty(((Kg + MR - 1) // MR) * KC * MR, partial.dtype)
        b = np.empty(panels_t * KC * NR, partial.dtype)
        rows = np.arange(KC) * NR
        for item in range(part * work // threads, (part + 1) * work // threads):
            n = item // (G * blocks)
            g = item // blocks % G
            j0 = item % blocks * KC
            kc = min(KC, columns - j0)
            # A = grad rows (Kg x kc), B = the kc x T matrix of shifted input rows.
            pack_a(grad_rows, (n * K + g * Kg) * columns + j0, columns, 1, Kg, kc, a, 0)
            base = n * image + g * group_stride + j0
            # b[pt, k, j] = row t = pt*NR + j of the taps at position k: each tap's row is
            # read contiguously (kc elements), written with a stride of NR.
            for t in range(panels_t * NR):
                pt, j = t // NR, t % NR
                if t < T:
                    row = buffer[base + offsets[t] : base + offsets[t] + kc]
                    for k in range(kc):
                        b[(pt * kc + k) * NR + j] = row[k]
                else:
                    for k in range(kc):
                        b[(pt * kc + k) * NR + j] = 0
            c0 = (part * G + g) * Kg * T
            for pt in range(panels_t):
                for pk in range((Kg + MR - 1) // MR):
                    micro_kernel(
                        kc, a, pk * kc * MR, b, rows, 0, pt * kc * NR,
                        partial, c0 + pk * MR * T + pt * NR, T,
                        min(MR, Kg - pk * MR), min(NR, T - pt * NR), False, zero, 0,
                    )  # fmt: skip
