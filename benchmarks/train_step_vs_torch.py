"""A whole LeNet-5 training step (forward, loss, backward, SGD) at batch 256: fastcnn vs PyTorch.

Each library runs in its own process (their thread pools spin and slow each other when
mixed), at the same thread count, with glibc's allocator kept warm on both sides
(MALLOC_MMAP_THRESHOLD_ raised, so large fresh arrays do not page-fault every step).
fastcnn's layers reuse their buffers (``Module.reuse_buffers``), which PyTorch cannot.

    python benchmarks/train_step_vs_torch.py [--batch 256] [--steps 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np


def fastcnn_step(batch: int, steps: int, threads: int, backend: str | None) -> list[float]:
    import fastcnn
    from fastcnn import nn, optim

    fastcnn.set_num_threads(threads)
    fastcnn.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(256, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, 10),
    ).reuse_buffers()  # fmt: skip
    criterion = nn.CrossEntropyLoss().reuse_buffers()
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch, 1, 28, 28), dtype=np.float32)
    labels = rng.integers(0, 10, batch)

    def step() -> None:
        optimizer.zero_grad()
        criterion(model(images), labels)
        # The images need no gradient: PyTorch's autograd skips conv1's input gradient.
        model.backward(criterion.backward(), input_grad=False)
        optimizer.step()

    context = fastcnn.use_backend(backend) if backend else _nothing()
    with context:
        return _time(step, steps)


def torch_step(batch: int, steps: int, threads: int) -> list[float]:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    tnn = torch.nn
    model = tnn.Sequential(
        tnn.Conv2d(1, 6, 5), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(6, 16, 5), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Flatten(), tnn.Linear(256, 120), tnn.ReLU(), tnn.Linear(120, 84), tnn.ReLU(),
        tnn.Linear(84, 10),
    )  # fmt: skip
    criterion = tnn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(batch, 1, 28, 28)
    labels = torch.randint(0, 10, (batch,))

    def step() -> None:
        optimizer.zero_grad()
        criterion(model(images), labels).backward()
        optimizer.step()

    return _time(step, steps)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _time(step, steps: int) -> list[float]:
    for _ in range(3):  # warm-up: compilation, workspaces, allocator
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--backend", default=None, help="fastcnn backend (default: automatic)")
    parser.add_argument("--worker", choices=("fastcnn", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        if args.worker == "fastcnn":
            times = fastcnn_step(args.batch, args.steps, args.threads, args.backend)
        else:
            times = torch_step(args.batch, args.steps, args.threads)
        print(json.dumps(times))
        return

    env = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": str(1 << 40),
        "MALLOC_TRIM_THRESHOLD_": str(1 << 40),
    }
    medians = {}
    for library in ("fastcnn", "torch"):
        command = [sys.executable, __file__, "--worker", library, "--batch", str(args.batch),
                   "--steps", str(args.steps), "--threads", str(args.threads)]  # fmt: skip
        if args.backend:
            command += ["--backend", args.backend]
        output = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        medians[library] = statistics.median(json.loads(output.stdout.splitlines()[-1]))
    print(f"LeNet-5 training step, batch {args.batch}, {args.threads} threads, warm allocator")
    for library, seconds in medians.items():
        print(f"  {library:<8} {seconds * 1e3:8.2f} ms/step")
    print(f"  ratio torch/fastcnn: {medians['torch'] / medians['fastcnn']:.2f}")


if __name__ == "__main__":
    main()
