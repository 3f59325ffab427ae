"""The documentation is part of the API: every docstring example runs, and every
argument of a public function or layer is described in its docstring."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil

import numpy as np
import pytest

import fastcnn
import fastcnn.functional as F
from fastcnn import nn

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(fastcnn.__path__, "fastcnn.")
    if ".cuda" not in info.name  # CuPy's modules need a GPU to import
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    if "torch" in name.split("."):
        pytest.importorskip("torch")  # the optional extra
    module = importlib.import_module(name)
    result = doctest.testmod(module, extraglobs={"np": np}, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed"


def _undocumented(function, skip=("self",)) -> list[str]:
    doc = inspect.getdoc(function) or ""
    return [name for name in inspect.signature(function).parameters if name not in skip
            and name not in doc]  # fmt: skip


@pytest.mark.parametrize("name", F.__all__)
def test_every_functional_argument_is_documented(name):
    assert not _undocumented(getattr(F, name))


@pytest.mark.parametrize("name", [n for n in nn.__all__ if isinstance(getattr(nn, n), type)])
def test_every_layer_argument_is_documented(name):
    layer = getattr(nn, name)
    doc = inspect.getdoc(layer) or ""
    missing = [
        p for p in inspect.signature(layer.__init__).parameters if p != "self" and p not in doc
    ]
    assert not missing, f"{name}'s docstring does not describe {missing}"
