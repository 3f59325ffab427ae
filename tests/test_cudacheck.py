"""The CUDA compile check and static profile (fastcnn.cudacheck), without a GPU.

Every name expression of every CUDA source compiles for sm_80 and sm_90 (NVRTC through
cuda-bindings, else nvcc); no kernel spills or touches local memory; and the pieces the
profile is built from (the ptxas log parser, the SASS loop finder, the occupancy formula)
give known answers on captured samples.
"""

from __future__ import annotations

import pytest

from fastcnn import cudacheck
from fastcnn.cudacheck import SM_LIMITS, Occupancy, occupancy, parse_ptxas, parse_sass

COMPILERS = cudacheck.available_compilers()
needs_compiler = pytest.mark.skipif(
    not COMPILERS,
    reason="neither NVRTC through cuda-bindings (pip install fastcnn[cudacheck]) nor nvcc",
)
needs_cuobjdump = pytest.mark.skipif(
    cudacheck.tool("cuobjdump") is None, reason="cuobjdump missing (nvidia-cuda-cuobjdump)"
)


@pytest.fixture(scope="session")
def result() -> cudacheck.CheckResult:
    """One check of every source, C type and arch per test session (about 20-40 s on 2 cores)."""
    if not COMPILERS:
        pytest.skip("no CUDA compiler")
    sass_arch = "sm_90" if cudacheck.tool("cuobjdump") else None
    return cudacheck.check(archs=cudacheck.CHECK_ARCHS, sass_arch=sass_arch)


# --- against the real sources -----------------------------------------------------------


@needs_compiler
@pytest.mark.parametrize("arch", cudacheck.CHECK_ARCHS)
def test_every_expression_compiles(result, arch):
    compiles = [c for c in result.compiles if c.arch == arch]
    assert {(c.file, c.c_type) for c in compiles} == {
        (s.file, t) for s in cudacheck_sources() for t in cudacheck.C_TYPES
    }
    failed = [f"{c.file} <{c.c_type}>:\n{c.log.strip()}" for c in compiles if not c.ok]
    assert not failed, "\n\n".join(failed)
    for compiled in compiles:
        unmapped = [e for e in compiled.expressions if e not in compiled.lowered]
        assert not unmapped, f"{compiled.file}: no mangled name for {unmapped}"


def cudacheck_sources():
    from fastcnn.backends.cuda import _families

    return _families.sources()


@needs_compiler
def test_every_kernel_has_a_ptxas_report(result):
    reported = [p for p in result.profiles if p.compiled]
    missing = [f"{p.expression} ({p.arch})" for p in reported if p.registers is None]
    assert reported and not missing


@needs_compiler
def test_no_kernel_spills_or_has_a_stack_frame(result):
    bad = [
        f"{p.expression} ({p.arch}): stack {p.stack_bytes} B, spills "
        f"{p.spill_store_bytes}/{p.spill_load_bytes} B"
        for p in result.profiles
        if p.registers is not None and (p.stack_bytes or p.spill_store_bytes or p.spill_load_bytes)
    ]
    assert not bad, "\n".join(bad)


@needs_compiler
@needs_cuobjdump
def test_no_kernel_touches_local_memory(result):
    disassembled = [p for p in result.profiles if p.sass is not None]
    assert disassembled, "no kernel was disassembled"
    bad = [
        f"{p.expression}: {p.sass.local_loads} LDL, {p.sass.local_stores} STL"
        for p in disassembled
        if p.sass.local_loads or p.sass.local_stores
    ]
    assert not bad, "\n".join(bad)


#: The static target of every convolution GEMM's main loop on a GPU tile, in float: FFMA at
#: least this share of its instructions, its shared loads 16 bytes wide, and at least 2
#: blocks resident an SM.
CONV_GEMM_LOOP_FMA = 0.75


@needs_compiler
@needs_cuobjdump
def test_conv_gemm_main_loops_meet_the_fma_target(result):
    from fastcnn.backends.cuda.conv2d import GEMM_KERNELS, GEMM_TILES

    tile = ", ".join(str(v) for v in GEMM_TILES["float"])
    gemms = [
        p for p in result.profiles
        if p.sass is not None and f"<float, {tile}" in p.expression
        and any(name in p.expression for name in GEMM_KERNELS.values())
    ]  # fmt: skip
    assert {
        name for name in GEMM_KERNELS.values() if any(name in p.expression for p in gemms)
    } == set(GEMM_KERNELS.values())
    bad = [
        f"{p.expression}: loop FMA {p.sass.main_loop_fma_share:.1%} of "
        f"{p.sass.main_loop_instructions}, shared loads {p.sass.shared_loads}, "
        f"occupancy {p.occupancy:.0%}"
        for p in gemms
        if p.sass.main_loop_fma_share < CONV_GEMM_LOOP_FMA
        or set(p.sass.shared_loads) != {128}
        or p.occupancy * 64 < 2 * p.threads // 32  # 64 warps an SM
    ]
    assert not bad, "\n".join(bad)


