"""Softmax, log-softmax and softmax cross-entropy (loss and gradient) over the rows of (M, C).
Algorithm: per row, the maximum, then one pass of exp(x - max) summed, then one scaling pass;
rows split into contiguous blocks over the threads.

exp only ever sees x - max <= 0, so it cannot overflow for any logit size (1e8 included),
and a NaN anywhere in a row makes the row's maximum, and so every output, NaN. Traffic:
softmax and log-softmax read and write M x C x itemsize bytes once each; the loss reads the
logits once; its gradient reads them and writes the gradient.
"""

from __future__ import annotations

import math

from numba import prange

from fastcnn import _census
from fastcnn.backends import register
from fastcnn.backends.numba._setup import jit
from fastcnn.backends.numba.activation import exp_nonpositive

#: Row elements per parallel task; smaller inputs run serially.
BLOCK = 1 << 15


@jit(inline="always")
def _row_max(row):
    """The largest element; NaN if the row holds one."""
    best = row[0]
    for value in row[1:]:
        best = value if (value > best) | (value != value) else best
    return best


@jit(inline="always")
def _row_exp_sum(row, maximum, out_row):
    """out_row = exp(row - maximum); returns their sum (>= 1 unless the row holds NaN)."""
    total = out_row.dtype.type(0)
    for i in range(row.size):
        e = exp_nonpositive(row[i] - maximum)
        out_row[i] = e
        total += e
    return total


@jit(inline="always")
def _row_log_sum_exp(row, maximum):
    """log of the sum of exp(row - maximum), without storing the exponentials."""
    total = row.dtype.type(0)
    for i in range(row.size):
        total += exp_nonpositive(row[i] - maximum)
    return math.log(total)


@jit(inline="always")
def _softmax_row(row, out_row):
    maximum = _row_max(row)
    scale = 1 / _row_exp_sum(row, maximum, out_row)
    for i in range(out_row.size):
        out_row[i] *= scale


@jit(inline="always")
def _log_softmax_row(row, out_row):
    maximum = _row_max(row)
    shift = maximum + _row_log_sum_exp(row, maximum)
    for i in range(out_row.size):
        out_row[i] = row[i] - shift


