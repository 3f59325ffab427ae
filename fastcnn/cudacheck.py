"""Compile check and static profile of the CUDA kernels, without a GPU.

``python -m fastcnn.cudacheck [--arch sm_90] [--json out.json] [--sass]``

1. **Compile check.** Every name expression of every source of
   :func:`fastcnn.backends.cuda._families.sources`, for ``float`` and ``double``, compiles
   to a cubin for sm_80 and sm_90 (and ``--arch``). NVRTC through ``cuda-bindings`` (the
   ``nvidia-cuda-nvrtc`` wheel) is preferred: one program per (source, C type, arch), the
   options of the CUDA runtime plus ``-I kernels/cuda --gpu-architecture=ARCH
   --ptxas-options=-v``, one ``nvrtcAddNameExpression`` per expression, and
   ``nvrtcGetLoweredName`` maps each expression to its mangled name. Where NVRTC cannot
   be loaded, nvcc compiles the source followed by a host array that takes the address
   of every expression (``nvcc -cubin -arch=ARCH -Xptxas -v``); taking a kernel
   template's address instantiates it, which needs no signature (an explicit
   ``template __global__ void ...;`` would), and ``c++filt`` maps the mangled names back.
   Neither compile needs a device.
2. **Static profile.** ptxas ``-v`` gives registers, static shared memory, stack frame
   and spill bytes per kernel; :func:`occupancy` turns them into resident warps on the
   SM at the block size of the launch code: its module's ``launch_shape(expression)``
   where it has one (``(threads, dynamic shared bytes)``, or None to fall back), else
   its ``THREADS`` (an int, or a dict from template name to int), else 256. Dynamic
   shared memory counts only where ``launch_shape`` gives it.
3. **SASS** (``--sass``). ``cuobjdump -sass`` of the cubin (the ``nvidia-cuda-cuobjdump``
   wheel; it calls ``nvdisasm`` from ``nvidia-cuda-nvdisasm``): instructions, FFMA and
   DFMA, shared and global loads by width, local memory (LDL/STL). Kernels that match
   :data:`MAIN_LOOP_RULES` (the conv2d implicit GEMMs) also get the FMA share of their
   main loop: the largest innermost loop, a loop being the code between a backward
   ``BRA`` and its target.
4. **Verdict.** The exit status is 1 on any compile error, or where a *hot* kernel spills,
   has a stack frame or (with ``--sass``) touches local memory. A launch-code module may
   list its hot kernels in ``HOT`` (template names such as ``"conv2d_forward_direct"``,
   or full expressions with ``{T}``); every kernel of a module without ``HOT`` is hot.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

#: C types every source is instantiated for.
C_TYPES = ("float", "double")
#: Architectures every compile check covers (Ampere and Hopper); ``--arch`` adds one.
CHECK_ARCHS = ("sm_80", "sm_90")
#: Threads per block where the launch-code module declares no ``THREADS``.
DEFAULT_THREADS = 256
#: Kernels whose main loop is profiled: every name fragment of one rule must occur in the
#: expression (the conv2d implicit-GEMM kernels: their inner loop should be mostly FFMA).
MAIN_LOOP_RULES: tuple[tuple[str, ...], ...] = (("conv2d", "gemm"),)


# --- occupancy -------------------------------------------------------------------------


@dataclass(frozen=True)
class SmLimits:
    """What one streaming multiprocessor holds (the CUDA occupancy calculator's inputs)."""

    registers: int = 65536
    threads: int = 2048
    blocks: int = 32
    shared_bytes: int = 228 * 1024
    #: The largest static + dynamic shared memory of one block (after opting in).
    shared_bytes_per_block: int = 227 * 1024
    #: Shared memory the driver reserves per resident block, and the allocation step.
    reserved_shared_bytes: int = 1024
    shared_granularity: int = 128
    #: Registers are given to a warp in steps of 256 (8 per thread), and each of the 4
    #: sub-partitions (schedulers) holds a quarter of the register file.
    register_granularity: int = 256
    sub_partitions: int = 4
    max_registers_per_thread: int = 255
    warp_size: int = 32


#: Per architecture; the table's occupancy uses the profiled one.
SM_LIMITS = {
    "sm_80": SmLimits(shared_bytes=164 * 1024, shared_bytes_per_block=163 * 1024),
    "sm_90": SmLimits(),
}


@dataclass(frozen=True)
class Occupancy:
    """Resident blocks per SM, the fraction of the SM's warps they fill, and the limiter."""

    blocks: int
    fraction: float
    limited_by: str


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def occupancy(
    registers: int, threads: int, shared_bytes: int = 0, limits: SmLimits | None = None
) -> Occupancy:
    """Theoretical occupancy of a kernel on one SM, as CUDA's occupancy calculator computes it.

    Parameters
    ----------
    registers : int
        Registers per thread (ptxas ``Used N registers``).
    threads : int
        Threads per block.
    shared_bytes : int
        Static plus dynamic shared memory per block.
    limits : SmLimits, optional
        The SM; sm_90 (H100/H200) where omitted.

    Returns
    -------
    Occupancy
        ``blocks`` resident per SM, ``fraction`` of the SM's warps they fill, and which
        resource ``limited_by`` (``"threads"``, ``"blocks"``, ``"registers"`` or
        ``"shared"``); 0 blocks where one block does not fit at all.

    Examples
    --------
    >>> occupancy(registers=64, threads=256)
    Occupancy(blocks=4, fraction=0.5, limited_by='registers')
    >>> occupancy(registers=32, threads=256, shared_bytes=48 * 1024).blocks
    4
    """
    limits = limits or SM_LIMITS["sm_90"]
    warps_per_block = -(-threads // limits.warp_size)
    warps_per_sm = limits.threads // limits.warp_size
    candidates = {
        "threads": warps_per_sm // warps_per_block,
        "blocks": limits.blocks,
    }
    # Registers go to warps in steps; a warp lives in one sub-partition, so the SM holds
    # (warps that fit one sub-partition's registers) x (sub-partitions) warps.
    registers_per_warp = _round_up(
        max(registers, 1) * limits.warp_size, limits.register_granularity
    )
    warps_by_registers = (
        limits.registers // limits.sub_partitions // registers_per_warp * limits.sub_partitions
    )
    fits = (
        registers <= limits.max_registers_per_thread
        and registers_per_warp * _round_up(warps_per_block, limits.sub_partitions)
        <= limits.registers
    )
    candidates["registers"] = warps_by_registers // warps_per_block if fits else 0
    if shared_bytes:
        per_block = _round_up(
            shared_bytes + limits.reserved_shared_bytes, limits.shared_granularity
        )
        fits = shared_bytes <= limits.shared_bytes_per_block
        candidates["shared"] = limits.shared_bytes // per_block if fits else 0
    limited_by = min(candidates, key=lambda name: candidates[name])
    blocks = candidates[limited_by]
    return Occupancy(blocks, blocks * warps_per_block / warps_per_sm, limited_by)


# --- ptxas -v ---------------------------------------------------------------------------


@dataclass
class PtxasFunction:
    """What ptxas ``-v`` says of one function (a kernel where ``entry``)."""

    name: str
    entry: bool = False
    registers: int = 0
    barriers: int = 0
    shared_bytes: int = 0
    stack_bytes: int = 0
    spill_store_bytes: int = 0
    spill_load_bytes: int = 0


_ENTRY = re.compile(r"Compiling entry function '([^']+)'")
_PROPERTIES = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_BARRIERS = re.compile(r"used (\d+) barriers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(log: str) -> dict[str, PtxasFunction]:
    """The functions of a ptxas ``-v`` log (NVRTC's program log or nvcc's stderr), by mangled name.

    ``Compiling entry function`` opens a kernel, ``Function properties for`` names the
    function the next stack-frame line belongs to, and ``Used N registers`` belongs to
    the kernel opened last.

    Examples
    --------
    >>> log = '''ptxas info    : Compiling entry function '_Z1kPf' for 'sm_90'
    ... ptxas info    : Function properties for _Z1kPf
    ...     8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
    ... ptxas info    : Used 40 registers, used 1 barriers, 1024 bytes smem, 360 bytes cmem[0]'''
    >>> parse_ptxas(log)["_Z1kPf"]  # doctest: +NORMALIZE_WHITESPACE
    PtxasFunction(name='_Z1kPf', entry=True, registers=40, barriers=1, shared_bytes=1024,
                  stack_bytes=8, spill_store_bytes=4, spill_load_bytes=4)
    """
    functions: dict[str, PtxasFunction] = {}
    entry = properties = None
    for line in log.splitlines():
        if match := _ENTRY.search(line):
            entry = functions.setdefault(match[1], PtxasFunction(match[1]))
            entry.entry = True
        elif match := _PROPERTIES.search(line):
            properties = functions.setdefault(match[1], PtxasFunction(match[1]))
        elif (match := _FRAME.search(line)) and properties is not None:
            properties.stack_bytes, properties.spill_store_bytes, properties.spill_load_bytes = (
                int(g) for g in match.groups()
            )
        elif (match := _USED.search(line)) and entry is not None:
            entry.registers = int(match[1])
            if barriers := _BARRIERS.search(line):
                entry.barriers = int(barriers[1])
            if smem := _SMEM.search(line):
                entry.shared_bytes = int(smem[1])
    return functions


def log_errors(log: str) -> list[str]:
    """The lines of a compile log that report errors (front end or ptxas)."""
    return [line for line in log.splitlines() if re.search(r"\berror\b", line, re.IGNORECASE)]


# --- compiling --------------------------------------------------------------------------


class CompilerUnavailable(RuntimeError):
    """Neither NVRTC (cuda-bindings) nor nvcc can be used on this machine."""


@dataclass
class Compiled:
    """One compile of one source for one C type and architecture."""

    file: str
    c_type: str
    arch: str
    compiler: str
    expressions: tuple[str, ...]
    ok: bool
    log: str
    #: Name expression -> mangled name (empty for those that could not be mapped).
    lowered: dict[str, str] = field(default_factory=dict)
    cubin: bytes | None = field(default=None, repr=False)


def _nvrtc():
    try:
        from cuda.bindings import nvrtc
    except ImportError:
        return None
    try:
        error, *_ = nvrtc.nvrtcVersion()  # loads libnvrtc: fails where the wheel is missing
    except Exception:
        return None
    return nvrtc if error == nvrtc.nvrtcResult.NVRTC_SUCCESS else None


def available_compilers() -> list[str]:
    """The compilers this machine can use, preferred first: ``"nvrtc"``, ``"nvcc"``."""
    found = []
    if _nvrtc() is not None:
        found.append("nvrtc")
    if shutil.which("nvcc"):
        found.append("nvcc")
    return found


def _options(arch: str) -> list[str]:
    from fastcnn.backends.cuda._runtime import OPTIONS, kernel_dir

    return [*OPTIONS, f"-I{kernel_dir()}", f"--gpu-architecture={arch}"]


def _compile_nvrtc(file: str, code: str, expressions: Sequence[str], arch: str) -> Compiled:
    nvrtc = _nvrtc()
    success = nvrtc.nvrtcResult.NVRTC_SUCCESS

    def checked(result):
        if result[0] != success:
            raise RuntimeError(f"NVRTC: {result[0]!r} compiling {file} for {arch}")
        return result[1] if len(result) > 1 else None

    program = checked(nvrtc.nvrtcCreateProgram(code.encode(), file.encode(), 0, [], []))
    try:
        for expression in expressions:
            checked(nvrtc.nvrtcAddNameExpression(program, expression.encode()))
        options = [o.encode() for o in (*_options(arch), "--ptxas-options=-v")]
        ok = nvrtc.nvrtcCompileProgram(program, len(options), options)[0] == success
        log = bytearray(checked(nvrtc.nvrtcGetProgramLogSize(program)))
        checked(nvrtc.nvrtcGetProgramLog(program, log))
        log = bytes(log).rstrip(b"\0").decode(errors="replace")
        lowered, cubin = {}, None
        if ok:
            for expression in expressions:
                name = checked(nvrtc.nvrtcGetLoweredName(program, expression.encode()))
                lowered[expression] = name.decode() if isinstance(name, bytes) else name
            cubin = bytearray(checked(nvrtc.nvrtcGetCUBINSize(program)))
            checked(nvrtc.nvrtcGetCUBIN(program, cubin))
            cubin = bytes(cubin)
    finally:
        nvrtc.nvrtcDestroyProgram(program)
    return Compiled(file, "", arch, "nvrtc", tuple(expressions), ok, log, lowered, cubin)


def _demangled_kernel(demangled: str) -> str:
    """``void fastcnn::k<float, true>(float const*, long long)`` -> ``fastcnn::k<float,true>``."""
    text = demangled.removeprefix("void ")
    depth = 0
    for i, char in enumerate(text):
        depth += char == "<"
        depth -= char == ">"
        if char == "(" and depth == 0:
            text = text[:i]
            break
    return re.sub(r"\s+", "", text)


def _compile_nvcc(file: str, code: str, expressions: Sequence[str], arch: str) -> Compiled:
    # Taking each kernel's address in host code instantiates the template.
    instances = ",\n".join(f"    (const void*)&{e}" for e in expressions)
    program = f"{code}\n\n[[maybe_unused]] static const void* fastcnn_cudacheck_instances[] = {{\n{instances}\n}};\n"  # noqa: E501
    with tempfile.TemporaryDirectory(prefix="fastcnn-cudacheck-") as folder:
        source, cubin_path = Path(folder, file), Path(folder, file).with_suffix(".cubin")
        source.write_text(program)
        options = [o.replace("--gpu-architecture=", "-arch=") for o in _options(arch)]
        command = ["nvcc", "-cubin", *options, "-Xptxas", "-v", "-o", str(cubin_path), str(source)]
        run = subprocess.run(command, capture_output=True, text=True, timeout=600)
        ok = run.returncode == 0 and cubin_path.is_file()
        cubin = cubin_path.read_bytes() if ok else None
    log = run.stdout + run.stderr
    lowered = {}
    mangled = [f.name for f in parse_ptxas(log).values() if f.entry]
    if mangled and shutil.which("c++filt"):
        demangled = subprocess.run(
            ["c++filt"], input="\n".join(mangled), capture_output=True, text=True
        ).stdout.splitlines()
        by_name = {_demangled_kernel(d): m for d, m in zip(demangled, mangled, strict=False)}
        for expression in expressions:
            if (name := by_name.get(re.sub(r"\s+", "", expression))) is not None:
                lowered[expression] = name
    return Compiled(file, "", arch, "nvcc", tuple(expressions), ok, log, lowered, cubin)


def compile_source(source, c_type: str, arch: str, compiler: str = "auto") -> Compiled:
    """Compile one :class:`~fastcnn.backends.cuda._runtime.Source` for one C type and arch.

    Parameters
    ----------
    source : Source
        A kernel file and its name expressions (``source.expressions(c_type)``).
    c_type : str
        ``"float"`` or ``"double"``.
    arch : str
        A real architecture, such as ``"sm_90"``: the cubin holds its SASS.
    compiler : str
        ``"nvrtc"``, ``"nvcc"`` or ``"auto"`` (the first of :func:`available_compilers`).

    Returns
    -------
    Compiled
        The log, whether it compiled, the mangled name of every expression and the cubin.
    """
    if compiler == "auto":
        found = available_compilers()
        if not found:
            raise CompilerUnavailable(
                "neither NVRTC through cuda-bindings (pip install fastcnn[cudacheck]) nor nvcc"
                " is available"
            )
        compiler = found[0]
    compile_with = {"nvrtc": _compile_nvrtc, "nvcc": _compile_nvcc}[compiler]
    compiled = compile_with(source.file, source.code(), list(source.expressions(c_type)), arch)
    compiled.c_type = c_type
    return compiled


# --- SASS -------------------------------------------------------------------------------


def tool(name: str) -> str | None:
    """The path of a CUDA binary (``cuobjdump``, ``nvdisasm``).

    Looked for in the ``nvidia-*`` wheels, then on PATH, then in ``$CUDA_HOME/bin``.
    """
    try:
        import nvidia  # the wheels' namespace package: nvidia/cu13/bin, nvidia/cuda_*/bin
    except ImportError:
        folders = []
    else:
        folders = [Path(p) for p in nvidia.__path__]
    for folder in folders:
        for candidate in sorted(folder.glob(f"*/bin/{name}")):
            if os.access(candidate, os.X_OK):
                return str(candidate)
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    return shutil.which(name) or shutil.which(name, path=str(Path(cuda_home, "bin")))


@dataclass(frozen=True)
class Instruction:
    address: int
    opcode: str  # with its modifiers: LDG.E.128.CONSTANT
    operands: str

    @property
    def base(self) -> str:
        return self.opcode.split(".")[0]


_SASS_LINE = re.compile(
    r"^\s*/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);"
)
_FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)")


def disassemble(cubin: bytes) -> dict[str, list[Instruction]]:
    """The SASS of every kernel in a cubin (``cuobjdump -sass``), by mangled name."""
    cuobjdump = tool("cuobjdump")
    if cuobjdump is None:
        raise FileNotFoundError("cuobjdump not found: pip install nvidia-cuda-cuobjdump")
    nvdisasm = tool("nvdisasm")  # cuobjdump runs it to disassemble recent architectures
    env = dict(os.environ)
    if nvdisasm:
        env["PATH"] = f"{Path(nvdisasm).parent}{os.pathsep}{env.get('PATH', '')}"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        run = subprocess.run(
            [cuobjdump, "-sass", file.name], capture_output=True, text=True, env=env, check=True
        )
    return parse_sass(run.stdout)


def parse_sass(text: str) -> dict[str, list[Instruction]]:
    """The instructions of ``cuobjdump -sass`` output, by function; NOPs (padding) left out."""
    functions: dict[str, list[Instruction]] = {}
    current: list[Instruction] | None = None
    for line in text.splitlines():
        if match := _FUNCTION.match(line):
            current = functions.setdefault(match[1], [])
        elif current is not None and (match := _SASS_LINE.match(line)):
            if match[2] != "NOP":
                current.append(Instruction(int(match[1], 16), match[2], match[3].strip()))
    return functions


def _width(opcode: str) -> int:
    """Bits one thread moves in a load or store: 32 unless a modifier says otherwise."""
    for modifier in opcode.split(".")[1:]:
        if modifier in ("64", "128"):
            return int(modifier)
        if modifier in ("U8", "S8"):
            return 8
        if modifier in ("U16", "S16"):
            return 16
    return 32


@dataclass
class SassCounts:
    """What the SASS of one kernel holds."""

    instructions: int
    ffma: int
    dfma: int
    #: Loads by width in bits, e.g. {32: 4, 128: 2}.
    shared_loads: dict[int, int]
    global_loads: dict[int, int]
    local_loads: int
    local_stores: int
    #: Instructions of the main loop (the largest innermost loop) and their FFMA+DFMA share;
    #: only for kernels that match MAIN_LOOP_RULES.
    main_loop_instructions: int | None = None
    main_loop_fma_share: float | None = None


def loops(instructions: Sequence[Instruction]) -> list[tuple[int, int]]:
    """(first, last) addresses of every loop: a ``BRA`` back to an earlier address.

    A branch to its own address (the trap loop that ends every kernel) is no loop.
    """
    found = []
    for instruction in instructions:
        if instruction.base != "BRA":
            continue
        target = re.search(r"0x([0-9a-f]+)", instruction.operands)
        if target and int(target[1], 16) < instruction.address:
            found.append((int(target[1], 16), instruction.address))
    return found


def innermost_loop(instructions: Sequence[Instruction]) -> list[Instruction]:
    """The instructions of the largest loop that holds no other loop (empty without loops)."""
    spans = set(loops(instructions))
    innermost = [
        (first, last)
        for first, last in spans
        if not any((f, l) != (first, last) and first <= f and l <= last for f, l in spans)
    ]
    bodies = [[i for i in instructions if first <= i.address <= last] for first, last in innermost]
    return max(bodies, key=len, default=[])


def count_sass(instructions: Sequence[Instruction], main_loop: bool = False) -> SassCounts:
    """Count one kernel's instructions; ``main_loop`` adds its innermost loop's FMA share."""
    bases = Counter(i.base for i in instructions)
    counts = SassCounts(
        instructions=len(instructions),
        ffma=bases["FFMA"],
        dfma=bases["DFMA"],
        shared_loads=dict(Counter(_width(i.opcode) for i in instructions if i.base == "LDS")),
        global_loads=dict(Counter(_width(i.opcode) for i in instructions if i.base == "LDG")),
        local_loads=bases["LDL"],
        local_stores=bases["STL"],
    )
    if main_loop:
        body = innermost_loop(instructions)
        fma = sum(i.base in ("FFMA", "DFMA") for i in body)
        counts.main_loop_instructions = len(body)
        counts.main_loop_fma_share = fma / len(body) if body else 0.0
    return counts


# --- the profile ------------------------------------------------------------------------


@dataclass
class KernelProfile:
    """One kernel instance on one architecture."""

    expression: str
    file: str
    arch: str
    mangled: str | None
    threads: int
    hot: bool
    #: False where its source failed to compile (the compile error says why).
    compiled: bool = True
    registers: int | None = None
    shared_bytes: int | None = None
    dynamic_shared_bytes: int | None = None
    stack_bytes: int | None = None
    spill_store_bytes: int | None = None
    spill_load_bytes: int | None = None
    occupancy: float | None = None
    occupancy_limited_by: str | None = None
    sass: SassCounts | None = None

    def problems(self) -> list[str]:
        """Why this kernel fails the check: missing from the log, spills or local memory."""
        if not self.compiled:
            return []
        if self.registers is None:
            return [f"{self.expression} ({self.arch}): no ptxas report (name not mapped)"]
        found = []
        if self.spill_store_bytes or self.spill_load_bytes:
            found.append(
                f"spills {self.spill_store_bytes} B stored, {self.spill_load_bytes} B loaded"
            )
        if self.stack_bytes:
            found.append(f"{self.stack_bytes} B stack frame")
        if self.sass and (self.sass.local_loads or self.sass.local_stores):
            found.append(f"{self.sass.local_loads} LDL, {self.sass.local_stores} STL")
        return [f"{self.expression} ({self.arch}): {', '.join(found)}"] if found else []


def _template_name(expression: str) -> str:
    return expression.split("<", 1)[0].strip()


def _matches(entry: str, expression: str, c_type: str) -> bool:
    """Whether a ``HOT`` or ``THREADS`` key names this expression: the full expression
    (``{T}`` for the C type) or its template name, with or without ``fastcnn::``."""
    entry = entry.replace("{T}", c_type)
    name = _template_name(expression)
    return re.sub(r"\s+", "", entry) == re.sub(r"\s+", "", expression) or entry in (
        name,
        name.removeprefix("fastcnn::"),
    )


@dataclass(frozen=True)
class LaunchFacts:
    """What a launch-code module says of its kernels: block size and which are hot."""

    threads: int | dict = DEFAULT_THREADS
    hot: tuple[str, ...] | None = None
    #: The module's ``launch_shape(expression) -> (threads, dynamic shared bytes) | None``.
    launch_shape: Callable | None = None

    def shape_of(self, expression: str, c_type: str) -> tuple[int, int]:
        """Threads per block and dynamic shared memory bytes the launch code uses."""
        if self.launch_shape is not None and (shape := self.launch_shape(expression)):
            return int(shape[0]), int(shape[1])
        if isinstance(self.threads, int):
            return self.threads, 0
        for entry, threads in self.threads.items():
            if _matches(entry, expression, c_type):
                return threads, 0
        return DEFAULT_THREADS, 0

    def is_hot(self, expression: str, c_type: str) -> bool:
        return self.hot is None or any(_matches(e, expression, c_type) for e in self.hot)


def launch_facts() -> dict[str, LaunchFacts]:
    """Per kernel file, its launch-code module's ``THREADS`` and ``HOT``."""
    from fastcnn.backends.cuda import _families

    facts = {}
    for module in _families.modules():
        source = getattr(module, "SOURCE", None)
        if source is not None:
            hot = getattr(module, "HOT", None)
            facts[source.file] = LaunchFacts(
                getattr(module, "THREADS", DEFAULT_THREADS),
                None if hot is None else tuple(hot),
                getattr(module, "launch_shape", None),
            )
    return facts


def _profile(compiled: Compiled, facts: LaunchFacts, sass: bool) -> list[KernelProfile]:
    report = parse_ptxas(compiled.log)
    disassembly = disassemble(compiled.cubin) if sass and compiled.cubin else {}
    limits = SM_LIMITS.get(compiled.arch, SM_LIMITS["sm_90"])
    profiles = []
    for expression in compiled.expressions:
        mangled = compiled.lowered.get(expression)
        threads, dynamic_shared_bytes = facts.shape_of(expression, compiled.c_type)
        profile = KernelProfile(
            expression,
            compiled.file,
            compiled.arch,
            mangled,
            threads,
            facts.is_hot(expression, compiled.c_type),
            compiled.ok,
        )
        if (function := report.get(mangled)) is not None:
            profile.registers = function.registers
            profile.shared_bytes = function.shared_bytes
            profile.dynamic_shared_bytes = dynamic_shared_bytes
            # a kernel's stack and spills are reported under its own name
            profile.stack_bytes = function.stack_bytes
            profile.spill_store_bytes = function.spill_store_bytes
            profile.spill_load_bytes = function.spill_load_bytes
            shared = function.shared_bytes + dynamic_shared_bytes
            fit = occupancy(function.registers, threads, shared, limits)
            profile.occupancy, profile.occupancy_limited_by = fit.fraction, fit.limited_by
        if mangled in disassembly:
            main_loop = any(all(p in expression for p in rule) for rule in MAIN_LOOP_RULES)
            profile.sass = count_sass(disassembly[mangled], main_loop)
        profiles.append(profile)
    return profiles


@dataclass
class CheckResult:
    """Every compile and the profile of every kernel instance."""

    compiles: list[Compiled]
    profiles: list[KernelProfile]

    @property
    def compile_errors(self) -> list[str]:
        return [
            f"{c.file} <{c.c_type}> {c.arch} ({c.compiler}):\n{c.log.strip()}"
            for c in self.compiles
            if not c.ok
        ]

    @property
    def problems(self) -> list[str]:
        """Spills and local memory of hot kernels, and kernels ptxas did not report."""
        return [p for profile in self.profiles if profile.hot for p in profile.problems()]

    @property
    def ok(self) -> bool:
        return not self.compile_errors and not self.problems


def check(
    archs: Iterable[str] = CHECK_ARCHS,
    sass_arch: str | None = "sm_90",
    compiler: str = "auto",
    sources=None,
    workers: int | None = None,
) -> CheckResult:
    """Compile every source for every C type and architecture and profile every kernel.

    Parameters
    ----------
    archs : iterable of str
        Architectures to compile for (real ones: ``sm_80``, ``sm_90``).
    sass_arch : str or None
        The architecture whose cubins are disassembled; None for no SASS.
    compiler : str
        ``"nvrtc"``, ``"nvcc"`` or ``"auto"``.
    sources : list of Source, optional
        Default: every source of the CUDA backends.
    workers : int, optional
        Compiles run in parallel threads (NVRTC and nvcc release the GIL); default the CPUs.

    Returns
    -------
    CheckResult
        ``ok`` is False on a compile error or a spill or local memory in a hot kernel.
    """
    from fastcnn.backends.cuda import _families

    sources = _families.sources() if sources is None else sources
    facts = launch_facts()
    jobs = [(s, t, a) for a in dict.fromkeys(archs) for s in sources for t in C_TYPES]
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        compiles = list(pool.map(lambda job: compile_source(*job, compiler=compiler), jobs))

        def profile(compiled: Compiled) -> list[KernelProfile]:
            facts_of = facts.get(compiled.file, LaunchFacts())
            return _profile(compiled, facts_of, compiled.arch == sass_arch)

        profiles = [p for ps in pool.map(profile, compiles) for p in ps]
    return CheckResult(compiles, profiles)


# --- the table --------------------------------------------------------------------------


def _short(expression: str) -> str:
    return expression.replace("fastcnn::", "")


def _loads(widths: dict[int, int]) -> str:
    return " ".join(f"{count}x{width}" for width, count in sorted(widths.items())) or "-"


def table(profiles: Sequence[KernelProfile], arch: str = "sm_90") -> str:
    """A Markdown table of one architecture's kernels (SASS columns where disassembled)."""
    rows = [p for p in profiles if p.arch == arch]
    with_sass = any(p.sass for p in rows)
    header = ["kernel", "regs", "smem B (+dyn)", "stack B", "spill st/ld B", "threads", "occupancy"]
    if with_sass:
        header += ["instr", "FFMA", "DFMA", "LDS (n x bits)", "LDG (n x bits)", "LDL/STL",
                   "loop FMA"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for p in rows:
        if p.registers is None:
            missing = "compile error" if not p.compiled else "no ptxas report"
            cells = [_short(p.expression), missing, *["-"] * (len(header) - 2)]
        else:
            cells = [
                _short(p.expression) + ("" if p.hot else " (not hot)"),
                str(p.registers),
                f"{p.shared_bytes}+{p.dynamic_shared_bytes}"
                if p.dynamic_shared_bytes
                else str(p.shared_bytes),
                str(p.stack_bytes),
                f"{p.spill_store_bytes}/{p.spill_load_bytes}",
                str(p.threads),
                f"{p.occupancy:.0%} ({p.occupancy_limited_by})",
            ]
            if with_sass:
                s = p.sass
                loop = (
                    "-"
                    if s is None or s.main_loop_fma_share is None
                    else f"{s.main_loop_fma_share:.0%} of {s.main_loop_instructions}"
                )
                cells += (
                    ["-"] * 7
                    if s is None
                    else [str(s.instructions), str(s.ffma), str(s.dfma), _loads(s.shared_loads),
                          _loads(s.global_loads), f"{s.local_loads}/{s.local_stores}", loop]
                )  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fastcnn.cudacheck``: print the table; 1 on a compile error or a hot spill."""
    parser = argparse.ArgumentParser(
        prog="python -m fastcnn.cudacheck", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--arch", default="sm_90", help="architecture of the table (default sm_90)")
    parser.add_argument("--sass", action="store_true", help="disassemble and count instructions")
    parser.add_argument("--json", metavar="PATH", help="write every compile and profile as JSON")
    parser.add_argument("--compiler", choices=("auto", "nvrtc", "nvcc"), default="auto")
    args = parser.parse_args(argv)
    try:
        result = check(
            archs=(*CHECK_ARCHS, args.arch),
            sass_arch=args.arch if args.sass else None,
            compiler=args.compiler,
        )
    except CompilerUnavailable as error:
        print(f"cudacheck: {error}", file=sys.stderr)
        return 2
    compilers = sorted({c.compiler for c in result.compiles})
    archs = ", ".join(dict.fromkeys(c.arch for c in result.compiles))
    print(f"{len(result.compiles)} compiles ({', '.join(compilers)}; {archs}), "
          f"{len(result.profiles)} kernel instances; table: {args.arch}\n")  # fmt: skip
    print(table(result.profiles, args.arch))
    for error in result.compile_errors:
        print(f"\nCOMPILE ERROR {error}")
    for problem in result.problems:
        print(f"\nHOT KERNEL {problem}")
    if args.json:
        payload = {
            "compiles": [
                {k: v for k, v in asdict(c).items() if k != "cubin"} for c in result.compiles
            ],
            "profiles": [asdict(p) for p in result.profiles],
            "ok": result.ok,
        }
        Path(args.json).write_text(json.dumps(payload, indent=1))
    print("\nok" if result.ok else "\nFAILED")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
