"""Numbered versions of the weight gradient: dweight (C, OC) = inp (B, C).T @ dout (B, OC), dbias (OC).

    uv run python -m kernels.dev.linear_backward      # check every version against fastnn.ops, then time them
    uv run python -m kernels.dev.linear_backward 3    # only version 3

B = batch size (the reduction: only 64 long), C = 784 pixels, OC = hidden units. Every version splits
over C, so each parallel task owns whole rows of dweight and adds the batch in row order
(bitwise the same for any thread count).
    1  naive: one dot product per output, down strided columns of both inp and dout
    2  row (axpy) form per row c: dweight[c] += inp[b, c] * dout[b], vectorised along OC
    3  as 2, skipping exact zeros of inp; but inp[:, c] is a column, where zeros are scattered
       across samples: the branch mispredicts often
    4  blocks of rows of dweight per task with batch rows outside pixels (inp read along its rows,
       where zeros come in runs), four batch rows per pass over dweight[c], all-zero groups skipped
    5  4 x 2 register block: four batch rows go into two rows of dweight per pass, so each chunk of
       dout feeds two FMAs (kernels.cpu.linear_backward)
GFLOP/s count dense FLOPs (2 B C OC), so the sparse versions show an effective rate. These versions
are compiled afresh on every run (no cache=True): they take FASTMATH from kernels.cpu, and a cached
copy would not notice it change.

Tried and not kept: listing each column's nonzero batch rows first (a branch-free compaction into
scratch), then adding them four per pass. It does 19% of the dense FMAs instead of 5's 42%, but the
compaction reads inp down its columns (~12 us a step), and inside train_step it measured 0-3% slower
than 5 (interleaved runs, B=64, OC=128).
"""
import sys

import numpy as np
from numba import njit, prange

from fastnn import ops
from kernels import cpu
from kernels.cpu import FASTMATH
from kernels.dev.harness import check_then_time

DWEIGHT_ROWS = 32  # rows of dweight per parallel task in version 5: 32 rows of 128 floats stay in L1


@njit(fastmath=FASTMATH)
def _dbias(dbias, dout):
    """dbias (OC) = dout (B, OC) summed over the batch, serially in row order."""
    for j in range(dout.shape[1]):
        dbias[j] = 0
    for b in range(dout.shape[0]):
        for j in range(dout.shape[1]):
            dbias[j] += dout[b, j]


@njit(parallel=True, fastmath=FASTMATH)
def linear_backward1(dweight, dbias, dout, inp):
    B, C = inp.shape
    OC = dout.shape[1]
    # prange over C: iteration c owns dweight[c]
    for c in prange(C):
        for j in range(OC):
            total = dweight.dtype.type(0)
            for b in range(B):
                total += inp[b, c] * dout[b, j]  # strides C and OC: no vector loads
            dweight[c, j] = total
    _dbias(dbias, dout)


@njit(parallel=True, fastmath=FASTMATH)
def linear_backward2(dweight, dbias, dout, inp):
    B, C = inp.shape
    OC = dout.shape[1]
    # prange over C: iteration c owns dweight[c]
    for c in prange(C):
        for j in range(OC):
            dweight[c, j] = 0
        for b in range(B):
            x = inp[b, c]
            for j in range(OC):
                dweight[c, j] += x * dout[b, j]  # (OC,) vectorised
    _dbias(dbias, dout)


@njit(parallel=True, fastmath=FASTMATH)
def linear_backward3(dweight, dbias, dout, inp):
    B, C = inp.shape
    OC = dout.shape[1]
    # prange over C: iteration c owns dweight[c]
    for c in prange(C):
        for j in range(OC):
            dweight[c, j] = 0
        for b in range(B):
            x = inp[b, c]
            if x != 0:
                for j in range(OC):
                    dweight[c, j] += x * dout[b, j]
    _dbias(dbias, dout)


