"""The CUDA emulator (backend cuda-emu): small .cu sources written for these tests, run on the
CPU through kernels/cuda/emulate, and checked to compile with nvcc too where it exists."""

from __future__ import annotations

import concurrent.futures
import functools
import importlib.util
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

KERNELS = Path(__file__).resolve().parents[1] / "kernels" / "cuda"


def _load_emulator():
    """The emulator needs neither CuPy nor a GPU, but fastcnn/backends/cuda/__init__.py may
    refuse to import without them; then load the module from its file."""
    try:
        from fastcnn.backends.cuda import _emulator
    except ImportError:
        path = Path(__file__).resolve().parents[1] / "fastcnn/backends/cuda/_emulator.py"
        spec = importlib.util.spec_from_file_location("fastcnn_cuda_emulator", path)
        _emulator = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = _emulator
        spec.loader.exec_module(_emulator)
    return _emulator


emulator = _load_emulator()
pytestmark = pytest.mark.skipif(not emulator.is_available(), reason="cuda-emu needs g++")

BARRIERS = r"""
#include "emulate/portable.cuh"

// Each block's sum: a tree over dynamic shared memory that works for any block size.
template <typename T>
__global__ void block_sum(const T* __restrict__ x, T* __restrict__ sums, long long n) {
  FASTCNN_DYNAMIC_SHARED(T, partial);
  const unsigned t = threadIdx.x;
  const long long i = (long long)blockIdx.x * blockDim.x + t;
  partial[t] = i < n ? x[i] : T(0);
  __syncthreads();
  for (unsigned stride = 1; stride < blockDim.x; stride *= 2) {
    if (t % (2 * stride) == 0 && t + stride < blockDim.x) partial[t] += partial[t + stride];
    __syncthreads();
  }
  if (t == 0) sums[blockIdx.x] = partial[0];
}

// out[t] = t + 1 (mod the block size), read back from shared memory; with_barrier = 0 leaves
// out the __syncthreads that the read needs.
extern "C" __global__ void rotate(float* out, int with_barrier) {
  FASTCNN_DYNAMIC_SHARED(float, values);
  const unsigned t = threadIdx.x;
  values[t] = float(t);
  if (with_barrier) __syncthreads();
  out[t] = values[(t + 1) % blockDim.x];
}

// What shared memory holds before a block writes it; then writes it.
extern "C" __global__ void read_then_write_shared(unsigned* out) {
  FASTCNN_DYNAMIC_SHARED(unsigned, words);
  out[blockIdx.x * blockDim.x + threadIdx.x] = words[threadIdx.x];
  __syncthreads();
  words[threadIdx.x] = 7u;
}

// Reverses each block's elements through a static __shared__ array.
extern "C" __global__ void reverse_blocks(const float* x, float* y) {
  __shared__ float tile[128];
  const unsigned t = threadIdx.x;
  const unsigned base = blockIdx.x * blockDim.x;
  tile[t] = x[base + t];
  __syncthreads();
  y[base + t] = tile[blockDim.x - 1 - t];
}

// A bug: threads beyond n leave before a barrier the others wait at.
extern "C" __global__ void exit_before_barrier(float* out, int n) {
  const int t = threadIdx.x;
  if (t >= n) return;
  __syncthreads();
  out[t] = 1.0f;
}

// Barriers and nothing else: measures the fiber switches.
extern "C" __global__ void barriers_only(int* out, int rounds) {
  for (int r = 0; r < rounds; ++r) __syncthreads();
  out[threadIdx.x] = int(threadIdx.x);
}
"""

