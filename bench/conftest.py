"""Fixtures for the benchmarks: MNIST once per session, and the backends to compare.

    uv run pytest --benchmark-only --benchmark-autosave -q   # every benchmark, saved under .benchmarks/
    uv run pytest --benchmark-only -k numba                  # one backend only

Thread pools. NumPy's OpenBLAS pool and Numba's OpenMP pool both spin for a while after each call, so
in one process each one slows the other down (docs/numba.md). Measured here (2 vCPUs
shared with other engineers' builds, load 2-7) with a 64x784x128 matmul in NumPy and a prange kernel
of the same size in Numba, median ms over 200 calls:

                                   numba alone  numpy alone  numba after numpy  numpy after numba
    BLAS default (2 threads)          0.29         0.13           16.0               28.0
    BLAS capped at 1 thread           0.34         0.14            0.33               0.14
    OMP_WAIT_POLICY=passive           0.58         0.12            0.63               0.13

The passive wait policy ends the fight but doubles every Numba launch; capping BLAS at one thread
ends it for free. The second BLAS thread also hurts NumPy on its own on this busy machine: a whole
numpy epoch (784-128-10, B=64) took 3.3-3.8 s with OpenBLAS's 2 threads and 0.6-0.7 s with one
(train_step 0.75 vs 0.44 ms; single 2-thread matmuls often waited a 4 ms scheduler tick or four).
Only the big isolated matmuls gained from it (linear_backward B=64 H=128: 82 vs 138 us).

So every backend benchmark runs inside `threadpool_limits(1, "blas")`: Numba keeps its OpenMP threads
(one per core) and cannot meet a second pool; NumPy gets the thread count that trains fastest here.
test_gemm_ceiling alone uses all of BLAS's threads (and one, for comparison). The untimed warm-up
call of every benchmark absorbs the switch from one pool to the other between benchmarks.
"""
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from fastnn.backends import get_backend
from fastnn.data import load_dataset
from fastnn.fileio import FastnnError

BACKENDS = ("numpy", "numba")  # the CPU backends; cuda launches are asynchronous and need their own timing
BLAS_THREADS = 1  # OpenBLAS threads in every backend benchmark (None: OpenBLAS's default); see above


@pytest.fixture(scope="session")
def mnist():
    """The MNIST training set: images (60000, 784) uint8 and labels (60000,) int64, as MLP.fit holds them."""
    data = load_dataset("mnist")
    return data.train_images, data.train_labels.astype(np.int64)


@pytest.fixture(params=BACKENDS)
def ops(request, benchmark):
    """The backend's ops module (skipped when it cannot be loaded), with BLAS capped; records its name."""
    try:
        module = get_backend(request.param)
    except FastnnError as e:
        pytest.skip(str(e))
    benchmark.extra_info.update(backend=request.param, blas_threads=BLAS_THREADS)
    with threadpool_limits(limits=BLAS_THREADS, user_api="blas"):
        yield module
