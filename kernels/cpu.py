"""The Numba backend: every op of fastnn/ops.py as a jitted CPU kernel, same names, signatures, meaning.

    from kernels import cpu
    data = cpu.prepare_data(images, labels, 1 / 255)  # once per fit: sparse images also kept as CSR
    losses, n_correct = cpu.train_steps(params, grads, optimizer, buffers, data, steps, hyper)

Dimension letters (fastnn/ops.py's): B = batch size, C = input features of a layer, OC = output
features, K = classes, L = layers. Weights are stored (C, OC). Outputs come first and are overwritten.

How train_steps computes a step:
- A first layer fed sparse images (MNIST: 81% exact zeros) works on their non-zeros only. Below
  LISTED_FROM_UNITS units, on their CSR form (prepare_data): its forward adds, for each image, the
  weight rows of its non-zero pixels; its weight gradient adds each non-zero pixel's share into that
  pixel's weight row. From it on, on the micro-kernel's listed tiles: each step lists, per tile of
  images, the pixels where one of them is not 0 (and per tile of pixels, the images), and the tiles
  add only those terms (_nonzero_terms, _listed_tile).
- Every dense product (hidden layers' forward, input gradient and weight gradient; the last layer)
  runs on one micro-kernel, _tile_intrinsic: BLIS's outer-product form, a tile of TILE_ROWS x
  (TILE_VECTORS x 64 bytes) sums held in vector registers for the whole sum, written in LLVM IR
  through numba's intrinsic API (numba cannot be made to emit it from Python source). _product
  wraps it in BLIS's loops: blocks of the sum, the second operand packed per block (read as b or as
  b.T: the input gradient reads the weight transposed, so no transpose of it is kept), tiles at the
  edges masked. The forward kernels also write the transpose of their output, a tile at a time, for
  the weight gradient that sums over the batch.
- The last layer (the K classes) and the loss run per block of TILE_ROWS samples.
- Dropout happens in the epilogues of the kernels that produce an activation (the gathered pixels,
  each hidden layer's ReLU), its mask bits hashed from (seed, step number, layer, row, unit) as
  fastnn.ops.dropout_keep draws them; the updates (SGD or Adam, chosen once per block) follow each
  weight gradient, in contiguous chunks; max-norm, when on, is one more region per layer after them.
A step is about 3L parallel regions for L layers, each a loop over fixed-size blocks of its outputs.

Parallelism: each block of outputs is owned by one iteration, which adds in a fixed order: results
are bitwise identical run to run and for any number of threads, and more cores take more blocks.
Kernels allocate nothing in parallel code: the model owns every buffer and passes views (a partial
last batch is `buf[:n]`). They do not validate either; the model does, once.

Two numba rules shape the inner loops (docs/numba.md): rows are indexed in place, not sliced into
views (each view costs two atomic reference-count updates), and a loop index that numba cannot prove
non-negative runs unsigned (range(uint64(a), uint64(b))): the wraparound check numba adds for
negative signed indices stops LLVM from vectorising.

Every jitted function that train_steps calls, and every tunable they read, lives in this module:
numba's cache notices changes to a function's own file only. The numbered versions that led here are
in kernels/dev/.
"""
import sys
import time
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numba
import numpy as np
from llvmlite import binding, ir
from numba import njit, prange, types, typeof, uint64
from numba.core import cgutils
from numba.core.registry import CPUDispatcher
from numba.extending import intrinsic
from numba.np.ufunc.parallel import _iget_num_threads

from fastnn.bundles import Steps
from fastnn.settings import ADAMW, SGD

# ---- tunables ----------------------------------------------------------------------------------
# They live here, beside the kernels that read them, on purpose: numba freezes a global's value into
# the compiled code, and its on-disk cache is invalidated only when this file changes.

# Every fast-math flag except nnan/ninf: NaN and inf keep their meaning (a diverged loss stays NaN).
# reassoc + contract are what let float reductions vectorise and fuse into FMAs (5x without them).
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
# The micro-kernel's tile (_tile_intrinsic): TILE_ROWS rows x TILE_VECTORS vectors of VECTOR_BYTES
# (16 float32 or 8 float64 each), that many vector registers of sums. Chosen by measurement
# (`python -m kernels.dev.tile_shapes`). With 32 vector registers (AVX-512): 12 x 2, 24 registers of
# sums, 2 for the row of b, 1 broadcast. With 16 (AVX2: a 64-byte vector is two ymm): 6 x 1, 12 of
# them, BLIS's Haswell shape; any other CPU takes that too.
VECTOR_BYTES = 64
TILE_ROWS, TILE_VECTORS = (12, 2) if binding.get_host_cpu_features().get("avx512f") else (6, 1)
# BLIS's blocking around the micro-kernel (_product), measured with `python -m kernels.dev.tile_shapes`
# on the 2-core AVX-512 machine (docs/numba.md): a block of the sum is DEPTH_BLOCK terms deep; a
# parallel task is a panel of PANEL_ROWS x PANEL_COLS outputs, multiples of a tile's rows and of its
# columns in either dtype. Each task packs its columns of b once per depth block and reuses them for
# all its rows, so tall panels pack less often: 48 rows ran the 1024-wide products at 0.70x of BLAS,
# 192 at 0.85x, 264 at 0.9x (one panel for a batch of 256). Column panels run outermost, so a thread's
# consecutive panels share the same columns of b.
DEPTH_BLOCK = 256
PANEL_ROWS = 264  # 22 tiles of 12 rows, 44 of 6
PANEL_COLS = 64
# Floats of a thread's packed block of b (_product): DEPTH_BLOCK x PANEL_COLS.
PACK_SIZE = DEPTH_BLOCK * PANEL_COLS
# The sparse weight gradient's parallel task: PIXEL_BLOCK rows of the first weight (at most 64: a
# bit mask of int64 records which rows the batch touched).
PIXEL_BLOCK = 16
# Images with at most this share of non-zero pixels take a sparse first layer (MNIST: 0.19): below
# LISTED_FROM_UNITS units the CSR rows of their non-zeros, from it on the micro-kernel's listed tiles,
# which add only the pixels where one of a tile's images is not 0 (kernels.dev.first_layer, ms per
# step, listed / CSR: 1.24-1.50 at 128 units, 1.05-1.10 at 256, 0.88-0.93 at 512, 0.73-0.89 at 1024).
SPARSE_DENSITY = 0.5
LISTED_FROM_UNITS = 512
# Elements per parallel task of an update (_update_flat); a smaller array (a bias) is one task, updated serially,
# since waking the thread pool costs more than the work.
SGD_CHUNK = 16384
# Constant arguments to the kernels' callees. numba compiles a callee anew for each literal it is
# passed (`_product(..., 0, ...)` types the argument Literal[int](0)), and its callers then carry one
# copy per literal: _product, the largest function here, was compiled four times for the train step.
# A np.int64 global is typed int64, so every call site shares one compiled version.
ZERO, ONE = np.int64(0), np.int64(1)
B_AS_IS, B_TRANSPOSED = ZERO, ONE  # _product's operand b, or b.T

# Start Numba's thread pool now. train_steps and forward are cached serial functions that call parallel
# kernels; when one was compiled while its kernels came from the cache, its own cache entry misses the
# hook that starts the pool on loading, and its first parallel kernel then segfaults (seen here, numba
# 0.68; the family of numba issue #8578).
numba.get_num_threads()

# What the first run of a machine prints before it compiles (measured on the 2-core development
# machine, cold cache: 16 s for the default preset, 14 s for the seed's; then well under a second to
# load them).
COMPILE_NOTICE = ("numba: compiling the kernels for this machine, once (about 15 s on 2 cores); "
                  "later runs load them from the cache in about a second")


def compile_notice():
    """COMPILE_NOTICE when _train_steps has nothing compiled in numba's cache for this source, else None.

    It reads numba's cache index through private attributes: if they move in a numba release, the
    notice is shown every time rather than never.
    """
    try:
        cached = bool(_train_steps._cache._cache_file._load_index())  # {} when absent or stale
    except Exception:  # a numba without these internals
        cached = False
    return None if cached else COMPILE_NOTICE


# Memory: the model's buffers are host NumPy arrays, exactly as for the NumPy reference.
empty = np.empty
to_device = np.ascontiguousarray
to_host = np.asarray


@njit(cache=True)
def _cdiv(n, d):
    return (n + d - 1) // d


# ---- the training set ---------------------------------------------------------------------------
class CsrData(NamedTuple):
    """The training set as this backend keeps it: fastnn.bundles.Data's fields and, when the images are
    sparse, their non-zeros in compressed sparse row (CSR) form."""
    images: np.ndarray  # (N, C) uint8 or float
    labels: np.ndarray  # (N,) int64
    scale: float  # a pixel's value is images[i, c] * scale
    sparse: bool  # whether the first layer runs on the non-zeros below
    row_start: np.ndarray  # (N + 1,) int64: image i's non-zeros are entries row_start[i]:row_start[i + 1]
    columns: np.ndarray  # (nnz,) int32 pixel of each non-zero, ascending within an image
    values: np.ndarray  # (nnz,) its value, as stored in images


@njit(parallel=True, cache=True)
def _count_nonzeros(counts, images):
    """counts (N,) = the number of non-zero pixels of each image (N, C)."""
    # prange over images: iteration i owns counts[i]
    for task in prange(images.shape[0]):
        i = np.int64(task)  # the parallel loop's index is unsigned: numba would type the body twice
        n = 0
        for c in range(images.shape[1]):
            n += images[i, c] != 0
        counts[i] = n


