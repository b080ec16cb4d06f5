"""CUDA device functions: the math of every kernel, written once, called by both kernel versions.

Dimension letters (fastnn/ops.py's): B = batch rows, C = input features of a layer, OC = output
features, K = classes, N = dataset rows.

How the work is cut. Matmul-shaped ops are computed in TILE x TILE output tiles by blocks of
(TILE, TILE) threads, one thread per output element, and the `*_tiles(..., first, stride, ...)`
functions do tiles first, first + stride, ...: the one-kernel-per-op version (kernels/cuda/op_kernels.py) launches
one block per tile and calls them with (blockIdx.x, gridDim.x); the persistent kernel
(kernels/cuda/persistent.py) has fewer blocks than tiles and the same call loops each block over
several. Every thread of a block must make the same tile calls: they hold syncthreads. Elementwise
functions take a flat thread number and the total thread count (a grid-stride loop), and the
row-wise ones give each thread whole rows: with K = 10 classes a row is 10 numbers, too few to share
out among the 32 threads of a warp.

A training step's settings reach the kernels as one DeviceHyper (device_hyper makes it from a
fastnn.bundles.Hyper). Dropout rides in the epilogues of the ops before and after it: the gather drops
pixels as it stores them, a hidden layer's forward tile drops and scales its outputs as it stores
them, and the backward tile scales the input gradient it stores, so dropout costs no pass of its
own. Its masks are hashes of (seed, step number, activation, row, unit), the reference's counter-based
generator, so every thread draws the bit of its own element, in any order.
"""
import functools
import math
from collections import namedtuple

import numpy as np
from numba import cuda

from fastnn.bundles import Hyper
from fastnn.ops import MASK32, dropout_threshold
from fastnn.settings import ADAMW, SGD

TILE = 16  # tiles of 16 x 16 outputs: 256 threads per block; the two shared tiles take 2.1 KiB (float32)
THREADS = TILE * TILE  # threads per block in every kernel; a power of two, as the tree reductions need
# shared tiles get one padding column, so that writing one transposed hits 16 different memory banks;
# a global tuple, because numba needs a shared array's shape as a compile-time constant
TILE_SHAPE = (TILE, TILE + 1)


