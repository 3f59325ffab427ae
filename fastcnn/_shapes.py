"""Pure shape and argument rules: PyTorch's semantics, checked before any kernel runs.

Nothing here knows about arrays or backends: every function takes shapes and
Python scalars and returns a geometry of plain ints, or raises ``ValueError`` /
``TypeError`` naming the argument and what was expected.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass


@dataclass(frozen=True)
class ConvGeometry:
    """A 2-D convolution, NCHW input (N, C, H, W), weight (K, C/groups, R, S), output (N, K, P, Q).

    ``pad_h`` / ``pad_w`` are the top / left padding; the bottom / right padding is
    whatever the output size needs (it differs from the top only for ``"same"``).
    """

    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    P: int
    Q: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    dilation_h: int
    dilation_w: int
    groups: int

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.N, self.K, self.P, self.Q)

    @property
    def pad_bottom(self) -> int:
        return max(
            0,
            (self.P - 1) * self.stride_h + (self.R - 1) * self.dilation_h + 1 - self.H - self.pad_h,
        )

    @property
    def pad_right(self) -> int:
        return max(
            0,
            (self.Q - 1) * self.stride_w + (self.S - 1) * self.dilation_w + 1 - self.W - self.pad_w,
        )

    @property
    def flops(self) -> int:
        """Multiply-adds x 2 of the forward pass."""
        return 2 * self.N * self.K * self.P * self.Q * (self.C // self.groups) * self.R * self.S


@dataclass(frozen=True)
class PoolGeometry:
    """A 2-D pooling window over (N, C, H, W) giving (N, C, P, Q).

    ``pad_h`` / ``pad_w`` are the top / left padding (PyTorch pads symmetrically;
    ``ceil_mode`` may add windows that run past the bottom / right padding).
    """

    N: int
    C: int
    H: int
    W: int
    R: int
    S: int
    P: int
    Q: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    dilation_h: int = 1
    dilation_w: int = 1
    count_include_pad: bool = True
    divisor_override: int | None = None  # average pooling: every window's divisor

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.N, self.C, self.P, self.Q)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def real(name: str, value: object) -> float:
    """A real number (not a bool) as a float."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    return float(value)


def fraction(name: str, value: object) -> float:
    """A real number in [0, 1] as a float."""
    value_ = real(name, value)
    if not 0 <= value_ <= 1:
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
    return value_


