"""conv2d forward and backward: fastcnn's Numba algorithms against PyTorch, side by side.

    flock /tmp/fastcnn-timing.lock python benchmarks/conv2d_vs_torch.py --tags resnet50 lenet

For each benchmark shape of the spec table (``fastcnn.testing.specs.CONV2D.bench``,
chosen by tag), prints the median time of each fastcnn algorithm and of PyTorch, the
GFLOP/s and the ratio torch time / fastcnn time (above 1: fastcnn is faster), forward
and backward (grad_x + grad_weight). Each library runs in its own process, one after the
other, with the same thread count: Numba's and PyTorch's thread pools both spin after
their work and would slow each other down in one process. Both sides are warmed up,
fastcnn writes into preallocated outputs, and both processes run with a raised
MALLOC_MMAP_THRESHOLD_ so large allocations do not page-fault on every call.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from functools import partial

import numpy as np

FLOAT = np.float32


def _cases(tags):
    from fastcnn.testing.specs import CONV2D

    return [c for c in CONV2D.bench if not tags or set(tags) & set(c.tags)]


def _median_time(run, repeats: int) -> float:
    run()  # warm-up: compile, caches, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _fastcnn_worker(args) -> dict:
    import fastcnn.functional as F
    from fastcnn.testing.specs import CONV2D

    results = {}
    for case in _cases(args.tags):
        inputs = CONV2D.make_inputs(case, FLOAT, np.random.default_rng(0))
        x, w, bias = inputs["x"], inputs["weight"], inputs.get("bias")
        y = np.empty(F.conv2d(x, w, bias, **case.params).shape, FLOAT)
        grad_y = np.random.default_rng(1).standard_normal(y.shape).astype(FLOAT)
        grads = (np.empty_like(x), np.empty_like(w), None if bias is None else np.empty_like(bias))
        row = {}
        for algo in args.algos:
            forward = partial(F.conv2d, x, w, bias, **case.params, algo=algo, out=y)
            row[f"fwd {algo}"] = _median_time(forward, args.repeats)
            if args.backward:
                backward = partial(
                    F.conv2d_backward, grad_y, x, w, **case.params,
                    bias=bias is not None, algo=algo, out=grads,
                )  # fmt: skip
                row[f"bwd {algo}"] = _median_time(backward, args.repeats)
        results[case.name] = row
    return results


def _torch_worker(args) -> dict:
    import torch

    from fastcnn.testing.specs import CONV2D, _conv_geometry

    torch.set_num_threads(args.threads)
    results = {}
    with torch.no_grad():
        for case in _cases(args.tags):
            inputs = CONV2D.make_inputs(case, FLOAT, np.random.default_rng(0))
            t = {k: torch.from_numpy(v) for k, v in inputs.items()}
            g = _conv_geometry(case)
            y = CONV2D.torch_forward(torch.nn.functional, t, case.params)
            forward = partial(CONV2D.torch_forward, torch.nn.functional, t, case.params)
            row = {"fwd": _median_time(forward, args.repeats)}
            if args.backward:
                bias = "bias" in t
                # The bench shapes pad symmetrically, so (pad_h, pad_w) is PyTorch's padding.
                backward = partial(
                    torch.ops.aten.convolution_backward, torch.randn_like(y), t["x"], t["weight"],
                    [g.K] if bias else None, [g.stride_h, g.stride_w], [g.pad_h, g.pad_w],
                    [g.dilation_h, g.dilation_w], False, [0, 0], g.groups, [True, True, bias],
                )  # fmt: skip
                row["bwd"] = _median_time(backward, args.repeats)
            results[case.name] = row
    return results


def _run_worker(kind: str, argv: list[str], threads: int) -> dict:
    env = dict(os.environ)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(10**12))
    env.update(NUMBA_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    command = [sys.executable, __file__, "--worker", kind, *argv]
    output = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


def _geomean(values):
    values = [v for v in values if v > 0]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tags", nargs="*", default=["resnet50", "lenet", "depthwise"])
    parser.add_argument("--algos", nargs="*", default=["auto"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-backward", dest="backward", action="store_false")
    parser.add_argument("--worker", choices=("fastcnn", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker = _fastcnn_worker if args.worker == "fastcnn" else _torch_worker
        print(json.dumps(worker(args)))
        return

    argv = ["--tags", *args.tags, "--algos", *args.algos, "--repeats", str(args.repeats)]
    argv += ["--threads", str(args.threads)] + ([] if args.backward else ["--no-backward"])
    ours = _run_worker("fastcnn", argv, args.threads)
    peer = _run_worker("torch", argv, args.threads)

    from fastcnn.testing.specs import CONV2D

    directions = ("fwd", "bwd") if args.backward else ("fwd",)
    ratios = {(d, a): [] for d in directions for a in args.algos}
    print(f"{args.threads} threads, float32; GFLOP/s, and ratio = torch time / fastcnn time")
    for case in _cases(args.tags):
        for direction in directions:
            flops = CONV2D.cost(case, 4, direction)[0]
            torch_time = peer[case.name][direction]
            cells = []
            for algo in args.algos:
                ours_time = ours[case.name][f"{direction} {algo}"]
                ratios[direction, algo].append(torch_time / ours_time)
                cells.append(
                    f"{algo} {flops / ours_time / 1e9:6.0f} ({torch_time / ours_time:4.2f}x)"
                )
            print(
                f"{case.name:28s} {direction}  torch {flops / torch_time / 1e9:6.0f}  "
                + "  ".join(cells)
            )
    for (direction, algo), values in ratios.items():
        print(f"geomean ratio {direction} {algo}: {_geomean(values):.2f}")


if __name__ == "__main__":
    main()
