"""The Numba backend: every op of fastnn/ops.py as a jitted CPU kernel, same names, signatures, meaning.

    from kernels import cpu
    data = cpu.prepare_data(images, labels, 1 / 255)  # once per fit: sparse images also kept as CSR
    losses, n_correct = cpu.train_steps(params, grads, optimizer, buffers, data, steps, hyper)

Dimension letters (fastnn/ops.py's): B = batch size, C = input features of a layer, OC = output
features, K = classes, L = layers. Weights are stored (C, OC). Outputs come first and are overwritten.

How train_steps computes a step:
- A first layer fed sparse images (MNIST: 81% exact zeros) works on their non-zeros only, kept in CSR
  form by prepare_data: its forward adds, for each image, the weight rows of its non-zero pixels; its
  weight gradient adds each non-zero pixel's share into that pixel's weight row. The work is
  proportional to the non-zeros.
- Every dense product (hidden layers' forward, input gradient and weight gradient; the last layer)
  runs on one register block, _dot_tile: 4 x 4 outputs, each a sum along an axis contiguous in both
  operands, which LLVM vectorises with the 16 sums in vector registers. For that, each kernel also
  writes the transpose of what it produces (cheaply, a tile at a time) for the kernel that reads it
  along the other axis, and the updates keep each weight's transpose current, in the scratch memory.
- The last layer (the K classes) and the loss run per block of four samples.
- Dropout happens in the epilogues of the kernels that produce an activation (the gathered pixels,
  each hidden layer's ReLU), its mask bits hashed from (seed, step, layer, row, unit) as
  fastnn.ops.dropout_keep draws them; the updates (SGD or Adam, chosen once per block) run in the
  weight-gradient kernels; max-norm, when on, is one more region per layer after them.
A step is 2L + 1 parallel regions for L layers, each a loop over fixed-size blocks of its outputs.

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
from typing import NamedTuple

import numba
import numpy as np
from numba import njit, prange, uint64

from fastnn.step import ADAM, ADAMW, SGD, Steps

# ---- tunables ----------------------------------------------------------------------------------
# They live here, beside the kernels that read them, on purpose: numba freezes a global's value into
# the compiled code, and its on-disk cache is invalidated only when this file changes.

# Every fast-math flag except nnan/ninf: NaN and inf keep their meaning (a diverged loss stays NaN).
# reassoc + contract are what let float reductions vectorise and fuse into FMAs (5x without them).
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
# A dense product's parallel task: a panel of PANEL_ROWS x PANEL_COLS outputs. Column panels run
# outermost, so a thread's consecutive panels share the same 64 rows of the second operand (64 x 1024
# floats = 256 KiB), which stay in its L2 while the rows of the first stream past.
PANEL_ROWS = 16
PANEL_COLS = 64
# The sparse weight gradient's parallel task: PIXEL_BLOCK rows of the first weight (at most 64: a
# bit mask of int64 records which rows the batch touched).
PIXEL_BLOCK = 16
# Images with at most this share of non-zero pixels take the sparse first layer (MNIST: 0.19).
SPARSE_DENSITY = 0.5
# Elements per parallel task of sgd_update; a smaller array (a bias) is one task, updated serially,
# since waking the thread pool costs more than the work.
SGD_CHUNK = 16384

# Start Numba's thread pool now. train_steps and forward are cached serial functions that call parallel
# kernels; when one was compiled while its kernels came from the cache, its own cache entry misses the
# hook that starts the pool on loading, and its first parallel kernel then segfaults (seen here, numba
# 0.68; the family of numba issue #8578).
numba.get_num_threads()

# What the first run of a machine prints before it compiles (measured on the 2-core development
# machine, cold cache, the default preset: about 45 s; then about 1 s to load them from the cache).
COMPILE_NOTICE = ("numba: compiling the kernels for this machine, once (about a minute on 2 cores); "
                  "later runs load them from the cache in about a second")


def compile_notice():
    """COMPILE_NOTICE when train_steps has nothing compiled in numba's cache for this source, else None.

    It reads numba's cache index through private attributes: if they move in a numba release, the
    notice is shown every time rather than never.
    """
    try:
        cached = bool(train_steps._cache._cache_file._load_index())  # {} when absent or stale
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
    """The training set as this backend keeps it: fastnn.step.Data's fields and, when the images are
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

    First what lasts from step to step: weight.T of every layer, which the updates keep current.
    Then what each step rewrites: each sample's loss and whether it was classified right (summed in
    sample order after the step); for sparse images, where each sample's non-zeros cross into each
    block of PIXEL_BLOCK pixels (int32); and the transposes of every layer's input and output gradient.
    """
    B = batch_size
    total = 2 * B + B * (_cdiv(sizes[0], PIXEL_BLOCK) + 1)
    for l in range(len(sizes) - 1):
        total += sizes[l] * sizes[l + 1] + (sizes[l] + sizes[l + 1]) * B
    return total


@njit(cache=True)
def _weight_t(scratch, weights, l):
    """Layer l's weight.T (C_l+1, C_l): the transposes come first, one after another."""
    offset = 0
    for i in range(l):
        offset += weights[i].size
    C, OC = weights[l].shape
    return scratch[offset:offset + C * OC].reshape((OC, C))


