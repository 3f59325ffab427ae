"""Convolution forward and weight gradient, any stride / padding / dilation / groups.
Algorithm: direct convolution over the phase-split input (phases.py), register-blocked
6 output channels x 64 output positions by the GEMM micro-kernel (gemm.py); no im2col.

Each task owns one image, one group and a chunk of the flat output index. For every
kernel tap t = (c, r, s) the micro-kernel reads the 64 positions as one contiguous
shifted row of the phase buffer, so bounds and padding never reach the inner loop.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from numba import prange

from fastcnn import _census
from fastcnn._shapes import ConvGeometry
from fastcnn.backends.numba import pointwise, transposed
from fastcnn.backends.numba._setup import jit
from fastcnn.backends.numba.gemm import (
    KC,
    MR,
    NR,
    _stack_like,
    lane_sum,
    micro_kernel_packed,
    multiply_rows,
    pack_groups,
    panels,
)
from fastcnn.backends.numba.phases import PhaseLayout, phase_split, tap_offsets
from fastcnn.backends.numba.workspace import scratch

#: Output positions per task: 4 micro-tiles wide; the weights of a group stay in L2.
CHUNK = 4 * NR


def pack_weights(weight, G, Kg, T, packed):
    """Each group's (Kg x T) weight matrix, packed into MR-row panels one after another."""
    pack_groups(weight, G, Kg * T, T, 1, Kg, T, packed)


