"""Fully connected layer y = x @ weight.T + bias and its gradients, float32 / float64.
Algorithm: one BLAS matrix product per output (NumPy's matmul into the preallocated output).

The products are BLAS-bound (2 M in out FLOPs each) and BLAS runs them near the FMA
peak, so there is nothing for a Numba loop to add. But BLAS's worker threads spin-wait
for a long while after each call, on the same cores that Numba's OpenMP workers need
for the convolution, pooling and activation kernels around it: a LeNet training step
measured 16 ms with threaded BLAS and 7.6 ms with one BLAS thread. So products of a
network's usual size run on one BLAS thread; only large ones, whose run time dwarfs the
spinning, use BLAS's threads.
The bias passes touch only the (M, out) output: M x out x itemsize bytes each.
"""

from __future__ import annotations

import contextlib

import numpy as np

from fastcnn import _census
from fastcnn.backends import register

#: Products of fewer FLOPs than this run on one BLAS thread (about 0.25 ms on one core).
THREADED_BLAS_FLOPS = 1 << 26

_blas = None
_census.declare("numba", "linear.one_thread", "linear.threaded")


def _blas_threads(flops: int):
    """A context that keeps BLAS on one thread for a product of ``flops`` below the limit.

    Setting the count is a few microseconds; a call that overlaps another Python
    thread's may run with either count, which changes speed, never results.
    """
    global _blas
    if flops >= THREADED_BLAS_FLOPS:
        _census.record("numba", "linear.threaded")
        return contextlib.nullcontext()
    _census.record("numba", "linear.one_thread")
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController().select(user_api="blas")
    return _blas.limit(limits=1)


@register("linear", "numba")
def linear(x, weight, bias, y) -> None:
    with _blas_threads(2 * x.shape[0] * x.shape[1] * weight.shape[0]):
        np.matmul(x, weight.T, out=y)
    if bias is not None:
        y += bias


@register("linear_backward", "numba")
def linear_backward(grad_y, x, weight, grad_x, grad_weight, grad_bias) -> None:
    with _blas_threads(2 * x.shape[0] * x.shape[1] * weight.shape[0]):
        if grad_x is not None:
            np.matmul(grad_y, weight, out=grad_x)
        np.matmul(grad_y.T, x, out=grad_weight)
    if grad_bias is not None:
        np.sum(grad_y, axis=0, out=grad_bias)