@njit(cache=True)
def _step_parts(scratch, weights, B):
    """What a step of B rows rewrites, after the weight transposes: (losses (B,), correct (B,),
    pixel-block starts (B, blocks + 1) int32, offset of the per-layer transposes)."""
    offset = 0
    for w in weights:
        offset += w.size
    n = _cdiv(weights[0].shape[0], PIXEL_BLOCK) + 1
    losses, correct = scratch[offset:offset + B], scratch[offset + B:offset + 2 * B]
    # int32 positions in the float scratch: as many of them as floats (float32), or twice as many
    block_start = scratch[offset + 2 * B:offset + 2 * B + B * n].view(np.int32).reshape((-1, n))[:B]
    return losses, correct, block_start, offset + 2 * B + B * n


@njit(cache=True)
def _transposes(scratch, weights, B, l):
    """Layer l's (inp.T (C_l, B), dout.T (C_l+1, B)) for a step of B rows."""
    offset = _step_parts(scratch, weights, B)[3]
    for i in range(l):
        offset += (weights[i].shape[0] + weights[i].shape[1]) * B
    C, OC = weights[l].shape
    inp_t = scratch[offset:offset + C * B].reshape((C, B))
    return inp_t, scratch[offset + C * B:offset + (C + OC) * B].reshape((OC, B))


# ---- the register block every dense product is made of ---------------------------------------------
@njit(fastmath=FASTMATH, cache=True)
def _dot_tile(out, a, bt, i0, j0):
    """out[i0:i0+4, j0:j0+4] = a[i0:i0+4] (4, K) @ bt[j0:j0+4] (4, K).T.

    Dot-product form: both operands are contiguous along K, so LLVM vectorises the k loop and keeps
    the 16 sums in vector registers: 8 vector loads feed 16 FMAs (with AVX-512: 16 zmm accumulators;
    `python -m kernels.dev.dense --asm` prints the loop). Spelling out the 16 scalars is what makes
    LLVM do it; a 4 x 4 array of sums would live in memory.
    """
    K = a.shape[1]
    zero = out.dtype.type(0)
    c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = zero
    c20 = c21 = c22 = c23 = c30 = c31 = c32 = c33 = zero
    for k in range(K):
        a0, a1, a2, a3 = a[i0, k], a[i0 + 1, k], a[i0 + 2, k], a[i0 + 3, k]
        b0, b1, b2, b3 = bt[j0, k], bt[j0 + 1, k], bt[j0 + 2, k], bt[j0 + 3, k]
        c00 += a0 * b0
        c01 += a0 * b1
        c02 += a0 * b2
        c03 += a0 * b3
        c10 += a1 * b0
        c11 += a1 * b1
        c12 += a1 * b2
        c13 += a1 * b3
        c20 += a2 * b0
        c21 += a2 * b1
        c22 += a2 * b2
        c23 += a2 * b3
        c30 += a3 * b0
        c31 += a3 * b1
        c32 += a3 * b2
        c33 += a3 * b3
    out[i0, j0], out[i0, j0 + 1], out[i0, j0 + 2], out[i0, j0 + 3] = c00, c01, c02, c03
    out[i0 + 1, j0], out[i0 + 1, j0 + 1], out[i0 + 1, j0 + 2], out[i0 + 1, j0 + 3] = c10, c11, c12, c13
    out[i0 + 2, j0], out[i0 + 2, j0 + 1], out[i0 + 2, j0 + 2], out[i0 + 2, j0 + 3] = c20, c21, c22, c23
    out[i0 + 3, j0], out[i0 + 3, j0 + 1], out[i0 + 3, j0 + 2], out[i0 + 3, j0 + 3] = c30, c31, c32, c33


@njit(fastmath=FASTMATH, cache=True)
def _dot_rows(a, i, bt, j):
    """sum(a[i] * bt[j]): one vectorised reduction, for the edges of a block."""
    total = a.dtype.type(0)
    for k in range(a.shape[1]):
        total += a[i, k] * bt[j, k]
    return total


@njit(fastmath=FASTMATH, cache=True)
def _dot_block(out, a, bt, i0, i1, j0, j1):
    """out[i0:i1, j0:j1] = a[i0:i1] @ bt[j0:j1].T: 4 x 4 tiles, single sums at the edges."""
    i_tiles, j_tiles = i0 + (i1 - i0) // 4 * 4, j0 + (j1 - j0) // 4 * 4
    for i in range(i0, i_tiles, 4):
        for j in range(j0, j_tiles, 4):
            _dot_tile(out, a, bt, i, j)  # (4, 4)
    for i in range(i0, i1):
        for j in range(j_tiles if i < i_tiles else j0, j1):
            out[i, j] = _dot_rows(a, i, bt, j)


@njit(cache=True)
def _panel(p, n_row_panels, M, N):
    """Rows [i0, i1) and columns [j0, j1) of panel p of an (M, N) output; column panels outermost."""
    i0, j0 = p % n_row_panels * PANEL_ROWS, p // n_row_panels * PANEL_COLS
    return i0, min(i0 + PANEL_ROWS, M), j0, min(j0 + PANEL_COLS, N)


@njit(fastmath=FASTMATH, cache=True)
def _store_t(out_t, out, i0, i1, j0, j1):
    """out_t[j0:j1, i0:i1] = out[i0:i1, j0:j1].T: a block just computed, still in L1."""
    for j in range(j0, j1):
        for i in range(uint64(i0), uint64(i1)):
            out_t[j, i] = out[i, j]


