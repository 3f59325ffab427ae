"""Matrix products C = A @ B for the convolution kernels, single-threaded per call.
Algorithm: a register-blocked MR x NR micro-kernel over packed A panels (Goto / BLIS).

B is never packed for the forward convolutions: the micro-kernel reads row k of B at
``b[b0 + offsets[k] + j]``, so the "rows" of B can be shifted views of one image (the
taps of a direct convolution), the channels of an image (a 1x1 convolution) or the
rows of a column matrix (im2col). Callers keep every read in bounds: the source has
NR elements of slack after the last row, or :func:`multiply_rows` copies the last,
partial column panel into a zero-padded buffer.

The accumulators live in a stack array that LLVM keeps in registers: with MR=6,
NR=64 they are 24 zmm registers in float32 (6 rows x 4 vectors of 16); each step k
loads 4 vectors of B and broadcasts 6 values of A for 24 FMAs (768 FLOPs).
Measured ~260 GFLOP/s on one Zen 5 core with the data in L1. The loop over j is the
outer one on purpose: with i outer, LLVM vectorises across i with gathers (50x slower).
float64 uses the same tile (48 registers: it spills, at about half speed).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from fastcnn.backends.numba._setup import jit

#: Rows of A (output channels) and columns of B (output positions) per micro-tile.
MR = 6
NR = 64
_TILE = MR * NR
#: Depth of one pass over A and B: a 6 x 256 panel of A (6 KB) and 256 rows of B.
KC = 256
#: The offsets argument of a kernel whose B rows are evenly spaced (never read).
_NO_OFFSETS = np.zeros(1, np.int64)


@intrinsic
def _stack_like(typingctx, size, like):
    """A pointer to ``size`` elements of ``like``'s dtype on the stack (a constant size)."""
    if not isinstance(size, types.IntegerLiteral):
        return None

    def codegen(context, builder, signature, args):
        element = context.get_value_type(like.dtype)
        count = context.get_constant(types.intp, size.literal_value)
        return cgutils.alloca_once(builder, element, size=count)

    return types.CPointer(like.dtype)(size, like), codegen


@intrinsic
def lane_sum(typingctx, array, start):
    """array[start] + ... + array[start + 15] as one vector reduction (a shuffle tree).

    Written as a loop, LLVM vectorises the sums of a whole register block across blocks
    with gathers; a dot-product kernel's final sums then cost as much as hundreds of its
    steps. ``start`` must leave 16 elements in the array (not checked)."""
    if not isinstance(array, types.Array) or array.dtype not in (types.float32, types.float64):
        return None

    def codegen(context, builder, signature, args):
        element = context.get_value_type(array.dtype)
        vector = ir.VectorType(element, 16)
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        pointer = builder.bitcast(builder.gep(data, [args[1]]), vector.as_pointer())
        values = builder.load(pointer, align=array.dtype.bitwidth // 8)
        bits = array.dtype.bitwidth
        function = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(element, [element, vector]),
            f"llvm.vector.reduce.fadd.v16f{bits}",
        )
        zero = ir.Constant(element, 0.0)
        return builder.call(function, [zero, values], fastmath=("reassoc",))

    return array.dtype(array, types.intp), codegen


@intrinsic
def prefetch(typingctx, array, index):
    """Ask for the cache line holding ``array[index]`` to come into L1 (a hint: an
    address past the array's end is harmless, it never faults)."""
    if not isinstance(array, types.Array):
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        pointer = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(8).as_pointer())
        function = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(ir.VoidType(), [pointer.type] + [ir.IntType(32)] * 3),
            "llvm.prefetch.p0",
        )
        flags = [ir.Constant(ir.IntType(32), value) for value in (0, 3, 1)]  # read, keep, data
        builder.call(function, [pointer, *flags])
        return context.get_dummy_value()

    return types.none(array, types.intp), codegen


