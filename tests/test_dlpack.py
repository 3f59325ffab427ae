"""Any DLPack array in, the caller's type out: PyTorch tensors and a minimal DLPack array
type go through every kind of op without a copy, ``out=`` and ``inplace=True`` give back
the caller's own object, and mixed types, mixed devices, tensors that require grad and
devices fastcnn cannot run on are refused with errors naming the argument."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

import fastcnn.functional as F
from fastcnn import _arrays
from fastcnn.backends import BackendUnavailableError
from fastcnn.testing.specs import SPECS


class Wrapped:
    """A minimal array library: DLPack export and an array namespace, nothing else."""

    def __init__(self, array: np.ndarray, device: tuple[int, int] = (1, 0)):
        self.array, self.device = array, device

    def __dlpack__(self, **kwargs):
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.device

    def __array_namespace__(self):
        return types.SimpleNamespace(from_dlpack=lambda array: Wrapped(np.from_dlpack(array)))


def test_a_minimal_dlpack_array_comes_back_in_its_own_type(rng):
    x = rng.standard_normal((2, 3, 6, 6))
    result = F.max_pool2d(Wrapped(x), 2)
    assert isinstance(result, Wrapped)
    np.testing.assert_array_equal(result.array, F.max_pool2d(x, 2))


def test_devices_fastcnn_cannot_run_on_are_refused():
    with pytest.raises(TypeError, match="x lives on metal; fastcnn runs on the CPU"):
        F.relu(Wrapped(np.ones(3), device=(8, 0)))
    with pytest.raises(TypeError, match=r"different devices .*x: cpu:0, weight: cuda:0"):
        F.linear(Wrapped(np.ones((2, 3))), Wrapped(np.ones((4, 3)), device=(2, 0)))


def test_a_cuda_array_without_cupy_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy raises ImportError
    with pytest.raises(BackendUnavailableError, match=r"x lives on a CUDA device.*CuPy"):
        _arrays.module_for_device((2, 0), "x")
    assert _arrays.module_for_device((1, 0)) is np


try:
    import torch
except ImportError:  # the optional extra: the tests below need it
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="needs torch (the optional extra)")


def _tensor(rng, *shape, dtype="float64"):
    return torch.from_numpy(rng.standard_normal(shape)).to(getattr(torch, dtype))


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_tensors_in_torch_tensors_out(rng, dtype):
    x, w, b = _tensor(rng, 2, 3, 9, 9, dtype=dtype), _tensor(rng, 4, 3, 3, 3, dtype=dtype), None
    tolerance = {"rtol": 1e-4, "atol": 1e-4} if dtype == "float32" else {}
    y = F.conv2d(x, w, b, padding=1)
    assert isinstance(y, torch.Tensor) and y.dtype == getattr(torch, dtype)
    torch.testing.assert_close(y, torch.nn.functional.conv2d(x, w, padding=1), **tolerance)
    grad_x, grad_w, grad_b = F.conv2d_backward(torch.ones_like(y), x, w, padding=1)
    assert all(isinstance(t, torch.Tensor) for t in (grad_x, grad_w, grad_b))
    pooled, indices = F.max_pool2d(y, 2, return_indices=True)
    expected, expected_indices = torch.nn.functional.max_pool2d(y, 2, return_indices=True)
    torch.testing.assert_close(pooled, expected)
    assert torch.equal(indices, expected_indices)
    torch.testing.assert_close(F.relu(y), torch.relu(y))
    logits = F.linear(pooled.reshape(2, -1), _tensor(rng, 10, 64, dtype=dtype))
    labels = torch.tensor([3, 7])
    loss = F.cross_entropy(logits, labels)
    assert isinstance(loss, torch.Tensor) and loss.shape == ()
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, labels))
    dropped, mask = F.dropout(y, 0.5, return_mask=True)
    assert mask.dtype == torch.bool and torch.equal(dropped, y * mask * 2)


@needs_torch
def test_the_result_shares_no_copy_and_out_is_the_callers_tensor(rng):
    x = _tensor(rng, 4, 5)
    out = torch.empty(4, 5, dtype=torch.float64)
    assert F.relu(x, out=out) is out
    torch.testing.assert_close(out, torch.relu(x))
    assert F.tanh(x, inplace=True) is x  # written in place, in the caller's memory
    y = F.sigmoid(x)
    assert np.shares_memory(y.numpy(), np.from_dlpack(y))  # a view of fastcnn's output
    grads = (torch.empty(4, 5, dtype=torch.float64), torch.empty(3, 5, dtype=torch.float64), None)
    result = F.linear_backward(_tensor(rng, 4, 3), x, _tensor(rng, 3, 5), bias=False, out=grads)
    assert result[0] is grads[0] and result[1] is grads[1] and result[2] is None


@needs_torch
def test_strided_input_is_copied_and_strided_out_refused(rng):
    x = _tensor(rng, 2, 3, 8, 8).transpose(2, 3)
    assert not x.is_contiguous()
    torch.testing.assert_close(F.avg_pool2d(x, 2), torch.nn.functional.avg_pool2d(x, 2))
    out = torch.empty(2, 3, 8, 8, dtype=torch.float64).transpose(2, 3)
    with pytest.raises(ValueError, match="out must be C-contiguous"):
        F.relu(x, out=out)


@needs_torch
def test_mixed_types_and_grad_requiring_tensors_are_refused(rng):
    x, w = _tensor(rng, 2, 3, 5, 5), rng.standard_normal((4, 3, 3, 3))
    with pytest.raises(TypeError, match=r"mixed .*x: torch.Tensor, weight: numpy.ndarray"):
        F.conv2d(x, w)
    with pytest.raises(TypeError, match=r"out\[0\]: numpy.ndarray"):
        F.max_pool2d(x, 2, return_indices=True, out=(np.empty((2, 3, 2, 2)), None))
    with pytest.raises(ValueError, match=r"x requires grad.*fastcnn.torch.*x.detach\(\)"):
        F.relu(x.requires_grad_())
    with pytest.raises(TypeError, match="cannot be imported through DLPack"):
        F.relu(torch.ones(3, dtype=torch.bfloat16))
    with pytest.raises(TypeError, match=r"x \(torch.Tensor\) lives on a device fastcnn cannot"):
        F.relu(torch.ones(3, device="meta"))


def test_every_op_takes_dlpack_arrays():
    """Every public op goes through the one DLPack entry (accepts_dlpack's wrapper)."""
    wrapper_code = _arrays.accepts_dlpack(lambda: None).__code__
    assert [name for name in F.__all__ if getattr(F, name).__code__ is not wrapper_code] == []


def _to_numpy(value):
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, dict):
        return {key: _to_numpy(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_to_numpy(item) for item in value)
    return value


@needs_torch
@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.name)
def test_every_spec_gives_the_same_result_for_tensors_as_for_arrays(spec, rng):
    """Each op's first spec case, forward and backward, on torch tensors: the results come
    back as tensors and equal the NumPy call's exactly (the same kernel ran)."""
    case = spec.cases[0]
    arrays = spec.make_inputs(case, "float64", rng)
    tensors = {name: torch.from_numpy(array) for name, array in arrays.items()}
    expected = spec.forward(arrays, case.params, "reference")
    result = spec.forward(tensors, case.params, "reference")
    assert isinstance(result, (torch.Tensor, tuple))
    np.testing.assert_equal(_to_numpy(result), expected)
    if spec.backward is None:
        return
    y = expected[0] if isinstance(expected, tuple) else expected
    grad_y = rng.standard_normal(np.shape(y))
    expected_grads = spec.backward(arrays, case.params, grad_y, expected, "reference")
    grads = spec.backward(
        tensors, case.params, torch.from_numpy(grad_y), _tensors(result), "reference"
    )
    np.testing.assert_equal(_to_numpy(grads), expected_grads)


def _tensors(value):
    return tuple(value) if isinstance(value, tuple) else value