@needs_compiler
def test_the_table_has_a_row_per_kernel_instance(result):
    text = cudacheck.table(result.profiles, "sm_90")
    rows = [line for line in text.splitlines()[2:] if line.startswith("| ")]
    assert len(rows) == sum(p.arch == "sm_90" for p in result.profiles)


@pytest.mark.skipif("nvcc" not in COMPILERS, reason="nvcc not on PATH")
def test_nvcc_fallback_instantiates_and_maps_every_expression():
    source = next(s for s in cudacheck_sources() if s.file == "activation.cu")
    compiled = cudacheck.compile_source(source, "float", "sm_90", compiler="nvcc")
    assert compiled.ok, compiled.log
    assert set(compiled.lowered) == set(compiled.expressions)
    report = parse_ptxas(compiled.log)
    assert all(report[name].entry for name in compiled.lowered.values())


# --- the parsers and the formula --------------------------------------------------------

#: NVRTC's program log for two kernels of activation.cu (sm_90), and nvcc's stderr for a
#: kernel with static shared memory, a stack frame and spills, and a device function.
PTXAS_LOG = """\
ptxas info    : 4 bytes gmem
ptxas info    : Compiling entry function '_ZN7fastcnn13unary_forwardIfNS_4TanhIfEELb1EEEvPKT_PS3_xS3_' for 'sm_90'
ptxas info    : Function properties for _ZN7fastcnn13unary_forwardIfNS_4TanhIfEELb1EEEvPKT_PS3_xS3_
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 32 registers, used 0 barriers
ptxas info    : Compile time = 29.238 ms
ptxas info    : Compiling entry function '_ZN7fastcnn13unary_forwardIfNS_7SigmoidIfEELb1EEEvPKT_PS3_xS3_' for 'sm_90'
ptxas info    : Function properties for _ZN7fastcnn13unary_forwardIfNS_7SigmoidIfEELb1EEEvPKT_PS3_xS3_
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 38 registers, used 0 barriers
ptxas info    : Compile time = 44.810 ms
ptxas info    : Function properties for _Z6helperPf
    16 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function '_Z4gemmPKfPf' for 'sm_90'
ptxas info    : Function properties for _Z4gemmPKfPf
    24 bytes stack frame, 20 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 16384 bytes smem, 380 bytes cmem[0]
"""  # noqa: E501


def test_parse_ptxas_on_a_captured_log():
    functions = parse_ptxas(PTXAS_LOG)
    tanh = functions["_ZN7fastcnn13unary_forwardIfNS_4TanhIfEELb1EEEvPKT_PS3_xS3_"]
    sigmoid = functions["_ZN7fastcnn13unary_forwardIfNS_7SigmoidIfEELb1EEEvPKT_PS3_xS3_"]
    assert (tanh.entry, tanh.registers, tanh.shared_bytes, tanh.stack_bytes) == (True, 32, 0, 0)
    assert sigmoid.registers == 38
    gemm = functions["_Z4gemmPKfPf"]
    assert (gemm.registers, gemm.barriers, gemm.shared_bytes) == (255, 1, 16384)
    assert (gemm.stack_bytes, gemm.spill_store_bytes, gemm.spill_load_bytes) == (24, 20, 12)
    helper = functions["_Z6helperPf"]
    assert not helper.entry and helper.stack_bytes == 16 and helper.registers == 0


#: cuobjdump -sass of a kernel with a loop nest: an outer loop (0x0040-0x00f0) around an
#: inner one (0x0060-0x00b0, 3 FFMA of 5), and the trap loop that ends every kernel.
SASS = """\
\t\tFunction : _Z4gemmPKfPf
        /*0000*/                   LDC R1, c[0x0][0x28] ;        /* 0x00000a00ff017b82 */
        /*0010*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0020*/                   LDS.128 R8, [R0] ;
        /*0030*/                   LDS R12, [R0+0x10] ;
        /*0040*/                   LDL.64 R14, [R1] ;
        /*0050*/                   STL [R1+0x8], R3 ;
        /*0060*/                   FFMA R4, R8, R9, R4 ;
        /*0070*/                   FFMA R5, R8, R10, R5 ;
        /*0080*/                   FFMA R6, R8, R11, R6 ;
        /*0090*/                   ISETP.NE.AND P0, PT, R0, RZ, PT ;
        /*00a0*/                   NOP ;
        /*00b0*/               @P0 BRA 0x60 ;
        /*00c0*/                   DFMA R16, R18, R20, R16 ;
        /*00d0*/                   LDG.E.U8 R2, desc[UR4][R2.64] ;
        /*00e0*/                   ISETP.NE.AND P1, PT, R0, RZ, PT ;
        /*00f0*/              @!P1 BRA 0x40 ;
        /*0100*/                   EXIT ;
        /*0110*/                   BRA 0x110 ;
"""


