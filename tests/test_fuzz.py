"""Differential fuzzing: every backend and every algorithm that takes a drawn case,
against the float64 reference, over each op's whole parameter space.

The strategies draw cases of the spec table (shapes and parameters), so the checks are
the spec suite's own (``fastcnn.testing.harness``): poisoned outputs, inputs unchanged,
any memory layout, NaN and inf planted in the first input. Profiles, by
``FASTCNN_FUZZ``: ``quick`` (the default ``pytest`` run, a bounded number of examples)
and ``long`` (CI, in a subprocess so a crash is a reported failure; see
``tests/run_fuzz_long.py``). ``FASTCNN_FUZZ_BACKENDS=cpp,numba`` fuzzes only those backends
(CI's sanitizer build fuzzes cpp alone). A failure prints the drawn case and seed to add as an
``@example`` below.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fastcnn import _shapes  # noqa: E402
from fastcnn.backends import available_backends, has_op  # noqa: E402
from fastcnn.testing.compare import LAYOUTS  # noqa: E402
from fastcnn.testing.harness import algorithm_cases, check_backward, check_forward  # noqa: E402
from fastcnn.testing.specs import SPECS_BY_NAME, Case  # noqa: E402

BACKENDS = [name for name in available_backends() if name != "reference"]
if os.environ.get("FASTCNN_FUZZ_BACKENDS"):
    _chosen = os.environ["FASTCNN_FUZZ_BACKENDS"].split(",")
    BACKENDS = [name for name in BACKENDS if name in _chosen]
# inf - inf and 0 x inf in the reference and the kernels alike: NaN is the expected result
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
PROFILE = os.environ.get("FASTCNN_FUZZ", "quick")
#: Examples per test (convolution: CONV_EXAMPLES): quick keeps the default run within
#: about two minutes; long, CI's, about ten.
EXAMPLES = {"quick": 25, "long": 3000}[PROFILE]
CONV_EXAMPLES = {"quick": 80, "long": 12000}[PROFILE]
#: The most multiply-adds of one drawn convolution (keeps each example fast).
MAX_MACS = {"quick": 2_000_000, "long": 8_000_000}[PROFILE]

settings.register_profile(
    "fastcnn",
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
settings.load_profile("fastcnn")

# ---------------------------------------------------------------------------- strategies

_small = st.integers(1, 4)


@st.composite
def _pair(draw, low: int, high: int, square_bias: float = 0.7):
    a = draw(st.integers(low, high))
    if draw(st.floats(0, 1)) < square_bias:
        return a
    return (a, draw(st.integers(low, high)))


@st.composite
def conv_cases(draw) -> Case:
    kind = draw(st.sampled_from(["dense", "dense", "grouped", "depthwise", "wide"]))
    if kind == "depthwise":
        groups = draw(st.integers(1, 6))
        C, K = groups, groups * draw(st.integers(1, 3))
    elif kind == "grouped":
        groups = draw(st.integers(2, 3))
        C, K = groups * draw(st.integers(1, 4)), groups * draw(st.integers(1, 6))
    elif kind == "wide":  # the GEMM, Winograd and blocked paths: many channels, small images
        groups = 1
        C, K = draw(st.sampled_from([16, 64, 130])), draw(st.sampled_from([8, 24, 70]))
    else:
        groups = 1
        C, K = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    big = kind != "wide"
    H = draw(st.integers(1, 40 if big else 16))
    W = draw(st.integers(1, 40 if big else 16))
    N = draw(st.integers(0, 5) if big else st.integers(1, 2))
    R = draw(st.integers(1, 7) | st.just(3))
    S = draw(st.integers(1, 7) | st.just(3))
    stride = draw(_pair(1, 4) | st.just(1))
    dilation = draw(_pair(1, 3) | st.just(1) | st.just(1))
    padding = draw(_pair(0, 4) | st.sampled_from(["same", "valid"]) | st.just(0) | st.just(R // 2))
    if draw(st.booleans()) and padding not in ("same", "valid"):
        # now and then a kernel as large as the padded input
        pad_h, pad_w = padding if isinstance(padding, tuple) else (padding, padding)
        d_h, d_w = dilation if isinstance(dilation, tuple) else (dilation, dilation)
        R = max(1, min(12, (H + 2 * pad_h - 1) // d_h + 1))
        S = max(1, min(12, (W + 2 * pad_w - 1) // d_w + 1))
    shapes = {"x": (N, C, H, W), "weight": (K, C // groups, R, S)}
    if draw(st.booleans()):
        shapes["bias"] = (K,)
    params = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
    try:
        g = _shapes.conv2d_geometry(shapes["x"], shapes["weight"], None, **params)
    except (ValueError, TypeError):
        assume(False)
    assume(g.flops // 2 <= MAX_MACS)
    if N == 1 and draw(st.integers(0, 4)) == 0:
        shapes["x"] = shapes["x"][1:]  # PyTorch's unbatched (C, H, W)
    return Case(f"fuzz {shapes} {params}", shapes, params)


@st.composite
def pool_cases(draw, max_pool: bool) -> Case:
    N, C = draw(st.integers(0, 3)), draw(st.integers(1, 4))
    H, W = draw(st.integers(1, 30)), draw(st.integers(1, 30))
    kernel = draw(_pair(1, 5))
    k_h, k_w = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    params: dict = {"kernel_size": kernel}
    if draw(st.booleans()):
        params["stride"] = draw(_pair(1, 4))
    params["padding"] = (draw(st.integers(0, k_h // 2)), draw(st.integers(0, k_w // 2)))
    params["ceil_mode"] = draw(st.booleans())
    if max_pool:
        params["dilation"] = draw(_pair(1, 3) | st.just(1))
        if draw(st.booleans()):
            params["return_indices"] = params["use_indices"] = True
    else:
        params["count_include_pad"] = draw(st.booleans())
        if draw(st.integers(0, 3)) == 0:
            params["divisor_override"] = draw(st.sampled_from([-3, 1, 2, 7]))
    try:
        _shapes.pool2d_geometry(
            (N, C, H, W), kernel, params.get("stride"), params["padding"],
            params.get("dilation", 1), params["ceil_mode"],
        )  # fmt: skip
    except (ValueError, TypeError):
        assume(False)
    shape = (C, H, W) if N == 1 and draw(st.integers(0, 4)) == 0 else (N, C, H, W)
    return Case(f"fuzz {shape} {params}", {"x": shape}, params)


#: Sizes on both sides of the elementwise kernels' chunk (65536) and tail (16 lanes).
_ELEMENTWISE_SIZES = st.integers(0, 300) | st.sampled_from([65535, 65536, 65537, 131089])


@st.composite
def elementwise_cases(draw, name: str) -> Case:
    size = draw(_ELEMENTWISE_SIZES)
    params = (
        {"negative_slope": draw(st.sampled_from([0.01, 0.2, -0.5]))} if name == "leaky_relu" else {}
    )
    scale = draw(st.sampled_from([1.0, 1.0, 30.0, 1e4]))
    return Case(f"fuzz ({size},) x{scale}", {"x": (size,)}, params, scale=scale)


@st.composite
def dropout_cases(draw) -> Case:
    shape = (draw(_ELEMENTWISE_SIZES),)
    params = {"p": draw(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]))}
    return Case(f"fuzz {shape} {params}", {"x": shape, "mask": shape}, params)


@st.composite
def batch_norm_cases(draw) -> Case:
    N, C = draw(st.integers(0, 5)), draw(st.integers(1, 6))
    spatial = tuple(draw(st.lists(st.integers(1, 9), max_size=2)))
    training = draw(st.booleans())
    assume(not training or N == 0 or N * math.prod(spatial) > 1)
    shapes = {"x": (N, C, *spatial)}
    if draw(st.booleans()):
        shapes.update(weight=(C,), bias=(C,))
    if not training or draw(st.booleans()):
        shapes.update(running_mean=(C,), running_var=(C,))
    params = {"training": training, "eps": draw(st.sampled_from([1e-5, 1e-3, 0.5]))}
    scale = draw(st.sampled_from([1.0, 1.0, 1e3]))
    return Case(f"fuzz {shapes} {params}", shapes, params, scale)


@st.composite
def softmax_cases(draw) -> Case:
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.integers(0, 9)) for _ in range(ndim))
    if draw(st.integers(0, 5)) == 0:  # rows longer than the kernel's parallel block
        shape = (draw(st.integers(1, 3)), 33000)
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    scale = draw(st.sampled_from([1.0, 10.0, 1e8]))
    return Case(f"fuzz {shape} axis {axis}", {"x": shape}, {"axis": axis}, scale=scale)


@st.composite
def cross_entropy_cases(draw, soft: bool = False) -> Case:
    """Class-index (or, ``soft``, probability) targets over (N, C, d1, ...) or (C,)
    logits, with every option PyTorch has."""
    N, C = draw(st.integers(0, 6)), draw(st.integers(1, 12))
    extra = tuple(draw(st.lists(st.integers(1, 4), max_size=2)))
    logits = (C,) if draw(st.integers(0, 5)) == 0 else (N, C, *extra)
    target = logits if soft else logits[:1] + logits[2:] if len(logits) > 1 else ()
    shapes = {"logits": logits, "target": target}
    if draw(st.booleans()):
        shapes["weight"] = (C,)
    params = {"reduction": draw(st.sampled_from(["mean", "sum", "none"]))}
    if draw(st.booleans()):
        params["label_smoothing"] = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    if not soft and draw(st.booleans()):
        params["ignore_index"] = draw(st.integers(-1, C))  # in range or not
    scale = draw(st.sampled_from([1.0, 1e8]))
    return Case(f"fuzz {shapes} {params}", shapes, params, scale=scale)


@st.composite
def linear_cases(draw) -> Case:
    M, n_in, n_out = draw(st.integers(0, 40)), draw(st.integers(1, 70)), draw(st.integers(1, 40))
    shapes = {"x": (M, n_in), "weight": (n_out, n_in)}
    if draw(st.booleans()):
        shapes["bias"] = (n_out,)
    return Case(f"fuzz {shapes}", shapes)


_run = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["float32", "float64"]),
        "layout": st.sampled_from(LAYOUTS),
        "seed": st.integers(0, 2**32 - 1),
        "specials": st.sampled_from([0, 0, 0, 1, 3]),
        "into_out": st.booleans(),
    }
)


def _check(spec_name: str, case: Case, run: dict) -> None:
    spec = SPECS_BY_NAME[spec_name]
    for backend in BACKENDS:
        for direction, check in (("forward", check_forward), ("backward", check_backward)):
            op = spec.ops[0] if direction == "forward" else spec.ops[1]
            if op is None or not has_op(op, backend):
                continue
            extra = {"into_out": run["into_out"]} if direction == "forward" else {}
            for variant in algorithm_cases(spec, case, backend, direction):
                rng = np.random.default_rng(run["seed"])
                arguments = (run["dtype"], run["layout"], rng, run["specials"])
                check(spec, variant, backend, *arguments, **extra)


# ---------------------------------------------------------------------------- the tests
# Each @example is a regression: a case the fuzzer (or a user) found wrong once.


def _conv(x, weight, bias=False, **params) -> Case:
    shapes = {"x": x, "weight": weight} | ({"bias": (weight[0],)} if bias else {})
    return Case(f"regression {shapes} {params}", shapes, params)


_RUN = {"dtype": "float32", "layout": "contiguous", "seed": 1, "specials": 0, "into_out": False}
_INF = {**_RUN, "specials": 3}


@example(_conv((2, 8, 32, 32), (8, 8, 7, 7), padding=3), _RUN)  # chunk from a garbage column
@example(_conv((1, 2, 26, 26), (2, 2, 15, 15)), _RUN)
@example(_conv((1, 1, 40, 19), (1, 1, 1, 3)), _RUN)
@example(_conv((2, 4, 8, 8), (4, 4, 3, 3), padding=(0, 3)), _RUN)  # negative transposed pad
@example(_conv((1, 1, 6, 7), (1, 1, 1, 1), padding=1), _RUN)
@example(_conv((1, 8, 16, 16), (8, 4, 2, 1), padding="same", groups=2), _RUN)  # bottom pad
@example(_conv((2, 3, 9, 9), (4, 3, 3, 3), padding=2, dilation=2), _INF)  # 0 x inf
@example(_conv((2, 4, 9, 9), (4, 1, 3, 3), padding=1, groups=4), _INF)
@example(_conv((2, 4, 9, 9), (8, 2, 3, 3), padding=1, groups=2), _INF)
@settings(max_examples=CONV_EXAMPLES)
@given(conv_cases(), _run)
def test_conv2d(case, run):
    _check("conv2d", case, run)


_WHOLLY_IN_PADDING = {"kernel_size": 2, "dilation": 2, "padding": 1}


@example(
    Case("wholly in padding", {"x": (1, 1, 1, 3)},
         {**_WHOLLY_IN_PADDING, "return_indices": True, "use_indices": True}),
    _RUN,
)  # fmt: skip
@example(
    Case("wholly in padding, ceil", {"x": (1, 2, 5, 5)},
         {"kernel_size": 3, "stride": 3, "dilation": 3, "padding": 1, "ceil_mode": True}),
    _RUN,
)  # fmt: skip
@given(pool_cases(max_pool=True), _run)
def test_max_pool2d(case, run):
    _check("max_pool2d", case, run)


@given(pool_cases(max_pool=False), _run)
def test_avg_pool2d(case, run):
    _check("avg_pool2d", case, run)


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "sigmoid", "tanh"])
def test_activations(name):
    @given(elementwise_cases(name), _run)
    def check(case, run):
        _check(name, case, run)

    check()


@given(batch_norm_cases(), _run)
def test_batch_norm(case, run):
    _check("batch_norm", case, run)


@given(dropout_cases(), _run)
def test_dropout(case, run):
    _check("dropout", case, run)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_family(name):
    @example(Case("empty axis", {"x": (3, 0)}, {"axis": -1}), _RUN)
    @example(Case("empty axis, middle", {"x": (2, 0, 3)}, {"axis": 1}), _RUN)
    @given(softmax_cases(), _run)
    def check(case, run):
        _check(name, case, run)

    check()


@given(cross_entropy_cases(), _run)
def test_cross_entropy(case, run):
    _check("cross_entropy", case, run)


@given(cross_entropy_cases(soft=True), _run)
def test_soft_cross_entropy(case, run):
    _check("soft_cross_entropy", case, run)


@given(linear_cases(), _run)
def test_linear(case, run):
    _check("linear", case, run)
