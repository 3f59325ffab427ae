"""fastcnn.torch: the custom ops pass gradcheck (float64) and opcheck, run inside
``torch.compile(fullgraph=True)``, and the modules train a LeNet and a small ResNet block
in a plain PyTorch loop to the losses and weights of ``torch.nn``."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap

import pytest

import fastcnn
from fastcnn.backends import CPU_BACKENDS


def test_fastcnn_imports_without_torch_and_fastcnn_torch_says_what_to_install(tmp_path):
    script = textwrap.dedent(
        """
        import sys
        sys.modules["torch"] = None  # import torch raises ImportError
        import numpy as np, fastcnn
        assert fastcnn.functional.relu(np.array([-1.0, 1.0]))[1] == 1.0
        try:
            import fastcnn.torch
        except ImportError as error:
            print(error)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip
    assert "fastcnn.torch needs PyTorch >= 2.4: pip install 'fastcnn[torch]'" in result.stdout


torch = pytest.importorskip("torch")
ft = pytest.importorskip("fastcnn.torch")

BACKENDS = [b for b in fastcnn.available_backends() if b in CPU_BACKENDS]
FAST = [b for b in BACKENDS if b != "reference"] or BACKENDS


@pytest.fixture
def generator(rng):
    """A torch generator seeded from the test's printed seed (see conftest.py)."""
    return torch.Generator().manual_seed(int(rng.integers(2**62)))


def _randn(generator, *shape, dtype=torch.float64, grad=True):
    return torch.randn(shape, generator=generator, dtype=dtype).requires_grad_(grad)


# ---------------------------------------------------------------------------- device and backend


def test_the_device_decides_the_backend():
    assert ft.backend_for("cpu", None) is None  # the fastest CPU backend
    assert ft.backend_for("cuda", None) is None  # CuPy arrays pick cuda
    assert ft.backend_for("cpu", "cuda-emu") == "cuda-emu"
    assert ft.backend_for("cuda", "cuda") == "cuda"
    with pytest.raises(ValueError, match="backend 'cuda' runs on CUDA tensors, got tensors on cpu"):
        ft.backend_for("cpu", "cuda")
    with pytest.raises(
        ValueError, match="backend 'numba' runs on CPU tensors, got tensors on cuda"
    ):
        ft.backend_for("cuda", "numba")
    with pytest.raises(ValueError, match="backend 'cuda-emu' runs on CPU"):
        ft.backend_for("cuda", "cuda-emu")
    with pytest.raises(ValueError, match="fastcnn runs CPU and CUDA tensors, got tensors on 'mps'"):
        ft.backend_for("mps", None)
    with pytest.raises(ValueError, match="backend must be one of"):
        ft.backend_for("cpu", "cudnn")
    with pytest.raises(ValueError, match="backend 'cuda' runs on CUDA tensors"):
        ft.relu(torch.ones(3), backend="cuda")


# ---------------------------------------------------------------------------- ops


