"""examples/train_digits.py runs end to end; a short run already learns well above chance."""

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


def test_unknown_backend_is_rejected():
    pytest.importorskip("sklearn")
    with pytest.raises(SystemExit):
        load_example().parse_arguments(["--backend", "fortran"])
