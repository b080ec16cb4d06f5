"""Fixtures for the benchmarks: MNIST once per session, and the backends to compare.

    uv run pytest --benchmark-only --benchmark-autosave -q   # every benchmark, saved under .benchmarks/
    uv run pytest --benchmark-only -k numba                  # one backend only

Thread pools. NumPy's OpenBLAS pool and Numba's OpenMP pool both spin for a while after each call, so
in one process each one slows the other down (see /work/shared/NUMBA.md). Measured here (2 cores, busy
machine) with a 64x784x128 matmul in NumPy and a prange kernel of the same size in Numba, median ms:

                                   numba alone  numpy alone  numba after numpy  numpy after numba
    BLAS default (2 threads)          0.29         0.13           16.0               28.0
    BLAS capped at 1 thread           0.34         0.14            0.33               0.14
    OMP_WAIT_POLICY=passive           0.58         0.12            0.63               0.13

Capping BLAS at one thread ends the fight without slowing either side at these sizes; the passive
wait policy ends it too but doubles every Numba launch. So the numba benchmarks run inside
`threadpool_limits(1, "blas")` (any BLAS call the backend or the harness makes cannot wake a second
pool), Numba keeps its default thread count (one per core), and the numpy benchmarks run as a user
runs NumPy: OpenBLAS with all its threads. The untimed warm-up call of every benchmark absorbs the
switch from one pool to the other between benchmarks.
"""
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from fastnn.backends import get_backend
from fastnn.data import load_dataset
from fastnn.fileio import FastnnError

BACKENDS = ("numpy", "numba")  # the CPU backends; cuda launches are asynchronous and need their own timing


@pytest.fixture(scope="session")
def mnist():
    """The MNIST training set: images (60000, 784) uint8 and labels (60000,) int64, as MLP.fit holds them."""
    data = load_dataset("mnist")
    return data.train_images, data.train_labels.astype(np.int64)


@pytest.fixture(params=BACKENDS)
def ops(request, benchmark):
    """The backend's ops module (skipped when it cannot be loaded); records its name in extra_info."""
    try:
        module = get_backend(request.param)
    except FastnnError as e:
        pytest.skip(str(e))
    benchmark.extra_info["backend"] = request.param
    if request.param == "numpy":
        yield module
    else:
        with threadpool_limits(limits=1, user_api="blas"):
            yield module