def _cases(generator, backend):
    """(name, function, PyTorch's function or None, inputs) of every op, small enough for
    gradcheck."""
    g, r, nnf = generator, _randn, torch.nn.functional
    running_mean, running_var = r(g, 2, grad=False), r(g, 2, grad=False).square() + 0.5
    labels = torch.tensor([0, 1, 3, 1, 2, 0])
    class_weight = r(g, 4, grad=False).abs() + 0.1
    probabilities = torch.softmax(r(g, 6, 4, grad=False), 1)
    return [
        ("conv2d", lambda x, w, b: ft.conv2d(x, w, b, 2, 1, backend=backend),
         lambda x, w, b: nnf.conv2d(x, w, b, 2, 1),
         (r(g, 2, 3, 7, 6), r(g, 4, 3, 3, 3), r(g, 4))),
        ("conv2d grouped", lambda x, w: ft.conv2d(x, w, None, 2, "same", 2, 2, backend=backend),
         None, (r(g, 1, 4, 7, 7), r(g, 2, 2, 3, 2))),
        ("max_pool2d", lambda x: ft.max_pool2d(x, 3, 2, 1, ceil_mode=True, backend=backend),
         lambda x: nnf.max_pool2d(x, 3, 2, 1, ceil_mode=True), (r(g, 2, 2, 7, 6),)),
        ("avg_pool2d", lambda x: ft.avg_pool2d(x, 3, 2, 1, False, False, backend=backend),
         lambda x: nnf.avg_pool2d(x, 3, 2, 1, False, False), (r(g, 2, 2, 7, 6),)),
        ("avg_pool2d divisor", lambda x: ft.avg_pool2d(x, 2, divisor_override=3, backend=backend),
         lambda x: nnf.avg_pool2d(x, 2, divisor_override=3), (r(g, 1, 2, 4, 4),)),
        ("relu", lambda x: ft.relu(x, backend=backend), torch.relu, (r(g, 3, 5),)),
        ("leaky_relu", lambda x: ft.leaky_relu(x, -0.3, backend=backend),
         lambda x: nnf.leaky_relu(x, -0.3), (r(g, 3, 5),)),
        ("sigmoid", lambda x: ft.sigmoid(x, backend=backend), torch.sigmoid, (r(g, 3, 5),)),
        ("tanh", lambda x: ft.tanh(x, backend=backend), torch.tanh, (r(g, 3, 5),)),
        ("linear", lambda x, w, b: ft.linear(x, w, b, backend=backend), nnf.linear,
         (r(g, 2, 3, 5), r(g, 4, 5), r(g, 4))),
        ("batch_norm training",
         lambda x, w, b: ft.batch_norm(x, None, None, w, b, True, backend=backend),
         lambda x, w, b: nnf.batch_norm(x, None, None, w, b, True),
         (r(g, 3, 2, 4, 3), r(g, 2), r(g, 2))),
        ("batch_norm eval",
         lambda x, w: ft.batch_norm(x, running_mean, running_var, w, None, backend=backend),
         lambda x, w: nnf.batch_norm(x, running_mean, running_var, w),
         (r(g, 3, 2, 4, 3), r(g, 2))),
        ("cross_entropy",
         lambda z: ft.cross_entropy(z, labels, class_weight, 1, label_smoothing=0.1,
                                    backend=backend),
         lambda z: nnf.cross_entropy(z, labels, class_weight, None, 1, None, "mean", 0.1),
         (r(g, 6, 4),)),
        ("cross_entropy none", lambda z: ft.cross_entropy(z, labels, reduction="none",
                                                          backend=backend),
         lambda z: nnf.cross_entropy(z, labels, reduction="none"), (r(g, 6, 4),)),
        ("cross_entropy soft", lambda z: ft.cross_entropy(z, probabilities, reduction="sum",
                                                          backend=backend),
         lambda z: nnf.cross_entropy(z, probabilities, reduction="sum"), (r(g, 6, 4),)),
    ]  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_op_passes_gradcheck_in_float64_and_matches_torch(backend, generator):
    for name, function, reference, inputs in _cases(generator, backend):
        assert torch.autograd.gradcheck(function, inputs), name
        if reference is not None:
            torch.testing.assert_close(function(*inputs), reference(*inputs), msg=name)


def test_every_op_passes_opcheck(generator):
    """Schema, autograd registration, fake tensors and AOT dispatch with dynamic shapes
    (the forward ops with inputs that require grad, so their backward ops run too)."""
    seen = set()
    for _, function, _, inputs in _cases(generator, None):
        calls = _op_calls(function, inputs)
        for op, args in calls:
            torch.library.opcheck(op, args)
            seen.add(op.name())
    names = ("conv2d", "max_pool2d", "avg_pool2d", "relu", "leaky_relu", "sigmoid", "tanh",
             "linear", "batch_norm", "cross_entropy")  # fmt: skip
    assert {f"fastcnn::{name}" for name in names} == seen


def _op_calls(function, inputs):
    """The fastcnn ops ``function`` calls and their arguments (recorded by a dispatch mode)."""
    calls = []

    class Record(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, op, types, args=(), kwargs=None):
            if op.namespace == "fastcnn":
                calls.append((op, args))
            return op(*args, **(kwargs or {}))

    with Record():
        function(*inputs)
    return calls


