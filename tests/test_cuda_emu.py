"""What only the CUDA kernels need: run under the emulator (backend ``cuda-emu``).

The spec suite, the fuzzing and the census run on ``cuda-emu`` like on every backend.
Here: the threads of a block between two barriers run in another order and every result
must be bitwise the same (a missing ``__syncthreads`` shows up as a difference); grids
over more than 2^31 elements index correctly (only their last blocks run, over lazily
mapped zero pages); the CUDA sources ship inside the wheel.
"""

from __future__ import annotations

import glob
import math
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fastcnn.backends import available_backends, has_op
from fastcnn.testing.harness import algorithm_cases, truth
from fastcnn.testing.specs import SPECS

ROOT = Path(__file__).resolve().parents[1]
EMULATED = "cuda-emu" in available_backends()
needs_emulator = pytest.mark.skipif(not EMULATED, reason="cuda-emu is not available")


def _calls():
    """Every spec case and algorithm on cuda-emu, forward and backward."""
    for spec in SPECS:
        for direction, op in zip(("forward", "backward"), spec.ops, strict=True):
            if op is None or not EMULATED or not has_op(op, "cuda-emu"):
                continue
            for case in spec.cases:
                for variant in algorithm_cases(spec, case, "cuda-emu", direction):
                    name = f"{spec.name}-{direction}-{variant.name}".replace(" ", "_")
                    yield pytest.param(spec, variant, direction, id=name)


def _run(spec, case, direction, inputs):
    if direction == "forward":
        return [spec.forward(inputs, case.params, "cuda-emu")]
    y = spec.forward(inputs, truth(case.params), "reference")
    grad_y = (
        np.random.default_rng(1).standard_normal(np.shape(y)).astype(inputs[spec.inputs[0]].dtype)
    )
    gradients = spec.backward(inputs, case.params, grad_y, y, "cuda-emu")
    return [gradients[name] for name in sorted(gradients)]


@needs_emulator
@pytest.mark.parametrize(("spec", "case", "direction"), list(_calls()))
def test_results_do_not_depend_on_the_order_threads_run_in(spec, case, direction, rng):
    from fastcnn.backends.cuda._emulator import emulation

    inputs = spec.make_inputs(case, np.float32, rng)
    results = {}
    for order, seed in (("forward", 0), ("reverse", 0), ("shuffle", 7)):
        with emulation(order=order, seed=seed):
            results[order] = [np.asarray(r).copy() for r in _run(spec, case, direction, inputs)]
    for order in ("reverse", "shuffle"):
        for first, other in zip(results["forward"], results[order], strict=True):
            np.testing.assert_array_equal(first, other, err_msg=f"forward vs {order}")


@needs_emulator
@pytest.mark.parametrize(
    ("x_shape", "w_shape", "params"),
    [
        ((2, 3, 1, 5), (4, 3, 1, 3), {"stride": 2}),  # one row: phase h = 1 holds no input
        ((1, 2, 9, 10), (3, 2, 2, 2), {"stride": 3, "padding": 1}),  # phases no tap reaches
        ((2, 4, 11, 9), (6, 2, 3, 3), {"stride": 2, "dilation": 2, "padding": 2, "groups": 2}),
        ((1, 3, 8, 13), (2, 3, 3, 5), {"stride": (3, 2), "padding": (2, 1), "dilation": (1, 3)}),
    ],
)
def test_the_stride_decomposed_input_gradient_matches_the_reference(x_shape, w_shape, params):
    """Per stride phase a GEMM over the taps that reach it: phases without inputs are
    skipped, phases no tap reaches are written as zeros, dilations alias taps onto phases."""
    import fastcnn.functional as F
    from fastcnn import _census

    rng = np.random.default_rng(5)
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape)
    grad_y = rng.standard_normal(F.conv2d(x, w, **params, backend="reference").shape)
    expected = F.conv2d_backward(grad_y, x, w, **params, backend="reference")
    with _census.counting() as seen:
        actual = F.conv2d_backward(grad_y, x, w, **params, algo="implicit_gemm", backend="cuda-emu")
    assert seen[("cuda-emu", "conv2d.implicit_gemm.input_phases")] == 1
    for got, want in zip(actual, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-10 * max(1, np.abs(want).max()))