@njit(cache=True)
def _transpose_rows(out, inp, n0, n1):
    """out[n0:n1] = inp[:, n0:n1].T, 32 columns of inp at a time."""
    M = out.shape[1]
    for m0 in range(0, M, 32):
        _store_t(out, inp, m0, min(m0 + 32, M), n0, n1)


@njit(parallel=True, cache=True)
def _transpose(out, inp):
    """out (N, M) = inp (M, N).T, for what no kernel produces transposed (once per call of train_steps)."""
    N = out.shape[0]
    # prange over blocks of 32 rows of out: iteration i owns them
    for task in prange(_cdiv(N, 32)):
        i = np.int64(task)  # the parallel loop's index is unsigned: numba would type the body twice
        _transpose_rows(out, inp, i * 32, min(i * 32 + 32, N))


# ---- the optimizers -------------------------------------------------------------------------------
# An update's scalars travel as one tuple, `coef` (_update_coefs), in the parameters' dtype: float64
# scalars would make float32 math float64. The branch on the optimizer is taken once per block of
# elements, outside the loops, so that each loop vectorises with one formula.
@njit(cache=True)
def _coefs(weight, lr, t, optimizer, momentum, weight_decay, beta1, beta2, eps):
    """(optimizer, lr, momentum, L2 decay, decoupled shrink, beta1, 1 - beta1, beta2, 1 - beta2, eps,
    Adam's step size, 1 / sqrt(its second bias correction)) for step t = 1, 2, ..."""
    real = weight.dtype.type
    decoupled = optimizer == ADAMW
    decay = 0.0 if decoupled else weight_decay
    shrink = 1 - lr * weight_decay if decoupled else 1.0
    # Adam's bias corrections, folded into two scalars in float64 once per step: the elements then
    # need one division and one square root, as in PyTorch's Adam
    step_size = lr / (1 - beta1 ** t)
    inv_sqrt_bc2 = 1 / np.sqrt(1 - beta2 ** t)
    return (optimizer, real(lr), real(momentum), real(decay), real(shrink), real(beta1), real(1 - beta1), real(beta2),
            real(1 - beta2), real(eps), real(step_size), real(inv_sqrt_bc2))


@njit(cache=True)
def _update_coefs(weight, lr, number, hyper):
    """_coefs for step `number` under hyper (fastnn.step.Hyper)."""
    return _coefs(weight, lr, number, hyper.optimizer, hyper.momentum, hyper.weight_decay, hyper.beta1, hyper.beta2,
                  hyper.eps)


@njit(fastmath=FASTMATH, cache=True)
def _sgd_step(param, grad, velocity, coef):
    """One element's SGD step (fastnn.ops.sgd_update): returns its new (param, velocity)."""
    rate, mom, decay = coef[1], coef[2], coef[3]
    if decay != 0:  # as the reference: no 0 * param term, so an inf weight stays inf
        grad += decay * param
    velocity = mom * velocity + grad
    return param - rate * velocity, velocity


# error_model="numpy": a float division by zero gives inf as in NumPy, instead of numba's default
# check and ZeroDivisionError, a branch in every element that keeps LLVM from vectorising the loop
# (measured on a 784 x 128 weight, float32: 409 us -> 96 us; SGD's update: 33 us)
@njit(fastmath=FASTMATH, error_model="numpy", cache=True)
def _adam_step(param, grad, m, v, coef):
    """One element's Adam or AdamW step (fastnn.ops.adam_update): returns its new (param, m, v)."""
    decay, shrink, beta1, c1, beta2, c2, eps, step_size, inv_sqrt_bc2 = coef[3:]
    if decay != 0:
        grad += decay * param
    m = beta1 * m + c1 * grad
    v = beta2 * v + c2 * grad * grad
    return param * shrink - step_size * m / (np.sqrt(v) * inv_sqrt_bc2 + eps), m, v


@njit(fastmath=FASTMATH, cache=True)
def _update_one(param, grad, m, v, coef):
    """One element's update, whichever the optimizer: returns (param, m, v)."""
    if coef[0] == SGD:
        param, m = _sgd_step(param, grad, m, coef)
        return param, m, v
    return _adam_step(param, grad, m, v, coef)


@njit(fastmath=FASTMATH, cache=True)
def _update_span(param, grad, m, v, coef):
    """The update of 1-D arrays (a chunk, a bias), serially; m, v: the optimizer's state for them."""
    if coef[0] == SGD:
        for i in range(param.size):
            param[i], m[i] = _sgd_step(param[i], grad[i], m[i], coef)
    else:
        for i in range(param.size):
            param[i], m[i], v[i] = _adam_step(param[i], grad[i], m[i], v[i], coef)


