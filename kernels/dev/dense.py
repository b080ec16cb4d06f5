"""The dense kernels of a training step, version by version, against this machine's BLAS, at the
hidden-to-hidden shapes of the default preset (512 -> 256, batch 128) and the large one (1024 -> 1024,
batch 256).

    uv run python -m kernels.dev.dense                 # check every version, then time it
    uv run python -m kernels.dev.dense --asm           # also print the micro-kernel's inner loop
    NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 uv run python -m kernels.dev.dense   # one core

The three products of a layer, each as train_steps runs it, on a ReLU layer's input (about half exact
zeros) and gradient:
    forward          out = relu(inp @ weight + bias)
    input gradient   dinp = (dout @ weight.T) * (inp > 0)
    weight gradient  dweight = inp.T @ dout, the product alone
    weight update    the weight gradient, then an SGD step with momentum (BLAS: then NumPy's in-place
                     velocity *= momentum; velocity += dweight; weight -= lr * velocity)
Versions:
    1  dot-product form: 4 x 4 sums along an axis contiguous in both operands (_dot_tile), which LLVM
       vectorises from scalar code; it pays 16 horizontal sums per tile, so short sums (the weight
       gradient sums over the batch) run slowly. Each product reads transposes (weight.T, inp.T,
       dout.T). The kernels of kernels/cpu.py until v3.
    2  outer-product form: kernels.cpu's micro-kernel (_tile_intrinsic), a tile of 12 x 32 sums held
       in vector registers for the whole sum, written in LLVM IR (kernels/cpu.py, docs/numba.md).
Every version is checked against NumPy first. GFLOP/s count 2 * B * C * OC; times are medians of CALLS
calls. NumPy runs first with all its BLAS threads, then the versions with BLAS capped at one thread
(spinning BLAS threads slow Numba's pool: docs/numba.md). The machine is shared: compare the columns
of one run.
"""
import argparse
import re
import time

import numpy as np
from numba import njit, prange, uint64
from threadpoolctl import threadpool_limits

from fastnn.bundles import Hyper, Layers, new_optimizer_state
from kernels import cpu
from kernels.cpu import FASTMATH

SHAPES = ((128, 512, 256), (256, 1024, 1024))  # (B, C, OC)
CALLS = 50
PANEL_ROWS, PANEL_COLS = 16, 64  # version 1's panels


# ---- version 1: the dot-product register block (compiled afresh each run: it reads cpu.FASTMATH) ----
@njit(fastmath=FASTMATH)
def _dot_tile(out, a, bt, i0, j0):
    """out[i0:i0+4, j0:j0+4] = a[i0:i0+4] (4, K) @ bt[j0:j0+4] (4, K).T, the 16 sums as scalars."""
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


@njit(fastmath=FASTMATH)
def _dot_block(out, a, bt, i0, i1, j0, j1):
    """out[i0:i1, j0:j1] = a[i0:i1] @ bt[j0:j1].T: 4 x 4 tiles, single sums at the edges."""
    i_tiles, j_tiles = i0 + (i1 - i0) // 4 * 4, j0 + (j1 - j0) // 4 * 4
    for i in range(i0, i_tiles, 4):
        for j in range(j0, j_tiles, 4):
            _dot_tile(out, a, bt, i, j)
    for i in range(i0, i1):
        for j in range(j_tiles if i < i_tiles else j0, j1):
            total = out.dtype.type(0)
            for k in range(a.shape[1]):
                total += a[i, k] * bt[j, k]
            out[i, j] = total


