"""Convolution forward for 3x3 kernels, stride 1, dilation 1 (any padding, groups).
Algorithm: Winograd F(4x4, 3x3) (Lavin & Gray 2016), every stage vectorised across tiles.

Per 4x4 output tile and channel, Y = A^T [sum_c (G w G^T) * (B^T d B)] A: 36 multiplies
per 16 outputs instead of 144 (4x fewer). Three stages:

1. Input transform into V[panel, xi, c, j] for panels of NR tiles (numbered across
   images, so small images fill panels too). Each padded input row is deinterleaved by
   column phase, so element (r, s) of the 6x6 patches of all NR tiles is one contiguous
   row and the transform is plain vector arithmetic on 36 rows.
2. 36 GEMMs per panel, M[xi] (Kc x NR) = U[xi] (Kc x Cg) @ V[xi] (Cg x NR), on a 6 x 64
   register-blocked micro-kernel (gemm.py's, reading U with a row pitch). U is made per
   task for its Kc output channels, one xi row at a time, from the weights (a few FMAs per
   element; a GEMM does 2 x 64 per element of U and panel), so the filter transform is
   never stored whole (it is 4x the weights: 36 MB at 512 x 512 channels).
3. Output transform of M into y, vectorised across the panel's tiles, storing only
   outputs inside y (edge tiles).

With at most FEW_TILES tiles (the 7x7 and 14x14 layers at small batch) a 64-tile panel
would be mostly empty, so the GEMMs run transposed (tiles x channels, tiles rounded up
to 6) and the output transform runs across output channels (:func:`_multiply_few`).

A NaN or infinity in a window spreads over the whole tile through the transforms, so a
tile with a non-finite output is recomputed directly: NaN lands exactly where the
reference puts it.

Float32 accuracy: the transforms use the points 0, +-1, +-2, infinity; their constants
(up to 8 in A, 5 in B) make the error 10-50x that of a direct sum: at most 2e-5 of the
output's scale on the ResNet-50 / VGG / CIFAR benchmark shapes (the suite's float32
tolerance is 1e-4).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from fastcnn import _census
from fastcnn._shapes import ConvGeometry
from fastcnn.backends.numba import transposed
from fastcnn.backends.numba._setup import jit
from fastcnn.backends.numba.gemm import MR, NR, _stack_like
from fastcnn.backends.numba.workspace import scratch

_TILE = MR * NR
_PATCHES = 36 * NR  # 36 transform positions of NR tiles
_OUTPUTS = 16 * NR  # 4x4 outputs of NR tiles
_HALF = 24 * NR  # A^T m: 4 x 6 of NR tiles
#: Output channels per task at most (a multiple of MR): U[xi] for them is Kc x Cg.
KC_MAX = 48
#: Panels of NR tiles per task at most: each makes U once for all of them.
PANELS_MAX = 2
#: Up to this many tiles (one panel), the GEMMs run transposed (:func:`_multiply_few`).
FEW_TILES = 60

#: Filter transform G (6x3) of F(4x4, 3x3): U = G w G^T.
FILTER_TRANSFORM = np.array(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ]
)


@jit
def _micro_kernel(depth, a, a0, lda, b, b0, c, c0):
    """c[c0 + i*NR + j] = sum_k a[a0 + k*lda + i] * b[b0 + k*NR + j], i < MR, j < NR.

    gemm.micro_kernel with a row pitch ``lda`` for A (U is not repacked into MR panels).
    """
    acc = numba.carray(_stack_like(_TILE, c), _TILE)
    for t in range(_TILE):
        acc[t] = 0
    for k in range(depth):
        a_row = a[a0 + k * lda : a0 + k * lda + MR]
        b_row = b[b0 + k * NR : b0 + k * NR + NR]
        for j in range(NR):
            value = b_row[j]
            for i in range(MR):
                acc[i * NR + j] += a_row[i] * value
    out = c[c0 : c0 + _TILE]
    for t in range(_TILE):
        out[t] = acc[t]


#: Lanes per vector chunk: loops over a constant 16 compile to one zmm operation each.
LANES = 16


@jit(inline="always")
def _transform_pass(d0, d1, d2, d3, d4, d5, out, n):
    """out[e*NR + j] = (B^T d)[e] for the six rows d0..d5 (NR each) at each j < n.
    B^T = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
           [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]].
    Indexed by the loop index plus constants only: an index with a variable offset gets
    a wraparound select (it might be negative), which turns vector loads into gathers."""
    two, four, five = out.dtype.type(2), out.dtype.type(4), out.dtype.type(5)
    for j in range(n):
        a0, a1, a2, a3, a4, a5 = d0[j], d1[j], d2[j], d3[j], d4[j], d5[j]
        out[j] = four * a0 - five * a2 + a4
        out[NR + j] = a3 + a4 - four * (a1 + a2)
        out[2 * NR + j] = a4 - a3 + four * (a1 - a2)
        out[3 * NR + j] = a4 - a2 + two * (a3 - a1)
        out[4 * NR + j] = a4 - a2 - two * (a3 - a1)
        out[5 * NR + j] = four * a1 - five * a3 + a5


#: Columns of one deinterleaved patch row: a panel and a chunk of slack.
_ROW = NR + LANES


@jit
def _deinterleave(line, start, count, out, pos):
    """out[b*_ROW + pos + t] = line[4*(start + t) + b] for b < 4, t < count (rounded up to
    LANES: written past ``count`` into the slack or columns written after)."""
    for chunk in range((count + LANES - 1) // LANES):
        d = line[4 * (start + chunk * LANES) : 4 * (start + chunk * LANES + LANES)]
        at = pos + chunk * LANES
        q0 = out[at : at + LANES]
        q1 = out[_ROW + at : _ROW + at + LANES]
        q2 = out[2 * _ROW + at : 2 * _ROW + at + LANES]
        q3 = out[3 * _ROW + at : 3 * _ROW + at + LANES]
        for t in range(LANES):
            q0[t] = d[4 * t]
            q1[t] = d[4 * t + 1]
            q2[t] = d[4 * t + 2]
            q3[t] = d[4 * t + 3]


@jit(parallel=True)
def _input_transform(x, N, C, H, W, pad_h, pad_w, tiles_h, tiles_w, V, work):
    """V[panel, xi, c, j] = (B^T d B)[xi] for the 6x6 patch d of tile t = panel*NR + j,
    t = (n*tiles_h + ti)*tiles_w + tj (tiles past the last are zero patches).

    Patch element (r, s) of tile (ti, tj) is padded input (4*ti + r, 4*tj + s). One task
    per (channel, panel): for each tile row the panel touches, each of its six padded
    rows is deinterleaved by column phase into ``patches[r, s, :]`` (s < 4 from tile tj,
    s = 4, 5 as phases 0, 1 from tile tj + 1), so element (r, s) of all NR tiles is one
    contiguous row; then the rows and the columns of the patches are transformed.
    ``work`` holds :func:`_input_work` elements per thread.
    """
    total = N * tiles_h * tiles_w
    panels = (total + NR - 1) // NR
    width = tiles_w + 1  # tile columns of a padded row
    line_size = 4 * (width + LANES)
    per_thread = _input_work(tiles_w)
    lo, hi = max(0, -pad_w), min(W, 4 * width - pad_w)  # the columns of x inside a line
    for task in prange(C * panels):
        c, p = task // panels, task % panels
        start = numba.get_thread_id() * per_thread
        line = work[start : start + line_size]
        zeros = work[start + line_size : start + 2 * line_size]
        patches = work[start + 2 * line_size : start + 2 * line_size + 48 * _ROW]
        rows = numba.carray(_stack_like(_PATCHES, V), _PATCHES)
        columns = numba.carray(_stack_like(_PATCHES, V), _PATCHES)
        line[:] = 0
        zeros[:] = 0
        first = p * NR
        end = min(first + NR, total)
        # Tiles transformed: up to the last one, in whole chunks of LANES (a 7x7 image at
        # batch 8 fills half a panel, 14x14 at batch 1 a quarter); V past them is zero.
        used = min(NR, (end - first + LANES - 1) // LANES * LANES)
        if end - first < used:  # zero the patches of the chunk past the last tile
            for r in range(48):
                patches[r * _ROW + end - first : r * _ROW + used] = 0
        tile = first
        while tile < end:
            n, rest = tile // (tiles_h * tiles_w), tile % (tiles_h * tiles_w)
            ti, tj = rest // tiles_w, rest % tiles_w
            count = min(tiles_w - tj, end - tile)
            for r in range(6):
                h = 4 * ti + r - pad_h
                source = zeros
                if 0 <= h < H:
                    row = x[((n * C + c) * H + h) * W + lo : ((n * C + c) * H + h) * W + hi]
                    padded = line[pad_w + lo : pad_w + hi]
                    for t in range(hi - lo):
                        padded[t] = row[t]
                    source = line
                out = patches[r * 8 * _ROW :]
                _deinterleave(source, tj, count, out, tile - first)
                _deinterleave(source, tj + 1, count, out[4 * _ROW :], tile - first)
            tile += count
        for r in range(6):  # rows[r, e] = (d B)[r, e] for every tile
            base = r * 8 * _ROW
            _transform_pass(
                patches[base : base + NR], patches[base + _ROW : base + _ROW + NR],
                patches[base + 2 * _ROW : base + 2 * _ROW + NR],
                patches[base + 3 * _ROW : base + 3 * _ROW + NR],
                patches[base + 4 * _ROW : base + 4 * _ROW + NR],
                patches[base + 5 * _ROW : base + 5 * _ROW + NR],
                rows[r * 6 * NR : (r + 1) * 6 * NR], used,
            )  # fmt: skip
        for e in range(6):  # columns[e, e'] = (B^T d B)[e', e]
            _transform_pass(
                rows[e * NR : (e + 1) * NR], rows[(6 + e) * NR : (7 + e) * NR],
                rows[(12 + e) * NR : (13 + e) * NR], rows[(18 + e) * NR : (19 + e) * NR],
                rows[(24 + e) * NR : (25 + e) * NR], rows[(30 + e) * NR : (31 + e) * NR],
                columns[e * 6 * NR : (e + 1) * 6 * NR], used,
            )  # fmt: skip
        for e in range(6):
            for e2 in range(6):
                out = V[((p * 36 + e2 * 6 + e) * C + c) * NR :][:NR]
                transformed = columns[(e * 6 + e2) * NR : (e * 6 + e2 + 1) * NR]
                for j in range(used):
                    out[j] = transformed[j]
                out[used:] = 0


@jit
def _input_work(tiles_w):
    """Per-thread workspace of :func:`_input_transform`: a padded row, a zero row, the
    deinterleaved patch rows (8 per patch row, 6 used)."""
    return 8 * (tiles_w + 1 + LANES) + 48 * _ROW


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


@jit
def _filter_row(e, x0, x1, x2, out):
    """out = G[e, 0] x0 + G[e, 1] x1 + G[e, 2] x2 (one row of G applied to three arrays).
    G's rows 0 and 5 have one non-zero, rows 1-4 three."""
    kind = out.dtype.type
    if e == 0:
        for i in range(out.size):
            out[i] = x0[i] * kind(1 / 4)
    elif e == 1:
        for i in range(out.size):
            out[i] = (x0[i] + x1[i] + x2[i]) * kind(-1 / 6)
    elif e == 2:
        for i in range(out.size):
            out[i] = (x0[i] - x1[i] + x2[i]) * kind(-1 / 6)
    elif e == 3:
        for i in range(out.size):
            out[i] = x0[i] * kind(1 / 24) + x1[i] * kind(1 / 12) + x2[i] * kind(1 / 6)
    elif e == 4:
        for i in range(out.size):
            out[i] = x0[i] * kind(1 / 24) - x1[i] * kind(1 / 12) + x2[i] * kind(1 / 6)
    else:
        for i in range(out.size):
            out[i] = x2[i]