@jit(inline="always")
def _row_blocks(M, C):
    """Rows per task so that a task holds about BLOCK elements."""
    rows = max(1, BLOCK // C)
    return rows, (M + rows - 1) // rows


@jit
def _softmax_serial(x, y):
    for m in range(x.shape[0]):
        _softmax_row(x[m], y[m])


@jit(parallel=True)
def _softmax_parallel(x, y):
    rows, blocks = _row_blocks(x.shape[0], x.shape[1])
    for block in prange(blocks):
        for m in range(block * rows, min(block * rows + rows, x.shape[0])):
            _softmax_row(x[m], y[m])


@jit
def _log_softmax_serial(x, y):
    for m in range(x.shape[0]):
        _log_softmax_row(x[m], y[m])


@jit(parallel=True)
def _log_softmax_parallel(x, y):
    rows, blocks = _row_blocks(x.shape[0], x.shape[1])
    for block in prange(blocks):
        for m in range(block * rows, min(block * rows + rows, x.shape[0])):
            _log_softmax_row(x[m], y[m])


@jit(inline="always")
def _cross_entropy_row(row, label, weight, smoothing):
    """w[label] * -log p[label], mixed with smoothing * mean_c(w[c] * -log p[c]);
    0 for an ignored row (label -1). -log p[c] = (max - x[c]) + log sum exp(x - max),
    both terms >= 0. A class of weight 0 adds 0, also where its p is 0 (a -inf logit)."""
    zero = row.dtype.type(0)
    if label < 0:
        return zero
    maximum = _row_max(row)
    log_sum = _row_log_sum_exp(row, maximum)
    on_label = (1 - smoothing) * weight[label]
    loss = on_label * ((maximum - row[label]) + log_sum) if on_label != 0 else zero
    if smoothing != 0:
        spread = zero
        for c in range(row.size):
            w = weight[c]
            spread += w * ((maximum - row[c]) + log_sum) if w != 0 else zero
        loss += (smoothing / row.size) * spread
    return loss


@jit(inline="always")
def _cross_entropy_backward_row(row, label, weight, smoothing, row_scale, grad_row):
    """row_scale * (mass * softmax - target): the target puts (1 - smoothing) * w[label]
    on the label and smoothing / C * w[c] on every class; mass is its sum."""
    if label < 0:
        grad_row[:] = 0
        return
    maximum = _row_max(row)
    total = _row_exp_sum(row, maximum, grad_row)
    on_label = (1 - smoothing) * weight[label]
    real = grad_row.dtype.type  # scalars in the row's type keep the loops vectorised
    if smoothing == 0:
        scale = real(row_scale * on_label / total)
        for i in range(grad_row.size):
            grad_row[i] *= scale
    else:
        spread = smoothing / row.size
        weight_sum = weight.dtype.type(0)
        for c in range(weight.size):
            weight_sum += weight[c]
        scale = real(row_scale * (on_label + spread * weight_sum) / total)
        shift = real(row_scale * spread)
        for i in range(grad_row.size):
            grad_row[i] = grad_row[i] * scale - shift * weight[i]
    grad_row[label] -= row_scale * on_label


@jit(inline="always")
def _soft_cross_entropy_row(row, target):
    """sum_c target[c] * -log p[c] (class weights and smoothing already in the target)."""
    maximum = _row_max(row)
    log_sum = _row_log_sum_exp(row, maximum)
    zero = row.dtype.type(0)
    loss = zero
    for c in range(row.size):
        t = target[c]
        loss += t * ((maximum - row[c]) + log_sum) if t != 0 else zero
    return loss


@jit(inline="always")
def _soft_cross_entropy_backward_row(row, target, row_scale, grad_row):
    maximum = _row_max(row)
    total = _row_exp_sum(row, maximum, grad_row)
    mass = target.dtype.type(0)
    for c in range(target.size):
        mass += target[c]
    scale = row_scale * mass / total
    for i in range(grad_row.size):
        grad_row[i] = grad_row[i] * scale - row_scale * target[i]


@jit
def _cross_entropy_serial(logits, labels, weight, smoothing, losses):
    for m in range(logits.shape[0]):
        losses[m] = _cross_entropy_row(logits[m], labels[m], weight, smoothing)


@jit(parallel=True)
def _cross_entropy_parallel(logits, labels, weight, smoothing, losses):
    rows, blocks = _row_blocks(logits.shape[0], logits.shape[1])
    for block in prange(blocks):
        for m in range(block * rows, min(block * rows + rows, logits.shape[0])):
            losses[m] = _cross_entropy_row(logits[m], labels[m], weight, smoothing)


@jit
def _cross_entropy_backward_serial(logits, labels, weight, smoothing, row_scale, grad_logits):
    for m in range(logits.shape[0]):
        _cross_entropy_backward_row(
            logits[m], labels[m], weight, smoothing, row_scale[m], grad_logits[m]
        )


@jit(parallel=True)
def _cross_entropy_backward_parallel(logits, labels, weight, smoothing, row_scale, grad_logits):
    rows, blocks = _row_blocks(logits.shape[0], logits.shape[1])
    for block in prange(blocks):
        for m in range(block * rows, min(block * rows + rows, logits.shape[0])):
            _cross_entropy_backward_row(
                logits[m], labels[m], weight, smoothing, row_scale[m], grad_logits[m]
            )


@jit
def _soft_cross_entropy_serial(logits, targets, losses):
    for m in range(logits.shape[0]):
        losses[m] = _soft_cross_entropy_row(logits[m], targets[m])


@jit(parallel=True)
def _soft_cross_entropy_parallel(logits, targets, losses):
    rows, blocks = _row_blocks(logits.shape[0], logits.shape[1])
    for block in prange(blocks):
        for m in range(block * rows, min(block * rows + rows, logits.shape[0])):
            losses[m] = _soft_cross_entropy_row(logits[m], targets[m])


@jit
def _soft_cross_entropy_backward_serial(logits, targets, row_scale, grad_logits):
    for m in range(logits.shape[0]):
        _soft_cross_entropy_backward_row(logits[m], targets[m], row_scale[m], grad_logits[m])


@jit(parallel=True)
def _soft_cross_entropy_backward_parallel(logits, targets, row_scale, grad_logits):
    rows, blocks = _row_blocks(logits.shape[0], logits.shape[1])
    for block in prange(blocks):
        for m in range(block * rows, min(block * rows + rows, logits.shape[0])):
            _soft_cross_entropy_backward_row(logits[m], targets[m], row_scale[m], grad_logits[m])


_census.declare("numba", "softmax.serial", "softmax.blocks")


def _serial(size: int) -> bool:
    """Inputs of one block run serially: no thread-pool start."""
    serial = size <= BLOCK
    _census.record("numba", "softmax.serial" if serial else "softmax.blocks")
    return serial


@register("softmax", "numba")
def softmax(x, y) -> None:
    if _serial(x.size):
        _softmax_serial(x, y)
    else:
        _softmax_parallel(x, y)


@register("log_softmax", "numba")
def log_softmax(x, y) -> None:
    if _serial(x.size):
        _log_softmax_serial(x, y)
    else:
        _log_softmax_parallel(x, y)


@register("cross_entropy", "numba")
def cross_entropy(logits, labels, weight, smoothing, losses) -> None:
    if _serial(logits.size):
        _cross_entropy_serial(logits, labels, weight, smoothing, losses)
    else:
        _cross_entropy_parallel(logits, labels, weight, smoothing, losses)


@register("cross_entropy_backward", "numba")
def cross_entropy_backward(logits, labels, weight, smoothing, row_scale, grad_logits) -> None:
    if _serial(logits.size):
        _cross_entropy_backward_serial(logits, labels, weight, smoothing, row_scale, grad_logits)
    else:
        _cross_entropy_backward_parallel(logits, labels, weight, smoothing, row_scale, grad_logits)


@register("soft_cross_entropy", "numba")
def soft_cross_entropy(logits, targets, losses) -> None:
    if _serial(logits.size):
        _soft_cross_entropy_serial(logits, targets, losses)
    else:
        _soft_cross_entropy_parallel(logits, targets, losses)


@register("soft_cross_entropy_backward", "numba")
def soft_cross_entropy_backward(logits, targets, row_scale, grad_logits) -> None:
    if _serial(logits.size):
        _soft_cross_entropy_backward_serial(logits, targets, row_scale, grad_logits)
    else:
        _soft_cross_entropy_backward_parallel(logits, targets, row_scale, grad_logits)
