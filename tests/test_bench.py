"""``fastcnn bench`` end to end on the tiny "smoke" suite (reference backend).

Each CLI run starts worker processes and measures the ceilings (a few seconds), so
one module-scoped run serves most checks.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json

import pytest

from fastcnn.__main__ import main
from fastcnn.bench import SCHEMA_VERSION, validate
from fastcnn.bench import runner as bench_runner
from fastcnn.bench.cases import Task, suite_cases, suite_models
from fastcnn.bench.models import LENET5, step_flops
from fastcnn.bench.report import compare_documents, report_text

FAST = ["--suite", "smoke", "--backends", "reference", "--min-time", "0", "--repeats", "3"]
OPS = ["--ops", "relu,max_pool2d"]
#: The train suite at a tiny batch on the reference backend (a step takes milliseconds).
TRAIN = ["--suite", "train", "--batch", "2", "--backends", "reference", "--min-time", "0"]
TRAIN += ["--repeats", "3"]
#: Ceilings to stand in for the measured ones where a test does not look at them.
STUB_CEILINGS = {
    "device": "cpu",
    "dtype": "float32",
    "threads": 1,
    "peak_flops": {"fma": {"1": 1e11}, "gemm": {"1": 1e11}},
    "bandwidth_bytes_per_s": {"copy": {"1": 1e10}},
    "roofline": {"peak_flops": 1e11, "bandwidth_bytes_per_s": 1e10},
    "errors": [],
}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One run with --vs none, --json and --plot: (printed text, document, plot path)."""
    folder = tmp_path_factory.mktemp("bench")
    json_path, plot_path = folder / "run.json", folder / "run.png"
    arguments = [*FAST, *OPS, "--vs", "none", "--json", str(json_path)]
    if importlib.util.find_spec("matplotlib"):
        arguments += ["--plot", str(plot_path)]
    with pytest.MonkeyPatch.context() as patch:
        printed = []
        patch.setattr("builtins.print", lambda *a, **k: printed.append(" ".join(map(str, a))))
        assert main(["bench", *arguments]) == 0
    return "\n".join(printed), json.loads(json_path.read_text()), plot_path, json_path


def test_table_is_printed(smoke_run):
    text, _, _, _ = smoke_run
    assert "fastcnn bench: suite smoke" in text  # the header says how it was measured
    assert "CPU ceilings, float32: FMA loop" in text
    for column in ("ours ms", "% roof", "torch/ours", "1st call ms"):
        assert column in text
    # one unit per table: the rate column is headed by it, its cells are bare numbers
    assert "memory-bound (GB/s" in text
    assert not [line for line in text.splitlines() if line.startswith("relu") and "GB/s" in line]
    assert "relu 4-D" in text and "max_pool2d 2x2" in text
    assert "no GPU here" in text


def test_json_follows_the_schema(smoke_run):
    _, document, _, _ = smoke_run
    validate(document)
    assert document["schema_version"] == SCHEMA_VERSION
    results = document["results"]
    assert {r["op"] for r in results} == {"relu", "max_pool2d"}
    assert {r["direction"] for r in results} == {"fwd", "bwd"}
    for result in results:
        assert result["status"] == "ok", result.get("error")
        assert result["q1_s"] <= result["median_s"] <= result["q3_s"]
        assert 0 < result["roofline_fraction"]
        assert result["outputs"] == "out="
    ceilings = document["ceilings"]["cpu"]
    assert ceilings["roofline"]["peak_flops"] > 1e9
    assert ceilings["roofline"]["bandwidth_bytes_per_s"] > 1e8
    broken = copy.deepcopy(document)
    del broken["results"][0]["median_s"]
    broken["results"][0]["status"] = "fine"
    with pytest.raises(ValueError, match="invalid"):
        validate(broken)


def test_vs_none_times_fastcnn_alone(smoke_run):
    _, document, _, _ = smoke_run
    assert document["settings"]["vs"] == "none"
    assert all(r["library"] == "fastcnn" for r in document["results"])
    assert all(r["speedup_vs_peer"] is None for r in document["results"])


