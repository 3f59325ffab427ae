"""1x1 convolutions as GEMMs: which ones, and the strided gather and scatter they need.
Algorithm: a 1x1 convolution is y[n] = W @ x[n]; strided, over every sh-th row and
sw-th column of x, gathered first (forward, weight gradient) or scattered after (input
gradient).
"""

from __future__ import annotations

from numba import prange

from fastcnn._shapes import ConvGeometry
from fastcnn.backends.numba._setup import jit


def is_pointwise(g: ConvGeometry) -> bool:
    """1x1, stride 1, no padding, one group: y[n] = W @ x[n], no copy of x at all."""
    shape = (g.R, g.S, g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.groups)
    return shape == (1, 1, 1, 1, 0, 0, 1)


def is_strided_pointwise(g: ConvGeometry) -> bool:
    """1x1, no padding, one group, a stride above 1: a GEMM over the strided inputs."""
    shape = (g.R, g.S, g.pad_h, g.pad_w, g.groups)
    return shape == (1, 1, 0, 0, 1) and (g.stride_h, g.stride_w) != (1, 1)


@jit(parallel=True)
def subsample(x, N, C, H, W, P, Q, sh, sw, out):
    """out[n, c, p, q] = x[n, c, p*sh, q*sw]: the inputs a strided 1x1 convolution reads."""
    for plane in prange(N * C):
        for p in range(P):
            source = x[(plane * H + p * sh) * W :][: (Q - 1) * sw + 1]
            target = out[(plane * P + p) * Q :][:Q]
            for q in range(Q):
                target[q] = source[q * sw]


@jit(parallel=True)
def spread(values, N, C, H, W, P, Q, sh, sw, out):
    """out[n, c, p*sh, q*sw] = values[n, c, p, q], zero everywhere else."""
    for plane in prange(N * C):
        target = out[plane * H * W : (plane + 1) * H * W]
        target[:] = 0
        for p in range(P):
            row = target[p * sh * W :][: (Q - 1) * sw + 1]
            source = values[(plane * P + p) * Q :][:Q]
            for q in range(Q):
                row[q * sw] = source[q]
