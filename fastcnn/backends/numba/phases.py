"""The padded, stride-phase-split copy of a convolution's input, and its tap offsets.
Algorithm: space-to-depth by stride, so every kernel tap reads a contiguous shifted row.

Output (p, q) of a convolution reads padded input row p*sh + r*dh. Splitting the padded
input into sh x sw phases (rows a, a+sh, ... of phase a) turns that into row
p + (r*dh)//sh of phase (r*dh) % sh: a stride-1 shift. In each phase plane of width Wph
the output is computed over the flat index p*Wph + q, so tap (c, r, s) is the vector
``buffer[offset(c, r, s) + idx]`` for every output at once; the Wph - Q columns of each
row past Q are computed and dropped. Cost of the copy: one read of x, one write of a
buffer of about the padded input's size.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import prange

from fastcnn._shapes import ConvGeometry
from fastcnn.backends.numba._setup import jit
from fastcnn.backends.numba.gemm import NR
from fastcnn.backends.numba.workspace import scratch


class PhaseLayout:
    """Sizes of the phase-split buffer for geometry ``g`` (plain ints)."""

    def __init__(self, g: ConvGeometry):
        extent_h = (g.P - 1) * g.stride_h + (g.R - 1) * g.dilation_h + 1
        extent_w = (g.Q - 1) * g.stride_w + (g.S - 1) * g.dilation_w + 1
        self.height = -(-extent_h // g.stride_h)  # rows of one phase plane
        self.width = -(-extent_w // g.stride_w)  # Wph: output row pitch in the flat index
        self.plane = self.height * self.width
        self.channel = g.stride_h * g.stride_w * self.plane
        self.image = g.C * self.channel
        self.columns = g.P * self.width  # flat output positions, garbage columns included
        # Reads run up to one row and one column panel past the last plane.
        self.size = g.N * self.image + self.width + NR

    def tap_offsets(self, g: ConvGeometry) -> np.ndarray:
        """Offset of tap (c, r, s) of one group, c-major as in weight[k, c, r, s]."""
        offsets = np.empty(g.C // g.groups * g.R * g.S, np.int64)
        t = 0
        for c in range(g.C // g.groups):
            for r in range(g.R):
                for s in range(g.S):
                    row, col = r * g.dilation_h, s * g.dilation_w
                    phase = (row % g.stride_h) * g.stride_w + col % g.stride_w
                    offsets[t] = (
                        c * self.channel
                        + phase * self.plane
                        + (row // g.stride_h) * self.width
                        + col // g.stride_w
                    )
                    t += 1
        return offsets


@jit(parallel=True)
def split_phases(x, N, C, H, W, stride_h, stride_w, pad_h, pad_w, height, width, buffer):
    """buffer[n, c, a, b, i, j] = x[n, c, i*sh + a - pad_h, j*sw + b - pad_w], 0 outside x.

    Negative padding crops. The slack after the last image is zeroed too.
    """
    plane = height * width
    image = C * stride_h * stride_w * plane
    for task in prange(N * C):
        n, c = task // C, task % C
        source = (n * C + c) * H * W
        for a in range(stride_h):
            for b in range(stride_w):
                base = task * stride_h * stride_w * plane + (a * stride_w + b) * plane
                # j range whose column j*sw + b - pad_w lies inside [0, W)
                j_lo = min(max(0, -((b - pad_w) // stride_w)), width)
                j_hi = max(min(width, (W - 1 - b + pad_w) // stride_w + 1), j_lo)
                for i in range(height):
                    h = i * stride_h + a - pad_h
                    # Slices throughout: buffer[out + j] = ... copies one scalar at a
                    # time (a signed index); a slice copy is vectorised (1.2 -> 0.4 ms
                    # for ResNet-50's 64 x 56 x 56 at batch 8).
                    out = buffer[base + i * width : base + (i + 1) * width]
                    if h < 0 or h >= H:
                        out[:] = 0
                        continue
                    row = source + h * W + b - pad_w
                    out[:j_lo] = 0
                    if stride_w == 1:
                        out[j_lo:j_hi] = x[row + j_lo : row + j_hi]
                    else:
                        inside = out[j_lo:j_hi]
                        values = x[row + j_lo * stride_w :]
                        for j in range(j_hi - j_lo):
                            inside[j] = values[j * stride_w]
                    out[j_hi:] = 0
    buffer[N * image :] = 0


@functools.lru_cache(maxsize=256)
def tap_offsets(g: ConvGeometry) -> np.ndarray:
    """The phase layout's tap offsets, made once per geometry (read-only)."""
    offsets = PhaseLayout(g).tap_offsets(g)
    offsets.flags.writeable = False
    return offsets


def phase_split(x, g: ConvGeometry, layout: PhaseLayout) -> np.ndarray:
    """x split into the phase layout, in the calling thread's workspace."""
    buffer = scratch("conv2d.phases", layout.size, x.dtype)
    split_phases(
        x.reshape(-1), g.N, g.C, g.H, g.W, g.stride_h, g.stride_w, g.pad_h, g.pad_w,
        layout.height, layout.width, buffer,
    )  # fmt: skip
    return buffer
