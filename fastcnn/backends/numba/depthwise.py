"""Depthwise convolution (one input channel per group, any channel multiplier), fwd + bwd.
Algorithm: the small-channel direct kernel (small_channels.py) with one channel per group.

Memory-bound: 2 * R * S FLOPs per output against one read of x and one write of y.
Per (image, channel, block of output rows) the input rows are staged once into L1,
zero-padded and split into stride phases; each output row is accumulated there over
4 taps per sweep and written once. No padded copy of x, no bounds tests per tap.
"""

from __future__ import annotations

from fastcnn._shapes import ConvGeometry
from fastcnn.backends.numba import small_channels


def forward(x, weight, bias, y, g: ConvGeometry) -> None:
    small_channels.forward(x, weight, bias, y, g)


def backward(grad_y, x, weight, grad_x, grad_weight, g: ConvGeometry) -> None:
    """grad_x: stride 1 as the forward pass with the flipped weight, other strides by
    the staged adjoint; grad_weight: per-thread partial sums over images and rows."""
    small_channels.backward(grad_y, x, weight, grad_x, grad_weight, g)
