"""Optimizers with PyTorch's update rules, updating ``Parameter.data`` in place.

The arithmetic uses the arrays' own operators, so NumPy and CuPy parameters both
work, and float32 parameters are updated in float32 (as PyTorch does).

>>> import numpy as np
>>> from fastcnn import nn, optim
>>> layer = nn.Linear(2, 1, dtype=np.float64)
>>> optimizer = optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
>>> layer.weight.grad = np.ones((1, 2)); layer.bias.grad = np.ones(1)
>>> before = layer.weight.data.copy()
>>> optimizer.step()
>>> np.allclose(layer.weight.data, before - 0.1)
True
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

from fastcnn import _shapes
from fastcnn._arrays import array_module
from fastcnn.nn import Parameter

__all__ = ["SGD", "Adam", "Optimizer"]


def _non_negative(name: str, value: object) -> float:
    """Check a hyperparameter as PyTorch does: a real number >= 0, else ValueError."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if not value >= 0.0:  # also refuses NaN
        raise ValueError(f"Invalid {name} value: {value}")
    return float(value)


class Optimizer:
    """Holds parameter groups and per-parameter state; subclasses implement ``step``.

    ``params`` is an iterable of :class:`~fastcnn.nn.Parameter`, or of dicts
    ``{"params": [...], "lr": ...}`` whose entries override the defaults for that
    group (as PyTorch's param groups). Hyperparameters live in ``param_groups``, so
    a schedule may change ``optimizer.param_groups[0]["lr"]`` between steps.
    """

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        self.defaults = defaults
        self.param_groups: list[dict[str, Any]] = []
        #: Per-parameter buffers (momentum, moments), keyed by the Parameter object.
        self.state: dict[Parameter, dict[str, Any]] = {}
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        seen: set[int] = set()
        for group in groups:
            self.add_param_group(group, seen)

    def add_param_group(self, group: dict[str, Any], seen: set[int] | None = None) -> None:
        """Add a group ``{"params": [...], hyperparameter: value, ...}``."""
        if seen is None:
            seen = {id(p) for existing in self.param_groups for p in existing["params"]}
        params = group["params"]
        params = [params] if isinstance(params, Parameter) else list(params)
        for parameter in params:
            if not isinstance(parameter, Parameter):
                raise TypeError(
                    f"optimizers take fastcnn.nn.Parameter objects, got {type(parameter).__name__}"
                )
            if id(parameter) in seen:
                raise ValueError("some parameters appear in more than one parameter group")
            seen.add(id(parameter))
        unknown = set(group) - set(self.defaults) - {"params"}
        if unknown:
            raise TypeError(f"unknown hyperparameters {sorted(unknown)}")
        full = {**self.defaults, **group, "params": params}
        self._check(full)
        self.param_groups.append(full)

    def _check(self, group: dict[str, Any]) -> None:
        """Validate a group's hyperparameters (ValueError, as PyTorch)."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset every parameter's gradient: to None (default, as PyTorch 2) or to zeros."""
        for group in self.param_groups:
            for parameter in group["params"]:
                if set_to_none:
                    parameter.grad = None
                elif parameter.grad is not None:
                    parameter.grad.fill(0)

    def step(self) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening, Nesterov and weight decay.

    PyTorch's rule, for each parameter p with gradient g (parameters whose grad is
    None are skipped)::

        g = g + weight_decay * p
        b = g                                   on the first step
        b = momentum * b + (1 - dampening) * g  afterwards
        g = g + momentum * b if nesterov else b (when momentum != 0)
        p = p - lr * g

    >>> import numpy as np
    >>> p = Parameter(np.array([1.0])); p.grad = np.array([0.5])
    >>> SGD([p], lr=0.1).step(); p.data
    array([0.95])
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
        )
        super().__init__(params, defaults)

    def _check(self, group: dict[str, Any]) -> None:
        for name in ("lr", "momentum", "weight_decay"):
            group[name] = _non_negative(name, group[name])
        if not isinstance(group["dampening"], numbers.Real):
            raise TypeError(f"dampening must be a real number, got {group['dampening']!r}")
        _shapes.flag("nesterov", group["nesterov"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def step(self) -> None:
        """Update every parameter that has a gradient, in place."""
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            dampening, weight_decay = group["dampening"], group["weight_decay"]
            for parameter in group["params"]:
                grad = parameter.grad
                if grad is None:
                    continue
                state = self.state.setdefault(parameter, {})
                if weight_decay != 0:
                    grad = grad + weight_decay * parameter.data
                if momentum != 0:
                    buffer = state.get("momentum_buffer")
                    if buffer is None:
                        # The first step takes the gradient itself, undamped.
                        buffer = state["momentum_buffer"] = grad.copy()
                    else:
                        buffer *= momentum
                        buffer += grad if dampening == 0 else (1 - dampening) * grad
                    grad = grad + momentum * buffer if group["nesterov"] else buffer
                # p -= lr * g through a kept array: plain (momentum) SGD allocates nothing.
                scaled = state.get("scaled_step")
                if scaled is None or scaled.shape != grad.shape or type(scaled) is not type(grad):
                    scaled = state["scaled_step"] = grad.copy()
                array_module(grad=grad).multiply(grad, lr, out=scaled)
                parameter.data -= scaled


class Adam(Optimizer):
    """Adam with bias correction and L2 weight decay (not AdamW), PyTorch's rule::

        g = g + weight_decay * p
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        p = p - lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    where t counts this parameter's steps from 1 and m, v start at zero.

    >>> import numpy as np
    >>> p = Parameter(np.array([1.0])); p.grad = np.array([0.5])
    >>> Adam([p], lr=0.1).step(); p.data  # the first step moves by about lr
    array([0.9])
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)

    def _check(self, group: dict[str, Any]) -> None:
        for name in ("lr", "eps", "weight_decay"):
            group[name] = _non_negative(name, group[name])
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair of floats, got {betas!r}")
        for index, beta in enumerate(betas):
            if not 0.0 <= _non_negative(f"beta parameter at index {index}", beta) < 1.0:
                raise ValueError(f"Invalid beta parameter at index {index}: {beta}")
        group["betas"] = (float(betas[0]), float(betas[1]))

    def step(self) -> None:
        """Update every parameter that has a gradient, in place."""
        for group in self.param_groups:
            lr, (beta1, beta2) = group["lr"], group["betas"]
            eps, weight_decay = group["eps"], group["weight_decay"]
            for parameter in group["params"]:
                grad = parameter.grad
                if grad is None:
                    continue
                xp = array_module(grad=grad, data=parameter.data)
                if weight_decay != 0:
                    grad = grad + weight_decay * parameter.data
                state = self.state.setdefault(parameter, {})
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = xp.zeros_like(parameter.data)
                    state["exp_avg_sq"] = xp.zeros_like(parameter.data)
                state["step"] += 1
                step = state["step"]
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg *= beta1
                exp_avg += (1 - beta1) * grad
                exp_avg_sq *= beta2
                exp_avg_sq += (1 - beta2) * grad * grad
                bias_correction1 = 1 - beta1**step
                bias_correction2_sqrt = math.sqrt(1 - beta2**step)
                denominator = xp.sqrt(exp_avg_sq) / bias_correction2_sqrt + eps
                parameter.data -= (lr / bias_correction1) * (exp_avg / denominator)
