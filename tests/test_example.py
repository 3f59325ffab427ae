"""examples/train_digits.py runs end to end; a short run already learns well above chance,
on the reference backend and on the CUDA kernels under the emulator (cuda-emu)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_digits.py"


def load_example():
    spec = importlib.util.spec_from_file_location("train_digits", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_short_training_run_beats_chance(capsys):
    pytest.importorskip("sklearn")
    example = load_example()
    # Reference backend: no compilation, so the short run takes about a second.
    accuracy = example.main(
        ["--epochs", "3", "--batch-size", "32", "--seed", "0", "--backend", "reference"]
    )
    output = capsys.readouterr().out
    assert output.count("epoch") == 3 and "loss" in output and "test" in output
    assert accuracy > 0.8  # chance is 0.1; three epochs reach about 0.93


def test_short_training_run_on_the_cuda_emulator_lowers_the_loss(capsys):
    """The CUDA kernels (conv2d, relu, max-pool, linear, cross-entropy; forward and
    backward) train the network under the emulator as the reference backend does:
    3 epochs of 20 steps, about 3 s."""
    pytest.importorskip("sklearn")
    import fastcnn

    if "cuda-emu" not in fastcnn.available_backends():
        pytest.skip("cuda-emu is not available (it needs g++)")
    example = load_example()
    common = ["--epochs", "3", "--limit", "640", "--batch-size", "32", "--seed", "0"]
    result = example.train(example.parse_arguments(["--backend", "cuda-emu", *common]))
    output = capsys.readouterr().out
    assert "640 training" in output and "conv2d runs on cuda-emu" in output
    assert output.count("epoch") == 3
    losses = result["losses"]
    assert losses[0] > losses[1] > losses[2]  # about 2.26, 1.91, 0.64 (chance: ln 10 = 2.30)
    assert losses[2] < 0.5 * losses[0]
    assert result["test_accuracy"] > 0.6  # about 0.89
    reference = example.train(example.parse_arguments(["--backend", "reference", *common]))
    assert losses == pytest.approx(reference["losses"], rel=0.02)


def test_limit_must_be_positive():
    pytest.importorskip("sklearn")
    with pytest.raises(SystemExit):
        load_example().parse_arguments(["--limit", "0"])


def test_unknown_backend_is_rejected():
    pytest.importorskip("sklearn")
    with pytest.raises(SystemExit):
        load_example().parse_arguments(["--backend", "fortran"])
