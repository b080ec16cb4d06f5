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


KERNELS = {
    1: linear_relu_forward1,
    2: linear_relu_forward2,
    3: linear_relu_forward3,
    4: linear_relu_forward4,
    5: cpu.linear_relu_forward,
}


def make_inputs(rng, inp, OC):
    """He-normal weight (C, OC) and a small bias; the output is (B, OC)."""
    C = inp.shape[1]
    weight = (rng.standard_normal((C, OC)) * np.sqrt(2 / C)).astype(np.float32)
    bias = (rng.standard_normal(OC) * 0.1).astype(np.float32)
    return [(inp.shape[0], OC)], [inp, weight, bias]


if __name__ == "__main__":
    check_then_time(sys.argv[1:], KERNELS, ops.linear_relu_forward, make_inputs)