@njit(fastmath=FASTMATH, cache=True)
def _update_block(weight, dweight, m, v, c0, c1, j0, j1, coef):
    """The update of the block [c0:c1, j0:j1] of 2-D arrays, in place."""
    if coef[0] == SGD:
        for c in range(c0, c1):
            for j in range(uint64(j0), uint64(j1)):
                weight[c, j], m[c, j] = _sgd_step(weight[c, j], dweight[c, j], m[c, j], coef)
    else:
        for c in range(c0, c1):
            for j in range(uint64(j0), uint64(j1)):
                weight[c, j], m[c, j], v[c, j] = _adam_step(weight[c, j], dweight[c, j], m[c, j], v[c, j], coef)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _update_flat(param, grad, m, v, coef):
    """The update of arrays of any shape, C-contiguous, SGD_CHUNK elements per parallel task."""
    param_flat, grad_flat = param.reshape(param.size), grad.reshape(grad.size)  # views, no copies
    m_flat, v_flat = m.reshape(m.size), v.reshape(v.size)
    # prange over chunks of SGD_CHUNK elements: iteration i owns its chunk of param, m and v
    for task in prange(_cdiv(param_flat.size, SGD_CHUNK)):
        i = np.int64(task)  # the parallel loop's index is unsigned: numba would type the body twice
        chunk = slice(i * SGD_CHUNK, (i + 1) * SGD_CHUNK)
        _update_span(param_flat[chunk], grad_flat[chunk], m_flat[chunk], v_flat[chunk], coef)


@njit(cache=True)
def sgd_update(param, grad, velocity, lr, momentum, weight_decay):
    """One SGD step with optional momentum and L2 weight decay, in place (PyTorch's formulation).

    g = grad + weight_decay * param;  velocity = momentum * velocity + g;  param -= lr * velocity
    param, grad, velocity: any shape, C-contiguous.
    """
    # velocity stands in for the unused second moment
    _update_flat(param, grad, velocity, velocity, _coefs(param, lr, 1, SGD, momentum, weight_decay, 0.9, 0.999, 1e-8))


@njit(cache=True)
def adam_update(param, grad, moment1, moment2, lr, step, beta1, beta2, eps, weight_decay, decoupled):
    """One Adam step (AdamW if decoupled), in place: fastnn.ops.adam_update. Any shape, C-contiguous."""
    optimizer = ADAMW if decoupled else ADAM
    _update_flat(param, grad, moment1, moment2, _coefs(param, lr, step, optimizer, 0.0, weight_decay, beta1, beta2, eps))


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _max_norm_columns(weight, weight_t, factors, limit):
    """Columns of weight (C, OC) whose L2 norm exceeds limit scaled to norm limit, and the rows of
    weight_t (OC, C) with them unless it has no rows; factors (>= OC,) is working memory."""
    C, OC = weight.shape
    limit = weight.dtype.type(limit)
    # prange over blocks of PANEL_COLS columns: iteration owns those columns of weight, rows of
    # weight_t and entries of factors; each norm is summed row by row, the same order for any threads
    for task in prange(_cdiv(OC, PANEL_COLS)):
        block = np.int64(task)  # the parallel loop's index is unsigned: numba would type the body twice
        j0, j1 = block * PANEL_COLS, min(block * PANEL_COLS + PANEL_COLS, OC)
        _max_norm_block(weight, weight_t, factors, limit, j0, j1)


@njit(fastmath=FASTMATH, cache=True)
def _max_norm_block(weight, weight_t, factors, limit, j0, j1):
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
    if weight_t.shape[0] > 0:  # the same products, so weight_t stays weight.T bit for bit
        for j in range(j0, j1):
            for c in range(C):
                weight_t[j, c] *= factors[j]


@njit(cache=True)
def max_norm(weight, limit):
    """Scale each column of weight (C, OC) down to L2 norm <= limit, in place: fastnn.ops.max_norm."""
    _max_norm_columns(weight, weight[:0], np.empty(weight.shape[1], weight.dtype), limit)


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
def _dropout_key(seed, step, layer, rate, dtype):
    """(step key, threshold, keep scale) of fastnn.ops.dropout_keep for a layer at a step; threshold 0
    (rate 0) keeps every unit."""
    seed_key = _hash32(uint64(seed) & MASK32)
    key = _hash32(_hash32(seed_key ^ (uint64(step) & MASK32)) ^ uint64(layer))
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
        _dropout_row(out, b, 0, H, drop)


@njit(cache=True)
def dropout_forward(out, inp, seed, step, layer, rate):
    """Inverted dropout: out (B, H) = inp * keep / (1 - rate), the masks of fastnn.ops.dropout_keep."""
    _dropout_rows(out, inp, _dropout_key(seed, step, layer, rate, out.dtype.type))


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
def _dense_forward(out, out_t, inp, weight_t, bias, floor, drop):
    """out (B, OC) = max(inp (B, C) @ weight_t (OC, C).T + bias (OC), floor): floor 0 is the ReLU,
    -inf none; then dropout under drop (a _dropout_key; threshold 0: none); out_t (OC, B) = out.T
    unless it has no rows (the weight gradient of the next layer reads it). Flags are numbers and
    shapes, not booleans: numba compiles a function anew for each boolean constant it is called with."""
    B, OC = out.shape
    n_row_panels = _cdiv(B, PANEL_ROWS)
    # prange over panels of outputs: iteration p owns its panel of out and out_t
    for task in prange(n_row_panels * _cdiv(OC, PANEL_COLS)):
        p = np.int64(task)  # the parallel loop's index is unsigned: numba would type the body twice
        _forward_panel(out, out_t, inp, weight_t, bias, floor, drop, *_panel(p, n_row_panels, B, OC))