@jit(parallel=True)
def _forward(
    buffer, image, group_stride, offsets, packed, G, Kg, columns, width, P, Q, init, y,
    parts, staging, tail,
):  # fmt: skip
    """y[n, g*Kg + k, p, q] = init[k] + sum_t A_g[k, t] * buffer[n*image + g*group_stride +
    offsets[t] + p*width + q]. FLOPs: 2 * N * K * P * Q * T (plus the garbage columns).

    The tasks (image, group, chunk) are split into ``parts`` contiguous ranges, one per
    thread; part i stages its tiles in ``staging[i*Kg*CHUNK:]`` when the output rows
    have garbage columns to drop. ``tail`` is never read: the buffer has a panel of slack.
    """
    T = offsets.size
    K = G * Kg
    N = y.size // (K * P * Q)
    chunks = (columns + CHUNK - 1) // CHUNK
    group = (Kg + MR - 1) // MR * T * MR
    work = N * G * chunks
    for part in prange(parts):
        out = staging[part * Kg * CHUNK : (part + 1) * Kg * CHUNK]
        for task in range(part * work // parts, (part + 1) * work // parts):
            n = task // (G * chunks)
            g = task // chunks % G
            j0 = task % chunks * CHUNK
            count = min(CHUNK, columns - j0)
            b0 = n * image + g * group_stride + j0
            y0 = (n * K + g * Kg) * P * Q
            if width == Q:  # no garbage columns: the flat index is y's own
                multiply_rows(
                    packed, g * group, Kg, T, buffer, offsets, b0, count, CHUNK + NR,
                    y, y0 + j0, P * Q, init, g * Kg, False, tail,
                )  # fmt: skip
                continue
            multiply_rows(
                packed, g * group, Kg, T, buffer, offsets, b0, count, CHUNK + NR,
                out, 0, CHUNK, init, g * Kg, False, tail,
            )  # fmt: skip
            for p in range(j0 // width, min((j0 + count - 1) // width + 1, P)):
                q_lo = max(0, j0 - p * width)
                q_hi = min(Q, j0 + count - p * width)
                if q_hi <= q_lo:
                    # The chunk starts in row p's garbage columns: nothing of row p. (The
                    # slice bounds below would go negative for k = 0 and wrap around.)
                    continue
                for k in range(Kg):
                    source = k * CHUNK + p * width - j0
                    target = y0 + k * P * Q + p * Q
                    # A slice copy: indexing y[target + q] copies one scalar at a time.
                    y[target + q_lo : target + q_hi] = out[source + q_lo : source + q_hi]


@jit
def _pack_gradient_rows(gy, K, PQ, g, Kg, r0, kc, packed):
    """packed[pk, r, i] = grad_y[n, g*Kg + pk*MR + i, pq] for r0 + r = n*PQ + pq, r < kc:
    A of the weight gradient in MR-row panels ``kc`` deep (rows past Kg are zero)."""
    for pk in range((Kg + MR - 1) // MR):
        base = pk * kc * MR
        for i in range(MR):
            k = pk * MR + i
            if k >= Kg:
                for r in range(kc):
                    packed[base + r * MR + i] = 0
                continue
            r = 0
            while r < kc:
                n, pq = (r0 + r) // PQ, (r0 + r) % PQ
                run = min(kc - r, PQ - pq)
                source = (n * K + g * Kg + k) * PQ + pq
                for u in range(run):
                    packed[base + (r + u) * MR + i] = gy[source + u]
                r += run


@jit
def _pack_taps(buffer, image, group_base, offsets, t0, Q, PQ, width, r0, kc, packed):
    """packed[r, j] = buffer[n*image + group_base + offsets[t0 + j] + p*width + q] for the
    reduction index r0 + r = n*PQ + p*Q + q: B of the weight gradient, one NR-wide panel
    of taps, kc rows (taps past the last are zero)."""
    T = offsets.size
    for j in range(NR):
        t = t0 + j
        if t >= T:
            for r in range(kc):
                packed[r * NR + j] = 0
            continue
        r = 0
        while r < kc:
            n, pq = (r0 + r) // PQ, (r0 + r) % PQ
            p, q = pq // Q, pq % Q
            run = min(kc - r, Q - q)
            source = n * image + group_base + offsets[t] + p * width + q
            for u in range(run):
                packed[(r + u) * NR + j] = buffer[source + u]
            r += run


@jit(parallel=True)
def _packed_weight_gradient(
    buffer, image, group_stride, offsets, gy, N, G, Kg, P, Q, width, parts, split_outputs,
    a_scratch, b_scratch, zero, partial, grad_weight,
):  # fmt: skip
    """grad_weight[g*Kg + k, t] = sum over (n, p, q) of grad_y[n, g*Kg + k, p, q] *
    buffer[n*image + g*group_stride + offsets[t] + p*width + q]. FLOPs: 2 * N * K * T * P * Q.

    A GEMM (K x T) over the reduction index r = n*P*Q + p*Q + q, in blocks of KC: A = grad_y
    rows, B = the shifted input rows, both packed per block straight from their sources.
    With ``split_outputs`` each of the ``parts`` threads owns a range of the NR-wide
    column panels of grad_weight and runs the whole reduction (no partial sums); otherwise
    each owns a range of reduction blocks, sums into ``partial[part]`` (K*T each) and
    the caller adds the parts. ``a_scratch`` holds ``panels(Kg) * KC * MR`` and
    ``b_scratch`` ``KC * NR`` elements per part; ``zero`` is Kg zeros.
    """
    T = offsets.size
    K = G * Kg
    PQ = P * Q
    L = N * PQ
    blocks = (L + KC - 1) // KC
    panels_t = (T + NR - 1) // NR
    panels_k = (Kg + MR - 1) // MR
    a_size = panels_k * KC * MR
    for part in prange(parts):
        a = a_scratch[part * a_size : (part + 1) * a_size]
        b = b_scratch[part * KC * NR : (part + 1) * KC * NR]
        if split_outputs:
            work = G * panels_t
            lo, hi = part * work // parts, (part + 1) * work // parts
            target, t_base = grad_weight, 0
            g_lo, g_hi, b_lo, b_hi = lo // panels_t, (hi + panels_t - 1) // panels_t, 0, blocks
        else:
            work = G * blocks
            lo, hi = part * work // parts, (part + 1) * work // parts
            target, t_base = partial, part * K * T
            g_lo, g_hi, b_lo, b_hi = 0, G, 0, 0
            for e in range(K * T):  # a part may see only some groups, or none
                partial[t_base + e] = 0
        for g in range(g_lo, g_hi):
            if split_outputs:
                first_panel = max(lo - g * panels_t, 0)
                last_panel = min(hi - g * panels_t, panels_t)
            else:
                first_panel, last_panel = 0, panels_t
                b_lo = max(lo - g * blocks, 0)
                b_hi = min(hi - g * blocks, blocks)
            for block in range(b_lo, b_hi):
                r0 = block * KC
                kc = min(KC, L - r0)
                first = split_outputs and block == 0
                _pack_gradient_rows(gy, K, PQ, g, Kg, r0, kc, a)
                for pt in range(first_panel, last_panel):
                    _pack_taps(
                        buffer, image, g * group_stride, offsets, pt * NR, Q, PQ, width,
                        r0, kc, b,
                    )  # fmt: skip
                    for pk in range(panels_k):
                        micro_kernel_packed(
                            kc, a, pk * kc * MR, b, 0, target,
                            t_base + (g * Kg + pk * MR) * T + pt * NR, T,
                            min(MR, Kg - pk * MR), min(NR, T - pt * NR), first, zero, 0,
                        )  # fmt: skip


@jit(parallel=True)
def _sum_parts(partial, parts, out):
    """out[e] = sum over parts of partial[part*out.size + e]."""
    size = out.size
    for e in prange(size):
        total = partial[e]
        for part in range(1, parts):
            total += partial[part * size + e]
        out[e] = total


#: The unpacked weight-gradient kernel: a ROWS x TAPS block of grad_weight, LANES
#: positions of the reduction per step (24 zmm accumulators in float32, 3 tap rows and
#: one row of grad_y: 28 registers). The rows of grad_y stay in L1 across the blocks of
#: taps, whose rows stream from L2: 8 x 3 moves a quarter less from L2 per FMA than
#: 6 x 4, and measured 3-8% faster.
ROWS = 8
TAPS = 3
LANES = 16
#: Reduction positions per pass over grad_weight: 8 rows of 1024 (32 KB) stay in L1.
DEPTH = 1024
_BLOCK = ROWS * TAPS * LANES
_ZERO = np.uint64(0)
_LANES = np.uint64(LANES)


@jit(inline="always")
def _unsigned(value):
    return np.uint64(value)


@jit(parallel=True)
def _pad_gradient_rows(gy, N, K, P, Q, width, rows, length, out):
    """out[(k*N + n)*length + p*width + q] = grad_y[n, k, p, q], zero at the garbage
    columns q >= Q, past P*width and for k >= K: grad_y in the phase buffer's row pitch,
    each channel's images one after another."""
    for task in prange(N * rows):
        k, n = task // N, task % N
        base = task * length
        if k >= K:
            for r in range(length):
                out[base + r] = 0
            continue
        for p in range(P):
            source = gy[((n * K + k) * P + p) * Q : ((n * K + k) * P + p + 1) * Q]
            target = out[base + p * width : base + (p + 1) * width]
            for q in range(Q):
                target[q] = source[q]
            for q in range(Q, width):
                target[q] = 0
        for r in range(P * width, length):
            out[base + r] = 0


@jit(inline="always")
def _gradient_block(
    gyp, a_row, a_image, buffer, image, offsets, k0, t0, n0, n1, r_lo, r_hi, grad_weight,
    K, T, first,
):  # fmt: skip
    # grad_weight[k0 + i, t0 + j] (=, or += unless first) sum over images n0..n1 and
    # positions r_lo..r_hi of gyp[(k0 + i)*a_row + n*a_image + r] *
    # buffer[n*image + offsets[t0 + j] + r]. Rows and taps past the last repeat it.
    acc = numba.carray(_stack_like(_BLOCK, gyp), _BLOCK)
    for e in range(_BLOCK):
        acc[e] = 0
    o0 = offsets[min(t0, T - 1)]
    o1 = offsets[min(t0 + 1, T - 1)]
    o2 = offsets[min(t0 + 2, T - 1)]
    # Slices made once per block and unsigned indices into them: the loop carries no
    # wraparound or clamping arithmetic (a signed index would turn loads into gathers).
    a0 = gyp[min(k0 + 0, K - 1) * a_row :]
    a1 = gyp[min(k0 + 1, K - 1) * a_row :]
    a2 = gyp[min(k0 + 2, K - 1) * a_row :]
    a3 = gyp[min(k0 + 3, K - 1) * a_row :]
    a4 = gyp[min(k0 + 4, K - 1) * a_row :]
    a5 = gyp[min(k0 + 5, K - 1) * a_row :]
    a6 = gyp[min(k0 + 6, K - 1) * a_row :]
    a7 = gyp[min(k0 + 7, K - 1) * a_row :]
    b0 = buffer[o0:]
    b1 = buffer[o1:]
    b2 = buffer[o2:]
    count = _unsigned(r_hi - r_lo)
    for n in range(n0, n1):
        a = _unsigned(n * a_image + r_lo)
        b = _unsigned(n * image + r_lo)
        for u in range(_ZERO, count, _LANES):
            for lane in range(_LANES):
                e = b + u + lane
                x0 = b0[e]
                x1 = b1[e]
                x2 = b2[e]
                e = a + u + lane
                v = a0[e]
                acc[0 + lane] += v * x0
                acc[16 + lane] += v * x1
                acc[32 + lane] += v * x2
                v = a1[e]
                acc[48 + lane] += v * x0
                acc[64 + lane] += v * x1
                acc[80 + lane] += v * x2
                v = a2[e]
                acc[96 + lane] += v * x0
                acc[112 + lane] += v * x1
                acc[128 + lane] += v * x2
                v = a3[e]
                acc[144 + lane] += v * x0
                acc[160 + lane] += v * x1
                acc[176 + lane] += v * x2
                v = a4[e]
                acc[192 + lane] += v * x0
                acc[208 + lane] += v * x1
                acc[224 + lane] += v * x2
                v = a5[e]
                acc[240 + lane] += v * x0
                acc[256 + lane] += v * x1
                acc[272 + lane] += v * x2
                v = a6[e]
                acc[288 + lane] += v * x0
                acc[304 + lane] += v * x1
                acc[320 + lane] += v * x2
                v = a7[e]
                acc[336 + lane] += v * x0
                acc[352 + lane] += v * x1
                acc[368 + lane] += v * x2
    for i in range(min(ROWS, K - k0)):
        for j in range(min(TAPS, T - t0)):
            total = lane_sum(acc, (i * TAPS + j) * LANES)
            target = (k0 + i) * T + t0 + j
            if first:
                grad_weight[target] = total
            else:
                grad_weight[target] += total


@jit(parallel=True)
def _padded_weight_gradient(
    buffer, image, offsets, gyp, a_row, a_image, length, N, K, parts, grad_weight
):
    """grad_weight[k, t] = sum over n and r < length of gyp[k*a_row + n*a_image + r] *
    buffer[n*image + offsets[t] + r] (one group): the weight gradient with grad_y padded by
    :func:`_pad_gradient_rows` (a_row = N*length, a_image = length), or grad_y itself when
    its planes have no garbage columns and a whole number of LANES (a 1x1 convolution),
    so the shifted input rows are read in place, unpacked. FLOPs: 2 * K * T * N * length.

    A garbage column multiplies a zero of grad_y, so it adds exactly 0 unless the input
    there is inf or NaN: the caller recomputes when the result holds a NaN. Each thread
    owns a range of TAPS-wide column blocks; the reduction runs in passes of about DEPTH
    positions (several small images, or part of a large one).
    """
    T = offsets.size
    blocks_t = (T + TAPS - 1) // TAPS
    blocks_k = (K + ROWS - 1) // ROWS
    per_image = max(1, DEPTH // length)
    pieces = (length + DEPTH - 1) // DEPTH if per_image == 1 else 1
    step = (length // LANES + pieces - 1) // pieces * LANES
    for part in prange(parts):
        lo, hi = part * blocks_t // parts, (part + 1) * blocks_t // parts
        first = True
        for n0 in range(0, N, per_image):
            n1 = min(N, n0 + per_image)
            for r_lo in range(0, length, step):
                r_hi = min(length, r_lo + step)
                for bk in range(blocks_k):
                    for bt in range(lo, hi):
                        _gradient_block(
                            gyp, a_row, a_image, buffer, image, offsets, bk * ROWS, bt * TAPS,
                            n0, n1, r_lo, r_hi, grad_weight, K, T, first,
                        )  # fmt: skip
                first = False


# ---------------------------------------------------------------------------- drivers

_census.declare(
    "numba",
    "direct.forward",
    "direct.forward.staged_rows",
    "direct.weight_gradient.unpacked_in_place",
    "direct.weight_gradient.unpacked",
    "direct.weight_gradient.unpacked_nonfinite_retry",
    "direct.weight_gradient.packed",
    "direct.weight_gradient.packed_split_outputs",
)


#: Every forward pass and weight gradient; the input gradient of stride 1 only.
takes = transposed.takes_by_forward


def _init(bias, K: int, dtype) -> np.ndarray:
    return scratch("conv2d.zero_bias", K, dtype, zeroed=True) if bias is None else bias


def forward(x, weight, bias, y, g: ConvGeometry) -> None:
    layout = PhaseLayout(g)
    # Rows with garbage columns are staged per chunk and copied out without them.
    _census.record(
        "numba", "direct.forward" if layout.width == g.Q else "direct.forward.staged_rows"
    )
    buffer = phase_split(x, g, layout)
    G, Kg = g.groups, g.K // g.groups
    T = g.C // G * g.R * g.S
    packed = scratch("conv2d.packed_weights", G * panels(Kg) * T * MR, x.dtype)
    pack_weights(weight.reshape(-1), G, Kg, T, packed)
    parts = numba.get_num_threads()
    staging = scratch("conv2d.staging", parts * Kg * CHUNK, x.dtype)
    _forward(
        buffer, layout.image, g.C // G * layout.channel, tap_offsets(g), packed,
        G, Kg, layout.columns, layout.width, g.P, g.Q, _init(bias, g.K, x.dtype), y.reshape(-1),
        parts, staging, staging[:1],
    )  # fmt: skip


def input_gradient(grad_y, weight, grad_x, g: ConvGeometry) -> None:
    transposed.input_gradient(forward, grad_y, weight, grad_x, g)


@functools.lru_cache(maxsize=256)
def _channel_offsets(C: int, plane: int) -> np.ndarray:
    """c * plane for each channel: where each channel starts in one image (read-only)."""
    offsets = np.arange(C, dtype=np.int64) * plane
    offsets.flags.writeable = False
    return offsets


#: Above this many weight-gradient elements, the threads split the output instead of the
#: reduction: per-thread partial sums would cost more than an uneven split.
SPLIT_OUTPUTS = 1 << 18
#: From this many flat output positions over the batch (garbage columns included) the
#: weight gradient reads the input unpacked (:func:`_padded_weight_gradient`): its sums
#: then run long enough between lane sums. Measured (2 threads, float32) 1.2x faster at
#: 14x14 x 8 images (1792 positions) and 2x at LeNet's 8x8 x 256; the packed GEMM
#: (:func:`packed_weight_gradient`) 1.2-1.4x faster at 7x7 x 8 (504) and 14x14 x 1 (224).
UNPACKED_POSITIONS = 1024


def weight_gradient(grad_y, x, grad_weight, g: ConvGeometry) -> None:
    """The unpacked kernel over many positions of one group, else the packed GEMM."""
    layout = PhaseLayout(g)
    parts = numba.get_num_threads()
    target = grad_weight.reshape(-1)
    if g.groups > 1 or g.N * layout.columns < UNPACKED_POSITIONS:
        packed_weight_gradient(grad_y, x, grad_weight, g)
        return
    PQ = g.P * g.Q
    in_place = pointwise.is_pointwise(g) or pointwise.is_strided_pointwise(g)
    if PQ % LANES == 0 and in_place:
        # x (or, strided, the inputs the forward read, gathered) and grad_y read as they
        # are: their planes end on a lane, so no garbage columns.
        _census.record("numba", "direct.weight_gradient.unpacked_in_place")
        source = x.reshape(-1)
        if not pointwise.is_pointwise(g):
            source = scratch("conv2d.subsampled", g.N * g.C * PQ, x.dtype)
            pointwise.subsample(
                x.reshape(-1), g.N, g.C, g.H, g.W, g.P, g.Q, g.stride_h, g.stride_w, source
            )
        _padded_weight_gradient(
            source, g.C * PQ, _channel_offsets(g.C, PQ), grad_y.reshape(-1), PQ, g.K * PQ, PQ,
            g.N, g.K, parts, target,
        )  # fmt: skip
        return
    # grad_y copied into the phase buffer's row pitch (zero garbage columns), then a
    # GEMM that reads the shifted input rows in place: no transposing pack of x.
    _census.record("numba", "direct.weight_gradient.unpacked")
    buffer = phase_split(x, g, layout)
    rows = panels(g.K) * MR
    length = -(-layout.columns // LANES) * LANES
    padded = scratch("conv2d.padded_gradient", g.N * rows * length, x.dtype)
    _pad_gradient_rows(grad_y.reshape(-1), g.N, g.K, g.P, g.Q, layout.width, rows, length, padded)
    _padded_weight_gradient(
        buffer, layout.image, tap_offsets(g), padded, g.N * length, length, length,
        g.N, g.K, parts, target,
    )  # fmt: skip
    redo_if_nan(
        grad_y, x, grad_weight, g, "direct.weight_gradient.unpacked_nonfinite_retry", buffer
    )


def redo_if_nan(grad_y, x, grad_weight, g: ConvGeometry, path: str, buffer=None) -> None:
    """For weight-gradient kernels that sum over garbage columns (grad_y zero there, x
    whatever the row holds): 0 x inf is NaN where the true sum may be finite or +-inf.
    A NaN in the result is then recomputed by the packed GEMM, which reads only the
    real positions (and gives NaN again where x really makes one)."""
    if np.isnan(grad_weight).any():
        _census.record("numba", path)
        packed_weight_gradient(grad_y, x, grad_weight, g, buffer)


def packed_weight_gradient(grad_y, x, grad_weight, g: ConvGeometry, buffer=None) -> None:
    """grad_weight as a GEMM (K x taps) over the N*P*Q positions, both operands packed
    per block from grad_y and the phase-split x (im2col's columns, made block by block).
    ``buffer``: x already phase-split by the caller."""
    layout = PhaseLayout(g)
    if buffer is None:
        buffer = phase_split(x, g, layout)
    parts = numba.get_num_threads()
    G, Kg, T = g.groups, g.K // g.groups, g.C // g.groups * g.R * g.S
    split_outputs = g.K * T >= SPLIT_OUTPUTS or parts == 1
    _census.record(
        "numba",
        "direct.weight_gradient.packed_split_outputs" if split_outputs
        else "direct.weight_gradient.packed",
    )  # fmt: skip
    dtype = x.dtype
    target = grad_weight.reshape(-1)
    partial = scratch("conv2d.partial", 1 if split_outputs else parts * g.K * T, dtype)
    _packed_weight_gradient(
        buffer, layout.image, g.C // G * layout.channel, tap_offsets(g), grad_y.reshape(-1),
        g.N, G, Kg, g.P, g.Q, layout.width, parts, split_outputs,
        scratch("conv2d.gradient_rows", parts * panels(Kg) * KC * MR, dtype),
        scratch("conv2d.gradient_taps", parts * KC * NR, dtype),
        scratch("conv2d.zero_rows", Kg, dtype, zeroed=True), partial, target,
    )  # fmt: skip
    if not split_outputs:
        _sum_parts(partial, parts, target)
