"""fastcnn.optim: SGD and Adam follow torch.optim step for step, and validate like it."""

from __future__ import annotations

import numpy as np
import pytest

import fastcnn
from fastcnn import nn, optim
from fastcnn.nn import Parameter

CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.3)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01)),
    ("SGD", dict(lr=0.1, weight_decay=0.1)),
    ("Adam", dict()),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
]
TOLERANCE = {np.float64: 1e-12, np.float32: 1e-6}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    "name, hyperparameters",
    CASES,
    ids=[" ".join([n, *(f"{k}={v}" for k, v in h.items())]) for n, h in CASES],
)
def test_steps_match_torch(name, hyperparameters, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    shapes = [(3, 4), (5,), (2,)]
    initial = [rng.standard_normal(shape).astype(dtype) for shape in shapes]
    ours = [Parameter(value.copy()) for value in initial]
    theirs = [torch.nn.Parameter(torch.from_numpy(value.copy())) for value in initial]
    our_optimizer = getattr(optim, name)(ours, **hyperparameters)
    their_optimizer = getattr(torch.optim, name)(theirs, **hyperparameters)
    for step in range(6):
        for index, (mine, torchs) in enumerate(zip(ours, theirs, strict=True)):
            # The last parameter has no gradient on odd steps: both optimizers skip it.
            if index == 2 and step % 2:
                mine.grad, torchs.grad = None, None
                continue
            grad = rng.standard_normal(mine.shape).astype(dtype)
            mine.grad = grad
            torchs.grad = torch.from_numpy(grad.copy())
        our_optimizer.step()
        their_optimizer.step()
        for mine, torchs in zip(ours, theirs, strict=True):
            assert mine.data.dtype == dtype
            np.testing.assert_allclose(
                mine.data, torchs.detach().numpy(), rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype]
            )


def test_param_groups_use_their_own_hyperparameters():
    torch = pytest.importorskip("torch")
    values = [np.array([1.0, -2.0]), np.array([0.5])]
    ours = [Parameter(v.copy()) for v in values]
    theirs = [torch.nn.Parameter(torch.from_numpy(v.copy())) for v in values]
    our_optimizer = optim.SGD(
        [{"params": [ours[0]]}, {"params": [ours[1]], "lr": 0.5}], lr=0.1, momentum=0.9
    )
    their_optimizer = torch.optim.SGD(
        [{"params": [theirs[0]]}, {"params": [theirs[1]], "lr": 0.5}], lr=0.1, momentum=0.9
    )
    for _ in range(3):
        for mine, torchs in zip(ours, theirs, strict=True):
            mine.grad = np.ones_like(mine.data)
            torchs.grad = torch.ones_like(torchs)
        our_optimizer.step()
        their_optimizer.step()
    for mine, torchs in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(mine.data, torchs.detach().numpy(), rtol=1e-14)


def test_training_steps_match_torch():
    """Layers, loss and optimizer together: three Adam steps on a small CNN, float64."""
    torch = pytest.importorskip("torch")

    def build(layers, dtype):
        return layers.Sequential(
            layers.Conv2d(1, 3, 3, padding=1, dtype=dtype),
            layers.ReLU(),
            layers.MaxPool2d(2),
            layers.Flatten(),
            layers.Linear(3 * 3 * 3, 4, dtype=dtype),
        )

    torch.manual_seed(0)
    theirs = build(torch.nn, torch.float64)
    ours = build(nn, np.float64)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    our_optimizer = optim.Adam(ours.parameters(), lr=0.01, weight_decay=0.01)
    their_optimizer = torch.optim.Adam(theirs.parameters(), lr=0.01, weight_decay=0.01)
    criterion = nn.CrossEntropyLoss()
    rng = np.random.default_rng(1)
    with fastcnn.use_backend("reference"):
        for _ in range(3):
            x = rng.standard_normal((5, 1, 6, 6))
            labels = rng.integers(0, 4, size=5)
            criterion(ours(x), labels)
            our_optimizer.zero_grad()
            ours.backward(criterion.backward())
            our_optimizer.step()
            their_optimizer.zero_grad()
            torch.nn.functional.cross_entropy(
                theirs(torch.from_numpy(x)), torch.from_numpy(labels)
            ).backward()
            their_optimizer.step()
    for key, value in theirs.state_dict().items():
        np.testing.assert_allclose(ours.state_dict()[key], value.numpy(), rtol=1e-10, atol=1e-12)


def test_zero_grad_and_parameters_without_gradients():
    parameter = Parameter(np.ones(2))
    optimizer = optim.SGD([parameter], lr=0.1, momentum=0.9)
    optimizer.step()  # no gradient yet: nothing moves and no state is created
    np.testing.assert_array_equal(parameter.data, 1.0)
    assert optimizer.state == {}
    parameter.grad = np.ones(2)
    optimizer.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(parameter.grad, 0.0)
    optimizer.zero_grad()
    assert parameter.grad is None


@pytest.mark.parametrize(
    "name, arguments",
    [
        ("SGD", dict(lr=-0.1)),
        ("SGD", dict(lr=0.1, momentum=-0.5)),
        ("SGD", dict(lr=0.1, weight_decay=-1.0)),
        ("SGD", dict(lr=0.1, nesterov=True)),
        ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)),
        ("Adam", dict(lr=-1.0)),
        ("Adam", dict(eps=-1e-8)),
        ("Adam", dict(betas=(1.0, 0.999))),
        ("Adam", dict(betas=(0.9, -0.1))),
        ("Adam", dict(weight_decay=-0.1)),
    ],
)
def test_invalid_hyperparameters_raise_value_error_like_torch(name, arguments):
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError):
        getattr(torch.optim, name)([torch.nn.Parameter(torch.ones(1))], **arguments)
    with pytest.raises(ValueError):
        getattr(optim, name)([Parameter(np.ones(1))], **arguments)


def test_bad_parameter_lists_are_refused():
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.Adam([])
    with pytest.raises(TypeError, match="Parameter"):
        optim.SGD([np.ones(2)], lr=0.1)
    shared = Parameter(np.ones(1))
    with pytest.raises(ValueError, match="more than one"):
        optim.SGD([{"params": [shared]}, {"params": [shared]}], lr=0.1)
