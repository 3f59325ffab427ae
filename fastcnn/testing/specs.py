"""The one spec table: for every op, how to call it, its sample and error cases,
tolerances, FLOP and byte counts, benchmark shapes, and the PyTorch equivalent.

Tests expand it over op x backend x dtype (``tests/test_ops.py``); the benchmarks and
``fastcnn bench`` read their shapes and costs from it. Adding an op or a backend adds
no test code: add a :class:`OpSpec` here and kernels in the backends.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import fastcnn.functional as F
from fastcnn import _shapes

Arrays = dict[str, Any]


@dataclass(frozen=True)
class Case:
    """One call: the shapes of its array inputs and its keyword parameters.

    ``scale`` multiplies the random inputs (large values test numerical stability);
    ``offset`` is added to the first input after (a mean large against its spread);
    ``tags`` name the benchmark suites a case belongs to, and ``"beyond_torch"`` marks a
    case whose result PyTorch leaves undefined (not compared with it).
    """

    name: str
    shapes: dict[str, tuple[int, ...]]
    params: dict[str, Any] = field(default_factory=dict)
    scale: float = 1.0
    tags: tuple[str, ...] = ()
    offset: float = 0.0


@dataclass(frozen=True)
class ErrorCase:
    """A bad call: the base case's inputs changed by ``mutate`` and/or ``params``,
    which must raise ``exception`` with a message matching ``match``."""

    name: str
    exception: type[Exception]
    match: str
    params: dict[str, Any] = field(default_factory=dict)
    mutate: Callable[[Arrays], None] | None = None


@dataclass(frozen=True)
class OpSpec:
    """How to test and benchmark one op (and its backward).

    forward(inputs, params, backend) -> output
    backward(inputs, params, grad_y, y, backend) -> {input name: gradient}
    torch_forward(torch_functional, tensors, params) -> tensor (the peer)
    cost(case, itemsize, direction) -> (flops, bytes) with direction "fwd" or "bwd"
    """

    name: str
    ops: tuple[str, str | None]  # registry names of the forward and backward kernels
    inputs: tuple[str, ...]  # array inputs in call order; floats unless listed in `integer`
    forward: Callable
    cases: tuple[Case, ...]
    backward: Callable | None = None
    differentiable: tuple[str, ...] = ()
    integer: tuple[str, ...] = ()
    masks: tuple[str, ...] = ()  # bool inputs, True with probability 1 - params["p"]
    positive: tuple[str, ...] = ()  # float inputs drawn in [0.5, 2) (variances)
    ndim_checked: tuple[str, ...] = ()
    errors: tuple[ErrorCase, ...] = ()
    tolerance: dict[str, float] = field(default_factory=lambda: {"float32": 1e-4, "float64": 1e-10})
    torch_forward: Callable | None = None
    cost: Callable | None = None
    bench: tuple[Case, ...] = ()

    def make_inputs(self, case: Case, dtype, rng: np.random.Generator) -> Arrays:
        """Fresh random inputs for ``case`` (integer class labels where needed)."""
        inputs: Arrays = {}
        for name, shape in case.shapes.items():
            if name in self.integer:
                first = case.shapes[self.inputs[0]]
                classes = first[1] if len(first) > 1 else first[0]  # (N, C, ...) or (C,)
                inputs[name] = rng.integers(0, classes, size=shape)
            elif name in self.masks:
                inputs[name] = rng.random(shape) >= case.params.get("p", 0.5)
            elif name in self.positive:
                inputs[name] = (0.5 + 1.5 * rng.random(shape)).astype(dtype)
            else:
                values = rng.standard_normal(shape) * case.scale
                if name == self.inputs[0]:
                    values += case.offset
                inputs[name] = values.astype(dtype)
        return inputs


def _without(params: dict, *names: str) -> dict:
    return {k: v for k, v in params.items() if k not in names}


# ---------------------------------------------------------------------------- convolution


def _batched(shape: tuple[int, ...]) -> tuple[int, ...]:
    """An unbatched (C, H, W) shape as the batch of one it is computed as."""
    return (1, *shape) if len(shape) == 3 else tuple(shape)


def conv_geometry(case: Case) -> _shapes.ConvGeometry:
    params = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, **case.params}
    return _shapes.conv2d_geometry(
        _batched(case.shapes["x"]),
        case.shapes["weight"],
        case.shapes.get("bias"),
        params["stride"],
        params["padding"],
        params["dilation"],
        params["groups"],
    )


def _conv_cost(case: Case, itemsize: int, direction: str) -> tuple[float, float]:
    g = conv_geometry(case)
    x, w, y = g.N * g.C * g.H * g.W, g.K * (g.C // g.groups) * g.R * g.S, g.N * g.K * g.P * g.Q
    if direction == "fwd":
        return g.flops, itemsize * (x + w + y)
    # grad_x and grad_weight each cost a forward's FLOPs; read grad_y, x, w; write grad_x, grad_w
    return 2 * g.flops, itemsize * (2 * x + 2 * w + y)


def _conv_torch(torch_functional, t, params):
    case = Case("", {k: tuple(v.shape) for k, v in t.items()}, params)
    g = conv_geometry(case)
    x = t["x"]
    if (g.pad_bottom, g.pad_right) == (g.pad_h, g.pad_w):  # torch pads symmetrically itself
        return torch_functional.conv2d(
            x,
            t["weight"],
            t.get("bias"),
            (g.stride_h, g.stride_w),
            (g.pad_h, g.pad_w),
            (g.dilation_h, g.dilation_w),
            g.groups,
        )
    # "same" with an even extent pads more at the bottom / right, which torch cannot express.
    x = torch_functional.pad(x, (g.pad_w, g.pad_right, g.pad_h, g.pad_bottom))
    return torch_functional.conv2d(
        x,
        t["weight"],
        t.get("bias"),
        (g.stride_h, g.stride_w),
        0,
        (g.dilation_h, g.dilation_w),
        g.groups,
    )


def _conv_backward(inputs, params, grad_y, y, backend):
    grad_x, grad_weight, grad_bias = F.conv2d_backward(
        grad_y, inputs["x"], inputs["weight"], **params, bias="bias" in inputs, backend=backend
    )
    grads = {"x": grad_x, "weight": grad_weight}
    if grad_bias is not None:
        grads["bias"] = grad_bias
    return grads


def _conv(name, x, weight, bias=True, tags=(), **params) -> Case:
    shapes = {"x": x, "weight": weight}
    if bias:
        shapes["bias"] = (weight[0],)
    return Case(name, shapes, params, tags=tags)


def _shrink_channels(inputs: Arrays) -> None:
    inputs["weight"] = inputs["weight"][:, :2]


CONV2D = OpSpec(
    name="conv2d",
    ops=("conv2d", "conv2d_backward"),
    inputs=("x", "weight", "bias"),
    forward=lambda i, p, b: F.conv2d(i["x"], i["weight"], i.get("bias"), **p, backend=b),
    backward=_conv_backward,
    differentiable=("x", "weight", "bias"),
    ndim_checked=("x", "weight"),
    cases=(
        _conv("3x3 pad 1", (2, 3, 9, 9), (4, 3, 3, 3), padding=1),
        _conv("stride 2 no bias", (2, 3, 10, 11), (5, 3, 3, 3), bias=False, stride=2),
        _conv("1x1 image", (3, 4, 1, 1), (2, 4, 1, 1)),
        _conv("1x1 image padded", (2, 2, 1, 1), (3, 2, 3, 3), padding=1),
        _conv("kernel equals input", (2, 3, 5, 5), (4, 3, 5, 5)),
        _conv("stride larger than kernel", (2, 3, 11, 11), (4, 3, 2, 2), stride=3),
        _conv("dilation 2", (2, 3, 12, 12), (4, 3, 3, 3), dilation=2, padding=2),
        _conv(
            "asymmetric pairs",
            (2, 3, 8, 10),
            (4, 3, 3, 5),
            stride=(2, 1),
            padding=(1, 2),
            dilation=(1, 2),
        ),
        _conv("groups 3", (2, 6, 7, 7), (9, 2, 3, 3), groups=3),
        _conv("depthwise", (2, 8, 9, 9), (8, 1, 3, 3), groups=8, padding=1),
        _conv("depthwise multiplier 2", (2, 4, 8, 8), (8, 1, 3, 3), bias=False, groups=4),
        _conv("depthwise stride 2", (2, 8, 11, 10), (8, 1, 3, 3), stride=2, padding=1, groups=8),
        _conv("depthwise unpadded, odd", (2, 5, 7, 9), (5, 1, 3, 3), bias=False, groups=5),
        _conv("depthwise 1x1 planes", (3, 4, 1, 1), (4, 1, 3, 3), padding=1, groups=4),
        _conv("depthwise pad 2", (1, 3, 6, 5), (3, 1, 3, 3), padding=2, groups=3),
        _conv("same, even kernel", (2, 3, 8, 8), (4, 3, 4, 4), padding="same"),
        _conv("same, stride 2", (2, 3, 9, 10), (4, 3, 3, 3), stride=2, padding="same"),
        _conv("valid", (1, 3, 6, 7), (2, 3, 3, 3), padding="valid"),
        _conv("batch 0", (0, 3, 6, 6), (4, 3, 3, 3)),
        _conv("odd sizes", (3, 5, 13, 7), (7, 5, 3, 2), padding=(1, 0)),
        _conv("16 -> 32 channels", (2, 16, 14, 14), (32, 16, 3, 3), padding=1),
        _conv("1x1 32 -> 24", (2, 32, 7, 7), (24, 32, 1, 1), bias=False),
        _conv("1x1 stride 2", (2, 12, 48, 47), (8, 12, 1, 1), stride=2),
        _conv("4 -> 16 channels 5x5", (4, 4, 20, 20), (16, 4, 5, 5)),
        _conv("1x1 stride (2, 3)", (2, 9, 7, 11), (5, 9, 1, 1), stride=(2, 3), bias=False),
        _conv("7x7 stride 2", (1, 3, 23, 23), (8, 3, 7, 7), stride=2, padding=3),
        _conv("unbatched (C, H, W)", (3, 9, 9), (4, 3, 3, 3), padding=1),
        # Regressions: shapes that once gave wrong results or corrupted the heap.
        _conv("7x7 pad 3, chunk from a garbage column", (2, 8, 32, 32), (8, 8, 7, 7), padding=3),
        _conv("1x3 on 40x19, chunk from a garbage column", (1, 1, 40, 19), (1, 1, 1, 3)),
        _conv("15x15 kernel", (1, 2, 26, 26), (2, 2, 15, 15), bias=False),
        _conv("padding past the kernel", (2, 4, 8, 8), (4, 4, 3, 3), padding=(0, 3)),
        _conv("1x1 padded", (1, 1, 6, 7), (1, 1, 1, 1), padding=1),
        _conv(
            "same, even kernel, groups 2", (1, 8, 16, 16), (8, 4, 2, 1), padding="same", groups=2
        ),
        # Both sides of each fast path's threshold (the path census checks each one ran).
        _conv("winograd 60 tiles (few)", (1, 8, 24, 40), (8, 8, 3, 3), padding=1),
        _conv("winograd 66 tiles (panels)", (1, 8, 24, 44), (8, 8, 3, 3), padding=1),
        _conv("weight gradient 1023 positions (packed)", (1, 8, 31, 33), (8, 8, 1, 1)),
        _conv("weight gradient 1024 positions (unpacked)", (1, 8, 32, 32), (8, 8, 1, 1)),
        _conv("weight gradient 2^18 elements (split)", (1, 512, 4, 4), (512, 512, 1, 1)),
        _conv("small channels: 8 channels, 256 taps", (1, 8, 10, 10), (4, 8, 4, 8)),
        _conv("small channels: 8 channels, 264 taps", (1, 8, 10, 12), (4, 8, 3, 11)),
        _conv("small channels: 9 channels", (2, 9, 8, 8), (4, 9, 3, 3), padding=1),
        _conv("small channels: two row blocks", (1, 2, 48, 48), (4, 2, 3, 3), padding=1),
    ),
    errors=(
        ErrorCase("weight channels", ValueError, r"weight\.shape\[1\]", mutate=_shrink_channels),
        ErrorCase("groups do not divide C", ValueError, "groups", params={"groups": 2}),
        ErrorCase(
            "bias length",
            ValueError,
            "bias",
            mutate=lambda i: i.update(bias=np.concatenate([i["bias"], i["bias"]])),
        ),
        ErrorCase("stride 0", ValueError, "stride", params={"stride": 0}),
        ErrorCase("dilation 0", ValueError, "dilation", params={"dilation": (1, 0)}),
        ErrorCase("negative padding", ValueError, "padding", params={"padding": -1}),
        ErrorCase("padding word", ValueError, "padding", params={"padding": "full"}),
        ErrorCase("float stride", TypeError, "stride", params={"stride": 1.5}),
        ErrorCase("groups 0", ValueError, "groups", params={"groups": 0}),
        ErrorCase(
            "kernel larger than input",
            ValueError,
            "kernel",
            params={"padding": 0},
            mutate=lambda i: i.update(x=i["x"][:, :, :2, :2].copy()),
        ),
    ),
    torch_forward=_conv_torch,
    cost=_conv_cost,
    bench=(
        _conv(
            "resnet50 conv1 7x7/2",
            (8, 3, 224, 224),
            (64, 3, 7, 7),
            bias=False,
            stride=2,
            padding=3,
            tags=("resnet50", "quick"),
        ),
        _conv(
            "resnet50 1x1 64->64", (8, 64, 56, 56), (64, 64, 1, 1), bias=False, tags=("resnet50",)
        ),
        _conv(
            "resnet50 3x3 64->64",
            (8, 64, 56, 56),
            (64, 64, 3, 3),
            bias=False,
            padding=1,
            tags=("resnet50", "quick"),
        ),
        _conv(
            "resnet50 1x1 64->256", (8, 64, 56, 56), (256, 64, 1, 1), bias=False, tags=("resnet50",)
        ),
        _conv(
            "resnet50 1x1 256->64",
            (8, 256, 56, 56),
            (64, 256, 1, 1),
            bias=False,
            tags=("resnet50", "quick"),
        ),
        _conv(
            "resnet50 1x1 256->128 s2",
            (8, 256, 56, 56),
            (128, 256, 1, 1),
            bias=False,
            stride=2,
            tags=("resnet50",),
        ),
        _conv(
            "resnet50 3x3 128->128",
            (8, 128, 28, 28),
            (128, 128, 3, 3),
            bias=False,
            padding=1,
            tags=("resnet50",),
        ),
        _conv(
            "resnet50 1x1 128->512",
            (8, 128, 28, 28),
            (512, 128, 1, 1),
            bias=False,
            tags=("resnet50",),
        ),
        _conv(
            "resnet50 3x3 256->256",
            (8, 256, 14, 14),
            (256, 256, 3, 3),
            bias=False,
            padding=1,
            tags=("resnet50",),
        ),
        _conv(
            "resnet50 1x1 256->1024",
            (8, 256, 14, 14),
            (1024, 256, 1, 1),
            bias=False,
            tags=("resnet50",),
        ),
        _conv(
            "resnet50 3x3 512->512",
            (8, 512, 7, 7),
            (512, 512, 3, 3),
            bias=False,
            padding=1,
            tags=("resnet50",),
        ),
        _conv(
            "resnet50 1x1 512->2048",
            (8, 512, 7, 7),
            (2048, 512, 1, 1),
            bias=False,
            tags=("resnet50",),
        ),
        _conv("vgg 3->64 224", (1, 3, 224, 224), (64, 3, 3, 3), padding=1, tags=("vgg",)),
        _conv("vgg 64->64 224", (1, 64, 224, 224), (64, 64, 3, 3), padding=1, tags=("vgg",)),
        _conv("vgg 64->128 112", (1, 64, 112, 112), (128, 64, 3, 3), padding=1, tags=("vgg",)),
        _conv("vgg 128->256 56", (1, 128, 56, 56), (256, 128, 3, 3), padding=1, tags=("vgg",)),
        _conv("vgg 256->512 28", (1, 256, 28, 28), (512, 256, 3, 3), padding=1, tags=("vgg",)),
        _conv("vgg 512->512 14", (1, 512, 14, 14), (512, 512, 3, 3), padding=1, tags=("vgg",)),
        _conv("lenet c1 1->6 5x5", (256, 1, 28, 28), (6, 1, 5, 5), tags=("lenet", "quick")),
        _conv("lenet c2 6->16 5x5", (256, 6, 12, 12), (16, 6, 5, 5), tags=("lenet",)),
        _conv(
            "cifar 3->32 3x3", (64, 3, 32, 32), (32, 3, 3, 3), padding=1, tags=("lenet", "quick")
        ),
        _conv(
            "mobilenet dw 32 112",
            (8, 32, 112, 112),
            (32, 1, 3, 3),
            bias=False,
            padding=1,
            groups=32,
            tags=("depthwise", "quick"),
        ),
        _conv(
            "mobilenet dw 64 112 s2",
            (8, 64, 112, 112),
            (64, 1, 3, 3),
            bias=False,
            stride=2,
            padding=1,
            groups=64,
            tags=("depthwise",),
        ),
        _conv(
            "deepbench speech 20x5 s2",
            (8, 1, 161, 700),
            (32, 1, 5, 20),
            bias=False,
            stride=2,
            tags=("deepbench",),
        ),
    ),
)


# ---------------------------------------------------------------------------- pooling


def _pool_geometry(case: Case, max_pool: bool) -> _shapes.PoolGeometry:
    params = case.params
    return _shapes.pool2d_geometry(
        _batched(case.shapes["x"]),
        params["kernel_size"],
        params.get("stride"),
        params.get("padding", 0),
        params.get("dilation", 1) if max_pool else 1,
        params.get("ceil_mode", False),
        params.get("count_include_pad", True),
        params.get("divisor_override"),
    )


def _pool_cost(max_pool: bool):
    def cost(case: Case, itemsize: int, direction: str) -> tuple[float, float]:
        g = _pool_geometry(case, max_pool)
        x, y = g.N * g.C * g.H * g.W, g.N * g.C * g.P * g.Q
        # forward: read x, write y; backward: read grad_y, write grad_x, and for max
        # pooling read the forward's int64 indices of the maxima.
        traffic = itemsize * (x + y)
        if direction == "bwd" and max_pool:
            traffic += 8 * y
        return y * g.R * g.S, traffic

    return cost


def _max_pool_forward(i, p, b):
    p = _without(p, "use_indices")
    if p.get("return_indices") and p.get("out") is not None:
        p["out"] = (p["out"], None)  # the output only; fresh indices
    y = F.max_pool2d(i["x"], **p, backend=b)
    return y[0] if isinstance(y, tuple) else y


def _max_pool_backward(inputs, params, grad_y, y, backend):
    params = _without(params, "return_indices")
    indices = None
    if params.pop("use_indices", False):
        indices = F.max_pool2d(inputs["x"], **params, return_indices=True, backend="reference")[1]
    return {
        "x": F.max_pool2d_backward(grad_y, inputs["x"], **params, indices=indices, backend=backend)
    }


def _max_pool_torch(torch_functional, t, params):
    return torch_functional.max_pool2d(t["x"], **_without(params, "use_indices", "return_indices"))


def _pool(name, x, tags=(), **params) -> Case:
    return Case(name, {"x": x}, params, tags=tags)


def _pool_errors(max_pool: bool) -> tuple[ErrorCase, ...]:
    base = {"kernel_size": 2}
    errors = [
        ErrorCase("kernel 0", ValueError, "kernel_size", params={**base, "kernel_size": 0}),
        ErrorCase("stride 0", ValueError, "stride", params={**base, "stride": 0}),
        ErrorCase("negative padding", ValueError, "padding", params={**base, "padding": -1}),
        ErrorCase(
            "padding over half the kernel",
            ValueError,
            "padding",
            params={"kernel_size": 3, "padding": 2},
        ),
        ErrorCase(
            "kernel larger than padded input",
            ValueError,
            "kernel_size",
            params={"kernel_size": 5},
            mutate=lambda i: i.update(x=i["x"][:, :, :3, :3].copy()),
        ),
        ErrorCase("kernel as float", TypeError, "kernel_size", params={"kernel_size": 2.0}),
        ErrorCase(
            "ceil_mode not bool", TypeError, "ceil_mode", params={**base, "ceil_mode": "yes"}
        ),
    ]
    if max_pool:
        errors.append(
            ErrorCase("dilation 0", ValueError, "dilation", params={**base, "dilation": 0})
        )
    return tuple(errors)


_POOL_CASES = (
    _pool("2x2", (2, 3, 8, 8), kernel_size=2),
    _pool("3x3 stride 2", (2, 3, 9, 9), kernel_size=3, stride=2),
    _pool("3x3/2 pad 1 ceil", (2, 3, 10, 10), kernel_size=3, stride=2, padding=1, ceil_mode=True),
    _pool("ceil keeps last window", (2, 2, 7, 7), kernel_size=2, stride=2, ceil_mode=True),
    _pool(
        "ceil drops window in padding",
        (1, 2, 5, 5),
        kernel_size=2,
        stride=2,
        padding=1,
        ceil_mode=True,
    ),
    _pool("asymmetric", (2, 3, 9, 12), kernel_size=(3, 2), stride=(2, 1), padding=(1, 0)),
    _pool("1x1 image", (2, 3, 1, 1), kernel_size=1),
    _pool("kernel equals input", (2, 3, 4, 4), kernel_size=4),
    _pool("stride larger than kernel", (2, 2, 11, 11), kernel_size=2, stride=3),
    _pool("batch 0", (0, 3, 4, 4), kernel_size=2),
    _pool("odd sizes", (3, 5, 13, 7), kernel_size=3, stride=(1, 2), padding=1),
    _pool("unbatched (C, H, W)", (3, 7, 7), kernel_size=3, stride=2, padding=1),
    _pool("2x2, rows of 15", (2, 2, 6, 30), kernel_size=2),
    _pool("2x2, rows of 16", (2, 2, 6, 32), kernel_size=2),
    _pool("3x3/3, rows of 16", (1, 2, 9, 48), kernel_size=3),
    # 2^15 input elements, whole planes, is one piece of the cpp kernels' plane split
    _pool("3x3/2, 17 planes of 48x40", (1, 17, 48, 40), kernel_size=3, stride=2, padding=1),
    _pool("3x3/2, 18 planes of 48x40", (2, 9, 48, 40), kernel_size=3, stride=2, padding=1),
    _pool("2x2, 18 planes of 48x40", (2, 9, 48, 40), kernel_size=2),
)

_POOL_BENCH = (
    _pool(
        "3x3/2 32x64x112",
        (32, 64, 112, 112),
        kernel_size=3,
        stride=2,
        padding=1,
        tags=("memory", "quick"),
    ),
    _pool("2x2 32x64x112", (32, 64, 112, 112), kernel_size=2, tags=("memory", "quick")),
)

MAX_POOL2D = OpSpec(
    name="max_pool2d",
    ops=("max_pool2d", "max_pool2d_backward"),
    inputs=("x",),
    forward=_max_pool_forward,
    backward=_max_pool_backward,
    differentiable=("x",),
    ndim_checked=("x",),
    cases=(
        *_POOL_CASES,
        _pool("dilation 2", (2, 2, 11, 11), kernel_size=3, dilation=2, padding=1, stride=1),
        _pool(
            "dilation, ceil",
            (1, 2, 10, 9),
            kernel_size=2,
            dilation=(2, 3),
            stride=2,
            ceil_mode=True,
        ),
        _pool(
            "2x2 with indices", (2, 3, 8, 8), kernel_size=2, return_indices=True, use_indices=True
        ),
        # cpp takes rows of fewer than 16 windows a chunk across rows (and planes' ends)
        _pool("2x2 with indices, odd sizes", (2, 2, 7, 9), kernel_size=2, return_indices=True),
        _pool("2x2 with indices, rows of 15", (2, 2, 6, 30), kernel_size=2, return_indices=True),
        _pool("2x2 with indices, rows of 16", (2, 2, 6, 32), kernel_size=2, return_indices=True),
        _pool(
            "unbatched with indices",
            (3, 8, 8),
            kernel_size=2,
            return_indices=True,
            use_indices=True,
        ),
        _pool(
            "3x3/3 rows of 16 with indices",
            (1, 2, 9, 48),
            kernel_size=3,
            return_indices=True,
            use_indices=True,
        ),
        _pool(
            "window wholly in the padding",
            (1, 2, 1, 3),
            kernel_size=2,
            dilation=2,
            padding=1,
            return_indices=True,
            use_indices=True,
            tags=("beyond_torch",),
        ),
        _pool(
            "rows wholly in the padding",
            (2, 2, 2, 7),
            kernel_size=(2, 3),
            dilation=(3, 1),
            padding=1,
            tags=("beyond_torch",),
        ),
        _pool(
            "returned indices",
            (2, 3, 9, 9),
            kernel_size=3,
            stride=2,
            padding=1,
            return_indices=True,
            use_indices=True,
        ),
    ),
    errors=_pool_errors(max_pool=True),
    torch_forward=_max_pool_torch,
    cost=_pool_cost(max_pool=True),
    bench=_POOL_BENCH[:1],
)

AVG_POOL2D = OpSpec(
    name="avg_pool2d",
    ops=("avg_pool2d", "avg_pool2d_backward"),
    inputs=("x",),
    forward=lambda i, p, b: F.avg_pool2d(i["x"], **p, backend=b),
    backward=lambda i, p, gy, y, b: {"x": F.avg_pool2d_backward(gy, i["x"], **p, backend=b)},
    differentiable=("x",),
    ndim_checked=("x",),
    cases=(
        *_POOL_CASES,
        _pool(
            "pad 1, count_include_pad off",
            (2, 3, 7, 8),
            kernel_size=3,
            stride=2,
            padding=1,
            count_include_pad=False,
        ),
        _pool(
            "pad 1, ceil, count_include_pad off",
            (2, 3, 10, 10),
            kernel_size=3,
            stride=2,
            padding=1,
            ceil_mode=True,
            count_include_pad=False,
        ),
        _pool("divisor_override", (2, 3, 9, 9), kernel_size=3, padding=1, divisor_override=2),
        _pool(
            "negative divisor_override, ceil",
            (1, 2, 6, 7),
            kernel_size=2,
            stride=(1, 2),
            ceil_mode=True,
            divisor_override=-3,
        ),
    ),
    errors=(
        *_pool_errors(max_pool=False),
        ErrorCase(
            "divisor_override 0", ValueError, "divisor_override", params={"divisor_override": 0}
        ),
        ErrorCase(
            "divisor_override float",
            ValueError,
            "divisor_override",
            params={"divisor_override": 2.0},
        ),
    ),
    torch_forward=lambda tf, t, p: tf.avg_pool2d(t["x"], **p),
    cost=_pool_cost(max_pool=False),
    bench=_POOL_BENCH[1:],
)


# ---------------------------------------------------------------------------- activations


def _elementwise_cost(case: Case, itemsize: int, direction: str) -> tuple[float, float]:
    n = math.prod(case.shapes["x"])
    return n, itemsize * n * (2 if direction == "fwd" else 3)


_ELEMENTWISE_CASES = (
    Case("4-D", {"x": (2, 3, 4, 5)}),
    Case("vector with tail", {"x": (1027,)}),
    Case("one chunk", {"x": (1 << 16,)}),
    Case("one chunk and one", {"x": ((1 << 16) + 1,)}),
    Case("one element", {"x": (1,)}),
    Case("empty", {"x": (0, 3)}),
    Case("large values", {"x": (3, 100)}, scale=50.0),
)
_ELEMENTWISE_BENCH = (Case("32x64x112x112", {"x": (32, 64, 112, 112)}, tags=("memory", "quick")),)


def _activation(name, torch_name=None, saved="x", **params) -> OpSpec:
    forward_fn = getattr(F, name)
    backward_fn = getattr(F, f"{name}_backward")

    def backward(inputs, params, grad_y, y, backend):
        saved_value = inputs["x"] if saved == "x" else y
        return {"x": backward_fn(grad_y, saved_value, **params, backend=backend)}

    errors = ()
    if params:
        errors = (
            ErrorCase(
                "slope as string", TypeError, "negative_slope", params={"negative_slope": "0.1"}
            ),
        )
    return OpSpec(
        name=name,
        ops=(name, f"{name}_backward"),
        inputs=("x",),
        forward=lambda i, p, b: forward_fn(i["x"], **p, backend=b),
        backward=backward,
        differentiable=("x",),
        cases=tuple(Case(c.name, c.shapes, params, c.scale) for c in _ELEMENTWISE_CASES),
        errors=errors,
        torch_forward=lambda tf, t, p: getattr(tf, torch_name or name)(t["x"], *p.values()),
        cost=_elementwise_cost,
        bench=_ELEMENTWISE_BENCH,
    )


RELU = _activation("relu")
LEAKY_RELU = _activation("leaky_relu", negative_slope=0.2)
SIGMOID = _activation("sigmoid", saved="y")
TANH = _activation("tanh", saved="y")


# ---------------------------------------------------------------------------- batch norm


def _batch_norm_running(i, params):
    """The running statistics, as copies in training (the forward updates them in place;
    the harness holds inputs unchanged; tests/test_nn.py checks the update itself)."""
    running = (i.get("running_mean"), i.get("running_var"))
    if params.get("training"):
        running = tuple(None if a is None else a.copy() for a in running)
    return running


def _batch_norm_forward(i, p, backend):
    return F.batch_norm(
        i["x"], *_batch_norm_running(i, p), i.get("weight"), i.get("bias"), **p, backend=backend
    )


def _batch_norm_backward(inputs, params, grad_y, y, backend):
    grad_x, grad_weight, grad_bias = F.batch_norm_backward(
        grad_y, inputs["x"], inputs.get("running_mean"), inputs.get("running_var"),
        inputs.get("weight"), **{k: v for k, v in params.items() if k != "momentum"},
        backend=backend,
    )  # fmt: skip
    grads = {"x": grad_x}
    if "weight" in inputs:
        grads.update(weight=grad_weight, bias=grad_bias)
    return grads


def _batch_norm_torch(tf, t, p):
    return tf.batch_norm(
        t["x"], t.get("running_mean"), t.get("running_var"), t.get("weight"), t.get("bias"),
        training=p["training"], eps=p.get("eps", 1e-5),
    )  # fmt: skip


def _norm(
    name, x, affine=True, running=False, scale=1.0, tags=(), training=True, offset=0.0, **params
):
    C = x[1]
    shapes = {"x": x}
    if affine:
        shapes.update(weight=(C,), bias=(C,))
    if running:
        shapes.update(running_mean=(C,), running_var=(C,))
    return Case(name, shapes, {"training": training, **params}, scale, tags, offset)


BATCH_NORM = OpSpec(
    name="batch_norm",
    ops=("batch_norm", "batch_norm_backward"),
    inputs=("x", "weight", "bias", "running_mean", "running_var"),
    positive=("running_var",),
    forward=_batch_norm_forward,
    backward=_batch_norm_backward,
    differentiable=("x", "weight", "bias"),
    cases=(
        _norm("training 4-D", (4, 3, 5, 6)),
        _norm("training 2-D", (7, 5)),
        _norm("training, no affine", (3, 4, 3, 3), affine=False),
        _norm("training, large values", (2, 3, 4, 4), scale=1e3),
        _norm("training, eps 0.1", (3, 2, 4, 5), eps=0.1),
        # Two values a channel: the input gradient is all cancellation (zero by symmetry
        # but for eps). A mean large against the spread: float32 statistics, or grad_x
        # as a float32 a g + b x + c, cancel. The forward's error there is the batch mean's
        # rounding to float32 (as PyTorch's), ulp(offset) / 2 against the spread, below
        # 3e-5: these keep enough values a channel that the spread is never much smaller.
        _norm("training, two values a channel", (2, 5)),
        _norm("training, two values a channel, 3-D", (1, 3, 2), eps=1e-3),
        _norm("training, large mean", (8, 2, 3, 3), offset=1e3),
        _norm("training, large mean, small spread", (4, 3, 5, 5), scale=0.125, offset=100.0),
        _norm("eval", (3, 4, 5, 5), running=True, training=False),
        _norm("eval 3-D, no affine", (2, 3, 7), affine=False, running=True, training=False),
        _norm("training with running stats given", (2, 3, 4, 4), running=True),
        _norm("training, momentum -1.2", (3, 2, 4), running=True, momentum=-1.2),
        _norm("batch 0", (0, 3, 4, 4)),
        # One piece of 2^15 elements (cpp's threshold to split channels and rows over the
        # threads), and just above it.
        _norm("training, one piece", (2, 16, 32, 32)),
        _norm("training, above one piece", (2, 16, 32, 33)),
    ),
    errors=(
        ErrorCase(
            "weight shape",
            ValueError,
            "weight",
            mutate=lambda i: i.update(weight=i["weight"][:-1].copy()),
        ),
        ErrorCase("eps 0", ValueError, "eps", params={"eps": 0.0}),
        ErrorCase("eval without running stats", ValueError, "running", params={"training": False}),
        ErrorCase(
            "one value per channel",
            ValueError,
            "more than one value",
            mutate=lambda i: i.update(x=i["x"][:1, :, :1, :1].copy()),
        ),
    ),
    torch_forward=_batch_norm_torch,
    cost=lambda c, itemsize, d: (
        (4 if d == "fwd" else 8) * math.prod(c.shapes["x"]),
        (2 if d == "fwd" else 3) * itemsize * math.prod(c.shapes["x"]),
    ),
    bench=(_norm("resnet50 64x56x56", (8, 64, 56, 56), tags=("memory", "quick")),),
)


# ---------------------------------------------------------------------------- dropout


def _dropout_case(name, shape, scale=1.0, **params) -> Case:
    return Case(name, {"x": shape, "mask": shape}, params, scale)


def _dropout_torch(tf, t, p):
    # The mask is an input on both sides (fastcnn's is given too): the same work.
    keep = 1 - p.get("p", 0.5)
    return t["x"] * t["mask"] * (0.0 if keep == 0 else 1 / keep)


DROPOUT = OpSpec(
    name="dropout",
    ops=("dropout", "dropout_backward"),
    inputs=("x", "mask"),
    masks=("mask",),
    forward=lambda i, p, b: F.dropout(i["x"], **p, mask=i["mask"], backend=b),
    backward=lambda i, p, gy, y, b: {
        "x": F.dropout_backward(gy, i["mask"], p.get("p", 0.5), backend=b)
    },
    differentiable=("x",),
    cases=(
        *(_dropout_case(c.name, c.shapes["x"], c.scale, p=0.5) for c in _ELEMENTWISE_CASES),
        _dropout_case("p 0", (3, 50), p=0.0),
        _dropout_case("p 1", (3, 50), p=1.0),
        _dropout_case("p 0.2", (2, 3, 7, 5), p=0.2),
    ),
    errors=(
        ErrorCase("p above 1", ValueError, "p must", params={"p": 1.5}),
        ErrorCase("p as string", TypeError, "p must", params={"p": "0.5"}),
        ErrorCase(
            "mask shape",
            ValueError,
            "mask",
            mutate=lambda i: i.update(mask=i["mask"][..., :-1].copy()),
        ),
    ),
    torch_forward=_dropout_torch,
    cost=lambda c, itemsize, d: (
        math.prod(c.shapes["x"]),
        (2 * itemsize + 1) * math.prod(c.shapes["x"]),
    ),
    bench=(
        Case(
            "32x64x112x112",
            {"x": (32, 64, 112, 112), "mask": (32, 64, 112, 112)},
            {"p": 0.5},
            tags=("memory",),
        ),
    ),
)


# ---------------------------------------------------------------------------- linear


def _linear_cost(case: Case, itemsize: int, direction: str) -> tuple[float, float]:
    rows, in_features, out_features = _shapes.linear_shapes(
        case.shapes["x"], case.shapes["weight"], None
    )
    elements = rows * in_features + in_features * out_features + rows * out_features
    flops = 2 * rows * in_features * out_features
    return (
        (flops, itemsize * elements) if direction == "fwd" else (2 * flops, 2 * itemsize * elements)
    )


def _linear_backward(inputs, params, grad_y, y, backend):
    grad_x, grad_weight, grad_bias = F.linear_backward(
        grad_y, inputs["x"], inputs["weight"], bias="bias" in inputs, backend=backend
    )
    grads = {"x": grad_x, "weight": grad_weight}
    if grad_bias is not None:
        grads["bias"] = grad_bias
    return grads


def _linear(name, x, weight, bias=True, tags=()) -> Case:
    shapes = {"x": x, "weight": weight}
    if bias:
        shapes["bias"] = (weight[0],)
    return Case(name, shapes, tags=tags)


LINEAR = OpSpec(
    name="linear",
    ops=("linear", "linear_backward"),
    inputs=("x", "weight", "bias"),
    forward=lambda i, p, b: F.linear(i["x"], i["weight"], i.get("bias"), **p, backend=b),
    backward=_linear_backward,
    differentiable=("x", "weight", "bias"),
    ndim_checked=("weight",),
    cases=(
        _linear("matrix", (5, 7), (3, 7)),
        _linear("no bias", (4, 9), (6, 9), bias=False),
        _linear("vector", (7,), (3, 7)),
        _linear("3-D", (2, 4, 7), (5, 7)),
        _linear("batch 0", (0, 7), (3, 7)),
        _linear("wide", (33, 130), (17, 130)),
        _linear("just below 2^21 FLOPs (cpp on one thread)", (63, 128), (128, 128)),
        _linear("2^21 FLOPs (cpp threads)", (64, 128), (128, 128)),
        _linear("just below 2^26 FLOPs (one BLAS thread)", (255, 512), (256, 512)),
        _linear("2^26 FLOPs (threaded BLAS)", (256, 512), (256, 512)),
    ),
    errors=(
        ErrorCase(
            "in_features",
            ValueError,
            r"weight\.shape\[1\]",
            mutate=lambda i: i.update(x=i["x"][:, :-1].copy()),
        ),
        ErrorCase(
            "bias length", ValueError, "bias", mutate=lambda i: i.update(bias=i["bias"][:-1].copy())
        ),
    ),
    torch_forward=lambda tf, t, p: tf.linear(t["x"], t["weight"], t.get("bias")),
    cost=_linear_cost,
    bench=(
        _linear("lenet fc 400->120", (256, 400), (120, 400), tags=("lenet", "quick")),
        _linear("classifier 2048->1000", (256, 2048), (1000, 2048), tags=("classifier",)),
    ),
)


# ---------------------------------------------------------------------------- softmax and loss


def _softmax(name) -> OpSpec:
    function = getattr(F, name)
    return OpSpec(
        name=name,
        ops=(name, None),
        inputs=("x",),
        forward=lambda i, p, b: function(i["x"], **p, backend=b),
        cases=(
            Case("rows", {"x": (4, 10)}),
            Case("middle axis", {"x": (2, 3, 5)}, {"axis": 1}),
            Case("first axis", {"x": (2, 3, 5)}, {"axis": 0}),
            Case("vector", {"x": (7,)}),
            Case("logits of 1e8", {"x": (3, 6)}, scale=1e8),
            Case("empty", {"x": (0, 5)}),
            Case("empty axis", {"x": (3, 0)}),
            Case("one block", {"x": (4, 8192)}),
            Case("above one block", {"x": (2, 20000)}),
        ),
        errors=(
            ErrorCase("axis out of range", ValueError, "axis", params={"axis": 2}),
            ErrorCase("axis not int", TypeError, "axis", params={"axis": 1.0}),
        ),
        torch_forward=lambda tf, t, p: getattr(tf, name)(t["x"], dim=p.get("axis", -1)),
        cost=lambda c, itemsize, d: (
            5 * math.prod(c.shapes["x"]),
            2 * itemsize * math.prod(c.shapes["x"]),
        ),
        bench=(Case("logits 256x1000", {"x": (256, 1000)}, tags=("loss", "quick")),),
    )


SOFTMAX = _softmax("softmax")
LOG_SOFTMAX = _softmax("log_softmax")


def _cross_entropy_forward(inputs, params, backend):
    return F.cross_entropy(
        inputs["logits"], inputs["target"], inputs.get("weight"), **params, backend=backend
    )


def _cross_entropy_backward(inputs, params, grad_y, y, backend):
    return {
        "logits": F.cross_entropy_backward(
            inputs["logits"],
            inputs["target"],
            inputs.get("weight"),
            **params,
            grad_output=grad_y,
            backend=backend,
        )
    }


def _cross_entropy_torch(tf, t, p):
    return tf.cross_entropy(t["logits"], t["target"], t.get("weight"), **p)


def _cross_entropy_cost(c, itemsize, d):
    return 5 * math.prod(c.shapes["logits"]), itemsize * math.prod(c.shapes["logits"])


def _loss(name, logits, target, scale=1.0, weighted=False, **params) -> Case:
    shapes = {"logits": logits, "target": target}
    if weighted:
        shapes["weight"] = (logits[1] if len(logits) > 1 else logits[0],)
    return Case(name, shapes, params, scale)


_LOSS_ERRORS = (
    ErrorCase("reduction", ValueError, "reduction", params={"reduction": "avg"}),
    ErrorCase("label_smoothing", ValueError, "label_smoothing", params={"label_smoothing": 1.5}),
    ErrorCase(
        "label_smoothing not real", TypeError, "label_smoothing", params={"label_smoothing": "0.1"}
    ),
    ErrorCase(
        "weight length",
        ValueError,
        "weight",
        mutate=lambda i: i.update(weight=i["weight"][:-1].copy()),
    ),
)

CROSS_ENTROPY = OpSpec(
    name="cross_entropy",
    ops=("cross_entropy", "cross_entropy_backward"),
    inputs=("logits", "target", "weight"),
    integer=("target",),
    positive=("weight",),
    forward=_cross_entropy_forward,
    backward=_cross_entropy_backward,
    differentiable=("logits",),
    cases=(
        _loss("mean", (8, 5), (8,), weighted=True),
        _loss("unweighted", (8, 5), (8,)),
        _loss("sum", (8, 5), (8,), reduction="sum"),
        _loss("none", (8, 5), (8,), reduction="none"),
        _loss("weighted sum", (7, 4), (7,), weighted=True, reduction="sum"),
        _loss("weighted none", (7, 4), (7,), weighted=True, reduction="none"),
        _loss("spatial target", (2, 4, 3, 3), (2, 3, 3)),
        _loss("3 spatial axes", (2, 3, 2, 2, 3), (2, 2, 2, 3), weighted=True, reduction="none"),
        _loss("unbatched", (6,), ()),
        _loss("unbatched none", (6,), (), weighted=True, reduction="none"),
        _loss("ignore_index", (12, 3), (12,), ignore_index=1),
        _loss("ignore_index weighted", (12, 3), (12,), weighted=True, ignore_index=0),
        _loss("ignore_index none", (2, 3, 4), (2, 4), ignore_index=2, reduction="none"),
        _loss("everything ignored", (5, 1), (5,), ignore_index=0),
        _loss("label_smoothing", (8, 5), (8,), label_smoothing=0.1),
        _loss("label_smoothing 1", (4, 5), (4,), label_smoothing=1.0, reduction="sum"),
        _loss(
            "smoothing weighted ignored",
            (3, 4, 5),
            (3, 5),
            weighted=True,
            ignore_index=3,
            label_smoothing=0.25,
        ),
        _loss("smoothing none", (6, 7), (6,), label_smoothing=0.3, reduction="none"),
        _loss("logits of 1e8", (6, 4), (6,), scale=1e8, reduction="none"),
        _loss("logits of 1e8 smoothed", (6, 4), (6,), scale=1e8, label_smoothing=0.2),
        _loss("one class", (3, 1), (3,)),
        _loss("empty batch", (0, 5), (0,), reduction="sum"),
        _loss("one block", (32, 1024), (32,)),
        _loss("above one block", (33, 1024), (33,), reduction="none"),
        _loss("above one block smoothed", (33, 1024), (33,), weighted=True, label_smoothing=0.1),
    ),
    errors=(
        ErrorCase(
            "float target of another shape",
            TypeError,
            "target",
            mutate=lambda i: i.update(target=i["target"].astype(np.float64)),
        ),
        ErrorCase(
            "label out of range",
            ValueError,
            "target",
            mutate=lambda i: i.update(target=i["target"] + 5),
        ),
        ErrorCase(
            "negative label",
            ValueError,
            "target",
            mutate=lambda i: i.update(target=i["target"] - 9),
        ),
        ErrorCase(
            "target shape",
            ValueError,
            "target",
            mutate=lambda i: i.update(target=i["target"][:-1].copy()),
        ),
        ErrorCase("ignore_index not int", TypeError, "ignore_index", params={"ignore_index": 1.0}),
        *_LOSS_ERRORS,
    ),
    torch_forward=_cross_entropy_torch,
    cost=_cross_entropy_cost,
    bench=(
        Case("logits 256x1000", {"logits": (256, 1000), "target": (256,)}, tags=("loss", "quick")),
    ),
)


SOFT_CROSS_ENTROPY = OpSpec(
    name="soft_cross_entropy",
    ops=("soft_cross_entropy", "soft_cross_entropy_backward"),
    inputs=("logits", "target", "weight"),
    positive=("target", "weight"),
    forward=_cross_entropy_forward,
    backward=_cross_entropy_backward,
    differentiable=("logits",),
    cases=(
        _loss("mean", (8, 5), (8, 5), weighted=True),
        _loss("unweighted", (8, 5), (8, 5)),
        _loss("sum", (6, 5), (6, 5), reduction="sum"),
        _loss("none", (6, 5), (6, 5), weighted=True, reduction="none"),
        _loss("spatial", (2, 4, 3, 3), (2, 4, 3, 3), reduction="none"),
        _loss("3 spatial axes", (2, 3, 1, 2, 3), (2, 3, 1, 2, 3), weighted=True),
        _loss("unbatched", (6,), (6,)),
        _loss("label_smoothing", (8, 5), (8, 5), label_smoothing=0.1),
        _loss(
            "smoothing weighted none",
            (5, 6),
            (5, 6),
            weighted=True,
            label_smoothing=0.4,
            reduction="none",
        ),
        _loss("logits of 1e8", (6, 4), (6, 4), scale=1e8, reduction="none"),
        _loss("empty batch", (0, 5), (0, 5)),
        _loss("one block", (32, 1024), (32, 1024), reduction="none"),
        _loss("above one block", (33, 1024), (33, 1024), weighted=True, label_smoothing=0.05),
    ),
    errors=(
        ErrorCase(
            "ignore_index with probabilities",
            ValueError,
            "ignore_index",
            params={"ignore_index": 0},
        ),
        ErrorCase(
            "target shape",
            ValueError,
            "target",
            mutate=lambda i: i.update(target=i["target"][:, :-1].copy()),
        ),
        *_LOSS_ERRORS,
    ),
    torch_forward=_cross_entropy_torch,
    cost=_cross_entropy_cost,
)


SPECS: tuple[OpSpec, ...] = (
    CONV2D,
    MAX_POOL2D,
    AVG_POOL2D,
    RELU,
    LEAKY_RELU,
    SIGMOID,
    TANH,
    DROPOUT,
    BATCH_NORM,
    LINEAR,
    SOFTMAX,
    LOG_SOFTMAX,
    CROSS_ENTROPY,
    SOFT_CROSS_ENTROPY,
)
SPECS_BY_NAME = {spec.name: spec for spec in SPECS}