WARPS = r"""
#include "emulate/portable.cuh"

extern "C" __global__ void warp_collectives(const float* x, float* butterfly, float* down,
                                            unsigned* ballot, float* up, float* broadcast,
                                            int* votes) {
  const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  const float v = x[i];
  float sum = v;
  for (int lane_mask = 16; lane_mask >= 1; lane_mask /= 2)
    sum += __shfl_xor_sync(0xffffffffu, sum, lane_mask);
  butterfly[i] = sum;
  float partial = v;
#pragma unroll
  for (int offset = 16; offset >= 1; offset /= 2)
    partial += __shfl_down_sync(0xffffffffu, partial, offset);
  down[i] = partial;
  ballot[i] = __ballot_sync(0xffffffffu, v > 0.0f);
  up[i] = __shfl_up_sync(0xffffffffu, v, 1);
  broadcast[i] = __shfl_sync(0xffffffffu, v, 3, 8);
  votes[2 * i] = __any_sync(0xffffffffu, v > 1000.0f);
  votes[2 * i + 1] = __all_sync(0xffffffffu, v > -1000.0f);
}

// A bug: half of each warp leaves before a shuffle that names the whole warp.
extern "C" __global__ void shuffle_after_exit(float* out) {
  if (threadIdx.x % 32 >= 16) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}
"""

GRIDS = r"""
#include "emulate/portable.cuh"

extern "C" __global__ void count_with_atomics(float* float_total, double* double_total,
                                              int* int_total, unsigned long long* wide_total,
                                              int* maximum) {
  atomicAdd(float_total, 1.0f);
  atomicAdd(double_total, 0.5);
  atomicAdd(int_total, 1);
  atomicAdd(wide_total, 1ull);
  atomicMax(maximum, int(blockIdx.x * blockDim.x + threadIdx.x));
}

extern "C" __global__ void mark_blocks(int* marks) {
  const unsigned block = blockIdx.x + blockIdx.y * gridDim.x;
  if (threadIdx.x == 0) marks[block] = int(block) + 1;
}

// Over a grid of more than 2^31 threads: writes the global index of those from `first` on.
extern "C" __global__ void write_tail_indices(long long* out, long long first) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= first) out[i - first] = i;
}
"""

SOURCES = {
    "barriers": (
        BARRIERS,
        (
            "block_sum<float>",
            "block_sum<double>",
            "rotate",
            "read_then_write_shared",
            "reverse_blocks",
            "exit_before_barrier",
            "barriers_only",
        ),
    ),
    "warps": (WARPS, ("warp_collectives", "shuffle_after_exit")),
    "grids": (GRIDS, ("count_with_atomics", "mark_blocks", "write_tail_indices")),
}


@functools.cache
def module(name: str):
    code, name_expressions = SOURCES[name]
    return emulator.EmulatedModule(code, name_expressions, ["--std=c++17"], [KERNELS])


