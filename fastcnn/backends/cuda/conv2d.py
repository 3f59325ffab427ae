"""2-D convolution on the CUDA backends: launch code for kernels/cuda/conv2d.cu and its
algorithm table (what ``algo=`` names on ``cuda`` and ``cuda-emu``).

Algorithms, per direction (forward, input gradient, weight gradient):

- ``direct``: one thread per output element summing its taps in a fixed order. Takes
  every case; the baseline the tiled kernels are measured against.
"""

from __future__ import annotations

import numpy as np

from fastcnn import _census
from fastcnn._shapes import ConvGeometry
from fastcnn.backends import register
from fastcnn.backends.cuda._runtime import Runtime, Source

THREADS = 256
DIRECTIONS = ("forward", "input_gradient", "weight_gradient")


def _expressions(T: str) -> list[str]:
    return [
        f"fastcnn::conv2d_forward_direct<{T}, true>",
        f"fastcnn::conv2d_forward_direct<{T}, false>",
        f"fastcnn::conv2d_input_gradient_direct<{T}>",
        f"fastcnn::conv2d_weight_gradient_direct<{T}>",
        f"fastcnn::conv2d_bias_gradient<{T}>",
    ]


SOURCE = Source("conv2d.cu", _expressions)


def _shape(g: ConvGeometry) -> tuple:
    """The kernels' CONV_SHAPE arguments."""
    return tuple(
        np.int32(v)
        for v in (g.N, g.C, g.H, g.W, g.K, g.R, g.S, g.P, g.Q, g.stride_h, g.stride_w,
                  g.pad_h, g.pad_w, g.dilation_h, g.dilation_w, g.groups)
    )  # fmt: skip


class AlgorithmTable:
    """What the registry and the functional API ask of this backend's conv2d algorithms."""

    names = ("direct",)
    directions = DIRECTIONS

    @staticmethod
    def takes(name: str, g: ConvGeometry, direction: str) -> bool:
        return name == "direct"

    @staticmethod
    def heuristic(g: ConvGeometry, direction: str) -> tuple[str, str]:
        return "direct", "the only algorithm yet"

    @classmethod
    def choose(cls, g: ConvGeometry, direction: str, dtype) -> str:
        return cls.heuristic(g, direction)[0]


TABLE = AlgorithmTable()


def register_kernels(backend: str, runtime: Runtime) -> None:
    _census.declare(backend, "conv2d.direct")

    def run(dtype, expression: str, items: int, args: tuple) -> None:
        threads = runtime.threads(THREADS)
        runtime.launch(SOURCE, dtype, expression, runtime.grid(items, threads), threads, args)

    @register("conv2d", backend, algorithms=TABLE)
    def conv2d(x, weight, bias, y, g: ConvGeometry, *, algo: str) -> None:
        _census.record(backend, f"conv2d.{algo}")
        with_bias = "true" if bias is not None else "false"
        run(x.dtype, "fastcnn::conv2d_forward_direct<{T}, " + with_bias + ">", y.size,
            (x, weight, weight if bias is None else bias, y, *_shape(g)))  # fmt: skip

    @register("conv2d_backward", backend, algorithms=TABLE)
    def conv2d_backward(
        grad_y, x, weight, grad_x, grad_weight, grad_bias, g: ConvGeometry, *, algo: tuple
    ) -> None:
        input_algo, weight_algo = algo
        if grad_x is not None:
            _census.record(backend, f"conv2d.{input_algo}")
            run(grad_x.dtype, "fastcnn::conv2d_input_gradient_direct<{T}>", grad_x.size,
                (grad_y, weight, grad_x, *_shape(g)))  # fmt: skip
        _census.record(backend, f"conv2d.{weight_algo}")
        run(grad_weight.dtype, "fastcnn::conv2d_weight_gradient_direct<{T}>", grad_weight.size,
            (grad_y, x, grad_weight, *_shape(g)))  # fmt: skip
        if grad_bias is not None:
            run(
                grad_bias.dtype,
                "fastcnn::conv2d_bias_gradient<{T}>",
                g.K,
                (grad_y, grad_bias, np.int32(g.N), np.int32(g.K), np.int64(g.P * g.Q)),
            )
