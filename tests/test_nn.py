"""fastcnn.nn layers and fastcnn.save / load: PyTorch parity, state dicts, initialisation.

The layers only orchestrate functional calls, so these tests run on the reference
backend (fast, no compilation); the ops themselves are tested per backend elsewhere.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import fastcnn
import fastcnn.functional as F
from fastcnn import nn
from fastcnn.backends import CPU_BACKENDS, available_backends

TOLERANCE = {np.float64: 1e-10, np.float32: 1e-4}


@pytest.fixture(autouse=True)
def reference_backend():
    with fastcnn.use_backend("reference"):
        yield


def assert_close(actual, expected, dtype) -> None:
    """Relative to the expected values' scale: conv and linear sum many terms."""
    expected = np.asarray(expected, dtype=np.float64)
    tolerance = TOLERANCE[dtype]
    scale = max(float(np.abs(expected).max(initial=0.0)), 1.0)
    np.testing.assert_allclose(actual, expected, rtol=tolerance, atol=tolerance * scale)


def small_lenet(layers, dtype):
    """The same small LeNet in fastcnn.nn or torch.nn: their constructors take the same arguments.

    Input (N, 2, 10, 10): every layer kind, a grouped convolution and a strided-1 pool.
    """
    return layers.Sequential(
        layers.Conv2d(2, 4, 3, padding=1, dtype=dtype),
        layers.ReLU(),
        layers.MaxPool2d(2),  # 10x10 -> 5x5
        layers.Conv2d(4, 6, 3, groups=2, dtype=dtype),  # -> 3x3
        layers.Tanh(),
        layers.AvgPool2d(2, stride=1),  # -> 2x2
        layers.Flatten(),
        layers.Linear(24, 10, dtype=dtype),
        layers.Sigmoid(),
        layers.Linear(10, 8, dtype=dtype),
        layers.LeakyReLU(0.1),
        layers.Linear(8, 5, dtype=dtype),
    )


def torch_dtype(dtype):
    torch = pytest.importorskip("torch")
    return {np.float32: torch.float32, np.float64: torch.float64}[dtype]


def run_both(ours, theirs, x, labels, dtype):
    """Forward, loss and backward in both models; compare logits, loss and every gradient."""
    torch = pytest.importorskip("torch")
    criterion = nn.CrossEntropyLoss()
    logits = ours(x)
    loss = criterion(logits, labels)
    grad_x = ours.backward(criterion.backward())

    x_torch = torch.from_numpy(x.copy()).requires_grad_()
    logits_torch = theirs(x_torch)
    loss_torch = torch.nn.functional.cross_entropy(logits_torch, torch.from_numpy(labels))
    loss_torch.backward()

    assert logits.dtype == dtype and grad_x.dtype == dtype
    assert_close(logits, logits_torch.detach().numpy(), dtype)
    assert_close(loss, loss_torch.item(), dtype)
    assert_close(grad_x, x_torch.grad.numpy(), dtype)
    torch_parameters = dict(theirs.named_parameters())
    assert [name for name, _ in ours.named_parameters()] == list(torch_parameters)
    for name, parameter in ours.named_parameters():
        assert parameter.grad.dtype == dtype
        assert_close(parameter.grad, torch_parameters[name].grad.numpy(), dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_torch_weights_load_and_match(dtype):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    theirs = small_lenet(torch.nn, torch_dtype(dtype))
    ours = small_lenet(nn, dtype)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 10, 10)).astype(dtype)
    labels = rng.integers(0, 5, size=3)
    run_both(ours, theirs, x, labels, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fastcnn_weights_load_into_torch_and_match(dtype):
    torch = pytest.importorskip("torch")
    fastcnn.manual_seed(1)
    ours = small_lenet(nn, dtype)
    theirs = small_lenet(torch.nn, torch_dtype(dtype))
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 2, 10, 10)).astype(dtype)
    labels = rng.integers(0, 5, size=4)
    run_both(ours, theirs, x, labels, dtype)