@njit(parallel=True, cache=True)
def _fill_csr(columns, values, row_start, images):
    """The non-zeros of images (N, C), row by row, into columns and values at the offsets row_start."""
    # prange over images: iteration i owns entries row_start[i]:row_start[i + 1]
    for task in prange(images.shape[0]):
        i = np.int64(task)  # the parallel loop's index is unsigned: numba would type the body twice
        p = row_start[i]
        for c in range(images.shape[1]):
            if images[i, c] != 0:
                columns[p] = c
                values[p] = images[i, c]
                p += 1


def prepare_data(images, labels, scale):
    """The training set for a whole fit: the arrays as given, plus a CSR copy of the images' non-zeros
    when at most SPARSE_DENSITY of the pixels are non-zero (MNIST's 60000 images: 9.0 M non-zeros,
    45 MB as int32 columns and uint8 values)."""
    counts = np.empty(len(images), np.int64)
    _count_nonzeros(counts, images)
    nnz = int(counts.sum())
    sparse = nnz <= SPARSE_DENSITY * images.size
    row_start = np.zeros(len(images) + 1 if sparse else 0, np.int64)
    columns, values = np.empty(nnz if sparse else 0, np.int32), np.empty(nnz if sparse else 0, images.dtype)
    if sparse:
        np.cumsum(counts, out=row_start[1:])
        _fill_csr(columns, values, row_start, images)
    return CsrData(images, labels, scale, sparse, row_start, columns, values)


# ---- the scratch memory of train_steps ------------------------------------------------------------
@njit(cache=True)
def scratch_size(sizes, batch_size):
    """Floats of StepBuffers.scratch that train_steps uses for layer sizes (C_0, ..., K).

    Each step rewrites all of it: each sample's loss and whether it was classified right (summed in
    sample order after the step); for sparse images, where each sample's non-zeros cross into each
    block of PIXEL_BLOCK pixels (int32); and the transpose of every layer's input (the weight
    gradients read it).
    """
    B = batch_size
    total = 2 * B + B * (_cdiv(sizes[0], PIXEL_BLOCK) + 1)
    for l in range(len(sizes) - 1):
        total += sizes[l] * B
    return total


@njit(cache=True)
def _step_parts(scratch, weights, B):
    """The start of the scratch for a step of B rows: (losses (B,), correct (B,), pixel-block starts
    (B, blocks + 1) int32, offset of the per-layer transposes)."""
    offset = 0
    n = _cdiv(weights[0].shape[0], PIXEL_BLOCK) + 1
    losses, correct = scratch[offset:offset + B], scratch[offset + B:offset + 2 * B]
    # int32 positions in the float scratch: as many of them as floats (float32), or twice as many
    block_start = scratch[offset + 2 * B:offset + 2 * B + B * n].view(np.int32).reshape((-1, n))[:B]
    return losses, correct, block_start, offset + 2 * B + B * n


@njit(cache=True)
def _input_t(scratch, weights, B, l):
    """Layer l's inp.T (C_l, B) for a step of B rows."""
    offset = _step_parts(scratch, weights, B)[3]
    for i in range(l):
        offset += weights[i].shape[0] * B
    C = weights[l].shape[0]
    return scratch[offset:offset + C * B].reshape((C, B))


# ---- the micro-kernel every dense product is made of ------------------------------------------------
def _tile_intrinsic(rows, vectors, listed=False):
    """The micro-kernel: a numba intrinsic that computes one tile of a product in LLVM vector code.

        _tile(out, i0, j0, a, a_start, a_row, b, b_start, depth, n_rows, n_cols, accumulate)
        out[i0 + i, j0 + j] (+)= sum over k < depth of A[i, k] * B[k, j]   for i < n_rows, j < n_cols
        where A[i, k] = a.flat[a_start + i * a_row + k]   (rows of a product's left operand)
              B[k, j] = b.flat[b_start + k * width + j]   (a packed panel: width = rows of vectors)

    Outer-product form, as BLIS, OpenBLAS and MKL micro-kernels: the tile, `rows` x `vectors` vectors
    of VECTOR_BYTES, stays in vector registers for the whole k loop, where each step loads `vectors`
    vectors of a row of B, broadcasts `rows` scalars of a column of A, and issues rows * vectors FMAs.
    LLVM does not build this from scalar code (it leaves 100+ loop-carried sums scalar and spills
    them: docs/numba.md), so the loop is written here as LLVM IR. It splits a 64-byte vector into the
    registers the CPU has (one zmm, two ymm, four NEON q).

    listed: the tile adds only listed terms, for the first layer's images with their zero pixels
    (_nonzero_terms lists them and packs A's values):
        _tile(out, i0, j0, a, a_start, b, b_start, depth, ks, ks_start, n_rows, n_cols, accumulate)
        out[i0 + i, j0 + j] (+)= sum over t < depth of a.flat[a_start + t * rows + i] * B[ks.flat[ks_start + t], j]
    A is packed term by term, so its loads stay affine: with A read at a listed k, LLVM hoisted the
    tile's 12 broadcasts above its FMAs and spilled half the sums to the stack.

    out: 2-D C-contiguous; a, b: C-contiguous, any number of dimensions; one float dtype; no bounds
    checks. B is a whole width wide (the packing pads the edge), so the loop loads whole vectors.
    n_rows in 1..rows: rows past it compute on row n_rows - 1 again and are not stored. n_cols in
    0..width: columns past it are masked off in the load and store of out (LLVM's masked load and
    store: no memory past them is touched). accumulate: 0 overwrites the tile, else adds to it.
    """
    @intrinsic
    def tile(typingctx, out, i0, j0, a, a_start, a_row, b, b_start, depth, n_rows, n_cols, accumulate):
        arrays = (out, a, b)
        if not (all(isinstance(x, types.Array) and x.layout == "C" and x.dtype == out.dtype for x in arrays)
                and out.ndim == 2 and out.dtype in (types.float32, types.float64)):
            return None  # numba then reports that no signature matches
        index = types.intp
        signature = types.void(out, index, index, a, index, index, b, index, index, index, index, index)
        return signature, partial(_emit_tile, rows, vectors, False)

    @intrinsic
    def listed_tile(typingctx, out, i0, j0, a, a_start, b, b_start, depth, ks, ks_start, n_rows, n_cols, accumulate):
        arrays = (out, a, b)
        if not (all(isinstance(x, types.Array) and x.layout == "C" and x.dtype == out.dtype for x in arrays)
                and out.ndim == 2 and out.dtype in (types.float32, types.float64)
                and isinstance(ks, types.Array) and ks.layout == "C" and ks.dtype == types.int32):
            return None
        index = types.intp
        signature = types.void(out, index, index, a, index, b, index, index, ks, index, index, index, index)
        return signature, partial(_emit_tile, rows, vectors, True)
    return listed_tile if listed else tile


