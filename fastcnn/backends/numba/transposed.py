"""The input gradient of a stride-1 convolution as a forward convolution.
Algorithm: grad_x = conv2d(grad_y, flipped and transposed weight) on the transposed
geometry; every algorithm with a forward pass reuses it through :func:`input_gradient`.

For stride 1, grad_x[n, c, h, w] = sum over k, r, s of grad_y[n, k, h + pad_h - r*dh,
w + pad_w - s*dw] * weight[k, c, r, s]: a convolution of grad_y (K channels, P x Q) with
weight'[c, k, r, s] = weight[k, c, R-1-r, S-1-s], top/left padding (R-1)*dh - pad_h. That
padding is negative when the forward padding exceeds the kernel's reach: the transposed
convolution then crops grad_y, and every kernel must take a negative padding.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numba import prange

from fastcnn._shapes import ConvGeometry
from fastcnn.backends.numba._setup import jit
from fastcnn.backends.numba.workspace import scratch


def applies(g: ConvGeometry) -> bool:
    """Stride 1 in both directions: grad_x is a forward convolution (this module)."""
    return g.stride_h == 1 and g.stride_w == 1


def takes_by_forward(g: ConvGeometry, direction: str) -> bool:
    """``takes`` of an algorithm whose input gradient is its own forward pass through
    :func:`input_gradient`: every forward pass and weight gradient, and the input gradient
    of stride 1 (a strided one is im2col's col2im)."""
    return direction != "input_gradient" or applies(g)


def geometry(g: ConvGeometry) -> ConvGeometry:
    """The geometry of grad_x as a convolution of grad_y (stride 1 only)."""
    return ConvGeometry(
        g.N, g.K, g.P, g.Q, g.C, g.R, g.S, g.H, g.W, 1, 1,
        (g.R - 1) * g.dilation_h - g.pad_h, (g.S - 1) * g.dilation_w - g.pad_w,
        g.dilation_h, g.dilation_w, g.groups,
    )  # fmt: skip


#: Input channels per task of the weight transpose (rows of its output).
_TRANSPOSE_ROWS = 16


@jit(parallel=True)
def _transpose_weight(weight, G, Kg, Cg, R, S, out):
    # A block of output rows (g, c0 .. c0 + 16) per task, k outer: each step reads one
    # contiguous run of the weight and appends to 16 output rows. (Row by row, the reads
    # stride 18 KB at 512 x 512 x 3 x 3 and fall into two L1 sets: 3.2 ms; this, 0.3.)
    RS = R * S
    blocks = (Cg + _TRANSPOSE_ROWS - 1) // _TRANSPOSE_ROWS
    for task in prange(G * blocks):
        g, c0 = task // blocks, task % blocks * _TRANSPOSE_ROWS
        rows = min(_TRANSPOSE_ROWS, Cg - c0)
        for k in range(Kg):
            source = weight[((g * Kg + k) * Cg + c0) * RS :][: rows * RS]
            for c in range(rows):
                target = out[((g * Cg + c0 + c) * Kg + k) * RS :][:RS]
                for rs in range(RS):
                    target[rs] = source[c * RS + RS - 1 - rs]


def weight(weight, g: ConvGeometry) -> np.ndarray:
    """weight'[g*Cg + c, k, r, s] = weight[g*Kg + k, c, R-1-r, S-1-s] (a workspace)."""
    G = g.groups
    out = scratch("conv2d.transposed_weight", weight.size, weight.dtype)
    _transpose_weight(weight.reshape(-1), G, g.K // G, g.C // G, g.R, g.S, out)
    return out.reshape(g.C, g.K // G, g.R, g.S)


def input_gradient(forward: Callable, grad_y, weight_, grad_x, g: ConvGeometry) -> None:
    """grad_x of a stride-1 convolution ``g`` by the algorithm whose forward is ``forward``."""
    forward(grad_y, weight(weight_, g), None, grad_x, geometry(g))
