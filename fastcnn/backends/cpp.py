"""The ``cpp`` backend: thin wrappers over the compiled extension ``fastcnn._cpp``.

The extension has one function per op and dtype (``relu_float32``, ``relu_float64``);
the wrappers here pick by dtype, pass the thread count (``fastcnn.set_num_threads``) and
record in the path census which path the kernel takes. The sources are in ``kernels/cpp``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from fastcnn import _census
from fastcnn._config import num_threads
from fastcnn._shapes import ConvGeometry, PoolGeometry
from fastcnn.autotune import choose as autotuned
from fastcnn.backends import _batch_norm as host
from fastcnn.backends import register

try:
    import fastcnn._cpp as _cpp
except ModuleNotFoundError as error:  # absent; an extension that fails to load says why itself
    # The folder helps when a source checkout shadows the installed package.
    raise ImportError(
        "fastcnn._cpp is not built: the C++ build failed or was skipped when fastcnn was "
        f"installed (fastcnn imported from {Path(__file__).parents[1]})"
    ) from error


def _by_dtype(name: str) -> dict[np.dtype, Callable[..., None]]:
    return {np.dtype(dtype): getattr(_cpp, f"{name}_{dtype}") for dtype in ("float32", "float64")}


# ---------------------------------------------------------------------------- activations

_census.declare("cpp", "activation.serial", "activation.chunks")


def _elementwise_threads(size: int) -> int:
    """Arrays of one chunk run on the calling thread (no pool start): 1 thread."""
    serial = size <= _cpp.ELEMENTWISE_CHUNK
    _census.record("cpp", "activation.serial" if serial else "activation.chunks")
    return 1 if serial else num_threads()


def _register_unary(name: str) -> None:
    forward, backward = _by_dtype(name), _by_dtype(f"{name}_backward")

    def run(x, y):
        forward[x.dtype](x, y, _elementwise_threads(y.size))

    def run_backward(grad_y, saved, grad_x):
        backward[grad_x.dtype](grad_y, saved, grad_x, _elementwise_threads(grad_x.size))

    register(name, "cpp")(run)
    register(f"{name}_backward", "cpp")(run_backward)


for _name in ("relu", "sigmoid", "tanh"):
    _register_unary(_name)

_leaky_relu, _leaky_relu_backward = _by_dtype("leaky_relu"), _by_dtype("leaky_relu_backward")
_dropout = _by_dtype("dropout")


@register("leaky_relu", "cpp")
def leaky_relu(x, y, negative_slope):
    _leaky_relu[x.dtype](x, y, float(negative_slope), _elementwise_threads(y.size))


@register("leaky_relu_backward", "cpp")
def leaky_relu_backward(grad_y, x, grad_x, negative_slope):
    _leaky_relu_backward[x.dtype](
        grad_y, x, grad_x, float(negative_slope), _elementwise_threads(grad_x.size)
    )


@register("dropout", "cpp")
def dropout(x, mask, y, scale):
    _dropout[x.dtype](x, mask, y, float(scale), _elementwise_threads(y.size))


@register("dropout_backward", "cpp")
def dropout_backward(grad_y, mask, grad_x, scale):
    _dropout[grad_y.dtype](grad_y, mask, grad_x, float(scale), _elementwise_threads(grad_x.size))


# ---------------------------------------------------------------------------- conv2d

CONV2D_DIRECTIONS = ("forward", "input_gradient", "weight_gradient")


def _unit_stride(g: ConvGeometry) -> bool:
    return g.stride_h == 1 and g.stride_w == 1


def _every_case(g: ConvGeometry, direction: str) -> bool:
    return True


def _by_forward(g: ConvGeometry, direction: str) -> bool:
    """An algorithm whose input gradient is its own forward pass over grad_y with the
    flipped, transposed weight: that is the input gradient of stride 1 only."""
    return direction != "input_gradient" or _unit_stride(g)


def _winograd_shape(g: ConvGeometry) -> bool:
    """3x3, stride 1, dilation 1: the shape Winograd F(4x4, 3x3) computes."""
    return (g.R, g.S, g.stride_h, g.stride_w, g.dilation_h, g.dilation_w) == (3, 3, 1, 1, 1, 1)


def _winograd_takes(g: ConvGeometry, direction: str) -> bool:
    """The forward pass and the input gradient (a forward on the transposed geometry, also
    3x3 stride 1) of a 3x3 stride-1 convolution; no weight gradient of its own."""
    return direction != "weight_gradient" and _winograd_shape(g)


#: The algorithms by their ``algo=`` names: which (geometry, direction) each takes. The
#: extension has conv2d_<name>, conv2d_<name>_input_gradient and, unless the algorithm has
#: none, conv2d_<name>_weight_gradient (per dtype).
CONV2D_TAKES: dict[str, Callable[[ConvGeometry, str], bool]] = {
    "direct": _every_case,
    "im2col": _every_case,
    "small_channels": _every_case,
    "winograd": _winograd_takes,
}
CONV2D_ALGORITHMS = tuple(CONV2D_TAKES)


def _has_kernel(name: str, direction: str) -> bool:
    """Whether the extension has the algorithm's kernel of that direction."""
    suffix = {"forward": "", "input_gradient": "_input_gradient"}.get(direction, f"_{direction}")
    return hasattr(_cpp, f"conv2d_{name}{suffix}_float32")


