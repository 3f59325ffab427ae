"""The fully-connected layer on the CUDA backends: its products are the array module's
matmul (cuBLAS under CuPy; NumPy's BLAS under the emulator), as the backend allows.

y = x @ weight.T + bias; grad_x = grad_y @ weight, grad_weight = grad_y.T @ x, grad_bias
= the column sums of grad_y. cuBLAS reduces in a fixed order: a run repeats bitwise.
"""

from __future__ import annotations

from fastcnn.backends import register
from fastcnn.backends.cuda._runtime import Runtime


def register_kernels(backend: str, runtime: Runtime) -> None:
    xp = runtime.xp

    @register("linear", backend)
    def linear(x, weight, bias, y) -> None:
        xp.matmul(x, weight.T, out=y)
        if bias is not None:
            y += bias

    @register("linear_backward", backend)
    def linear_backward(grad_y, x, weight, grad_x, grad_weight, grad_bias) -> None:
        if grad_x is not None:
            xp.matmul(grad_y, weight, out=grad_x)
        xp.matmul(grad_y.T, x, out=grad_weight)
        if grad_bias is not None:
            grad_y.sum(axis=0, out=grad_bias)