@jit
def _gather_weights(weight, first, rows, Kc, Cg, out):
    """out[r*3 + s, c*Kc + kk] = w[first + kk, c, r, s] for kk < rows, 0 for rows <= kk < Kc:
    the weights of Kc output channels in the layout the rows of U are made in. Blocks
    of LANES channels keep the 9 x LANES x Kc elements being written in L1."""
    zero = out.dtype.type(0)
    for c0 in range(0, Cg, LANES):
        block = min(LANES, Cg - c0)
        for kk in range(Kc):
            if kk < rows:
                source = weight[((first + kk) * Cg + c0) * 9 :][: block * 9]
                for c in range(block):
                    for t in range(9):
                        out[t * Kc * Cg + (c0 + c) * Kc + kk] = source[c * 9 + t]
            else:
                for c in range(block):
                    for t in range(9):
                        out[t * Kc * Cg + (c0 + c) * Kc + kk] = zero


@jit(inline="always")
def _u_row(lines, size, e2, u):
    """u[:size] = ((G w) G^T)[e1, e2] from the three lines of row e1 (:func:`_filter_lines`)."""
    _filter_row(e2, lines[:size], lines[size : 2 * size], lines[2 * size : 3 * size], u[:size])


@jit
def _filter_lines(weights, size, e1, lines):
    """lines[s, :] = (G w)[e1, s] for s < 3, from :func:`_gather_weights`'s layout."""
    for s in range(3):
        w0 = weights[s * size : (s + 1) * size]
        w1 = weights[(3 + s) * size : (4 + s) * size]
        w2 = weights[(6 + s) * size : (7 + s) * size]
        _filter_row(e1, w0, w1, w2, lines[s * size : (s + 1) * size])


