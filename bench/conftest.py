"""Fixtures for the benchmarks: MNIST once per session, and the backends to compare.

    uv run pytest --benchmark-only --benchmark-autosave -q   # every benchmark, saved under .benchmarks/
    uv run pytest --benchmark-only -k numba                  # one backend only
    uv run pytest bench --benchmark-disable -o addopts=      # each benchmark run once, untimed (CI)

A plain `uv run pytest` does not collect the benchmarks (pytest_ignore_collect below): they are not
tests, and skipping 126 of them on every run hid the real skips.

Thread pools: each backend at its best. NumPy's benchmarks run with all of OpenBLAS's threads, as
users run it; Numba's with BLAS capped at one thread, so that its own pool (one thread per core) never
meets a spinning BLAS pool. The two pools spin for a while after each call and slow each other down
when they alternate (docs/numba.md: a NumPy matmul then a Numba parallel region took 8.4 ms instead
of 0.2); each benchmark's untimed warm-up call absorbs the switch from one backend to the other.
test_gemm_ceiling measures OpenBLAS alone, with all its threads and with one.
"""
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from fastnn.backends import CPU_BACKENDS, get_backend
from fastnn.data import load_dataset
from fastnn.fileio import FastnnError

BLAS_THREADS = {"numpy": None, "numba": 1}  # OpenBLAS threads during each backend's benchmarks (None: all)


def pytest_configure(config):
    """A timed run is one process: turn off pytest-xdist's workers (pyproject's -n auto), which would
    share the cores with the benchmarks and make pytest-benchmark disable itself."""
    if config.getoption("benchmark_only") or config.getoption("benchmark_enable"):
        config.option.dist, config.option.tx, config.option.numprocesses = "no", [], 0


def pytest_ignore_collect(collection_path, config):
    """Leave bench_*.py out of a run that did not ask for benchmarks: no --benchmark-only, and no path
    given on the command line (pyproject's testpaths chose tests/ and bench/)."""
    if not collection_path.name.startswith("bench_"):
        return None  # let pytest decide
    asked = config.getoption("benchmark_only") or config.args_source != pytest.Config.ArgsSource.TESTPATHS
    return None if asked else True


@pytest.fixture(scope="session")
def mnist():
    """The MNIST training set: images (60000, 784) uint8 and labels (60000,) int64, as MLP.fit holds them."""
    data = load_dataset("mnist")
    return data.train_images, data.train_labels.astype(np.int64)


@pytest.fixture(params=CPU_BACKENDS)  # cuda launches are asynchronous: bench.gpu times them
def ops(request, benchmark):
    """The backend's ops module (skipped when it cannot be loaded), with its BLAS threads; records its name."""
    try:
        module = get_backend(request.param)
    except FastnnError as e:
        pytest.skip(str(e))
    threads = BLAS_THREADS[request.param]
    benchmark.extra_info.update(backend=request.param, blas_threads=threads or "all")
    with threadpool_limits(limits=threads, user_api="blas"):
        yield module