def test_plot_is_written(smoke_run):
    pytest.importorskip("matplotlib")
    _, _, plot_path, _ = smoke_run
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_with_an_earlier_run(smoke_run, tmp_path, capsys):
    _, document, _, json_path = smoke_run
    arguments = ["--ops", "relu", "--direction", "fwd", "--vs", "none", "--compare", str(json_path)]
    assert main(["bench", *FAST, *arguments]) == 0
    text = capsys.readouterr().out
    assert "compared with" in text and "relu/4-D/fwd/float32/N2/reference" in text
    # A run twice as slow, with no overlap in spread, is a regression; the reverse a speed-up.
    slower = copy.deepcopy(document)
    for result in slower["results"]:
        for name in ("median_s", "q1_s", "q3_s"):
            result[name] *= 2
    rows, _ = compare_documents(document, slower)
    assert {row[-1] for row in rows} == {"REGRESSION"}
    rows, _ = compare_documents(slower, document)
    assert {row[-1] for row in rows} == {"faster"}
    for result in slower["results"]:  # the peer's rows are its own variation
        result["library"] = "torch"
    rows, _ = compare_documents(document, slower)
    assert {row[-1] for row in rows} == {"(peer)"}


def test_vs_torch(capsys):
    pytest.importorskip("torch")
    assert main(["bench", *FAST, "--ops", "relu", "--direction", "fwd", "--vs", "torch"]) == 0
    text = capsys.readouterr().out
    lines = [line for line in text.splitlines() if line.startswith("relu 4-D")]
    reference_line = next(line for line in lines if "reference" in line)
    cells = reference_line.split()  # relu 4-D N2 fwd reference ratio ours ± torch ...
    assert cells[5] != "—" and cells[8] != "—"  # the ratio and torch's time, side by side
    assert "geomean torch/ours, reference: relu fwd" in text


def test_ctrl_c_keeps_what_was_measured(monkeypatch):
    calls = []

    def measure_then_interrupt(self, task):
        calls.append(task)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return {
            "status": "ok",
            "first_call_s": 1e-3,
            "median_s": 1e-3,
            "q1_s": 1e-3,
            "q3_s": 1e-3,
            "min_s": 1e-3,
            "max_s": 1e-3,
            "runs": 1,
            "times_s": [1e-3],
        }

    monkeypatch.setattr(bench_runner.Runner, "measure", measure_then_interrupt)
    monkeypatch.setattr(bench_runner.Runner, "ceilings", lambda self, gpu: {"cpu": STUB_CEILINGS})
    settings = bench_runner.BenchSettings(
        suite="smoke", ops=["relu", "max_pool2d"], backends=["reference"], threads=1, vs="none"
    )
    document = bench_runner.run(settings)
    assert document["interrupted"] is True
    assert len(document["results"]) == 1
    validate(document)
    assert "interrupted" in report_text(document)


def test_suites_come_from_the_spec_table():
    quick = suite_cases("quick")
    assert quick and all("quick" in case.tags for _, source, case in quick if source == "bench")
    assert {spec.name for spec, _, _ in suite_cases("smoke")} >= {"conv2d", "relu"}
    task = Task(
        "conv2d", quick[0][2].name, "bench", "fwd", "float32", "fastcnn", "numba", "auto", 2
    )
    assert task.key.endswith("/fwd/float32/N2/numba:auto")
    assert Task.from_json(task.to_json()) == task
    old_record = {k: v for k, v in task.to_json().items() if k != "kind"}  # an older file
    assert Task.from_json(old_record).kind == "op"
    with pytest.raises(ValueError, match="suite"):
        suite_cases("tiny")


def test_the_train_suite_is_a_model_step():
    assert suite_cases("train") == []
    assert suite_models("train") == [(LENET5, "bench")]
    assert suite_models("smoke") == [(LENET5, "sample")]
    assert suite_models("quick") == [] and suite_models("all", ["conv2d"]) == []
    assert suite_cases("all", ["lenet5"]) == []  # a model's name is a known --ops name
    # Forward, weight gradient and input gradient of each convolution and linear layer,
    # 2 FLOPs per multiply-add, without the first layer's input gradient.
    conv1, conv2 = 256 * 6 * 24 * 24 * 25, 256 * 16 * 8 * 8 * 6 * 25
    linear = 256 * (256 * 120 + 120 * 84 + 84 * 10)
    assert step_flops(LENET5, 256) == 2 * (2 * conv1 + 3 * conv2 + 3 * linear)


def _stub_ceilings_and_print(patch, printed):
    patch.setattr(bench_runner.Runner, "ceilings", lambda self, gpu: {"cpu": STUB_CEILINGS})
    patch.setattr("builtins.print", lambda *a, **k: printed.append(" ".join(map(str, a))))


