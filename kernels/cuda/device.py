"""CUDA device functions: the math of every kernel, written once, called by both kernel versions.

Dimension letters (fastnn/ops.py's): B = batch rows, C = input features of a layer, OC = output
features, K = classes, N = dataset rows.

How the work is cut. Matmul-shaped ops are computed in TILE x TILE output tiles by blocks of
(TILE, TILE) threads, one thread per output element, and the `*_tiles(..., first, step, ...)`
functions do tiles first, first + step, ...: the one-kernel-per-op version (kernels/cuda/ops.py) launches
one block per tile and calls them with (blockIdx.x, gridDim.x); the persistent kernel
(kernels/cuda/persistent.py) has fewer blocks than tiles and the same call loops each block over
several. Every thread of a block must make the same tile calls: they hold syncthreads. Elementwise
functions take a flat thread number and the total thread count (a grid-stride loop), and the
row-wise ones give each thread whole rows: with K = 10 classes a row is 10 numbers, too few to share
out among the 32 threads of a warp.
"""
import functools
import math

import numpy as np
from numba import cuda

TILE = 16  # tiles of 16 x 16 outputs: 256 threads per block; the two shared tiles take 2.1 KiB (float32)
THREADS = TILE * TILE  # threads per block in every kernel; a power of two, as the tree reductions need
# shared tiles get one padding column, so that writing one transposed hits 16 different memory banks;
# a global tuple, because numba needs a shared array's shape as a compile-time constant
TILE_SHAPE = (TILE, TILE + 1)