@njit(fastmath=FASTMATH, cache=True)
def _forward_panel(out, out_t, inp, weight_t, bias, floor, drop, i0, i1, j0, j1):
    """Panel [i0:i1, j0:j1] of _dense_forward."""
    _dot_block(out, inp, weight_t, i0, i1, j0, j1)  # (i1 - i0, j1 - j0)
    for i in range(i0, i1):  # bias, ReLU and dropout while the panel is in L1
        for j in range(uint64(j0), uint64(j1)):
            value = out[i, j] + bias[j]
            out[i, j] = floor if value < floor else value  # `<`: NaN stays NaN, as with np.maximum
        _dropout_row(out, i, j0, j1, drop)
    if out_t.shape[0] > 0:
        _store_t(out_t, out, i0, i1, j0, j1)


@njit(fastmath=FASTMATH, cache=True)
def _transposed(weight):
    """A new (OC, C) copy of weight (C, OC).T, for the single ops (not in the training loop)."""
    weight_t = np.empty((weight.shape[1], weight.shape[0]), weight.dtype)
    _transpose(weight_t, weight)
    return weight_t


@njit(fastmath=FASTMATH, cache=True)
def linear_forward(out, inp, weight, bias):
    """out (B, OC) = inp (B, C) @ weight (C, OC) + bias (OC)."""
    _dense_forward(out, out[:0], inp, _transposed(weight), bias, -np.inf, _dropout_key(0, 0, 0, 0.0, out.dtype.type))


@njit(fastmath=FASTMATH, cache=True)
def linear_relu_forward(out, inp, weight, bias):
    """out (B, OC) = relu(inp (B, C) @ weight (C, OC) + bias (OC)): a hidden layer, ReLU in the epilogue."""
    _dense_forward(out, out[:0], inp, _transposed(weight), bias, 0.0, _dropout_key(0, 0, 0, 0.0, out.dtype.type))


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
def _dense_dweight(dweight, dbias, inp_t, dout_t):
    """dweight (C, OC) = inp_t (C, B) @ dout_t (OC, B).T; dbias (OC) = dout_t summed along B."""
    C, OC = dweight.shape
    n_row_panels = _cdiv(C, PANEL_ROWS)
    # prange over panels of dweight: iteration p owns its panel (and those of the first rows dbias's)
    for task in prange(n_row_panels * _cdiv(OC, PANEL_COLS)):
        p = np.int64(task)  # the parallel loop's index is unsigned: numba would type the body twice
        _dweight_panel(dweight, dbias, inp_t, dout_t, *_panel(p, n_row_panels, C, OC))


@njit(fastmath=FASTMATH, cache=True)
def _dweight_panel(dweight, dbias, inp_t, dout_t, c0, c1, j0, j1):
    """Panel [c0:c1, j0:j1] of _dense_dweight, and dbias[j0:j1] for the panels of the first rows."""
    _dot_block(dweight, inp_t, dout_t, c0, c1, j0, j1)
    if c0 == 0:
        for j in range(j0, j1):
            dbias[j] = _row_sum(dout_t, j)


@njit(fastmath=FASTMATH, cache=True)
def _row_sum(x, j):
    """sum(x[j]): a bias gradient from a transposed output gradient."""
    total = x.dtype.type(0)
    for b in range(x.shape[1]):
        total += x[j, b]
    return total


@njit(fastmath=FASTMATH, cache=True)
def linear_backward(dweight, dbias, dout, inp):
    """Parameter gradients of out = inp @ weight + bias.

    dweight (C, OC) = inp (B, C).T @ dout (B, OC); dbias (OC) = dout summed over the batch.
    """
    _dense_dweight(dweight, dbias, _transposed(inp), _transposed(dout))


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _dense_backward_input(dinp, dinp_t, dout, weight, inp, keep_scale):
    """dinp (B, C) = (dout (B, OC) @ weight (C, OC).T) * (inp > 0) * keep_scale; dinp_t (C, B) = dinp.T
    unless it has no rows. inp is 0 where the ReLU was off or dropout dropped the unit; keep_scale is
    dropout's 1 / (1 - rate) (1: none), by which a kept unit's output was scaled.

    Dot-product form with no transpose needed: dout's rows and weight's rows are both along OC.
    """
    B, C = dinp.shape
    n_row_panels = _cdiv(B, PANEL_ROWS)
    # prange over panels of dinp: iteration p owns its panel of dinp and dinp_t
    for task in prange(n_row_panels * _cdiv(C, PANEL_COLS)):
        p = np.int64(task)  # the parallel loop's index is unsigned: numba would type the body twice
        _dinp_panel(dinp, dinp_t, dout, weight, inp, keep_scale, *_panel(p, n_row_panels, B, C))


@njit(fastmath=FASTMATH, cache=True)
def _dinp_panel(dinp, dinp_t, dout, weight, inp, keep_scale, i0, i1, j0, j1):
    """Panel [i0:i1, j0:j1] of _dense_backward_input."""
    _dot_block(dinp, dout, weight, i0, i1, j0, j1)
    for i in range(i0, i1):  # the ReLU mask as a product, as the reference: NaN stays NaN
        for j in range(uint64(j0), uint64(j1)):
            dinp[i, j] = dinp[i, j] * (inp[i, j] > 0) * keep_scale
    if dinp_t.shape[0] > 0:
        _store_t(dinp_t, dinp, i0, i1, j0, j1)