_census.declare(
    "cpp",
    *(f"conv2d.{a}.{d}" for a in CONV2D_ALGORITHMS for d in CONV2D_DIRECTIONS if _has_kernel(a, d)),
    "conv2d.im2col.pointwise",
    "conv2d.small_channels.weight_gradient.nonfinite_retry",
    "conv2d.small_channels.input_gradient.phases",
    "conv2d.winograd.few_tiles",
    "conv2d.winograd.stored_filter",
)


def _geometry(g: ConvGeometry) -> tuple[int, ...]:
    """The ConvGeometry as the extension's 16 ints (kernels/cpp/bindings.cpp's order)."""
    return (
        g.N, g.C, g.H, g.W, g.K, g.R, g.S, g.P, g.Q, g.stride_h, g.stride_w, g.pad_h,
        g.pad_w, g.dilation_h, g.dilation_w, g.groups,
    )  # fmt: skip


def _winograd_tiles(g: ConvGeometry, direction: str) -> int:
    """The 4x4 output tiles of the Winograd kernel: of y, or of grad_x (H x W)."""
    height, width = (g.P, g.Q) if direction == "forward" else (g.H, g.W)
    return g.N * -(-height // 4) * -(-width // 4)


def _pointwise(g: ConvGeometry) -> bool:
    """1x1, stride 1, no padding: im2col's GEMM reads x as it is (kernels/cpp/conv2d.cpp)."""
    return (g.R, g.S, g.stride_h, g.stride_w, g.pad_h, g.pad_w) == (1, 1, 1, 1, 0, 0)


def _flat(array):
    return None if array is None else array.reshape(-1)


def _conv2d_algorithm(name: str):
    """(forward, input gradient, weight gradient) of one algorithm, with the Numba
    backend's algorithm interface (fastcnn/backends/numba/conv2d.py); the weight gradient
    is None where the algorithm has none."""
    names = [f"conv2d_{name}{suffix}" for suffix in ("", "_input_gradient", "_weight_gradient")]
    kernels = [
        _by_dtype(kernel) if hasattr(_cpp, f"{kernel}_float32") else None for kernel in names
    ]

    def record(direction: str, g: ConvGeometry) -> None:
        _census.record("cpp", f"conv2d.{name}.{direction}")
        if name == "im2col" and _pointwise(g):
            _census.record("cpp", "conv2d.im2col.pointwise")
        if name == "small_channels" and direction == "input_gradient" and not _unit_stride(g):
            _census.record("cpp", "conv2d.small_channels.input_gradient.phases")
        if name == "winograd":  # kernels/cpp/winograd.cpp's choice
            few = _winograd_tiles(g, direction) <= _cpp.WINOGRAD_FEW_TILES
            _census.record("cpp", f"conv2d.winograd.{'few_tiles' if few else 'stored_filter'}")

    def forward(x, weight, bias, y, g: ConvGeometry) -> None:
        record("forward", g)
        kernels[0][x.dtype](
            _flat(x), _flat(weight), _flat(bias), _flat(y), _geometry(g), num_threads()
        )

    def input_gradient(grad_y, weight, grad_x, g: ConvGeometry) -> None:
        record("input_gradient", g)
        kernels[1][grad_y.dtype](
            _flat(grad_y), _flat(weight), _flat(grad_x), _geometry(g), num_threads()
        )

    def weight_gradient(grad_y, x, grad_weight, g: ConvGeometry) -> None:
        record("weight_gradient", g)
        kernels[2][grad_y.dtype](
            _flat(grad_y), _flat(x), _flat(grad_weight), _geometry(g), num_threads()
        )

    return forward, input_gradient, weight_gradient if kernels[2] else None


_ALGORITHMS = {name: _conv2d_algorithm(name) for name in CONV2D_ALGORITHMS}


def _redo_if_nan(name: str):
    """``name``'s weight gradient, for one that sums over the dropped columns of its rows
    too (grad_y zero there, x whatever the row holds): 0 x inf is NaN where the true sum
    may be finite. A NaN in the result is recomputed by ``direct``, which reads only the
    real positions (and gives NaN again where x really makes one)."""
    forward, input_gradient, weight_gradient = _ALGORITHMS[name]

    def checked(grad_y, x, grad_weight, g: ConvGeometry) -> None:
        weight_gradient(grad_y, x, grad_weight, g)
        if np.isnan(grad_weight).any():
            _census.record("cpp", f"conv2d.{name}.weight_gradient.nonfinite_retry")
            _ALGORITHMS["direct"][2](grad_y, x, grad_weight, g)

    return forward, input_gradient, checked


_ALGORITHMS["small_channels"] = _redo_if_nan("small_channels")
_conv2d_bias_gradient = _by_dtype("conv2d_bias_gradient")

#: What autotuning times: one direction of one algorithm, on arrays it made.
_RUNNERS = {
    "forward": lambda name, x, weight, y, g: _ALGORITHMS[name][0](x, weight, None, y, g),
    "input_gradient": lambda name, grad_y, weight, grad_x, g: _ALGORITHMS[name][1](
        grad_y, weight, grad_x, g
    ),
    "weight_gradient": lambda name, grad_y, x, grad_weight, g: _ALGORITHMS[name][2](
        grad_y, x, grad_weight, g
    ),
}

#: im2col's GEMM pays from this depth (channels per group x taps) on: below it, the
#: unfolding costs more than the direct row updates it replaces.
IM2COL_DEPTH = 32


def _deep(g: ConvGeometry) -> bool:
    return (g.C // g.groups) * g.R * g.S >= IM2COL_DEPTH


def _always(g: ConvGeometry) -> bool:
    return True


#: Per direction, the candidates of "auto" in order: (name, "does it pay?" predicate, why
#: it is picked), as the Numba backend's (fastcnn/backends/numba/conv2d.py). The first
#: whose predicate holds wins; the last always does. A predicate admits only cases its
#: algorithm takes.
_Candidate = tuple[str, Callable[[ConvGeometry], bool], str]


#: Winograd pays with at least this many 4x4 output tiles in all (one block of the kernel's
#: tiles, 32 in float32), and with this many a image or this many channel pairs C K.
WINOGRAD_PAYS_TILES, WINOGRAD_PAYS_IMAGE_TILES, WINOGRAD_PAYS_PAIRS = 32, 9, 256 * 256


def _winograd_pays(g: ConvGeometry) -> bool:
    """Measured (2 threads, float32, against im2col): 2.2-4x faster on the ResNet-50 and
    VGG 3x3 layers (batch 8), 1.5x on 512 x 512 channels at 7x7, even at 3 input channels
    (VGG conv1, CIFAR). Slower where the per-tile transforms outweigh the products: under
    one block of tiles (7x7 at batch 1: 3x slower), or a few tiles an image at 64 channels
    (8x8 images: 1.5x slower). Dense only (groups make many small products), and at least
    one whole 4x4 tile per image."""
    tiles_per_image = -(-g.P // 4) * -(-g.Q // 4)
    return (
        _winograd_shape(g)
        and g.groups == 1
        and min(g.P, g.Q) >= 4
        and g.N * tiles_per_image >= WINOGRAD_PAYS_TILES
        and (tiles_per_image >= WINOGRAD_PAYS_IMAGE_TILES or g.C * g.K >= WINOGRAD_PAYS_PAIRS)
    )


_WINOGRAD: _Candidate = ("winograd", _winograd_pays, "dense 3x3 stride 1 with enough 4x4 tiles")
_IM2COL: _Candidate = ("im2col", _deep, f"GEMM depth (C/groups)*R*S >= {IM2COL_DEPTH}")
_DIRECT: _Candidate = ("direct", _always, f"few channels a group (depth < {IM2COL_DEPTH})")
#: small_channels pays up to this many input channels per group and taps per output.
SMALL_CHANNELS = 8
SMALL_CHANNELS_TAPS = 256


def _few(channels: int, g: ConvGeometry) -> bool:
    """Few channels a group, and few taps (channels x kernel) an output."""
    return channels <= SMALL_CHANNELS and channels * g.R * g.S <= SMALL_CHANNELS_TAPS


def _few_channels(g: ConvGeometry) -> bool:
    return _few(g.C // g.groups, g)


_SMALL: _Candidate = (
    "small_channels",
    _few_channels,
    f"<= {SMALL_CHANNELS} channels per group, <= {SMALL_CHANNELS_TAPS} taps",
)


def _few_channels_input_gradient(g: ConvGeometry) -> bool:
    """Stride 1 as the forward pass; a strided input gradient is one convolution of grad_y
    per stride phase, over its Kg channels a group: few of those (depthwise)."""
    return _few_channels(g) if _unit_stride(g) else _few(g.K // g.groups, g)


_SMALL_INPUT_GRADIENT: _Candidate = (
    "small_channels",
    _few_channels_input_gradient,
    f"<= {SMALL_CHANNELS} channels per group and {SMALL_CHANNELS_TAPS} taps (strided: of grad_y's)",
)
CONV2D_CANDIDATES: dict[str, tuple[_Candidate, ...]] = {
    "forward": (_SMALL, _WINOGRAD, _IM2COL, _DIRECT),
    "input_gradient": (_SMALL_INPUT_GRADIENT, _WINOGRAD, _IM2COL, _DIRECT),
    "weight_gradient": (_SMALL, _IM2COL, _DIRECT),
}


class Conv2dAlgorithms:
    """What the registry and the functional API ask of cpp's conv2d algorithms."""

    names = CONV2D_ALGORITHMS
    directions = CONV2D_DIRECTIONS

    @staticmethod
    def takes(name: str, g: ConvGeometry, direction: str) -> bool:
        return CONV2D_TAKES[name](g, direction)

    @staticmethod
    def heuristic(g: ConvGeometry, direction: str) -> tuple[str, str]:
        """The first candidate that pays, and why."""
        return next((name, why) for name, pays, why in CONV2D_CANDIDATES[direction] if pays(g))

    @classmethod
    def choose(cls, g: ConvGeometry, direction: str, dtype) -> str:
        default = cls.heuristic(g, direction)[0]
        names = [name for name in cls.names if cls.takes(name, g, direction)]
        return autotuned(g, dtype, direction, default, names, _RUNNERS, backend="cpp")


_CONV2D = Conv2dAlgorithms()


@register("conv2d", "cpp", algorithms=_CONV2D)
def conv2d(x, weight, bias, y, g: ConvGeometry, *, algo: str) -> None:
    _ALGORITHMS[algo][0](x, weight, bias, y, g)


@register("conv2d_backward", "cpp", algorithms=_CONV2D)
def conv2d_backward(
    grad_y, x, weight, grad_x, grad_weight, grad_bias, g: ConvGeometry, *, algo: tuple
) -> None:
    """``algo``: (input-gradient algorithm or None when grad_x is not wanted, weight-
    gradient algorithm)."""
    input_algo, weight_algo = algo
    if grad_x is not None:
        _ALGORITHMS[input_algo][1](grad_y, weight, grad_x, g)
    _ALGORITHMS[weight_algo][2](grad_y, x, grad_weight, g)
    if grad_bias is not None:
        _conv2d_bias_gradient[grad_y.dtype](_flat(grad_y), grad_bias, _geometry(g), num_threads())


# ---------------------------------------------------------------------------- pooling
# Arrays go flat ((N, C, h, w) C-contiguous: reshape(-1) is a view); the geometry as ints.

_census.declare(
    "cpp",
    "max_pool2d.2x2",
    "max_pool2d.2x2_indices",
    "max_pool2d.2x2_indices_short_rows",
    "max_pool2d.separable",
    "max_pool2d.taps_indices",
    "max_pool2d_backward.2x2",
    "max_pool2d_backward.taps",
    "max_pool2d_backward.given_indices",
    "avg_pool2d.2x2",
    "avg_pool2d.separable",
    "avg_pool2d_backward.2x2",
    "avg_pool2d_backward.gather",
    "pool2d.one_piece",
    "pool2d.pieces",
)

# The kernels by variant: "" (values), "indices", "2x2", "2x2_indices", "backward",
# "backward_2x2", "backward_indices".
_max_pool = {
    variant: _by_dtype("_".join(filter(None, ("max_pool2d", variant))))
    for variant in ("", "indices", "2x2", "2x2_indices", "backward", "backward_2x2",
                    "backward_indices")
}  # fmt: skip
_avg_pool, _avg_pool_backward = _by_dtype("avg_pool2d"), _by_dtype("avg_pool2d_backward")
_avg_pool_2x2 = _by_dtype("avg_pool2d_2x2")
_avg_pool_backward_2x2 = _by_dtype("avg_pool2d_backward_2x2")


def _pool_threads(g: PoolGeometry) -> int:
    """The kernels split the planes into pieces of about POOL_CHUNK input elements (whole
    planes); inputs of one piece run on the calling thread (no pool start): 1 thread."""
    planes_per_piece = max(1, _cpp.POOL_CHUNK // max(1, g.H * g.W))
    serial = g.N * g.C <= planes_per_piece
    _census.record("cpp", "pool2d.one_piece" if serial else "pool2d.pieces")
    return 1 if serial else num_threads()


def _pool_ints(g: PoolGeometry) -> tuple[int, ...]:
    return (g.N * g.C, g.H, g.W, g.P, g.Q, g.R, g.S, g.stride_h, g.stride_w, g.pad_h, g.pad_w,
            g.dilation_h, g.dilation_w)  # fmt: skip


def _window_2x2(g: PoolGeometry) -> bool:
    """The 2x2 / 2 pool with no padding or dilation, every window inside x (no ceil-mode
    overhang): a plain window loop, its windows disjoint."""
    return (
        (g.R, g.S, g.stride_h, g.stride_w, g.pad_h, g.pad_w) == (2, 2, 2, 2, 0, 0)
        and g.dilation_h == g.dilation_w == 1
        and 2 * g.P <= g.H
        and 2 * g.Q <= g.W
    )


@register("max_pool2d", "cpp")
def max_pool2d(x, y, indices, g: PoolGeometry) -> None:
    window = _window_2x2(g)
    if indices is None:
        path, kernel = ("2x2", "2x2") if window else ("separable", "")
        _census.record("cpp", f"max_pool2d.{path}")
        _max_pool[kernel][x.dtype](x.reshape(-1), y.reshape(-1), _pool_ints(g), _pool_threads(g))
    else:
        path, kernel = ("2x2_indices", "2x2_indices") if window else ("taps_indices", "indices")
        if window and g.Q < _cpp.POOL_SHORT_ROW:  # rows shorter than a chunk: across rows
            path = "2x2_indices_short_rows"
        _census.record("cpp", f"max_pool2d.{path}")
        _max_pool[kernel][x.dtype](
            x.reshape(-1), y.reshape(-1), indices.reshape(-1), _pool_ints(g), _pool_threads(g)
        )


@register("max_pool2d_backward", "cpp")
def max_pool2d_backward(grad_y, x, indices, grad_x, g: PoolGeometry) -> None:
    if indices is not None:
        _census.record("cpp", "max_pool2d_backward.given_indices")
        _max_pool["backward_indices"][grad_x.dtype](
            grad_y.reshape(-1), indices.reshape(-1), grad_x.reshape(-1), _pool_ints(g),
            _pool_threads(g),
        )  # fmt: skip
        return
    window = _window_2x2(g)
    _census.record("cpp", "max_pool2d_backward.2x2" if window else "max_pool2d_backward.taps")
    _max_pool["backward_2x2" if window else "backward"][grad_x.dtype](
        grad_y.reshape(-1), x.reshape(-1), grad_x.reshape(-1), _pool_ints(g), _pool_threads(g)
    )


def _divisor(g: PoolGeometry) -> int:
    """The divisor_override as the kernel takes it: 0 for none (0 is refused as a value)."""
    return 0 if g.divisor_override is None else int(g.divisor_override)


@register("avg_pool2d", "cpp")
def avg_pool2d(x, y, g: PoolGeometry) -> None:
    if _window_2x2(g):  # every window inside x: count_include_pad changes no divisor
        _census.record("cpp", "avg_pool2d.2x2")
        _avg_pool_2x2[x.dtype](x.reshape(-1), y.reshape(-1), _pool_ints(g), _divisor(g),
                               _pool_threads(g))  # fmt: skip
        return
    _census.record("cpp", "avg_pool2d.separable")
    _avg_pool[x.dtype](
        x.reshape(-1), y.reshape(-1), _pool_ints(g), bool(g.count_include_pad), _divisor(g),
        _pool_threads(g),
    )  # fmt: skip


@register("avg_pool2d_backward", "cpp")
def avg_pool2d_backward(grad_y, grad_x, g: PoolGeometry) -> None:
    if _window_2x2(g):
        _census.record("cpp", "avg_pool2d_backward.2x2")
        _avg_pool_backward_2x2[grad_x.dtype](
            grad_y.reshape(-1), grad_x.reshape(-1), _pool_ints(g), _divisor(g), _pool_threads(g)
        )
        return
    _census.record("cpp", "avg_pool2d_backward.gather")
    _avg_pool_backward[grad_x.dtype](
        grad_y.reshape(-1), grad_x.reshape(-1), _pool_ints(g), bool(g.count_include_pad),
        _divisor(g), _pool_threads(g),
    )  # fmt: skip


# ---------------------------------------------------------------------------- softmax and loss

_census.declare("cpp", "softmax.serial", "softmax.blocks")

_softmax, _log_softmax = _by_dtype("softmax"), _by_dtype("log_softmax")
_cross_entropy, _cross_entropy_backward = (
    _by_dtype("cross_entropy"),
    _by_dtype("cross_entropy_backward"),
)
_soft_cross_entropy, _soft_cross_entropy_backward = (
    _by_dtype("soft_cross_entropy"),
    _by_dtype("soft_cross_entropy_backward"),
)


def _row_threads(size: int) -> int:
    """Inputs of one block run on the calling thread (no pool start): 1 thread."""
    serial = size <= _cpp.SOFTMAX_BLOCK
    _census.record("cpp", "softmax.serial" if serial else "softmax.blocks")
    return 1 if serial else num_threads()


@register("softmax", "cpp")
def softmax(x, y):
    _softmax[x.dtype](x, y, _row_threads(x.size))


@register("log_softmax", "cpp")
def log_softmax(x, y):
    _log_softmax[x.dtype](x, y, _row_threads(x.size))


@register("cross_entropy", "cpp")
def cross_entropy(logits, labels, weight, smoothing, losses):
    _cross_entropy[logits.dtype](
        logits, labels, weight, float(smoothing), losses, _row_threads(logits.size)
    )


@register("cross_entropy_backward", "cpp")
def cross_entropy_backward(logits, labels, weight, smoothing, row_scale, grad_logits):
    _cross_entropy_backward[logits.dtype](
        logits, labels, weight, float(smoothing), row_scale, grad_logits, _row_threads(logits.size)
    )


@register("soft_cross_entropy", "cpp")
def soft_cross_entropy(logits, targets, losses):
    _soft_cross_entropy[logits.dtype](logits, targets, losses, _row_threads(logits.size))


@register("soft_cross_entropy_backward", "cpp")
def soft_cross_entropy_backward(logits, targets, row_scale, grad_logits):
    _soft_cross_entropy_backward[logits.dtype](
        logits, targets, row_scale, grad_logits, _row_threads(logits.size)
    )


# ---------------------------------------------------------------------------- linear

_census.declare("cpp", "linear.serial", "linear.threads")

_linear, _linear_backward = _by_dtype("linear"), _by_dtype("linear_backward")


def _product_threads(x, weight) -> int:
    """Products (2 rows in out FLOPs) below the limit run on the calling thread: 1 thread."""
    serial = 2 * x.shape[0] * x.shape[1] * weight.shape[0] < _cpp.LINEAR_THREADED_FLOPS
    _census.record("cpp", "linear.serial" if serial else "linear.threads")
    return 1 if serial else num_threads()


@register("linear", "cpp")
def linear(x, weight, bias, y):
    _linear[x.dtype](x, weight, bias, y, _product_threads(x, weight))


@register("linear_backward", "cpp")
def linear_backward(grad_y, x, weight, grad_x, grad_weight, grad_bias):
    _linear_backward[x.dtype](
        grad_y, x, weight, grad_x, grad_weight, grad_bias, _product_threads(x, weight)
    )


# ---------------------------------------------------------------------------- batch_norm

_census.declare("cpp", "batch_norm.serial", "batch_norm.threads")
_bn_statistics = _by_dtype("batch_norm_statistics")
_bn_normalize = _by_dtype("batch_norm_normalize")
_bn_gradient_sums = _by_dtype("batch_norm_gradient_sums")
_bn_input_gradient = _by_dtype("batch_norm_input_gradient")


def _bn_threads(x) -> int:
    """Inputs of one piece run on the calling thread."""
    serial = x.size <= _cpp.BATCH_NORM_PIECE
    _census.record("cpp", "batch_norm.serial" if serial else "batch_norm.threads")
    return 1 if serial else num_threads()


def _bn_kernels(dtype):
    """The kernels with _batch_norm.py's interface ((N, C, L) arrays, float64 terms)."""

    def normalize(x, mean, scale, shift, y):
        _bn_normalize[dtype](_flat(x), mean, scale, shift, _flat(y), *x.shape, _bn_threads(x))

    def gradient_sums(grad_y, x, shift, sums):
        _bn_gradient_sums[dtype](
            _flat(grad_y), _flat(x), shift, _flat(sums), *x.shape, _bn_threads(x)
        )

    def input_gradient(grad_y, x, mean, scale, constant, slope, grad_x):
        _bn_input_gradient[dtype](
            _flat(grad_y), _flat(x), mean, np.ascontiguousarray(scale),
            np.ascontiguousarray(constant), np.ascontiguousarray(slope), _flat(grad_x),
            *x.shape, _bn_threads(x),
        )  # fmt: skip

    return normalize, gradient_sums, input_gradient


_BN_KERNELS = {np.dtype(d): _bn_kernels(np.dtype(d)) for d in ("float32", "float64")}


@register("batch_norm_statistics", "cpp")
def batch_norm_statistics(x, mean, var) -> None:
    _bn_statistics[x.dtype](_flat(x), mean, var, *x.shape, _bn_threads(x))


@register("batch_norm", "cpp")
def batch_norm(x, mean, var, weight, bias, y, eps) -> None:
    normalize, _, _ = _BN_KERNELS[x.dtype]
    host.forward(normalize, x, mean, var, weight, bias, y, eps)


@register("batch_norm_backward", "cpp")
def batch_norm_backward(
    grad_y, x, mean, var, weight, grad_x, grad_weight, grad_bias, eps, training
) -> None:
    normalize, gradient_sums, input_gradient = _BN_KERNELS[x.dtype]
    host.backward(
        gradient_sums, normalize, input_gradient,
        grad_y, x, mean, var, weight, grad_x, grad_weight, grad_bias, eps, training,
    )  # fmt: skip
