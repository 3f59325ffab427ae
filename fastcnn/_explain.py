"""What ``algo="auto"`` runs for a convolution, and why."""

from __future__ import annotations

from fastcnn import _shapes
from fastcnn.autotune import is_enabled
from fastcnn.backends import algorithm_table, select

_DIRECTIONS = ("forward", "input_gradient", "weight_gradient")


def _shape(name: str, value) -> tuple[int, ...]:
    shape = getattr(value, "shape", value)
    if not isinstance(shape, (tuple, list)) or len(shape) != 4:
        raise TypeError(f"{name} must be a 4-d array or its shape, got {value!r}")
    return tuple(shape)


def explain_conv2d(
    x,
    weight,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    *,
    backend: str | None = None,
    gpu: bool = False,
) -> dict:
    """Which algorithm each direction of this convolution runs with ``algo="auto"``.

    ``x`` and ``weight`` are arrays or their shapes; the other arguments are
    :func:`fastcnn.functional.conv2d`'s (``gpu=True``: as for CuPy arrays). Returns
    ``{"backend": name, direction: {"algorithm", "why", "takes"}}`` for the directions
    "forward", "input_gradient" and "weight_gradient"; ``takes`` lists every algorithm
    that ``algo=`` may name for that direction.

    >>> import fastcnn
    >>> fastcnn.explain_conv2d((8, 64, 56, 56), (64, 64, 3, 3), padding=1,
    ...                        backend="numba")["forward"]["algorithm"]
    'winograd'
    """
    g = _shapes.conv2d_geometry(
        _shape("x", x), _shape("weight", weight), None, stride, padding, dilation, groups
    )
    name, _ = select("conv2d", on_gpu=gpu, keyword=backend)
    table = algorithm_table("conv2d", name)
    report: dict = {"backend": name}
    for direction in _DIRECTIONS:
        if table is None:
            report[direction] = {"algorithm": None, "why": "one implementation", "takes": []}
            continue
        algorithm, why = table.heuristic(g, direction)
        if is_enabled():
            why += " (autotuning is on: the first call times every algorithm in 'takes')"
        takes = [a for a in table.names if table.takes(a, g, direction)]
        report[direction] = {"algorithm": algorithm, "why": why, "takes": takes}
    return report


__all__ = ["explain_conv2d"]
