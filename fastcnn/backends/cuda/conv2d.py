"""2-D convolution on the CUDA backends: launch code for kernels/cuda/conv2d.cu and its
algorithm table (what ``algo=`` names on ``cuda`` and ``cuda-emu``).

Algorithms, per direction (forward, input gradient, weight gradient):

- ``direct``: one thread per output element summing its taps in a fixed order. Takes
  every case; the baseline the tiled kernels are measured against.
- ``implicit_gemm`` (forward): the GEMM over M = N*P*Q positions, K filters and depth
  C/groups*R*S, A gathered from x on the fly into shared-memory tiles, double-buffered,
  a register block of outputs per thread. Takes every forward case.
"""

from __future__ import annotations

import numpy as np

from fastcnn import _census
from fastcnn._shapes import ConvGeometry
from fastcnn.backends import register
from fastcnn.backends.cuda._runtime import Runtime, Source

THREADS = 256
DIRECTIONS = ("forward", "input_gradient", "weight_gradient")

#: Implicit-GEMM tiles (BM, BN, BK, TM, TN) by C type on a GPU: 256 threads, 8 x 8 outputs a
#: thread in float (127 registers, no spill), 4 x 4 in double. The emulator runs a 32 x 32
#: tile of 64 threads, so small test inputs cross many tiles and their edges.
GEMM_TILES = {"float": (128, 128, 8, 8, 8), "double": (64, 64, 8, 4, 4)}
EMULATED_GEMM_TILE = (32, 32, 8, 4, 4)


def _gemm_expression(T: str, tile: tuple, bias: bool) -> str:
    BM, BN, BK, TM, TN = tile
    return (
        f"fastcnn::conv2d_forward_implicit_gemm<{T}, {BM}, {BN}, {BK}, {TM}, {TN}, "
        f"{'true' if bias else 'false'}>"
    )


def _expressions(T: str) -> list[str]:
    gemm = [
        _gemm_expression(T, tile, bias)
        for tile in (GEMM_TILES[T], EMULATED_GEMM_TILE)
        for bias in (True, False)
    ]
    return [
        *gemm,
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

    names = ("direct", "implicit_gemm")
    directions = DIRECTIONS

    @staticmethod
    def takes(name: str, g: ConvGeometry, direction: str) -> bool:
        return name == "direct" or (name == "implicit_gemm" and direction == "forward")

    @staticmethod
    def heuristic(g: ConvGeometry, direction: str) -> tuple[str, str]:
        if direction == "forward":
            return "implicit_gemm", "tiled GEMM with the input gathered on the fly"
        return "direct", "the only algorithm for this direction yet"

    @classmethod
    def choose(cls, g: ConvGeometry, direction: str, dtype) -> str:
        return cls.heuristic(g, direction)[0]


TABLE = AlgorithmTable()


def register_kernels(backend: str, runtime: Runtime) -> None:
    _census.declare(backend, "conv2d.direct", "conv2d.implicit_gemm")

    def run(dtype, expression: str, items: int, args: tuple) -> None:
        threads = runtime.threads(THREADS)
        runtime.launch(SOURCE, dtype, expression, runtime.grid(items, threads), threads, args)

    def implicit_gemm(x, weight, bias, y, g: ConvGeometry) -> None:
        T = "float" if x.dtype == np.float32 else "double"
        tile = EMULATED_GEMM_TILE if runtime.name == "cuda-emu" else GEMM_TILES[T]
        BM, BN, BK, TM, TN = tile
        threads = (BM // TM) * (BN // TN)
        grid = (-(-g.N * g.P * g.Q // BM), -(-(g.K // g.groups) // BN), g.groups)
        shared = 2 * BK * (BM + BN) * x.dtype.itemsize
        runtime.launch(SOURCE, x.dtype, _gemm_expression("{T}", tile, bias is not None), grid,
                       threads, (x, weight, weight if bias is None else bias, y, *_shape(g)),
                       shared)  # fmt: skip

    @register("conv2d", backend, algorithms=TABLE)
    def conv2d(x, weight, bias, y, g: ConvGeometry, *, algo: str) -> None:
        _census.record(backend, f"conv2d.{algo}")
        if algo == "implicit_gemm":
            implicit_gemm(x, weight, bias, y, g)
            return
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