@needs_emulator
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("x_shape", "w_shape", "params", "all_packed"),
    [
        ((2, 12, 6, 10), (40, 12, 1, 1), {}, True),  # 1x1: x along H*W = 60, weights along C
        ((2, 24, 4, 6), (10, 12, 1, 1), {"groups": 2}, True),  # 1x1, a group's first channel
        ((2, 4, 10, 8), (6, 4, 3, 3), {}, True),  # weights along C*R*S = 36, grad_y P*Q = 48
        ((3, 4, 10, 8), (6, 4, 3, 3), {"padding": 1}, True),  # P*Q = 80
        ((2, 4, 9, 9), (6, 4, 3, 3), {}, False),  # P*Q = 49: grad_y in scalars
        ((2, 5, 7, 7), (8, 5, 1, 1), {}, False),  # H*W = 49, C = 5: all in scalars
    ],
)
def test_the_16_byte_gemm_loads_match_the_scalar_ones_bitwise(
    x_shape, w_shape, params, all_packed, dtype
):
    """Operands contiguous along the direction a thread loads, with row lengths a multiple
    of the lanes, load in 16-byte packs when 16-byte aligned, and one element into a larger
    buffer ("offset") in scalars; the sums run in the same order, so the results are
    bitwise the same, and they match the reference."""
    import fastcnn.functional as F
    from fastcnn import _census
    from fastcnn.testing.compare import relayout

    rng = np.random.default_rng(3)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    grad_y = rng.standard_normal(F.conv2d(x, w, **params, backend="reference").shape)
    grad_y = grad_y.astype(dtype)
    runs = {}
    for layout in ("contiguous", "offset"):
        arrays = [relayout(a, layout) for a in (x, w, grad_y)]
        with _census.counting() as seen:
            y = F.conv2d(*arrays[:2], **params, algo="implicit_gemm", backend="cuda-emu")
            gradients = F.conv2d_backward(arrays[2], *arrays[:2], **params,
                                          algo="implicit_gemm", backend="cuda-emu")  # fmt: skip
        runs[layout] = [np.asarray(y), *gradients[:2]]
        packed = seen[("cuda-emu", "conv2d.implicit_gemm.vector_loads")]
        scalar = seen[("cuda-emu", "conv2d.implicit_gemm.scalar_loads")]
        if layout == "offset":
            assert (packed, scalar > 0) == (0, True)
        elif all_packed:
            assert (packed > 0, scalar) == (True, 0)
        else:
            assert scalar > 0
    for packed, scalar in zip(runs["contiguous"], runs["offset"], strict=True):
        np.testing.assert_array_equal(packed, scalar)
    expected = [F.conv2d(x, w, **params, backend="reference"),
                *F.conv2d_backward(grad_y, x, w, **params, backend="reference")[:2]]  # fmt: skip
    tolerance = 1e-4 if dtype == np.float32 else 1e-10
    for got, want in zip(runs["contiguous"], expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=tolerance * np.abs(want).max())


@needs_emulator
def test_a_grid_past_two_to_the_31_indexes_its_last_elements():
    """relu over 2^31 + 1000 floats: only the last blocks run, on lazily mapped pages."""
    from fastcnn.backends.cuda import activation
    from fastcnn.backends.cuda._emulator import emulation
    from fastcnn.backends.cuda.emu import RUNTIME

    n = (1 << 31) + 1000
    x = np.zeros(n, np.float32)  # calloc'd: no page is touched until written
    x[-4096:] = np.linspace(-2, 2, 4096, dtype=np.float32)
    y = np.zeros(n, np.float32)
    threads = 64
    blocks = math.ceil(n / threads)  # one element a thread: the grid itself passes 2^31
    with emulation(blocks=range(blocks - 70, blocks)):
        RUNTIME.launch(
            activation.SOURCE, np.dtype(np.float32),
            "fastcnn::unary_forward<{T}, fastcnn::Relu<{T}>, false>", (blocks, 1, 1),
            (threads, 1, 1), (x, y, np.int64(n), np.float32(0)),
        )  # fmt: skip
    np.testing.assert_array_equal(y[-4096:], np.maximum(x[-4096:], 0))
    assert not y[: n - 70 * threads].any()  # blocks not run left their outputs alone


def test_the_wheel_ships_the_cuda_sources(tmp_path):
    """Also a wheel built without the C++ extension (the fallback when it fails to build)."""
    pytest.importorskip("scikit_build_core")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
         "-q", "-w", str(tmp_path), "-Cwheel.cmake=false"],
        check=True,
    )  # fmt: skip
    (wheel,) = glob.glob(str(tmp_path / "*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {f"fastcnn/kernels/cuda/{p.relative_to(ROOT / 'kernels' / 'cuda')}"
               for p in (ROOT / "kernels" / "cuda").rglob("*") if p.is_file()}  # fmt: skip
    assert sources and sources <= names, sorted(sources - names)