@njit
def _panels(M, N):
    """(number of row panels, number of panels) of an (M, N) output in version 1's panels."""
    n_row_panels = (M + PANEL_ROWS - 1) // PANEL_ROWS
    return n_row_panels, n_row_panels * ((N + PANEL_COLS - 1) // PANEL_COLS)


@njit
def _panel(task, n_row_panels, M, N):
    """Rows [i0, i1) and columns [j0, j1) of panel `task`; column panels outermost."""
    p = np.int64(task)
    i0, j0 = p % n_row_panels * PANEL_ROWS, p // n_row_panels * PANEL_COLS
    return i0, min(i0 + PANEL_ROWS, M), j0, min(j0 + PANEL_COLS, N)


@njit(parallel=True, fastmath=FASTMATH)
def forward1(out, inp, weight_t, bias):
    """out (B, OC) = relu(inp (B, C) @ weight_t (OC, C).T + bias)."""
    B, OC = out.shape
    n_row_panels, n_panels = _panels(B, OC)
    for task in prange(n_panels):
        i0, i1, j0, j1 = _panel(task, n_row_panels, B, OC)
        _dot_block(out, inp, weight_t, i0, i1, j0, j1)
        for i in range(i0, i1):
            for j in range(uint64(j0), uint64(j1)):
                value = out[i, j] + bias[j]
                out[i, j] = 0 if value < 0 else value


@njit(parallel=True, fastmath=FASTMATH)
def input_gradient1(dinp, dout, weight, inp):
    """dinp (B, C) = (dout (B, OC) @ weight (C, OC).T) * (inp > 0): rows of both along OC."""
    B, C = dinp.shape
    n_row_panels, n_panels = _panels(B, C)
    for task in prange(n_panels):
        i0, i1, j0, j1 = _panel(task, n_row_panels, B, C)
        _dot_block(dinp, dout, weight, i0, i1, j0, j1)
        for i in range(i0, i1):
            for j in range(uint64(j0), uint64(j1)):
                dinp[i, j] = dinp[i, j] * (inp[i, j] > 0)


@njit(parallel=True, fastmath=FASTMATH)
def weight_gradient1(dweight, inp_t, dout_t):
    """dweight (C, OC) = inp_t (C, B) @ dout_t (OC, B).T."""
    C, OC = dweight.shape
    n_row_panels, n_panels = _panels(C, OC)
    for task in prange(n_panels):
        _dot_block(dweight, inp_t, dout_t, *_panel(task, n_row_panels, C, OC))


@njit(parallel=True, fastmath=FASTMATH)
def weight_update1(weight, velocity, dweight, inp_t, dout_t, lr, momentum):
    """dweight (C, OC) = inp_t (C, B) @ dout_t (OC, B).T, then SGD with momentum, panel by panel."""
    C, OC = dweight.shape
    n_row_panels, n_panels = _panels(C, OC)
    for task in prange(n_panels):
        c0, c1, j0, j1 = _panel(task, n_row_panels, C, OC)
        _dot_block(dweight, inp_t, dout_t, c0, c1, j0, j1)
        for c in range(c0, c1):
            for j in range(uint64(j0), uint64(j1)):
                velocity[c, j] = momentum * velocity[c, j] + dweight[c, j]
                weight[c, j] -= lr * velocity[c, j]


def version1(layer):
    """Version 1's three kernels on a layer (a dict of arrays, from make_layer)."""
    f32 = np.float32
    return {
        "forward": lambda: forward1(layer["out"], layer["inp"], layer["weight_t"], layer["bias"]),
        "input gradient": lambda: input_gradient1(layer["dinp"], layer["dout"], layer["weight"], layer["inp"]),
        "weight gradient": lambda: weight_gradient1(layer["dweight"], layer["inp_t"], layer["dout_t"]),
        "weight update": lambda: weight_update1(layer["weight2"], layer["velocity"], layer["dweight"],
                                                layer["inp_t"], layer["dout_t"], f32(0), f32(0.9)),
    }


def version2(layer):
    """kernels.cpu's kernels, called as train_steps calls them."""
    # a two-layer network around the layer, as _dense_update takes it (layer 0, SGD with momentum, lr 0)
    weight, bias = layer["weight2"], layer["bias"]
    params = Layers((weight, weight[:, :10].copy()), (bias.copy(), bias[:10].copy()))
    grads = Layers((layer["dweight"], weight[:, :10].copy()), (bias.copy(), bias[:10].copy()))
    optimizer = new_optimizer_state(params)
    coef = cpu._update_coefs(np.float32, 0.0, 1, Hyper(momentum=0.9))
    no_dropout = cpu._dropout_key(0, 0, 0, 0.0, np.float32)
    packs, every_term = cpu._packs(np.dtype(np.float32)), cpu._every_term(np.dtype(np.float32))
    return {
        "forward": lambda: cpu._dense_forward(layer["out"], layer["out_t"], layer["inp"], layer["weight"],
                                              layer["bias"], 0.0, no_dropout, packs, *every_term),
        "input gradient": lambda: cpu._dense_backward_input(layer["dinp"], layer["dout"], layer["weight"],
                                                            layer["inp"], np.float32(1), packs, *every_term),
        "weight gradient": lambda: cpu._dense_dweight(layer["dweight"], layer["dbias"], layer["inp_t"], layer["dout"],
                                                      packs, *every_term),
        "weight update": lambda: cpu._dense_update(0, params, grads, optimizer, layer["inp_t"], layer["dout"], coef,
                                                   packs, *every_term),
    }


VERSIONS = {1: version1, 2: version2}


def make_layer(B, C, OC, dtype=np.float32, seed=0):
    """A hidden layer's arrays: inp (B, C) a ReLU output, weight (C, OC), bias, dout (B, OC) half
    zeros, their transposes, and every output buffer (weight2, weight_t2: copies that the updates,
    at learning rate 0, rewrite)."""
    rng = np.random.default_rng(seed)
    inp = np.maximum(rng.standard_normal((B, C)), 0).astype(dtype)
    weight = (rng.standard_normal((C, OC)) * np.sqrt(2 / C)).astype(dtype)
    bias = (rng.standard_normal(OC) * 0.1).astype(dtype)
    dout = (rng.standard_normal((B, OC)) * (rng.random((B, OC)) < 0.5)).astype(dtype)
    layer = {"inp": inp, "weight": weight, "bias": bias, "dout": dout}
    layer.update({f"{k}_t": np.ascontiguousarray(layer[k].T) for k in ("inp", "weight", "dout")})
    layer.update(weight2=weight.copy(), weight_t2=layer["weight_t"].copy(), velocity=np.zeros_like(weight),
                 out=np.empty((B, OC), dtype), out_t=np.empty((OC, B), dtype), dinp=np.empty((B, C), dtype),
                 dweight=np.empty((C, OC), dtype), dbias=np.empty(OC, dtype))
    return layer


def check(kernels, layer, rtol=1e-4):
    """Run each kernel once and compare what it wrote with NumPy's result, in float64."""
    f64 = {k: layer[k].astype(np.float64) for k in ("inp", "weight", "bias", "dout")}
    want = {"forward": ("out", np.maximum(f64["inp"] @ f64["weight"] + f64["bias"], 0)),
            "input gradient": ("dinp", (f64["dout"] @ f64["weight"].T) * (f64["inp"] > 0)),
            "weight gradient": ("dweight", f64["inp"].T @ f64["dout"]),
            "weight update": ("dweight", f64["inp"].T @ f64["dout"])}
    for name, run in kernels.items():
        buffer, expected = want[name]
        layer[buffer].fill(np.nan)
        run()
        np.testing.assert_allclose(layer[buffer], expected, rtol=rtol, atol=rtol * np.abs(expected).max(),
                                   err_msg=name)


def median_seconds(fn, calls=CALLS):
    fn()
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds))


