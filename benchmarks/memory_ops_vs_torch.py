"""Time the memory-bound ops (pooling, activations) of one backend against PyTorch.

Both libraries run at 2 threads, with outputs preallocated or glibc's allocator kept warm
(MALLOC_MMAP_THRESHOLD_ raised), on the spec table's 32x64x112x112 float32 shapes. The
cores are shared with other work, so the two sides are timed in one process, call for
call in turn, and each keeps its fastest call: both see the same machine. Their OpenMP
pools wait passively (OMP_WAIT_POLICY=PASSIVE), so neither spins on the cores while the
other runs. A large ``np.copyto`` (one thread) and torch's ``copy_`` (2 threads) are timed
the same way, so every figure stands next to the copy bandwidth of the same moment. GB/s
counts the bytes an op must move at least: the forward reads x and writes y; a backward
reads grad_y and x (or y) and writes grad_x.

    flock /tmp/fastcnn-timing.lock python benchmarks/memory_ops_vs_torch.py [op ...]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout

SHAPE = (32, 64, 112, 112)
THREADS = 2
ENVIRONMENT = {
    "MALLOC_MMAP_THRESHOLD_": str(1 << 32),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 33),
    "OMP_NUM_THREADS": str(THREADS),
    "NUMBA_NUM_THREADS": str(THREADS),
    "OMP_WAIT_POLICY": "PASSIVE",
}
# name: (pooling parameters or None, bytes moved in units of x's / y's size)
POOLS = {
    "max_pool 3x3/2": ("max", {"kernel_size": 3, "stride": 2, "padding": 1}),
    "avg_pool 2x2": ("avg", {"kernel_size": 2, "stride": 2}),
}
ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "tanh")
OPS = (*POOLS, *ACTIVATIONS)
REPEATS = 9


def _best_of_each(functions, repeats: int = REPEATS) -> list[float]:
    """The fastest call of each function, calling them in turn; seconds."""
    best = [float("inf")] * len(functions)
    for function in functions:
        function()
    for _ in range(repeats):
        for index, function in enumerate(functions):
            start = time.perf_counter()
            function()
            best[index] = min(best[index], time.perf_counter() - start)
    return best


def _copies(x):
    """np.copyto (one thread) and torch's copy_ (2 threads), as timed functions."""
    import torch

    destination = np.empty_like(x)
    source, target = torch.from_numpy(x), torch.from_numpy(destination)
    return [lambda: np.copyto(destination, x), lambda: target.copy_(source)]


def _pool_geometry(params):
    from fastcnn import _shapes

    return _shapes.pool2d_geometry(
        SHAPE, params["kernel_size"], params.get("stride"), params.get("padding", 0), 1, False
    )


def _fastcnn_cases(op: str, x, grad_y_of):
    """``[(direction, callable, bytes)]`` for fastcnn's numba backend."""
    import fastcnn.functional as F

    size = x.nbytes
    if op in POOLS:
        kind, params = POOLS[op]
        forward = getattr(F, f"{kind}_pool2d")
        backward = getattr(F, f"{kind}_pool2d_backward")
        y = forward(x, **params, backend="numba")
        grad_y = grad_y_of(y)
        grad_x = np.empty_like(x)
        cases = [
            ("fwd", lambda: forward(x, **params, out=y, backend="numba"), size + y.nbytes),
            (
                "bwd",
                lambda: backward(grad_y, x, **params, out=grad_x, backend="numba"),
                2 * size + y.nbytes,
            ),
        ]
        if kind == "max":
            _, indices = F.max_pool2d(x, **params, return_indices=True, backend="numba")
            cases.append(
                (
                    "bwd, indices",
                    lambda: F.max_pool2d_backward(
                        grad_y, x, **params, indices=indices, out=grad_x, backend="numba"
                    ),
                    2 * size + y.nbytes,
                )
            )
        return cases
    scalars = (0.2,) if op == "leaky_relu" else ()
    forward = getattr(F, op)
    backward = getattr(F, f"{op}_backward")
    y = forward(x, *scalars, backend="numba")
    saved = x if op in ("relu", "leaky_relu") else y
    grad_y = grad_y_of(y)
    grad_x = np.empty_like(x)
    return [
        ("fwd", lambda: forward(x, *scalars, out=y, backend="numba"), 2 * size),
        ("bwd", lambda: backward(grad_y, saved, *scalars, out=grad_x, backend="numba"), 3 * size),
    ]