@jit(inline="always")
def _output_tiles(M, m0, Kc, kk, bias_k, out):
    """out[a*4 + b, j] = bias_k + (A^T m A)[a, b] for the NR tiles of one output channel;
    m[xi, j] = M[m0 + (xi*Kc + kk)*NR + j]. A^T = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0],
    [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]. Returns whether every output is finite.
    ``out`` and the intermediate rows are stack arrays: LLVM knows they alias nothing."""
    two, four, eight = M.dtype.type(2), M.dtype.type(4), M.dtype.type(8)
    rows = numba.carray(_stack_like(_HALF, M), _HALF)  # rows[a*6 + e, j] = (A^T m)[a, e]
    for e in range(6):
        base = m0 + (e * Kc + kk) * NR
        step = 6 * Kc * NR
        m_0 = M[base : base + NR]
        m_1 = M[base + step : base + step + NR]
        m_2 = M[base + 2 * step : base + 2 * step + NR]
        m_3 = M[base + 3 * step : base + 3 * step + NR]
        m_4 = M[base + 4 * step : base + 4 * step + NR]
        m_5 = M[base + 5 * step : base + 5 * step + NR]
        for j in range(NR):
            rows[e * NR + j] = m_0[j] + m_1[j] + m_2[j] + m_3[j] + m_4[j]
            rows[(6 + e) * NR + j] = m_1[j] - m_2[j] + two * (m_3[j] - m_4[j])
            rows[(12 + e) * NR + j] = m_1[j] + m_2[j] + four * (m_3[j] + m_4[j])
            rows[(18 + e) * NR + j] = m_1[j] - m_2[j] + eight * (m_3[j] - m_4[j]) + m_5[j]
    bad = M.dtype.type(0)
    for a in range(4):
        t0 = rows[a * 6 * NR : a * 6 * NR + NR]
        t1 = rows[(a * 6 + 1) * NR : (a * 6 + 2) * NR]
        t2 = rows[(a * 6 + 2) * NR : (a * 6 + 3) * NR]
        t3 = rows[(a * 6 + 3) * NR : (a * 6 + 4) * NR]
        t4 = rows[(a * 6 + 4) * NR : (a * 6 + 5) * NR]
        t5 = rows[(a * 6 + 5) * NR : (a * 6 + 6) * NR]
        o = out[a * 4 * NR :]
        for j in range(NR):
            o0 = bias_k + t0[j] + t1[j] + t2[j] + t3[j] + t4[j]
            o1 = bias_k + t1[j] - t2[j] + two * (t3[j] - t4[j])
            o2 = bias_k + t1[j] + t2[j] + four * (t3[j] + t4[j])
            o3 = bias_k + t1[j] - t2[j] + eight * (t3[j] - t4[j]) + t5[j]
            o[j] = o0
            o[NR + j] = o1
            o[2 * NR + j] = o2
            o[3 * NR + j] = o3
            bad += (o0 - o0) + (o1 - o1) + (o2 - o2) + (o3 - o3)  # NaN iff any is not finite
    return bad == 0


