"""Shared fixtures. Also turns on numba-cuda's simulator on machines without an NVIDIA GPU, which must
happen before numba is first imported, so that the CUDA kernels are tested everywhere."""
import os
from pathlib import Path

if "NUMBA_ENABLE_CUDASIM" not in os.environ and not Path("/dev/nvidia0").exists():
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

import pytest  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from fastnn.backends import get_backend  # noqa: E402
from fastnn.data import load_dataset  # noqa: E402
from fastnn.fileio import FastnnError  # noqa: E402


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


@pytest.fixture(params=["numba", "cuda"])
def backend(request):
    """Each fast backend that can run here (cuda: on a GPU, or in the simulator), to compare with the
    reference."""
    try:
        return get_backend(request.param)
    except FastnnError as e:
        pytest.skip(str(e))
