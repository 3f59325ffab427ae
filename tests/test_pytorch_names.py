"""PyTorch's argument names and conventions where its users expect them: ``dim=``,
``dtype=``, ``inplace=``, ``divisor_override``, batch_norm's argument order and its
in-place running statistics. The values themselves are held to the reference through
the spec table; these tests pin the conventions."""

from __future__ import annotations

import numpy as np
import pytest

import fastcnn.functional as F
from fastcnn.backends import CPU_BACKENDS, available_backends, has_op

BACKENDS = [b for b in available_backends() if b in CPU_BACKENDS]


def _with(op: str) -> list[str]:
    return [b for b in BACKENDS if has_op(op, b)]


@pytest.mark.parametrize("backend", _with("softmax"))
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_takes_dim_dtype_and_a_scalar(name, backend, rng):
    function = getattr(F, name)
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    np.testing.assert_array_equal(
        function(x, dim=1, backend=backend), function(x, 1, backend=backend)
    )
    with pytest.raises(TypeError, match="axis= or dim="):
        function(x, 1, dim=1)
    cast = function(x, -1, dtype=np.float64, backend=backend)
    assert cast.dtype == np.float64
    np.testing.assert_allclose(cast, function(x.astype(np.float64), backend=backend), 1e-12)
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        function(x, dtype=np.int32)
    scalar = function(np.full((), 3.0), 0, backend=backend)
    assert scalar.shape == () and scalar == (1.0 if name == "softmax" else 0.0)
    with pytest.raises(ValueError, match="axis must be 0 or -1 for a 0-d x"):
        function(np.full((), 3.0), 1)


@pytest.mark.parametrize("backend", _with("relu"))
@pytest.mark.parametrize(
    ("name", "args"),
    [("relu", ()), ("leaky_relu", (0.2,)), ("sigmoid", ()), ("tanh", ())],
)
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_inplace_overwrites_x_and_returns_it(name, args, layout, backend, rng):
    if not has_op(name, backend):
        pytest.skip(f"{backend} has no {name}")
    function = getattr(F, name)
    base = rng.standard_normal((6, 8))
    x = base.copy() if layout == "contiguous" else base.copy()[:, ::2]
    expected = function(x.copy(), *args, backend=backend)
    result = function(x, *args, inplace=True, backend=backend)
    assert result is x
    np.testing.assert_array_equal(x, expected)
    with pytest.raises(ValueError, match="out= or inplace=True"):
        function(x, *args, inplace=True, out=np.empty_like(x))
    frozen = base.copy()
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        function(frozen, *args, inplace=True)
    with pytest.raises(TypeError, match="inplace"):
        function(x, *args, inplace="yes")


@pytest.mark.parametrize("backend", _with("dropout"))
def test_dropout_inplace(backend, rng):
    x = rng.standard_normal((5, 7))
    mask = rng.random(x.shape) > 0.3
    expected = F.dropout(x, 0.3, mask=mask, backend=backend)
    result = F.dropout(x, 0.3, True, True, mask=mask, backend=backend)
    assert result is x
    np.testing.assert_array_equal(x, expected)


@pytest.mark.parametrize("backend", _with("batch_norm"))
@pytest.mark.parametrize("momentum", [0.1, 0.0, 0.5, -1.2])
def test_batch_norm_takes_pytorchs_order_and_updates_running_statistics(momentum, backend, rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((4, 3, 5, 2))
    weight, bias = rng.random(3) + 0.5, rng.standard_normal(3)
    mean, var = rng.standard_normal(3), rng.random(3) + 0.5
    ours = (mean.copy(), var.copy())
    theirs = (torch.from_numpy(mean.copy()), torch.from_numpy(var.copy()))
    y = F.batch_norm(x, *ours, weight, bias, True, momentum, 1e-3, backend=backend)
    y_torch = torch.nn.functional.batch_norm(
        torch.from_numpy(x), *theirs, torch.from_numpy(weight), torch.from_numpy(bias),
        True, momentum, 1e-3,
    )  # fmt: skip
    np.testing.assert_allclose(y, y_torch.numpy(), atol=1e-12)
    for mine, torch_running in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(mine, torch_running.numpy(), atol=1e-12)
    # eval (PyTorch's default training=False) normalises with the running statistics
    y_eval = F.batch_norm(x, *ours, weight, bias, backend=backend)
    y_eval_torch = torch.nn.functional.batch_norm(
        torch.from_numpy(x), *theirs, torch.from_numpy(weight), torch.from_numpy(bias)
    )
    np.testing.assert_allclose(y_eval, y_eval_torch.numpy(), atol=1e-12)
    with pytest.raises(TypeError, match="momentum must be a real number"):
        F.batch_norm(x, *ours, training=True, momentum=None)


def test_batch_norm_without_running_statistics_needs_training():
    with pytest.raises(ValueError, match="running_mean and running_var are needed"):
        F.batch_norm(np.ones((2, 3)))


@pytest.mark.parametrize("backend", _with("avg_pool2d"))
def test_avg_pool_divisor_override_divides_every_window(backend, rng):
    x = rng.standard_normal((2, 3, 7, 7))
    sums = F.avg_pool2d(x, 3, 2, 1, divisor_override=1, backend=backend)
    halves = F.avg_pool2d(x, 3, 2, 1, False, True, 2, backend=backend)
    np.testing.assert_allclose(halves, sums / 2, atol=1e-12)
    grad = F.avg_pool2d_backward(np.ones_like(sums), x, 3, 2, 1, divisor_override=-4)
    assert set(np.unique(grad)) <= {0.0, -0.25, -0.5, -0.75, -1.0}
