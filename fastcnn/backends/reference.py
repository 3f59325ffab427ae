"""Every op, forward and backward, in float64 NumPy: the truth all backends are tested against.
Written to be obviously correct: convolution and pooling loop over the R x S kernel taps
and do whole-array work for each tap.
"""

from __future__ import annotations

import numpy as np

from fastcnn._shapes import ConvGeometry, PoolGeometry
from fastcnn.backends import register

# ---------------------------------------------------------------------------- helpers


def _f64(array):
    return np.asarray(array, dtype=np.float64)


def _padded(x, top, bottom, left, right, value):
    """x (N, C, H, W) as float64 with the given padding (negative bottom/right crops)."""
    x = _f64(x)[:, :, : x.shape[2] + min(bottom, 0), : x.shape[3] + min(right, 0)]
    return np.pad(
        x, ((0, 0), (0, 0), (top, max(bottom, 0)), (left, max(right, 0))), constant_values=value
    )


def _tap(array, r, s, P, Q, stride_h, stride_w, dilation_h, dilation_w):
    """The (N, C, P, Q) slice of a padded array seen by kernel tap (r, s)."""
    h0, w0 = r * dilation_h, s * dilation_w
    return array[
        :,
        :,
        h0 : h0 + (P - 1) * stride_h + 1 : stride_h,
        w0 : w0 + (Q - 1) * stride_w + 1 : stride_w,
    ]


# ---------------------------------------------------------------------------- convolution


def _conv_extent(g: ConvGeometry) -> tuple[int, int]:
    """Padded height and width that the output's windows reach."""
    return (
        (g.P - 1) * g.stride_h + (g.R - 1) * g.dilation_h + 1,
        (g.Q - 1) * g.stride_w + (g.S - 1) * g.dilation_w + 1,
    )


def _conv_padded_input(x, g: ConvGeometry):
    extent_h, extent_w = _conv_extent(g)
    return _padded(x, g.pad_h, extent_h - g.H - g.pad_h, g.pad_w, extent_w - g.W - g.pad_w, 0.0)