@njit(fastmath=FASTMATH, cache=True)
def linear_backward_input(dinp, dout, weight, inp):
    """Gradient into the layer's input, through the ReLU that produced it.

    dinp (B, C) = (dout (B, OC) @ weight (C, OC).T) * (inp > 0), inp being the previous ReLU's output.
    """
    _dense_backward_input(dinp, dinp[:0], dout, weight, inp, dinp.dtype.type(1))


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
    _dropout_row(out, b, 0, OC, drop)
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
        _store_t(out_t, out, b0, b1, 0, out.shape[1])


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _sparse_update(params, grads, optimizer, data, block_start, dout, lr, number, hyper, drop_in):
    """The first layer's dweight = images[indices].T @ dout over the non-zeros, then the update, row by row.

    Each task takes PIXEL_BLOCK rows and the batch's samples in order, so each row's sum runs in the
    same order whatever the thread count: for each non-zero pixel of a sample, that sample's row of
    dout into the pixel's row of dweight, the pixel as the forward saw it (drop_in: input dropout).
    A row no image of the batch touches has a zero gradient:
    plain SGD leaves it alone; momentum, weight decay and Adam still move it.
    """
    weight, dweight, m, v = params.weights[0], grads.weights[0], optimizer.velocity.weights[0], optimizer.second.weights[0]
    bias, dbias, m_b, v_b = params.biases[0], grads.biases[0], optimizer.velocity.biases[0], optimizer.second.biases[0]
    columns, values, scale = data.columns, data.values, data.scale
    coef = _update_coefs(weight, lr, number, hyper)
    C, OC = weight.shape
    # prange over blocks of PIXEL_BLOCK rows: iteration owns those rows of dweight, weight, m, v
    # (and the first block the bias)
    for task in prange(_cdiv(C, PIXEL_BLOCK)):
        block = np.int64(task)  # the parallel loop's index is unsigned: numba would type the body twice
        _sparse_update_rows(block, weight, dweight, m, v, columns, values, scale, block_start, dout, coef, drop_in)
        if block == 0:
            for j in range(OC):
                dbias[j] = _column_sum(dout, j)
            _update_span(bias, dbias, m_b, v_b, coef)


@njit(fastmath=FASTMATH, cache=True)
def _column_sum(x, j):
    """sum(x[:, j]), in row order: a bias gradient."""
    total = x.dtype.type(0)
    for b in range(x.shape[0]):
        total += x[b, j]
    return total


@njit(fastmath=FASTMATH, cache=True)
def _sparse_update_rows(block, weight, dweight, m, v, columns, values, scale, block_start, dout, coef, drop_in):
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
            if coef[0] == SGD and coef[2] == 0 and coef[3] == 0:  # plain SGD: a zero gradient changes nothing
                continue
            for j in range(OC):
                dweight[k, j] = 0
        _update_block(weight, dweight, m, v, k, k + 1, 0, OC, coef)


# ---- dense layers and the last layer in a training step --------------------------------------------
@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _dense_update(l, params, grads, optimizer, weight_t, inp_t, dout_t, lr, number, hyper):
    """Dense layer l: dweight = inp_t (C, B) @ dout_t (OC, B).T, then the update of weight and the
    optimizer's state; weight_t (OC, C) follows (the next forward reads it)."""
    weight, dweight, m, v = params.weights[l], grads.weights[l], optimizer.velocity.weights[l], optimizer.second.weights[l]
    bias, dbias, m_b, v_b = params.biases[l], grads.biases[l], optimizer.velocity.biases[l], optimizer.second.biases[l]
    coef = _update_coefs(weight, lr, number, hyper)
    C, OC = weight.shape
    n_row_panels = _cdiv(C, PANEL_ROWS)
    # prange over panels of dweight: iteration p owns that panel of dweight, weight, m, v and weight_t
    # (and those of the first rows their part of the bias)
    for task in prange(n_row_panels * _cdiv(OC, PANEL_COLS)):
        p = np.int64(task)  # the parallel loop's index is unsigned: numba would type the body twice
        c0, c1, j0, j1 = _panel(p, n_row_panels, C, OC)
        _update_panel(weight, weight_t, dweight, m, v, inp_t, dout_t, coef, c0, c1, j0, j1)
        if c0 == 0:
            for j in range(j0, j1):
                dbias[j] = _row_sum(dout_t, j)
                bias[j], m_b[j], v_b[j] = _update_one(bias[j], dbias[j], m_b[j], v_b[j], coef)


@njit(fastmath=FASTMATH, cache=True)
def _update_panel(weight, weight_t, dweight, m, v, inp_t, dout_t, coef, c0, c1, j0, j1):
    """Panel [c0:c1, j0:j1] of _dense_update: its weight gradient, the update, and weight.T."""
    _dot_block(dweight, inp_t, dout_t, c0, c1, j0, j1)  # (c1 - c0, j1 - j0)
    _update_block(weight, dweight, m, v, c0, c1, j0, j1, coef)
    _store_t(weight_t, weight, c0, c1, j0, j1)