@pytest.fixture(scope="module")
def train_run(tmp_path_factory):
    """The train suite beside the peer where it is installed: (printed text, document, path)."""
    path = tmp_path_factory.mktemp("train") / "train.json"
    vs = "torch" if importlib.util.find_spec("torch") else "none"
    printed = []
    with pytest.MonkeyPatch.context() as patch:
        _stub_ceilings_and_print(patch, printed)
        assert main(["bench", *TRAIN, "--vs", vs, "--json", str(path)]) == 0
    return "\n".join(printed), json.loads(path.read_text()), path


def test_train_suite_times_a_whole_step(train_run):
    text, document, _ = train_run
    validate(document)
    ours = [r for r in document["results"] if r["library"] == "fastcnn"]
    assert [(r["op"], r["kind"], r["direction"], r["batch"]) for r in ours] == [
        ("lenet5", "model", "train", 2)
    ]
    [step] = ours
    assert step["status"] == "ok", step.get("error")
    assert 0 < step["q1_s"] <= step["median_s"] <= step["q3_s"]
    assert step["flops"] == step_flops(LENET5, 2) and step["flops_per_s"] > 0
    assert step["outputs"] == "out="  # the layers reuse their buffers
    assert "suite train, float32, train," in text
    assert "lenet5 28x28 sgd momentum N2" in text
    if document["settings"]["vs"] == "torch":
        [peer] = [r for r in document["results"] if r["library"] == "torch"]
        assert peer["status"] == "ok" and peer["case_key"] == step["case_key"]
        assert step["speedup_vs_peer"] == pytest.approx(peer["median_s"] / step["median_s"])
        row = next(line for line in text.splitlines() if line.startswith("lenet5"))
        assert row.split()[6] != "—"  # lenet5 28x28 sgd momentum N2 train reference ratio


def test_train_suite_without_the_peer_and_compared(train_run, tmp_path):
    _, _, old_path = train_run
    printed = []
    with pytest.MonkeyPatch.context() as patch:
        _stub_ceilings_and_print(patch, printed)
        arguments = [*TRAIN, "--vs", "none", "--compare", str(old_path)]
        assert main(["bench", *arguments]) == 0
    text = "\n".join(printed)
    assert "lenet5/28x28 sgd momentum/train/float32/N2/reference" in text  # matched by key
    assert "compared with" in text and "no result of this run matches" not in text
    assert "vs torch" not in text.splitlines()[0]


def test_gpu_comparison_finds_the_crossover(smoke_run):
    """The CPU-vs-GPU arithmetic, with a stand-in runner (no GPU is needed): the GPU
    costs a fixed launch-and-copy overhead plus little per image, the CPU only per image."""
    from fastcnn.bench import runner as bench_runner

    _, document, _, _ = smoke_run
    cpu = next(r for r in document["results"] if r["op"] == "relu" and r["direction"] == "fwd")
    gpu = {**cpu, "device": "gpu", "backend": "cuda", "variant": "cuda", "median_s": 1e-4,
           "with_copies": {"median_s": 2e-4}}  # fmt: skip
    cpu = {**cpu, "median_s": 8e-4, "batch": 16}
    gpu["batch"] = 16

    class StandInRunner:
        def measure(self, task):
            per_image = 1e-4 if task.backend != "cuda" else 1e-6
            overhead = 0.0 if task.backend != "cuda" else 3.5e-4
            return {"status": "ok", "median_s": overhead + per_image * task.batch}

    settings = bench_runner.BenchSettings(**{**document["settings"], "gpu_crossover": True})
    [comparison] = bench_runner.gpu_comparison(StandInRunner(), {"results": [cpu, gpu]}, settings)
    assert comparison["gpu_speedup"] == pytest.approx(8.0)
    assert comparison["gpu_speedup_with_copies"] == pytest.approx(4.0)
    # CPU 1e-4 * b against GPU 3.5e-4 + 1e-6 * b: the GPU first wins at batch 4.
    assert comparison["crossover_batch"] == 4