@pytest.mark.parametrize(
    "make_layer, shape",
    [
        (
            lambda m: m.Conv2d(
                3, 4, (3, 2), stride=2, padding=(1, 2), dilation=2, bias=False, dtype=m.float64
            ),
            (2, 3, 9, 8),
        ),
        (lambda m: m.MaxPool2d(3, stride=2, padding=1, ceil_mode=True), (2, 3, 8, 7)),
        (lambda m: m.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False), (2, 3, 8, 7)),
        (lambda m: m.Flatten(0, 2), (2, 3, 4, 5)),
        (lambda m: m.Linear(5, 3, bias=False, dtype=m.float64), (2, 4, 5)),
    ],
    ids=["conv2d", "max_pool2d", "avg_pool2d", "flatten", "linear"],
)
def test_single_layer_matches_torch(make_layer, shape):
    torch = pytest.importorskip("torch")

    class Torch:  # torch.nn with the dtype name the lambdas use
        def __getattr__(self, name):
            return torch.float64 if name == "float64" else getattr(torch.nn, name)

    class Ours:
        def __getattr__(self, name):
            return np.float64 if name == "float64" else getattr(nn, name)

    torch.manual_seed(0)
    theirs, ours = make_layer(Torch()), make_layer(Ours())
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape)
    x_torch = torch.from_numpy(x.copy()).requires_grad_()
    y_torch = theirs(x_torch)
    grad_y = rng.standard_normal(tuple(y_torch.shape))
    y_torch.backward(torch.from_numpy(grad_y))
    assert_close(ours(x), y_torch.detach().numpy(), np.float64)
    assert_close(ours.backward(grad_y), x_torch.grad.numpy(), np.float64)
    for name, parameter in ours.named_parameters():
        assert_close(parameter.grad, dict(theirs.named_parameters())[name].grad.numpy(), np.float64)


def test_max_pool_return_indices_match_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(3).standard_normal((1, 2, 6, 6))
    y, indices = nn.MaxPool2d(2, return_indices=True)(x)
    y_torch, indices_torch = torch.nn.MaxPool2d(2, return_indices=True)(torch.from_numpy(x))
    np.testing.assert_array_equal(y, y_torch.numpy())
    np.testing.assert_array_equal(indices, indices_torch.numpy())


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    "options",
    [{}, {"weight": True}, {"ignore_index": 2}, {"label_smoothing": 0.2}, {"soft": True},
     {"soft": True, "weight": True, "label_smoothing": 0.1},
     {"weight": True, "ignore_index": 1, "label_smoothing": 0.3}],
    ids=["plain", "weight", "ignore_index", "smoothing", "probabilities", "soft-all", "all"],
)  # fmt: skip
def test_cross_entropy_loss_matches_torch(reduction, options):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    options = dict(options)
    logits = rng.standard_normal((5, 4))
    if options.pop("soft", False):
        target = rng.random((5, 4))
    else:
        target = rng.integers(0, 4, size=5)
    if options.get("weight"):
        options["weight"] = rng.random(4) + 0.5
    grad_output = rng.standard_normal(5) if reduction == "none" else 0.7
    criterion = nn.CrossEntropyLoss(**options, reduction=reduction)
    loss = criterion(logits, target)
    grad_logits = criterion.backward(grad_output)

    torch_options = {
        k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in options.items()
    }
    logits_torch = torch.from_numpy(logits.copy()).requires_grad_()
    criterion_torch = torch.nn.CrossEntropyLoss(**torch_options, reduction=reduction)
    loss_torch = criterion_torch(logits_torch, torch.from_numpy(target))
    loss_torch.backward(torch.as_tensor(grad_output, dtype=torch.float64))
    assert_close(loss, loss_torch.detach().numpy(), np.float64)
    assert_close(grad_logits, logits_torch.grad.numpy(), np.float64)
    assert list(criterion.state_dict()) == list(criterion_torch.state_dict())


