"""Whole-model workloads of ``fastcnn bench``: a network's training step, timed as one call.

A model is one list of layers built twice from the same description, with
:mod:`fastcnn.nn` and with ``torch.nn`` (the classes named here take the same arguments
in both), so both libraries train the same network. One timed call is one training step:
forward, cross-entropy loss, backward and the optimizer's update (SGD with momentum), on
the next batch of the rotation. fastcnn's layers reuse their buffers
(``Module.reuse_buffers``); PyTorch's come back warm from its allocator.

The shapes of each layer follow from the input's through :mod:`fastcnn._shapes`, and the
FLOPs of the convolutions and linear layers are the spec table's
(:mod:`fastcnn.testing.specs`), so nothing here counts a convolution twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fastcnn import _shapes
from fastcnn.testing.specs import SPECS_BY_NAME, Case, conv_geometry

#: The direction of a training step in tasks and results (forward + backward + update).
TRAIN = "train"
#: The batch size of the "smoke" suite's model steps.
SMOKE_BATCH = 4
#: The spec-table op of each layer kind a model may use (None: a view, no kernel).
LAYER_OPS = {
    "Conv2d": "conv2d",
    "ReLU": "relu",
    "MaxPool2d": "max_pool2d",
    "Linear": "linear",
    "Flatten": None,
}
#: Layer kinds with parameters (built with the run's dtype).
PARAMETRIC = ("Conv2d", "Linear")
#: The loss of every model here (``nn.CrossEntropyLoss`` on both sides).
LOSS_OP = "cross_entropy"


@dataclass(frozen=True)
class Model:
    """A network and its training step.

    ``layers`` are ``(class name, positional arguments)`` in order, the same in
    ``fastcnn.nn`` and ``torch.nn``; ``image`` is one input's (C, H, W); ``optimizer``
    the keyword arguments of SGD.
    """

    name: str
    case: str
    layers: tuple[tuple[str, tuple], ...]
    image: tuple[int, int, int]
    classes: int
    batch: int
    optimizer: dict
    tags: tuple[str, ...] = ("train",)

    def batch_for(self, source: str, batch: int | None) -> int:
        """The batch a task runs: ``batch`` when given, else the model's own
        (``SMOKE_BATCH`` in the smoke suite)."""
        if batch is None:
            return SMOKE_BATCH if source == "sample" else self.batch
        if batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch}")
        return batch

    def describe_layers(self) -> list[str]:
        return [f"{name}({', '.join(map(str, args))})" for name, args in self.layers]


_LENET5_LAYERS = (
    ("Conv2d", (1, 6, 5)), ("ReLU", ()), ("MaxPool2d", (2,)),
    ("Conv2d", (6, 16, 5)), ("ReLU", ()), ("MaxPool2d", (2,)),
    ("Flatten", ()), ("Linear", (256, 120)), ("ReLU", ()), ("Linear", (120, 84)), ("ReLU", ()),
    ("Linear", (84, 10)),
)  # fmt: skip

LENET5 = Model(
    name="lenet5",
    case="28x28 sgd momentum",
    layers=_LENET5_LAYERS,
    image=(1, 28, 28),
    classes=10,
    batch=256,
    optimizer={"lr": 0.01, "momentum": 0.9},
)

MODELS: tuple[Model, ...] = (LENET5,)
MODELS_BY_NAME = {model.name: model for model in MODELS}


def kernels(model: Model) -> list[str]:
    """The registry names of every kernel a training step of ``model`` calls."""
    ops = dict.fromkeys([*(LAYER_OPS[name] for name, _ in model.layers), LOSS_OP])
    return [kernel for op in ops if op for kernel in SPECS_BY_NAME[op].ops if kernel]


def parametric_cases(model: Model, batch: int) -> list[tuple[str, Case]]:
    """``(spec op, case)`` of each layer with parameters, at ``batch``, in order: the
    activation's shape followed through every layer."""
    shape = (batch, *model.image)
    cases = []
    for name, args in model.layers:
        if name == "Conv2d":
            in_channels, out_channels, size = args
            weight = (out_channels, in_channels, size, size)
            case = Case(name, {"x": shape, "weight": weight, "bias": (out_channels,)})
            g = conv_geometry(case)
            cases.append(("conv2d", case))
            shape = (batch, out_channels, g.P, g.Q)
        elif name == "MaxPool2d":
            g = _shapes.pool2d_geometry(shape, args[0], None, 0, 1, False)
            shape = (batch, shape[1], g.P, g.Q)
        elif name == "Flatten":
            shape = (batch, math.prod(shape[1:]))
        elif name == "Linear":
            in_features, out_features = args
            weight = (out_features, in_features)
            case = Case(name, {"x": shape, "weight": weight, "bias": (out_features,)})
            cases.append(("linear", case))
            shape = (batch, out_features)
        elif name != "ReLU":
            raise ValueError(f"{model.name}: no shape rule for layer {name!r}")
    return cases