@njit(fastmath=FASTMATH, cache=True)
def _head_update_columns(weight, weight_t, dweight_t, m, v, dlogits_t, inp_t, coef, c0, c1):
    """Columns c0:c1 of _head_update's weight_t: their gradient, then the update of weight_t, weight, m, v."""
    K = weight_t.shape[0]
    _dot_block(dweight_t, dlogits_t, inp_t, 0, K, c0, c1)  # (K, c1 - c0)
    for c in range(c0, c1):
        for j in range(K):
            w, m[c, j], v[c, j] = _update_one(weight_t[j, c], dweight_t[j, c], m[c, j], v[c, j], coef)
            weight_t[j, c], weight[c, j] = w, w


@njit(fastmath=FASTMATH, cache=True)
def _combine_rows(out, b, coefs, rows):
    """out[b] (C,) = coefs[b] (K,) @ rows (K, C), rows added four per pass."""
    K, C = rows.shape
    for c in range(C):
        out[b, c] = 0
    for j in range(0, K - 3, 4):
        a0, a1, a2, a3 = coefs[b, j], coefs[b, j + 1], coefs[b, j + 2], coefs[b, j + 3]
        for c in range(C):
            out[b, c] = out[b, c] + a0 * rows[j, c] + a1 * rows[j + 1, c] + a2 * rows[j + 2, c] + a3 * rows[j + 3, c]
    for j in range(K - K % 4, K):
        a = coefs[b, j]
        for c in range(C):
            out[b, c] += a * rows[j, c]


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _head_region(logits, dlogits, dlogits_t, dinp, dinp_t, inp, weight_t, bias, targets, losses, correct, keep_scale):
    """The last layer and the loss, per block of 4 samples, and the gradient into the layer's input.

    logits (B, K) = inp (B, C) @ weight_t (K, C).T + bias; dlogits (B, K) as softmax_cross_entropy,
    and dlogits_t = dlogits.T; losses[b], correct[b] (1.0 if the largest logit is the target, before
    any update); dinp (B, C) = (dlogits @ weight_t) * (inp > 0) * keep_scale (as _dense_backward_input)
    and dinp_t = dinp.T, unless dinp has
    no rows (a single layer has no hidden layer below it: the pixels need no gradient).
    """
    B, K = logits.shape
    # prange over blocks of 4 samples: iteration owns their rows of logits, dlogits, dinp, losses,
    # correct, and their columns of dlogits_t and dinp_t
    for task in prange(_cdiv(B, 4)):
        block = np.int64(task)  # the parallel loop's index is unsigned: numba would type the body twice
        _head_block(logits, dlogits, dlogits_t, dinp, dinp_t, inp, weight_t, bias, targets, losses, correct,
                    keep_scale, block * 4, min(block * 4 + 4, B))


@njit(fastmath=FASTMATH, cache=True)
def _head_block(logits, dlogits, dlogits_t, dinp, dinp_t, inp, weight_t, bias, targets, losses, correct, keep_scale,
                b0, b1):
    """Samples b0:b1 of _head_region."""
    K = logits.shape[1]
    _dot_block(logits, inp, weight_t, b0, b1, 0, K)  # (b1 - b0, K)
    for b in range(b0, b1):
        for k in range(K):
            logits[b, k] += bias[k]
        correct[b] = _argmax_row(logits, b) == targets[b]
        losses[b] = _softmax_xent_row(dlogits, logits, targets, b)
        if dinp.shape[0] > 0:
            _combine_rows(dinp, b, dlogits, weight_t)  # (C,)
            for c in range(dinp.shape[1]):
                dinp[b, c] = dinp[b, c] * (inp[b, c] > 0) * keep_scale
    _store_t(dlogits_t, dlogits, b0, b1, 0, K)
    if dinp.shape[0] > 0:
        _store_t(dinp_t, dinp, b0, b1, 0, dinp.shape[1])


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _head_update(params, grads, optimizer, weight_t, inp_t, dlogits_t, lr, number, hyper):
    """The last layer: dweight.T (K, C) = dlogits_t (K, B) @ inp_t (C, B).T, then the update of
    weight_t, weight and the optimizer's state. The gradient is computed transposed, into the layer's
    gradient buffer used as (K, C) working memory, so that its rows run along C, not K = 10."""
    l = len(params.weights) - 1
    weight, m, v = params.weights[l], optimizer.velocity.weights[l], optimizer.second.weights[l]
    bias, dbias, m_b, v_b = params.biases[l], grads.biases[l], optimizer.velocity.biases[l], optimizer.second.biases[l]
    C, K = weight.shape
    dweight_t = grads.weights[l].reshape((K, C))
    coef = _update_coefs(weight, lr, number, hyper)
    # prange over blocks of PANEL_COLS columns of weight_t: iteration owns them, in weight_t, weight,
    # m and v (and the first block the bias)
    for task in prange(_cdiv(C, PANEL_COLS)):
        block = np.int64(task)  # the parallel loop's index is unsigned: numba would type the body twice
        c0, c1 = block * PANEL_COLS, min(block * PANEL_COLS + PANEL_COLS, C)
        _head_update_columns(weight, weight_t, dweight_t, m, v, dlogits_t, inp_t, coef, c0, c1)
        if c0 == 0:
            for j in range(K):
                dbias[j] = _row_sum(dlogits_t, j)
            _update_span(bias, dbias, m_b, v_b, coef)


