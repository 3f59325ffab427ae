"""Installs without the C++ extension still work: on purpose (``FASTCNN_NO_EXT=1``) and
when the build fails (no compiler); and without Numba, ``cpp`` takes NumPy arrays."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("scikit_build_core")


def _python(code: str, path: list[str], cwd) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter whose fastcnn comes from ``path``: without site's
    start-up files (-S), an editable install's import hook does not shadow it, and from a
    folder without a source tree (``-c`` puts the working directory first on the path)."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(path), "FASTCNN_QUIET": "1"}
    return subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, env=environment,
        cwd=cwd,
    )  # fmt: skip


def _site_packages() -> list[str]:
    return [*site.getsitepackages(), site.getusersitepackages()]


@pytest.mark.parametrize(
    ("how", "options"),
    [
        ("FASTCNN_NO_EXT=1", {"FASTCNN_NO_EXT": "1"}),
        ("a failed build", {"PIP_CONFIG_SETTINGS": "cmake.define.FASTCNN_FORCE_FAIL=ON"}),
    ],
)
def test_an_install_without_the_extension_runs_on_numba_and_says_why(tmp_path, how, options):
    environment = {**os.environ, **options}
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
         "--no-cache-dir", "-q", "-w", str(tmp_path / "wheel"),
         f"-Cbuild-dir={tmp_path / 'build'}"],
        check=True, env=environment, capture_output=True,
    )  # fmt: skip
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "fastcnn/functional.py" in names
    assert not [n for n in names if "_cpp" in n], how
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp_path / "site")
    result = _python(
        "import numpy as np, fastcnn, fastcnn.functional as F\n"
        "from fastcnn.backends import backend_status\n"
        "print(fastcnn.available_backends())\n"
        "print(backend_status()['cpp'][1])\n"
        "print(float(F.relu(np.array([-1.0, 2.0], np.float32)).sum()))\n"
        "print(fastcnn.__file__)",
        [str(tmp_path / "site"), *_site_packages()],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    backends, reason, total, where = result.stdout.strip().splitlines()
    assert where.startswith(str(tmp_path / "site")), where  # the wheel's, not a source tree
    assert "'numba'" in backends and "'cpp'" not in backends
    assert "not built" in reason
    assert total == "2.0"


_WITHOUT_NUMBA = """
import importlib.abc, sys

class HideNumba(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "numba" or name.startswith(("numba.", "llvmlite")):
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, HideNumba())
sys.path.insert(0, EXAMPLES)
import numpy as np, fastcnn, fastcnn.functional as F
from fastcnn.backends import select
print(fastcnn.available_backends())
print(select("conv2d", on_gpu=False)[0])
import train_digits
accuracy = train_digits.main(["--epochs", "2", "--batch-size", "32", "--seed", "0"])
print(accuracy)
"""


def test_without_numba_cpp_takes_numpy_arrays_and_trains_the_example(tmp_path):
    pytest.importorskip("fastcnn._cpp")
    pytest.importorskip("sklearn")
    code = _WITHOUT_NUMBA.replace("EXAMPLES", repr(str(ROOT / "examples")))
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True,
        env={**os.environ, "FASTCNN_QUIET": "1"}, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert "'numba'" not in lines[0] and "'cpp'" in lines[0]
    assert lines[1] == "cpp"
    assert float(lines[-1]) > 0.5  # chance is 0.1