@jit(inline="always")
def _tile(kc, a, a0, b, offsets, o0, b0, ldb, c, c0, ldc, m, n, first, init, i0):
    # The micro-kernel proper: row k of B starts at b[b0 + k*ldb], or at
    # b[b0 + offsets[o0 + k]] when ldb is 0 (the branch is loop-invariant: LLVM unswitches).
    acc = numba.carray(_stack_like(_TILE, c), _TILE)
    for t in range(_TILE):
        acc[t] = 0
    for k in range(kc):
        # Slices, not a[a0 + ...]: indices known to be >= 0 need no wraparound select,
        # which would otherwise turn the vector loads into gathers (10x slower).
        a_row = a[a0 + k * MR : a0 + k * MR + MR]
        start = b0 + (k * ldb if ldb > 0 else offsets[o0 + k])
        b_row = b[start : start + NR]
        for j in range(NR):
            value = b_row[j]
            for i in range(MR):
                acc[i * NR + j] += a_row[i] * value
    # Stores through a slice too: c[row + j] compiles to scalar loads and stores, which
    # cost as much as a 64-deep pass of the loop above (150 vs 255 GFLOP/s at kc = 64).
    for i in range(m):
        row = c0 + i * ldc
        target = c[row : row + n]
        if first:
            start = init[i0 + i]
            for j in range(n):
                target[j] = start + acc[i * NR + j]
        else:
            for j in range(n):
                target[j] += acc[i * NR + j]


@jit
def micro_kernel(kc, a, a0, b, offsets, o0, b0, c, c0, ldc, m, n, first, init, i0):
    """c[c0 + i*ldc + j] (=, or += unless ``first``) sum_k a[a0 + k*MR + i] * b[row k][j].

    Row k of B starts at ``b[b0 + offsets[o0 + k]]``; only the top-left m x n of the
    tile is stored; ``first`` stores ``init[i0 + i] + sum`` (the bias) instead of adding.
    """
    _tile(kc, a, a0, b, offsets, o0, b0, 0, c, c0, ldc, m, n, first, init, i0)


@jit
def micro_kernel_packed(kc, a, a0, b, b0, c, c0, ldc, m, n, first, init, i0):
    """As :func:`micro_kernel`, for B packed as kc contiguous rows of NR: row k at b0 + k*NR."""
    _tile(kc, a, a0, b, _NO_OFFSETS, 0, b0, NR, c, c0, ldc, m, n, first, init, i0)


@jit(inline="always")
def _pack_panel(src, offset, row_stride, col_stride, rows, depth, packed, packed0, p):
    base = packed0 + p * depth * MR
    if (p + 1) * MR <= rows:  # a full panel: no bounds test per element
        for k in range(depth):
            source = offset + p * MR * row_stride + k * col_stride
            target = packed[base + k * MR : base + k * MR + MR]
            for i in range(MR):
                target[i] = src[source + i * row_stride]
        return
    for k in range(depth):
        for i in range(MR):
            row = p * MR + i
            value = src[offset + row * row_stride + k * col_stride] if row < rows else 0
            packed[base + k * MR + i] = value