def run(B, C, OC):
    layer = make_layer(B, C, OC)
    inp, weight, bias, dout = layer["inp"], layer["weight"], layer["bias"], layer["dout"]
    out, dinp, dweight = np.empty_like(layer["out"]), np.empty_like(layer["dinp"]), np.empty_like(layer["dweight"])
    velocity, weight2 = np.zeros_like(weight), weight.copy()

    def numpy_update():
        np.matmul(inp.T, dout, out=dweight)
        np.multiply(velocity, np.float32(0.9), out=velocity)
        np.add(velocity, dweight, out=velocity)
        np.subtract(weight2, np.float32(0.0) * velocity, out=weight2)  # lr 0, as the kernels' update here

    blas = {
        "forward": median_seconds(lambda: np.maximum(np.matmul(inp, weight, out=out) + bias, 0, out=out)),
        "input gradient": median_seconds(lambda: np.multiply(np.matmul(dout, weight.T, out=dinp), inp > 0, out=dinp)),
        "weight gradient": median_seconds(lambda: np.matmul(inp.T, dout, out=dweight)),
        "weight update": median_seconds(numpy_update),
    }
    flops = 2 * B * C * OC
    print(f"\nB={B} C={C} OC={OC} float32 ({flops / 1e6:.0f} MFLOP each)")
    print(f"{'kernel':>16} {'version':>8} {'us':>8} {'GFLOP/s':>8} {'vs BLAS':>8}")
    for name, seconds in blas.items():
        print(f"{name:>16} {'BLAS':>8} {seconds * 1e6:8.0f} {flops / seconds / 1e9:8.1f} {1:8.2f}")
    with threadpool_limits(1, user_api="blas"):
        for number, version in VERSIONS.items():
            kernels = version(layer)
            check(kernels, layer)
            for name, fn in kernels.items():
                t = median_seconds(fn)
                print(f"{name:>16} {number:>8} {t * 1e6:8.0f} {flops / t / 1e9:8.1f} {blas[name] / t:8.2f}")


def print_tile_loop():
    """The inner loop of the micro-kernel as LLVM compiled it here, in a fresh (uncached) product."""
    tile = cpu._tile_intrinsic(cpu.TILE_ROWS, cpu.TILE_VECTORS)
    width = cpu.TILE_VECTORS * cpu.VECTOR_BYTES // 4

    @njit
    def product(out, a, b):  # one whole float32 tile, a (TILE_ROWS, K) @ b packed (K, width)
        tile(out, 0, 0, a, 0, a.shape[1], b, 0, a.shape[1], out.shape[0], out.shape[1], 0)

    product(np.zeros((cpu.TILE_ROWS, width), np.float32), np.zeros((cpu.TILE_ROWS, 64), np.float32),
            np.zeros(64 * width, np.float32))
    asm = next(iter(product.inspect_asm().values())).splitlines()
    fmas = [i for i, line in enumerate(asm) if "vfmadd" in line]
    width_name = re.findall(r"%([xyz])mm", asm[fmas[0]])[0] if fmas else "?"
    spills = sum("rsp" in line and "mm" in line for line in asm[fmas[0]:fmas[-1]]) if fmas else 0
    print(f"\n{len(fmas)} FMA instructions on {width_name}mm registers, {spills} stack moves among them; the loop:")
    print("\n".join(asm[max(0, fmas[0] - 8):fmas[-1] + 4]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--asm", action="store_true", help="print the micro-kernel's inner loop")
    args = parser.parse_args(argv)
    for shape in SHAPES:
        run(*shape)
    if args.asm:
        print_tile_loop()


if __name__ == "__main__":
    main()