@jit
def _recompute_tile(out, j, x, weight, bias, y, n, k, ti, tj, C, H, W, K, Kg, P, Q, pad_h, pad_w):
    """If any of tile (ti, tj)'s outputs out[ab*NR + j] is not finite, compute the tile's
    outputs in y directly (the transforms spread a NaN over the whole tile)."""
    for ab in range(16):
        if not np.isfinite(out[ab * NR + j]):
            break
    else:
        return
    for a in range(min(4, P - 4 * ti)):
        for b in range(min(4, Q - 4 * tj)):
            p, q = 4 * ti + a, 4 * tj + b
            y[((n * K + k) * P + p) * Q + q] = _direct_output(
                x, weight, bias, n, k, p, q, C, H, W, Kg, C // (K // Kg), pad_h, pad_w
            )


@jit(parallel=True)
def _multiply_and_store(
    V, x, weight, bias, y, N, C, H, W, K, G, P, Q, pad_h, pad_w, tiles_h, tiles_w, kc, work
):
    """y = A^T (U @ V) A per panel: see the module docstring. One task per (group,
    chunk of ``kc`` output channels, run of PANELS_MAX panels); ``work`` holds
    :func:`_work_size` elements per thread."""
    Cg, Kg = C // G, K // G
    chunks = (Kg + kc - 1) // kc
    total = N * tiles_h * tiles_w
    panels = (total + NR - 1) // NR
    runs = (panels + PANELS_MAX - 1) // PANELS_MAX
    per_weights = 9 * kc * Cg
    per_lines = 3 * kc * Cg
    per_u = kc * Cg
    per_m = PANELS_MAX * 36 * kc * NR
    for task in prange(G * chunks * runs):
        g = task // (chunks * runs)
        k0 = task % chunks * kc
        panel0 = task // chunks % runs * PANELS_MAX
        rows = min(kc, Kg - k0)
        Kc = (rows + MR - 1) // MR * MR  # U rows, zero past ``rows``
        start = numba.get_thread_id() * (per_weights + per_lines + per_u + per_m)
        weights = work[start : start + 9 * Kc * Cg]
        lines = work[start + per_weights : start + per_weights + 3 * Kc * Cg]
        u = work[start + per_weights + per_lines : start + per_weights + per_lines + Kc * Cg]
        M = work[start + per_weights + per_lines + per_u :][:per_m]
        out = numba.carray(_stack_like(_OUTPUTS, y), _OUTPUTS)
        interleaved = numba.carray(_stack_like(_OUTPUTS, y), _OUTPUTS)
        _gather_weights(weight, g * Kg + k0, rows, Kc, Cg, weights)
        count = min(PANELS_MAX, panels - panel0)
        size = Kc * Cg
        for e1 in range(6):
            _filter_lines(weights, size, e1, lines)
            for e2 in range(6):
                _u_row(lines, size, e2, u)  # u[c*Kc + kk] = (G w G^T)[e1, e2] = U[xi][kk, c]
                xi = e1 * 6 + e2
                for p in range(count):
                    b0 = ((panel0 + p) * 36 + xi) * C * NR + g * Cg * NR
                    for i0 in range(0, Kc, MR):
                        c0 = ((p * 36 + xi) * Kc + i0) * NR
                        _micro_kernel(Cg, u, i0, Kc, V, b0, M, c0)
        for p in range(count):
            first = (panel0 + p) * NR
            for kk in range(rows):
                k = g * Kg + k0 + kk
                finite = _output_tiles(M, p * 36 * Kc * NR, Kc, kk, bias[k], out)
                # Interleave: interleaved[a, 4*j + b] = out[a*4 + b, j] (output row a of every
                # tile, in the order of y's columns), then copy each run of tiles of a tile row.
                for a in range(4):
                    line = interleaved[4 * NR * a : 4 * NR * (a + 1)]
                    o0 = out[4 * NR * a : 4 * NR * a + NR]
                    o1 = out[4 * NR * a + NR : 4 * NR * a + 2 * NR]
                    o2 = out[4 * NR * a + 2 * NR : 4 * NR * a + 3 * NR]
                    o3 = out[4 * NR * a + 3 * NR : 4 * NR * a + 4 * NR]
                    for j in range(NR):
                        line[4 * j] = o0[j]
                        line[4 * j + 1] = o1[j]
                        line[4 * j + 2] = o2[j]
                        line[4 * j + 3] = o3[j]
                tile = first
                while tile < min(first + NR, total):
                    n, rest = tile // (tiles_h * tiles_w), tile % (tiles_h * tiles_w)
                    ti, tj = rest // tiles_w, rest % tiles_w
                    run = min(tiles_w - tj, first + NR - tile, total - tile)
                    j0 = tile - first
                    count = min(4 * run, Q - 4 * tj)  # y columns of the run
                    for a in range(min(4, P - 4 * ti)):
                        row = ((n * K + k) * P + 4 * ti + a) * Q + 4 * tj
                        target = y[row : row + count]
                        source = interleaved[4 * NR * a + 4 * j0 :][:count]
                        for t in range(count):
                            target[t] = source[t]
                    if not finite:
                        for t in range(run):
                            _recompute_tile(
                                out, j0 + t, x, weight, bias, y, n, k, ti, tj + t, C, H, W, K,
                                Kg, P, Q, pad_h, pad_w,
                            )  # fmt: skip
                    tile += run