def test_backward_ops_pass_opcheck(generator):
    x, w = _randn(generator, 2, 3, 6, 6, grad=False), _randn(generator, 4, 3, 3, 3, grad=False)
    grad_y = _randn(generator, 2, 4, 4, 4, grad=False)
    conv = (grad_y, x, w, [1, 1], [0, 0], [1, 1], 1, False, True, True, "auto", "auto", None)
    torch.library.opcheck(torch.ops.fastcnn.conv2d_backward.default, conv)
    y, indices = torch.ops.fastcnn.max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], False, None)
    grad = _randn(generator, *y.shape, grad=False)
    torch.library.opcheck(
        torch.ops.fastcnn.max_pool2d_backward.default,
        (grad, x, indices, [2, 2], [2, 2], [0, 0], [1, 1], False, None),
    )
    torch.library.opcheck(
        torch.ops.fastcnn.avg_pool2d_backward.default,
        (grad, x, [2, 2], [2, 2], [0, 0], False, True, None, None),
    )
    for name in ("relu", "sigmoid", "tanh"):
        op = getattr(torch.ops.fastcnn, f"{name}_backward").default
        torch.library.opcheck(op, (grad, y, None))
    torch.library.opcheck(torch.ops.fastcnn.leaky_relu_backward.default, (grad, y, 0.1, None))
    features = _randn(generator, 5, 3, grad=False)
    torch.library.opcheck(
        torch.ops.fastcnn.linear_backward.default,
        (_randn(generator, 5, 2, grad=False), features, _randn(generator, 2, 3, grad=False),
         False, False, None),
    )  # fmt: skip


def test_strided_and_unbatched_inputs(generator):
    x = _randn(generator, 2, 3, 8, 8, grad=False).transpose(2, 3)  # copied to contiguous
    w = _randn(generator, 4, 3, 3, 3, grad=False)
    torch.testing.assert_close(ft.conv2d(x, w), torch.nn.functional.conv2d(x, w))
    torch.testing.assert_close(ft.conv2d(x[0], w), torch.nn.functional.conv2d(x[0], w))
    y, indices = ft.max_pool2d(x[0], 2, return_indices=True)
    expected, expected_indices = torch.nn.functional.max_pool2d(x[0], 2, return_indices=True)
    torch.testing.assert_close(y, expected)
    assert torch.equal(indices, expected_indices)
    with pytest.raises(ValueError, match=r"weight.shape\[1\] must be C/groups"):
        ft.conv2d(x, w[:, :2])


@pytest.mark.parametrize("name", [n for n in ft.__all__ if not isinstance(getattr(ft, n), type)])
def test_every_function_argument_is_documented(name):
    import inspect

    function = getattr(ft, name)
    doc = inspect.getdoc(function) or ""
    assert [p for p in inspect.signature(function).parameters if p not in doc] == []


# ---------------------------------------------------------------------------- modules


def _lenet(dtype):
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(256, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    ).to(dtype)  # fmt: skip


