"""2-D convolution on the CUDA backends: launch code for kernels/cuda/conv2d.cu and its
algorithm table (what ``algo=`` names on ``cuda`` and ``cuda-emu``).

Algorithms, per direction (forward, input gradient, weight gradient):

- ``direct``: one thread per output element summing its taps in a fixed order. Takes
  every case; the baseline the tiled kernels are measured against.
- ``implicit_gemm``: each direction as a GEMM whose operands are gathered from the
  tensors on the fly into shared-memory tiles (double-buffered; a register block of
  outputs per thread): forward over M = N*P*Q positions x K filters, depth C/groups*R*S;
  input gradient over N*H*W positions x C channels, decomposed by the stride: per phase
  (the inputs alike modulo the stride) a dense GEMM over the taps that reach them, depth
  K/groups times those taps (a unit stride is one phase); weight gradient over K x C/groups*R*S,
  depth N*P*Q, split over blocks into a workspace and summed in split order (no atomics:
  deterministic). Takes every case. A 1x1 stride-1 unpadded forward reads x as the GEMM's
  operand itself (no gather). An operand contiguous along the direction a thread loads (the
  weights along the depth in the forward, x along H*W in the 1x1 forward, grad_y along P*Q
  in the weight gradient) loads in 16-byte packs where its row length is a multiple of the
  lanes and its data is 16-byte aligned, else in scalars (the same sums in the same order).
- ``depthwise`` (one input channel per group): a thread per output (forward) or input
  (gradient) over the R x S taps, threads along q; the weight gradient one block per
  (filter, tap) reducing over N*P*Q. Takes every case with C/groups == 1.
"""

from __future__ import annotations

import itertools

import numpy as np

from fastcnn import _census
from fastcnn._shapes import ConvGeometry
from fastcnn.autotune import choose as autotuned
from fastcnn.backends import register
from fastcnn.backends.cuda._runtime import C_TYPES, Runtime, Source, aligned

THREADS = 256
DIRECTIONS = ("forward", "input_gradient", "weight_gradient")

#: Implicit-GEMM tiles (BM, BN, BK, TM, TN) by C type on a GPU: 256 threads, 8 x 8 outputs a
#: thread in float (127 registers, no spill), 4 x 4 in double. The emulator runs a 32 x 32
#: tile of 64 threads, so small test inputs cross many tiles and their edges.
GEMM_TILES = {"float": (128, 128, 16, 8, 8), "double": (64, 64, 8, 4, 4)}
EMULATED_GEMM_TILE = (32, 32, 8, 4, 4)


GEMM_KERNELS = {
    "forward": "conv2d_forward_implicit_gemm",
    "pointwise": "conv2d_forward_pointwise_gemm",
    "input_gradient": "conv2d_input_gradient_implicit_gemm",
    "weight_gradient": "conv2d_weight_gradient_implicit_gemm",
}


#: Each GEMM kernel's bool template arguments, in order: the forward's bias, and the
#: operands it loads in 16-byte packs (where the launch code finds them contiguous along the
#: direction a thread loads and 16-byte aligned; see gemm_tile).
GEMM_FLAGS = {
    "forward": ("bias", "weight_packs"),
    "pointwise": ("bias", "x_packs", "weight_packs"),
    "input_gradient": (),
    "weight_gradient": ("gradient_packs",),
}


def _gemm_expression(T: str, tile: tuple, direction: str, **flags: bool) -> str:
    """The name expression of ``direction``'s GEMM kernel; ``flags`` its bool arguments by
    name (GEMM_FLAGS; false where not given)."""
    BM, BN, BK, TM, TN = tile
    tail = "".join(f", {'true' if flags.get(name) else 'false'}" for name in GEMM_FLAGS[direction])
    return f"fastcnn::{GEMM_KERNELS[direction]}<{T}, {BM}, {BN}, {BK}, {TM}, {TN}{tail}>"