@jit(parallel=True)
def _multiply_few(
    V, x, weight, bias, y, N, C, H, W, K, G, P, Q, pad_h, pad_w, tiles_h, tiles_w, work
):
    """:func:`_multiply_and_store` for at most FEW_TILES tiles (one panel), the GEMMs
    transposed: M[xi]^T (tiles x NR channels) = V[xi]^T @ U[xi]^T, so the micro-kernel's
    MR rows are tiles (rounded up to MR, not to a panel of NR) and its NR columns output
    channels; the output transform runs across channels. One task per (group, NR output
    channels); ``work`` holds :func:`_work_size` (NR, Cg) elements per thread."""
    Cg, Kg = C // G, K // G
    chunks = (Kg + NR - 1) // NR
    total = N * tiles_h * tiles_w
    rows_t = (total + MR - 1) // MR * MR  # tiles, rounded up to MR (V is 0 past total)
    size = NR * Cg
    per_thread = _work_size(NR, Cg)
    for task in prange(G * chunks):
        g, k0 = task // chunks, task % chunks * NR
        rows = min(NR, Kg - k0)
        start = numba.get_thread_id() * per_thread
        weights = work[start : start + 9 * size]
        lines = work[start + 9 * size : start + 12 * size]
        u = work[start + 12 * size : start + 13 * size]
        M = work[start + 13 * size : start + 13 * size + 36 * rows_t * NR]
        out = numba.carray(_stack_like(_OUTPUTS, y), _OUTPUTS)
        _gather_weights(weight, g * Kg + k0, rows, NR, Cg, weights)
        for e1 in range(6):
            _filter_lines(weights, size, e1, lines)
            for e2 in range(6):
                _u_row(lines, size, e2, u)  # u[c*NR + kk] = U[xi][kk, c]: row c of U[xi]^T
                xi = e1 * 6 + e2
                for i0 in range(0, rows_t, MR):
                    # rows i of A = V[xi]^T: a[c*NR + i0 + i] = V[0, xi, g*Cg + c, i0 + i]
                    a0 = (xi * C + g * Cg) * NR + i0
                    _micro_kernel(Cg, V, a0, NR, u, 0, M, (xi * rows_t + i0) * NR)
        zero = y.dtype.type(0)
        for tile in range(total):
            n, rest = tile // (tiles_h * tiles_w), tile % (tiles_h * tiles_w)
            ti, tj = rest // tiles_w, rest % tiles_w
            # out[a*4 + b, kk] for the NR channels: M[xi, tile, kk] is "row tile of Kc = rows_t"
            finite = _output_tiles(M, 0, rows_t, tile, zero, out)
            for a in range(min(4, P - 4 * ti)):
                for b in range(min(4, Q - 4 * tj)):
                    first = ((n * K + g * Kg + k0) * P + 4 * ti + a) * Q + 4 * tj + b
                    column = out[(a * 4 + b) * NR : (a * 4 + b) * NR + rows]
                    channel_bias = bias[g * Kg + k0 : g * Kg + k0 + rows]
                    for kk in range(rows):
                        y[first + kk * P * Q] = column[kk] + channel_bias[kk]
            if not finite:
                for kk in range(rows):
                    _recompute_tile(
                        out, kk, x, weight, bias, y, n, g * Kg + k0 + kk, ti, tj, C, H, W, K,
                        Kg, P, Q, pad_h, pad_w,
                    )  # fmt: skip