def test_sass_counts_and_innermost_loop():
    instructions = parse_sass(SASS)["_Z4gemmPKfPf"]
    assert len(instructions) == 17  # the NOP is padding, not counted
    assert cudacheck.loops(instructions) == [(0x60, 0xB0), (0x40, 0xF0)]
    counts = cudacheck.count_sass(instructions, main_loop=True)
    assert (counts.ffma, counts.dfma, counts.local_loads, counts.local_stores) == (3, 1, 1, 1)
    assert counts.shared_loads == {32: 1, 128: 1}
    assert counts.global_loads == {8: 1, 128: 1}
    assert counts.main_loop_instructions == 5
    assert counts.main_loop_fma_share == pytest.approx(3 / 5)


def test_main_loop_rule_is_data_driven():
    assert any(
        all(part in "fastcnn::conv2d_forward_implicit_gemm<float, 128>" for part in rule)
        for rule in cudacheck.MAIN_LOOP_RULES
    )


@pytest.mark.parametrize(
    ("registers", "threads", "shared_bytes", "expected"),
    [
        (32, 256, 0, Occupancy(8, 1.0, "threads")),
        (40, 256, 0, Occupancy(6, 0.75, "registers")),  # 1280 a warp: 12 warps a quarter
        (64, 256, 0, Occupancy(4, 0.5, "registers")),
        (128, 256, 0, Occupancy(2, 0.25, "registers")),
        (255, 256, 0, Occupancy(1, 0.125, "registers")),  # 8192 a warp: 2 warps a quarter
        (168, 128, 0, Occupancy(3, 0.1875, "registers")),  # 5376 a warp: 3 warps a quarter
        (32, 32, 0, Occupancy(32, 0.5, "blocks")),
        (64, 1024, 0, Occupancy(1, 0.5, "registers")),
        (65, 1024, 0, Occupancy(0, 0.0, "registers")),  # 72 x 32 x 32 > 65536
        (32, 256, 48 * 1024, Occupancy(4, 0.5, "shared")),  # 49 KB with the reserve
        (32, 128, 227 * 1024, Occupancy(1, 0.0625, "shared")),
        (32, 128, 228 * 1024, Occupancy(0, 0.0, "shared")),  # over a block's most
    ],
)
def test_occupancy_on_known_numbers(registers, threads, shared_bytes, expected):
    assert occupancy(registers, threads, shared_bytes, SM_LIMITS["sm_90"]) == expected


def test_hot_and_threads_come_from_the_launch_code():
    facts = cudacheck.LaunchFacts(
        threads={"conv2d_forward_implicit_gemm": 128},
        hot=("conv2d_forward_implicit_gemm", "fastcnn::relu<{T}, true>"),
    )
    gemm = "fastcnn::conv2d_forward_implicit_gemm<float, 128, 128, 8, 8, 8, true>"
    assert facts.shape_of(gemm, "float") == (128, 0)
    assert facts.shape_of("fastcnn::dropout<float, true>", "float") == (256, 0)
    assert facts.is_hot(gemm, "float")
    assert facts.is_hot("fastcnn::relu<double,true>", "double")
    assert not facts.is_hot("fastcnn::relu<double, false>", "double")
    assert cudacheck.LaunchFacts().is_hot("anything", "float")  # no HOT: every kernel
    shaped = cudacheck.LaunchFacts(launch_shape=lambda e: (64, 4096) if "gemm" in e else None)
    assert shaped.shape_of(gemm, "float") == (64, 4096)
    assert shaped.shape_of("fastcnn::dropout<float, true>", "float") == (256, 0)


def test_docstring_examples():
    # tests/test_docs.py leaves out modules whose name holds ".cuda", this one included
    import doctest

    assert doctest.testmod(cudacheck, optionflags=doctest.ELLIPSIS).failed == 0