def _expressions(T: str) -> list[str]:
    gemm = [
        _gemm_expression(T, tile, direction, **dict(zip(names, values, strict=True)))
        for tile in (GEMM_TILES[T], EMULATED_GEMM_TILE)
        for direction, names in GEMM_FLAGS.items()
        for values in itertools.product((True, False), repeat=len(names))
    ]
    return [
        *gemm,
        f"fastcnn::sum_splits<{T}>",
        f"fastcnn::conv2d_forward_direct<{T}, true>",
        f"fastcnn::conv2d_forward_direct<{T}, false>",
        f"fastcnn::conv2d_input_gradient_direct<{T}>",
        f"fastcnn::conv2d_weight_gradient_direct<{T}>",
        f"fastcnn::conv2d_bias_gradient<{T}>",
        f"fastcnn::conv2d_forward_depthwise<{T}, true>",
        f"fastcnn::conv2d_forward_depthwise<{T}, false>",
        f"fastcnn::conv2d_input_gradient_depthwise<{T}>",
        f"fastcnn::conv2d_weight_gradient_depthwise<{T}>",
    ]


SOURCE = Source("conv2d.cu", _expressions)

#: The kernels python -m fastcnn.cudacheck holds to no spill and no local memory.
HOT = tuple(f"fastcnn::{name}" for name in GEMM_KERNELS.values())