def test_cross_entropy_loss_checks_its_options():
    with pytest.raises(TypeError, match="pass reduction= by keyword"):
        nn.CrossEntropyLoss("sum")
    with pytest.raises(ValueError, match="label_smoothing must lie in"):
        nn.CrossEntropyLoss(label_smoothing=-0.1)
    with pytest.raises(TypeError, match="ignore_index must be an int"):
        nn.CrossEntropyLoss(ignore_index=0.5)
    assert "label_smoothing=0.1" in repr(nn.CrossEntropyLoss(label_smoothing=0.1))


def test_a_class_without_weight_adds_nothing_where_its_logit_is_minus_inf():
    """PyTorch gives NaN here (0 x -inf); the limit, and fastcnn, give the other terms."""
    logits = np.array([[0.0, -np.inf, 1.0], [2.0, 0.5, -np.inf]])
    probabilities = np.array([[0.5, 0.0, 0.5], [1.0, 0.0, 0.0]])
    finite = np.where(np.isinf(logits), -1e300, logits)  # exp underflows to 0 either way
    for backend in [b for b in available_backends() if b in CPU_BACKENDS and b != "cpp"]:
        got = F.cross_entropy(logits, probabilities, reduction="none", backend=backend)
        want = F.cross_entropy(finite, probabilities, reduction="none", backend="reference")
        assert np.isfinite(got).all()
        assert_close(got, want, np.float64)
        weight = np.array([1.0, 0.0, 1.0])
        got = F.cross_entropy(
            logits[:1], np.array([0]), weight, label_smoothing=0.5, backend=backend
        )
        assert np.isfinite(got)


# ---------------------------------------------------------------------------- module behaviour


def nested_model() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 2, 3),
        nn.Sequential(nn.ReLU(), nn.Conv2d(2, 3, 1, bias=False)),
        nn.Flatten(),
        nn.Linear(12, 2),
    )


def test_named_parameters_and_state_dict_keys_follow_torch_order():
    torch = pytest.importorskip("torch")
    expected = ["0.weight", "0.bias", "1.1.weight", "3.weight", "3.bias"]
    model = nested_model()
    assert [name for name, _ in model.named_parameters()] == expected
    assert list(model.state_dict()) == expected
    theirs = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3),
        torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Conv2d(2, 3, 1, bias=False)),
        torch.nn.Flatten(),
        torch.nn.Linear(12, 2),
    )
    assert {k: tuple(v.shape) for k, v in theirs.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    assert list(model.parameters()) == [p for _, p in model.named_parameters()]


def test_shared_parameter_is_listed_once():
    first, second = nn.Linear(2, 2), nn.Linear(2, 2)
    second.weight = first.weight
    model = nn.Sequential(first, second)
    assert [name for name, _ in model.named_parameters()] == ["0.weight", "0.bias", "1.bias"]


def test_gradients_accumulate_until_zero_grad():
    model = nested_model()
    x = np.random.default_rng(5).standard_normal((2, 1, 4, 4)).astype(np.float32)
    assert all(p.grad is None for p in model.parameters())
    grad_y = np.ones((2, 2), np.float32)
    model(x)
    model.backward(grad_y)
    first = [p.grad.copy() for p in model.parameters()]
    model(x)
    model.backward(grad_y)
    for parameter, once in zip(model.parameters(), first, strict=True):
        np.testing.assert_allclose(parameter.grad, 2 * once, rtol=1e-6)
    model.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_backward_before_forward_raises():
    with pytest.raises(RuntimeError, match="before forward"):
        nn.Linear(2, 3).backward(np.ones((1, 3), np.float32))


def test_train_and_eval_set_every_module():
    model = nested_model()
    assert model.eval() is model
    assert not any(module.training for module in model.modules())
    model.train()
    assert all(module.training for module in model.modules())


def test_relu_inplace_overwrites_input_and_still_backpropagates():
    x = np.array([-1.0, 0.5, 2.0])
    layer = nn.ReLU(inplace=True)
    assert layer(x) is x
    np.testing.assert_array_equal(layer.backward(np.ones(3)), [0.0, 1.0, 1.0])


def test_state_dict_values_are_copies():
    model = nn.Linear(2, 2)
    state = model.state_dict()
    state["weight"][...] = 7.0
    assert not (model.weight.data == 7.0).any()


def test_load_state_dict_copies_values_and_keeps_dtype():
    model = nn.Linear(3, 2)  # float32
    source = {"weight": np.arange(6.0).reshape(2, 3), "bias": np.array([1.0, 2.0])}
    assert model.load_state_dict(source) == ([], [])
    source["weight"][...] = -1.0
    assert model.weight.dtype == np.float32
    np.testing.assert_array_equal(model.weight.data, np.arange(6.0).reshape(2, 3))


def test_load_state_dict_reports_missing_unexpected_and_wrong_shapes():
    model = nn.Sequential(nn.Linear(3, 2))
    good = {"0.weight": np.ones((2, 3)), "0.bias": np.ones(2)}
    with pytest.raises(RuntimeError, match=r"missing keys \['0.bias'\]"):
        model.load_state_dict({"0.weight": good["0.weight"]})
    with pytest.raises(RuntimeError, match=r"unexpected keys \['1.weight'\]"):
        model.load_state_dict({**good, "1.weight": np.ones(1)})
    with pytest.raises(RuntimeError, match=r"wrong shape for '0.weight'.*\(2, 3\).*\(3, 2\)"):
        model.load_state_dict({**good, "0.weight": np.ones((3, 2))})
    with pytest.raises(RuntimeError, match="wrong shape"):  # even when not strict, as PyTorch
        model.load_state_dict({"0.weight": np.ones((3, 2))}, strict=False)
    assert not (model[0].weight.data == 1.0).all()  # nothing was loaded by the failed calls
    result = model.load_state_dict(
        {"0.weight": good["0.weight"], "extra": np.ones(1)}, strict=False
    )
    assert result.missing_keys == ["0.bias"] and result.unexpected_keys == ["extra"]
    np.testing.assert_array_equal(model[0].weight.data, 1.0)


def test_to_checks_the_device():
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="'cpu' or 'cuda'"):
        model.to("tpu")
    assert model.to("cpu") is model and isinstance(model.weight.data, np.ndarray)
    try:
        import cupy

        gpu = cupy.is_available()
    except ImportError:
        gpu = False
    if not gpu:
        with pytest.raises(fastcnn.BackendUnavailableError, match=r"CuPy|GPU"):
            model.to("cuda")


