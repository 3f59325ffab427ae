"""What ``fastcnn bench`` measures: suites of cases from the spec table, and one task
per (case, direction, library, backend, algorithm).

Every shape and cost comes from :mod:`fastcnn.testing.specs`; nothing here names a
shape. A task is a small JSON-able record that a worker process resolves back to its
spec and case (:func:`resolve_case`), so parent and worker never ship arrays.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fastcnn.testing.specs import SPECS, SPECS_BY_NAME, Case, OpSpec

#: Suites named by the spec table's bench tags, plus "smoke" and "all".
SUITES = (
    "quick", "resnet50", "vgg", "lenet", "depthwise", "deepbench", "memory", "loss", "classifier",
    "smoke", "all",
)  # fmt: skip
#: The directions a case can be timed in; "both" on the command line means these two.
DIRECTIONS = ("fwd", "bwd")
#: The peer library's name as it appears in tasks and results.
PEER = "torch"


@dataclass(frozen=True)
class Task:
    """One measurement: a case of an op, in one direction, on one library/backend/algorithm.

    ``source`` says where the case lives in its :class:`OpSpec`: ``"bench"`` (the
    benchmark shapes) or ``"sample"`` (the small test cases the "smoke" suite uses).
    ``batch`` replaces the case's batch size N when not ``None``.
    """

    op: str
    case: str
    source: str
    direction: str
    dtype: str
    library: str  # "fastcnn" or "torch"
    backend: str  # "numba", "cpp", "reference", "cuda" or "torch"
    algo: str | None = None
    batch: int | None = None

    @property
    def variant(self) -> str:
        """``backend`` or ``backend:algo``, as the table shows it."""
        return f"{self.backend}:{self.algo}" if self.algo else self.backend

    @property
    def case_key(self) -> str:
        """Identifies the work, whoever does it: op, case, direction, dtype, batch."""
        _, case = resolve_case(self.op, self.source, self.case, self.batch)
        return f"{self.op}/{self.case}/{self.direction}/{self.dtype}/N{batch_size(self.op, case)}"

    @property
    def key(self) -> str:
        """Identifies the measurement across runs (``--compare`` matches on it)."""
        return f"{self.case_key}/{self.variant}"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, record: dict) -> Task:
        return cls(**{f.name: record.get(f.name) for f in dataclasses.fields(cls)})


def _first_sample_case(spec: OpSpec) -> Case:
    """The first non-empty sample case of ``spec`` (tiny shapes, for the smoke suite)."""
    for case in spec.cases:
        if all(dim > 0 for shape in case.shapes.values() for dim in shape):
            return case
    raise ValueError(f"{spec.name} has no non-empty sample case")


def suite_cases(suite: str, ops: list[str] | None = None) -> list[tuple[OpSpec, str, Case]]:
    """``(spec, source, case)`` for every case of ``suite``, in spec-table order.

    ``"smoke"`` takes the first sample case of every op that has benchmark cases;
    ``"all"`` takes every benchmark case; the others take the cases tagged with them.
    ``ops`` keeps only the named ops (unknown names raise ``ValueError``).
    """
    if suite not in SUITES:
        raise ValueError(f"suite must be one of {SUITES}, got {suite!r}")
    if ops:
        unknown = [name for name in ops if name not in SPECS_BY_NAME]
        if unknown:
            raise ValueError(f"unknown ops {unknown}; known: {sorted(SPECS_BY_NAME)}")
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
