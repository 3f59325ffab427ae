"""Convolution with few channels per group (LeNet, CIFAR stems, depthwise): forward,
input gradient and weight gradient. Algorithm: direct, over input rows staged in L1.

Per task (one image, one group, one block of output rows) the input rows the block
needs are copied into a small buffer, zero-padded and split into stride phases (as in
phases.py, but only for these rows), so every tap (c, r, s) reads one contiguous run:
output position j = i * width + q of the block reads ``stage[offsets[t] + j]``. No
padded copy of x is made and no tap tests bounds. Columns q >= Q of each row are
computed and dropped ("garbage", (S-1)*dilation/stride of them per row).

The forward pass accumulates 2 output channels x 4 taps per sweep over the block
(4 loads of the stage, 2 loads and 2 stores of the accumulators for 8 vector FMAs),
the accumulators of one channel pair stay in L1, and each output is written once.
Taps are padded to a multiple of 4 with zero taps that read a zeroed region.
Traffic: x read ~once (plus the halo rows of each block), y written once.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from numba import prange

from fastcnn import _census
from fastcnn._shapes import ConvGeometry
from fastcnn.backends.numba import direct, transposed
from fastcnn.backends.numba._setup import jit
from fastcnn.backends.numba.gemm import MR, NR, micro_kernel, pack_a, panels
from fastcnn.backends.numba.workspace import scratch

#: Taps per sweep over the output block.
TAPS = 4
#: Output positions (floats) per block: the stage and two accumulator rows stay in L1.
BLOCK = 1536
#: From this many output channels per group on, the forward pass runs the GEMM
#: micro-kernel (6 channels x 64 positions in registers, gemm.py) over the stage: per tap
#: 4 loads of the stage for 24 vector FMAs, where a sweep needs 4 (split) loads, 2 loads
#: and 2 stores for 8. Below, the micro-tile would be mostly empty.
MICRO_KERNEL_CHANNELS = 4


_census.declare(
    "numba",
    "small_channels.forward.sweeps",
    "small_channels.forward.tiles",
    "small_channels.forward.tiles_in_place",
    "small_channels.weight_gradient",
    "small_channels.weight_gradient.nonfinite_retry",
)


#: Every forward pass and weight gradient; the input gradient of stride 1 only.
takes = transposed.takes_by_forward


#: The most input channels per group, and taps per output, for which "auto" picks this
#: algorithm (see :func:`pays`).
PAYS_CHANNELS = 8
PAYS_TAPS = 256


def pays(g: ConvGeometry) -> bool:
    """Few input channels per group (<= 8) and few taps per output (<= 256): there the
    copies of the GEMM-based algorithms cost as much as the multiplies; above, the
    others are faster through the GEMM micro-kernel."""
    return g.C // g.groups <= PAYS_CHANNELS and g.C // g.groups * g.R * g.S <= PAYS_TAPS


def pays_weight_gradient(g: ConvGeometry) -> bool:
    """Whether this module's weight gradient beats the direct algorithm's unpacked one:
    with few output channels or few taps (LeNet c1: 6 x 25, CIFAR: 32 x 27), its sums per
    image block are all there is; from 16 output channels and 64 taps (LeNet c2, ResNet
    conv1) the direct kernel's 8 x 3 blocks summed over many images measured 1.15-2x
    faster."""
    return g.K // g.groups < 16 or g.C // g.groups * g.R * g.S < 64


class Plan:
    """The staged layout of one geometry: block height, stage shape, tap offsets."""

    def __init__(self, g: ConvGeometry, whole: bool = False):
        G = g.groups
        Cg = g.C // G
        sh, sw = g.stride_h, g.stride_w
        self.width = g.Q + (g.S - 1) * g.dilation_w // sw
        extra = (g.R - 1) * g.dilation_h // sh
        self.rows = g.P if whole else max(1, min(g.P, BLOCK // self.width))
        self.height = self.rows + extra
        self.block = self.rows * self.width
        self.stage = Cg * sh * sw * self.height * self.width
        T = Cg * g.R * g.S
        self.taps = T
        padded = -(-T // TAPS) * TAPS
        c, r, s = np.unravel_index(np.arange(T), (Cg, g.R, g.S))
        rr, ss = r * g.dilation_h, s * g.dilation_w
        offsets = np.full(padded, self.stage, np.int64)  # padding taps read the zeros
        offsets[:T] = (((c * sh + rr % sh) * sw + ss % sw) * self.height + rr // sh) * (
            self.width
        ) + ss // sw
        self.offsets = offsets
        # Without padding and with stride 1 the stage is x's rows themselves: the taps
        # read x in place (plane H*W apart), see _forward_tiles.
        # Every padding side counts: "same" with an even kernel pads only the bottom/right,
        # and in place the last rows would read the next plane instead of zeros.
        self.in_place = (g.pad_h, g.pad_w, g.pad_bottom, g.pad_right) == (0, 0, 0, 0) and (
            sh == sw == 1
        )
        self.x_offsets = ((c * g.H + rr) * g.W + ss).astype(np.int64)


@functools.lru_cache(maxsize=128)
def plan(g: ConvGeometry, whole: bool = False) -> Plan:
    return Plan(g, whole)


def packed_weights(weight, g: ConvGeometry, p: Plan, transposed: bool = False) -> np.ndarray:
    """(K, taps padded to TAPS) in a scratch array, zero in the padding taps.
    ``transposed``: the weight of the input gradient, w'[g, c, k, R-1-r, S-1-s]."""
    G, padded = g.groups, p.offsets.size
    rows = g.K
    packed = scratch("small_channels.weights", rows * padded, weight.dtype).reshape(rows, padded)
    packed[:, p.taps :] = 0
    if transposed:  # g here is the transposed geometry: K = C of the forward
        Kf, Cf = weight.shape[0], weight.shape[1] * G
        view = weight.reshape(G, Kf // G, Cf // G, g.R, g.S)[:, :, :, ::-1, ::-1]
        target = packed[:, : p.taps].reshape(G, Cf // G, Kf // G, g.R, g.S)
        np.copyto(target, view.transpose(0, 2, 1, 3, 4))
    else:
        packed[:, : p.taps] = weight.reshape(rows, p.taps)
    return packed.reshape(-1)


@jit
def _part_size(stage_size, J):
    """Scratch per thread: the stage, its zeroed tail (J + NR: padding taps and the
    reads past the last row land there) and the accumulators (two rows or one tile)."""
    return stage_size + J + NR + max(2 * J, MR * NR)


@jit
def _deinterleave(row, pw, width, stage, base, plane):
    """Stride 2: stage[base + b*plane + j] = row[2j + b - pw] (0 outside), both column
    phases from one contiguous read of the row (LLVM vectorises it with shuffles)."""
    W = row.size
    lo = min((pw + 1) // 2, width)  # 2j - pw >= 0
    hi = max(min(width, (W - 2 + pw) // 2 + 1), lo)  # 2j + 1 - pw <= W - 1
    for j in range(lo):  # the columns outside [lo, hi): at most the padding
        for b in range(2):
            v = 2 * j + b - pw
            stage[base + b * plane + j] = row[v] if 0 <= v < W else 0
    for j in range(hi, width):
        for b in range(2):
            v = 2 * j + b - pw
            stage[base + b * plane + j] = row[v] if 0 <= v < W else 0
    if hi > lo:
        even = stage[base + lo : base + hi]
        odd = stage[base + plane + lo : base + plane + hi]
        pairs = row[2 * lo - pw :]
        for j in range(hi - lo):
            even[j] = pairs[2 * j]
            odd[j] = pairs[2 * j + 1]


@jit(inline="always")
def _copy(source, target, count):
    """target[:count] = source[:count] as an element loop over views: a slice assignment
    checks for overlap on every call, which cost 40% of LeNet c1's forward pass in the
    short row copies here."""
    values, destination = source[:count], target[:count]
    for j in range(count):
        destination[j] = values[j]


@jit
def _stage(x, source, Cg, H, W, p0, sh, sw, ph, pw, height, width, stage):
    """stage[((c*sh + a)*sw + b)*height*width + i*width + j] =
    x[source + c*H*W + h*W + v], h = (p0 + i)*sh + a - ph, v = j*sw + b - pw, 0 outside."""
    plane = height * width
    for c in range(Cg):
        for a in range(sh):
            for i in range(height):
                h = (p0 + i) * sh + a - ph
                if sw == 1:  # unsigned indices, no views (see _forward_tiles' copy-out)
                    o = np.uint64((c * sh + a) * plane + i * width)
                    inside = 0 <= h < H
                    # pw < 0 (the transposed geometry of an input gradient crops): column j
                    # reads x column j - pw, so the first j_lo = clamp(pw, 0, width) are zero.
                    j_lo = min(max(pw, 0), width) if inside else width
                    j_hi = max(min(width, W + pw), j_lo) if inside else width
                    for j in range(np.uint64(j_lo)):
                        stage[o + j] = 0
                    o_in = o + np.uint64(j_lo)
                    first = np.uint64(source + (c * H + h) * W + j_lo - pw) if inside else o
                    for j in range(np.uint64(j_hi - j_lo)):
                        stage[o_in + j] = x[first + j]
                    o_hi = o + np.uint64(j_hi)
                    for j in range(np.uint64(width - j_hi)):
                        stage[o_hi + j] = 0
                    continue
                if sw == 2 and 0 <= h < H:
                    base = ((c * sh + a) * sw) * plane + i * width
                    _deinterleave(x[source + (c * H + h) * W :][:W], pw, width, stage, base, plane)
                    continue
                for b in range(sw):
                    out = stage[((c * sh + a) * sw + b) * plane + i * width :][:width]
                    if h < 0 or h >= H:
                        out[:] = 0
                        continue
                    shift = b - pw  # v = j*sw + shift
                    j_lo = min(max(0, (-shift + sw - 1) // sw), width)
                    j_hi = max(min(width, (W - 1 - shift) // sw + 1), j_lo)
                    row = x[source + (c * H + h) * W :][:W]
                    out[:j_lo] = 0
                    if sw == 1:  # element loop: see _copy
                        _copy(row[j_lo + shift :], out[j_lo:], j_hi - j_lo)
                    else:  # a slice from the first column read: no negative indices
                        first = row[j_lo * sw + shift :]
                        for j in range(j_hi - j_lo):
                            out[j_lo + j] = first[j * sw]
                    out[j_hi:] = 0


@jit
def _sweep_pair(stage, offsets, w, w0, w1, bias0, bias1, acc0, acc1, J):
    """acc0 = bias0 + sum_t w[w0 + t] * stage[offsets[t] + j]; acc1 likewise."""
    for t in range(0, offsets.size, TAPS):
        o0, o1, o2, o3 = offsets[t], offsets[t + 1], offsets[t + 2], offsets[t + 3]
        a0, a1, a2, a3 = w[w0 + t], w[w0 + t + 1], w[w0 + t + 2], w[w0 + t + 3]
        b0, b1, b2, b3 = w[w1 + t], w[w1 + t + 1], w[w1 + t + 2], w[w1 + t + 3]
        s0, s1, s2, s3 = stage[o0:][:J], stage[o1:][:J], stage[o2:][:J], stage[o3:][:J]
        if t == 0:
            for j in range(J):
                acc0[j] = bias0 + a0 * s0[j] + a1 * s1[j] + a2 * s2[j] + a3 * s3[j]
                acc1[j] = bias1 + b0 * s0[j] + b1 * s1[j] + b2 * s2[j] + b3 * s3[j]
        else:
            for j in range(J):
                acc0[j] += a0 * s0[j] + a1 * s1[j] + a2 * s2[j] + a3 * s3[j]
                acc1[j] += b0 * s0[j] + b1 * s1[j] + b2 * s2[j] + b3 * s3[j]


@jit
def _sweep_one(stage, offsets, w, w0, bias0, acc0, J):
    for t in range(0, offsets.size, TAPS):
        o0, o1, o2, o3 = offsets[t], offsets[t + 1], offsets[t + 2], offsets[t + 3]
        a0, a1, a2, a3 = w[w0 + t], w[w0 + t + 1], w[w0 + t + 2], w[w0 + t + 3]
        s0, s1, s2, s3 = stage[o0:][:J], stage[o1:][:J], stage[o2:][:J], stage[o3:][:J]
        if t == 0:
            for j in range(J):
                acc0[j] = bias0 + a0 * s0[j] + a1 * s1[j] + a2 * s2[j] + a3 * s3[j]
        else:
            for j in range(J):
                acc0[j] += a0 * s0[j] + a1 * s1[j] + a2 * s2[j] + a3 * s3[j]


@jit
def _write_rows(acc, y, target, rows, width, Q):
    for i in range(rows):
        _copy(acc[i * width :], y[target + i * Q :], Q)


@jit(parallel=True)
def _forward(x, w, offsets, bias, y, N, C, H, W, K, G, P, Q, sh, sw, ph, pw, plan_, work):
    rows_per, height, width, stage_size = plan_
    Cg, Kg, T4 = C // G, K // G, offsets.size
    J = rows_per * width
    blocks = (P + rows_per - 1) // rows_per
    tasks = N * G * blocks
    per = _part_size(stage_size, J)
    threads = work.size // per
    for part in prange(threads):
        stage = work[part * per : part * per + stage_size + J + NR]
        acc0 = work[part * per + stage_size + J + NR :][:J]
        acc1 = work[part * per + stage_size + 2 * J + NR :][:J]
        stage[stage_size:] = 0
        for task in range(part * tasks // threads, (part + 1) * tasks // threads):
            n, g, p0 = task // (G * blocks), task // blocks % G, task % blocks * rows_per
            rows = min(rows_per, P - p0)
            used = (rows - 1) * width + Q
            _stage(x, (n * C + g * Cg) * H * W, Cg, H, W, p0, sh, sw, ph, pw, height, width, stage)
            for k in range(g * Kg, (g + 1) * Kg - 1, 2):
                _sweep_pair(stage, offsets, w, k * T4, (k + 1) * T4, bias[k], bias[k + 1],
                            acc0, acc1, used)  # fmt: skip
                _write_rows(acc0, y, ((n * K + k) * P + p0) * Q, rows, width, Q)
                _write_rows(acc1, y, ((n * K + k + 1) * P + p0) * Q, rows, width, Q)
            if Kg % 2:
                k = (g + 1) * Kg - 1
                _sweep_one(stage, offsets, w, k * T4, bias[k], acc0, used)
                _write_rows(acc0, y, ((n * K + k) * P + p0) * Q, rows, width, Q)


@jit
def _pack_panels(w, T4, G, Kg, T, a):
    """Each group's (Kg x T) block of the padded weights, packed in MR-row panels."""
    group = (Kg + MR - 1) // MR * T * MR
    for g in range(G):
        pack_a(w, g * Kg * T4, T4, 1, Kg, T, a, g * group)


@jit(parallel=True)
def _forward_tiles(x, a, offsets, bias, y, N, C, H, W, K, G, P, Q, sh, sw, ph, pw, plan_, work,
                   x_offsets, in_place):  # fmt: skip
    """As :func:`_forward`, with the micro-kernel: per 64 positions of the block and
    6 output channels, all taps accumulate in registers, then the tile goes to y.
    ``in_place`` (no padding, stride 1): the stage's rows would be x's rows, so the taps
    read x itself (``x_offsets``); only a block whose last tile would read past the end
    of x is staged."""
    rows_per, height, width, stage_size = plan_
    Cg, Kg, T = C // G, K // G, offsets.size
    J = rows_per * width
    blocks = (P + rows_per - 1) // rows_per
    tasks = N * G * blocks
    per = _part_size(stage_size, J)
    threads = work.size // per
    group = (Kg + MR - 1) // MR * T * MR
    for part in prange(threads):
        stage = work[part * per : part * per + stage_size + J + NR]
        tile = work[part * per + stage_size + J + NR :][: MR * NR]
        stage[stage_size:] = 0
        for task in range(part * tasks // threads, (part + 1) * tasks // threads):
            n, g, p0 = task // (G * blocks), task // blocks % G, task % blocks * rows_per
            rows = min(rows_per, P - p0)
            used = (rows - 1) * width + Q
            base = (n * C + g * Cg) * H * W + p0 * W
            # The last tile reads NR columns from its start: past x's end only near it.
            direct = in_place and base + x_offsets[T - 1] + (used - 1) // NR * NR + NR <= x.size
            data, taps = (x, x_offsets) if direct else (stage, offsets)
            if not direct:
                _stage(x, (n * C + g * Cg) * H * W, Cg, H, W, p0, sh, sw, ph, pw, height, width,
                       stage)  # fmt: skip
                base = 0
            for j0 in range(0, used, NR):
                count = min(NR, used - j0)
                i_lo, i_hi = j0 // width, min((j0 + count - 1) // width + 1, rows)
                for pk in range((Kg + MR - 1) // MR):
                    m = min(MR, Kg - pk * MR)
                    micro_kernel(
                        T, a, g * group + pk * T * MR, data, taps, 0, base + j0,
                        tile, 0, NR, m, count, True, bias, g * Kg + pk * MR,
                    )  # fmt: skip
                    for i in range(i_lo, i_hi):
                        q_lo = max(0, j0 - i * width)
                        q_hi = min(Q, j0 + count - i * width)
                        if q_hi <= q_lo:
                            continue  # only garbage columns of row i in this tile
                        # Unsigned indices and no views: a view costs two atomic reference
                        # count updates, a signed index a wraparound select per element.
                        count_q = np.uint64(q_hi - q_lo)
                        for kk in range(m):
                            k = g * Kg + pk * MR + kk
                            target = np.uint64(((n * K + k) * P + p0 + i) * Q + q_lo)
                            source = np.uint64(kk * NR + i * width - j0 + q_lo)
                            for q in range(count_q):
                                y[target + q] = tile[source + q]


def _threads() -> int:
    return numba.get_num_threads()


def forward(x, weight, bias, y, g: ConvGeometry, *, transposed_weight=None) -> None:
    """y = conv2d(x, weight) + bias. ``transposed_weight``: the forward weight whose
    input gradient this is (``g`` is then the transposed geometry)."""
    p = plan(g)
    if transposed_weight is None:
        w = packed_weights(weight, g, p)
    else:
        w = packed_weights(transposed_weight, g, p, transposed=True)
    if bias is None:
        bias = scratch("small_channels.bias", g.K, x.dtype)
        bias[:] = 0
    threads = _threads()
    work = scratch("small_channels.work", threads * _part_size(p.stage, p.block), x.dtype)
    Kg = g.K // g.groups
    if Kg >= MICRO_KERNEL_CHANNELS:
        tiles = (
            "small_channels.forward.tiles_in_place"
            if p.in_place
            else "small_channels.forward.tiles"
        )
        _census.record("numba", tiles)
        T = p.taps
        panel = panels(Kg) * T * MR
        a = scratch("small_channels.panels", g.groups * panel, x.dtype)
        _pack_panels(w, p.offsets.size, g.groups, Kg, T, a)
        _forward_tiles(
            x.reshape(-1), a, p.offsets[:T], bias, y.reshape(-1), g.N, g.C, g.H, g.W, g.K,
            g.groups, g.P, g.Q, g.stride_h, g.stride_w, g.pad_h, g.pad_w,
            (p.rows, p.height, p.width, p.stage), work, p.x_offsets, p.in_place,
        )  # fmt: skip
        return
    _census.record("numba", "small_channels.forward.sweeps")
    _forward(
        x.reshape(-1), w, p.offsets, bias, y.reshape(-1), g.N, g.C, g.H, g.W, g.K, g.groups,
        g.P, g.Q, g.stride_h, g.stride_w, g.pad_h, g.pad_w,
        (p.rows, p.height, p.width, p.stage), work,
    )  # fmt: skip


# ---------------------------------------------------------------------------- backward


@jit
def _stage_grad(gy, source, Kg, P, Q, p0, rows, rows_per, width, out):
    """out[k*J + i*width + q] = gy[source + k*P*Q + (p0 + i)*Q + q], 0 for q >= Q or
    i >= rows (J = rows_per * width)."""
    J = rows_per * width
    for k in range(Kg):
        for i in range(rows_per):
            row = out[k * J + i * width :][:width]
            if i < rows:
                _copy(gy[source + k * P * Q + (p0 + i) * Q :], row, Q)
                row[Q:] = 0
            else:
                row[:] = 0


@jit
def _dot_pair(stage, offsets, t, g0, g1, J):
    """sum_j g0[j] * stage[offsets[t + i] + j] and likewise for g1, i < 4."""
    s0, s1 = stage[offsets[t] :][:J], stage[offsets[t + 1] :][:J]
    s2, s3 = stage[offsets[t + 2] :][:J], stage[offsets[t + 3] :][:J]
    zero = stage[stage.size - 1]  # the zeroed region, typed like the data
    a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = zero
    for j in range(J):
        a0 += g0[j] * s0[j]
        a1 += g0[j] * s1[j]
        a2 += g0[j] * s2[j]
        a3 += g0[j] * s3[j]
        b0 += g1[j] * s0[j]
        b1 += g1[j] * s1[j]
        b2 += g1[j] * s2[j]
        b3 += g1[j] * s3[j]
    return a0, a1, a2, a3, b0, b1, b2, b3


@jit(parallel=True)
def _weight_gradient(gy, x, offsets, partial, N, C, H, W, K, G, P, Q, sh, sw, ph, pw, plan_, work):
    """partial[part, k, t] = sum over this part's tasks of the tap t products; the
    caller sums the parts (no two threads write one element)."""
    rows_per, height, width, stage_size = plan_
    Cg, Kg, T4 = C // G, K // G, offsets.size
    J = rows_per * width
    blocks = (P + rows_per - 1) // rows_per
    tasks = N * G * blocks
    per = stage_size + J + Kg * J
    threads = work.size // per
    for part in prange(threads):
        stage = work[part * per : part * per + stage_size + J]
        grads = work[part * per + stage_size + J :][: Kg * J]
        stage[stage_size:] = 0
        out = partial[part * K * T4 : (part + 1) * K * T4]
        out[:] = 0
        for task in range(part * tasks // threads, (part + 1) * tasks // threads):
            n, g, p0 = task // (G * blocks), task // blocks % G, task % blocks * rows_per
            rows = min(rows_per, P - p0)
            used = (rows - 1) * width + Q
            _stage(x, (n * C + g * Cg) * H * W, Cg, H, W, p0, sh, sw, ph, pw, height, width, stage)
            _stage_grad(gy, (n * K + g * Kg) * P * Q, Kg, P, Q, p0, rows, rows_per, width, grads)
            for kk in range(0, Kg, 2):
                k0, k1 = kk, min(kk + 1, Kg - 1)  # an odd last channel pairs with itself
                g0, g1 = grads[k0 * J :][:used], grads[k1 * J :][:used]
                for t in range(0, T4, TAPS):
                    sums = _dot_pair(stage, offsets, t, g0, g1, used)
                    r0, r1 = (g * Kg + k0) * T4 + t, (g * Kg + k1) * T4 + t
                    for i in range(TAPS):
                        out[r0 + i] += sums[i]
                    if k1 != k0:
                        for i in range(TAPS):
                            out[r1 + i] += sums[TAPS + i]


def weight_gradient(grad_y, x, grad_weight, g: ConvGeometry) -> None:
    _census.record("numba", "small_channels.weight_gradient")
    p = plan(g)
    Kg = g.K // g.groups
    threads = _threads()
    per = p.stage + p.block + Kg * p.block
    work = scratch("small_channels.work", threads * per, x.dtype)
    T4 = p.offsets.size
    partial = scratch("small_channels.partial", threads * g.K * T4, x.dtype)
    _weight_gradient(
        grad_y.reshape(-1), x.reshape(-1), p.offsets, partial, g.N, g.C, g.H, g.W, g.K,
        g.groups, g.P, g.Q, g.stride_h, g.stride_w, g.pad_h, g.pad_w,
        (p.rows, p.height, p.width, p.stage), work,
    )  # fmt: skip
    parts = partial.reshape(threads, g.K, T4)[:, :, : p.taps]
    np.sum(parts, axis=0, out=grad_weight.reshape(g.K, p.taps))
    direct.redo_if_nan(grad_y, x, grad_weight, g, "small_channels.weight_gradient.nonfinite_retry")


def input_gradient(grad_y, weight, grad_x, g: ConvGeometry) -> None:
    """Stride 1: the forward pass with the flipped, transposed weight, packed here (no
    transposed copy). A strided input gradient is im2col's: its outputs do not share this
    module's staged layout, and a scatter through it measured 2.4-3x slower (34 against
    11.5 ms on ResNet-50's conv1)."""
    forward(grad_y, None, None, grad_x, transposed.geometry(g), transposed_weight=weight)
