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
def _cross_entropy_row(row, label):
    # -log softmax(x)[label] = (max - x[label]) + log sum exp(x - max): both terms >= 0.
    maximum = _row_max(row)
    return (maximum - row[label]) + _row_log_sum_exp(row, maximum)


@jit(inline="always")
def _cross_entropy_backward_row(row, label, row_scale, grad_row):
    maximum = _row_max(row)
    scale = row_scale / _row_exp_sum(row, maximum, grad_row)
    for i in range(grad_row.size):
        grad_row[i] *= scale
    grad_row[label] -= row_scale


@jit
def _cross_entropy_serial(logits, labels, losses):
    for m in range(logits.shape[0]):
        losses[m] = _cross_entropy_row(logits[m], labels[m])


@jit(parallel=True)
def _cross_entropy_parallel(logits, labels, losses):
    rows, blocks = _row_blocks(logits.shape[0], logits.shape[1])
    for block in prange(blocks):
        for m in range(block * rows, min(block * rows + rows, logits.shape[0])):
            losses[m] = _cross_entropy_row(logits[m], labels[m])


@jit
def _cross_entropy_backward_serial(logits, labels, row_scale, grad_logits):
    for m in range(logits.shape[0]):
        _cross_entropy_backward_row(logits[m], labels[m], row_scale[m], grad_logits[m])


@jit(parallel=True)
def _cross_entropy_backward_parallel(logits, labels, row_scale, grad_logits):
    rows, blocks = _row_blocks(logits.shape[0], logits.shape[1])
    for block in prange(blocks):
        for m in range(block * rows, min(block * rows + rows, logits.shape[0])):
            _cross_entropy_backward_row(logits[m], labels[m], row_scale[m], grad_logits[m])


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
def cross_entropy(logits, labels, losses) -> None:
    if _serial(logits.size):
        _cross_entropy_serial(logits, labels, losses)
    else:
        _cross_entropy_parallel(logits, labels, losses)


@register("cross_entropy_backward", "numba")
def cross_entropy_backward(logits, labels, row_scale, grad_logits) -> None:
    if _serial(logits.size):
        _cross_entropy_backward_serial(logits, labels, row_scale, grad_logits)
    else:
        _cross_entropy_backward_parallel(logits, labels, row_scale, grad_logits)