class BasicBlock(torch.nn.Module):
    """ResNet's basic block: conv-bn-relu-conv-bn, plus the identity, then relu."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(channels)
        self.relu = torch.nn.ReLU(inplace=True)
        self.conv2 = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(channels)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)


def _resnet_block(dtype):
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), BasicBlock(8), nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(8 * 4 * 4, 10),
    ).to(dtype)  # fmt: skip


def _train(model, criterion, images, labels, steps: int):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for step in range(steps):
        optimizer.zero_grad()
        loss = criterion(model(images[step]), labels[step])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("backend", [None, *[b for b in FAST if b != FAST[0]]])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("build", "image"), [(_lenet, (1, 28, 28)), (_resnet_block, (3, 8, 8))])
def test_training_gives_the_losses_and_weights_of_torch_nn(build, image, dtype, backend, generator):
    steps, batch = 4, 8
    images = torch.randn((steps, batch, *image), generator=generator, dtype=dtype)
    labels = torch.randint(0, 10, (steps, batch), generator=generator)
    expected = build(dtype)
    model = ft.convert(copy.deepcopy(expected), backend=backend)
    assert any(type(m).__module__ == "fastcnn.torch.modules" for m in model.modules())
    criterion = ft.convert(torch.nn.CrossEntropyLoss(), backend=backend)
    assert type(criterion) is ft.CrossEntropyLoss
    expected_losses = _train(expected, torch.nn.CrossEntropyLoss(), images, labels, steps)
    losses = _train(model, criterion, images, labels, steps)
    tight = dtype == torch.float64
    tolerance = {"rtol": 1e-10, "atol": 1e-10} if tight else {"rtol": 2e-3, "atol": 2e-4}
    torch.testing.assert_close(losses, expected_losses, **tolerance)
    expected_state = expected.state_dict()
    state = model.state_dict()
    assert list(state) == list(expected_state)
    for key in state:
        torch.testing.assert_close(state[key], expected_state[key], **tolerance, msg=key)


def test_modules_mirror_torch_nn():
    pairs = [
        (ft.Conv2d(3, 8, (3, 2), stride=2, padding=1, dilation=1, groups=1, bias=False,
                   algo="im2col"), torch.nn.Conv2d(3, 8, (3, 2), 2, 1, bias=False)),
        (ft.Linear(5, 3), torch.nn.Linear(5, 3)),
        (ft.MaxPool2d(3, 2, 1, ceil_mode=True), torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True)),
        (ft.AvgPool2d(2, count_include_pad=False), torch.nn.AvgPool2d(2, count_include_pad=False)),
        (ft.ReLU(inplace=True), torch.nn.ReLU(inplace=True)),
        (ft.LeakyReLU(0.2), torch.nn.LeakyReLU(0.2)),
        (ft.Sigmoid(backend="reference"), torch.nn.Sigmoid()),
        (ft.Tanh(), torch.nn.Tanh()),
        (ft.BatchNorm2d(4, momentum=None), torch.nn.BatchNorm2d(4, momentum=None)),
        (ft.CrossEntropyLoss(label_smoothing=0.1), torch.nn.CrossEntropyLoss(label_smoothing=0.1)),
    ]  # fmt: skip
    for mine, theirs in pairs:
        assert isinstance(mine, type(theirs))
        assert {k: v.shape for k, v in mine.state_dict().items()} == {
            k: v.shape for k, v in theirs.state_dict().items()
        }
    assert "algo='im2col'" in repr(pairs[0][0]) and "backend='reference'" in repr(pairs[6][0])


@pytest.mark.parametrize(
    "options", [{"momentum": None}, {"track_running_stats": False}, {"affine": False}]
)
def test_batch_norm_keeps_torchs_running_statistics(options, generator):
    expected = torch.nn.BatchNorm2d(3, **options, dtype=torch.float64)
    layer = ft.convert(copy.deepcopy(expected))
    assert type(layer) is ft.BatchNorm2d
    for _ in range(3):
        x = _randn(generator, 4, 3, 5, 5)
        torch.testing.assert_close(layer(x), expected(x))
    torch.testing.assert_close(layer.state_dict(), expected.state_dict())
    layer.eval(), expected.eval()
    x = _randn(generator, 2, 3, 5, 5)
    torch.testing.assert_close(layer(x), expected(x))
    grad, expected_grad = (torch.autograd.grad(m(x).sum(), x)[0] for m in (layer, expected))
    torch.testing.assert_close(grad, expected_grad)


def test_convert_keeps_the_parameters_and_leaves_subclasses(generator):
    class Custom(torch.nn.ReLU):
        pass

    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 3, 3, padding_mode="reflect", padding=1, dtype=torch.float64),
        Custom(), torch.nn.Sequential(torch.nn.Tanh()),
    )  # fmt: skip
    weight = model[0].weight
    x = _randn(generator, 2, 2, 5, 5, grad=False)
    expected = model(x)
    converted = ft.convert(model, backend=FAST[0], algo="auto")
    assert converted is model and model[0].weight is weight
    assert type(model[0]) is ft.Conv2d and model[0].backend == FAST[0]
    assert type(model[1]) is Custom and type(model[2][0]) is ft.Tanh
    torch.testing.assert_close(model(x), expected)
    layer = ft.convert(torch.nn.Linear(3, 2))
    assert type(layer) is ft.Linear
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        ft.convert("lenet")
    with pytest.raises(ValueError, match="backend must be one of"):
        ft.convert(torch.nn.ReLU(), backend="mkldnn")


# ---------------------------------------------------------------------------- torch.compile


def _small_model():
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.LeakyReLU(0.1), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3),
        nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16, 8), nn.Sigmoid(), nn.ReLU(),
        nn.Linear(8, 3),
    ).double()  # fmt: skip


def _compiled_step(compile_backend: str, generator):
    expected = _small_model()
    model = ft.convert(copy.deepcopy(expected))
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=compile_backend, fullgraph=True)
    x = _randn(generator, 4, 1, 12, 12, grad=False)
    for network in (expected, compiled):
        network(x).square().sum().backward()
    torch.testing.assert_close(compiled(x), expected(x))
    for (name, mine), theirs in zip(model.named_parameters(), expected.parameters(), strict=True):
        torch.testing.assert_close(mine.grad, theirs.grad, msg=name)


def test_torch_compile_fullgraph_forward_and_backward(generator):
    _compiled_step("aot_eager", generator)


@pytest.mark.slow
def test_torch_compile_with_inductor(generator):
    """Inductor compiles C++ for the graph around the ops (about 30 s on 2 cores)."""
    _compiled_step("inductor", generator)


# ---------------------------------------------------------------------------- the CUDA path


def test_the_cuda_kernels_train_through_the_ops_on_the_emulator(generator):
    """The CUDA path's kernels (the .cu files) through the custom ops, emulated on the CPU."""
    if "cuda-emu" not in fastcnn.available_backends():
        pytest.skip("cuda-emu is not available (it needs g++)")
    expected = _small_model()
    model = ft.convert(copy.deepcopy(expected), backend="cuda-emu")
    x = _randn(generator, 2, 1, 12, 12, grad=False)
    torch.testing.assert_close(model(x), expected(x))
    for network in (expected, model):
        network(x).square().sum().backward()
    for mine, theirs in zip(model.parameters(), expected.parameters(), strict=True):
        torch.testing.assert_close(mine.grad, theirs.grad)