def test_layer_arguments_are_validated():
    with pytest.raises(ValueError, match="divisible by groups"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(TypeError, match="float32 or float64"):
        nn.Linear(2, 2, dtype=np.int32)
    with pytest.raises(TypeError, match="Modules"):
        nn.Sequential(nn.ReLU(), "relu")
    with pytest.raises(ValueError, match="reduction"):
        nn.CrossEntropyLoss(reduction="average")
    with pytest.raises(ValueError, match="backend must be None or one of"):
        nn.Conv2d(1, 1, 3, backend="fortran")
    with pytest.raises(TypeError, match="algo must be a str or a triple"):
        nn.Conv2d(1, 1, 3, algo=("direct", "im2col"))


# ---------------------------------------------------------------------------- initialisation


def test_manual_seed_makes_initialisation_reproducible():
    fastcnn.manual_seed(123)
    first = nested_model().state_dict()
    fastcnn.manual_seed(123)
    again = nested_model().state_dict()
    fastcnn.manual_seed(124)
    other = nested_model().state_dict()
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
        assert not np.array_equal(first[key], other[key])


@pytest.mark.parametrize(
    "layer, fan_in",
    [
        (lambda: nn.Conv2d(6, 16, 5), 6 * 5 * 5),
        (lambda: nn.Conv2d(8, 8, 3, groups=4), 2 * 3 * 3),
        (lambda: nn.Linear(400, 120, dtype=np.float64), 400),
    ],
    ids=["conv2d", "grouped-conv2d", "linear"],
)
def test_default_initialisation_is_uniform_within_one_over_sqrt_fan_in(layer, fan_in):
    fastcnn.manual_seed(0)
    module = layer()
    bound = 1 / math.sqrt(fan_in)
    for parameter in (module.weight, module.bias):
        values = parameter.data
        assert np.abs(values).max() <= bound
        # Uniform on [-b, b]: the extremes come close to b and the spread is b / sqrt(3).
        assert np.abs(values).max() > 0.8 * bound
        if values.size >= 100:
            assert values.std() == pytest.approx(bound / math.sqrt(3), rel=0.1)
    assert module.weight.dtype == module.bias.dtype


# ---------------------------------------------------------------------------- save / load


def test_save_load_round_trip(tmp_path):
    fastcnn.manual_seed(7)
    model = nested_model()
    path = tmp_path / "model.weights"  # written at exactly this path, no suffix added
    fastcnn.save(model.state_dict(), path)
    loaded = fastcnn.load(path)
    assert list(loaded) == list(model.state_dict())
    for key, value in model.state_dict().items():
        assert loaded[key].dtype == value.dtype
        np.testing.assert_array_equal(loaded[key], value)
    fastcnn.manual_seed(8)
    restored = nested_model()
    restored.load_state_dict(loaded)
    x = np.random.default_rng(6).standard_normal((2, 1, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(restored(x), model(x))


def test_save_accepts_any_key_name(tmp_path):
    state = {"file": np.ones(2), "allow_pickle": np.zeros(1, np.int64)}
    fastcnn.save(state, tmp_path / "odd.npz")
    assert {k: v.tolist() for k, v in fastcnn.load(tmp_path / "odd.npz").items()} == {
        "file": [1.0, 1.0],
        "allow_pickle": [0],
    }


def test_object_arrays_are_refused(tmp_path):
    objects = np.array([{"not": "numbers"}, None], dtype=object)
    with pytest.raises(ValueError, match="object array"):
        fastcnn.save({"weight": objects}, tmp_path / "refused.npz")
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, weight=objects, allow_pickle=True)  # a file that needs pickle to read
    with pytest.raises(ValueError, match="allow_pickle"):
        fastcnn.load(pickled)


def test_training_step_allocates_nothing_after_the_first():
    """With reuse_buffers(), a LeNet training step allocates no activation-sized array
    (tracemalloc sees NumPy's data buffers, and Numba's runtime allocates through
    Python's raw allocator, which it traces too)."""
    import tracemalloc

    import fastcnn
    from fastcnn import nn, optim

    fastcnn.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(256, 32), nn.Tanh(), nn.Linear(32, 10),
    ).reuse_buffers()  # fmt: skip
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((256, 1, 28, 28), dtype=np.float32)
    labels = rng.integers(0, 10, 256)

    def step():
        optimizer.zero_grad()
        criterion(model(images), labels)
        model.backward(criterion.backward())
        optimizer.step()

    if "numba" not in fastcnn.available_backends():
        pytest.skip("the reference backend computes in float64 copies by design")
    with fastcnn.use_backend("numba"):  # this module otherwise runs on the reference
        step()
        step()
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            step()
            peak = tracemalloc.get_traced_memory()[1] - baseline
        finally:
            tracemalloc.stop()
    # Every activation and gradient of the convolutional part is 64 KiB or more; the
    # interpreter's own small objects (frames, tuples, geometries) stay near 20 KiB.
    assert peak < 48 * 1024, f"a step allocated {peak} bytes"


@pytest.mark.parametrize("reuse", [False, True])
def test_backward_without_the_input_gradient(reuse):
    """input_grad=False returns None and leaves every parameter's gradient as with True,
    also when layers without parameters come first."""
    x = np.random.default_rng(0).standard_normal((3, 2, 10, 10)).astype(np.float32)
    grads = []
    for input_grad in (True, False):
        fastcnn.manual_seed(0)
        model = nn.Sequential(nn.ReLU(), small_lenet(nn, np.float32))
        if reuse:
            model.reuse_buffers()
        y = model(x)
        result = model.backward(np.ones_like(y), input_grad=input_grad)
        assert (result is None) == (not input_grad)
        grads.append([p.grad.copy() for p in model.parameters()])
    for with_input, without in zip(*grads, strict=True):
        np.testing.assert_array_equal(without, with_input)


def test_backward_input_grad_must_be_a_bool():
    model = nn.Sequential(nn.Linear(3, 2))
    model(np.ones((1, 3), np.float32))
    with pytest.raises(TypeError, match="input_grad"):
        model.backward(np.ones((1, 2), np.float32), input_grad=0)


def test_a_shape_error_inside_a_model_names_the_layer():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3), nn.Flatten()
    )
    x = np.ones((2, 3, 12, 12), np.float32)
    model(x)
    bad = np.ones((2, 8, 12, 12), np.float32)
    with pytest.raises(
        ValueError,
        match=r"^Sequential\[0\] Conv2d\(3, 8, kernel_size=3\): input has 8 channels, "
        r"the layer expects 3$",
    ):
        model(bad)
    nested = nn.Sequential(nn.Sequential(nn.Linear(4, 2)), nn.Tanh())
    with pytest.raises(ValueError, match=r"Sequential\[0\] Sequential: Sequential\[0\] Linear"):
        nested(np.ones((3, 5), np.float32))


