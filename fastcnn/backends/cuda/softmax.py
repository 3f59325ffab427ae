"""Softmax, log-softmax and cross-entropy on the CUDA backends: launch code for
kernels/cuda/softmax.cu (one block per row; its threads a multiple of 32 fitted to the
row, at most 256)."""

from __future__ import annotations

import numpy as np

from fastcnn.backends import register
from fastcnn.backends.cuda._runtime import Runtime, Source

THREADS = 256


def _expressions(T: str) -> list[str]:
    return [
        f"fastcnn::softmax_forward<{T}, false>",
        f"fastcnn::softmax_forward<{T}, true>",
        f"fastcnn::cross_entropy_forward<{T}>",
        f"fastcnn::cross_entropy_backward<{T}>",
        f"fastcnn::soft_cross_entropy_forward<{T}>",
        f"fastcnn::soft_cross_entropy_backward<{T}>",
    ]


SOURCE = Source("softmax.cu", _expressions)


def register_kernels(backend: str, runtime: Runtime) -> None:
    def run(logits, expression: str, args: tuple) -> None:
        rows, classes = logits.shape
        warps = -(-min(classes, runtime.threads(THREADS)) // 32)
        threads = 32 * max(1, warps)
        scratch = threads // 32 * logits.dtype.itemsize  # one value per warp
        runtime.launch(SOURCE, logits.dtype, expression, runtime.grid(rows, 1), threads,
                       (*args, np.int64(rows), np.int32(classes)), scratch)  # fmt: skip

    @register("softmax", backend)
    def softmax(x, y) -> None:
        run(x, "fastcnn::softmax_forward<{T}, false>", (x, y))

    @register("log_softmax", backend)
    def log_softmax(x, y) -> None:
        run(x, "fastcnn::softmax_forward<{T}, true>", (x, y))

    @register("cross_entropy", backend)
    def cross_entropy(logits, labels, weight, smoothing, losses) -> None:
        run(logits, "fastcnn::cross_entropy_forward<{T}>",
            (logits, labels, weight, np.float64(smoothing), losses))  # fmt: skip

    @register("cross_entropy_backward", backend)
    def cross_entropy_backward(logits, labels, weight, smoothing, row_scale, grad) -> None:
        run(logits, "fastcnn::cross_entropy_backward<{T}>",
            (logits, labels, weight, np.float64(smoothing), row_scale, grad))  # fmt: skip

    @register("soft_cross_entropy", backend)
    def soft_cross_entropy(logits, targets, losses) -> None:
        run(logits, "fastcnn::soft_cross_entropy_forward<{T}>", (logits, targets, losses))

    @register("soft_cross_entropy_backward", backend)
    def soft_cross_entropy_backward(logits, targets, row_scale, grad) -> None:
        run(logits, "fastcnn::soft_cross_entropy_backward<{T}>",
            (logits, targets, row_scale, grad))  # fmt: skip
