"""PyTorch's own sample inputs for these ops, through fastcnn.

PyTorch's test suite runs every operator over the sample inputs of its OpInfo database
(``op_db``): the shapes, argument forms and corner cases its authors collected (unbatched
inputs, 1-tuples for pairs, empty batches, negative momentum, class weights, ...). Here
every sample of the ops fastcnn has runs on every CPU backend that has the op, float32
and float64, and is compared with PyTorch: the forward result, and for the
differentiable ops the gradients of a random output gradient. Needs torch and
expecttest (which op_db imports).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import fastcnn.functional as F
from fastcnn.backends import CPU_BACKENDS, available_backends, has_op

torch = pytest.importorskip("torch")
pytest.importorskip("expecttest")

BACKENDS = [b for b in available_backends() if b in CPU_BACKENDS]
TOLERANCE = {torch.float32: (2e-4, 2e-5), torch.float64: (1e-9, 1e-11)}  # (rtol, atol)
NP_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


@functools.cache
def _op_db() -> dict:
    from torch.testing._internal.common_methods_invocations import op_db

    return {(op.name, op.variant_test_name): op for op in op_db}


def _host(value):
    """Tensors as NumPy arrays (copies: nothing fastcnn does reaches torch's), torch
    dtypes as NumPy's, containers element by element."""
    if isinstance(value, torch.Tensor):
        return value.detach().numpy().copy()
    if isinstance(value, torch.dtype):
        return NP_DTYPES[value]
    if isinstance(value, (tuple, list)):
        return type(value)(_host(v) for v in value)
    if isinstance(value, dict):
        return {k: _host(v) for k, v in value.items()}
    return value


def _leaf(tensor):
    return None if tensor is None else tensor.detach().clone().requires_grad_(True)


def _torch_gradients(output, leaves, rng):
    """d(sum(output * g))/d leaves for a random g, and g; None where a leaf is None."""
    grad_y = torch.from_numpy(rng.standard_normal(tuple(output.shape))).to(output.dtype)
    wanted = [leaf for leaf in leaves if leaf is not None]
    grads = iter(torch.autograd.grad(output, wanted, grad_y, allow_unused=True))
    return [None if leaf is None else next(grads) for leaf in leaves], grad_y.numpy()


# Each adapter runs one sample through fastcnn and PyTorch and returns
# [(what, fastcnn's array, PyTorch's array), ...] to compare.


def _conv2d(sample, backend, rng):
    x, (weight, *rest), kw = sample.input, sample.args, sample.kwargs
    bias = rest[0] if rest else kw.get("bias")
    geometry = {k: v for k, v in kw.items() if k != "bias"}
    leaves = [_leaf(x), _leaf(weight), _leaf(bias)]
    y_torch = torch.nn.functional.conv2d(*leaves, **geometry)
    y = F.conv2d(*_host([x, weight, bias]), **geometry, backend=backend)
    checks = [("y", y, y_torch)]
    if y_torch.numel():
        grads_torch, grad_y = _torch_gradients(y_torch, leaves, rng)
        grads = F.conv2d_backward(
            grad_y, _host(x), _host(weight), **geometry, bias=bias is not None, backend=backend
        )
        checks += [
            (f"grad {n}", g, t)
            for n, g, t in zip("xwb", grads, grads_torch, strict=True)
            if t is not None
        ]
    return checks


def _max_pool2d(sample, backend, rng):
    x, kw = sample.input, dict(sample.kwargs)
    return_indices = kw.pop("return_indices", False)
    leaf = _leaf(x)
    y_torch, indices_torch = torch.nn.functional.max_pool2d(leaf, **kw, return_indices=True)
    y, indices = F.max_pool2d(_host(x), **kw, return_indices=True, backend=backend)
    checks = [("y", y, y_torch)]
    defined = y_torch.detach().numpy() != -np.inf
    if return_indices:
        checks.append(("indices", indices[defined], indices_torch.numpy()[defined]))
    # A window wholly in the padding (-inf): PyTorch's backward writes outside its
    # gradient there (fastcnn's contract: index -1, no gradient), so it is not run.
    if y_torch.numel() and defined.all():
        (grad_torch,), grad_y = _torch_gradients(y_torch, [leaf], rng)
        grad = F.max_pool2d_backward(grad_y, _host(x), **kw, indices=indices, backend=backend)
        checks.append(("grad x", grad, grad_torch))
    return checks


def _avg_pool2d(sample, backend, rng):
    leaf = _leaf(sample.input)
    y_torch = torch.nn.functional.avg_pool2d(leaf, *sample.args, **sample.kwargs)
    args, kw = _host(sample.args), _host(sample.kwargs)
    y = F.avg_pool2d(_host(sample.input), *args, **kw, backend=backend)
    checks = [("y", y, y_torch)]
    if y_torch.numel():
        (grad_torch,), grad_y = _torch_gradients(y_torch, [leaf], rng)
        grad = F.avg_pool2d_backward(grad_y, _host(sample.input), *args, **kw, backend=backend)
        checks.append(("grad x", grad, grad_torch))
    return checks


def _activation(name, saved_output):
    def adapter(sample, backend, rng):
        leaf = _leaf(sample.input)
        y_torch = getattr(torch.nn.functional, name)(leaf, *sample.args, **sample.kwargs)
        x, args = _host(sample.input), _host(sample.args)
        y = getattr(F, name)(x, *args, **_host(sample.kwargs), backend=backend)
        checks = [("y", y, y_torch)]
        if y_torch.numel():
            (grad_torch,), grad_y = _torch_gradients(y_torch, [leaf], rng)
            saved = y if saved_output else x
            slope = args + tuple(v for k, v in sample.kwargs.items() if k == "negative_slope")
            grad = getattr(F, f"{name}_backward")(grad_y, saved, *slope, backend=backend)
            checks.append(("grad x", grad, grad_torch))
        return checks

    return adapter


def _softmax(name):
    def adapter(sample, backend, rng):
        y_torch = getattr(torch.nn.functional, name)(sample.input, *sample.args, **sample.kwargs)
        y = getattr(F, name)(
            _host(sample.input), *_host(sample.args), **_host(sample.kwargs), backend=backend
        )
        return [("y", y, y_torch)]

    return adapter


def _cross_entropy(sample, backend, rng):
    (target,), kw = sample.args, sample.kwargs
    leaf = _leaf(sample.input)
    loss_torch = torch.nn.functional.cross_entropy(leaf, target, **kw)
    logits, target, kw = _host(sample.input), _host(target), _host(kw)
    loss = F.cross_entropy(logits, target, **kw, backend=backend)
    checks = [("loss", loss, loss_torch)]
    if loss_torch.numel():
        (grad_torch,), grad_output = _torch_gradients(loss_torch, [leaf], rng)
        grad = F.cross_entropy_backward(
            logits, target, **kw, grad_output=grad_output, backend=backend
        )
        checks.append(("grad logits", grad, grad_torch))
    return checks


def _linear(sample, backend, rng):
    weight, *rest = sample.args
    bias = rest[0] if rest else None
    leaves = [_leaf(sample.input), _leaf(weight), _leaf(bias)]
    y_torch = torch.nn.functional.linear(*leaves)
    y = F.linear(*_host([sample.input, weight, bias]), backend=backend)
    checks = [("y", y, y_torch)]
    if y_torch.numel():
        grads_torch, grad_y = _torch_gradients(y_torch, leaves, rng)
        grads = F.linear_backward(
            grad_y, _host(sample.input), _host(weight), bias=bias is not None, backend=backend
        )
        checks += [
            (f"grad {n}", g, t)
            for n, g, t in zip("xwb", grads, grads_torch, strict=True)
            if t is not None
        ]
    return checks


def _batch_norm(sample, backend, rng):
    running_mean, running_var, weight, bias = sample.args
    kw = sample.kwargs
    before = _host([running_mean, running_var])
    ours = [None if a is None else a.copy() for a in before]  # updated in place, as torch's
    leaves = [_leaf(sample.input), _leaf(weight), _leaf(bias)]
    theirs = [None if a is None else a.clone() for a in (running_mean, running_var)]
    y_torch = torch.nn.functional.batch_norm(leaves[0], *theirs, *leaves[1:], **kw)
    x = _host(sample.input)
    y = F.batch_norm(x, *ours, *_host([weight, bias]), **kw, backend=backend)
    checks = [("y", y, y_torch)]
    checks += [
        (f"updated {n}", a, b)
        for n, a, b in zip(("mean", "var"), ours, theirs, strict=True)
        if a is not None
    ]
    if y_torch.numel():
        grads_torch, grad_y = _torch_gradients(y_torch, leaves, rng)
        training = kw.get("training", False)
        grads = F.batch_norm_backward(
            grad_y, x, *before, _host(weight), training, kw.get("eps", 1e-5), backend=backend
        )
        names = ("x", "weight", "bias")
        checks += [
            (f"grad {n}", g, t)
            for n, g, t in zip(names, grads, grads_torch, strict=True)
            if t is not None
        ]
    return checks


def _dropout(sample, backend, rng):
    """Random: the properties PyTorch's output has, checked on fastcnn's."""
    kw = sample.kwargs
    p, training = kw.get("p", 0.5), kw.get("training", True)
    x = _host(sample.input)
    y, mask = F.dropout(x, p, training, return_mask=True, backend=backend)
    if not training or p == 0:
        expected = x
    elif p == 1:
        expected = np.zeros_like(x)
    else:
        expected = np.where(mask, x / (1 - p), 0)
    return [("y", y, torch.from_numpy(np.asarray(expected)))]


ADAPTERS = {
    ("nn.functional.conv2d", ""): ("conv2d", _conv2d),
    ("nn.functional.max_pool2d", ""): ("max_pool2d", _max_pool2d),
    ("nn.functional.avg_pool2d", ""): ("avg_pool2d", _avg_pool2d),
    ("nn.functional.relu", ""): ("relu", _activation("relu", saved_output=False)),
    ("nn.functional.leaky_relu", ""): ("leaky_relu", _activation("leaky_relu", False)),
    ("sigmoid", ""): ("sigmoid", _activation("sigmoid", saved_output=True)),
    ("tanh", ""): ("tanh", _activation("tanh", saved_output=True)),
    ("softmax", ""): ("softmax", _softmax("softmax")),
    ("softmax", "with_dtype"): ("softmax", _softmax("softmax")),
    ("log_softmax", ""): ("log_softmax", _softmax("log_softmax")),
    ("log_softmax", "with_dtype"): ("log_softmax", _softmax("log_softmax")),
    ("nn.functional.cross_entropy", ""): ("cross_entropy", _cross_entropy),
    ("nn.functional.linear", ""): ("linear", _linear),
    ("nn.functional.batch_norm", ""): ("batch_norm", _batch_norm),
    ("nn.functional.dropout", ""): ("dropout", _dropout),
}


def _cases():
    for key, (op, _) in ADAPTERS.items():
        for backend in BACKENDS:
            for dtype in TOLERANCE:
                name = "-".join(filter(None, (*key, backend, str(dtype)[6:])))
                yield pytest.param(key, op, backend, dtype, id=name)


@pytest.mark.parametrize(("key", "op", "backend", "dtype"), list(_cases()))
def test_opinfo_samples_match_pytorch(key, op, backend, dtype, rng):
    if not has_op(op, backend):
        pytest.skip(f"{backend} has no {op}")
    adapter = ADAPTERS[key][1]
    rtol, atol = TOLERANCE[dtype]
    samples = list(_op_db()[key].sample_inputs("cpu", dtype, requires_grad=False))
    assert samples, "PyTorch gave no sample inputs"
    for number, sample in enumerate(samples):
        where = f"sample {number}: {sample.summary() if hasattr(sample, 'summary') else sample}"
        for what, ours, theirs in adapter(sample, backend, rng):
            expected = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else theirs
            actual = np.asarray(ours)
            assert actual.shape == expected.shape, f"{what} shape, {where}"
            assert actual.dtype == expected.dtype, f"{what} dtype, {where}"
            scale = max(1.0, float(np.nanmax(np.abs(expected), initial=0.0)))
            np.testing.assert_allclose(
                actual, expected, rtol=rtol, atol=atol * scale, equal_nan=True,
                err_msg=f"{what}, {where}",
            )  # fmt: skip
