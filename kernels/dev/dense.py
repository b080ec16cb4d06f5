"""The dense kernels of a training step against this machine's BLAS, at hidden-to-hidden shapes.

    uv run python -m kernels.dev.dense          # check, then time, at 512->256 (B=128) and 1024->1024 (B=256)
    uv run python -m kernels.dev.dense --asm    # also print the inner loop of the 4 x 4 register block

Each kernel runs as train_steps runs it (kernels/cpu.py), on a ReLU layer's input (about half exact
zeros) and gradient, and is checked against NumPy first:
    forward         out = relu(inp @ weight + bias), from weight.T        (cpu._dense_forward)
    input gradient  dinp = (dout @ weight.T) * (inp > 0)                  (cpu._dense_backward_input)
    weight update   dweight = inp.T @ dout from the transposes, then SGD  (cpu._dense_update; BLAS: the product only)
GFLOP/s count 2 * B * C * OC. NumPy runs with all its BLAS threads first, then the Numba kernels with
BLAS capped at one thread (spinning BLAS threads slow Numba's pool: docs/numba.md). Medians of
fresh-cache-free repeated calls; this machine is shared, so compare the columns of one run.
"""
import argparse
import re
import time

import numpy as np
from threadpoolctl import threadpool_limits

from fastnn.step import Hyper, Layers, new_optimizer_state
from kernels import cpu

SHAPES = ((128, 512, 256), (256, 1024, 1024))  # (B, C, OC): the default preset's hidden layer, the large one
CALLS = 50


def median_seconds(fn, calls=CALLS):
    fn()  # compiles on the first call
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds))


def layer(B, C, OC, rng):
    """A hidden layer's arrays: inp (B, C) ReLU output, weight (C, OC), bias, dout (B, OC), and the
    transposes train_steps keeps."""
    inp = np.maximum(rng.standard_normal((B, C)), 0).astype(np.float32)
    weight = (rng.standard_normal((C, OC)) * np.sqrt(2 / C)).astype(np.float32)
    bias = (rng.standard_normal(OC) * 0.1).astype(np.float32)
    dout = (rng.standard_normal((B, OC)) * (rng.random((B, OC)) < 0.5)).astype(np.float32)
    return inp, weight, bias, dout


def run(B, C, OC):
    rng = np.random.default_rng(0)
    inp, weight, bias, dout = layer(B, C, OC, rng)
    weight_t, inp_t, dout_t = (np.ascontiguousarray(a.T) for a in (weight, inp, dout))
    out, out_t = np.empty((B, OC), np.float32), np.empty((OC, B), np.float32)
    dinp, dinp_t = np.empty((B, C), np.float32), np.empty((C, B), np.float32)
    dweight = np.empty((C, OC), np.float32)
    flops = 2 * B * C * OC
    blas = {
        "forward": median_seconds(lambda: np.maximum(np.matmul(inp, weight, out=out) + bias, 0, out=out)),
        "input gradient": median_seconds(lambda: np.multiply(np.matmul(dout, weight.T, out=dinp), inp > 0, out=dinp)),
        "weight update": median_seconds(lambda: np.matmul(inp.T, dout, out=dweight)),
    }
    # a one-layer-deep network around the layer, as _dense_update takes it (layer 0, SGD with lr 0)
    params = Layers((weight.copy(), weight[:, :10].copy()), (bias.copy(), bias[:10].copy()))
    grads = Layers((dweight, dweight[:, :10].copy()), (bias.copy(), bias[:10].copy()))
    optimizer = new_optimizer_state(params)
    hyper = Hyper(0.9, 0.0)
    no_dropout = cpu._dropout_key(0, 0, 0, 0.0, np.float32)
    with threadpool_limits(1, user_api="blas"):
        cpu._dense_forward(out, out_t, inp, weight_t, bias, 0.0, no_dropout)
        np.testing.assert_allclose(out, np.maximum(inp @ weight + bias, 0), rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(out_t, out.T)
        cpu._dense_backward_input(dinp, dinp_t, dout, weight, inp, np.float32(1))
        np.testing.assert_allclose(dinp, (dout @ weight.T) * (inp > 0), rtol=1e-4, atol=1e-4)
        cpu._dense_update(0, params, grads, optimizer, weight_t.copy(), inp_t, dout_t, 0.0, 1, hyper)
        np.testing.assert_allclose(dweight, inp.T @ dout, rtol=1e-4, atol=1e-3)
        print(f"B={B} C={C} OC={OC} float32: all results match. Starting benchmarks.")
        numba_ = {
            "forward": median_seconds(lambda: cpu._dense_forward(out, out_t, inp, weight_t, bias, 0.0, no_dropout)),
            "input gradient": median_seconds(lambda: cpu._dense_backward_input(dinp, dinp_t, dout, weight, inp,
                                                                              np.float32(1))),
            "weight update": median_seconds(lambda: cpu._dense_update(0, params, grads, optimizer, weight_t, inp_t,
                                                                     dout_t, 0.0, 1, hyper)),
        }
    print(f"{'kernel':>16} {'numba us':>9} {'GFLOP/s':>8} {'BLAS us':>9} {'GFLOP/s':>8} {'numba/BLAS':>10}")
    for name in blas:
        t, b = numba_[name], blas[name]
        print(f"{name:>16} {t * 1e6:9.0f} {flops / t / 1e9:8.1f} {b * 1e6:9.0f} {flops / b / 1e9:8.1f} {b / t:10.2f}")


def print_tile_loop():
    """The vectorised inner loop of cpu._dot_tile, as LLVM compiled it for this machine."""
    a = np.zeros((4, 64), np.float32)
    cpu._dot_tile.py_func  # the cached function has no assembly to show: compile a fresh copy
    from numba import njit

    tile = njit(fastmath=cpu.FASTMATH)(cpu._dot_tile.py_func)
    tile(np.zeros((4, 4), np.float32), a, a, 0, 0)
    asm = next(iter(tile.inspect_asm().values())).splitlines()
    fmas = [i for i, line in enumerate(asm) if "vfmadd" in line]
    width = re.findall(r"%([xyz])mm", asm[fmas[0]])[0] if fmas else "?"
    print(f"\n{len(fmas)} FMA instructions on {width}mm registers; the hot loop:")
    print("\n".join(asm[max(0, fmas[0] - 12):fmas[min(len(fmas), 16) - 1] + 4]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--asm", action="store_true", help="print the register block's inner loop")
    args = parser.parse_args(argv)
    for shape in SHAPES:
        run(*shape)
    if args.asm:
        print_tile_loop()


if __name__ == "__main__":
    main()