@njit(parallel=True, fastmath=FASTMATH)
def linear_backward4(dweight, dbias, dout, inp):
    B, C = inp.shape
    OC = dout.shape[1]
    rows = 16
    # prange over blocks of 16 rows of dweight: iteration i owns them
    for i in prange((C + rows - 1) // rows):
        c0, c1 = i * rows, min(i * rows + rows, C)
        for c in range(c0, c1):
            for j in range(OC):
                dweight[c, j] = 0
        for b in range(0, B - 3, 4):
            for c in range(c0, c1):
                x0, x1, x2, x3 = inp[b, c], inp[b + 1, c], inp[b + 2, c], inp[b + 3, c]
                if abs(x0) + abs(x1) + abs(x2) + abs(x3) != 0:  # one branch for the four
                    for j in range(OC):
                        dweight[c, j] = (dweight[c, j] + x0 * dout[b, j] + x1 * dout[b + 1, j]
                                         + x2 * dout[b + 2, j] + x3 * dout[b + 3, j])
        for b in range(B - B % 4, B):
            for c in range(c0, c1):
                for j in range(OC):
                    dweight[c, j] += inp[b, c] * dout[b, j]
    _dbias(dbias, dout)


@njit(fastmath=FASTMATH)
def _dweight_rows(dweight, dout, inp, c0, c1):
    """dweight[c0:c1] (c1 - c0, OC) = inp[:, c0:c1].T @ dout (B, OC), batch rows added in order.

    A 4 x 2 register block: four batch rows go into two rows of dweight per pass, so each loaded
    chunk of dout feeds two FMAs and each load and store of dweight feeds four. A block whose 8
    inputs are all exactly 0 is skipped. Batch rows run outside pixels: inp is read along its rows,
    where MNIST's zeros come in runs the branch predictor follows (down a column they are scattered).
    """
    B = inp.shape[0]
    OC = dout.shape[1]
    for c in range(c0, c1):
        for j in range(OC):
            dweight[c, j] = 0
    for b in range(0, B - 3, 4):
        for c in range(c0, c1 - 1, 2):
            x0, x1, x2, x3 = inp[b, c], inp[b + 1, c], inp[b + 2, c], inp[b + 3, c]
            y0, y1, y2, y3 = inp[b, c + 1], inp[b + 1, c + 1], inp[b + 2, c + 1], inp[b + 3, c + 1]
            # one branch for the block, as in _linear_two_rows
            if abs(x0) + abs(x1) + abs(x2) + abs(x3) + abs(y0) + abs(y1) + abs(y2) + abs(y3) != 0:
                for j in range(OC):
                    d0, d1, d2, d3 = dout[b, j], dout[b + 1, j], dout[b + 2, j], dout[b + 3, j]
                    dweight[c, j] = dweight[c, j] + x0 * d0 + x1 * d1 + x2 * d2 + x3 * d3
                    dweight[c + 1, j] = dweight[c + 1, j] + y0 * d0 + y1 * d1 + y2 * d2 + y3 * d3
        if (c1 - c0) % 2:  # an odd last row of dweight
            c = c1 - 1
            x0, x1, x2, x3 = inp[b, c], inp[b + 1, c], inp[b + 2, c], inp[b + 3, c]
            for j in range(OC):
                dweight[c, j] = (dweight[c, j] + x0 * dout[b, j] + x1 * dout[b + 1, j]
                                 + x2 * dout[b + 2, j] + x3 * dout[b + 3, j])
    for b in range(B - B % 4, B):  # the last B % 4 batch rows
        for c in range(c0, c1):
            x = inp[b, c]
            if x != 0:
                for j in range(OC):
                    dweight[c, j] += x * dout[b, j]


@njit(parallel=True, fastmath=FASTMATH)
def linear_backward5(dweight, dbias, dout, inp):
    """Parameter gradients of out = inp @ weight + bias.

    dweight (C, OC) = inp (B, C).T @ dout (B, OC); dbias (OC) = dout summed over the batch.
    """
    C = inp.shape[1]
    # prange over blocks of DWEIGHT_ROWS rows of dweight: iteration i owns its block (which stays in
    # L1 while the whole batch is added in row order)
    for i in prange((C + DWEIGHT_ROWS - 1) // DWEIGHT_ROWS):
        c0 = i * DWEIGHT_ROWS
        _dweight_rows(dweight, dout, inp, c0, min(c0 + DWEIGHT_ROWS, C))  # (DWEIGHT_ROWS, OC)
    _dbias(dbias, dout)  # (OC,)


KERNELS = {
    1: linear_backward1,
    2: linear_backward2,
    3: linear_backward3,
    4: linear_backward4,
    5: linear_backward5,
    6: cpu.linear_backward,
}


def make_inputs(rng, inp, OC):
    """A hidden layer's gradient dout (B, OC): about half its entries are zero (the ReLU mask).
    The outputs are dweight (C, OC) and dbias (OC,)."""
    B, C = inp.shape
    dout = (rng.standard_normal((B, OC)) * (rng.random((B, OC)) < 0.5) / B).astype(np.float32)
    return [(C, OC), (OC,)], [dout, inp]


if __name__ == "__main__":
    check_then_time(sys.argv[1:], KERNELS, ops.linear_backward, make_inputs)
