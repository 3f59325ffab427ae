"""Options of the spec-table benchmarks in ``test_bench_ops.py`` (pytest-benchmark).

Run: ``pytest benchmarks/ --benchmark-only [--bench-suite resnet50] [--bench-backends numba]``.
The plain ``pytest`` run never collects this folder (``testpaths = ["tests"]``).
"""

from __future__ import annotations


def pytest_addoption(parser) -> None:
    group = parser.getgroup("fastcnn bench", "spec-table benchmarks (benchmarks/test_bench_ops.py)")
    group.addoption("--bench-suite", default="quick", help="suite of spec cases (default: quick)")
    group.addoption(
        "--bench-backends",
        default=None,
        help="comma-separated backends (default: every available one but the reference)",
    )
    group.addoption("--bench-direction", default="fwd", choices=("fwd", "bwd", "both"))
    group.addoption("--bench-dtype", default="float32", choices=("float32", "float64"))
    group.addoption("--bench-vs", default="torch", choices=("torch", "none"))
    group.addoption("--bench-threads", type=int, default=None, help="default: all cores")
