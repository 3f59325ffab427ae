"""Depthwise convolution (one input channel per group, any channel multiplier), fwd + bwd.
Algorithm: 3x3, stride 1 or 2, multiplier 1: one pass per (image, channel) plane over
a ring of three staged input rows; everything else: the small-channel kernel.

Memory-bound: 18 FLOPs per output against one read of x and one write of y (4 + 4
bytes per output at stride 1). Each input row is copied once into a zero-padded,
stride-phase-split row of the thread's ring (L1: 4 x 114 floats), where the three
output rows that read it find it; each output row sums its 9 taps over contiguous
runs of the ring in registers and is written once. Threads take whole planes.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from fastcnn import _census
from fastcnn._shapes import ConvGeometry
from fastcnn.backends.numba import direct, small_channels, transposed
from fastcnn.backends.numba._setup import jit
from fastcnn.backends.numba.workspace import scratch

_census.declare(
    "numba",
    "depthwise.forward.ring",
    "depthwise.forward.small_channels",
    "depthwise.input_gradient.ring",
    "depthwise.input_gradient.ring_stride_2",
    "depthwise.input_gradient.small_channels",
    "depthwise.weight_gradient.ring",
    "depthwise.weight_gradient.small_channels",
    "depthwise.weight_gradient.nonfinite_retry",
)


def takes(g: ConvGeometry, direction: str) -> bool:
    """One input channel per group (depthwise, any channel multiplier); what the ring
    does not take runs the small-channel kernels, whose input gradient is stride 1 only."""
    if direction == "input_gradient" and not transposed.applies(g):
        return takes_ring(g)
    return g.C == g.groups


def pays(g: ConvGeometry) -> bool:
    """Depthwise with more than one group (C = 1 is a dense convolution)."""
    return g.C == g.groups > 1


def takes_ring(g: ConvGeometry) -> bool:
    """3x3, stride 1 or 2 (same both ways), dilation 1, multiplier 1."""
    return (
        g.K == g.C == g.groups
        and (g.R, g.S, g.dilation_h, g.dilation_w) == (3, 3, 1, 1)
        and g.stride_h == g.stride_w
        and g.stride_h in (1, 2)
    )


@jit
def _load_row(x, source, W, sw, pw, width, slot):
    """slot[b*width + j] = x[source + j*sw + b - pw] (0 outside the row), b < sw."""
    if sw == 2:
        small_channels._deinterleave(x[source:][:W], pw, width, slot, 0, width)
        return
    lo = min(pw, width)
    hi = max(min(width, W + pw), lo)
    slot[:lo] = 0
    slot[lo:hi] = x[source + lo - pw : source + hi - pw]
    slot[hi:width] = 0


@jit
def _advance(x, source, H, W, s, pw, width, ring, h0, p):
    """Stage input rows h0 .. h0 + 2 in ring slots h % 3 (output row p = (h0 + ph) / s;
    those of row p - 1 are there already) and return the three slots' offsets, the
    zero row for rows outside the image."""
    row = s * width
    first = h0 if p == 0 else h0 + 3 - s
    for h in range(max(first, 0), min(h0 + 3, H)):
        _load_row(x, source + h * W, W, s, pw, width, ring[h % 3 * row :])
    base0 = (h0 % 3) * row if 0 <= h0 < H else 3 * row
    base1 = ((h0 + 1) % 3) * row if 0 <= h0 + 1 < H else 3 * row
    base2 = ((h0 + 2) % 3) * row if 0 <= h0 + 2 < H else 3 * row
    return base0, base1, base2


@jit(parallel=True)
def _ring_forward(x, w, bias, y, planes, C, H, W, P, Q, s, ph, pw, work):
    """y[plane, p, q] = bias[c] + sum_{r, t} w[c, r, t] * x[plane, p*s + r - ph, q*s + t - pw]."""
    width = Q + 2 // s  # per phase: column q of tap t reads phase t % s at q + t // s
    row = s * width  # one staged input row, all its phases
    per = 4 * row  # three ring slots and a zero row
    threads = work.size // per
    for part in prange(threads):
        ring = work[part * per : (part + 1) * per]
        ring[3 * row :] = 0
        for plane in range(part * planes // threads, (part + 1) * planes // threads):
            c = plane % C
            k = w[c * 9 : c * 9 + 9]
            w0, w1, w2, w3, w4, w5 = k[0], k[1], k[2], k[3], k[4], k[5]
            w6, w7, w8 = k[6], k[7], k[8]
            b = bias[c]
            source = plane * H * W
            for p in range(P):
                base0, base1, base2 = _advance(x, source, H, W, s, pw, width, ring, p * s - ph, p)
                # tap t of a row: phase t % s, shifted by t // s
                t1, t2 = (1 % s) * width + 1 // s, (2 % s) * width + 2 // s
                a0, a1, a2 = ring[base0:][:Q], ring[base0 + t1 :][:Q], ring[base0 + t2 :][:Q]
                b0, b1, b2 = ring[base1:][:Q], ring[base1 + t1 :][:Q], ring[base1 + t2 :][:Q]
                c0, c1, c2 = ring[base2:][:Q], ring[base2 + t1 :][:Q], ring[base2 + t2 :][:Q]
                out = y[(plane * P + p) * Q :][:Q]
                for q in range(Q):
                    out[q] = (
                        b
                        + (w0 * a0[q] + w1 * a1[q] + w2 * a2[q])
                        + (w3 * b0[q] + w4 * b1[q] + w5 * b2[q])
                        + (w6 * c0[q] + w7 * c1[q] + w8 * c2[q])
                    )


@jit(parallel=True)
def _ring_weight_gradient(gy, x, partial, planes, C, H, W, P, Q, s, ph, pw, work):
    """partial[part, c, r, t] = sum over this part's planes of channel c and all p, q of
    gy[plane, p, q] * x[plane, p*s + r - ph, q*s + t - pw]; the caller sums the parts."""
    width = Q + 2 // s
    row = s * width
    per = 4 * row
    threads = work.size // per
    t1, t2 = (1 % s) * width + 1 // s, (2 % s) * width + 2 // s
    for part in prange(threads):
        ring = work[part * per : (part + 1) * per]
        ring[3 * row :] = 0
        out = partial[part * C * 9 : (part + 1) * C * 9]
        out[:] = 0
        for plane in range(part * planes // threads, (part + 1) * planes // threads):
            zero = ring[3 * row]  # typed like the data
            s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = zero
            source = plane * H * W
            for p in range(P):
                base0, base1, base2 = _advance(x, source, H, W, s, pw, width, ring, p * s - ph, p)
                a0, a1, a2 = ring[base0:][:Q], ring[base0 + t1 :][:Q], ring[base0 + t2 :][:Q]
                b0, b1, b2 = ring[base1:][:Q], ring[base1 + t1 :][:Q], ring[base1 + t2 :][:Q]
                c0, c1, c2 = ring[base2:][:Q], ring[base2 + t1 :][:Q], ring[base2 + t2 :][:Q]
                g = gy[(plane * P + p) * Q :][:Q]
                for q in range(Q):
                    v = g[q]
                    s0 += v * a0[q]
                    s1 += v * a1[q]
                    s2 += v * a2[q]
                    s3 += v * b0[q]
                    s4 += v * b1[q]
                    s5 += v * b2[q]
                    s6 += v * c0[q]
                    s7 += v * c1[q]
                    s8 += v * c2[q]
            k = out[plane % C * 9 :][:9]
            k[0] += s0
            k[1] += s1
            k[2] += s2
            k[3] += s3
            k[4] += s4
            k[5] += s5
            k[6] += s6
            k[7] += s7
            k[8] += s8


def _ring_work(g: ConvGeometry, dtype) -> np.ndarray:
    s = g.stride_w
    return scratch("depthwise.ring", numba.get_num_threads() * 4 * s * (g.Q + 2 // s), dtype)


def _ring_weight_gradient_sums(grad_y, x, grad_weight, g: ConvGeometry) -> None:
    threads = numba.get_num_threads()
    partial = scratch("depthwise.partial", threads * g.C * 9, x.dtype)
    _ring_weight_gradient(
        grad_y.reshape(-1), x.reshape(-1), partial, g.N * g.C, g.C, g.H, g.W, g.P, g.Q,
        g.stride_w, g.pad_h, g.pad_w, _ring_work(g, x.dtype),
    )  # fmt: skip
    np.sum(partial.reshape(threads, g.C * 9), axis=0, out=grad_weight.reshape(-1))


@jit
def _load_grad(gy, source, p, P, Q, ring, span):
    """Stage grad_y row p (0 outside the plane) at ring[(p % 2)*span + 1 :], with a zero
    column on each side (slot 2 stays all zero); return the slot's offset."""
    if p < 0 or p >= P:
        return 2 * span
    base = (p % 2) * span
    ring[base + 1 : base + 1 + Q] = gy[source + p * Q : source + (p + 1) * Q]
    return base


