"""Compile every kernel ahead: ``python -m fastcnn compile`` or ``fastcnn.compile_kernels()``.

Numba compiles a kernel on its first call and caches the machine code on disk, per CPU
and fastcnn version. A notebook, a container build or a CI job can pay that once, up
front: this runs every op of the spec table, every algorithm that takes each case, on
tiny inputs, in both dtypes, spread over worker processes (compilation is
single-threaded, so each core compiles its own share into the shared cache).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import time

_DTYPES = ("float32", "float64")


def _work(backends) -> list[tuple[str, str, str | None]]:
    """(spec name, backend, conv2d algorithm or None): the units handed to workers.
    conv2d is split by algorithm, its costliest part; the rest go one op per unit."""
    from fastcnn.backends import algorithms, available_backends, has_op
    from fastcnn.testing.specs import SPECS

    units = []
    for backend in backends or [b for b in available_backends() if b != "reference"]:
        for spec in SPECS:
            if not has_op(spec.ops[0], backend):
                continue
            offered = algorithms(spec.ops[0], backend)
            units += [(spec.name, backend, algo) for algo in offered or [None]]
    return units


def _variants(spec, case, backend: str, direction: str, algo: str | None):
    """The unit's calls of ``case``: every variant, or those naming ``algo``."""
    from fastcnn.testing.harness import algorithm_cases

    for variant in algorithm_cases(spec, case, backend, direction):
        named = variant.params.get("algo")
        if algo is None or algo in (named if isinstance(named, tuple) else (named,)):
            yield variant


def _quiet() -> None:
    """Workers leave the reporting to the progress bar, and the cores to each other."""
    os.environ["FASTCNN_QUIET"] = "1"
    os.environ["FASTCNN_COMPILE_ASIDE"] = "0"


def _compile_unit(unit, dtypes) -> tuple[tuple, float]:
    """Run one unit's calls: every case of the op's spec, both directions, each dtype."""
    import numpy as np

    from fastcnn.testing.harness import truth
    from fastcnn.testing.specs import SPECS_BY_NAME

    name, backend, algo = unit
    spec = SPECS_BY_NAME[name]
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for dtype in dtypes:
        for direction, op in zip(("forward", "backward"), spec.ops, strict=True):
            if op is None:
                continue
            for case in spec.cases:
                for variant in _variants(spec, case, backend, direction, algo):
                    inputs = spec.make_inputs(variant, dtype, rng)
                    if direction == "forward":
                        spec.forward(inputs, variant.params, backend)
                        continue
                    y = spec.forward(inputs, truth(variant.params), "reference")
                    grad_y = rng.standard_normal(np.shape(y)).astype(dtype)
                    spec.backward(inputs, variant.params, grad_y, y, backend)
    return unit, time.perf_counter() - started


def compile_kernels(
    dtypes=_DTYPES, *, processes: int | None = None, backends=None, progress: bool = True
) -> dict[str, float]:
    """Compile every kernel of ``backends`` (default: every available one but the
    reference) for ``dtypes`` into the on-disk cache; returns seconds per unit
    (``"op backend:algo"``). ``processes``: worker processes (default: one per core;
    1 compiles in this process)."""
    from fastcnn._shapes import flag

    flag("progress", progress)
    dtypes = tuple(dtypes)
    for dtype in dtypes:
        if dtype not in _DTYPES:
            raise ValueError(f"dtypes must be among {_DTYPES}, got {dtype!r}")
    units = _work(backends)
    workers = max(1, min(len(units), processes or os.cpu_count() or 1))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(units), desc="fastcnn: compiling", unit="op")
    timings = {}

    def done(unit, seconds):
        name, backend, algo = unit
        timings[f"{name} {backend}" + (f":{algo}" if algo else "")] = seconds
        if bar is not None:
            bar.set_postfix_str(f"{name} {algo or backend}", refresh=False)
            bar.update()

    try:
        if workers == 1:
            for unit in units:
                done(*_compile_unit(unit, dtypes))
        else:
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(
                workers, mp_context=context, initializer=_quiet
            ) as pool:
                futures = [pool.submit(_compile_unit, unit, dtypes) for unit in units]
                for future in concurrent.futures.as_completed(futures):
                    done(*future.result())
    finally:
        if bar is not None:
            bar.close()
    return timings