def _emit_tile(rows, vectors, listed, context, builder, signature, args):
    """The LLVM IR of _tile_intrinsic(rows, vectors, listed)'s tile, at the builder's position."""
    if listed:
        out_, i0, j0, a_, a_start, b_, b_start, depth, ks_, ks_start, n_rows, n_cols, accumulate = args
        ks = context.make_array(signature.args[8])(context, builder, ks_)
    else:
        out_, i0, j0, a_, a_start, a_row, b_, b_start, depth, n_rows, n_cols, accumulate = args
    dtype = signature.args[0].dtype
    real = context.get_value_type(dtype)  # float or double
    size = dtype.bitwidth // 8
    width = VECTOR_BYTES // size  # lanes per vector: 16 float32, 8 float64
    vec = ir.VectorType(real, width)
    i1, i32, i64 = ir.IntType(1), ir.IntType(32), ir.IntType(64)
    out, a, b = (context.make_array(signature.args[n])(context, builder, x)
                 for n, x in ((0, out_), (3, a_), (5 if listed else 6, b_)))
    out_row_length = builder.extract_value(out.shape, 1)

    def index(i):
        return ir.Constant(i64, i)

    def splat(x, ty):  # x in every lane
        one = builder.insert_element(ir.Constant(ir.VectorType(ty, width), ir.Undefined), x, ir.Constant(i32, 0))
        return builder.shuffle_vector(one, one, ir.Constant(ir.VectorType(i32, width), [0] * width))

    name = f"v{width}f{dtype.bitwidth}"
    mask_type = ir.VectorType(i1, width)
    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3), f"llvm.fma.{name}")
    masked_load = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vec, [vec.as_pointer(), i32, mask_type, vec]), f"llvm.masked.load.{name}.p0")
    masked_store = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [vec, vec.as_pointer(), i32, mask_type]),
        f"llvm.masked.store.{name}.p0")
    zero = ir.Constant(vec, [0.0] * width)
    align = ir.Constant(i32, size)

    # before the loop: where each row of A starts (past n_rows: row n_rows - 1 again) and where B does
    # (listed: A's packed terms, rows past the edge packed as zeros)
    last_row = builder.sub(n_rows, index(1))
    a_rows = []
    for i in range(rows):
        if listed:
            a_rows.append(builder.gep(a.data, [builder.add(a_start, index(i))]))
        else:
            row = builder.select(builder.icmp_signed("<", index(i), n_rows), index(i), last_row)
            a_rows.append(builder.gep(a.data, [builder.add(a_start, builder.mul(row, a_row))]))
    b_panel = builder.gep(b.data, [b_start])

    # the k loop; its loop-carried values (k and the rows * vectors sums) come first in its block
    before = builder.block
    body, after = builder.append_basic_block("tile.k"), builder.append_basic_block("tile.done")
    builder.cbranch(builder.icmp_signed("<", index(0), depth), body, after)
    builder.position_at_end(body)
    k = builder.phi(i64)
    sums = [[builder.phi(vec) for _ in range(vectors)] for _ in range(rows)]
    if listed:  # k counts the listed terms; the row of B is the term's
        b_term = builder.sext(builder.load(builder.gep(ks.data, [builder.add(ks_start, k)])), i64)
    b_row = builder.gep(b_panel, [builder.mul(b_term if listed else k, index(vectors * width))])  # &B[k, 0]
    b_k = [builder.load(builder.bitcast(builder.gep(b_row, [index(v * width)]), vec.as_pointer()), align=size)
           for v in range(vectors)]  # B[k, v * width:(v + 1) * width]
    new = []
    for i in range(rows):
        a_offset = builder.mul(k, index(rows)) if listed else k
        a_ik = splat(builder.load(builder.gep(a_rows[i], [a_offset])), real)  # A[i, k] in every lane
        new.append([builder.call(fma, [a_ik, b_k[v], sums[i][v]]) for v in range(vectors)])
    k_next = builder.add(k, index(1))
    end = builder.block
    k.add_incoming(index(0), before)
    k.add_incoming(k_next, end)
    for i in range(rows):
        for v in range(vectors):
            sums[i][v].add_incoming(zero, before)
            sums[i][v].add_incoming(new[i][v], end)
    builder.cbranch(builder.icmp_signed("<", k_next, depth), body, after)

    # the tile into out: whole vectors, or masked ones at the edge; rows past n_rows not at all
    builder.position_at_end(after)
    tile = [[builder.phi(vec) for _ in range(vectors)] for _ in range(rows)]  # zeros for depth 0
    for i in range(rows):
        for v in range(vectors):
            tile[i][v].add_incoming(zero, before)
            tile[i][v].add_incoming(new[i][v], end)
    adding = builder.icmp_signed("!=", accumulate, index(0))
    lanes = ir.VectorType(i64, width)
    masks = [builder.icmp_signed("<", ir.Constant(lanes, [v * width + l for l in range(width)]), splat(n_cols, i64))
             for v in range(vectors)]  # lane l of vector v is a real column

    def store_rows(edge):
        for i in range(rows):
            with builder.if_then(builder.icmp_signed("<", index(i), n_rows), likely=True):
                start = builder.add(builder.mul(builder.add(i0, index(i)), out_row_length), j0)
                for v in range(vectors):
                    pointer = builder.bitcast(builder.gep(out.data, [builder.add(start, index(v * width))]),
                                              vec.as_pointer())
                    old = (builder.call(masked_load, [pointer, align, masks[v], zero]) if edge
                           else builder.load(pointer, align=size))
                    total = builder.select(adding, builder.fadd(old, tile[i][v]), tile[i][v])
                    if edge:
                        builder.call(masked_store, [total, pointer, align, masks[v]])
                    else:
                        builder.store(total, pointer, align=size)

    with builder.if_else(builder.icmp_signed("==", n_cols, index(vectors * width)), likely=True) as (whole, edge):
        with whole:
            store_rows(False)
        with edge:
            store_rows(True)
    return context.get_dummy_value()


_tile = _tile_intrinsic(TILE_ROWS, TILE_VECTORS)
_listed_tile = _tile_intrinsic(TILE_ROWS, TILE_VECTORS, listed=True)


@njit(cache=True)
def _depth_block(K):
    """The depth of _product's blocks of a sum of K terms: equal blocks of at most DEPTH_BLOCK (784 terms
    as 4 x 196, not 3 x 256 and a short 16)."""
    return max(_cdiv(K, max(_cdiv(K, DEPTH_BLOCK), 1)), 1)


