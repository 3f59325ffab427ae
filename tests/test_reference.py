"""The reference backend is the truth the other backends are held to, so it is held to
two independent ones: PyTorch (same semantics, when installed) and finite differences
(its gradients)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fastcnn.functional as F
from fastcnn.testing import assert_close
from fastcnn.testing.specs import SPECS


def _cases(with_backward: bool = False):
    for spec in SPECS:
        if with_backward and spec.backward is None:
            continue
        for case in spec.cases:
            yield pytest.param(spec, case, id=f"{spec.name}-{case.name}".replace(" ", "_"))


def _torch_params(params: dict) -> dict:
    return {k: v for k, v in params.items() if k not in ("use_indices", "return_indices")}


@pytest.mark.parametrize(("spec", "case"), list(_cases()))
def test_reference_matches_pytorch(spec, case, rng):
    torch = pytest.importorskip("torch")
    if "beyond_torch" in case.tags:
        # PyTorch reports an unspecified index for a window wholly in the padding, and its
        # backward then writes outside the gradient (heap corruption): nothing to compare.
        pytest.skip("a case PyTorch leaves undefined")
    inputs = spec.make_inputs(case, np.float64, rng)
    tensors = {k: torch.from_numpy(v.copy()) for k, v in inputs.items()}
    for name in spec.differentiable:
        if name in tensors:
            tensors[name].requires_grad_(True)
    expected = spec.torch_forward(torch.nn.functional, tensors, _torch_params(case.params))
    actual = spec.forward(inputs, case.params, "reference")
    # A mean large against the spread (``offset``) costs both implementations the same
    # relative precision in x - mean, |offset| / spread ulps, each rounding its own way.
    tolerance = 1e-12 + 256 * np.finfo(np.float64).eps * abs(case.offset) / case.scale
    assert_close(actual, expected.detach().numpy(), tolerance, f"{spec.name} forward")
    if spec.backward is None or expected.numel() == 0:
        return
    grad_y = rng.standard_normal(actual.shape)
    expected.backward(torch.from_numpy(grad_y))
    gradients = spec.backward(inputs, case.params, grad_y, actual, "reference")
    for name, gradient in gradients.items():
        assert_close(gradient, tensors[name].grad.numpy(), tolerance, f"grad of {name}")


def test_max_pool_indices_match_pytorch(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 3, 10, 9))
    x[0, 0, 1, 1] = x[0, 0, 1, 2] = 9.0  # a tie: the first maximum wins
    x[1, 2, 4, 4] = np.nan
    for params in (
        {"kernel_size": 3, "stride": 2, "padding": 1},
        {"kernel_size": 2, "dilation": 2, "ceil_mode": True, "stride": 2},
    ):
        y, indices = F.max_pool2d(x, **params, return_indices=True, backend="reference")
        y_torch, indices_torch = torch.nn.functional.max_pool2d(
            torch.from_numpy(x), **params, return_indices=True
        )
        np.testing.assert_array_equal(y, y_torch.numpy())
        np.testing.assert_array_equal(indices, indices_torch.numpy())


def _numeric_gradient(forward, grad_y, array, index, step=1e-6):
    """Central difference of sum(forward() * grad_y), and the rounding noise it carries.

    The outputs are differenced before they are summed: those the element does not reach
    cancel exactly, so the rounding of a large sum (a 255 x 256 linear layer) does not
    swamp the few that change. Those that change each carry a few ulps of rounding, which
    the division by the step magnifies: a reduced loss of 1e4 has a noise of about 1e-6
    at a step of 1e-6, as large as an error the comparison means to find. The noise is
    returned so the tolerance can allow for it."""
    original = array[index]
    array[index] = original + step
    up = forward()
    array[index] = original - step
    down = forward()
    array[index] = original
    changed = up != down
    magnitude = np.maximum(np.abs(up), np.abs(down))[changed]
    noise = 4 * np.finfo(np.float64).eps * float(np.sum(magnitude * np.abs(grad_y[changed])))
    return float(np.sum((up - down) * grad_y)) / (2 * step), noise / (2 * step)


@pytest.mark.parametrize(("spec", "case"), list(_cases(with_backward=True)))
def test_reference_gradients_match_finite_differences(spec, case, rng):
    """d/dinput of sum(forward(inputs) * grad_y), on a random sample of elements."""
    if "beyond_torch" in case.tags:
        pytest.skip("-inf outputs (windows wholly in the padding): no finite differences")
    inputs = spec.make_inputs(case, np.float64, rng)
    y = spec.forward(inputs, case.params, "reference")
    if not np.isfinite(y).all():
        pytest.skip("a NaN output (a mean over no target): no finite differences")
    grad_y = rng.standard_normal(y.shape)
    gradients = spec.backward(inputs, case.params, grad_y, y, "reference")

    def forward():
        return np.asarray(spec.forward(inputs, case.params, "reference"), np.float64)

    checked = 0
    for name in spec.differentiable:
        if name not in inputs or inputs[name].size == 0:
            continue
        flat_positions = rng.choice(
            inputs[name].size, size=min(12, inputs[name].size), replace=False
        )
        for flat in flat_positions:
            index = np.unravel_index(flat, inputs[name].shape)
            step = 1e-6 * max(1, case.scale)
            numeric, noise = _numeric_gradient(forward, grad_y, inputs[name], index, step)
            analytic = gradients[name][index]
            tolerance = 1e-6 * case.scale + noise
            assert math.isclose(numeric, analytic, rel_tol=1e-5, abs_tol=tolerance), (
                f"grad of {name}{index}: finite difference {numeric} (rounding noise "
                f"{noise:.1e}), backward {analytic}"
            )
            checked += 1
    if all(inputs[name].size for name in spec.differentiable if name in inputs):
        assert checked > 0