# ---- the training step ------------------------------------------------------------------------------
def train_step(params, grads, optimizer, buffers, data, indices, lr, number, hyper):
    """One mini-batch, step `number` of the run: fastnn.ops.train_step's arguments and results, (loss, n_correct).

    data from prepare_data; buffers are views sized to this batch, their scratch whole. One step is a
    call of train_steps (a Python function: one jitted entry point less to compile).
    """
    steps = Steps(np.asarray(indices).reshape(1, -1), np.array([lr], np.float64), np.array([number], np.int64))
    losses, n_correct = train_steps(params, grads, optimizer, buffers, data, steps, hyper)
    return float(losses[0]), int(n_correct[0])


@njit(fastmath=FASTMATH, cache=True)
def train_steps(params, grads, optimizer, buffers, data, steps, hyper):
    """S mini-batches in one call: fastnn.ops.train_steps. Returns (losses (S,), n_correct (S,)).

    data from prepare_data; buffers are views sized to these batches, their scratch whole (at least
    scratch_size(sizes, B) floats). A call from Python costs ~10 us (numba reads every array of the
    bundles): once per S steps it is noise. The weight transposes are filled once per call, then kept
    current by the updates (and max-norm). The steps' regions are called from here directly: numba
    re-optimizes the code of every callee in each caller, so each level of calls costs compile time.
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
        raise ValueError("buffers.scratch is smaller than scratch_size(): allocate the buffers with fastnn.step")
    sparse_first = data.sparse and L > 1  # a single layer is the last layer: it runs on gathered rows
    for l in range(1 if sparse_first else 0, L):  # weight.T, but a sparse first layer's (it reads weight rows)
        _transpose(_weight_t(scratch, weights, l), weights[l])
    losses, correct, block_start, _ = _step_parts(scratch, weights, B)
    rows = B if L > 1 else 0  # the gradient into the last hidden layer: none for a single layer
    keep_scale = dtype(1 / (1 - hyper.dropout))  # a kept unit's output and gradient factor
    factors = np.empty(sizes[1:].max(), dtype)  # max-norm's working memory (serial code: allocating is fine)
    S = steps.lrs.shape[0]
    step_losses, step_correct = np.empty(S), np.empty(S, np.int64)
    for s in range(S):
        indices, lr, number = steps.indices[s], steps.lrs[s], steps.numbers[s]
        drop_in = _dropout_key(hyper.dropout_seed, number, 0, hyper.input_dropout, dtype)  # acts[0]: the pixels
        if sparse_first:
            _sparse_forward(acts[1], _transposes(scratch, weights, B, 1)[0], targets, block_start, data, indices,
                            weights[0], biases[0], drop_in,
                            _dropout_key(hyper.dropout_seed, number, 1, hyper.dropout, dtype))  # (B, C_1)
        else:
            gather_batch(acts[0], targets, data, indices)  # (B, C_0)
            if hyper.input_dropout > 0:
                _dropout_rows(acts[0], acts[0], drop_in)
            _transpose(_transposes(scratch, weights, B, 0)[0], acts[0])  # (C_0, B), for the first weight gradient
        for l in range(1 if sparse_first else 0, L - 1):
            _dense_forward(acts[l + 1], _transposes(scratch, weights, B, l + 1)[0], acts[l],
                           _weight_t(scratch, weights, l), biases[l], 0.0,
                           _dropout_key(hyper.dropout_seed, number, l + 1, hyper.dropout, dtype))  # (B, C_l+1)
        last_inp_t, dlogits_t = _transposes(scratch, weights, B, L - 1)
        below = max(L - 2, 0)
        dinp, dinp_t = douts[below][:rows], _transposes(scratch, weights, B, below)[1][:rows]
        _head_region(acts[L], douts[L - 1], dlogits_t, dinp, dinp_t, acts[L - 1], _weight_t(scratch, weights, L - 1),
                     biases[L - 1], targets, losses, correct, keep_scale)
        for l in range(L - 2, 0, -1):  # gradients into the hidden layers, while every weight is unchanged
            _dense_backward_input(douts[l - 1], _transposes(scratch, weights, B, l - 1)[1], douts[l], weights[l],
                                  acts[l], keep_scale)  # (B, C_l)
        _head_update(params, grads, optimizer, _weight_t(scratch, weights, L - 1), last_inp_t, dlogits_t, lr, number,
                     hyper)
        for l in range(L - 2, -1, -1):
            if l == 0 and sparse_first:
                _sparse_update(params, grads, optimizer, data, block_start, douts[0], lr, number, hyper, drop_in)
            else:
                inp_t, dout_t = _transposes(scratch, weights, B, l)
                _dense_update(l, params, grads, optimizer, _weight_t(scratch, weights, l), inp_t, dout_t, lr, number,
                              hyper)
        if hyper.max_norm > 0:
            for l in range(L):  # a sparse first layer keeps no transpose
                weight_t = _weight_t(scratch, weights, l)
                _max_norm_columns(weights[l], weight_t[:0] if l == 0 and sparse_first else weight_t, factors,
                                  hyper.max_norm)
        step_losses[s] = _mean(losses)
        n_correct = 0
        for b in range(B):
            n_correct += correct[b] != 0
        step_correct[s] = n_correct
    return step_losses, step_correct
