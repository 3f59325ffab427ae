"""Max and average pooling on the CUDA backends: launch code for kernels/cuda/pool2d.cu.

Forward: one thread per output. Backward: one thread per input element, gathering from
the windows that hold it (deterministic, no atomics). The max-pool backward reads the
forward's indices; without them it first runs the forward into a workspace.
"""

from __future__ import annotations

import numpy as np

from fastcnn._shapes import PoolGeometry
from fastcnn.backends import register
from fastcnn.backends.cuda._runtime import Runtime, Source

THREADS = 256


def _expressions(T: str) -> list[str]:
    return [
        f"fastcnn::max_pool2d_forward<{T}, true>",
        f"fastcnn::max_pool2d_forward<{T}, false>",
        f"fastcnn::max_pool2d_backward<{T}>",
        f"fastcnn::avg_pool2d_forward<{T}>",
        f"fastcnn::avg_pool2d_backward<{T}>",
    ]


SOURCE = Source("pool2d.cu", _expressions)


def _shape(g: PoolGeometry) -> tuple:
    """The kernels' POOL_SHAPE arguments."""
    ints = (g.H, g.W, g.P, g.Q, g.R, g.S, g.stride_h, g.stride_w, g.pad_h, g.pad_w,
            g.dilation_h, g.dilation_w)  # fmt: skip
    return (np.int64(g.N * g.C), *(np.int32(v) for v in ints))


def _averaging(g: PoolGeometry) -> tuple:
    return np.int32(g.count_include_pad), np.int32(g.divisor_override or 0)


def register_kernels(backend: str, runtime: Runtime) -> None:
    def run(dtype, kernel: str, items: int, arrays: tuple, extra: tuple = ()) -> None:
        threads = runtime.threads(THREADS)
        runtime.launch(SOURCE, dtype, f"fastcnn::{kernel}", runtime.grid(items, threads),
                       threads, (*arrays, *extra))  # fmt: skip

    def indices_of(x, g: PoolGeometry):
        """The forward's maxima, into a workspace."""
        y = runtime.xp.empty(g.output_shape, x.dtype)
        indices = runtime.xp.empty(g.output_shape, np.int64)
        max_pool2d(x, y, indices, g)
        return indices

    @register("max_pool2d", backend)
    def max_pool2d(x, y, indices, g: PoolGeometry) -> None:
        with_indices = "true" if indices is not None else "false"
        # without indices the kernel never touches its indices argument
        placeholder = indices if indices is not None else runtime.xp.empty(0, np.int64)
        run(x.dtype, "max_pool2d_forward<{T}, " + with_indices + ">", y.size,
            (x, y, placeholder), _shape(g))  # fmt: skip

    @register("max_pool2d_backward", backend)
    def max_pool2d_backward(grad_y, x, indices, grad_x, g: PoolGeometry) -> None:
        if indices is None:
            indices = indices_of(x, g)
        run(grad_x.dtype, "max_pool2d_backward<{T}>", grad_x.size, (grad_y, indices, grad_x),
            _shape(g))  # fmt: skip

    @register("avg_pool2d", backend)
    def avg_pool2d(x, y, g: PoolGeometry) -> None:
        run(x.dtype, "avg_pool2d_forward<{T}>", y.size, (x, y), (*_shape(g), *_averaging(g)))

    @register("avg_pool2d_backward", backend)
    def avg_pool2d_backward(grad_y, grad_x, g: PoolGeometry) -> None:
        run(grad_x.dtype, "avg_pool2d_backward<{T}>", grad_x.size, (grad_y, grad_x),
            (*_shape(g), *_averaging(g)))  # fmt: skip
