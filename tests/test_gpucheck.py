"""``python -m fastcnn.gpucheck`` without a GPU: the exit status and message when CuPy or a
device is missing, the suite runner on ``cuda-emu`` (the kernels the GPU runs), the
deadline, the bench plumbing on ``cuda-emu`` with the peer on the CPU, and the report
formatting on made-up results."""

from __future__ import annotations

import json
import sys
import types

import pytest

from fastcnn import gpucheck
from fastcnn.backends import available_backends
from fastcnn.gpucheck import Deadline, format_report, run_suite, suite_checks

EMULATED = "cuda-emu" in available_backends()
needs_emulator = pytest.mark.skipif(not EMULATED, reason="cuda-emu is not available")


# --- no GPU -----------------------------------------------------------------------------


def test_exits_2_with_one_line_when_cupy_is_missing(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy raises ImportError
    assert gpucheck.main([]) == gpucheck.EXIT_NO_GPU
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert "CuPy is not installed" in captured.err


def test_exits_2_with_one_line_when_there_is_no_device(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(is_available=lambda: False))
    assert gpucheck.main(["--quick", "--skip-bench"]) == gpucheck.EXIT_NO_GPU
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert "no usable CUDA device" in error


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exited:
        gpucheck.main(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for option in ("--quick", "--json", "--skip-bench", "--timeout"):
        assert option in text


# --- the suite runner -------------------------------------------------------------------

SUBSET = ["conv2d", "max_pool2d", "relu", "softmax", "cross_entropy"]


@needs_emulator
def test_suite_runner_passes_a_subset_on_cuda_emu():
    result = run_suite("cuda-emu", specs=SUBSET, max_cases=2)
    expected = len(list(suite_checks("cuda-emu", SUBSET, max_cases=2)))
    assert result.failures == []
    assert (result.passed, result.failed, result.ok) == (expected, 0, True)
    assert list(result.per_spec) == SUBSET
    # conv2d: two cases x (auto + each algorithm) x 2 dtypes x 2 directions
    assert result.per_spec["conv2d"][0] > 2 * 2 * 2
    assert result.per_spec["softmax"][0] == 2 * 2  # forward only: 2 cases x 2 dtypes
    assert result.to_json()["ok"] is True


def test_suite_runner_reports_each_failure_with_its_seed(monkeypatch):
    from fastcnn.testing import harness

    real = harness.check_forward

    def broken_on_float64(spec, case, backend, dtype, layout, rng):
        if dtype == "float64":
            raise AssertionError("values differ\nsecond line\nthird\nfourth")
        return real(spec, case, backend, dtype, layout, rng)

    monkeypatch.setattr(harness, "check_forward", broken_on_float64)
    result = run_suite("reference", specs=["relu"], max_cases=2, seed=5)
    assert (result.passed, result.failed, result.ok) == (6, 2, False)
    assert result.per_spec == {"relu": [6, 2]}
    failure = result.failures[0]
    assert (failure.spec, failure.direction, failure.dtype) == ("relu", "forward", "float64")
    assert failure.seed[0] == 5
    assert failure.message == "AssertionError: values differ | second line | third"
    assert "relu" in failure.line() and "seed [5, " in failure.line()


def test_suite_runner_starts_nothing_after_the_deadline():
    result = run_suite("reference", specs=["relu"], deadline=Deadline(0.0))
    assert (result.passed, result.failed, result.incomplete, result.ok) == (0, 0, True, False)


def test_suite_runner_rejects_an_unavailable_backend():
    if "cuda" in available_backends():
        pytest.skip("a GPU is here")
    from fastcnn.backends import BackendUnavailableError

    with pytest.raises(BackendUnavailableError):
        run_suite("cuda", specs=["relu"])


@needs_emulator
def test_run_check_on_cuda_emu_passes_and_notes_the_missing_device():
    report = gpucheck.run_check(quick=True, skip_bench=True, backend="cuda-emu")
    assert report["exit_status"] == gpucheck.EXIT_PASSED
    assert report["suite"]["ok"] and report["suite"]["passed"] > 100
    assert any(note.startswith("device failed") for note in report["notes"])
    json.dumps(report)  # --json writes it as is
    assert "suite passed" in format_report(report)


# --- the bench plumbing -----------------------------------------------------------------


def test_deadline_progress_stops_the_bench_like_ctrl_c():
    progress = gpucheck._DeadlineProgress(Deadline(None), "quick")
    progress.advance(None, {"status": "ok"})
    progress.deadline = Deadline(0.0)
    with pytest.raises(KeyboardInterrupt):  # runner.run catches it: "interrupted"
        progress.advance(None, {"status": "ok"})


@needs_emulator
def test_bench_rows_from_a_bench_run_on_cuda_emu():
    pytest.importorskip("torch")
    document = gpucheck.run_bench(
        "smoke", ["cuda-emu"], Deadline(None), batch=None, ops=["relu"], min_time=0.0, max_runs=2
    )
    assert not document["interrupted"]
    peer = gpucheck.time_peer(document["results"], Deadline(None), 0.0, 2, device="cpu")
    assert len(peer) == 2 and all("median_s" in p for p in peer.values())
    ceilings = {"copy_bytes_per_s": 1e10, "fma_flops_per_s": 1e11}
    rows = gpucheck.bench_rows([document], peer, ceilings)
    assert [row["direction"] for row in rows] == ["fwd", "bwd"]
    for row in rows:
        assert row["ours_s"] > 0 and row["torch_s"] > 0
        assert row["ratio"] == pytest.approx(row["torch_s"] / row["ours_s"])
        assert (row["bound"], row["unit"]) == ("memory", "GB/s")
    assert "relu" in "\n".join(gpucheck._bench_lines(rows))


def test_bench_rows_use_the_roofline_of_the_measured_ceilings():
    document = {
        "ceilings": {"gpu": None},
        "results": [
            {
                "library": "fastcnn", "op": "conv2d", "case": "3x3", "batch": 32,
                "direction": "fwd", "variant": "cuda:auto", "algo": "auto",
                "ran": "implicit_gemm", "status": "ok", "median_s": 0.002,
                "case_key": "k", "flops": 1e11, "bytes": 1e8,
            },
            {
                "library": "fastcnn", "op": "relu", "case": "big", "batch": 32,
                "direction": "bwd", "variant": "cuda", "status": "error",
                "error": "CUDADriverError: illegal address", "case_key": "r",
                "flops": 1e6, "bytes": 1e9,
            },
        ],
    }  # fmt: skip
    peer = {"k": {"median_s": 0.003}}
    rows = gpucheck.bench_rows(
        [document], peer, {"fma_flops_per_s": 1e14, "copy_bytes_per_s": 4e12}
    )
    conv, relu = rows
    assert conv["variant"] == "cuda:auto (implicit_gemm)"
    assert conv["ratio"] == pytest.approx(1.5)
    assert (conv["bound"], conv["unit"]) == ("compute", "GFLOP/s")
    assert conv["rate"] == pytest.approx(5e13)
    assert conv["roofline_fraction"] == pytest.approx(0.5)  # 50 of 100 TFLOP/s
    assert relu["ours_s"] is None and "illegal address" in relu["error"]


# --- the report -------------------------------------------------------------------------


def _fake_report() -> dict:
    failures = [
        {
            "spec": "relu", "case": f"case {i}", "direction": "backward", "dtype": "float32",
            "algo": None, "layout": "contiguous", "seed": [0, i], "message": "AssertionError: off",
        }
        for i in range(gpucheck.FAILURES_SHOWN + 2)
    ]  # fmt: skip
    return {
        "device": {
            "name": "NVIDIA H200", "id": 0, "compute_capability": "9.0", "sms": 132,
            "memory_bytes": 140 * 2**30, "l2_bytes": 60 * 2**20, "cupy": "13.6.0",
            "cuda_runtime": "12.8", "driver_cuda": "12.8", "driver": "570.86",
            "torch": "2.13.0", "torch_cuda": "12.8", "cudnn": 91000,
        },
        "suite": {
            "backend": "cuda", "passed": 1072, "failed": len(failures),
            "per_spec": {"conv2d": [1000, 0], "relu": [72, len(failures)]},
            "failures": failures, "not_implemented": ["soft_cross_entropy_backward"],
            "incomplete": False, "seconds": 61.0, "ok": False,
        },
        "ceilings": {
            "copy_bytes_per_s": 4.3e12, "fma_flops_per_s": None,
            "notes": ["fma_flops_per_s skipped: CompileException: nvrtc"],
        },
        "bench": [
            {
                "case": "conv2d resnet50 3x3 64->64 N32", "direction": "fwd",
                "variant": "cuda:auto (implicit_gemm)", "ours_s": 0.001, "error": None,
                "torch_s": 0.0015, "ratio": 1.5, "bound": "compute", "rate": 3.7e13,
                "unit": "GFLOP/s", "roofline_fraction": 0.55,
            },
            {
                "case": "relu 32x64x112x112 N32", "direction": "bwd", "variant": "cuda",
                "ours_s": None, "error": "RuntimeError: launch failed", "torch_s": None,
                "ratio": None, "bound": None, "rate": None, "unit": None,
                "roofline_fraction": None,
            },
        ],
        "crossover": [
            {
                "case": "conv2d/lenet c1 1->6 5x5/fwd/float32/N256", "cpu_variant": "numba:auto",
                "gpu_variant": "cuda:auto", "gpu_speedup": 12.0,
                "gpu_speedup_with_copies": 3.25, "crossover_batch": 8,
            }
        ],
        "skipped": ["cpu vs gpu"],
        "notes": ["bench quick: something"],
        "seconds": 250.0,
        "exit_status": 1,
    }  # fmt: skip


def test_report_shows_every_part():
    text = format_report(_fake_report())
    for expected in (
        "device: NVIDIA H200 (sm 9.0, 132 SMs, 140 GiB, L2 60 MiB)",
        "CuPy 13.6.0, CUDA runtime 12.8, driver 570.86 (CUDA 12.8)",
        "torch 2.13.0 (CUDA 12.8, cuDNN 91000)",
        "spec suite on cuda: FAILED, 1072 passed, 12 failed in 61 s",
        "FAIL relu 'case 0' backward float32 (seed [0, 0]): AssertionError: off",
        "... and 2 more failures (see --json)",
        "not implemented on cuda: soft_cross_entropy_backward",
        "ceilings: copy 4300 GB/s (read + write); FP32 FMA loop —",
        "(fma_flops_per_s skipped: CompileException: nvrtc)",
        "error: RuntimeError: launch failed",
        "geomean torch/ours over 1 rows: 1.50",
        "12.00x",
        "skipped (timeout): cpu vs gpu",
        "note: bench quick: something",
        "fastcnn gpucheck: exit status 1 after 250 s (suite failed)",
    ):
        assert expected in text, expected
    assert text.count("FAIL relu") == gpucheck.FAILURES_SHOWN
    bench_line = next(line for line in text.splitlines() if "3x3 64->64" in line)
    assert bench_line.split()[-6:] == ["1.50", "1", "1.5", "37000", "GFLOP/s", "55%"]
    crossover_line = next(line for line in text.splitlines() if "lenet c1" in line)
    assert crossover_line.split()[-3:] == ["12.00x", "3.25x", "8"]


def test_report_of_a_passed_suite_without_bench():
    report = _fake_report()
    report["suite"].update(failed=0, failures=[], ok=True, not_implemented=[])
    report.update(ceilings=None, bench=None, crossover=None, skipped=[], notes=[], exit_status=0)
    text = format_report(report)
    assert "spec suite on cuda: PASSED, 1072 passed, 0 failed" in text
    assert "FAIL" not in text and "bench on the GPU" not in text
    assert text.endswith("exit status 0 after 250 s (suite passed)")
