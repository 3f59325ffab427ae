"""Convolution forward and input gradient through explicit column matrices (im2col).
Algorithm: im2col / col2im around the GEMM micro-kernel (gemm.py); 1x1 = a plain GEMM.

Forward: each task builds the column block of one image, group and chunk of output
positions (T = C/G*R*S rows x 256 columns, in L2) and multiplies the packed weights
into y directly. A 1x1 stride-1 unpadded convolution needs no columns: the channels
of x are the rows of B. Input gradient: columns = W^T @ grad_y per image and group,
then col2im adds them into grad_x (gathering per image, so no two tasks write alike).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from fastcnn import _census
from fastcnn._shapes import ConvGeometry
from fastcnn.backends.numba import direct
from fastcnn.backends.numba._setup import jit
from fastcnn.backends.numba.direct import pack_weights
from fastcnn.backends.numba.gemm import (
    KC_IMAGES,
    MR,
    NR,
    PANELS_IMAGES,
    multiply_images,
    multiply_rows,
    pack_a,
    pack_groups,
    panels,
)
from fastcnn.backends.numba.pointwise import is_pointwise, is_strided_pointwise, spread
from fastcnn.backends.numba.workspace import scratch

CHUNK = 4 * NR

_census.declare(
    "numba",
    "im2col.forward.pointwise",
    "im2col.forward.strided_pointwise",
    "im2col.forward.columns",
    "im2col.input_gradient.pointwise",
    "im2col.input_gradient.strided_pointwise",
    "im2col.input_gradient.col2im",
)


def takes(g: ConvGeometry, direction: str) -> bool:
    """Every case, in every direction (the weight gradient: the packed GEMM over the
    column blocks, :func:`direct.packed_weight_gradient`)."""
    return True


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
def _forward(
    x, packed, init, y, N, C, H, W, K, G, R, S, P, Q, sh, sw, ph, pw, dh, dw, plain,
    parts, offsets, columns, tail,
):  # fmt: skip
    """The tasks (image, group, chunk) in ``parts`` contiguous ranges, one per thread;
    part i builds its column blocks in ``columns[i*(T*CHUNK + NR):]`` and its tail panels
    in ``tail[i*T*NR:]``; ``offsets`` (T) is scratch for the row offsets of B."""
    Cg, Kg = C // G, K // G
    T = Cg * R * S
    PQ = P * Q
    chunks = (PQ + CHUNK - 1) // CHUNK
    group = (Kg + MR - 1) // MR * T * MR
    block = T * CHUNK + NR
    for t in range(T):  # plain: row c of B is channel c of x; else row t of the columns
        offsets[t] = t * H * W if plain else t * CHUNK
    work = N * G * chunks
    for part in prange(parts):
        own_columns = columns[part * block : (part + 1) * block]
        own_tail = tail[part * T * NR : (part + 1) * T * NR]
        for task in range(part * work // parts, (part + 1) * work // parts):
            n = task // (G * chunks)
            g = task // chunks % G
            j0 = task % chunks * CHUNK
            count = min(CHUNK, PQ - j0)
            x0 = (n * C + g * Cg) * H * W
            if plain:
                multiply_rows(
                    packed, g * group, Kg, T, x, offsets, x0 + j0, count, PQ - j0,
                    y, (n * K + g * Kg) * PQ + j0, PQ, init, g * Kg, False, own_tail,
                )  # fmt: skip
                continue
            _im2col_block(
                x, x0, j0, count, Cg, H, W, R, S, Q, sh, sw, ph, pw, dh, dw, own_columns, CHUNK
            )
            multiply_rows(
                packed, g * group, Kg, T, own_columns, offsets, 0, count, CHUNK + NR,
                y, (n * K + g * Kg) * PQ + j0, PQ, init, g * Kg, False, own_tail,
            )  # fmt: skip


def forward(x, weight, bias, y, g: ConvGeometry) -> None:
    G, Kg = g.groups, g.K // g.groups
    T = g.C // G * g.R * g.S
    parts = numba.get_num_threads()
    packed = scratch("im2col.packed_weights", G * panels(Kg) * T * MR, x.dtype)
    pack_weights(weight.reshape(-1), G, Kg, T, packed)
    init = scratch("im2col.zero_bias", g.K, x.dtype, zeroed=True) if bias is None else bias
    plain = (g.R, g.S, g.stride_h, g.stride_w, g.pad_h, g.pad_w) == (1, 1, 1, 1, 0, 0)
    if is_pointwise(g):
        _census.record("numba", "im2col.forward.pointwise")
        _multiply_images(packed, g.K, g.C, x, g.N, g.H * g.W, init, y)
        return
    if is_strided_pointwise(g):  # a GEMM too
        _census.record("numba", "im2col.forward.strided_pointwise")
        _multiply_images(
            packed, g.K, g.C, x, g.N, g.P * g.Q, init, y, g.H, g.W,
            g.Q, g.stride_h, g.stride_w,
        )  # fmt: skip
        return
    _census.record("numba", "im2col.forward.columns")
    _forward(
        x.reshape(-1), packed, init, y.reshape(-1), g.N, g.C, g.H, g.W, g.K, G, g.R, g.S,
        g.P, g.Q, g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.dilation_h, g.dilation_w, plain,
        parts, scratch("im2col.offsets", T, np.int64),
        scratch("im2col.columns", parts * (T * CHUNK + NR), x.dtype),
        scratch("im2col.tail", parts * T * NR, x.dtype),
    )  # fmt: skip


@jit(parallel=True)
def _input_gradient(
    gy, w, gx, N, C, H, W, K, G, R, S, P, Q, sh, sw, ph, pw, dh, dw,
    parts, packed, offsets, zero, columns, tail,
):  # fmt: skip
    """grad_x[n, c, h, w] = sum over taps and outputs that read (h, w) of
    W[k, c, r, s] * grad_y[n, k, p, q]. FLOPs: 2 * N * K * P * Q * T.

    Per image and group, chunk by chunk of output positions: columns = W_g^T @ grad_y
    (T x CHUNK, in L2), then col2im adds them into grad_x; a part (thread) owns whole
    images, so no two threads write alike. Scratch: ``packed`` W^T panels of every group,
    ``offsets`` Kg, ``zero`` T zeros, per part ``T*CHUNK`` columns and ``Kg*NR`` tail.
    """
    Cg, Kg = C // G, K // G
    T = Cg * R * S
    PQ = P * Q
    group = (T + MR - 1) // MR * Kg * MR
    for g in range(G):  # A = W_g^T (T x Kg)
        pack_a(w, g * Kg * T, 1, T, T, Kg, packed, g * group)
    for k in range(Kg):
        offsets[k] = k * PQ
    work = N * G
    for part in prange(parts):
        own_columns = columns[part * T * CHUNK : (part + 1) * T * CHUNK]
        own_tail = tail[part * Kg * NR : (part + 1) * Kg * NR]
        for task in range(part * work // parts, (part + 1) * work // parts):
            n, g = task // G, task % G
            x0 = (n * C + g * Cg) * H * W
            for i in range(Cg * H * W):
                gx[x0 + i] = 0
            for j0 in range(0, PQ, CHUNK):
                count = min(CHUNK, PQ - j0)
                multiply_rows(
                    packed, g * group, T, Kg, gy, offsets, (n * K + g * Kg) * PQ + j0, count,
                    PQ - j0, own_columns, 0, CHUNK, zero, 0, False, own_tail,
                )  # fmt: skip
                _col2im_block(
                    own_columns, gx, x0, j0, count, Cg, H, W, R, S, Q, sh, sw, ph, pw, dh, dw,
                    CHUNK,
                )  # fmt: skip


@jit
def _col2im_block(columns, gx, x0, j0, count, C, H, W, R, S, Q, sh, sw, ph, pw, dh, dw, ld):
    """gx[x0 + c, p*sh - ph + r*dh, q*sw - pw + s*dw] += columns[t*ld + idx - j0] for the
    output positions idx = p*Q + q in [j0, j0 + count) that read inside x; t = (c, r, s)."""
    t = 0
    for c in range(C):
        for r in range(R):
            for s in range(S):
                shift = s * dw - pw
                q_lo = min(max(0, -(shift // sw)), Q)
                q_hi = max(min(Q, (W - 1 - shift) // sw + 1), q_lo)
                idx = j0
                while idx < j0 + count:
                    p = idx // Q
                    q_end = min(Q, j0 + count - p * Q)
                    h = p * sh - ph + r * dh
                    if 0 <= h < H:
                        row = x0 + (c * H + h) * W + shift
                        source = t * ld + p * Q - j0
                        for q in range(max(idx - p * Q, q_lo), min(q_end, q_hi)):
                            gx[row + q * sw] += columns[source + q]
                    idx = p * Q + q_end
                t += 1


def _multiply_images(packed, M, depth, x, N, HW, init, y, H=0, W=0, Q=0, sh=1, sw=1) -> None:
    """y[n] = A @ x[n] (+ init) for every image, A packed (M x depth): gemm.multiply_images.
    With strides, x's planes are H x W and y's HW = P*Q."""
    parts = numba.get_num_threads()
    plane, W, Q = (HW, HW, HW) if sh == sw == 1 else (H * W, W, Q)
    multiply_images(
        packed, M, depth, x.reshape(-1), plane, W, sh, sw, N, HW, Q, init, y.reshape(-1),
        parts,
        scratch("im2col.image_panels", parts * PANELS_IMAGES * KC_IMAGES * NR, x.dtype),
        scratch("im2col.image_tiles", parts * PANELS_IMAGES * panels(M) * MR * NR, x.dtype),
    )  # fmt: skip


def input_gradient(grad_y, weight, grad_x, g: ConvGeometry) -> None:
    G, Kg = g.groups, g.K // g.groups
    T = g.C // G * g.R * g.S
    parts = numba.get_num_threads()
    dtype = grad_x.dtype
    pointwise = is_pointwise(g)
    if pointwise or is_strided_pointwise(g):
        # grad_x[n] = W^T @ grad_y[n]: the forward GEMM with A = W^T (C x K); strided,
        # into the positions the forward read (every sh-th row, sw-th column), zero between.
        packed = scratch("im2col.packed_transposed", panels(g.C) * g.K * MR, dtype)
        pack_groups(weight.reshape(-1), 1, 0, 1, g.C, g.C, g.K, packed)
        zero = scratch("im2col.zero_rows", g.C, dtype, zeroed=True)
        if pointwise:
            _census.record("numba", "im2col.input_gradient.pointwise")
            _multiply_images(packed, g.C, g.K, grad_y, g.N, g.H * g.W, zero, grad_x)
            return
        _census.record("numba", "im2col.input_gradient.strided_pointwise")
        values = scratch("im2col.strided_gradient", g.N * g.C * g.P * g.Q, dtype)
        _multiply_images(packed, g.C, g.K, grad_y, g.N, g.P * g.Q, zero, values)
        spread(values, g.N, g.C, g.H, g.W, g.P, g.Q, g.stride_h, g.stride_w, grad_x.reshape(-1))
        return
    _census.record("numba", "im2col.input_gradient.col2im")
    _input_gradient(
        grad_y.reshape(-1), weight.reshape(-1), grad_x.reshape(-1), g.N, g.C, g.H, g.W, g.K,
        g.groups, g.R, g.S, g.P, g.Q, g.stride_h, g.stride_w, g.pad_h, g.pad_w,
        g.dilation_h, g.dilation_w, parts,
        scratch("im2col.packed_transposed", G * panels(T) * Kg * MR, dtype),
        scratch("im2col.offsets", Kg, np.int64),
        scratch("im2col.zero_rows", T, dtype, zeroed=True),
        scratch("im2col.columns", parts * T * CHUNK, dtype),
        scratch("im2col.tail", parts * Kg * NR, dtype),
    )  # fmt: skip


def weight_gradient(grad_y, x, grad_weight, g: ConvGeometry) -> None:
    direct.packed_weight_gradient(grad_y, x, grad_weight, g)
