"""Convolution forward and weight gradient, any stride / padding / dilation / groups.
Algorithm: direct convolution over the phase-split input (phases.py), register-blocked
6 output channels x 64 output positions by the GEMM micro-kernel (gemm.py); no im2col.

Each task owns one image, one group and a chunk of the flat output index. For every
kernel tap t = (c, r, s) the micro-kernel reads the 64 positions as one contiguous
shifted row of the phase buffer, so bounds and padding never reach the inner loop.
"""

from __future__ import annotations

from numba import prange

from fastcnn.backends.numba._setup import jit
from fastcnn.backends.numba.gemm import KC, MR, NR, micro_kernel_packed, multiply_rows, pack_a

#: Output positions per task: 4 micro-tiles wide; the weights of a group stay in L2.
CHUNK = 4 * NR


@jit
def pack_weights(weight, G, Kg, T, packed):
    """Each group's (Kg x T) weight matrix, packed into MR-row panels one after another."""
    group = (Kg + MR - 1) // MR * T * MR
    for g in range(G):
        pack_a(weight, g * Kg * T, T, 1, Kg, T, packed, g * group)


@jit(parallel=True)
def forward(
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
                for k in range(Kg):
                    source = k * CHUNK + p * width - j0
                    target = y0 + k * P * Q + p * Q
                    for q in range(q_lo, q_hi):
                        y[target + q] = out[source + q]


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
def weight_gradient(
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
def sum_parts(partial, parts, out):
    """out[e] = sum over parts of partial[part*out.size + e]."""
    size = out.size
    for e in prange(size):
        total = partial[e]
        for part in range(1, parts):
            total += partial[part * size + e]
        out[e] = total
