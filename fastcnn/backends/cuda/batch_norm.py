"""Batch normalisation on the CUDA backends: launch code for kernels/cuda/batch_norm.cu.

x arrives as (N, C, L). The per-channel sums run one block per channel (double
accumulators, deterministic); y and grad_x are grid-stride elementwise passes. The
backward's per-channel terms (the batch statistics again, in training) pass between its
two kernels in a float64 workspace of 4 x C, whatever x's dtype. The statistics (mean,
var) the kernels take are float64: training's come so from the functional API, the running
statistics of eval are converted here (C elements).
"""

from __future__ import annotations

import numpy as np

from fastcnn.backends import register
from fastcnn.backends.cuda._runtime import Runtime, Source

THREADS = 256


def _expressions(T: str) -> list[str]:
    return [
        f"fastcnn::batch_norm_statistics<{T}>",
        f"fastcnn::batch_norm_forward<{T}>",
        f"fastcnn::batch_norm_backward_sums<{T}>",
        f"fastcnn::batch_norm_input_gradient<{T}>",
    ]


SOURCE = Source("batch_norm.cu", _expressions)


def register_kernels(backend: str, runtime: Runtime) -> None:
    def per_channel(x, expression: str, args: tuple, tail: tuple = ()) -> None:
        """One block per channel; the kernel takes (*args, N, C, L, *tail)."""
        N, C, L = x.shape
        threads = runtime.threads(THREADS)
        scratch = threads // 32 * 8  # one double per warp
        runtime.launch(SOURCE, x.dtype, expression, runtime.grid(C, 1), threads,
                       (*args, np.int32(N), np.int32(C), np.int64(L), *tail), scratch)  # fmt: skip

    def elementwise(x, expression: str, args: tuple) -> None:
        threads = runtime.threads(THREADS)
        runtime.launch(SOURCE, x.dtype, expression, runtime.grid(x.size, threads), threads, args)

    @register("batch_norm_statistics", backend)
    def batch_norm_statistics(x, mean, var) -> None:
        per_channel(x, "fastcnn::batch_norm_statistics<{T}>", (x, mean, var))

    def float64(statistics):
        return runtime.xp.ascontiguousarray(statistics, dtype=np.float64)

    @register("batch_norm", backend)
    def batch_norm(x, mean, var, weight, bias, y, eps) -> None:
        _, C, L = x.shape
        elementwise(x, "fastcnn::batch_norm_forward<{T}>", (
            x, float64(mean), float64(var), x if weight is None else weight,
            x if bias is None else bias,
            y, np.int32(C), np.int64(L), np.int64(x.size), np.float64(eps),
            np.int32(weight is not None), np.int32(bias is not None),
        ))  # fmt: skip

    @register("batch_norm_backward", backend)
    def batch_norm_backward(
        grad_y, x, mean, var, weight, grad_x, grad_weight, grad_bias, eps, training
    ) -> None:
        _, C, L = x.shape
        coefficients = runtime.xp.empty((4, C), np.float64)
        per_channel(x, "fastcnn::batch_norm_backward_sums<{T}>",
                    (grad_y, x, float64(mean), float64(var), grad_weight, grad_bias,
                     coefficients),
                    (np.float64(eps), np.int32(bool(training))))  # fmt: skip
        if grad_x is None:
            return
        elementwise(x, "fastcnn::batch_norm_input_gradient<{T}>", (
            grad_y, x, x if weight is None else weight, coefficients, grad_x, np.int32(C),
            np.int64(L), np.int64(x.size), np.int32(weight is not None),
            np.int32(bool(training)),
        ))  # fmt: skip
