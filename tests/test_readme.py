"""The README's Python examples run as written."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_examples_run(tmp_path, monkeypatch):
    blocks = _python_blocks()
    if not blocks:
        pytest.skip("README not present (installed package)")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    has_torch = importlib.util.find_spec("torch") is not None
    for block in blocks:
        if "torch" in block and not has_torch:
            continue  # the "Use with PyTorch" blocks need the optional torch
        exec(compile(block, str(README), "exec"), namespace)
