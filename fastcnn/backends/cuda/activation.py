"""Activations and dropout on the CUDA backends: launch code for kernels/cuda/activation.cu.

One grid-stride kernel per op and direction; the packed instance (16-byte loads and
stores) runs when every array is 16-byte aligned, the scalar one otherwise.
"""

from __future__ import annotations

import numpy as np

from fastcnn import _census
from fastcnn.backends import register
from fastcnn.backends.cuda._runtime import Runtime, Source, aligned

OPS = {"relu": "Relu", "leaky_relu": "LeakyRelu", "sigmoid": "Sigmoid", "tanh": "Tanh"}
THREADS = 256
#: Elements a thread handles per grid-stride step in the packed path.
PER_THREAD = 4


def _expressions(T: str) -> list[str]:
    names = []
    for functor in OPS.values():
        for packed in ("true", "false"):
            op = f"fastcnn::{functor}<{T}>"
            names.append(f"fastcnn::unary_forward<{T}, {op}, {packed}>")
            names.append(f"fastcnn::unary_backward<{T}, {op}, {packed}>")
    names += [f"fastcnn::dropout<{T}, {packed}>" for packed in ("true", "false")]
    return names


SOURCE = Source("activation.cu", _expressions)


def register_kernels(backend: str, runtime: Runtime) -> None:
    _census.declare(backend, "elementwise.packed", "elementwise.scalar")

    def run(dtype, kernel: str, arrays, n: int, parameter: float) -> None:
        packed = aligned(*(runtime.pointer(a) for a in arrays))
        _census.record(backend, "elementwise.packed" if packed else "elementwise.scalar")
        threads = runtime.threads(THREADS)
        blocks = runtime.grid(n, threads * PER_THREAD)
        expression = kernel.replace("PACKED", "true" if packed else "false")
        scalar = dtype.type
        runtime.launch(SOURCE, dtype, expression, blocks, threads,
                       (*arrays, np.int64(n), scalar(parameter)))  # fmt: skip

    for op, functor in OPS.items():

        def forward(x, y, parameter=0.0, functor=functor):
            run(x.dtype, "fastcnn::unary_forward<{T}, fastcnn::" + functor + "<{T}>, PACKED>",
                (x, y), x.size, parameter)  # fmt: skip

        def backward(grad_y, saved, grad_x, parameter=0.0, functor=functor):
            run(grad_y.dtype, "fastcnn::unary_backward<{T}, fastcnn::" + functor + "<{T}>, PACKED>",
                (grad_y, saved, grad_x), grad_y.size, parameter)  # fmt: skip

        register(op, backend)(forward)
        register(f"{op}_backward", backend)(backward)

    def dropout(x, mask, y, scale):
        run(x.dtype, "fastcnn::dropout<{T}, PACKED>", (x, mask.view(np.uint8), y), x.size,
            scale)  # fmt: skip

    def dropout_backward(grad_y, mask, grad_x, scale):
        dropout(grad_y, mask, grad_x, scale)

    register("dropout", backend)(dropout)
    register("dropout_backward", backend)(dropout_backward)
