"""The calls that get timed: a task turned into a ready-to-run call (:func:`prepare`).

A model's training step is prepared by :mod:`fastcnn.bench.models`; the rest of this
module turns a spec case into a kernel call.

Both sides get the same treatment: fresh random non-zero inputs (one set per rotation
slot), the output allocated once and passed as ``out=`` where the API allows it (the
same array for every input set: a peer call without ``out=`` gets the same block back
from the warm allocator each time, so its output is as warm in cache as ours), and
for the backward the forward's output and a random ``grad_y`` prepared outside the
timed call.

fastcnn calls are bound by parameter name from the spec's inputs and parameters
(``conv2d(x=..., weight=..., stride=..., algo=..., out=..., backend=...)``), so a new
op in the spec table needs nothing here. The peer's forward is the spec's
``torch_forward``; its backward is
``torch.autograd.grad`` on a graph built outside the timed call, so neither side's
backward time includes a forward.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

import fastcnn.functional as F
from fastcnn.bench.cases import PEER, Task, device_of, resolve_case
from fastcnn.bench.models import MODELS_BY_NAME, prepare_step
from fastcnn.testing.specs import Case, OpSpec

Arrays = dict[str, object]


@dataclass
class PreparedCall:
    """A kernel call ready to time.

    ``first_call()`` runs once on input set 0 (it may allocate); ``timed_call(i)`` runs
    on input set ``i`` into preallocated outputs where ``outputs == "out="``, else
    into fresh ones (``"fresh"``). ``to_host`` adds the host<->device copies (GPU only).
    """

    first_call: Callable[[], object]
    timed_call: Callable[[int], object]
    input_sets: int
    outputs: str
    with_copies_call: Callable[[int], object] | None = None


def prepare(task: Task, sets: int) -> PreparedCall:
    """The timed call of ``task`` on its library and backend, over ``sets`` input sets."""
    if task.kind == "model":
        model = MODELS_BY_NAME[task.op]
        batch = model.batch_for(task.source, task.batch)
        return prepare_step(model, task.library, task.backend, task.dtype, batch, sets)
    spec, case = resolve_case(task.op, task.source, task.case, task.batch)
    if task.library == PEER:
        device = "cuda" if device_of(task.backend) == "gpu" else "cpu"
        return prepare_torch(spec, case, task.direction, task.dtype, sets, device)
    return prepare_fastcnn(spec, case, task.direction, task.dtype, task.backend, task.algo, sets)


def make_input_sets(spec: OpSpec, case: Case, dtype: str, sets: int, seed: int = 0) -> list[Arrays]:
    """``sets`` independent random input sets (standard normal: non-zero, no denormals)."""
    rng = np.random.default_rng(seed)
    return [spec.make_inputs(case, np.dtype(dtype), rng) for _ in range(sets)]


def _bind(function: Callable, values: dict, required: set[str]) -> dict | None:
    """Keyword arguments for ``function`` taken from ``values`` by parameter name.

    ``None`` when a required name has no parameter of that name (the caller falls back
    to the spec's own call). A backward's ``bias: bool`` flag becomes "was there a bias".
    """
    parameters = inspect.signature(function).parameters
    if not required <= parameters.keys():
        return None
    arguments = {}
    for name, parameter in parameters.items():
        if (
            isinstance(parameter.default, bool)
            and name in values
            and not isinstance(values[name], bool)
        ):
            arguments[name] = True  # e.g. conv2d_backward(bias=True): a bias array was given
        elif name in values:
            arguments[name] = values[name]
    return arguments


def _empty_like_result(result, xp=np):
    """Preallocated outputs shaped like ``result`` (an array or a tuple with ``None`` holes),
    written once so their pages are faulted in before any timing."""
    if isinstance(result, tuple):
        return tuple(None if r is None else _empty_like_result(r, xp) for r in result)
    out = xp.empty_like(result)
    out.fill(1)
    return out


def _algo_arguments(function: Callable, algo: str | None) -> dict:
    if algo is None or "algo" not in inspect.signature(function).parameters:
        return {}
    return {"algo": algo}


def _array_module(backend: str):
    if backend == "cuda":
        import cupy

        return cupy
    return np


def _to_device(values: dict, backend: str) -> dict:
    """``values`` with every NumPy array copied to the GPU for the ``cuda`` backend."""
    if backend != "cuda":
        return values
    import cupy

    return {k: cupy.asarray(v) if isinstance(v, np.ndarray) else v for k, v in values.items()}


def prepare_fastcnn(
    spec: OpSpec,
    case: Case,
    direction: str,
    dtype: str,
    backend: str,
    algo: str | None,
    sets: int,
) -> PreparedCall:
    """A fastcnn call of ``spec``'s kernel for ``direction`` on ``backend``."""
    host_sets = make_input_sets(spec, case, dtype, sets)
    params = dict(case.params)
    if direction == "fwd":
        function = getattr(F, spec.ops[0])
        host_values = [{**s, **params} for s in host_sets]
        required = set(host_sets[0]) | set(params)
    else:
        function = getattr(F, spec.ops[1])
        rng = np.random.default_rng(1)
        host_values = []
        for s in host_sets:
            y = _forward_output(spec, s, params)
            grad_y = np.asarray(rng.standard_normal(np.shape(y))).astype(dtype)
            saved = _saved_indices(spec, s, params) if "indices" in _parameters(function) else {}
            host_values.append(
                {**s, **params, **saved, "y": y, "grad_y": grad_y, "grad_output": grad_y}
            )
        required = set(params)
    host_bound = [_bind(function, values, required) for values in host_values]
    gradient_bound = direction == "fwd" or (
        host_bound[0] is not None and {"grad_y", "grad_output"} & host_bound[0].keys()
    )
    if any(b is None for b in host_bound) or not gradient_bound:
        # The op's signature does not follow its spec's names: use the spec's own call.
        return _spec_call(
            spec,
            direction,
            [_to_device(v, backend) for v in host_values],
            params,
            backend,
            sets,
            algo,
        )
    device_bound = [_to_device(b, backend) for b in host_bound]
    extra = _algo_arguments(function, algo)
    xp = _array_module(backend)
    outputs: list = []

    def first_call():
        result = function(**device_bound[0], **extra, backend=backend)
        outputs.append(_empty_like_result(result, xp))
        return result

    def timed_call(i: int):
        return function(**device_bound[i], **extra, out=outputs[0], backend=backend)

    with_copies = None
    if backend == "cuda":

        def with_copies(i: int):
            result = function(
                **_to_device(host_bound[i], backend), **extra, out=outputs[0], backend=backend
            )
            results = result if isinstance(result, tuple) else (result,)
            return [xp.asnumpy(r) for r in results if r is not None]

    return PreparedCall(first_call, timed_call, sets, "out=", with_copies)


def _spec_call(spec, direction, values, params, backend, sets, algo) -> PreparedCall:
    """The spec's own forward/backward call (fresh outputs each call)."""
    if algo not in (None, "auto"):
        raise NotImplementedError(f"{spec.name} cannot be called with algo={algo!r} here")
    names = set(spec.inputs)

    def call(i: int):
        inputs = {k: v for k, v in values[i].items() if k in names}
        if direction == "fwd":
            return spec.forward(inputs, params, backend)
        return spec.backward(inputs, params, values[i]["grad_y"], values[i]["y"], backend)

    return PreparedCall(lambda: call(0), call, sets, "fresh")


def _parameters(function: Callable):
    return inspect.signature(function).parameters


def _saved_indices(spec: OpSpec, inputs: Arrays, params: dict) -> dict:
    """Max-pool backward takes the forward's indices, as the peer's autograd does (and
    fastcnn's MaxPool2d layer): computed here, outside the timed call."""
    forward = getattr(F, spec.ops[0])
    arguments = _bind(forward, {**inputs, **params}, set())
    return {"indices": forward(**arguments, return_indices=True)[1]}


def _forward_output(spec: OpSpec, inputs: Arrays, params: dict):
    """The forward output a backward needs (sigmoid/tanh take y, all need its shape).

    Computed with the fastest CPU backend that has the forward (the reference as a
    last resort): any correct y will do, and it is outside the timed call.
    """
    try:
        return spec.forward(inputs, params, None)
    except NotImplementedError:
        return spec.forward(inputs, params, "reference")


# ---------------------------------------------------------------------------- the peer


def prepare_torch(
    spec: OpSpec, case: Case, direction: str, dtype: str, sets: int, device: str = "cpu"
) -> PreparedCall:
    """The peer's call: ``torch_forward`` (``out=`` where torch has it) or autograd's backward."""
    import torch
    import torch.nn.functional as torch_functional

    host_inputs = make_input_sets(spec, case, dtype, sets)
    tensor_sets = [
        {name: torch.from_numpy(array).to(device) for name, array in s.items()} for s in host_inputs
    ]
    params = dict(case.params)
    forward = spec.torch_forward
    if direction == "fwd":

        def call(i: int):
            with torch.no_grad():
                return forward(torch_functional, tensor_sets[i], params)

        out_call = _torch_out_variant(spec, tensor_sets, params, call)
        if out_call is not None:
            return PreparedCall(lambda: call(0), out_call, sets, "out=")
        return PreparedCall(lambda: call(0), call, sets, "fresh")
    rng = np.random.default_rng(1)
    graphs = []
    for tensors in tensor_sets:
        wanted = [
            tensors[name].requires_grad_()
            for name in spec.differentiable
            if name in tensors and tensors[name].is_floating_point()
        ]
        y = forward(torch_functional, tensors, params)
        grad_y = torch.from_numpy(np.asarray(rng.standard_normal(tuple(y.shape))).astype(dtype))
        graphs.append((y, wanted, grad_y.to(device)))

    def backward(i: int):
        y, wanted, grad_y = graphs[i]
        return torch.autograd.grad(y, wanted, grad_y, retain_graph=True)

    return PreparedCall(lambda: backward(0), backward, sets, "fresh")


def _torch_out_variant(spec: OpSpec, tensor_sets, params, reference_call):
    """``torch.<op>(*inputs, out=y)`` when torch has such a function taking no extra
    parameters and it gives the same result as the spec's call; else ``None``."""
    import torch

    function = getattr(torch, spec.name, None)
    if function is None or params:
        return None
    try:
        expected = reference_call(0)
        out = torch.empty_like(expected)
        tensors = tensor_sets[0]
        function(*[tensors[name] for name in spec.inputs if name in tensors], out=out)
        if not torch.allclose(out, expected, equal_nan=True):
            return None
    except (TypeError, RuntimeError):
        return None
    del expected

    def call(i: int):  # one output for every input set, as fastcnn's
        tensors = tensor_sets[i]
        return function(*[tensors[name] for name in spec.inputs if name in tensors], out=out)

    return call


def torch_threads(threads: int) -> int:
    """Set PyTorch's intra-op threads; returns what it uses."""
    import torch

    torch.set_num_threads(threads)
    return torch.get_num_threads()
