"""Time the memory-bound ops (pooling, activations) of one backend against PyTorch.

Each library runs in its own process (their thread pools would otherwise spin against
each other), both at 2 threads, both with outputs preallocated or glibc's allocator kept
warm (MALLOC_MMAP_THRESHOLD_ raised), on the spec table's 32x64x112x112 float32 shapes.
Each process also times a large ``np.copyto`` so every figure can be put next to the
copy bandwidth of the same moment. GB/s counts the bytes an op must move at least: the
forward reads x and writes y; a backward reads grad_y and x (or y) and writes grad_x.

    flock /tmp/fastcnn-timing.lock python benchmarks/memory_ops_vs_torch.py [op ...]
"""

from __future__ import annotations

import json
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
}
# name: (pooling parameters or None, bytes moved in units of x's / y's size)
POOLS = {
    "max_pool 3x3/2": ("max", {"kernel_size": 3, "stride": 2, "padding": 1}),
    "avg_pool 2x2": ("avg", {"kernel_size": 2, "stride": 2}),
}
ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "tanh")
OPS = (*POOLS, *ACTIVATIONS)
ROUNDS = 3


def _best_seconds(function, repeats: int = 5) -> float:
    """The fastest of a few calls: the cores are shared, so slower calls measure others' work."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def _copy_bandwidths(library: str, x) -> dict[str, float]:
    """np.copyto (one thread) in both processes; torch's copy_ (2 threads) in torch's only,
    so that torch's threads never run in fastcnn's process. Both count read + write."""
    destination = np.empty_like(x)
    rates = {"copy": 2 * x.nbytes / _best_seconds(lambda: np.copyto(destination, x))}
    if library == "torch":
        import torch

        torch.set_num_threads(THREADS)
        source, target = torch.from_numpy(x), torch.from_numpy(destination)
        rates["copy 2 threads"] = 2 * x.nbytes / _best_seconds(lambda: target.copy_(source))
    return rates


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


def worker(library: str, ops: list[str]) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SHAPE, dtype=np.float32)
    results = _copy_bandwidths(library, x)
    for op in ops:

        def grad_y_of(y):
            return rng.standard_normal(y.shape, dtype=np.float32)

        make = _fastcnn_cases if library == "fastcnn" else _torch_cases
        for direction, function, nbytes in make(op, x, grad_y_of):
            results[f"{op} {direction}"] = nbytes / _best_seconds(function)
    print(json.dumps(results))


def main(ops: list[str]) -> None:
    environment = {**os.environ, **ENVIRONMENT}
    runs: dict[str, dict[str, float]] = {"fastcnn": {}, "torch": {}}
    for _ in range(ROUNDS):  # alternate, keep each figure's best round
        for library, best in runs.items():
            output = subprocess.run(
                [sys.executable, __file__, "--worker", library, *ops],
                env=environment,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            for name, rate in json.loads(output.strip().splitlines()[-1]).items():
                best[name] = max(best.get(name, 0.0), rate)
    ours, theirs = runs["fastcnn"], runs["torch"]
    copy = max(ours["copy"], theirs["copy"])
    threaded = theirs["copy 2 threads"]
    print(
        f"copy, GB/s: np.copyto {copy / 1e9:.1f} (the % copy column), "
        f"torch copy_ at {THREADS} threads {threaded / 1e9:.1f} (the % copy2 column)"
    )
    print(f"{'op':<28}{'ours GB/s':>10}{'torch GB/s':>11}{'ratio':>7}{'% copy':>8}{'% copy2':>8}")
    for name, rate in ours.items():
        if name.startswith("copy"):
            continue
        peer = theirs.get(name) or theirs.get(name.replace("bwd", "bwd, indices"))
        ratio = f"{rate / peer:7.2f}" if peer else f"{'':>7}"
        peer_text = f"{peer / 1e9:11.1f}" if peer else f"{'':>11}"
        print(
            f"{name:<28}{rate / 1e9:10.1f}{peer_text}{ratio}"
            f"{100 * rate / copy:7.0f}%{100 * rate / threaded:7.0f}%"
        )


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3:])
    else:
        main(sys.argv[1:] or list(OPS))