def pair(name: str, value: object, *, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints, each ``>= minimum``, as a pair (a one-element sequence
    stands for both, as PyTorch takes it)."""
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    if _is_int(value):
        values = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) for v in value):
        values = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(values) < minimum:
        relation = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name} must be {relation}, got {value!r}")
    return values


def flag(name: str, value: object, meaning: str = "") -> bool:
    """``value`` itself, checked to be a bool; ``meaning`` explains it in the error."""
    if not isinstance(value, bool):
        what = f" ({meaning})" if meaning else ""
        raise TypeError(f"{name} must be a bool{what}, got {value!r}")
    return value


def positive_int(name: str, value: object) -> int:
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return int(value)


def check_ndim(name: str, shape: tuple[int, ...], ndim: int, layout: str) -> None:
    if len(shape) != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(shape)}")


def check_shape(name: str, shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
    if tuple(shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {tuple(shape)}")


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's "same": output = ceil(size / stride), extra padding at the end."""
    output = -(-size // stride)
    total = max((output - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def conv2d_geometry(
    x_shape, weight_shape, bias_shape, stride, padding, dilation, groups
) -> ConvGeometry:
    """Check a conv2d call; compute its geometry (PyTorch rules; "same" also for stride > 1)."""
    check_ndim("x", x_shape, 4, "(N, C, H, W), or 3-D (C, H, W) unbatched")
    check_ndim("weight", weight_shape, 4, "(K, C/groups, R, S)")
    N, C, H, W = x_shape
    K, C_per_group, R, S = weight_shape
    groups = positive_int("groups", groups)
    stride_h, stride_w = pair("stride", stride, minimum=1)
    dilation_h, dilation_w = pair("dilation", dilation, minimum=1)
    if C % groups:
        raise ValueError(f"x has {C} channels, which groups={groups} does not divide")
    if K % groups:
        raise ValueError(f"weight has {K} output channels, which groups={groups} does not divide")
    if C_per_group != C // groups:
        raise ValueError(
            f"weight.shape[1] must be C/groups = {C}/{groups} = {C // groups}, got {C_per_group}"
        )
    if R < 1 or S < 1:
        raise ValueError(f"weight's kernel size must be positive, got {R}x{S}")
    if bias_shape is not None and tuple(bias_shape) != (K,):
        raise ValueError(
            f"bias must have shape ({K},) (one per output channel), got {tuple(bias_shape)}"
        )

    if isinstance(padding, str):
        if padding == "valid":
            top, bottom, left, right = 0, 0, 0, 0
        elif padding == "same":
            top, bottom = _same_padding(H, R, stride_h, dilation_h)
            left, right = _same_padding(W, S, stride_w, dilation_w)
        else:
            raise ValueError(f'padding must be an int, a pair, "valid" or "same", got {padding!r}')
    else:
        top, left = pair("padding", padding, minimum=0)
        bottom, right = top, left

    extent_h = (R - 1) * dilation_h + 1
    extent_w = (S - 1) * dilation_w + 1
    if extent_h > H + top + bottom or extent_w > W + left + right:
        raise ValueError(
            f"kernel ({R}x{S}, dilation {dilation_h}x{dilation_w}, extent {extent_h}x{extent_w}) "
            f"is larger than the padded input ({H + top + bottom}x{W + left + right})"
        )
    P = (H + top + bottom - extent_h) // stride_h + 1
    Q = (W + left + right - extent_w) // stride_w + 1
    return ConvGeometry(
        N, C, H, W, K, R, S, P, Q, stride_h, stride_w, top, left, dilation_h, dilation_w, groups
    )


def _pool_output_size(
    size: int, kernel: int, pad: int, stride: int, dilation: int, ceil_mode: bool
) -> int:
    """PyTorch's pooling_output_shape: a ceil-mode window must start inside input or left pad."""
    numerator = size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    output = math.floor(numerator / stride) + 1
    if ceil_mode and (output - 1) * stride >= size + pad:
        output -= 1
    return output


def pool2d_geometry(
    x_shape,
    kernel_size,
    stride,
    padding,
    dilation,
    ceil_mode,
    count_include_pad=True,
    divisor_override=None,
) -> PoolGeometry:
    """Check a pooling call and compute its geometry (PyTorch's rules and errors)."""
    check_ndim("x", x_shape, 4, "(N, C, H, W), or 3-D (C, H, W) unbatched")
    N, C, H, W = x_shape
    R, S = pair("kernel_size", kernel_size, minimum=1)
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        stride_h, stride_w = R, S
    else:
        stride_h, stride_w = pair("stride", stride, minimum=1)
    pad_h, pad_w = pair("padding", padding, minimum=0)
    dilation_h, dilation_w = pair("dilation", dilation, minimum=1)
    flag("ceil_mode", ceil_mode)
    flag("count_include_pad", count_include_pad)
    if divisor_override is not None and (not _is_int(divisor_override) or divisor_override == 0):
        raise ValueError(
            f"divisor_override must be a nonzero int or None, got {divisor_override!r}"
        )
    if pad_h > R // 2 or pad_w > S // 2:
        raise ValueError(
            f"padding must be at most half of kernel_size, got padding=({pad_h}, {pad_w}) "
            f"for kernel_size=({R}, {S})"
        )
    P = _pool_output_size(H, R, pad_h, stride_h, dilation_h, ceil_mode)
    Q = _pool_output_size(W, S, pad_w, stride_w, dilation_w, ceil_mode)
    if P < 1 or Q < 1:
        raise ValueError(
            f"kernel_size ({R}, {S}) with dilation ({dilation_h}, {dilation_w}) is larger than "
            f"the padded input ({H + 2 * pad_h}, {W + 2 * pad_w}): the output would be {P}x{Q}"
        )
    return PoolGeometry(
        N,
        C,
        H,
        W,
        R,
        S,
        P,
        Q,
        stride_h,
        stride_w,
        pad_h,
        pad_w,
        dilation_h,
        dilation_w,
        count_include_pad,
        None if divisor_override is None else int(divisor_override),
    )


def linear_shapes(x_shape, weight_shape, bias_shape) -> tuple[int, int, int]:
    """``(M, in_features, out_features)`` of ``x @ weight.T + bias`` over x's leading dims."""
    check_ndim("weight", weight_shape, 2, "(out_features, in_features)")
    if len(x_shape) < 1:
        raise ValueError(f"x must have at least 1 dimension (..., in_features), got {x_shape}")
    out_features, in_features = weight_shape
    if x_shape[-1] != in_features:
        raise ValueError(
            f"x's last dimension must equal weight.shape[1] = {in_features}, got shape {x_shape}"
        )
    if bias_shape is not None and tuple(bias_shape) != (out_features,):
        raise ValueError(f"bias must have shape ({out_features},), got {tuple(bias_shape)}")
    return math.prod(x_shape[:-1]), in_features, out_features


def normalize_axis(axis: object, ndim: int) -> int:
    if not _is_int(axis):
        raise TypeError(f"axis must be an int, got {axis!r}")
    if ndim < 1:
        raise ValueError("x must have at least 1 dimension")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis must be in [{-ndim}, {ndim}) for a {ndim}-D x, got {axis}")
    return int(axis) % ndim


REDUCTIONS = ("mean", "sum", "none")


def cross_entropy_shapes(logits_shape, target_shape, reduction) -> tuple[int, int, bool, tuple]:
    """``(rows, classes, soft, loss shape)``, as PyTorch reads them: logits (N, C, d1, ...)
    or unbatched (C,); target of class indices (N, d1, ...) (or () unbatched), or
    ``soft`` class probabilities of the logits' own shape."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    logits_shape, target_shape = tuple(logits_shape), tuple(target_shape)
    if len(logits_shape) < 1:
        raise ValueError("logits must be (N, C, ...) or (C,), got a 0-d array")
    classes = logits_shape[0] if len(logits_shape) == 1 else logits_shape[1]
    if classes < 1:
        raise ValueError("logits must have at least one class")
    loss_shape = logits_shape[:1] + logits_shape[2:] if len(logits_shape) > 1 else ()
    soft = target_shape == logits_shape
    if not soft and target_shape != loss_shape:
        raise ValueError(
            f"target must hold class indices of shape {loss_shape} or class probabilities "
            f"of the logits' shape {logits_shape}, got shape {target_shape}"
        )
    return math.prod(loss_shape), classes, soft, loss_shape