def step_flops(model: Model, batch: int) -> float:
    """FLOPs of one training step's convolutions and linear layers (2 per multiply-add).

    Forward, weight gradient and input gradient each cost a forward's FLOPs (the spec
    table's backward counts the two gradients), except that the first layer computes no
    input gradient: the images need none, in either library. Activations, pooling, the
    loss and the update are not counted (a few percent of the step's arithmetic).
    """
    total = 0.0
    for index, (op, case) in enumerate(parametric_cases(model, batch)):
        cost = SPECS_BY_NAME[op].cost
        forward, backward = cost(case, 4, "fwd")[0], cost(case, 4, "bwd")[0]
        total += forward + (backward - forward if index == 0 else backward)
    return float(total)


def step_bytes(model: Model, batch: int, itemsize: int) -> float:
    """Bytes one step must move at least: the batch (images and int64 labels) read, and
    SGD's read of every weight, its gradient and momentum and write of the weight and
    momentum. The activations and their gradients (11 MB each way for LeNet-5 at batch
    256) can stay in the last-level cache between layers, so they are not counted."""
    parameters = sum(
        math.prod(case.shapes["weight"]) + math.prod(case.shapes["bias"])
        for _, case in parametric_cases(model, batch)
    )
    images = batch * math.prod(model.image) * itemsize
    return float(images + 8 * batch + 5 * parameters * itemsize)


# ---------------------------------------------------------------------------- the timed step


def build(namespace, model: Model, dtype):
    """``namespace.Sequential`` of the model's layers; ``namespace`` is ``fastcnn.nn`` or
    ``torch.nn``, ``dtype`` the parameters' dtype in that library's spelling."""
    layers = [
        getattr(namespace, name)(*args, **({"dtype": dtype} if name in PARAMETRIC else {}))
        for name, args in model.layers
    ]
    return namespace.Sequential(*layers)


def make_batches(model: Model, batch: int, dtype: str, sets: int, seed: int = 0) -> list[tuple]:
    """``sets`` batches of (standard normal images, int64 class labels)."""
    rng = np.random.default_rng(seed)
    return [
        (
            rng.standard_normal((batch, *model.image)).astype(dtype),
            rng.integers(0, model.classes, batch),
        )
        for _ in range(sets)
    ]


def prepare_step(model: Model, library: str, backend: str, dtype: str, batch: int, sets: int):
    """A :class:`~fastcnn.bench.calls.PreparedCall` of one training step of ``model``."""
    batches = make_batches(model, batch, dtype, sets)
    if library == "torch":
        return _torch_step(model, dtype, batches, "cuda" if backend == "torch-cuda" else "cpu")
    return _fastcnn_step(model, backend, dtype, batches)


def _fastcnn_step(model: Model, backend: str, dtype: str, batches: list[tuple]):
    import fastcnn
    from fastcnn import nn, optim
    from fastcnn.bench.calls import PreparedCall

    fastcnn.manual_seed(0)
    network = build(nn, model, np.dtype(dtype)).reuse_buffers()
    criterion = nn.CrossEntropyLoss().reuse_buffers()
    if backend == "cuda":
        import cupy

        network.to("cuda")
        batches = [(cupy.asarray(images), cupy.asarray(labels)) for images, labels in batches]
    optimizer = optim.SGD(network.parameters(), **model.optimizer)

    def step(i: int) -> None:
        images, labels = batches[i]
        with fastcnn.use_backend(backend):
            optimizer.zero_grad(set_to_none=True)
            criterion(network(images), labels)
            # The images need no gradient: the first layer computes only its weight
            # gradient, as PyTorch's autograd does for an input that does not require grad.
            network.backward(criterion.backward(), input_grad=False)
            optimizer.step()

    return PreparedCall(lambda: step(0), step, len(batches), "out=")


def _torch_step(model: Model, dtype: str, batches: list[tuple], device: str = "cpu"):
    import torch

    from fastcnn.bench.calls import PreparedCall

    torch.manual_seed(0)
    network = build(torch.nn, model, getattr(torch, dtype)).to(device)
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(network.parameters(), **model.optimizer)
    tensors = [
        (torch.from_numpy(images).to(device), torch.from_numpy(labels).to(device))
        for images, labels in batches
    ]

    def step(i: int) -> None:
        images, labels = tensors[i]
        optimizer.zero_grad(set_to_none=True)
        criterion(network(images), labels).backward()
        optimizer.step()

    return PreparedCall(lambda: step(0), step, len(tensors), "fresh")
