"""Numbered versions of the first layer's forward: out (B, OC) = relu(inp (B, C) @ weight (C, OC) + bias (OC)).

    uv run python -m kernels.dev.linear_forward      # check every version against fastnn.ops, then time them
    uv run python -m kernels.dev.linear_forward 3    # only version 3

B = batch size, C = 784 pixels, OC = hidden units; weight is stored (C, OC) as everywhere in fastnn.
    1  naive: one dot product per output, down a strided column of weight (no vectorisation)
    2  row (axpy) form: out[b] += inp[b, k] * weight[k], contiguous and vectorised along OC; bound by
       the load and store of out[b] around every FMA
    3  as 2, skipping exact zeros of inp (81% of MNIST pixels)
    4  as 3, nonzero inputs in pairs: one load and store of out[b] per two rows of weight
    5  2 x 4 register block: two batch rows take four rows of weight per pass, blocks of 8 zero
       inputs skipped with one branch (kernels.cpu.linear_relu_forward; train_step runs the same
       block on two fixed halves of the pixels, one per core)
GFLOP/s count dense FLOPs (2 B C OC), so the sparse versions show an effective rate. Only the
winner lives in kernels/cpu.py. These versions are compiled afresh on every run (no cache=True): they
take FASTMATH from kernels.cpu, and a cached copy would not notice it change.
"""
import sys

import numpy as np
from numba import njit, prange

from fastnn import ops
from kernels import cpu
from kernels.cpu import FASTMATH
from kernels.dev.harness import check_then_time


@njit(parallel=True, fastmath=FASTMATH)
def linear_relu_forward1(out, inp, weight, bias):
    B, C = inp.shape
    OC = weight.shape[1]
    # prange over batch rows: iteration b owns out[b]
    for b in prange(B):
        for j in range(OC):
            total = bias[j]
            for k in range(C):
                total += inp[b, k] * weight[k, j]  # stride OC: no vector loads
            out[b, j] = 0 if total < 0 else total


@njit(parallel=True, fastmath=FASTMATH)
def linear_relu_forward2(out, inp, weight, bias):
    B, C = inp.shape
    OC = weight.shape[1]
    # prange over batch rows: iteration b owns out[b]
    for b in prange(B):
        for j in range(OC):
            out[b, j] = bias[j]
        for k in range(C):
            x = inp[b, k]
            for j in range(OC):
                out[b, j] += x * weight[k, j]  # (OC,) vectorised; out[b] loaded and stored per k
        for j in range(OC):
            if out[b, j] < 0:
                out[b, j] = 0


@njit(parallel=True, fastmath=FASTMATH)
def linear_relu_forward3(out, inp, weight, bias):
    B, C = inp.shape
    OC = weight.shape[1]
    # prange over batch rows: iteration b owns out[b]
    for b in prange(B):
        for j in range(OC):
            out[b, j] = bias[j]
        for k in range(C):
            x = inp[b, k]
            if x != 0:  # zeros come in runs along a row, so this branch is mostly predicted
                for j in range(OC):
                    out[b, j] += x * weight[k, j]
        for j in range(OC):
            if out[b, j] < 0:
                out[b, j] = 0


@njit(parallel=True, fastmath=FASTMATH)
def linear_relu_forward4(out, inp, weight, bias):
    B, C = inp.shape
    OC = weight.shape[1]
    # prange over batch rows: iteration b owns out[b]
    for b in prange(B):
        for j in range(OC):
            out[b, j] = bias[j]
        k1 = -1  # a nonzero input waiting for its partner
        for k in range(C):
            x = inp[b, k]
            if x != 0:
                if k1 < 0:
                    k1 = k
                else:
                    x1 = inp[b, k1]
                    for j in range(OC):
                        out[b, j] = out[b, j] + x1 * weight[k1, j] + x * weight[k, j]
                    k1 = -1
        if k1 >= 0:
            x1 = inp[b, k1]
            for j in range(OC):
                out[b, j] += x1 * weight[k1, j]
        for j in range(OC):
            if out[b, j] < 0:
                out[b, j] = 0