def _summarize_module():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "summarize.py"
    spec = importlib.util.spec_from_file_location("summarize", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summarize_repeats_takes_the_median_ratio_per_case_and_geomeans_per_suite():
    summarize = _summarize_module()

    def run(ours_a, ours_b):
        results = []
        for case, ours in (("resnet50 a", ours_a), ("resnet50 b", ours_b)):
            common = {"op": "conv2d", "case": case, "direction": "fwd", "status": "ok"}
            results.append({**common, "library": "torch", "median_s": 1.0})
            results.append(
                {**common, "library": "fastcnn", "backend": "numba", "algo": "auto",
                 "median_s": ours, "bound": "compute", "flops_per_s": 2e9 / ours,
                 "roofline_fraction": 0.5}
            )  # fmt: skip
        return {"results": results}

    # case a: ratios 1, 2, 4 -> median 2; case b: 0.5, 0.5, 8 -> median 0.5; geomean 1.
    text = summarize.summarize_repeats([run(1.0, 2.0), run(0.5, 2.0), run(0.25, 0.125)])
    assert "| 1.00, 2.00, 4.00 | **2.00** |" in text
    assert "| 0.50, 0.50, 8.00 | **0.50** |" in text
    assert "| conv2d | resnet50 | fwd | numba:auto | 2 | **1.00** |" in text


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--ops", "conv3d"], "unknown ops ['conv3d']"),
        (["--algos", "fft"], "unknown algos ['fft']"),
        (["--suite", "nope"], "unknown suite 'nope'"),
        (["--suite", "nope"], "'train', 'smoke', 'all'"),
        (["--backends", "fortran"], "unknown backends ['fortran']"),
        (["--backends", "cuda"], "backend 'cuda' is not available"),
        (["--compare", "/nonexistent/old.json"], "--compare /nonexistent/old.json: No such file"),
    ],
)
def test_bad_options_give_one_line_and_exit_2(arguments, message, capsys):
    from fastcnn.backends import available_backends
    from fastcnn.bench.cli import main

    if "cuda" in arguments and "cuda" in available_backends():
        pytest.skip("a GPU is here")
    assert main([*arguments, "--vs", "none"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("fastcnn bench: ") and message in error
    assert "\n" not in error


@pytest.mark.parametrize(
    ("content", "message"), [("nope", "not JSON"), ('{"a": 1}', "not a fastcnn")]
)
def test_a_malformed_compare_file_is_one_line(tmp_path, content, message, capsys):
    from fastcnn.bench.cli import main

    old = tmp_path / "old.json"
    old.write_text(content)
    assert main(["--compare", str(old), "--vs", "none"]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error


def test_gpu_results_are_compared_with_the_peer_on_the_gpu(monkeypatch):
    # Planned as if a GPU were here: each device's results get the peer on that device.
    import fastcnn.backends as backends
    from fastcnn.bench import calls

    monkeypatch.setattr(backends, "check_backend_name", lambda name: None)
    monkeypatch.setattr(backends, "has_op", lambda op, backend: True)
    settings = bench_runner.BenchSettings(
        suite="smoke", ops=["relu", "lenet5"], backends=["reference", "cuda"], vs="torch"
    )
    tasks, _ = bench_runner.plan(settings)
    relu = [t for t in tasks if t.op == "relu" and t.direction == "fwd"]
    assert [(t.library, t.backend) for t in relu][-2:] == [
        ("torch", "torch"),
        ("torch", "torch-cuda"),
    ]
    steps = [(t.library, t.backend) for t in tasks if t.kind == "model"]
    assert ("torch", "torch") in steps and ("torch", "torch-cuda") in steps
    cpu_only = bench_runner.plan(dataclasses.replace(settings, backends=["reference"]))[0]
    assert "torch-cuda" not in {t.backend for t in cpu_only}

    seen = []
    monkeypatch.setattr(calls, "prepare_torch", lambda *args: seen.append(args[-1]))
    for task in relu[-2:]:
        calls.prepare(task, 1)
    assert seen == ["cpu", "cuda"]

    def result(backend, device, median, library="fastcnn"):
        return {"case_key": "relu/x/fwd/float32/N2", "library": library, "backend": backend,
                "device": device, "status": "ok", "median_s": median}  # fmt: skip

    results = [
        result("reference", "cpu", 2.0),
        result("cuda", "gpu", 0.5),
        result("torch", "cpu", 4.0, "torch"),
        result("torch-cuda", "gpu", 0.25, "torch"),
    ]
    bench_runner.add_peer_ratios(results)
    assert [r.get("speedup_vs_peer") for r in results[:2]] == [2.0, 0.5]