@jit
def pack_a(src, offset, row_stride, col_stride, rows, depth, packed, packed0):
    """Copy A (rows x depth, any strides) into MR-row panels at ``packed[packed0:]``:
    packed[p, k, i] = A[p*MR + i, k] = src[offset + (p*MR + i)*row_stride + k*col_stride].

    Rows past the end are zero, so every micro-tile of A is full; the panels take
    ``panels(rows) * depth * MR`` elements.
    """
    for p in range((rows + MR - 1) // MR):
        _pack_panel(src, offset, row_stride, col_stride, rows, depth, packed, packed0, p)


@jit(parallel=True)
def pack_groups(src, groups, group_offset, row_stride, col_stride, rows, depth, packed):
    """:func:`pack_a` for ``groups`` matrices (group g's at ``src[g*group_offset:]``,
    its panels after group g-1's), the panels shared out among the threads. Packing a
    layer's weights is a pass over all of them each call: 1M elements at 512 -> 2048
    channels, about 1 ms on one thread."""
    count = (rows + MR - 1) // MR
    for task in prange(groups * count):
        g, p = task // count, task % count
        _pack_panel(
            src, g * group_offset, row_stride, col_stride, rows, depth, packed,
            g * count * depth * MR, p,
        )  # fmt: skip


def panels(rows: int) -> int:
    return (rows + MR - 1) // MR


@jit
def multiply_rows(
    a, a0, rows, depth, b, offsets, b0, columns, safe, c, c0, ldc, init, i0, accumulate, tail
):
    """C[:rows, :columns] (=, or += when ``accumulate``) A @ B, B given by row offsets.

    ``a[a0:]`` is A packed by :func:`pack_a` (``depth`` deep). Row k of B is
    ``b[b0 + offsets[k] : ... + columns]``; reads up to ``b0 + offsets[k] + safe`` are in
    bounds, so a column panel reaching past ``safe`` is first copied, zero-padded, into
    ``tail`` (``depth * NR`` elements). Rows of C start at ``c0 + i*ldc``; ``init[i0+i]`` is
    the bias when not accumulating. FLOPs: 2 * rows * depth * columns.
    """
    for j0 in range(0, columns, NR):
        width = min(NR, columns - j0)
        source, source0, ldb = b, b0 + j0, 0
        if j0 + NR > safe:
            for k in range(depth):
                for j in range(NR):
                    inside = j0 + j < min(columns, safe)
                    tail[k * NR + j] = b[b0 + offsets[k] + j0 + j] if inside else 0
            source, source0, ldb = tail, 0, NR
        for k0 in range(0, depth, KC):
            kc = min(KC, depth - k0)
            first = k0 == 0 and not accumulate
            for p in range((rows + MR - 1) // MR):
                _tile(
                    kc,
                    a,
                    a0 + p * depth * MR + k0 * MR,
                    source,
                    offsets,
                    k0,
                    source0 + k0 * ldb,
                    ldb,
                    c,
                    c0 + p * MR * ldc + j0,
                    ldc,
                    min(MR, rows - p * MR),
                    width,
                    first,
                    init,
                    i0 + p * MR,
                )


#: Depth of one pass of :func:`multiply_images`. 256 measured faster than 128 (a 32 KB B
#: panel that fits L1) on every ResNet-50 1x1 layer: half the passes over C, and the
#: 64 KB panel is read from L2 at a rate the micro-kernel sustains.
KC_IMAGES = 256
#: Rows ahead that :func:`_pack_image_columns` prefetches.
AHEAD = 8
#: Column panels per task of :func:`multiply_images` (their packed B: 256 KB, in L2).
PANELS_IMAGES = 4


@jit
def _pack_image_columns(x, depth, plane, W, sh, sw, HW, Q, columns, k0, kc, col0, packed):
    """packed[k*NR + j] = x[n, k0 + k, p*sh, q*sw] (x's planes: ``plane`` elements, rows
    W wide) for the flat column col0 + j = n*HW + p*Q + q of the images side by side;
    columns at or past ``columns`` (= N*HW) are zero."""
    j = 0
    while j < NR:
        col = col0 + j
        if col >= columns:
            for k in range(kc):
                for u in range(j, NR):
                    packed[k * NR + u] = 0
            break
        n, pq = col // HW, col % HW
        if sh == 1 and sw == 1:  # positions are contiguous within an image
            run = min(NR - j, HW - pq, columns - col)
            source = (n * depth + k0) * plane + pq
        else:  # strided: one output row at a time
            p, q = pq // Q, pq % Q
            run = min(NR - j, Q - q, columns - col)
            source = (n * depth + k0) * plane + p * sh * W + q * sw
        if sw == 1:  # a vectorised copy (a runtime stride of 1 stays scalar)
            for k in range(kc):
                start = source + k * plane
                # The rows are planes apart: too many streams for the hardware
                # prefetcher when x comes from DRAM. Ask for row k + AHEAD's lines now.
                ahead = start + AHEAD * plane
                for line in range(0, run, 16):
                    prefetch(x, ahead + line)
                packed[k * NR + j : k * NR + j + run] = x[start : start + run]
        else:
            for k in range(kc):
                row = packed[k * NR + j : k * NR + j + run]
                start = source + k * plane
                values = x[start : start + (run - 1) * sw + 1]
                for u in range(run):
                    row[u] = values[u * sw]
        j += run


@jit(parallel=True)
def multiply_images(
    a, M, depth, x, plane, W, sh, sw, N, HW, Q, init, y, parts, b_scratch, c_scratch
):
    """y[n, i, p, q] = init[i] + sum_k A[i, k] * x[n, k, p*sh, q*sw] (x's planes: ``plane``
    elements, rows W wide; y's: HW = P*Q) for every image n: a 1x1 convolution as one GEMM of
    A (M x depth, packed by :func:`pack_a`) with the images side by side (depth x N*HW),
    so small images fill whole NR-wide column panels. FLOPs: 2 * M * depth * N * HW.

    Each task is a block of up to ``PANELS_IMAGES`` column panels (one for images smaller
    than that) and a range of A's row panels. B's panels are packed ``KC_IMAGES`` rows
    at a time (L2); for each MR-row panel of A (L1) the block's panels follow one
    another, so each row of y is written in one long run, which the prefetcher follows.
    A panel that straddles two images is computed into ``c_scratch`` and copied out.
    Scratch per part: ``PANELS_IMAGES * KC_IMAGES * NR`` (b) and
    ``PANELS_IMAGES * panels(M) * MR * NR`` (c) elements.
    """
    columns = N * HW
    column_panels = (columns + NR - 1) // NR
    block = PANELS_IMAGES if HW >= PANELS_IMAGES * NR else 1
    blocks = (column_panels + block - 1) // block
    row_panels = (M + MR - 1) // MR
    splits = 1  # split the rows too when there are few column blocks per thread
    while blocks * splits < 8 * parts and splits * 2 <= row_panels:
        splits *= 2
    work = blocks * splits
    b_size = PANELS_IMAGES * KC_IMAGES * NR
    c_size = PANELS_IMAGES * row_panels * MR * NR
    for part in prange(parts):
        b = b_scratch[part * b_size : (part + 1) * b_size]
        c = c_scratch[part * c_size : (part + 1) * c_size]
        for task in range(part * work // parts, (part + 1) * work // parts):
            jb, s = task // splits, task % splits
            p_lo, p_hi = s * row_panels // splits, (s + 1) * row_panels // splits
            j_lo = jb * block
            j_hi = min(j_lo + block, column_panels)
            for k0 in range(0, depth, KC_IMAGES):
                kc = min(KC_IMAGES, depth - k0)
                for jp in range(j_lo, j_hi):
                    _pack_image_columns(
                        x, depth, plane, W, sh, sw, HW, Q, columns, k0, kc, jp * NR,
                        b[(jp - j_lo) * kc * NR :],
                    )  # fmt: skip
                for p in range(p_lo, p_hi):
                    for jp in range(j_lo, j_hi):
                        col0 = jp * NR
                        width = min(NR, columns - col0)
                        n0, pq0 = col0 // HW, col0 % HW
                        if pq0 + width <= HW:
                            target, c0, ldc = y, (n0 * M + p * MR) * HW + pq0, HW
                        else:
                            target, c0, ldc = c, ((jp - j_lo) * row_panels + p) * MR * NR, NR
                        _tile(
                            kc, a, p * depth * MR + k0 * MR, b, _NO_OFFSETS, 0,
                            (jp - j_lo) * kc * NR, NR, target, c0, ldc,
                            min(MR, M - p * MR), width, k0 == 0, init, p * MR,
                        )  # fmt: skip
            for jp in range(j_lo, j_hi):
                col0 = jp * NR
                width = min(NR, columns - col0)
                if col0 % HW + width <= HW:
                    continue
                j = 0
                while j < width:
                    n, pq = (col0 + j) // HW, (col0 + j) % HW
                    run = min(width - j, HW - pq)
                    for i in range(p_lo * MR, min(p_hi * MR, M)):
                        out = (n * M + i) * HW + pq
                        source = ((jp - j_lo) * row_panels * MR + i) * NR + j
                        y[out : out + run] = c[source : source + run]  # a vector copy
                    j += run
