"""Shared fixtures, the markers' rules and hypothesis' profiles. Also turns on numba-cuda's simulator on
machines without an NVIDIA GPU, which must happen before numba is first imported, so that the CUDA
kernels are tested everywhere.

What the default `uv run pytest` leaves out (pyproject.toml's addopts), each by a marker:
    simulator  whole CUDA train steps in numba-cuda's simulator: ~10-30 s each there, where one Python
               thread stands in for each CUDA thread; on a real GPU they run in the default run
    versions   the numbered kernel versions of kernels/dev/, compiled afresh on every run (~17 s)
    slow       the README's accuracies, trained on all of MNIST (minutes)
"""
import os
import sys
from pathlib import Path

if "NUMBA_ENABLE_CUDASIM" not in os.environ and not Path("/dev/nvidia0").exists():
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
# pytest-xdist runs one worker per core (pyproject's addopts): each worker's numba pool gets its share of
# the cores, at least 2 threads so that the parallel kernels' blocks still meet across threads
if "PYTEST_XDIST_WORKER_COUNT" in os.environ and "NUMBA_NUM_THREADS" not in os.environ:
    share = (os.cpu_count() or 2) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ["NUMBA_NUM_THREADS"] = str(max(2, share))
# mutmut forks a process per mutant from one that already ran numba's kernels: GNU OpenMP's thread pool
# does not survive a fork (the child dies, which mutmut would count as a kill); numba's workqueue does
if "mutmut" in sys.modules:
    os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")
# scikit-learn's array-API check of FastnnClassifier (NumPy's namespace) runs only with this set, before
# SciPy is imported; without it the check skips
os.environ.setdefault("SCIPY_ARRAY_API", "1")

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from fastnn.backends import CPU_BACKENDS, FAST_BACKENDS, get_backend  # noqa: E402
from fastnn.data import load_dataset  # noqa: E402
from fastnn.fileio import FastnnError  # noqa: E402
from tests.helpers import ON_SIMULATOR  # noqa: E402

# Property tests: a few drawn cases in a developer's run, many in CI (which sets CI=true). No deadline:
# the first example of a numba test may compile.
settings.register_profile("dev", max_examples=12, deadline=None)
settings.register_profile("ci", max_examples=300, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def pytest_ignore_collect(collection_path, config):
    """`pytest --benchmark-only` collects the benchmarks alone, not the tests only to skip them."""
    return True if config.getoption("benchmark_only", False) and collection_path.name.startswith("test_") else None


@pytest.fixture(scope="session")
def mnist():
    """The bundled MNIST, loaded once per test session."""
    return load_dataset("mnist")


@pytest.fixture(scope="session", autouse=True)
def one_blas_thread():
    """NumPy's BLAS on one thread for the whole session: its spinning threads slow Numba's pool 40x
    when the two run in turn, as they do in every comparison with the reference (docs/numba.md)."""
    with threadpool_limits(1, user_api="blas"):
        yield


def fast_backend(name):
    """The backend `name`, or a skip saying why it cannot run here."""
    try:
        return get_backend(name)
    except FastnnError as e:
        pytest.skip(str(e))


@pytest.fixture(params=FAST_BACKENDS)
def backend(request):
    """Each fast backend that can run here (cuda: on a GPU, or in the simulator), to compare with the
    reference one op at a time."""
    return fast_backend(request.param)


@pytest.fixture(params=[pytest.param(name, marks=() if name in CPU_BACKENDS else ON_SIMULATOR) for name in FAST_BACKENDS])
def step_backend(request):
    """backend, for tests of whole train steps: the CUDA simulator's cases carry the simulator marker."""
    return fast_backend(request.param)