@jit
def _work_size(kc, Cg):
    """Per-thread workspace of :func:`_multiply_and_store`: weights, G w rows, U[xi],
    M for PANELS_MAX panels."""
    return 9 * kc * Cg + 3 * kc * Cg + kc * Cg + PANELS_MAX * 36 * kc * NR


_census.declare("numba", "winograd.forward.few_tiles", "winograd.forward.panels")


def is_winograd_shape(g: ConvGeometry) -> bool:
    """3x3, stride 1, dilation 1: the shape F(4x4, 3x3) computes."""
    return (g.R, g.S, g.stride_h, g.stride_w, g.dilation_h, g.dilation_w) == (3, 3, 1, 1, 1, 1)


def takes(g: ConvGeometry, direction: str) -> bool:
    """The forward pass and the input gradient (a forward on the transposed geometry, also
    3x3 stride 1) of a 3x3 stride-1 convolution; no weight gradient of its own."""
    return direction != "weight_gradient" and is_winograd_shape(g)


def pays(g: ConvGeometry) -> bool:
    """Measured (2 threads, float32, forward) 390-600 GFLOP/s-equivalent on the ResNet-50
    and VGG 3x3 layers against 250-300 for direct, 1.4-2x faster down to 3 input channels
    (VGG conv1, CIFAR) and 7x7 outputs. Dense only (groups mix tiny GEMMs), and at least
    one whole 4x4 tile per image."""
    return is_winograd_shape(g) and g.groups == 1 and min(g.P, g.Q) >= 4


