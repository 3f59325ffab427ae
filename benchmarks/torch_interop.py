"""fastcnn inside PyTorch: a LeNet-5 training step, and what a custom op costs per call.

Times one training step of ``fastcnn bench``'s LeNet-5 (forward, cross-entropy,
backward, SGD with momentum; batch 256, float32) three ways, each library in a process of
its own, with ``fastcnn bench``'s allocator settings (a warm heap on both sides):

- ``torch.nn``: PyTorch's own layers;
- ``fastcnn.torch``: the same ``torch.nn`` model after ``fastcnn.torch.convert`` (fastcnn's
  kernels as custom ops, PyTorch's autograd, loss and optimizer);
- ``fastcnn.nn``: fastcnn's own layers, loss and optimizer (no PyTorch).

In the ``fastcnn.torch`` process fastcnn's kernels run on ``--threads`` and PyTorch's
own ops (loss, update, autograd's sums) on ``--torch-threads`` (1 by default). Then the
overhead of one custom-op call: ``relu`` of a one-element tensor through
``fastcnn.torch`` (with and without a tensor that requires grad) against calling the
kernel through ``fastcnn.functional`` on a NumPy array, and ``torch.relu``::

    python benchmarks/torch_interop.py --threads 2 --batch 256
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import timeit

import numpy as np

LIBRARIES = ("torch.nn", "fastcnn.torch", "fastcnn.nn")


def _fastcnn_torch_step(batches, dtype: str, backend: str | None):
    import torch

    import fastcnn.torch
    from fastcnn.bench.calls import PreparedCall
    from fastcnn.bench.models import LENET5, build

    torch.manual_seed(0)
    network = fastcnn.torch.convert(build(torch.nn, LENET5, getattr(torch, dtype)), backend=backend)
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(network.parameters(), **LENET5.optimizer)
    tensors = [(torch.from_numpy(images), torch.from_numpy(labels)) for images, labels in batches]

    def step(i: int) -> None:
        images, labels = tensors[i]
        optimizer.zero_grad(set_to_none=True)
        criterion(network(images), labels).backward()
        optimizer.step()

    return PreparedCall(lambda: step(0), step, len(tensors), "fresh")


def time_step(library: str, batch: int, dtype: str, backend: str, min_time: float) -> dict:
    """The median seconds of one training step of ``library`` (in this process)."""
    from fastcnn.bench.models import LENET5, make_batches, prepare_step
    from fastcnn.bench.timing import measure

    sets = 4
    if library == "torch.nn":
        call = prepare_step(LENET5, "torch", "torch", dtype, batch, sets)
    elif library == "fastcnn.nn":
        call = prepare_step(LENET5, "fastcnn", backend, dtype, batch, sets)
    else:
        call = _fastcnn_torch_step(make_batches(LENET5, batch, dtype, sets), dtype, backend)
    timing = measure(call.first_call, call.timed_call, call.input_sets, min_time=min_time)
    return {"median_s": timing.median_s, "runs": len(timing.times_s)}


def time_overhead(backend: str) -> dict:
    """Microseconds per call of a one-element relu, best of 5 repeats."""
    import torch

    import fastcnn.functional as F
    import fastcnn.torch as ft

    tensor, array = torch.ones(1), np.ones(1, np.float32)
    leaf = torch.ones(1, requires_grad=True)

    def best(call, number=20000) -> float:
        call()
        return min(timeit.repeat(call, number=number, repeat=5)) / number * 1e6

    return {
        "fastcnn.functional.relu (NumPy)": best(lambda: F.relu(array, backend=backend)),
        "fastcnn.functional.relu (torch.Tensor, DLPack)": best(
            lambda: F.relu(tensor, backend=backend)
        ),
        "fastcnn.torch.relu": best(lambda: ft.relu(tensor, backend=backend)),
        "fastcnn.torch.relu (requires grad)": best(lambda: ft.relu(leaf, backend=backend)),
        "torch.relu": best(lambda: torch.relu(tensor)),
    }


def _child(arguments) -> dict:
    import torch

    import fastcnn

    fastcnn.set_num_threads(arguments.threads)
    # fastcnn.torch: fastcnn's kernels do the work on --threads; PyTorch's own pool (the
    # loss, the update, autograd's sums) on --torch-threads, one by default: two OpenMP
    # pools spin-waiting on the same cores slow the step 2-3x (BENCHMARKS.md).
    fastcnn_torch = arguments.library == "fastcnn.torch"
    torch.set_num_threads(arguments.torch_threads if fastcnn_torch else arguments.threads)
    if arguments.library == "overhead":
        return time_overhead(arguments.backend)
    return time_step(
        arguments.library, arguments.batch, arguments.dtype, arguments.backend, arguments.min_time
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--torch-threads", type=int, default=1, help="PyTorch's threads beside fastcnn.torch"
    )
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--backend", default="numba", help="fastcnn's CPU backend")
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds of timed steps")
    parser.add_argument("--library", choices=(*LIBRARIES, "overhead"), help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.library:  # one measurement, in this process
        print(json.dumps(_child(arguments)))
        return {}
    from fastcnn.bench.runner import ALLOCATOR_ENVIRONMENT

    # fastcnn bench's allocator settings (no fresh output page-faults in), unless given.
    environment = {**ALLOCATOR_ENVIRONMENT, **os.environ}
    environment["NUMBA_NUM_THREADS"] = str(arguments.threads)
    results = {}
    for library in (*LIBRARIES, "overhead"):
        command = [sys.executable, __file__, *(argv or sys.argv[1:]), "--library", library]
        output = subprocess.run(
            command, capture_output=True, text=True, check=True, env=environment
        ).stdout
        results[library] = json.loads(output.strip().splitlines()[-1])
    peer = results["torch.nn"]["median_s"]
    print(f"LeNet-5 training step, batch {arguments.batch}, {arguments.dtype}, "
          f"{arguments.threads} threads (PyTorch's beside fastcnn.torch: "
          f"{arguments.torch_threads}), fastcnn backend {arguments.backend}")  # fmt: skip
    print("| library | step (ms) | vs torch.nn |")
    print("|---|---:|---:|")
    for library in LIBRARIES:
        seconds = results[library]["median_s"]
        print(f"| {library} | {seconds * 1e3:.1f} | {peer / seconds:.2f}x |")
    print("\n| one-element relu | µs per call |")
    print("|---|---:|")
    for name, micros in results["overhead"].items():
        print(f"| {name} | {micros:.1f} |")
    return results


if __name__ == "__main__":
    main()
