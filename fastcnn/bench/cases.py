"""What ``fastcnn bench`` measures: suites of workloads, and one task per (workload,
direction, library, backend, algorithm).

A workload is either one op of the spec table in one direction (kind ``"op"``: every
shape and cost from :mod:`fastcnn.testing.specs`; nothing here names a shape) or a
whole model's training step (kind ``"model"``, direction ``"train"``: the networks of
:mod:`fastcnn.bench.models`). A task is a small JSON-able record that a worker process
resolves back to its workload (:func:`describe`, :func:`resolve_case`), so parent and
worker never ship arrays.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from fastcnn.bench.models import MODELS, MODELS_BY_NAME, TRAIN, Model, step_bytes, step_flops
from fastcnn.testing.specs import SPECS, SPECS_BY_NAME, Case, OpSpec

#: Suites named by the spec table's bench tags and the models' tags, plus "smoke" and "all".
SUITES = (
    "quick", "resnet50", "vgg", "lenet", "depthwise", "deepbench", "memory", "loss", "classifier",
    "train", "smoke", "all",
)  # fmt: skip
#: The directions an op case can be timed in; "both" on the command line means these two.
DIRECTIONS = ("fwd", "bwd")
#: The peer library's name as it appears in tasks and results, and its backend on the CPU.
PEER = "torch"
#: The peer's backend on the GPU: PyTorch on CUDA (cuDNN convolutions, TF32 off).
PEER_GPU = "torch-cuda"


def device_of(backend: str) -> str:
    """``"gpu"`` for the backends that run there (fastcnn's and the peer's), else ``"cpu"``."""
    return "gpu" if backend in ("cuda", PEER_GPU) else "cpu"


def peer_backend(device: str) -> str:
    """The peer's backend on ``device``: what a fastcnn result there is compared with."""
    return PEER_GPU if device == "gpu" else PEER


@dataclass(frozen=True)
class Task:
    """One measurement: a workload, in one direction, on one library/backend/algorithm.

    For ``kind == "op"``, ``op`` and ``case`` name a spec and its case, and ``source``
    says where the case lives in its :class:`OpSpec`: ``"bench"`` (the benchmark shapes)
    or ``"sample"`` (the small test cases the "smoke" suite uses). For ``kind ==
    "model"``, ``op`` is the model's name, ``case`` its step, the direction ``"train"``
    and ``source`` ``"sample"`` for the smoke suite's small batch. ``batch`` replaces
    the batch size N when not ``None``.
    """

    op: str
    case: str
    source: str
    direction: str  # "fwd", "bwd" (kind "op") or "train" (kind "model")
    dtype: str
    library: str  # "fastcnn" or "torch"
    backend: str  # "numba", "cpp", "reference", "cuda"; the peer's "torch" or "torch-cuda"
    algo: str | None = None
    batch: int | None = None
    kind: str = "op"

    @property
    def variant(self) -> str:
        """``backend`` or ``backend:algo``, as the table shows it."""
        return f"{self.backend}:{self.algo}" if self.algo else self.backend

    @property
    def case_key(self) -> str:
        """Identifies the work, whoever does it: op, case, direction, dtype, batch."""
        batch = describe(self).batch
        return f"{self.op}/{self.case}/{self.direction}/{self.dtype}/N{batch}"

    @property
    def key(self) -> str:
        """Identifies the measurement across runs (``--compare`` matches on it)."""
        return f"{self.case_key}/{self.variant}"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, record: dict) -> Task:
        """The task of a task or result record (fields it lacks take their defaults)."""
        return cls(**{f.name: record[f.name] for f in dataclasses.fields(cls) if f.name in record})


@dataclass(frozen=True)
class Workload:
    """What a task measures, whoever runs it: its batch, tags, shapes and parameters, and
    the cost of one timed call (``flops``; ``bytes`` it must move at least)."""

    batch: int
    tags: tuple[str, ...]
    shapes: dict[str, tuple[int, ...]]
    params: dict
    flops: float
    bytes: float


def describe(task: Task) -> Workload:
    """The workload ``task`` names, with its batch override applied."""
    itemsize = np.dtype(task.dtype).itemsize
    if task.kind == "model":
        model = MODELS_BY_NAME[task.op]
        batch = model.batch_for(task.source, task.batch)
        return Workload(
            batch=batch,
            tags=model.tags,
            shapes={"x": (batch, *model.image), "labels": (batch,)},
            params={"layers": model.describe_layers(), "optimizer": "SGD", **model.optimizer},
            flops=step_flops(model, batch),
            bytes=step_bytes(model, batch, itemsize),
        )
    spec, case = resolve_case(task.op, task.source, task.case, task.batch)
    flops, nbytes = spec.cost(case, itemsize, task.direction)
    return Workload(
        batch=batch_size(task.op, case),
        tags=case.tags,
        shapes=case.shapes,
        params=case.params,
        flops=float(flops),
        bytes=float(nbytes),
    )


