"""Choose the micro-kernel's tile and blocking by measurement: a plain product, out = a @ b, built from
kernels.cpu's micro-kernel at several tile shapes, depth blocks and panels, against NumPy's BLAS.

    uv run python -m kernels.dev.tile_shapes                       # the candidates below
    uv run python -m kernels.dev.tile_shapes 12,2,256,48,128 6,2,256,24,128
                                                                   # rows,vectors,depth,panel rows,panel cols
    NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 uv run python -m kernels.dev.tile_shapes   # one core

The shapes are the products of a training step at the default preset's hidden layer (512 -> 256,
batch 128) and the large one (1024 -> 1024, batch 256): forward (B x OC x C), input gradient
(B x C x OC), weight gradient (C x OC x B). Each candidate is checked against NumPy, then timed: the
median of CALLS calls; GFLOP/s count 2 M N K, the ratio is BLAS's time over ours, in this process.
BLAS runs first at its own thread count; numba's runs with BLAS capped at one thread (docs/numba.md:
two spinning thread pools slow each other).
"""
import sys

import numba
import numpy as np
from numba import njit, prange
from threadpoolctl import threadpool_limits

from kernels.cpu import VECTOR_BYTES, _pack, _tile_intrinsic
from kernels.dev.dense import median_seconds

SHAPES = {  # name: (M, N, K) of out (M, N) = a (M, K) @ b (K, N)
    "fwd 512>256": (128, 256, 512), "dinp 512>256": (128, 512, 256), "dW 512>256": (512, 256, 128),
    "fwd 1k": (256, 1024, 1024), "dinp 1k": (256, 1024, 1024), "dW 1k": (1024, 1024, 256),
}
CANDIDATES = ("6,2,256,48,128", "8,2,256,48,128", "12,2,256,48,128", "8,3,256,48,96", "14,2,256,56,128",
              "12,2,128,48,128", "12,2,384,48,128", "12,2,256,96,128", "12,2,256,144,128", "12,2,256,96,64",
              "12,2,256,96,256", "12,2,256,192,128", "6,1,256,48,128")
CALLS = 40


def product_kernel(rows, vectors, depth, panel_rows, panel_cols):
    """kernels.cpu._product under _dense_forward's parallel loop, with these tunables."""
    tile = _tile_intrinsic(rows, vectors)

    @njit(parallel=True)
    def product(out, a, b, packs):
        (M, K), N = a.shape, b.shape[1]
        width = vectors * (VECTOR_BYTES // out.itemsize)
        n_row_panels = (M + panel_rows - 1) // panel_rows
        for task in prange(n_row_panels * ((N + panel_cols - 1) // panel_cols)):
            p = np.int64(task)
            i0, j0 = p % n_row_panels * panel_rows, p // n_row_panels * panel_cols
            i1, j1 = min(i0 + panel_rows, M), min(j0 + panel_cols, N)
            panel = packs[numba.get_thread_id()]
            for k0 in range(0, max(K, 1), depth):
                d = min(k0 + depth, K) - k0
                _pack(panel, b, k0, k0 + d, j0, j1, width, 0)
                for i in range(i0, i1, rows):
                    for j in range(j0, j1, width):
                        tile(out, i, j, a, i * K + k0, K, panel, (j - j0) * d, d, min(rows, i1 - i),
                             min(width, j1 - j), k0)
    return product


def main(argv=None):
    candidates = (sys.argv[1:] if argv is None else argv) or CANDIDATES
    rng = np.random.default_rng(0)
    arrays = {name: (rng.standard_normal((M, K), np.float32), rng.standard_normal((K, N), np.float32),
                     np.empty((M, N), np.float32)) for name, (M, N, K) in SHAPES.items()}
    blas = {name: median_seconds(lambda a=a, b=b, out=out: np.matmul(a, b, out=out), CALLS)
            for name, (a, b, out) in arrays.items()}
    print(f"numba threads {numba.get_num_threads()}, float32; GFLOP/s and (BLAS time / ours)")
    print(f"{'rows,vec,depth,pr,pc':>21} " + " ".join(f"{name:>13}" for name in SHAPES))
    print(f"{'BLAS':>21} " + " ".join(f"{2 * np.prod(SHAPES[n]) / blas[n] / 1e9:13.0f}" for n in SHAPES))
    with threadpool_limits(1, user_api="blas"):
        for candidate in candidates:
            rows, vectors, depth, panel_rows, panel_cols = (int(x) for x in candidate.split(","))
            product = product_kernel(rows, vectors, depth, panel_rows, panel_cols)
            packs = np.empty((numba.get_num_threads(), depth * panel_cols), np.float32)
            cells = []
            for name, (a, b, out) in arrays.items():
                product(out, a, b, packs)
                np.testing.assert_allclose(out, a @ b, rtol=1e-3, atol=1e-3)
                t = median_seconds(lambda: product(out, a, b, packs), CALLS)
                cells.append(f"{2 * np.prod(SHAPES[name]) / t / 1e9:6.0f} ({blas[name] / t:4.2f})")
            print(f"{candidate:>21} " + " ".join(cells), flush=True)


if __name__ == "__main__":
    main()