def test_cuda_work_goes_on_torchs_current_stream(monkeypatch):
    """Without a GPU: a CUDA tensor's calls enter CuPy's Device and an ExternalStream of
    PyTorch's current stream (CuPy and the stream are stand-ins here); a CPU tensor's
    enter nothing."""
    import contextlib
    import types

    from fastcnn.torch import ops

    entered = []

    @contextlib.contextmanager
    def record(kind, *args):
        entered.append((kind, *args))
        yield

    cupy = types.SimpleNamespace(
        cuda=types.SimpleNamespace(
            Device=lambda index: record("Device", index),
            ExternalStream=lambda pointer, index: record("ExternalStream", pointer, index),
        )
    )
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setattr(
        torch.cuda, "current_stream", lambda device: types.SimpleNamespace(cuda_stream=4242)
    )
    with ops._stream(torch.ones(1)):
        pass
    assert entered == []
    with ops._stream(types.SimpleNamespace(device=torch.device("cuda", 1))):
        pass
    assert entered == [("Device", 1), ("ExternalStream", 4242, 1)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_tensors_run_on_the_cuda_backend_on_torchs_stream(generator):
    pytest.importorskip("cupy")
    expected = _small_model().float().cuda()
    model = ft.convert(copy.deepcopy(expected))
    x = _randn(generator, 8, 1, 12, 12, dtype=torch.float32, grad=False).cuda()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):  # the kernels follow PyTorch's current stream
        for network in (expected, model):
            network(x).square().sum().backward()
        y = model(x)
    stream.synchronize()
    torch.testing.assert_close(y, expected(x), rtol=1e-4, atol=1e-4)
    for mine, theirs in zip(model.parameters(), expected.parameters(), strict=True):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------------------- the example


def test_the_torch_example_trains(capsys):
    """examples/torch_lenet.py: a short run learns well above chance (about 10 s)."""
    pytest.importorskip("sklearn")
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "torch_lenet.py"
    spec = importlib.util.spec_from_file_location("torch_lenet", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.train(example.parse_arguments(["--steps", "100", "--log-every", "50"]))
    output = capsys.readouterr().out
    assert output.count("step ") == 2 and "test accuracy" in output
    first, last = result["losses"]
    assert last < 0.5 * first  # about 1.9 and 0.37 (chance: ln 10 = 2.30)
    assert result["test_accuracy"] > 0.7  # about 0.9


def test_the_interop_benchmark_times_each_library():
    """benchmarks/torch_interop.py's measurements, in this process, at batch 4."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "torch_interop.py"
    spec = importlib.util.spec_from_file_location("torch_interop", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for library in bench.LIBRARIES:
        result = bench.time_step(library, 4, "float32", FAST[0], min_time=0.0)
        assert result["median_s"] > 0 and result["runs"] >= 3, library