def block_sums(x: np.ndarray, threads: int) -> np.ndarray:
    blocks = -(-x.size // threads)
    sums = np.zeros(blocks, dtype=x.dtype)
    module("barriers").launch(
        f"block_sum<{'float' if x.dtype == np.float32 else 'double'}>",
        (blocks, 1, 1),
        (threads, 1, 1),
        (x, sums, np.int64(x.size)),
        shared_mem=threads * x.itemsize,
    )
    return sums


@pytest.mark.parametrize("order", ["forward", "reverse", "shuffle"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("size", "threads"), [(1, 1), (1000, 37), (4099, 64), (70000, 256)])
def test_block_sum_with_barriers_is_right_in_every_order(order, dtype, size, threads):
    seed = 1234 + size
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(size).astype(dtype)
    with emulation_settings(order=order, seed=seed):
        sums = block_sums(x, threads)
    padded = np.zeros(sums.size * threads, dtype=np.float64)
    padded[:size] = x
    expected = padded.reshape(-1, threads).sum(axis=1)
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(
        sums, expected, rtol=tolerance, atol=tolerance * threads, err_msg=f"seed {seed}"
    )


def emulation_settings(**settings):
    return emulator.emulation(**settings)


def rotate(order: str, with_barrier: bool, seed: int = 0, threads: int = 64) -> np.ndarray:
    out = np.zeros(threads, dtype=np.float32)
    with emulation_settings(order=order, seed=seed):
        module("barriers").launch(
            "rotate", (1, 1, 1), (threads, 1, 1), (out, np.int32(with_barrier)), threads * 4
        )
    return out


def test_a_missing_barrier_shows_as_order_dependence():
    right = (np.arange(64, dtype=np.float32) + 1) % 64
    for order in ("forward", "reverse", "shuffle"):
        np.testing.assert_array_equal(rotate(order, with_barrier=True), right)
    forward, reverse = rotate("forward", False), rotate("reverse", False)
    # Forward: each thread reads its successor's slot before the successor wrote it (poison).
    assert np.isnan(forward[:-1]).all() and forward[-1] == 0
    # Reverse: the successors ran first, so all but the last thread read what they expect.
    np.testing.assert_array_equal(reverse[:-1], right[:-1])
    assert np.isnan(reverse[-1])
    shuffled = [rotate("shuffle", False, seed) for seed in range(4)]
    np.testing.assert_array_equal(shuffled[0], rotate("shuffle", False, 0))  # reproducible
    assert any(not np.array_equal(shuffled[0], other, equal_nan=True) for other in shuffled[1:])


def test_dynamic_shared_memory_starts_poisoned_in_every_block():
    blocks, threads = 5, 32
    out = np.zeros(blocks * threads, dtype=np.uint32)
    with emulation_settings(workers=1):  # one worker: the blocks reuse one buffer
        module("barriers").launch(
            "read_then_write_shared", (blocks, 1, 1), (threads, 1, 1), (out,), threads * 4
        )
    assert (out == 0xFFFFFFFF).all()
    assert np.isnan(out.view(np.float32)).all()  # the poison is a NaN as a float


def test_static_shared_memory():
    x = np.arange(3 * 128, dtype=np.float32)
    y = np.zeros_like(x)
    with emulation_settings(order="reverse"):
        module("barriers").launch("reverse_blocks", (3, 1, 1), (128, 1, 1), (x, y))
    np.testing.assert_array_equal(y, x.reshape(3, 128)[:, ::-1].ravel())


def test_warp_shuffles_and_votes():
    warps = 4
    rng = np.random.default_rng(7)
    x = rng.integers(-50, 50, warps * 32).astype(np.float32)  # integers: sums are exact
    outputs = [np.zeros(x.size, np.float32) for _ in range(2)]
    ballot = np.zeros(x.size, np.uint32)
    up, broadcast = np.zeros(x.size, np.float32), np.zeros(x.size, np.float32)
    votes = np.zeros(2 * x.size, np.int32)
    for order in ("forward", "reverse", "shuffle"):
        with emulation_settings(order=order, seed=3):
            module("warps").launch(
                "warp_collectives",
                (2, 1, 1),
                (64, 1, 1),
                (x, *outputs, ballot, up, broadcast, votes),
            )
        by_warp = x.reshape(warps, 32)
        butterfly, down = (output.reshape(warps, 32) for output in outputs)
        np.testing.assert_array_equal(butterfly, np.repeat(by_warp.sum(1, keepdims=True), 32, 1))
        np.testing.assert_array_equal(down[:, 0], by_warp.sum(1))
        bits = (by_warp > 0) * (1 << np.arange(32, dtype=np.uint64))
        np.testing.assert_array_equal(ballot.reshape(warps, 32)[:, 0], bits.sum(1))
        shifted = np.concatenate([by_warp[:, :1], by_warp[:, :-1]], axis=1)
        np.testing.assert_array_equal(up.reshape(warps, 32), shifted)
        lane_three_of_eight = by_warp[:, (np.arange(32) & ~7) + 3]
        np.testing.assert_array_equal(broadcast.reshape(warps, 32), lane_three_of_eight)
        np.testing.assert_array_equal(votes.reshape(-1, 2), [[0, 1]] * x.size)


def test_a_template_through_two_name_expressions():
    x = np.arange(1, 65, dtype=np.float64)
    np.testing.assert_array_equal(block_sums(x, 32), [528, 1552])
    np.testing.assert_array_equal(block_sums(x.astype(np.float32), 32), [528, 1552])
    assert module("barriers").parameters("block_sum<double>") == ("constptr:f8", "ptr:f8", "i8")


def test_atomics_across_blocks_on_parallel_workers():
    totals = (
        np.zeros(1, np.float32),
        np.zeros(1, np.float64),
        np.zeros(1, np.int32),
        np.zeros(1, np.uint64),
        np.full(1, -1, np.int32),
    )
    with emulation_settings(workers=2):
        module("grids").launch("count_with_atomics", (64, 1, 1), (128, 1, 1), totals)
    assert [total[0] for total in totals] == [8192, 4096, 8192, 8192, 8191]


def test_blocks_runs_only_the_listed_blocks():
    marks = np.zeros(6 * 3, np.int32)
    with emulation_settings(blocks=[0, 7, 17]):
        module("grids").launch("mark_blocks", (6, 3, 1), (32, 1, 1), (marks,))
    expected = np.zeros_like(marks)
    expected[[0, 7, 17]] = [1, 8, 18]
    np.testing.assert_array_equal(marks, expected)
    with emulation_settings(blocks=[18]), pytest.raises(RuntimeError, match="outside the grid"):
        module("grids").launch("mark_blocks", (6, 3, 1), (32, 1, 1), (marks,))


def test_the_last_blocks_of_a_grid_over_2_to_the_32_threads():
    blocks, threads = 2**22, 1024
    first = (blocks - 2) * threads
    out = np.full(2 * threads, -1, np.int64)
    with emulation_settings(blocks=[blocks - 2, blocks - 1]):
        module("grids").launch(
            "write_tail_indices", (blocks, 1, 1), (threads, 1, 1), (out, np.int64(first))
        )
    np.testing.assert_array_equal(out, np.arange(first, 2**32, dtype=np.int64))


def test_a_barrier_some_threads_never_reach_is_an_error():
    out = np.zeros(64, np.float32)
    with pytest.raises(
        RuntimeError,
        match=r"exit_before_barrier.*block \(0,0,0\).*"
        r"__syncthreads reached by 40 of 64 threads; 24 had exited",
    ):
        module("barriers").launch("exit_before_barrier", (1, 1, 1), (64, 1, 1), (out, np.int32(40)))
    # The interpreter and the module are fine afterwards.
    module("barriers").launch("exit_before_barrier", (1, 1, 1), (64, 1, 1), (out, np.int32(64)))
    assert (out == 1).all()


def test_a_shuffle_some_lanes_never_reach_is_an_error():
    out = np.zeros(64, np.float32)
    with pytest.raises(RuntimeError, match=r"warp divergence.*16 of 32 lanes.*__shfl_xor_sync"):
        module("warps").launch("shuffle_after_exit", (1, 1, 1), (64, 1, 1), (out,))


def test_invalid_configurations_are_errors():
    out = np.zeros(2048, np.int32)
    launch = functools.partial(module("barriers").launch, "barriers_only")
    with pytest.raises(RuntimeError, match=r"invalid configuration.*at most 1024 threads"):
        launch((1, 1, 1), (1025, 1, 1), (out, np.int32(1)))
    with pytest.raises(RuntimeError, match="at least 1"):
        launch((0, 1, 1), (32, 1, 1), (out, np.int32(1)))
    with pytest.raises(RuntimeError, match="shared memory"):
        launch((1, 1, 1), (32, 1, 1), (out, np.int32(1)), 228 * 1024)


def test_bad_arguments_raise_type_error():
    m = module("barriers")
    x, sums = np.ones(64, np.float32), np.zeros(2, np.float32)
    grid = ((2, 1, 1), (32, 1, 1))
    with pytest.raises(TypeError, match="NumPy scalar of the kernel's parameter type"):
        m.launch("block_sum<float>", *grid, (x, sums, 64), 128)
    with pytest.raises(TypeError, match=r"expected numpy\.int64, got numpy\.int32"):
        m.launch("block_sum<float>", *grid, (x, sums, np.int32(64)), 128)
    with pytest.raises(TypeError, match="got a float64 array"):
        m.launch("block_sum<float>", *grid, (x.astype(np.float64), sums, np.int64(64)), 128)
    with pytest.raises(TypeError, match="takes 3 arguments, got 2"):
        m.launch("block_sum<float>", *grid, (x, sums), 128)
    with pytest.raises(TypeError, match="got list"):
        m.launch("block_sum<float>", *grid, (list(x), sums, np.int64(64)), 128)
    with pytest.raises(ValueError, match="C-contiguous"):
        m.launch("block_sum<float>", *grid, (np.ones(128, np.float32)[::2], sums, np.int64(64)))
    with pytest.raises(KeyError, match="not among"):
        m.launch("block_sum<half>", *grid, (x, sums, np.int64(64)))


def test_a_compile_error_carries_the_diagnostics():
    with pytest.raises(RuntimeError, match=r"(?s)g\+\+ failed.*undeclared"):
        emulator.EmulatedModule(
            "__global__ void broken(float* x) { x[0] = undeclared; }", ["broken"]
        )


def test_the_compiled_module_is_cached_on_disk(monkeypatch):
    first = module("warps")
    assert first.path.is_file()
    modified = first.path.stat().st_mtime_ns

    def no_compiler(arguments):
        raise AssertionError(f"compiled again: {arguments}")

    monkeypatch.setattr(emulator, "_run_compiler", no_compiler)
    monkeypatch.setattr(emulator, "_loaded", {})  # forget this process's memo: load from disk
    code, name_expressions = SOURCES["warps"]
    started = time.perf_counter()
    second = emulator.EmulatedModule(code, name_expressions, ["--std=c++17"], [KERNELS])
    print(f"cached module loaded in {1e3 * (time.perf_counter() - started):.1f} ms")
    assert second.path == first.path and first.path.stat().st_mtime_ns == modified


def test_concurrent_launches_from_python_threads():
    def job(seed):
        x = np.random.default_rng(seed).standard_normal(5000)
        for _ in range(5):
            np.testing.assert_allclose(block_sums(x, 128).sum(), x.sum(), rtol=1e-10)
        return seed

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert sorted(pool.map(job, range(8))) == list(range(8))


def test_speed_of_a_grid_of_2_to_the_20_threads_with_barriers():
    threads, blocks = 256, 4096  # 2^20 threads, 9 barriers each
    x = np.ones(threads * blocks, np.float32)
    block_sums(x, threads)  # warm: stacks allocated, pages touched
    elapsed = []
    for _ in range(3):
        started = time.perf_counter()
        sums = block_sums(x, threads)
        elapsed.append(time.perf_counter() - started)
    assert (sums == threads).all()
    best = min(elapsed)
    print(f"2^20 threads x 9 barriers: {best * 1e3:.0f} ms, {x.size / best / 1e6:.1f} M threads/s")
    assert best < 1.0

    out = np.zeros(1024, np.int32)
    rounds = 2000
    with emulation_settings(workers=1):
        started, cpu_started = time.perf_counter(), time.process_time()
        module("barriers").launch("barriers_only", (1, 1, 1), (1024, 1, 1), (out, np.int32(rounds)))
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        switches = 2 * 1024 * (rounds + 1)  # to the fiber and back, per thread and barrier
        print(
            f"fiber switches on one worker: {switches / seconds / 1e6:.0f} M/s "
            f"({switches / cpu_seconds / 1e6:.0f} M per CPU second)"
        )
        launches = 1000
        started = time.perf_counter()
        for _ in range(launches):
            module("barriers").launch("barriers_only", (1, 1, 1), (1, 1, 1), (out, np.int32(0)))
        print(f"launch overhead: {(time.perf_counter() - started) / launches * 1e6:.1f} us")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_every_test_source_also_compiles_with_nvcc(tmp_path):
    """One source, both compilers: what the emulator accepts must be real CUDA."""
    running = {}
    for name, (code, name_expressions) in SOURCES.items():
        # Taking a kernel's address instantiates it, as CuPy's name expressions do.
        instantiations = "".join(
            f"void* fastcnn_instantiate_{i} = (void*)&{expression};\n"
            for i, expression in enumerate(name_expressions)
        )
        source = tmp_path / f"{name}.cu"
        source.write_text(code + instantiations)
        command = ["nvcc", "-cubin", "-arch=sm_90", "-std=c++17", f"-I{KERNELS}", "-o", "/dev/null"]
        running[name] = subprocess.Popen(
            [*command, str(source)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    for name, process in running.items():
        output = process.communicate()[0]
        assert process.returncode == 0, f"nvcc rejected the {name!r} source:\n{output}"