def _first_sample_case(spec: OpSpec) -> Case:
    """The first non-empty sample case of ``spec`` (tiny shapes, for the smoke suite)."""
    for case in spec.cases:
        if all(dim > 0 for shape in case.shapes.values() for dim in shape):
            return case
    raise ValueError(f"{spec.name} has no non-empty sample case")


def _check_selection(suite: str, ops: list[str] | None) -> None:
    if suite not in SUITES:
        raise ValueError(f"suite must be one of {SUITES}, got {suite!r}")
    if ops:
        known = {**SPECS_BY_NAME, **MODELS_BY_NAME}
        unknown = [name for name in ops if name not in known]
        if unknown:
            raise ValueError(f"unknown ops {unknown}; known: {sorted(known)}")


def suite_cases(suite: str, ops: list[str] | None = None) -> list[tuple[OpSpec, str, Case]]:
    """``(spec, source, case)`` for every op case of ``suite``, in spec-table order.

    ``"smoke"`` takes the first sample case of every op that has benchmark cases;
    ``"all"`` takes every benchmark case; the others take the cases tagged with them.
    ``ops`` keeps only the named ops and models (unknown names raise ``ValueError``).
    """
    _check_selection(suite, ops)
    selected = []
    for spec in SPECS:
        if ops and spec.name not in ops:
            continue
        if spec.cost is None or not spec.bench:
            continue
        if suite == "smoke":
            selected.append((spec, "sample", _first_sample_case(spec)))
            continue
        for case in spec.bench:
            if suite == "all" or suite in case.tags:
                selected.append((spec, "bench", case))
    return selected


def suite_models(suite: str, ops: list[str] | None = None) -> list[tuple[Model, str]]:
    """``(model, source)`` for every model step of ``suite``: the models tagged with it,
    all of them in ``"all"``, and in ``"smoke"`` at a small batch (source ``"sample"``).
    ``ops`` keeps only the named ops and models."""
    _check_selection(suite, ops)
    return [
        (model, "sample" if suite == "smoke" else "bench")
        for model in MODELS
        if (not ops or model.name in ops) and suite in (*model.tags, "all", "smoke")
    ]


def model_task(model: Model, source: str, dtype: str, batch: int | None, backend: str) -> Task:
    """The task of ``model``'s training step on ``backend`` (``"torch"`` or
    ``"torch-cuda"``: the peer)."""
    return Task(
        op=model.name,
        case=model.case,
        source=source,
        direction=TRAIN,
        dtype=dtype,
        library=PEER if backend in (PEER, PEER_GPU) else "fastcnn",
        backend=backend,
        batch=batch,
        kind="model",
    )


def with_batch(spec: OpSpec, case: Case, batch: int | None) -> Case:
    """``case`` with its batch size N replaced (the first input's and the labels' first axis)."""
    if batch is None:
        return case
    if batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch}")
    batched = {spec.inputs[0], *spec.integer}
    shapes = {
        name: (batch, *shape[1:]) if name in batched and shape else shape
        for name, shape in case.shapes.items()
    }
    return dataclasses.replace(case, shapes=shapes)


def batch_size(op: str, case: Case) -> int:
    """The case's batch size: the first axis of the op's first input."""
    spec = SPECS_BY_NAME[op]
    return case.shapes[spec.inputs[0]][0]


def resolve_case(op: str, source: str, name: str, batch: int | None = None) -> tuple[OpSpec, Case]:
    """The spec and case a task names, with the batch override applied."""
    spec = SPECS_BY_NAME[op]
    if source == "sample":
        case = _first_sample_case(spec)
        if case.name != name:
            raise ValueError(f"{op} has no smoke case {name!r}")
    else:
        matches = [case for case in spec.bench if case.name == name]
        if not matches:
            raise ValueError(f"{op} has no benchmark case {name!r}")
        case = matches[0]
    return spec, with_batch(spec, case, batch)


def direction_ops(spec: OpSpec, direction: str) -> str | None:
    """The registry name of the kernel a direction runs (``None``: the op has no backward)."""
    return spec.ops[0] if direction == "fwd" else spec.ops[1]
