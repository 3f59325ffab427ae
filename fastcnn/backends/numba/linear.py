"""Fully connected layer y = x @ weight.T + bias and its gradients, float32 / float64.
Algorithm: one BLAS matrix product per output (NumPy's matmul into the preallocated output).

The products are BLAS-bound (2 M in out FLOPs each) and BLAS already runs them near the
FMA peak with its own threads, so there is nothing for a Numba loop to add; keeping the op
out of Numba's thread pool also keeps one pool per op (alternating Numba's OpenMP workers
with OpenBLAS's, both spin-waiting on the same 2 cores, measured 5-7x slower).
The bias passes touch only the (M, out) output: M x out x itemsize bytes each.
"""

from __future__ import annotations

import numpy as np

from fastcnn.backends import register


@register("linear", "numba")
def linear(x, weight, bias, y) -> None:
    np.matmul(x, weight.T, out=y)
    if bias is not None:
        y += bias


@register("linear_backward", "numba")
def linear_backward(grad_y, x, weight, grad_x, grad_weight, grad_bias) -> None:
    np.matmul(grad_y, weight, out=grad_x)
    np.matmul(grad_y.T, x, out=grad_weight)
    if grad_bias is not None:
        np.sum(grad_y, axis=0, out=grad_bias)
