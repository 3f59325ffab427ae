"""The op families of the CUDA backends: one launch-code module and one .cu file each."""

from __future__ import annotations

import importlib

from fastcnn.backends.cuda._runtime import Runtime, Source

#: Modules of fastcnn.backends.cuda, each with ``SOURCE`` (its kernels/cuda file, or None
#: where the family uses the array module's own routines) and ``register_kernels``.
FAMILIES = ("activation", "batch_norm", "conv2d", "linear", "pool2d", "softmax")


def modules():
    return [importlib.import_module(f"fastcnn.backends.cuda.{name}") for name in FAMILIES]


def sources() -> list[Source]:
    """Every kernel source, for the compile check and the static profile."""
    return [module.SOURCE for module in modules() if getattr(module, "SOURCE", None)]


def register_all(backend: str, runtime: Runtime) -> None:
    for module in modules():
        module.register_kernels(backend, runtime)