def _torch_cases(op: str, x, grad_y_of):
    import torch
    import torch.nn.functional as tf

    torch.set_num_threads(THREADS)
    x = torch.from_numpy(x)
    size = x.numel() * x.element_size()
    if op in POOLS:
        kind, params = POOLS[op]
        g = _pool_geometry(params)
        k, s, p = params["kernel_size"], params.get("stride", params["kernel_size"]), 0
        p = params.get("padding", 0)
        y_bytes = x.element_size() * g.N * g.C * g.P * g.Q
        if kind == "max":
            y, indices = tf.max_pool2d(x, k, s, p, return_indices=True)
            grad_y = torch.from_numpy(grad_y_of(y.numpy()))
            aten = torch.ops.aten
            return [
                ("fwd", lambda: tf.max_pool2d(x, k, s, p), size + y_bytes),
                (
                    "bwd, indices",
                    lambda: aten.max_pool2d_with_indices_backward(
                        grad_y, x, [k, k], [s, s], [p, p], [1, 1], False, indices
                    ),
                    2 * size + y_bytes,
                ),
            ]
        y = tf.avg_pool2d(x, k, s, p)
        grad_y = torch.from_numpy(grad_y_of(y.numpy()))
        return [
            ("fwd", lambda: tf.avg_pool2d(x, k, s, p), size + y_bytes),
            (
                "bwd",
                lambda: torch.ops.aten.avg_pool2d_backward(
                    grad_y, x, [k, k], [s, s], [p, p], False, True, None
                ),
                2 * size + y_bytes,
            ),
        ]
    aten = torch.ops.aten
    y = torch.empty_like(x)
    grad_x = torch.empty_like(x)
    grad_y = torch.from_numpy(grad_y_of(x.numpy()))
    if op == "relu":
        forward = lambda: torch.relu(x)  # noqa: E731  (no out= variant)
        backward = lambda: aten.threshold_backward(grad_y, x, 0)  # noqa: E731
    elif op == "leaky_relu":
        forward = lambda: tf.leaky_relu(x, 0.2)  # noqa: E731
        backward = lambda: aten.leaky_relu_backward(grad_y, x, 0.2, False)  # noqa: E731
    else:
        function = getattr(torch, op)
        saved = function(x)
        forward = lambda: function(x, out=y)  # noqa: E731
        backward_op = getattr(aten, f"{op}_backward").grad_input
        backward = lambda: backward_op(grad_y, saved, grad_input=grad_x)  # noqa: E731
    return [("fwd", forward, 2 * size), ("bwd", backward, 3 * size)]


def worker(ops: list[str]) -> None:
    import torch

    torch.set_num_threads(THREADS)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SHAPE, dtype=np.float32)
    copy_seconds = _best_of_each(_copies(x))
    copy = [2 * x.nbytes / seconds for seconds in copy_seconds]
    print(
        f"copy, GB/s: np.copyto {copy[0] / 1e9:.1f} (the % copy column), "
        f"torch copy_ at {THREADS} threads {copy[1] / 1e9:.1f} (the % copy2 column)"
    )
    print(f"{'op':<28}{'ours GB/s':>10}{'torch GB/s':>11}{'ratio':>7}{'% copy':>8}{'% copy2':>8}")

    def grad_y_of(y):
        return rng.standard_normal(y.shape, dtype=np.float32)

    for op in ops:
        ours = _fastcnn_cases(op, x, grad_y_of)
        theirs = dict((direction, (f, n)) for direction, f, n in _torch_cases(op, x, grad_y_of))
        for direction, function, nbytes in ours:
            peer = theirs.get(direction) or theirs.get(direction.replace("bwd", "bwd, indices"))
            functions = [function] + ([peer[0]] if peer else [])
            seconds = _best_of_each(functions)
            rate = nbytes / seconds[0]
            peer_rate = peer[1] / seconds[1] if peer else None
            ratio = f"{rate / peer_rate:7.2f}" if peer else f"{'':>7}"
            peer_text = f"{peer_rate / 1e9:11.1f}" if peer else f"{'':>11}"
            print(
                f"{op + ' ' + direction:<28}{rate / 1e9:10.1f}{peer_text}{ratio}"
                f"{100 * rate / copy[0]:7.0f}%{100 * rate / copy[1]:7.0f}%",
                flush=True,
            )


def main(ops: list[str]) -> None:
    """Re-run in a fresh process whose environment sets threads, waiting and allocator."""
    environment = {**os.environ, **ENVIRONMENT}
    subprocess.run([sys.executable, __file__, "--worker", *ops], env=environment, check=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2:] or list(OPS))
    else:
        main(sys.argv[1:] or list(OPS))