@register("conv2d", "reference")
def conv2d(x, weight, bias, y, g: ConvGeometry) -> None:
    G = g.groups
    xp = _conv_padded_input(x, g)
    w = _f64(weight).reshape(G, g.K // G, g.C // G, g.R, g.S)
    out = np.zeros((g.N, G, g.K // G, g.P, g.Q))
    for r in range(g.R):
        for s in range(g.S):
            tap = _tap(xp, r, s, g.P, g.Q, g.stride_h, g.stride_w, g.dilation_h, g.dilation_w)
            tap = tap.reshape(g.N, G, g.C // G, g.P, g.Q)
            out += np.einsum("ngcpq,gkc->ngkpq", tap, w[..., r, s], optimize=True)
    out = out.reshape(g.output_shape)
    if bias is not None:
        out += _f64(bias)[None, :, None, None]
    y[...] = out


@register("conv2d_backward", "reference")
def conv2d_backward(grad_y, x, weight, grad_x, grad_weight, grad_bias, g: ConvGeometry) -> None:
    G = g.groups
    xp = _conv_padded_input(x, g)
    gy = _f64(grad_y).reshape(g.N, G, g.K // G, g.P, g.Q)
    w = _f64(weight).reshape(G, g.K // G, g.C // G, g.R, g.S)
    gxp = np.zeros_like(xp)
    gw = np.zeros_like(w)
    for r in range(g.R):
        for s in range(g.S):
            tap = _tap(xp, r, s, g.P, g.Q, g.stride_h, g.stride_w, g.dilation_h, g.dilation_w)
            grad_tap = _tap(gxp, r, s, g.P, g.Q, g.stride_h, g.stride_w, g.dilation_h, g.dilation_w)
            grad_tap += np.einsum("ngkpq,gkc->ngcpq", gy, w[..., r, s], optimize=True).reshape(
                grad_tap.shape
            )
            gw[..., r, s] = np.einsum(
                "ngkpq,ngcpq->gkc", gy, tap.reshape(g.N, G, g.C // G, g.P, g.Q), optimize=True
            )
    # Rows and columns of x that no window reaches (the "crop") get zero gradient.
    full = np.zeros((g.N, g.C, g.H + g.pad_h + gxp.shape[2], g.W + g.pad_w + gxp.shape[3]))
    full[:, :, : gxp.shape[2], : gxp.shape[3]] = gxp
    if grad_x is not None:
        grad_x[...] = full[:, :, g.pad_h : g.pad_h + g.H, g.pad_w : g.pad_w + g.W]
    grad_weight[...] = gw.reshape(grad_weight.shape)
    if grad_bias is not None:
        grad_bias[...] = _f64(grad_y).sum(axis=(0, 2, 3))


# ---------------------------------------------------------------------------- pooling


def _pool_extent(g: PoolGeometry) -> tuple[int, int]:
    return (
        (g.P - 1) * g.stride_h + (g.R - 1) * g.dilation_h + 1,
        (g.Q - 1) * g.stride_w + (g.S - 1) * g.dilation_w + 1,
    )


def _pool_windows(x, g: PoolGeometry, fill: float):
    """(N, C, P, Q, R*S): every window's values, padding (and ceil-mode overhang) = fill."""
    extent_h, extent_w = _pool_extent(g)
    xp = _padded(x, g.pad_h, extent_h - g.H - g.pad_h, g.pad_w, extent_w - g.W - g.pad_w, fill)
    taps = [
        _tap(xp, r, s, g.P, g.Q, g.stride_h, g.stride_w, g.dilation_h, g.dilation_w)
        for r in range(g.R)
        for s in range(g.S)
    ]
    return np.stack(taps, axis=-1)


def _window_positions(g: PoolGeometry):
    """(P, Q, R*S) flat input position h*W + w of each window tap, -1 where outside x."""
    p, q, r, s = np.meshgrid(
        np.arange(g.P), np.arange(g.Q), np.arange(g.R), np.arange(g.S), indexing="ij"
    )
    h = p * g.stride_h - g.pad_h + r * g.dilation_h
    w = q * g.stride_w - g.pad_w + s * g.dilation_w
    inside = (h >= 0) & (h < g.H) & (w >= 0) & (w < g.W)
    return np.where(inside, h * g.W + w, -1).reshape(g.P, g.Q, g.R * g.S)


def _argmax_taps(windows, g: PoolGeometry):
    """Per window, the tap PyTorch picks: the last NaN if any, else the first maximum,
    and for a window of -inf only its first tap inside x (the first tap, whose position
    is -1, when the window lies wholly in the padding)."""
    is_nan = np.isnan(windows)
    last_nan = windows.shape[-1] - 1 - np.argmax(is_nan[..., ::-1], axis=-1)
    values = np.where(is_nan, -np.inf, windows)
    first_max = np.argmax(values, axis=-1)
    first_inside = np.argmax(_window_positions(g) >= 0, axis=-1)
    all_minus_inf = np.take_along_axis(values, first_max[..., None], axis=-1)[..., 0] == -np.inf
    first_max = np.where(all_minus_inf, first_inside, first_max)
    return np.where(is_nan.any(axis=-1), last_nan, first_max)


@register("max_pool2d", "reference")
def max_pool2d(x, y, indices, g: PoolGeometry) -> None:
    windows = _pool_windows(x, g, -np.inf)
    taps = _argmax_taps(windows, g)
    y[...] = np.take_along_axis(windows, taps[..., None], axis=-1)[..., 0]
    if indices is not None:
        positions = np.broadcast_to(_window_positions(g), windows.shape)
        indices[...] = np.take_along_axis(positions, taps[..., None], axis=-1)[..., 0]


@register("max_pool2d_backward", "reference")
def max_pool2d_backward(grad_y, x, indices, grad_x, g: PoolGeometry) -> None:
    if indices is None:
        taps = _argmax_taps(_pool_windows(x, g, -np.inf), g)
        positions = np.broadcast_to(_window_positions(g), (*taps.shape, g.R * g.S))
        indices = np.take_along_axis(positions, taps[..., None], axis=-1)[..., 0]
    planes = np.zeros((g.N * g.C, g.H * g.W))
    rows = np.repeat(np.arange(g.N * g.C), g.P * g.Q)
    positions = np.asarray(indices).reshape(-1)
    inside = positions >= 0  # -1: a window wholly in the padding sends no gradient
    np.add.at(planes, (rows[inside], positions[inside]), _f64(grad_y).reshape(-1)[inside])
    grad_x[...] = planes.reshape(grad_x.shape)


def _avg_divisors(g: PoolGeometry):
    """(P, Q) divisor of each window, by PyTorch's rule (the window is first clipped to
    the padded input, then, without count_include_pad, to the input itself), or the
    divisor_override."""
    if g.divisor_override is not None:
        return np.full((g.P, g.Q), float(g.divisor_override))

    def one_axis(size, pad, kernel, stride, outputs):
        start = np.arange(outputs) * stride - pad
        end = np.minimum(start + kernel, size + pad)
        padded_count = end - start
        inner_count = np.minimum(end, size) - np.maximum(start, 0)
        return padded_count, inner_count

    padded_h, inner_h = one_axis(g.H, g.pad_h, g.R, g.stride_h, g.P)
    padded_w, inner_w = one_axis(g.W, g.pad_w, g.S, g.stride_w, g.Q)
    if g.count_include_pad:
        return np.outer(padded_h, padded_w).astype(np.float64)
    return np.outer(inner_h, inner_w).astype(np.float64)


@register("avg_pool2d", "reference")
def avg_pool2d(x, y, g: PoolGeometry) -> None:
    y[...] = _pool_windows(x, g, 0.0).sum(axis=-1) / _avg_divisors(g)


@register("avg_pool2d_backward", "reference")
def avg_pool2d_backward(grad_y, grad_x, g: PoolGeometry) -> None:
    share = _f64(grad_y) / _avg_divisors(g)
    extent_h, extent_w = _pool_extent(g)
    grad_padded = np.zeros((g.N, g.C, max(extent_h, g.H + g.pad_h), max(extent_w, g.W + g.pad_w)))
    for r in range(g.R):
        for s in range(g.S):
            _tap(grad_padded, r, s, g.P, g.Q, g.stride_h, g.stride_w, 1, 1)[...] += share
    grad_x[...] = grad_padded[:, :, g.pad_h : g.pad_h + g.H, g.pad_w : g.pad_w + g.W]


# ---------------------------------------------------------------------------- activations


@register("relu", "reference")
def relu(x, y) -> None:
    x = _f64(x)
    y[...] = np.where(x < 0, 0.0, x)  # keeps NaN, unlike np.maximum(x, 0) on some builds


@register("relu_backward", "reference")
def relu_backward(grad_y, x, grad_x) -> None:
    grad_x[...] = np.where(_f64(x) > 0, _f64(grad_y), 0.0)


@register("leaky_relu", "reference")
def leaky_relu(x, y, negative_slope) -> None:
    x = _f64(x)
    y[...] = np.where(x > 0, x, x * negative_slope)


@register("leaky_relu_backward", "reference")
def leaky_relu_backward(grad_y, x, grad_x, negative_slope) -> None:
    grad_y = _f64(grad_y)
    grad_x[...] = np.where(_f64(x) > 0, grad_y, grad_y * negative_slope)


def _channels(values):
    return _f64(values)[None, :, None]


@register("batch_norm_statistics", "reference")
def batch_norm_statistics(x, mean, var) -> None:
    mean[...] = _f64(x).mean(axis=(0, 2))
    var[...] = _f64(x).var(axis=(0, 2))


def _normalized(x, mean, var, eps):
    return (_f64(x) - _channels(mean)) / np.sqrt(_channels(var) + eps)


@register("batch_norm", "reference")
def batch_norm(x, mean, var, weight, bias, y, eps) -> None:
    out = _normalized(x, mean, var, eps)
    if weight is not None:
        out = out * _channels(weight)
    if bias is not None:
        out = out + _channels(bias)
    y[...] = out


@register("batch_norm_backward", "reference")
def batch_norm_backward(
    grad_y, x, mean, var, weight, grad_x, grad_weight, grad_bias, eps, training
) -> None:
    g = _f64(grad_y)
    normalized = _normalized(x, mean, var, eps)
    grad_bias[...] = g.sum(axis=(0, 2))
    grad_weight[...] = (g * normalized).sum(axis=(0, 2))
    if grad_x is None:
        return
    scale = 1 / np.sqrt(_channels(var) + eps)
    if weight is not None:
        scale = scale * _channels(weight)
    if training:  # the batch statistics depend on x
        M = x.shape[0] * x.shape[2]
        g = (
            g
            - g.sum(axis=(0, 2), keepdims=True) / M
            - normalized * ((g * normalized).sum(axis=(0, 2), keepdims=True) / M)
        )
    grad_x[...] = g * scale


@register("dropout", "reference")
def dropout(x, mask, y, scale) -> None:
    y[...] = _f64(x) * mask * scale


@register("dropout_backward", "reference")
def dropout_backward(grad_y, mask, grad_x, scale) -> None:
    grad_x[...] = _f64(grad_y) * mask * scale


@register("sigmoid", "reference")
def sigmoid(x, y) -> None:
    # exp of a non-positive number never overflows: 1/(1+e^-x) for x >= 0, e^x/(1+e^x) below.
    x = _f64(x)
    e = np.exp(-np.abs(x))
    y[...] = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@register("sigmoid_backward", "reference")
def sigmoid_backward(grad_y, y, grad_x) -> None:
    y = _f64(y)
    grad_x[...] = _f64(grad_y) * y * (1.0 - y)


@register("tanh", "reference")
def tanh(x, y) -> None:
    y[...] = np.tanh(_f64(x))


@register("tanh_backward", "reference")
def tanh_backward(grad_y, y, grad_x) -> None:
    y = _f64(y)
    grad_x[...] = _f64(grad_y) * (1.0 - y * y)


# ---------------------------------------------------------------------------- linear


@register("linear", "reference")
def linear(x, weight, bias, y) -> None:
    out = _f64(x) @ _f64(weight).T
    if bias is not None:
        out += _f64(bias)
    y[...] = out


@register("linear_backward", "reference")
def linear_backward(grad_y, x, weight, grad_x, grad_weight, grad_bias) -> None:
    gy = _f64(grad_y)
    if grad_x is not None:
        grad_x[...] = gy @ _f64(weight)
    grad_weight[...] = gy.T @ _f64(x)
    if grad_bias is not None:
        grad_bias[...] = gy.sum(axis=0)


# ---------------------------------------------------------------------------- softmax and loss


def _log_softmax_rows(x):
    x = _f64(x)
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


@register("softmax", "reference")
def softmax(x, y) -> None:
    y[...] = np.exp(_log_softmax_rows(x))


@register("log_softmax", "reference")
def log_softmax(x, y) -> None:
    y[...] = _log_softmax_rows(x)


def _class_targets(labels, weight, smoothing, classes):
    """Per row, the weight each class's -log p gets: (1 - smoothing) * w[label] on the
    label plus smoothing / C * w[c] on every class; zero rows for ignored labels (-1)."""
    weight = _f64(weight)
    kept = labels >= 0
    targets = np.zeros((len(labels), classes))
    rows = np.flatnonzero(kept)
    targets[rows, labels[rows]] = (1 - smoothing) * weight[labels[rows]]
    if smoothing:
        targets[rows] += smoothing / classes * weight
    return targets


def _soft_losses(logits, targets):
    log_probabilities = _log_softmax_rows(logits)
    # only where the target weighs a class: an unweighted -inf log-probability adds nothing
    return -np.where(targets != 0, targets * log_probabilities, 0).sum(axis=1)


def _soft_gradient(logits, targets, row_scale):
    probabilities = np.exp(_log_softmax_rows(logits))
    grad = targets.sum(axis=1, keepdims=True) * probabilities - targets
    return grad * _f64(row_scale)[:, None]


@register("cross_entropy", "reference")
def cross_entropy(logits, labels, weight, smoothing, losses) -> None:
    losses[...] = _soft_losses(logits, _class_targets(labels, weight, smoothing, logits.shape[1]))


@register("cross_entropy_backward", "reference")
def cross_entropy_backward(logits, labels, weight, smoothing, row_scale, grad_logits) -> None:
    targets = _class_targets(labels, weight, smoothing, logits.shape[1])
    grad = _soft_gradient(logits, targets, row_scale)
    grad[labels < 0] = 0
    grad_logits[...] = grad


@register("soft_cross_entropy", "reference")
def soft_cross_entropy(logits, targets, losses) -> None:
    losses[...] = _soft_losses(logits, _f64(targets))


@register("soft_cross_entropy_backward", "reference")
def soft_cross_entropy_backward(logits, targets, row_scale, grad_logits) -> None:
    grad_logits[...] = _soft_gradient(logits, _f64(targets), row_scale)