def test_channels_last_input_gets_a_hint():
    conv = nn.Conv2d(3, 8, 3)
    with pytest.raises(ValueError, match=r"channels-last.*transpose\(0, 3, 1, 2\)"):
        conv(np.ones((2, 10, 10, 3), np.float32))
    with pytest.raises(ValueError, match=r"channels-last.*transpose\(2, 0, 1\)"):
        conv(np.ones((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\) or unbatched \(C, H, W\)"):
        conv(np.ones((10, 10), np.float32))
    norm = nn.BatchNorm2d(3)
    with pytest.raises(ValueError, match=r"channels-last.*transpose\(0, 3, 1, 2\)"):
        norm(np.ones((2, 10, 10, 3), np.float32))
    with pytest.raises(ValueError, match="4-d"):
        norm(np.ones((3, 10, 10), np.float32))


def test_conv2d_layer_takes_an_unbatched_input(rng):
    conv = nn.Conv2d(3, 4, 3, padding=1)
    x = rng.standard_normal((3, 6, 5)).astype(np.float32)
    y_batched = conv(x[None])
    grad_batched = conv.backward(np.ones_like(y_batched))
    y = conv(x)
    np.testing.assert_array_equal(y, y_batched[0])
    np.testing.assert_array_equal(conv.backward(np.ones_like(y)), grad_batched[0])


def test_layers_take_backend_and_algo(rng):
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    fastcnn.manual_seed(0)
    auto = nn.Conv2d(3, 4, 3)
    fastcnn.manual_seed(0)
    chosen = nn.Conv2d(3, 4, 3, algo=("winograd", "im2col", "direct"), backend="numba")
    assert "algo=('winograd', 'im2col', 'direct'), backend='numba'" in repr(chosen)
    if "numba" not in fastcnn.available_backends():
        pytest.skip("numba is not installed")
    np.testing.assert_allclose(chosen(x), auto(x), atol=1e-5)
    gy = np.ones((2, 4, 7, 7), np.float32)
    np.testing.assert_allclose(chosen.backward(gy), auto.backward(gy), atol=1e-5)
    # Sums of 98 float32 products in another order: an error relative to the largest.
    scale = np.abs(auto.weight.grad).max()
    np.testing.assert_allclose(chosen.weight.grad, auto.weight.grad, rtol=0, atol=1e-5 * scale)
    winograd = nn.Conv2d(3, 4, 3, algo="winograd", backend="numba")
    winograd(x)  # Winograd has no weight gradient: the backward names those that have
    with pytest.raises(ValueError, match="cannot take the weight gradient"):
        winograd.backward(gy)


def test_linear_on_an_unflattened_input_says_to_flatten():
    with pytest.raises(ValueError, match=r"6 features.*expects 96; flatten it first"):
        nn.Linear(96, 10)(np.ones((2, 4, 4, 6), np.float32))


def test_a_backward_error_names_the_layer():
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    model(np.ones((5, 4), np.float32))
    with pytest.raises(ValueError, match=r"^Sequential\[2\] Linear\(3, 2\): grad_y"):
        model.backward(np.ones((5, 7), np.float32))


@pytest.mark.parametrize(("value", "what"), [(3.0, "a scalar"), ([1.0, 2.0], "a list")])
def test_a_scalar_or_list_where_an_array_goes(value, what):
    with pytest.raises(TypeError, match=f"^x must be an array .*got {what}"):
        fastcnn.functional.relu(value)


def test_dropout_layer_trains_and_evaluates(rng):
    fastcnn.manual_seed(1)
    layer = nn.Dropout(0.25)
    x = rng.standard_normal((64, 50)).astype(np.float32)
    y = layer(x)
    kept = y != 0
    assert 0.6 < kept.mean() < 0.9  # about 75% kept
    np.testing.assert_allclose(y[kept], x[kept] / 0.75, rtol=1e-6)
    grad = layer.backward(np.ones_like(x))
    np.testing.assert_allclose(grad, kept / 0.75, rtol=1e-6)
    layer.eval()
    assert layer(x) is x and layer.backward(x) is x
    with pytest.raises(ValueError, match="p must lie in"):
        nn.Dropout(1.5)


def test_dropout_masks_follow_the_seed(rng):
    x = rng.standard_normal((8, 9)).astype(np.float32)
    fastcnn.manual_seed(3)
    first = nn.Dropout(0.5)(x)
    fastcnn.manual_seed(3)
    np.testing.assert_array_equal(nn.Dropout(0.5)(x), first)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm_layer_matches_pytorch(momentum, rng):
    torch = pytest.importorskip("torch")
    ours = nn.BatchNorm2d(3, momentum=momentum, dtype=np.float64)
    theirs = torch.nn.BatchNorm2d(3, momentum=momentum, dtype=torch.float64)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for _ in range(3):
        x = rng.standard_normal((4, 3, 5, 6)) * 2 + 1
        grad = rng.standard_normal(x.shape)
        tx = torch.tensor(x, requires_grad=True)
        expected = theirs(tx)
        expected.backward(torch.tensor(grad))
        np.testing.assert_allclose(ours(x), expected.detach().numpy(), atol=1e-12)
        np.testing.assert_allclose(ours.backward(grad), tx.grad.numpy(), atol=1e-12)
    for key, value in theirs.state_dict().items():
        np.testing.assert_allclose(ours.state_dict()[key], value.numpy(), atol=1e-12, err_msg=key)
    np.testing.assert_allclose(ours.weight.grad, theirs.weight.grad.numpy(), atol=1e-10)
    theirs.eval()
    ours.eval()
    x = rng.standard_normal((2, 3, 4, 4))
    tx = torch.tensor(x, requires_grad=True)
    expected = theirs(tx)
    expected.backward(torch.ones_like(expected))
    np.testing.assert_allclose(ours(x), expected.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(ours.backward(np.ones_like(x)), tx.grad.numpy(), atol=1e-12)


def test_batch_norm_state_loads_from_pytorch(rng):
    torch = pytest.importorskip("torch")
    theirs = torch.nn.BatchNorm2d(4)
    theirs(torch.randn(8, 4, 3, 3))
    ours = nn.BatchNorm2d(4)
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    np.testing.assert_allclose(ours.running_var, theirs.running_var.numpy(), rtol=1e-6)
    assert int(ours.num_batches_tracked) == 1
    with pytest.raises(ValueError, match="channels"):
        ours(np.ones((2, 3, 4, 4), np.float32))


def test_a_resnet_style_block_trains(rng):
    fastcnn.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.1), nn.Linear(8 * 4 * 4, 3),
    )  # fmt: skip
    criterion = nn.CrossEntropyLoss()
    optimizer = fastcnn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = rng.standard_normal((16, 3, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 3, 16)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        losses.append(float(criterion(model(x), labels)))
        model.backward(criterion.backward(), input_grad=False)
        optimizer.step()
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    assert model(x).shape == (16, 3)
