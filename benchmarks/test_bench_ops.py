"""The ``fastcnn bench`` cases under pytest-benchmark: one test per task of the plan (an
op in one direction, or a model's training step with ``--bench-suite train``).

The same cases, calls (``out=``, input rotation) and costs as ``fastcnn bench``, with
GFLOP/s or GB/s (whichever bounds the case) and the % of the roofline ceiling in each
result's ``extra_info``; the peer's tests share a group with ours, so
``--benchmark-group-by=group`` sets them side by side. Unlike ``fastcnn bench``,
everything runs in this one process: for ratios you can trust, use the command.

    pytest benchmarks/test_bench_ops.py --benchmark-only --bench-suite quick
"""

from __future__ import annotations

import itertools

import pytest

pytest.importorskip("pytest_benchmark")

from fastcnn.bench import calls
from fastcnn.bench.cases import PEER, Task, describe
from fastcnn.bench.ceilings import measure_cpu_ceilings, roofline
from fastcnn.bench.runner import BenchSettings, plan, torch_installed
from fastcnn.bench.timing import (
    DEFAULT_MAX_RUNS,
    DEFAULT_MIN_TIME,
    available_cores,
    rotation_sets,
)


def _settings(config) -> BenchSettings:
    backends = config.getoption("--bench-backends")
    direction = config.getoption("--bench-direction")
    vs = config.getoption("--bench-vs")
    return BenchSettings(
        suite=config.getoption("--bench-suite"),
        backends=backends.split(",") if backends else None,
        dtype=config.getoption("--bench-dtype"),
        threads=config.getoption("--bench-threads") or available_cores(),
        directions=("fwd", "bwd") if direction == "both" else (direction,),
        vs=vs if vs == "none" or torch_installed() else "none",
    )


def pytest_generate_tests(metafunc) -> None:
    if "bench_task" in metafunc.fixturenames:
        tasks, _ = plan(_settings(metafunc.config))
        metafunc.parametrize("bench_task", tasks, ids=[task.key for task in tasks])


@pytest.fixture(scope="session")
def bench_settings(pytestconfig) -> BenchSettings:
    settings = _settings(pytestconfig)
    import fastcnn

    fastcnn.set_num_threads(settings.threads)
    if settings.vs == PEER:
        calls.torch_threads(settings.threads)
    return settings


@pytest.fixture(scope="session")
def cpu_ceilings(bench_settings) -> dict:
    return measure_cpu_ceilings(bench_settings.dtype, bench_settings.threads)


def test_task(benchmark, bench_task: Task, bench_settings: BenchSettings, cpu_ceilings: dict):
    workload = describe(bench_task)
    sets = rotation_sets(workload.bytes)
    prepared = calls.prepare(bench_task, sets)
    prepared.first_call()  # the JIT compile stays out of the statistics
    input_set = itertools.count(1)
    benchmark.group = bench_task.case_key
    benchmark.pedantic(
        lambda: prepared.timed_call(next(input_set) % sets),
        warmup_rounds=1,
        rounds=_rounds(prepared),
        iterations=1,
    )
    flops, nbytes = workload.flops, workload.bytes
    median = benchmark.stats.stats.median
    ceiling, bound = roofline(
        flops,
        nbytes,
        cpu_ceilings["roofline"]["peak_flops"],
        cpu_ceilings["roofline"]["bandwidth_bytes_per_s"],
    )
    benchmark.extra_info.update(
        variant=bench_task.variant,
        bound=bound,
        gflops=flops / median / 1e9,
        gbytes_per_s=nbytes / median / 1e9,
        roofline_fraction=flops / median / ceiling,
        input_sets=sets,
        outputs=prepared.outputs,
    )


def _rounds(prepared: calls.PreparedCall) -> int:
    """About ``DEFAULT_MIN_TIME`` seconds of rounds, 3 to ``DEFAULT_MAX_RUNS``."""
    import time

    start = time.perf_counter()
    prepared.timed_call(0)
    seconds = time.perf_counter() - start
    return max(3, min(DEFAULT_MAX_RUNS, int(DEFAULT_MIN_TIME / max(seconds, 1e-6))))