@njit(parallel=True, cache=True)
def _nonzero_terms(terms, term_starts, packed, a):
    """The terms a product with a (M, K) on the left needs, tile of TILE_ROWS rows by tile: for each of
    _product's depth blocks, the k where a row of the tile is not 0, ascending, as offsets into the
    block (terms (tiles, K) int32, from term_starts[tile, block] (tiles, blocks + 1) on), and a's
    values at them, term by term (packed (tiles, K * TILE_ROWS): term n's TILE_ROWS values at
    n * TILE_ROWS, zeros past the last row). MNIST images: ~50% of the pixels for 12 images, ~49% of
    a batch's images for 12 pixels."""
    M, K = a.shape
    block = _depth_block(K)
    # prange over tiles of rows: iteration owns that row of terms, term_starts and packed
    for task in prange(_cdiv(M, TILE_ROWS)):
        tile = np.int64(task)  # the parallel loop's index is unsigned: numba would type the body twice
        i0, i1 = tile * TILE_ROWS, min(tile * TILE_ROWS + TILE_ROWS, M)
        n = 0
        for k0 in range(0, K, block):
            term_starts[tile, k0 // block] = n
            for k in range(k0, min(k0 + block, K)):
                nonzero = False
                for i in range(i0, i1):
                    nonzero |= a[i, k] != 0
                if nonzero:
                    terms[tile, n] = k - k0
                    for i in range(TILE_ROWS):
                        packed[tile, n * TILE_ROWS + i] = a[i0 + i, k] if i0 + i < i1 else 0
                    n += 1
        term_starts[tile, _cdiv(K, block)] = n


@njit(fastmath=FASTMATH, cache=True)
def _pack(panel, b, k0, k1, j0, j1, width, transposed):
    """panel <- B[k0:k1, j0:j1] in the micro-kernel's layout: for each tile's columns j, j + width, a
    (k1 - k0, width) block, contiguous, zeros past j1 (so that the micro-kernel loads whole vectors).
    B is b, or b.T if transposed (then b's rows are read along k and the panel written across)."""
    depth = k1 - k0
    for j in range(j0, j1, width):
        n = min(width, j1 - j)
        start = (j - j0) * depth  # (j - j0) // width tiles before this one, depth * width floats each
        # unsigned indices: a signed one gets numba's negative-index check, which stops vectorisation
        for k in range(uint64(0), uint64(depth)):
            for c in range(uint64(n), uint64(width)):
                panel[uint64(start) + k * uint64(width) + c] = 0
        if transposed:
            for c in range(n):
                for k in range(uint64(0), uint64(depth)):
                    panel[uint64(start + c) + k * uint64(width)] = b[j + c, uint64(k0) + k]
        else:
            for k in range(uint64(0), uint64(depth)):
                row, source = uint64(start) + k * uint64(width), uint64(k0) + k
                for c in range(uint64(0), uint64(n)):
                    panel[row + c] = b[source, uint64(j) + c]


@njit(fastmath=FASTMATH, cache=True)
def _product(out, a, b, i0, i1, j0, j1, packs, transposed, terms, term_starts, packed):
    """out[i0:i1, j0:j1] = a[i0:i1] (., K) @ B (K, .)[:, j0:j1], tile by tile, PANEL_COLS columns at a
    time; B is b, or b.T if transposed (an int: numba compiles a function anew for each bool constant).
    terms, term_starts, packed: _nonzero_terms' listing of a, whose tiles then add only the terms where
    a row of the tile is not 0 (_listed_tile); with no rows (_every_term): every term (_tile).

    BLIS's loops around the micro-kernel. The sum is cut in blocks of DEPTH_BLOCK; for each, the block
    of b is packed (this thread's row of packs: PACK_SIZE floats) so that the micro-kernel reads it as
    one contiguous stream, which the hardware prefetcher follows (rows of b 4 KiB apart defeat it: a
    1024-wide product ran at 0.5x of BLAS unpacked). Each tile's rows of a (TILE_ROWS x DEPTH_BLOCK)
    then stay in L1 while the tiles of the panel's columns pass; a block after the first adds to what
    the tiles hold.
    """
    K = a.shape[1]
    width = TILE_VECTORS * (VECTOR_BYTES // out.itemsize)
    block = _depth_block(K)
    panel = packs[numba.get_thread_id()]  # a thread's own: two tasks never run at once on one thread
    for c0 in range(j0, j1, PANEL_COLS):  # one pass in the parallel kernels, whose panels are this wide
        c1 = min(c0 + PANEL_COLS, j1)
        for k0 in range(0, max(K, 1), max(block, 1)):  # K = 0 still writes the zeros of an empty sum
            depth = min(k0 + block, K) - k0
            _pack(panel, b, k0, k0 + depth, c0, c1, width, transposed)
            for i in range(i0, i1, TILE_ROWS):
                if term_starts.shape[0] > 0:  # the listed terms of this tile of rows (tiles start at row 0)
                    tile, n = i // TILE_ROWS, k0 // block
                    first, count = term_starts[tile, n], term_starts[tile, n + 1] - term_starts[tile, n]
                    for j in range(c0, c1, width):
                        _listed_tile(out, i, j, packed, tile * packed.shape[1] + first * TILE_ROWS, panel,
                                     (j - c0) * depth, count, terms, tile * terms.shape[1] + first,
                                     min(TILE_ROWS, i1 - i), min(width, c1 - j), k0)
                else:
                    for j in range(c0, c1, width):
                        _tile(out, i, j, a, i * K + k0, K, panel, (j - c0) * depth, depth, min(TILE_ROWS, i1 - i),
                              min(width, c1 - j), k0)


@njit(cache=True)
def _panel(p, n_row_panels, M, N):
    """Rows [i0, i1) and columns [j0, j1) of panel p of an (M, N) output; column panels outermost."""
    i0, j0 = p % n_row_panels * PANEL_ROWS, p // n_row_panels * PANEL_COLS
    return i0, min(i0 + PANEL_ROWS, M), j0, min(j0 + PANEL_COLS, N)


@njit(fastmath=FASTMATH, cache=True)
def _store_t(out_t, out, i0, i1, j0, j1):
    """out_t[j0:j1, i0:i1] = out[i0:i1, j0:j1].T: a block just computed, still in L2.

    16 rows of out at a time, whose cache lines stay in L1 while the columns pass (a whole panel's
    rows do not fit: down 264 rows, each read missed L1 and the transpose took longer than the product).
    """
    for r0 in range(i0, i1, 16):
        for j in range(j0, j1):
            for i in range(uint64(r0), uint64(min(r0 + 16, i1))):
                out_t[j, i] = out[i, j]


@njit(cache=True)
def _transpose_rows(out, inp, n0, n1):
    """out[n0:n1] = inp[:, n0:n1].T, 32 columns of inp at a time."""
    M = out.shape[1]
    for m0 in range(0, M, 32):
        _store_t(out, inp, m0, min(m0 + 32, M), n0, n1)


@njit(parallel=True, cache=True)
def _transpose(out, inp):
    """out (N, M) = inp (M, N).T, for what no kernel produces transposed: gathered dense pixels (each
    step), linear_backward's input."""
    N = out.shape[0]
    # prange over blocks of 32 rows of out: iteration i owns them
    for task in prange(_cdiv(N, 32)):
        i = np.int64(task)  # the parallel loop's index is unsigned: numba would type the body twice
        _transpose_rows(out, inp, i * 32, min(i * 32 + 32, N))


# ---- the optimizers -------------------------------------------------------------------------------
class UpdateCoefs(NamedTuple):
    """An update's scalars for one step, in the parameters' dtype: float64 scalars would make float32
    math float64. Made once per step by _update_coefs and passed as an argument into the parallel
    kernels: numba rebuilds a NamedTuple argument inside a parallel loop by its class, but not one a
    callee returned in the same function."""
    optimizer: int  # fastnn.settings.SGD, ADAM or ADAMW
    lr: float
    momentum: float
    nesterov: bool
    decay: float  # the L2 penalty in the gradient (SGD, Adam); 0 for AdamW
    shrink: float  # AdamW's decoupled decay factor 1 - lr * weight_decay; 1 otherwise
    beta1: float
    rest1: float  # 1 - beta1
    beta2: float
    rest2: float  # 1 - beta2
    eps: float
    step_size: float  # Adam's lr / (1 - beta1^t)
    inv_sqrt_bc2: float  # Adam's 1 / sqrt(1 - beta2^t)


@njit(cache=True)
def _update_coefs(dtype, lr, number, hyper):
    """The UpdateCoefs of step `number` (t = 1, 2, ...) at rate lr under hyper (fastnn.bundles.Hyper),
    in dtype (a NumPy scalar type)."""
    decoupled = hyper.optimizer == ADAMW
    decay = 0.0 if decoupled else hyper.weight_decay
    shrink = 1 - lr * hyper.weight_decay if decoupled else 1.0
    # Adam's bias corrections, folded into two scalars in float64 once per step: the elements then
    # need one division and one square root, as in PyTorch's Adam
    step_size = lr / (1 - hyper.beta1 ** number)
    inv_sqrt_bc2 = 1 / np.sqrt(1 - hyper.beta2 ** number)
    return UpdateCoefs(hyper.optimizer, dtype(lr), dtype(hyper.momentum), hyper.nesterov, dtype(decay),
                       dtype(shrink), dtype(hyper.beta1), dtype(1 - hyper.beta1), dtype(hyper.beta2),
                       dtype(1 - hyper.beta2), dtype(hyper.eps), dtype(step_size), dtype(inv_sqrt_bc2))


@njit(fastmath=FASTMATH, cache=True)
def _sgd_step(param, grad, m1, coef):
    """One element's SGD step (fastnn.ops.sgd_update; m1: its momentum buffer): returns (param, m1)."""
    if coef.decay != 0:  # as the reference: no 0 * param term, so an inf weight stays inf
        grad += coef.decay * param
    m1 = coef.momentum * m1 + grad
    # Nesterov's look-ahead: the same for every element, so LLVM takes the branch out of the loop
    direction = grad + coef.momentum * m1 if coef.nesterov else m1
    return param - coef.lr * direction, m1


# error_model="numpy": a float division by zero gives inf as in NumPy, instead of numba's default
# check and ZeroDivisionError, a branch in every element that keeps LLVM from vectorising the loop
# (measured on a 784 x 128 weight, float32: 409 us -> 96 us; SGD's update: 33 us)
@njit(fastmath=FASTMATH, error_model="numpy", cache=True)
def _adam_step(param, grad, m1, m2, coef):
    """One element's Adam or AdamW step (fastnn.ops.adam_update; m1, m2: its moments): returns (param, m1, m2)."""
    if coef.decay != 0:
        grad += coef.decay * param
    m1 = coef.beta1 * m1 + coef.rest1 * grad
    m2 = coef.beta2 * m2 + coef.rest2 * grad * grad
    return param * coef.shrink - coef.step_size * m1 / (np.sqrt(m2) * coef.inv_sqrt_bc2 + coef.eps), m1, m2


# The branch on the optimizer is taken once per span or block of elements, outside the loops, so that
# each loop vectorises with one formula.
@njit(fastmath=FASTMATH, cache=True)
def _update_span(param, grad, m1, m2, coef):
    """The update of 1-D arrays (a chunk, a bias), serially; m1, m2: the optimizer's state for them."""
    if coef.optimizer == SGD:
        for i in range(param.size):
            param[i], m1[i] = _sgd_step(param[i], grad[i], m1[i], coef)
    else:
        for i in range(param.size):
            param[i], m1[i], m2[i] = _adam_step(param[i], grad[i], m1[i], m2[i], coef)


@njit(fastmath=FASTMATH, cache=True)
def _update_block(weight, dweight, m1, m2, c0, c1, j0, j1, coef):
    """The update of the block [c0:c1, j0:j1] of 2-D arrays, in place."""
    if coef.optimizer == SGD:
        for c in range(c0, c1):
            for j in range(uint64(j0), uint64(j1)):
                weight[c, j], m1[c, j] = _sgd_step(weight[c, j], dweight[c, j], m1[c, j], coef)
    else:
        for c in range(c0, c1):
            for j in range(uint64(j0), uint64(j1)):
                weight[c, j], m1[c, j], m2[c, j] = _adam_step(weight[c, j], dweight[c, j], m1[c, j], m2[c, j], coef)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _update_flat(param, grad, m1, m2, coef):
    """The update of arrays of any shape, C-contiguous, SGD_CHUNK elements per parallel task."""
    param_flat, grad_flat = param.reshape(param.size), grad.reshape(grad.size)  # views, no copies
    m1_flat, m2_flat = m1.reshape(m1.size), m2.reshape(m2.size)
    # prange over chunks of SGD_CHUNK elements: iteration i owns its chunk of param, m1 and m2
    for task in prange(_cdiv(param_flat.size, SGD_CHUNK)):
        i = np.int64(task)  # the parallel loop's index is unsigned: numba would type the body twice
        chunk = slice(i * SGD_CHUNK, (i + 1) * SGD_CHUNK)
        _update_span(param_flat[chunk], grad_flat[chunk], m1_flat[chunk], m2_flat[chunk], coef)


@njit(cache=True)
def update(param, grad, moment1, moment2, lr, number, hyper):
    """fastnn.ops.update: the update hyper.optimizer names, in place, at step `number` with rate lr.
    param, grad, moment1, moment2: any shape, C-contiguous."""
    _update_flat(param, grad, moment1, moment2, _update_coefs(param.dtype.type, lr, number, hyper))


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _max_norm_columns(weight, factors, limit):
    """Columns of weight (C, OC) whose L2 norm exceeds limit scaled to norm limit; factors (>= OC,) is
    working memory."""
    C, OC = weight.shape
    limit = weight.dtype.type(limit)
    # prange over blocks of PANEL_COLS columns: iteration owns those columns of weight and entries of
    # factors; each norm is summed row by row, the same order for any threads
    for task in prange(_cdiv(OC, PANEL_COLS)):
        block = np.int64(task)  # the parallel loop's index is unsigned: numba would type the body twice
        j0, j1 = block * PANEL_COLS, min(block * PANEL_COLS + PANEL_COLS, OC)
        _max_norm_block(weight, factors, limit, j0, j1)


@njit(fastmath=FASTMATH, cache=True)
def _max_norm_block(weight, factors, limit, j0, j1):
    """Columns j0:j1 of _max_norm_columns."""
    C = weight.shape[0]
    for j in range(j0, j1):
        factors[j] = 0
    for c in range(C):  # squares summed along the rows: each pass reads a contiguous run of a row
        for j in range(uint64(j0), uint64(j1)):
            factors[j] += weight[c, j] * weight[c, j]
    scaled = False
    for j in range(j0, j1):
        norm = np.sqrt(factors[j])
        factors[j] = limit / norm if norm > limit else 1
        scaled |= norm > limit
    if not scaled:
        return
    for c in range(C):  # a factor of 1 changes no bit
        for j in range(uint64(j0), uint64(j1)):
            weight[c, j] *= factors[j]


@njit(cache=True)
def max_norm(weight, limit):
    """Scale each column of weight (C, OC) down to L2 norm <= limit, in place: fastnn.ops.max_norm."""
    _max_norm_columns(weight, np.empty(weight.shape[1], weight.dtype), limit)


# ---- dropout ----------------------------------------------------------------------------------------
# fastnn.ops' counter-based masks, written again: the kernels' cache sees this file only. uint64
# throughout, with uint64 constants: numba turns uint64 mixed with signed ints into floats.
MASK32 = np.uint64(0xFFFFFFFF)


@njit(cache=True)
def _hash32(x):
    """lowbias32 (fastnn.ops.hash32) of a uint64 below 2^32."""
    x ^= x >> uint64(16)
    x = (x * uint64(0x7FEB352D)) & MASK32
    x ^= x >> uint64(15)
    x = (x * uint64(0x846CA68B)) & MASK32
    return x ^ (x >> uint64(16))


@njit(cache=True)
def _dropout_key(seed, number, layer, rate, dtype):
    """(step key, threshold, keep scale) of fastnn.ops.dropout_keep for a layer at step number `number`;
    threshold 0 (rate 0) keeps every unit."""
    seed_key = _hash32(uint64(seed) & MASK32)
    key = _hash32(_hash32(seed_key ^ (uint64(number) & MASK32)) ^ uint64(layer))
    return key, uint64(round(rate * 16777216.0)), dtype(1 / (1 - rate))


@njit(cache=True)
def _row_drop(drop, b):
    """drop (a _dropout_key) for row b: its step key hashed with the row, once per row."""
    key, threshold, scale = drop
    return _hash32(key ^ uint64(b)), threshold, scale


@njit(cache=True)
def _keeps(row_drop, j):
    """Whether unit j of the row of row_drop (_row_drop) is kept."""
    return (_hash32(row_drop[0] ^ uint64(j)) >> uint64(8)) >= row_drop[1]


@njit(fastmath=FASTMATH, cache=True)
def _dropout_row(out, b, j0, j1, drop):
    """out[b, j0:j1] *= keep / (1 - rate) under drop = _dropout_key(...), if its threshold is not 0."""
    if drop[1] == 0:
        return
    row = _row_drop(drop, b)
    for j in range(uint64(j0), uint64(j1)):
        out[b, j] = out[b, j] * row[2] if _keeps(row, j) else 0


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _dropout_rows(out, inp, drop):
    """out (B, H) = inp (B, H) with _dropout_row on every row."""
    B, H = out.shape
    # prange over rows: iteration b owns out[b]
    for task in prange(B):
        b = np.int64(task)  # the parallel loop's index is unsigned: numba would type the body twice
        for j in range(H):
            out[b, j] = inp[b, j]
        _dropout_row(out, b, ZERO, H, drop)


@njit(cache=True)
def dropout_forward(out, inp, seed, number, layer, rate):
    """Inverted dropout: out (B, H) = inp * keep / (1 - rate), the masks of fastnn.ops.dropout_keep."""
    _dropout_rows(out, inp, _dropout_key(seed, number, layer, rate, out.dtype.type))


# ---- the ops of fastnn/ops.py ---------------------------------------------------------------------
@njit(parallel=True, fastmath=FASTMATH, cache=True)
def gather_batch(inp, targets, data, indices):
    """Gather one mini-batch and scale it to floats (the uint8 -> float conversion fused into the copy).

    inp (B, C) float, targets (B,) int64 <- data (images (N, C) uint8 or float, labels (N,), scale), indices (B,).
    """
    images, labels, scale = data.images, data.labels, data.scale
    # prange over batch rows: iteration b owns inp[b] and targets[b]
    for task in prange(inp.shape[0]):
        b = np.int64(task)  # the parallel loop's index is unsigned: numba would type the body twice
        _gather_row(inp, targets, b, images, labels, indices[b], scale)


@njit(fastmath=FASTMATH, cache=True)
def _gather_row(inp, targets, b, images, labels, row, scale):
    """inp[b] (C,) = images[row] * scale, targets[b] = labels[row]."""
    for k in range(inp.shape[1]):
        # the product is taken in float64 and rounded once, as NumPy's uint8 * float does
        inp[b, k] = images[row, k] * scale
    targets[b] = labels[row]


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _dense_forward(out, out_t, inp, weight, bias, floor, drop, packs, terms, term_starts, packed):
    """out (B, OC) = max(inp (B, C) @ weight (C, OC) + bias (OC), floor): floor 0 is the ReLU,
    -inf none; then dropout under drop (a _dropout_key; threshold 0: none); out_t (OC, B) = out.T
    unless it has no rows (the weight gradient of the next layer reads it). Flags are numbers and
    shapes, not booleans: numba compiles a function anew for each boolean constant it is called with."""
    B, OC = out.shape
    n_row_panels = _cdiv(B, PANEL_ROWS)
    # prange over panels of outputs: iteration p owns its panel of out and out_t
    for task in prange(n_row_panels * _cdiv(OC, PANEL_COLS)):
        p = np.int64(task)  # the parallel loop's index is unsigned: numba would type the body twice
        i0, i1, j0, j1 = _panel(p, n_row_panels, B, OC)
        _forward_panel(out, out_t, inp, weight, bias, floor, drop, packs, terms, term_starts, packed, i0, i1, j0, j1)


@njit(fastmath=FASTMATH, cache=True, inline="always")
def _forward_panel(out, out_t, inp, weight, bias, floor, drop, packs, terms, term_starts, packed, i0, i1, j0, j1):
    """Panel [i0:i1, j0:j1] of _dense_forward."""
    _product(out, inp, weight, i0, i1, j0, j1, packs, B_AS_IS, terms, term_starts, packed)  # (i1 - i0, j1 - j0)
    for i in range(i0, i1):  # bias, ReLU and dropout while the panel is in L1
        for j in range(uint64(j0), uint64(j1)):
            value = out[i, j] + bias[j]
            out[i, j] = floor if value < floor else value  # `<`: NaN stays NaN, as with np.maximum
        _dropout_row(out, i, j0, j1, drop)
    if out_t.shape[0] > 0:
        _store_t(out_t, out, i0, i1, j0, j1)


@njit(cache=True)
def _every_term(dtype):
    """_product's (terms, term_starts, packed) for a product of every term: no rows."""
    return np.empty((0, 0), np.int32), np.empty((0, 0), np.int32), np.empty((0, 0), dtype)


@njit(cache=True)
def _packs(dtype):
    """Working memory for _product: a row of PACK_SIZE for each thread numba runs now."""
    # numba's own intrinsic behind numba.get_num_threads(), whose jitted form reads a ctypes pointer
    # and so cannot be cached (numba then refuses to cache every caller)
    return np.empty((_iget_num_threads(), PACK_SIZE), dtype)


@njit(fastmath=FASTMATH, cache=True)
def _transposed(x):
    """A new copy of x (M, N).T, (N, M): linear_backward's input as the weight gradient reads it."""
    x_t = np.empty((x.shape[1], x.shape[0]), x.dtype)
    _transpose(x_t, x)
    return x_t


@njit(fastmath=FASTMATH, cache=True)
def linear_forward(out, inp, weight, bias):
    """out (B, OC) = inp (B, C) @ weight (C, OC) + bias (OC)."""
    _dense_forward(out, out[:0], inp, weight, bias, -np.inf, _dropout_key(0, 0, 0, 0.0, out.dtype.type),
                   _packs(out.dtype), *_every_term(out.dtype))


@njit(fastmath=FASTMATH, cache=True)
def linear_relu_forward(out, inp, weight, bias):
    """out (B, OC) = relu(inp (B, C) @ weight (C, OC) + bias (OC)): a hidden layer, ReLU in the epilogue."""
    _dense_forward(out, out[:0], inp, weight, bias, 0.0, _dropout_key(0, 0, 0, 0.0, out.dtype.type),
                   _packs(out.dtype), *_every_term(out.dtype))


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def relu_forward(out, inp):
    """out = max(inp, 0), elementwise (any shape, C-contiguous); out may be inp."""
    out_flat, inp_flat = out.reshape(out.size), inp.reshape(inp.size)  # views, no copies
    # prange over elements: iteration i owns out_flat[i]
    for task in prange(out_flat.size):
        i = np.int64(task)  # the parallel loop's index is unsigned: numba would type the body twice
        x = inp_flat[i]
        out_flat[i] = 0 if x < 0 else x  # NaN stays NaN


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def relu_backward(dinp, dout, out):
    """dinp = dout where the ReLU's output is positive, else 0 (the derivative at the kink is 0)."""
    dinp_flat, dout_flat, out_flat = dinp.reshape(dinp.size), dout.reshape(dout.size), out.reshape(out.size)
    # prange over elements: iteration i owns dinp_flat[i]
    for task in prange(dinp_flat.size):
        i = np.int64(task)  # the parallel loop's index is unsigned: numba would type the body twice
        # a product with the mask, as the reference: a NaN gradient stays NaN even where masked
        dinp_flat[i] = dout_flat[i] * (out_flat[i] > 0)


@njit(fastmath=FASTMATH, cache=True)
def _row_max(logits, b):
    """The largest logits[b, k] (for a stable exp; a NaN logit makes the row NaN through exp anyway)."""
    largest = logits[b, 0]
    for k in range(1, logits.shape[1]):
        if logits[b, k] > largest:
            largest = logits[b, k]
    return largest


@njit(fastmath=FASTMATH, cache=True)
def _exp_row(out, logits, b):
    """out[b] (K) = exp(logits[b] - its max); returns that row's sum and max."""
    # subtracting the row max changes nothing mathematically but keeps exp() from overflowing
    largest = _row_max(logits, b)
    total = out.dtype.type(0)
    for k in range(logits.shape[1]):
        out[b, k] = np.exp(logits[b, k] - largest)
        total += out[b, k]
    return total, largest


@njit(fastmath=FASTMATH, cache=True)
def _softmax_xent_row(dlogits, logits, targets, b):
    """Row b: dlogits[b] (K) = (softmax(logits[b]) - onehot(targets[b])) / B; returns the row's loss."""
    inv_b = dlogits.dtype.type(1 / logits.shape[0])
    total, largest = _exp_row(dlogits, logits, b)  # (K,)
    t = targets[b]
    for k in range(logits.shape[1]):
        p = dlogits[b, k] / total
        dlogits[b, k] = (p - 1 if k == t else p) * inv_b
    # log-sum-exp minus the target's shifted logit: a tiny probability never becomes log(0)
    return np.log(total) - (logits[b, t] - largest)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def softmax(probs, logits):
    """probs (B, K) = softmax of logits (B, K) over classes."""
    B, K = logits.shape
    # prange over rows: iteration b owns probs[b]
    for task in prange(B):
        b = np.int64(task)  # the parallel loop's index is unsigned: numba would type the body twice
        total, _ = _exp_row(probs, logits, b)  # (K,)
        for k in range(K):
            probs[b, k] /= total  # (B, K)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _softmax_xent_rows(dlogits, losses, logits, targets):
    """dlogits (B, K) and losses (B,) of softmax_cross_entropy, row by row."""
    # prange over rows: iteration b owns dlogits[b] and losses[b]
    for task in prange(logits.shape[0]):
        b = np.int64(task)  # the parallel loop's index is unsigned: numba would type the body twice
        losses[b] = _softmax_xent_row(dlogits, logits, targets, b)


@njit(cache=True)
def _mean(values):
    """Their mean in float64, added in order: the same bits for any thread count."""
    total = 0.0
    for v in values:
        total += v
    return total / values.size


@njit(fastmath=FASTMATH, cache=True)
def softmax_cross_entropy(dlogits, logits, targets):
    """Mean cross-entropy loss of softmax(logits) against targets, and its gradient.

    dlogits (B, K) <- (softmax(logits) - onehot(targets)) / B; logits (B, K), targets (B,) ints in
    [0, K). Returns the mean loss as a Python float.
    """
    losses = np.empty(logits.shape[0])  # serial code: allocating here is fine
    _softmax_xent_rows(dlogits, losses, logits, targets)
    return _mean(losses)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _dense_dweight(dweight, dbias, inp_t, dout, packs, terms, term_starts, packed):
    """dweight (C, OC) = inp_t (C, B) @ dout (B, OC); dbias (OC) = dout summed over B."""
    C, OC = dweight.shape
    n_row_panels = _cdiv(C, PANEL_ROWS)
    # prange over panels of dweight: iteration p owns its panel (and those of the first rows dbias's)
    for task in prange(n_row_panels * _cdiv(OC, PANEL_COLS)):
        p = np.int64(task)  # the parallel loop's index is unsigned: numba would type the body twice
        c0, c1, j0, j1 = _panel(p, n_row_panels, C, OC)
        _product(dweight, inp_t, dout, c0, c1, j0, j1, packs, B_AS_IS, terms, term_starts, packed)  # (c1 - c0, j1 - j0)
        if c0 == 0:
            _column_sums(dbias, dout, j0, j1)


@njit(fastmath=FASTMATH, cache=True)
def _column_sums(total, x, j0, j1):
    """total[j0:j1] = x[:, j0:j1] summed over the rows, in row order: a bias gradient."""
    for j in range(uint64(j0), uint64(j1)):
        total[j] = 0
    for b in range(x.shape[0]):  # row by row: each pass adds a contiguous run of a row
        for j in range(uint64(j0), uint64(j1)):
            total[j] += x[b, j]


@njit(fastmath=FASTMATH, cache=True)
def linear_backward(dweight, dbias, dout, inp):
    """Parameter gradients of out = inp @ weight + bias.

    dweight (C, OC) = inp (B, C).T @ dout (B, OC); dbias (OC) = dout summed over the batch.
    """
    _dense_dweight(dweight, dbias, _transposed(inp), dout, _packs(dweight.dtype), *_every_term(dweight.dtype))


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _dense_backward_input(dinp, dout, weight, inp, keep_scale, packs, terms, term_starts, packed):
    """dinp (B, C) = (dout (B, OC) @ weight (C, OC).T) * (inp > 0) * keep_scale. inp is 0 where the
    ReLU was off or dropout dropped the unit; keep_scale is dropout's 1 / (1 - rate) (1: none), by
    which a kept unit's output was scaled."""
    B, C = dinp.shape
    n_row_panels = _cdiv(B, PANEL_ROWS)
    # prange over panels of dinp: iteration p owns its panel
    for task in prange(n_row_panels * _cdiv(C, PANEL_COLS)):
        p = np.int64(task)  # the parallel loop's index is unsigned: numba would type the body twice
        i0, i1, j0, j1 = _panel(p, n_row_panels, B, C)
        _product(dinp, dout, weight, i0, i1, j0, j1, packs, B_TRANSPOSED, terms, term_starts, packed)  # (i1 - i0, j1 - j0)
        _relu_mask(dinp, inp, keep_scale, i0, i1, j0, j1)


@njit(fastmath=FASTMATH, cache=True)
def _relu_mask(dinp, inp, keep_scale, i0, i1, j0, j1):
    """dinp[i0:i1, j0:j1] *= (inp > 0) * keep_scale: the ReLU's (and dropout's) derivative, as a
    product as in the reference, so that a NaN stays NaN."""
    for i in range(i0, i1):
        for j in range(uint64(j0), uint64(j1)):
            dinp[i, j] = dinp[i, j] * (inp[i, j] > 0) * keep_scale


@njit(fastmath=FASTMATH, cache=True)
def linear_backward_input(dinp, dout, weight, inp):
    """Gradient into the layer's input, through the ReLU that produced it.

    dinp (B, C) = (dout (B, OC) @ weight (C, OC).T) * (inp > 0), inp being the previous ReLU's output.
    """
    _dense_backward_input(dinp, dout, weight, inp, dinp.dtype.type(1), _packs(dinp.dtype), *_every_term(dinp.dtype))


@njit(fastmath=FASTMATH, cache=True)
def _argmax_row(logits, b):
    """Index of the largest logits[b, k], by np.argmax's rules: ties take the first, the first NaN wins."""
    best = 0
    if np.isnan(logits[b, 0]):
        return 0
    for k in range(1, logits.shape[1]):
        if np.isnan(logits[b, k]):
            return k
        if logits[b, k] > logits[b, best]:
            best = k
    return best


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def argmax(out, logits):
    """out (B,) = index of the largest logit in each row of logits (B, K); ties take the first."""
    # prange over rows: iteration b owns out[b]
    for task in prange(logits.shape[0]):
        b = np.int64(task)  # the parallel loop's index is unsigned: numba would type the body twice
        out[b] = _argmax_row(logits, b)


@njit(fastmath=FASTMATH, cache=True)
def forward(acts, params):
    """Inference: acts[L] (B, K) <- logits of acts[0] (B, C_0) through all L layers of params.

    acts: a tuple of arrays (StepBuffers' layout); acts[l] (B, C_l) for 0 < l < L receive the hidden
    ReLU outputs.
    """
    weights, biases = params
    L = len(weights)
    for l in range(L - 1):
        linear_relu_forward(acts[l + 1], acts[l], weights[l], biases[l])  # (B, C_l+1)
    linear_forward(acts[L], acts[L - 1], weights[L - 1], biases[L - 1])  # (B, K)


# ---- a sparse first layer -------------------------------------------------------------------------
@njit(fastmath=FASTMATH, cache=True)
def _pixel(values, columns, p, scale, dtype, row_in):
    """Non-zero p's value as gather_batch makes it (the product in float64, rounded once), after
    input dropout under row_in (its sample's _row_drop): dropped, it is 0."""
    x = dtype(values[p] * scale)
    if row_in[1] == 0:
        return x
    return x * row_in[2] if _keeps(row_in, columns[p]) else dtype(0)


@njit(fastmath=FASTMATH, cache=True)
def _sparse_row_forward(out, block_start, b, weight, bias, start, end, columns, values, scale, drop_in, drop):
    """out[b] = relu(x @ weight + bias) for the image whose non-zeros are columns and values
    [start:end], after input dropout (drop_in) and then dropout (drop): the weight rows of its
    non-zero pixels, four per pass, so that each load and store of out[b] feeds four FMAs.
    block_start[b, t]: where its non-zeros reach pixel t * PIXEL_BLOCK."""
    OC, dtype = out.shape[1], out.dtype.type
    row_in = _row_drop(drop_in, b)
    for j in range(OC):
        out[b, j] = bias[j]
    p = start
    while p + 4 <= end:
        x0, x1 = _pixel(values, columns, p, scale, dtype, row_in), _pixel(values, columns, p + 1, scale, dtype, row_in)
        x2, x3 = _pixel(values, columns, p + 2, scale, dtype, row_in), _pixel(values, columns, p + 3, scale, dtype,
                                                                              row_in)
        k0, k1, k2, k3 = columns[p], columns[p + 1], columns[p + 2], columns[p + 3]
        for j in range(OC):
            out[b, j] = out[b, j] + x0 * weight[k0, j] + x1 * weight[k1, j] + x2 * weight[k2, j] + x3 * weight[k3, j]
        p += 4
    for q in range(p, end):
        x, k = _pixel(values, columns, q, scale, dtype, row_in), columns[q]
        for j in range(OC):
            out[b, j] += x * weight[k, j]
    for j in range(OC):
        if out[b, j] < 0:  # `< 0`: NaN stays NaN
            out[b, j] = 0
    _dropout_row(out, b, ZERO, OC, drop)
    p = start
    for t in range(block_start.shape[1]):
        while p < end and columns[p] < t * PIXEL_BLOCK:
            p += 1
        block_start[b, t] = p


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _sparse_forward(out, out_t, targets, block_start, data, indices, weight, bias, drop_in, drop):
    """out (B, OC) = relu(images[indices] * scale @ weight (C, OC) + bias) from the CSR non-zeros, and
    out_t (OC, B) = out.T; targets (B,) = labels[indices]; block_start (B, blocks + 1): where each
    sample's non-zeros reach pixel block t (for _sparse_update)."""
    B = out.shape[0]
    # numba passes arrays, not tuples of them, into a parallel loop: unpack the data first
    row_start, columns, values, labels, scale = data.row_start, data.columns, data.values, data.labels, data.scale
    # prange over blocks of 4 samples: iteration owns their rows of out, targets, block_start and
    # their 4 columns of out_t
    for task in prange(_cdiv(B, 4)):
        block = np.int64(task)  # the parallel loop's index is unsigned: numba would type the body twice
        b0, b1 = block * 4, min(block * 4 + 4, B)
        for b in range(b0, b1):
            row = indices[b]
            targets[b] = labels[row]
            _sparse_row_forward(out, block_start, b, weight, bias, row_start[row], row_start[row + 1], columns,
                                values, scale, drop_in, drop)  # (OC,)
        _store_t(out_t, out, b0, b1, ZERO, out.shape[1])


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _sparse_update(params, grads, optimizer, data, block_start, dout, coef, drop_in):
    """The first layer's dweight = images[indices].T @ dout over the non-zeros, then the update, row by row.

    Each task takes PIXEL_BLOCK rows and the batch's samples in order, so each row's sum runs in the
    same order whatever the thread count: for each non-zero pixel of a sample, that sample's row of
    dout into the pixel's row of dweight, the pixel as the forward saw it (drop_in: input dropout).
    A row no image of the batch touches has a zero gradient:
    plain SGD leaves it alone; momentum, weight decay and Adam still move it.
    """
    moment1, moment2 = optimizer
    weight, dweight, m1, m2 = params.weights[0], grads.weights[0], moment1.weights[0], moment2.weights[0]
    bias, dbias, m1_b, m2_b = params.biases[0], grads.biases[0], moment1.biases[0], moment2.biases[0]
    columns, values, scale = data.columns, data.values, data.scale
    C, OC = weight.shape
    # prange over blocks of PIXEL_BLOCK rows: iteration owns those rows of dweight, weight, m1, m2
    # (and the first block the bias)
    for task in prange(_cdiv(C, PIXEL_BLOCK)):
        block = np.int64(task)  # the parallel loop's index is unsigned: numba would type the body twice
        _sparse_update_rows(block, weight, dweight, m1, m2, columns, values, scale, block_start, dout, coef, drop_in)
        if block == 0:
            _column_sums(dbias, dout, ZERO, OC)
            _update_span(bias, dbias, m1_b, m2_b, coef)


@njit(fastmath=FASTMATH, cache=True)
def _sparse_update_rows(block, weight, dweight, m1, m2, columns, values, scale, block_start, dout, coef, drop_in):
    """Rows block * PIXEL_BLOCK and on of _sparse_update."""
    (C, OC), dtype = weight.shape, weight.dtype.type
    k0, k1 = block * PIXEL_BLOCK, min(block * PIXEL_BLOCK + PIXEL_BLOCK, C)
    touched = 0  # bit k - k0: row k has a gradient
    for b in range(dout.shape[0]):
        row_in = _row_drop(drop_in, b)
        for p in range(block_start[b, block], block_start[b, block + 1]):
            k, x = columns[p], _pixel(values, columns, p, scale, dtype, row_in)
            bit = np.int64(1) << (k - k0)
            if touched & bit:
                for j in range(OC):
                    dweight[k, j] += x * dout[b, j]
            else:  # the row's first term: no pass to zero it first
                for j in range(OC):
                    dweight[k, j] = x * dout[b, j]
                touched |= bit
    for k in range(k0, k1):
        if not touched & (np.int64(1) << (k - k0)):
            # plain SGD: a zero gradient changes nothing
            if coef.optimizer == SGD and coef.momentum == 0 and coef.decay == 0:
                continue
            for j in range(OC):
                dweight[k, j] = 0
        _update_block(weight, dweight, m1, m2, k, k + 1, ZERO, OC, coef)


# ---- dense layers and the last layer in a training step --------------------------------------------
@njit(fastmath=FASTMATH, cache=True, inline="always")
def _dense_update(l, params, grads, optimizer, inp_t, dout, coef, packs, terms, term_starts, packed):
    """Dense layer l: dweight = inp_t (C, B) @ dout (B, OC) and dbias, then the update of the weight,
    the bias and the optimizer's state.

    Two parallel regions, not one: the update of a panel right after its product (fused, while it is
    in cache) ran 6x slower on 2 threads than on 1 (185 vs 27 us at 512 x 256), the two cores writing
    interleaved column panels of the same rows (the L2 prefetchers' streams cross into the other
    core's lines); in contiguous chunks, as here, it takes ~14 us.
    """
    moment1, moment2 = optimizer
    weight, dweight, m1, m2 = params.weights[l], grads.weights[l], moment1.weights[l], moment2.weights[l]
    bias, dbias, m1_b, m2_b = params.biases[l], grads.biases[l], moment1.biases[l], moment2.biases[l]
    _dense_dweight(dweight, dbias, inp_t, dout, packs, terms, term_starts, packed)  # (C, OC), (OC,)
    _update_flat(weight, dweight, m1, m2, coef)
    _update_span(bias, dbias, m1_b, m2_b, coef)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _head_region(logits, dlogits, dinp, inp, weight, bias, targets, losses, correct, keep_scale, packs,
                 terms, term_starts, packed):
    """The last layer and the loss, per block of TILE_ROWS samples, and the gradient into the layer's input.

    logits (B, K) = inp (B, C) @ weight (C, K) + bias; dlogits (B, K) as softmax_cross_entropy;
    losses[b], correct[b] (1.0 if the largest logit is the target, before any update); dinp (B, C) =
    (dlogits @ weight.T) * (inp > 0) * keep_scale (as _dense_backward_input), unless dinp has
    no rows (a single layer has no hidden layer below it: the pixels need no gradient).
    """
    B, K = logits.shape
    # prange over blocks of TILE_ROWS samples: iteration owns their rows of logits, dlogits, dinp,
    # losses and correct
    for task in prange(_cdiv(B, TILE_ROWS)):
        b0 = np.int64(task) * TILE_ROWS  # the parallel loop's index is unsigned: numba would type the body twice
        b1 = min(b0 + TILE_ROWS, B)
        _product(logits, inp, weight, b0, b1, ZERO, K, packs, B_AS_IS, terms, term_starts, packed)  # (b1 - b0, K)
        for b in range(b0, b1):
            for k in range(K):
                logits[b, k] += bias[k]
            correct[b] = _argmax_row(logits, b) == targets[b]
            losses[b] = _softmax_xent_row(dlogits, logits, targets, b)
        if dinp.shape[0] > 0:
            _product(dinp, dlogits, weight, b0, b1, ZERO, dinp.shape[1], packs, B_TRANSPOSED, terms, term_starts,
                     packed)  # (b1 - b0, C)
            _relu_mask(dinp, inp, keep_scale, b0, b1, ZERO, dinp.shape[1])


# ---- the training step ------------------------------------------------------------------------------
def train_step(params, grads, optimizer, buffers, data, indices, lr, number, hyper):
    """One mini-batch, step `number` of the run: fastnn.ops.train_step's arguments and results, (loss, n_correct).

    data from prepare_data; buffers are views sized to this batch, their scratch whole. One step is a
    call of train_steps (a Python function: one jitted entry point less to compile).
    """
    steps = Steps(np.asarray(indices).reshape(1, -1), np.array([lr], np.float64), np.array([number], np.int64))
    losses, n_correct = train_steps(params, grads, optimizer, buffers, data, steps, hyper)
    return float(losses[0]), int(n_correct[0])


def train_steps(params, grads, optimizer, buffers, data, steps, hyper):
    """S mini-batches in one call: fastnn.ops.train_steps. Returns (losses (S,), n_correct (S,)).

    data from prepare_data; buffers are views sized to these batches, their scratch whole (at least
    scratch_size(sizes, B) floats). The steps run in _train_steps, told which kernels they need.
    A call costs ~10 us (numba reads every array of the bundles): once per S steps it is noise.
    """
    return _train_steps(params, grads, optimizer, buffers, data, steps, hyper, *_kernels_used(params, data, hyper))


class KernelsUsed(NamedTuple):
    """Which of _train_steps' kernels a fit's steps run: each field True, or None where they do not.

    None, not False: numba drops a branch on an argument that is None before it types the branch, so
    a fit compiles only the kernels it calls (the default preset skips the CSR first layer, max-norm
    and input dropout; the seed preset every dense hidden-layer kernel).
    """
    csr_rows: object  # the first layer runs on the images' CSR rows (sparse images, below LISTED_FROM_UNITS units)
    gathered: object  # else the pixels are gathered into acts[0] (a single layer is the last layer: always)
    listed: object  # and the first layer's products add only the listed non-zero terms (sparse images)
    hidden_forward: object  # some layer below the last runs its forward on _dense_forward
    hidden_backward: object  # some gradient into a hidden layer runs on _dense_backward_input
    input_dropout: object
    max_norm: object


def _kernels_used(params, data, hyper):
    """The KernelsUsed of a fit of these layers, data (prepare_data) and settings."""
    L, units = len(params.weights), params.weights[0].shape[1]
    csr_rows = bool(data.sparse) and L > 1 and units < LISTED_FROM_UNITS
    first_dense = 1 if csr_rows else 0  # the first layer whose forward runs on _dense_forward
    used = KernelsUsed(csr_rows, not csr_rows, bool(data.sparse) and not csr_rows and L > 1, L - 1 > first_dense,
                       L > 2, hyper.input_dropout > 0, hyper.max_norm > 0)
    return KernelsUsed(*(True if on else None for on in used))


@njit(fastmath=FASTMATH, cache=True)
def _train_steps(params, grads, optimizer, buffers, data, steps, hyper, csr_rows, gathered, listed, hidden_forward,
                 hidden_backward, input_dropout, max_norm):
    """train_steps' steps, with the kernels that _kernels_used switched on (KernelsUsed, field by field).

    The steps' regions are called from here directly: numba re-optimizes the code of every callee in
    each caller, so each level of calls costs compile time.
    """
    weights, biases = params
    acts, douts, targets, scratch = buffers
    L, B = len(weights), targets.shape[0]
    dtype = weights[0].dtype.type
    sizes = np.empty(L + 1, np.int64)  # (C_0, ..., K)
    sizes[0] = weights[0].shape[0]
    for l in range(L):
        sizes[l + 1] = weights[l].shape[1]
    # the kernels index the scratch without bounds checks: refuse one too small before it is written
    if scratch.size < scratch_size(sizes, B):
        raise ValueError("buffers.scratch is smaller than scratch_size(): allocate the buffers with fastnn.bundles")
    losses, correct, block_start, _ = _step_parts(scratch, weights, B)
    rows = B if L > 1 else 0  # the gradient into the last hidden layer: none for a single layer
    keep_scale = dtype(1 / (1 - hyper.dropout))  # a kept unit's output and gradient factor
    # working memory (serial code: allocating is fine): max-norm's, and each thread's packed blocks
    factors, packs = np.empty(sizes[1:].max(), dtype), _packs(weights[0].dtype)
    every_term = _every_term(weights[0].dtype)
    image_terms = pixel_terms = every_term  # the first layer's products: every term, unless listed
    if listed is not None:
        # _nonzero_terms' listings of the first layer's input, by tiles of images, and of its
        # transpose, by tiles of pixels
        C0, tiles_b, tiles_c = sizes[0], _cdiv(B, TILE_ROWS), _cdiv(sizes[0], TILE_ROWS)
        image_terms = (np.empty((tiles_b, C0), np.int32),
                       np.empty((tiles_b, _cdiv(C0, _depth_block(C0)) + 1), np.int32),
                       np.empty((tiles_b, C0 * TILE_ROWS), weights[0].dtype))
        pixel_terms = (np.empty((tiles_c, B), np.int32), np.empty((tiles_c, _cdiv(B, _depth_block(B)) + 1), np.int32),
                       np.empty((tiles_c, B * TILE_ROWS), weights[0].dtype))
    first_dense = 0  # the first layer whose forward runs on _dense_forward
    if csr_rows is not None:
        first_dense = 1
    S = steps.lrs.shape[0]
    step_losses, step_correct = np.empty(S), np.empty(S, np.int64)
    for s in range(S):
        indices, lr, number = steps.indices[s], steps.lrs[s], steps.numbers[s]
        drop_in = _dropout_key(hyper.dropout_seed, number, ZERO, hyper.input_dropout, dtype)  # acts[0]: the pixels
        coef = _update_coefs(dtype, lr, number, hyper)
        if csr_rows is not None:
            _sparse_forward(acts[1], _input_t(scratch, weights, B, ONE), targets, block_start, data, indices,
                            weights[0], biases[0], drop_in,
                            _dropout_key(hyper.dropout_seed, number, ONE, hyper.dropout, dtype))  # (B, C_1)
        if gathered is not None:
            gather_batch(acts[0], targets, data, indices)  # (B, C_0)
            if input_dropout is not None:
                _dropout_rows(acts[0], acts[0], drop_in)
            _transpose(_input_t(scratch, weights, B, ZERO), acts[0])  # (C_0, B), for the first weight gradient
            if listed is not None:
                _nonzero_terms(*image_terms, acts[0])
                _nonzero_terms(*pixel_terms, _input_t(scratch, weights, B, ZERO))
        if hidden_forward is not None:
            for l in range(first_dense, L - 1):
                terms, term_starts, packed = image_terms if l == 0 else every_term
                _dense_forward(acts[l + 1], _input_t(scratch, weights, B, l + 1), acts[l], weights[l], biases[l],
                               0.0, _dropout_key(hyper.dropout_seed, number, l + 1, hyper.dropout, dtype), packs,
                               terms, term_starts, packed)  # (B, C_l+1)
        dinp = douts[max(L - 2, 0)][:rows]
        _head_region(acts[L], douts[L - 1], dinp, acts[L - 1], weights[L - 1], biases[L - 1], targets, losses,
                     correct, keep_scale, packs, *every_term)
        if hidden_backward is not None:
            for l in range(L - 2, 0, -1):  # gradients into the hidden layers, while every weight is unchanged
                _dense_backward_input(douts[l - 1], douts[l], weights[l], acts[l], keep_scale, packs,
                                      *every_term)  # (B, C_l)
        for l in range(L - 1, 0, -1):  # the updates, last layer first
            terms, term_starts, packed = every_term
            _dense_update(l, params, grads, optimizer, _input_t(scratch, weights, B, l), douts[l], coef, packs, terms,
                          term_starts, packed)
        if csr_rows is not None:
            _sparse_update(params, grads, optimizer, data, block_start, douts[0], coef, drop_in)
        if gathered is not None:
            terms, term_starts, packed = pixel_terms
            _dense_update(ZERO, params, grads, optimizer, _input_t(scratch, weights, B, ZERO), douts[0], coef, packs,
                          terms, term_starts, packed)
        if max_norm is not None:
            for l in range(L):
                _max_norm_columns(weights[l], factors, hyper.max_norm)
        step_losses[s] = _mean(losses)
        n_correct = 0
        for b in range(B):
            n_correct += correct[b] != 0
        step_correct[s] = n_correct
    return step_losses, step_correct


def compile_train_steps(params, grads, optimizer, buffers, data, steps, hyper):
    """Compile train_steps for the types of these arguments, or load it from numba's cache, without
    running a step: what the first call would do first. Returns the seconds it took, so that a fit
    reports compilation on its own, not inside its first epoch's training time."""
    start = time.perf_counter()
    args = (params, grads, optimizer, buffers, data, steps, hyper, *_kernels_used(params, data, hyper))
    _train_steps.compile(tuple(typeof(x) for x in args))
    return time.perf_counter() - start


# ---- a damaged cache ---------------------------------------------------------------------------------
def _load_or_recompile(kernel, load, *args):
    """numba's load of a cached kernel, but a damaged entry (a truncated or garbled file: numba raises
    UnpicklingError, EOFError, ...) is dropped with a one-line notice, and numba compiles afresh."""
    try:
        return load(*args)
    except Exception as e:
        index = Path(kernel._cache._cache_file._index_path)
        print(f"numba: the cached {kernel.__name__} in {index.parent} is unreadable ({type(e).__name__}): "
              f"compiling it again", file=sys.stderr, flush=True)
        index.unlink(missing_ok=True)  # numba writes a new index, and new data files, when it saves
        return None


def _guard_the_cache():
    """Route every cached kernel of this module through _load_or_recompile. It wraps a private method
    of numba's cache (numba 0.68); if that moves, the wrapping is skipped and numba's own error shows."""
    for kernel in list(globals().values()):
        cache = getattr(kernel, "_cache", None) if isinstance(kernel, CPUDispatcher) else None
        if hasattr(cache, "load_overload") and hasattr(cache, "_cache_file"):
            cache.load_overload = partial(_load_or_recompile, kernel, cache.load_overload)


_guard_the_cache()
