"""Train a PyTorch LeNet-style CNN on fastcnn's kernels: one line, ``fastcnn.torch.convert``.

The model is plain ``torch.nn`` and the loop plain PyTorch (autograd, ``torch.optim.SGD``,
``torch.nn.functional.cross_entropy``); ``fastcnn.torch.convert(model)`` swaps its Conv2d,
ReLU, MaxPool2d and Linear layers for fastcnn's (custom ops with autograd), keeping the
weights. The data is scikit-learn's bundled ``load_digits`` (1797 grey 8x8 digits,
nothing is downloaded), split 80/20. Each ``--log-every`` steps print the mean training
loss; the end prints the test accuracy (about 95% after the default 300 steps).

``--compile`` runs the model under ``torch.compile(fullgraph=True)`` (the fastcnn ops are
custom ops: no graph break); ``--backend`` names a fastcnn backend (default: the fastest
for the tensors); ``--device cuda`` trains on the GPU on fastcnn's ``cuda`` backend, on
PyTorch's current stream.

    python examples/torch_lenet.py
    python examples/torch_lenet.py --steps 100 --compile
    python examples/torch_lenet.py --backend cpp
"""

from __future__ import annotations

import argparse
import time

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import fastcnn.torch


def lenet() -> torch.nn.Sequential:
    """Two conv-ReLU-pool stages and a linear classifier, for 1x8x8 inputs."""
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 2 * 2, 10),
    )  # fmt: skip


def load_data(seed: int, device: str):
    """Train and test images as (N, 1, 8, 8) float32 tensors in [0, 1], and int64 labels."""
    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None]
    labels = torch.tensor(digits.target, dtype=torch.int64)
    split = train_test_split(
        images, labels, test_size=0.2, random_state=seed, stratify=digits.target
    )
    return [tensor.to(device) for tensor in split]


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="SGD steps (default 300)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default=None, help="a fastcnn backend (default: fastest)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--compile", action="store_true", help="torch.compile(fullgraph=True)")
    parser.add_argument("--log-every", type=int, default=50)
    arguments = parser.parse_args(argv)
    if arguments.steps < 1:
        parser.error(f"--steps must be positive, got {arguments.steps}")
    return arguments


def train(arguments: argparse.Namespace) -> dict:
    """Train; return the logged mean losses and the test accuracy."""
    torch.manual_seed(arguments.seed)
    train_images, test_images, train_labels, test_labels = load_data(
        arguments.seed, arguments.device
    )
    model = fastcnn.torch.convert(lenet(), backend=arguments.backend).to(arguments.device)
    network = torch.compile(model, fullgraph=True) if arguments.compile else model
    optimizer = torch.optim.SGD(model.parameters(), lr=arguments.lr, momentum=0.9)
    losses, window, started = [], [], time.perf_counter()
    order = torch.randperm(len(train_images), device=arguments.device)
    for step in range(1, arguments.steps + 1):
        start = (step - 1) * arguments.batch_size % len(train_images)
        batch = order[start : start + arguments.batch_size]
        loss = torch.nn.functional.cross_entropy(network(train_images[batch]), train_labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        window.append(loss.item())
        if step % arguments.log_every == 0 or step == arguments.steps:
            losses.append(sum(window) / len(window))
            window = []
            print(f"step {step:4d}  loss {losses[-1]:.4f}  {time.perf_counter() - started:.1f} s")
    model.eval()
    with torch.no_grad():
        predictions = network(test_images).argmax(dim=1)
    accuracy = (predictions == test_labels).float().mean().item()
    print(f"test accuracy {accuracy:.3f} ({len(test_images)} images)")
    return {"losses": losses, "test_accuracy": accuracy}


def main(argv: list[str] | None = None) -> float:
    return train(parse_arguments(argv))["test_accuracy"]


if __name__ == "__main__":
    main()