@njit(fastmath=FASTMATH)
def _linear_two_rows(out, inp, weight, b, c0, c1):
    """out[b:b+2] (2, OC) += inp[b:b+2, c0:c1] (2, c1 - c0) @ weight[c0:c1] (c1 - c0, OC).

    A 2 x 4 register block: two batch rows take four rows of weight per pass, so each loaded chunk of
    weight feeds two FMAs and each load and store of out feeds four (the row form alone, one FMA per
    load and store of out, is bound by those memory accesses). A block whose 8 inputs are all exactly
    0 is skipped: most of them for MNIST pixels (81% zeros, in runs along rows), few for ReLU outputs.
    """
    OC = weight.shape[1]
    for k in range(c0, c1 - 3, 4):
        x0, x1, x2, x3 = inp[b, k], inp[b, k + 1], inp[b, k + 2], inp[b, k + 3]
        y0, y1, y2, y3 = inp[b + 1, k], inp[b + 1, k + 1], inp[b + 1, k + 2], inp[b + 1, k + 3]
        # one branch, not eight (LLVM turns `x0 != 0 or ...` into a chain of branches): a sum of
        # absolute values is 0 only when all are, and NaN inputs still go through
        if abs(x0) + abs(x1) + abs(x2) + abs(x3) + abs(y0) + abs(y1) + abs(y2) + abs(y3) != 0:
            for j in range(OC):
                w0, w1, w2, w3 = weight[k, j], weight[k + 1, j], weight[k + 2, j], weight[k + 3, j]
                out[b, j] = out[b, j] + x0 * w0 + x1 * w1 + x2 * w2 + x3 * w3
                out[b + 1, j] = out[b + 1, j] + y0 * w0 + y1 * w1 + y2 * w2 + y3 * w3
    for k in range(c1 - (c1 - c0) % 4, c1):
        x, y = inp[b, k], inp[b + 1, k]
        for j in range(OC):
            out[b, j] += x * weight[k, j]
            out[b + 1, j] += y * weight[k, j]


@njit(fastmath=FASTMATH)
def _linear_one_row(out, inp, weight, b, c0, c1):
    """out[b] (OC) += inp[b, c0:c1] @ weight[c0:c1]: the last row of an odd batch."""
    for k in range(c0, c1):
        x = inp[b, k]
        if x != 0:
            for j in range(weight.shape[1]):
                out[b, j] += x * weight[k, j]


@njit(fastmath=FASTMATH)
def _linear_rows(out, inp, weight, bias, b, c0, c1, with_bias):
    """out[b:b+2] = inp[b:b+2, c0:c1] @ weight[c0:c1] (+ bias if with_bias); only row b if it is the last."""
    rows = min(2, inp.shape[0] - b)
    zero = out.dtype.type(0)
    for r in range(b, b + rows):
        for j in range(weight.shape[1]):
            out[r, j] = bias[j] if with_bias else zero
    if rows == 2:
        _linear_two_rows(out, inp, weight, b, c0, c1)  # (2, OC)
    else:
        _linear_one_row(out, inp, weight, b, c0, c1)  # (OC,)


@njit(parallel=True, fastmath=FASTMATH)
def linear_relu_forward5(out, inp, weight, bias):
    """out (B, OC) = relu(inp (B, C) @ weight (C, OC) + bias (OC)): a hidden layer, ReLU in the epilogue."""
    B, C = inp.shape
    OC = out.shape[1]
    # prange over pairs of batch rows: task t owns out[2t:2t+2], and applies the ReLU while in L1
    for t in prange((B + 1) // 2):
        _linear_rows(out, inp, weight, bias, 2 * t, 0, C, True)
        for b in range(2 * t, min(2 * t + 2, B)):
            for j in range(OC):
                if out[b, j] < 0:  # a comparison, not max(): NaN stays NaN, as with np.maximum
                    out[b, j] = 0


KERNELS = {
    1: linear_relu_forward1,
    2: linear_relu_forward2,
    3: linear_relu_forward3,
    4: linear_relu_forward4,
    5: linear_relu_forward5,
    6: cpu.linear_relu_forward,
}


def make_inputs(rng, inp, OC):
    """He-normal weight (C, OC) and a small bias; the output is (B, OC)."""
    C = inp.shape[1]
    weight = (rng.standard_normal((C, OC)) * np.sqrt(2 / C)).astype(np.float32)
    bias = (rng.standard_normal(OC) * 0.1).astype(np.float32)
    return [(inp.shape[0], OC)], [inp, weight, bias]


if __name__ == "__main__":
    check_then_time(sys.argv[1:], KERNELS, ops.linear_relu_forward, make_inputs)