def input_gradient(grad_y, weight, grad_x, g: ConvGeometry) -> None:
    transposed.input_gradient(forward, grad_y, weight, grad_x, g)


def forward(x, weight, bias, y, g: ConvGeometry) -> None:
    N, C, K, G = g.N, g.C, g.K, g.groups
    tiles_h, tiles_w = -(-g.P // 4), -(-g.Q // 4)
    panels = -(-N * tiles_h * tiles_w // NR)
    threads = numba.get_num_threads()
    V = scratch("winograd.input", panels * 36 * C * NR, x.dtype)
    work = scratch("winograd.patches", threads * _input_work(tiles_w), x.dtype)
    _input_transform(
        x.reshape(-1), N, C, g.H, g.W, g.pad_h, g.pad_w, tiles_h, tiles_w, V, work
    )  # fmt: skip
    Kg = K // G
    bias = np.zeros(K, x.dtype) if bias is None else bias
    if N * tiles_h * tiles_w <= FEW_TILES:
        _census.record("numba", "winograd.forward.few_tiles")
        work = scratch("winograd.work", threads * _work_size(NR, C // G), x.dtype)
        _multiply_few(
            V, x.reshape(-1), weight.reshape(-1), bias, y.reshape(-1), N, C, g.H, g.W, K, G,
            g.P, g.Q, g.pad_h, g.pad_w, tiles_h, tiles_w, work,
        )  # fmt: skip
        return
    _census.record("numba", "winograd.forward.panels")
    chunks = -(-Kg // KC_MAX)
    kc = -(-Kg // (chunks * MR)) * MR  # chunks of output channels as equal as MR allows
    work = scratch("winograd.work", threads * _work_size(kc, C // G), x.dtype)
    # Tasks differ in cost (the last chunk of channels, the last run of panels): hand them
    # out one at a time instead of in equal contiguous blocks per thread.
    previous = numba.set_parallel_chunksize(1)
    try:
        _multiply_and_store(
            V, x.reshape(-1), weight.reshape(-1), bias, y.reshape(-1), N, C, g.H, g.W, K, G,
            g.P, g.Q, g.pad_h, g.pad_w, tiles_h, tiles_w, kc, work,
        )  # fmt: skip
    finally:
        numba.set_parallel_chunksize(previous)