def n_tiles(shape):
    """Number of TILE x TILE tiles covering a 2-D output of `shape` (host side)."""
    rows, cols = shape
    return -(-rows // TILE) * -(-cols // TILE)


# fastnn.bundles.Hyper as the kernels take it, field by field, and the two dropout thresholds.
DeviceHyper = namedtuple("DeviceHyper", Hyper._fields + ("dropout_threshold", "input_threshold"))


def device_hyper(hyper):
    """The DeviceHyper of a fastnn.bundles.Hyper: every field of the type of its default (int, float,
    bool), whatever Python or NumPy number the Hyper holds, so that one compiled kernel serves every
    setting; the dropout seed and thresholds as uint64, the hash's type.

    The floats stay float64, the reference's Python floats: a kernel rounds each to the parameters' dtype
    where the reference does, after the float64 arithmetic the reference does first (1 - beta1,
    1 - lr * weight_decay, 1 / (1 - dropout)).
    """
    fields = {name: type(default)(getattr(hyper, name)) for name, default in Hyper._field_defaults.items()}
    fields["dropout_seed"] = np.uint64(hyper.dropout_seed)
    return DeviceHyper(**fields, dropout_threshold=np.uint64(dropout_threshold(hyper.dropout)),
                       input_threshold=np.uint64(dropout_threshold(hyper.input_dropout)))


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


# lowbias32 (fastnn.ops.hash32) in uint64 on values below 2^32, as the reference: the products stay below
# 2^64, exact, and are cut back to 32 bits. Every constant a uint64 global (numba types it so): an int64
# among the operands would make numba's integer promotion turn the arithmetic into floats.
_LOWBIAS1, _LOWBIAS2 = np.uint64(0x7FEB352D), np.uint64(0x846CA68B)
_U8, _U15, _U16 = np.uint64(8), np.uint64(15), np.uint64(16)


@cuda.jit(device=True)
def hash32(x):
    """fastnn.ops.hash32 of one uint64 below 2^32: a uint64 below 2^32."""
    x = x ^ (x >> _U16)
    x = (x * _LOWBIAS1) & MASK32
    x = x ^ (x >> _U15)
    x = (x * _LOWBIAS2) & MASK32
    return x ^ (x >> _U16)


@cuda.jit(device=True)
def dropout_key(seed, number, layer):
    """The key of the masks of activation `layer` (acts[layer]: 0 the pixels, 1.. the hidden layers' outputs)
    at step `number` of a run seeded `seed` (uint64): fastnn.ops.dropout_keep's
    hash32(hash32(hash32(seed) ^ number) ^ layer), seed and number modulo 2^32."""
    seed_key = hash32(seed & MASK32)
    return hash32(hash32(seed_key ^ (np.uint64(number) & MASK32)) ^ np.uint64(layer))


@cuda.jit(device=True)
def dropout_keeps(key, threshold, row, unit):
    """Whether inverted dropout keeps unit `unit` of row `row` of the layer whose masks have key `key`
    (fastnn.ops.dropout_keep): the top 24 bits of hash32(hash32(key ^ row) ^ unit) are >= threshold."""
    return (hash32(hash32(key ^ np.uint64(row)) ^ np.uint64(unit)) >> _U8) >= threshold


@cuda.jit(device=True)
def dropout_scale(rate, out):
    """A kept unit's factor 1 / (1 - rate) in out's dtype, rounded once from float64 as the reference: 1
    without dropout, and x * 1 is exact."""
    return out.dtype.type(1.0 / (1.0 - rate))


@cuda.jit(device=True)
def dropout_elements(out, inp, hyper, number, layer, first, stride):
    """out (B, H) = inverted dropout of inp (B, H) (fastnn.ops.dropout_forward with rate hyper.dropout, seed
    hyper.dropout_seed, step `number`, activation `layer`); out may be inp. Elements first, first + stride, ..."""
    key, scale = dropout_key(hyper.dropout_seed, number, layer), dropout_scale(hyper.dropout, out)
    zero = out.dtype.type(0)
    H = inp.shape[1]
    for e in range(first, inp.size, stride):  # consecutive threads take consecutive units of a row: coalesced
        b, j = e // H, e % H
        # a dropped unit is x * 0, as in the reference (0 for a finite x)
        out[b, j] = inp[b, j] * (scale if dropout_keeps(key, hyper.dropout_threshold, b, j) else zero)


@cuda.jit(device=True)
def linear_forward_tiles(out, inp, weight, bias, relu, hyper, number, layer, first, stride, sa, sb):
    """out (B, OC) = inp (B, C) @ weight (C, OC) + bias (OC), then max(., 0) if relu, then, if relu and
    hyper.dropout, inverted dropout with dropout_elements' masks for step `number`; out is activation
    `layer` (acts[layer]).

    Tiles first, first + stride, ... of out; bias, ReLU and dropout are applied in registers, before the store.
    """
    zero = out.dtype.type(0)
    dropout = relu and hyper.dropout != 0
    key, scale = dropout_key(hyper.dropout_seed, number, layer), dropout_scale(hyper.dropout, out)
    for tile in range(first, _tile_count(out), stride):
        row0, col0 = _tile_origin(out, tile)
        acc, _ = _matmul_tile(inp, False, weight, False, row0, col0, inp.shape[1], False, sa, sb)
        r, c = row0 + cuda.threadIdx.y, col0 + cuda.threadIdx.x
        if r < out.shape[0] and c < out.shape[1]:
            acc += bias[c]
            if relu and acc < 0:  # `< 0`, not `> 0`: NaN passes through, as with np.maximum
                acc = zero
            if dropout:  # the rounded ReLU output times the factor: the reference's two steps, bit for bit
                acc *= scale if dropout_keeps(key, hyper.dropout_threshold, r, c) else zero
            out[r, c] = acc


@cuda.jit(device=True)
def linear_backward_tiles(dweight, dbias, dinp, dout, inp, weight, input_grad, hyper, first, stride, sa, sb):
    """The three gradients of one layer, tiles first, first + stride, ... of their concatenation.

    dweight (C, OC) = inp (B, C).T @ dout (B, OC), then, if input_grad, dinp (B, C) = (dout @ weight
    (C, OC).T) * (inp > 0) / (1 - hyper.dropout); dbias (OC) = dout summed over B is written by the first
    tile row of dweight. They only read dout, inp and weight, so one launch computes all three. The first
    layer passes input_grad False: the pixels need no gradient, and dinp is then not touched.
    inp is the previous layer's output after dropout: 0 where its ReLU was off or dropout dropped the
    unit, so `inp > 0` is the mask of both, and a kept unit's gradient is scaled as its output was.
    """
    zero, scale = dinp.dtype.type(0), dropout_scale(hyper.dropout, dinp)
    tiles_dweight = _tile_count(dweight)
    tiles_dinp = _tile_count(dinp) if input_grad else 0
    for tile in range(first, tiles_dweight + tiles_dinp, stride):
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
                dinp[r, c] = acc * scale if inp[r, c] > 0 else zero  # the previous layer's mask, then its scale


@cuda.jit(device=True)
def gather_rows(inp, targets, images, labels, indices, scale, hyper, number, first, stride):
    """inp (B, C) = images[indices] (B, C) * scale, targets (B,) = labels[indices], then, if
    hyper.input_dropout, inverted dropout of the pixels (activation 0) at step `number`.

    Elements first, first + stride, ... of inp; images (N, C) uint8 or float stay compact on the device.
    """
    C = inp.shape[1]
    dropout, zero = hyper.input_dropout != 0, inp.dtype.type(0)
    key, keep_scale = dropout_key(hyper.dropout_seed, number, 0), dropout_scale(hyper.input_dropout, inp)
    for e in range(first, inp.size, stride):  # consecutive threads take consecutive pixels of a row: coalesced
        b, c = e // C, e % C
        row = indices[b]
        # a float64 product rounded once to inp's dtype: NumPy's uint8 * Python float, then the cast
        x = inp.dtype.type(images[row, c] * scale)
        if dropout:  # the rounded pixel times the factor: the reference's two steps, bit for bit
            x *= keep_scale if dropout_keeps(key, hyper.input_threshold, b, c) else zero
        inp[b, c] = x
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
def sgd_flat(param, grad, moment1, lr, momentum, weight_decay, nesterov, first, stride):
    """One SGD step (fastnn.ops.sgd_update; Nesterov's if nesterov) on 1-D param, grad, moment1 (the
    momentum buffer): elements first, first + stride, ..."""
    for i in range(first, param.size, stride):
        g = grad[i]
        if weight_decay != 0:  # as the reference: no 0 * param term, which would turn an inf param into NaN
            g += weight_decay * param[i]
        m = moment1[i] * momentum + g
        moment1[i] = m
        param[i] -= lr * (g + momentum * m if nesterov else m)


@cuda.jit(device=True)
def adam_flat(param, grad, moment1, moment2, lr, number, hyper, first, stride):
    """One Adam step at t = number (fastnn.ops.adam_update; AdamW's if hyper.optimizer is ADAMW) on 1-D
    param, grad, moment1, moment2: elements first, first + stride, ...

    lr and hyper's floats are float64, as the reference's Python floats: each scalar is computed in
    float64 as the reference computes it (1 - beta1, the bias corrections 1 - beta^t, AdamW's
    1 - lr * weight_decay), then rounded once to the arrays' dtype, so float32 math stays float32.
    """
    real = param.dtype.type
    decoupled = hyper.optimizer == ADAMW
    l2 = hyper.weight_decay != 0 and not decoupled  # as the reference: no 0 * param term (inf * 0 is NaN)
    decay = real(hyper.weight_decay)
    shrink = real(1.0 - lr * hyper.weight_decay) if decoupled else real(1)  # AdamW's decay; x * 1 is exact
    beta1, beta2 = real(hyper.beta1), real(hyper.beta2)
    rest1, rest2 = real(1.0 - hyper.beta1), real(1.0 - hyper.beta2)
    correction1 = real(1.0 - math.pow(hyper.beta1, number))  # pow, as Python's float ** int
    correction2 = real(1.0 - math.pow(hyper.beta2, number))
    rate, eps = real(lr), real(hyper.eps)
    for i in range(first, param.size, stride):
        g = grad[i]
        if l2:
            g += decay * param[i]
        m = moment1[i] * beta1 + rest1 * g
        v = moment2[i] * beta2 + rest2 * g * g
        moment1[i] = m
        moment2[i] = v
        param[i] = param[i] * shrink - rate * (m / correction1) / (math.sqrt(v / correction2) + eps)


@cuda.jit(device=True)
def update_flat(param, grad, moment1, moment2, lr, number, hyper, first, stride):
    """The update hyper.optimizer names (fastnn.ops.update) at step `number` with rate lr (float64), on 1-D
    param, grad and its optimizer state (moment1: SGD's momentum buffer or Adam's first moments; moment2:
    Adam's second moments, untouched by SGD): elements first, first + stride, ..."""
    if hyper.optimizer == SGD:
        real = param.dtype.type  # scalars in the param's dtype: float32 math stays float32
        sgd_flat(param, grad, moment1, real(lr), real(hyper.momentum), real(hyper.weight_decay), hyper.nesterov, first,
                 stride)
    else:
        adam_flat(param, grad, moment1, moment2, lr, number, hyper, first, stride)


@cuda.jit(device=True)
def update_layers(weights, biases, dweights, dbiases, moment1_w, moment1_b, moment2_w, moment2_b, lr, number,
                  hyper, first, stride):
    """update_flat on every layer's weight (C, OC) and bias (OC), given as tuples of L arrays."""
    for l in range(len(weights)):
        w = weights[l]
        n = w.size  # flat views of the C-contiguous (C, OC) arrays: no copy
        update_flat(w.reshape(n), dweights[l].reshape(n), moment1_w[l].reshape(n), moment2_w[l].reshape(n), lr,
                    number, hyper, first, stride)
        update_flat(biases[l], dbiases[l], moment1_b[l], moment2_b[l], lr, number, hyper, first, stride)


@cuda.jit(device=True)
def max_norm_columns(weight, limit, first, stride):
    """fastnn.ops.max_norm of weight (C, OC), limit a float64: columns first, first + stride, ...

    A thread per column: it sums its own column's squares, so no thread needs another's result, and
    consecutive threads read consecutive columns of a row (coalesced). The sum runs down the rows in
    the dtype, as NumPy sums over axis 0; the limit is compared and divided in the dtype, as there.
    """
    real = weight.dtype.type
    cap = real(limit)
    for j in range(first, weight.shape[1], stride):
        total = real(0)
        for c in range(weight.shape[0]):
            total += weight[c, j] * weight[c, j]
        norm = math.sqrt(total)
        if norm > cap:
            factor = cap / norm
            for c in range(weight.shape[0]):
                weight[c, j] *= factor


@cuda.jit(device=True)
def max_norm_layers(weights, limit, first, stride):
    """max_norm_columns on every layer's weight (C, OC), given as a tuple of L arrays."""
    for l in range(len(weights)):
        max_norm_columns(weights[l], limit, first, stride)