def launch_shape(expression: str) -> tuple[int, int] | None:
    """(threads, dynamic shared bytes) of a GEMM kernel's launch, for the static profile."""
    if not any(name in expression for name in GEMM_KERNELS.values()):
        return None
    arguments = expression.split("<", 1)[1].rstrip(">").split(",")
    BM, BN, BK, TM, TN = (int(v) for v in arguments[1:6])
    itemsize = 4 if arguments[0].strip() == "float" else 8
    return (BM // TM) * (BN // TN), 2 * BK * (BM + BN) * itemsize


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _shape(g: ConvGeometry) -> tuple:
    """The kernels' CONV_SHAPE arguments."""
    return tuple(
        np.int32(v)
        for v in (g.N, g.C, g.H, g.W, g.K, g.R, g.S, g.P, g.Q, g.stride_h, g.stride_w,
                  g.pad_h, g.pad_w, g.dilation_h, g.dilation_w, g.groups)
    )  # fmt: skip


class AlgorithmTable:
    """What the registry and the functional API ask of this backend's conv2d algorithms.

    ``runners`` run one algorithm in one direction (``fastcnn.autotune``'s interface);
    autotuning keys its choices by the runtime's device (the GPU's name, or the CPU).
    """

    names = ("direct", "implicit_gemm", "depthwise")
    directions = DIRECTIONS

    def __init__(self, backend: str, runtime: Runtime, runners: dict) -> None:
        self.backend, self.runtime, self.runners = backend, runtime, runners

    @staticmethod
    def takes(name: str, g: ConvGeometry, direction: str) -> bool:
        if name == "depthwise":
            return g.C == g.groups
        return name in ("direct", "implicit_gemm")

    @staticmethod
    def heuristic(g: ConvGeometry, direction: str) -> tuple[str, str]:
        if g.C == g.groups and g.groups > 1:
            return "depthwise", "one input channel per group: a GEMM of depth R*S would idle"
        return "implicit_gemm", "tiled GEMM with the operands gathered on the fly"

    def choose(self, g: ConvGeometry, direction: str, dtype) -> str:
        default = self.heuristic(g, direction)[0]
        names = [name for name in self.names if self.takes(name, g, direction)]
        return autotuned(
            g, dtype, direction, default, names, self.runners, backend=self.backend,
            device=self.runtime.device_name(), to_device=self.runtime.xp.asarray,
            synchronize=self.runtime.synchronize,
        )  # fmt: skip


def register_kernels(backend: str, runtime: Runtime) -> None:
    _census.declare(
        backend, "conv2d.direct", "conv2d.implicit_gemm", "conv2d.depthwise",
        "conv2d.implicit_gemm.pointwise", "conv2d.implicit_gemm.input_phases",
        "conv2d.implicit_gemm.weight_whole",
        "conv2d.implicit_gemm.weight_split", "conv2d.implicit_gemm.vector_loads",
        "conv2d.implicit_gemm.scalar_loads",
    )  # fmt: skip

    def run(dtype, expression: str, items: int, args: tuple, grid=None, shared=0) -> None:
        threads = runtime.threads(THREADS)
        grid = runtime.grid(items, threads) if grid is None else grid
        runtime.launch(SOURCE, dtype, expression, grid, threads, args, shared)

    def tile_of(dtype) -> tuple:
        return EMULATED_GEMM_TILE if runtime.name == "cuda-emu" else GEMM_TILES[C_TYPES[dtype]]

    def packs(operand, row_length: int) -> bool:
        """Whether a GEMM operand loads in 16-byte packs: its rows (of row_length elements,
        back to back from the array's start) are contiguous along the direction a thread
        loads, so each pack is 16-byte aligned when the row length is a multiple of the
        lanes and the array's data is 16-byte aligned (not an offset view)."""
        lanes = 16 // operand.dtype.itemsize
        vector = row_length % lanes == 0 and aligned(runtime.pointer(operand))
        _census.record(backend, f"conv2d.implicit_gemm.{'vector' if vector else 'scalar'}_loads")
        return vector

    def gemm(direction, dtype, rows: int, columns: int, layers: int, args: tuple,
             **flags: bool) -> None:  # fmt: skip
        """Launch one direction's implicit GEMM over rows x columns per group (layers:
        groups, times the splits for the weight gradient); flags its GEMM_FLAGS."""
        tile = tile_of(dtype)
        BM, BN, BK, TM, TN = tile
        grid = (_ceil_div(rows, BM), _ceil_div(columns, BN), layers)
        shared = 2 * BK * (BM + BN) * dtype.itemsize
        runtime.launch(SOURCE, dtype, _gemm_expression("{T}", tile, direction, **flags), grid,
                       (BM // TM) * (BN // TN), args, shared)  # fmt: skip

    tables: dict = {}

    def device_table(key: tuple, make) -> object:
        """A device int32 (n, 4) table, made once per key (a network has a few dozen
        distinct layers; the cache is emptied past 64)."""
        found = tables.get(key)
        if found is None:
            if len(tables) > 64:
                tables.clear()
            found = tables[key] = runtime.xp.asarray(make().reshape(-1, 4).astype(np.int32))
        return found

    def forward_taps(g: ConvGeometry):
        """Per depth index (c, r, s): c*H*W + r*dh*W + s*dw, r*dh, s*dw."""

        def make():
            c, r, s = np.meshgrid(np.arange(g.C // g.groups), np.arange(g.R), np.arange(g.S),
                                  indexing="ij")  # fmt: skip
            dh, dw = r * g.dilation_h, s * g.dilation_w
            return np.stack([c * g.H * g.W + dh * g.W + dw, dh, dw, 0 * c], axis=-1)

        key = ("forward", g.C // g.groups, g.H, g.W, g.R, g.S, g.dilation_h, g.dilation_w)
        return device_table(key, make)

    def input_gradient_phases(g: ConvGeometry) -> tuple:
        """The stride phases of the input gradient that hold inputs, and their table: per
        phase (h_first, w_first, extent h, extent w) and (first tap, taps), then the taps,
        per (k, r, s) of the phase: k*P*Q - tap_h*Q - tap_w, tap_h, tap_w, and the weight's
        index k*C/groups*R*S + r*S + s, with tap_h = (r*dh - h_first - pad_h) / stride_h."""
        phases = [(h, w) for h in range(min(g.stride_h, g.H)) for w in range(min(g.stride_w, g.W))]

        def reaching(first, pad, dilation, stride, extent):
            """The taps along one axis that reach the phase's inputs, and their offsets."""
            taps = [t for t in range(extent) if (first + pad - t * dilation) % stride == 0]
            return np.array(taps, int), np.array(
                [(t * dilation - first - pad) // stride for t in taps], int
            )

        def make():
            rows, taps, first = [], [], 2 * len(phases)
            k = np.arange(g.K // g.groups)
            for h, w in phases:
                r, tap_h = reaching(h, g.pad_h, g.dilation_h, g.stride_h, g.R)
                s, tap_w = reaching(w, g.pad_w, g.dilation_w, g.stride_w, g.S)
                grid = np.meshgrid(k, np.arange(len(r)), np.arange(len(s)), indexing="ij")
                kk, ri, si = (a.ravel() for a in grid)
                offset = kk * g.P * g.Q - tap_h[ri] * g.Q - tap_w[si]
                weight = (kk * (g.C // g.groups) * g.R + r[ri]) * g.S + s[si]
                taps.append(np.stack([offset, tap_h[ri], tap_w[si], weight], axis=-1))
                extent = (-(-(g.H - h) // g.stride_h), -(-(g.W - w) // g.stride_w))
                rows += [(h, w, *extent), (first, len(kk), 0, 0)]
                first += len(kk)
            return np.concatenate([np.array(rows).reshape(-1, 4), *taps])

        key = ("input", g.K // g.groups, g.C // g.groups, g.H, g.W, g.P, g.Q, g.R, g.S,
               g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.dilation_h, g.dilation_w)  # fmt: skip
        return phases, device_table(key, make)

    def positions(g: ConvGeometry, itemsize: int):
        """Per depth index (n, p, q) of the weight gradient, a Position of conv2d.cu: the
        byte offsets (64-bit) of x[n, 0, p*sh, q*sw] and grad_y[n, 0, p, q], p*sh, q*sw."""

        def make():
            n, p, q = (a.ravel().astype(np.int64) for a in np.meshgrid(
                np.arange(g.N), np.arange(g.P), np.arange(g.Q), indexing="ij"))  # fmt: skip
            table = np.zeros((n.size, 4), np.int64)
            table[:, 0] = (n * g.C * g.H * g.W + p * g.stride_h * g.W + q * g.stride_w) * itemsize
            table[:, 1] = p * g.stride_h + (q * g.stride_w << 32)  # two int32, little-endian
            table[:, 2] = ((n * g.K * g.P + p) * g.Q + q) * itemsize
            return table.view(np.int32)

        key = ("positions", itemsize, g.N, g.C, g.H, g.W, g.K, g.P, g.Q, g.stride_h, g.stride_w)
        return device_table(key, make)

    def weight_gradient_gemm(grad_y, x, grad_weight, g: ConvGeometry) -> None:
        """Split the depth N*P*Q over enough blocks to fill the device, each split into its
        own workspace row; then sum the rows in order."""
        BM, BN, BK, _, _ = tile_of(x.dtype)
        rows, columns = g.K // g.groups, g.C // g.groups * g.R * g.S
        depth = g.N * g.P * g.Q
        tiles = _ceil_div(rows, BM) * _ceil_div(columns, BN) * g.groups
        splits = max(1, min(_ceil_div(runtime.target_blocks, tiles), depth // (4 * BK)))
        chunk = _ceil_div(_ceil_div(depth, splits), BK) * BK  # a multiple of BK
        splits = _ceil_div(depth, chunk)
        path = "split" if splits > 1 else "whole"
        _census.record(backend, f"conv2d.implicit_gemm.weight_{path}")
        workspace = runtime.xp.empty((splits, grad_weight.size), x.dtype)
        table = positions(g, x.dtype.itemsize)
        gemm("weight_gradient", x.dtype, rows, columns, g.groups * splits,
             (grad_y, x, workspace, table, np.int64(chunk), *_shape(g)),
             gradient_packs=packs(grad_y, g.P * g.Q))  # fmt: skip
        run(x.dtype, "fastcnn::sum_splits<{T}>", grad_weight.size,
            (workspace, grad_weight, np.int64(grad_weight.size), np.int32(splits)))  # fmt: skip

    def forward(name, x, weight, y, g: ConvGeometry, bias=None) -> None:
        _census.record(backend, f"conv2d.{name}")
        with_bias = "true" if bias is not None else "false"
        args = (x, weight, weight if bias is None else bias, y, *_shape(g))
        if name == "implicit_gemm":
            pointwise = (g.R, g.S, g.stride_h, g.stride_w, g.pad_h, g.pad_w) == (1, 1, 1, 1, 0, 0)
            flags = {"bias": bias is not None,
                     "weight_packs": packs(weight, g.C // g.groups * g.R * g.S)}  # fmt: skip
            if pointwise:
                _census.record(backend, "conv2d.implicit_gemm.pointwise")
                flags["x_packs"] = packs(x, g.H * g.W)
            else:
                args = (*args[:4], forward_taps(g), *args[4:])
            gemm("pointwise" if pointwise else "forward", x.dtype, g.N * g.P * g.Q,
                 g.K // g.groups, g.groups, args, **flags)  # fmt: skip
        else:
            run(x.dtype, f"fastcnn::conv2d_forward_{name}<{{T}}, {with_bias}>", y.size, args)

    def input_gradient(name, grad_y, weight, grad_x, g: ConvGeometry) -> None:
        _census.record(backend, f"conv2d.{name}")
        args = (grad_y, weight, grad_x, *_shape(g))
        if name == "implicit_gemm":
            phases, table = input_gradient_phases(g)
            if len(phases) > 1:
                _census.record(backend, "conv2d.implicit_gemm.input_phases")
            rows = g.N * _ceil_div(g.H, g.stride_h) * _ceil_div(g.W, g.stride_w)  # phase (0, 0)
            gemm("input_gradient", grad_x.dtype, rows, g.C // g.groups, g.groups * len(phases),
                 (*args[:3], table, *args[3:]))  # fmt: skip
        else:
            run(grad_x.dtype, f"fastcnn::conv2d_input_gradient_{name}<{{T}}>", grad_x.size, args)

    def weight_gradient(name, grad_y, x, grad_weight, g: ConvGeometry) -> None:
        _census.record(backend, f"conv2d.{name}")
        args = (grad_y, x, grad_weight, *_shape(g))
        if name == "implicit_gemm":
            weight_gradient_gemm(grad_y, x, grad_weight, g)
        elif name == "depthwise":  # a block per (filter, tap), one double a warp to reduce
            threads = runtime.threads(THREADS)
            run(x.dtype, "fastcnn::conv2d_weight_gradient_depthwise<{T}>", 0, args,
                grid=(g.K, g.R * g.S), shared=threads // 32 * 8)  # fmt: skip
        else:
            run(x.dtype, "fastcnn::conv2d_weight_gradient_direct<{T}>", grad_weight.size, args)

    table = AlgorithmTable(backend, runtime, {
        "forward": forward, "input_gradient": input_gradient, "weight_gradient": weight_gradient,
    })  # fmt: skip

    @register("conv2d", backend, algorithms=table)
    def conv2d(x, weight, bias, y, g: ConvGeometry, *, algo: str) -> None:
        forward(algo, x, weight, y, g, bias)

    @register("conv2d_backward", backend, algorithms=table)
    def conv2d_backward(
        grad_y, x, weight, grad_x, grad_weight, grad_bias, g: ConvGeometry, *, algo: tuple
    ) -> None:
        input_algo, weight_algo = algo
        if grad_x is not None:
            input_gradient(input_algo, grad_y, weight, grad_x, g)
        weight_gradient(weight_algo, grad_y, x, grad_weight, g)
        if grad_bias is not None:
            run(
                grad_bias.dtype,
                "fastcnn::conv2d_bias_gradient<{T}>",
                g.K,
                (grad_y, grad_bias, np.int32(g.N), np.int32(g.K), np.int64(g.P * g.Q)),
            )