def n_tiles(shape):
    """Number of TILE x TILE tiles covering a 2-D output of `shape` (host side)."""
    rows, cols = shape
    return -(-rows // TILE) * -(-cols // TILE)


@functools.cache
def nothing(ndim, dtype):
    """A zero-size device array (ndim, dtype), made once: for an output a kernel must not compute."""
    return cuda.device_array((0,) * ndim, np.dtype(dtype))


@cuda.jit(device=True)
def _tile_count(out):
    return ((out.shape[0] + TILE - 1) // TILE) * ((out.shape[1] + TILE - 1) // TILE)


@cuda.jit(device=True)
def _tile_origin(out, tile):
    """(row, col) of the first element of tile number `tile` of out, tiles numbered row-major."""
    tile_cols = (out.shape[1] + TILE - 1) // TILE
    return (tile // tile_cols) * TILE, (tile % tile_cols) * TILE


@cuda.jit(device=True)
def _load_tile(tile, src, row0, col0, transposed):
    """tile TILE_SHAPE [i, j] <- op(src)[row0 + i, col0 + j], op = transpose if `transposed`; 0 outside.

    Consecutive threadIdx.x always read consecutive addresses of src (coalesced); the transposed case
    writes shared memory down a column instead, which the tile's padding column keeps conflict-free.
    """
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    if transposed:
        r, c, i, j = col0 + ty, row0 + tx, tx, ty  # src[r, c] = op(src)[row0 + tx, col0 + ty]
    else:
        r, c, i, j = row0 + ty, col0 + tx, ty, tx
    if r < src.shape[0] and c < src.shape[1]:
        tile[i, j] = src[r, c]
    else:
        tile[i, j] = 0  # zero padding: a partial tile adds nothing to the dot products


@cuda.jit(device=True)
def _matmul_tile(a, a_transposed, b, b_transposed, row0, col0, inner, want_colsum, sa, sb):
    """This thread's element (row0 + ty, col0 + tx) of op(a) @ op(b), summed over `inner`.

    Also returns, for threads with ty == 0 when want_colsum, the sum of column col0 + tx of op(b): it
    costs 16 adds per tile since the tiles of op(b) pass through shared memory anyway (dbias).
    sa, sb: shared TILE_SHAPE arrays of the operands' dtype.
    """
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    acc = sa.dtype.type(0)  # accumulate in the arrays' dtype, as BLAS does
    colsum = sa.dtype.type(0)
    for k0 in range(0, inner, TILE):
        _load_tile(sa, a, row0, k0, a_transposed)
        _load_tile(sb, b, k0, col0, b_transposed)
        cuda.syncthreads()  # both tiles complete before anyone reads them
        for k in range(TILE):
            acc += sa[ty, k] * sb[k, tx]
        if want_colsum and ty == 0:
            for k in range(TILE):
                colsum += sb[k, tx]
        cuda.syncthreads()  # everyone done reading before the next loads overwrite the tiles
    return acc, colsum


@cuda.jit(device=True)
def linear_forward_tiles(out, inp, weight, bias, relu, first, step, sa, sb):
    """out (B, OC) = inp (B, C) @ weight (C, OC) + bias (OC), then max(., 0) if relu.

    Tiles first, first + step, ... of out; the bias and the ReLU are applied in registers, before the store.
    """
    zero = out.dtype.type(0)
    for tile in range(first, _tile_count(out), step):
        row0, col0 = _tile_origin(out, tile)
        acc, _ = _matmul_tile(inp, False, weight, False, row0, col0, inp.shape[1], False, sa, sb)
        r, c = row0 + cuda.threadIdx.y, col0 + cuda.threadIdx.x
        if r < out.shape[0] and c < out.shape[1]:
            acc += bias[c]
            if relu and acc < 0:  # `< 0`, not `> 0`: NaN passes through, as with np.maximum
                acc = zero
            out[r, c] = acc


@cuda.jit(device=True)
def linear_backward_tiles(dweight, dbias, dinp, dout, inp, weight, input_grad, first, step, sa, sb):
    """The three gradients of one layer, tiles first, first + step, ... of their concatenation.

    dweight (C, OC) = inp (B, C).T @ dout (B, OC), then, if input_grad, dinp (B, C) = (dout @ weight
    (C, OC).T) * (inp > 0); dbias (OC) = dout summed over B is written by the first tile row of dweight.
    They only read dout, inp and weight, so one launch computes all three. The first layer passes
    input_grad False: the pixels need no gradient, and dinp is then not touched.
    """
    zero = dinp.dtype.type(0)
    tiles_dweight = _tile_count(dweight)
    tiles_dinp = _tile_count(dinp) if input_grad else 0
    for tile in range(first, tiles_dweight + tiles_dinp, step):
        if tile < tiles_dweight:
            row0, col0 = _tile_origin(dweight, tile)
            acc, colsum = _matmul_tile(inp, True, dout, False, row0, col0, inp.shape[0], row0 == 0, sa, sb)
            r, c = row0 + cuda.threadIdx.y, col0 + cuda.threadIdx.x
            if r < dweight.shape[0] and c < dweight.shape[1]:
                dweight[r, c] = acc
                if row0 == 0 and cuda.threadIdx.y == 0:
                    dbias[c] = colsum
        else:
            row0, col0 = _tile_origin(dinp, tile - tiles_dweight)
            acc, _ = _matmul_tile(dout, False, weight, True, row0, col0, dout.shape[1], False, sa, sb)
            r, c = row0 + cuda.threadIdx.y, col0 + cuda.threadIdx.x
            if r < dinp.shape[0] and c < dinp.shape[1]:
                dinp[r, c] = acc if inp[r, c] > 0 else zero  # the previous layer's ReLU mask


@cuda.jit(device=True)
def gather_rows(inp, targets, images, labels, indices, scale, first, step):
    """inp (B, C) = images[indices] (B, C) * scale, targets (B,) = labels[indices].

    Elements first, first + step, ... of inp; images (N, C) uint8 or float stay compact on the device.
    """
    C = inp.shape[1]
    for e in range(first, inp.size, step):  # consecutive threads take consecutive pixels of a row: coalesced
        b, c = e // C, e % C
        row = indices[b]
        # a float64 product rounded once to inp's dtype: NumPy's uint8 * Python float, then the cast
        inp[b, c] = images[row, c] * scale
        if c == 0:
            targets[b] = labels[row]


@cuda.jit(device=True)
def _row_stats(logits, b):
    """(max, index of the first max, sum of exp(logit - max)) of row b of logits (B, K)."""
    top, best = logits[b, 0], 0
    for k in range(1, logits.shape[1]):
        if logits[b, k] > top:  # strict: ties keep the first index, as np.argmax
            top, best = logits[b, k], k
    total = logits.dtype.type(0)
    for k in range(logits.shape[1]):
        total += math.exp(logits[b, k] - top)  # the max subtracted: exp() <= 1, no overflow
    return top, best, total


@cuda.jit(device=True)
def softmax_row(probs, logits, b):
    """probs[b] (K,) = softmax of logits[b] (K,)."""
    top, _, total = _row_stats(logits, b)
    for k in range(logits.shape[1]):
        probs[b, k] = math.exp(logits[b, k] - top) / total


@cuda.jit(device=True)
def argmax_row(out, logits, b):
    """out[b] = index of the first largest logit of row b."""
    _, best, _ = _row_stats(logits, b)
    out[b] = best


@cuda.jit(device=True)
def softmax_xent_rows(dlogits, logits, targets, metrics, slot, loss_parts, correct_parts):
    """Cross-entropy, its gradient and the accuracy of a batch, by one whole block (THREADS threads).

    dlogits (B, K) = (softmax(logits (B, K)) - onehot(targets (B,))) / B;
    metrics[slot] = (mean loss, number of rows whose argmax is the target).
    loss_parts (THREADS,) float64 and correct_parts (THREADS,) int32 are shared scratch for the sum.
    """
    B, K = logits.shape
    one, rows = logits.dtype.type(1), logits.dtype.type(B)  # in the logits' dtype: float32 stays float32
    tid = cuda.threadIdx.y * cuda.blockDim.x + cuda.threadIdx.x
    loss, correct = 0.0, 0  # float64: the batch sum loses nothing to rounding
    for b in range(tid, B, THREADS):
        top, best, total = _row_stats(logits, b)
        t = targets[b]
        # log of the probability taken from the shifted logit: a tiny probability never becomes log(0)
        loss += math.log(total) - (logits[b, t] - top)
        correct += best == t
        for k in range(K):
            p = math.exp(logits[b, k] - top) / total
            if k == t:
                p -= one
            dlogits[b, k] = p / rows
    loss_parts[tid] = loss
    correct_parts[tid] = correct
    cuda.syncthreads()
    half = THREADS // 2
    while half > 0:  # tree sum: each round halves the live threads; syncthreads between rounds
        if tid < half:
            loss_parts[tid] += loss_parts[tid + half]
            correct_parts[tid] += correct_parts[tid + half]
        cuda.syncthreads()
        half //= 2
    if tid == 0:
        metrics[slot, 0] = loss_parts[0] / B
        metrics[slot, 1] = correct_parts[0]


@cuda.jit(device=True)
def sgd_flat(param, grad, velocity, lr, momentum, weight_decay, first, step):
    """One SGD step (fastnn.ops.sgd_update) on 1-D param, grad, velocity: elements first, first + step, ..."""
    for i in range(first, param.size, step):
        g = grad[i]
        if weight_decay != 0:  # as the reference: no 0 * param term, which would turn an inf param into NaN
            g += weight_decay * param[i]
        v = velocity[i] * momentum + g
        velocity[i] = v
        param[i] -= lr * v


@cuda.jit(device=True)
def sgd_layers(weights, biases, dweights, dbiases, velocities_w, velocities_b, lr, momentum, weight_decay,
               first, step):
    """sgd_flat on every layer's weight (C, OC) and bias (OC), given as tuples of L arrays."""
    for l in range(len(weights)):
        w = weights[l]
        n = w.size  # flat views of the C-contiguous (C, OC) arrays: no copy
        sgd_flat(w.reshape(n), dweights[l].reshape(n), velocities_w[l].reshape(n), lr, momentum,
                 weight_decay, first, step)
        sgd_flat(biases[l], dbiases[l], velocities_b[l], lr, momentum, weight_decay, first, step)