@jit(parallel=True)
def _ring_input_gradient_stride2(gy, w, gx, planes, C, H, W, P, Q, ph, pw, work):
    """grad_x of the 3x3 stride-2 depthwise convolution, row by row: input row h gets
    the grad_y rows p = (h + ph - r) / 2 for the taps r of its parity, columns likewise:
    with u = v + pw, even u = 2m gets w[r, 0] g[m] + w[r, 2] g[m - 1], odd u = 2m + 1
    gets w[r, 1] g[m]; the two column phases are then interleaved into grad_x's row."""
    M = (W + pw) // 2 + 1  # m of every column v < W
    span = max(Q + 2, M + 1)
    per = 3 * span + 2 * M
    threads = work.size // per
    for part in prange(threads):
        ring = work[part * per : part * per + 3 * span]
        even = work[part * per + 3 * span :][:M]
        odd = work[part * per + 3 * span + M :][:M]
        ring[:] = 0
        for plane in range(part * planes // threads, (part + 1) * planes // threads):
            k = w[plane % C * 9 :][:9]
            source = plane * P * Q
            for h in range(H):
                u = h + ph
                if u % 2 == 0:  # taps r = 0 (row u / 2) and r = 2 (row u / 2 - 1)
                    p = u // 2
                    if h == 0:
                        _load_grad(gy, source, p - 1, P, Q, ring, span)
                    top = _load_grad(gy, source, p, P, Q, ring, span)
                    bottom = (p - 1) % 2 * span if 0 <= p - 1 < P else 2 * span
                    g0, g0s = ring[top + 1 :][:M], ring[top:][:M]
                    g2, g2s = ring[bottom + 1 :][:M], ring[bottom:][:M]
                    k0, k1, k2, k6, k7, k8 = k[0], k[1], k[2], k[6], k[7], k[8]
                    for m in range(M):
                        even[m] = (k0 * g0[m] + k2 * g0s[m]) + (k6 * g2[m] + k8 * g2s[m])
                        odd[m] = k1 * g0[m] + k7 * g2[m]
                else:  # tap r = 1, row (u - 1) / 2
                    p = (u - 1) // 2
                    if h == 0:
                        middle = _load_grad(gy, source, p, P, Q, ring, span)
                    else:
                        middle = p % 2 * span if 0 <= p < P else 2 * span
                    g1, g1s = ring[middle + 1 :][:M], ring[middle:][:M]
                    k3, k4, k5 = k[3], k[4], k[5]
                    for m in range(M):
                        even[m] = k3 * g1[m] + k5 * g1s[m]
                        odd[m] = k4 * g1[m]
                out = gx[(plane * H + h) * W :][:W]
                # v = 2j gets phase pw % 2 at m = j + pw // 2, v = 2j + 1 the other
                # phase at m = j + (pw + 1) // 2
                first = even[pw // 2 :] if pw % 2 == 0 else odd[pw // 2 :]
                second = odd[(pw + 1) // 2 :] if pw % 2 == 0 else even[(pw + 1) // 2 :]
                for j in range(W // 2):
                    out[2 * j] = first[j]
                    out[2 * j + 1] = second[j]
                if W % 2:
                    out[W - 1] = first[W // 2]


def _input_gradient_stride2(grad_y, weight, grad_x, g: ConvGeometry) -> None:
    M = (g.W + g.pad_w) // 2 + 1
    per = 3 * max(g.Q + 2, M + 1) + 2 * M
    work = scratch("depthwise.gradient_rows", numba.get_num_threads() * per, grad_y.dtype)
    _ring_input_gradient_stride2(
        grad_y.reshape(-1), weight.reshape(-1), grad_x.reshape(-1), g.N * g.C, g.C, g.H,
        g.W, g.P, g.Q, g.pad_h, g.pad_w, work,
    )  # fmt: skip


def _ring(x, weight, bias, y, g: ConvGeometry) -> None:
    if bias is None:
        bias = scratch("depthwise.bias", g.K, x.dtype, zeroed=True)
    work = _ring_work(g, x.dtype)
    _ring_forward(
        x.reshape(-1), weight.reshape(-1), bias, y.reshape(-1), g.N * g.C, g.C, g.H, g.W,
        g.P, g.Q, g.stride_w, g.pad_h, g.pad_w, work,
    )  # fmt: skip


def forward(x, weight, bias, y, g: ConvGeometry) -> None:
    if takes_ring(g):
        _census.record("numba", "depthwise.forward.ring")
        _ring(x, weight, bias, y, g)
    else:
        _census.record("numba", "depthwise.forward.small_channels")
        small_channels.forward(x, weight, bias, y, g)


def input_gradient(grad_y, weight, grad_x, g: ConvGeometry) -> None:
    """Stride 1: the ring forward with the flipped weight on the transposed geometry;
    stride 2: row by row over two staged grad_y rows."""
    t = transposed.geometry(g) if transposed.applies(g) else None
    if t is not None and takes_ring(g) and t.pad_h >= 0 and t.pad_w >= 0:
        _census.record("numba", "depthwise.input_gradient.ring")
        flipped = scratch("depthwise.flipped", weight.size, weight.dtype)
        flipped[:] = weight.reshape(g.K, 9)[:, ::-1].reshape(-1)
        _ring(grad_y, flipped, None, grad_x, t)
    elif takes_ring(g) and g.stride_h == 2:
        _census.record("numba", "depthwise.input_gradient.ring_stride_2")
        _input_gradient_stride2(grad_y, weight, grad_x, g)
    else:
        _census.record("numba", "depthwise.input_gradient.small_channels")
        small_channels.input_gradient(grad_y, weight, grad_x, g)


def weight_gradient(grad_y, x, grad_weight, g: ConvGeometry) -> None:
    """Per-thread partial sums over the planes, one pass over x and grad_y."""
    if takes_ring(g):
        _census.record("numba", "depthwise.weight_gradient.ring")
        _ring_weight_gradient_sums(grad_y, x, grad_weight, g)
        direct.redo_if_nan(grad_y, x, grad_weight, g, "depthwise.weight_gradient.nonfinite_retry")
    else:
        _census.record("numba", "depthwise.weight_gradient.small_channels")
        small_channels.weight_gradient(grad_y, x, grad_weight, g)
