"""Shared fixtures. Also turns on numba-cuda's simulator on machines without an NVIDIA GPU, which must
happen before numba is first imported, so that the CUDA kernels are tested everywhere."""
import os
from pathlib import Path

if "NUMBA_ENABLE_CUDASIM" not in os.environ and not Path("/dev/nvidia0").exists():
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

import pytest  # noqa: E402

from fastnn.data import load_dataset  # noqa: E402


@pytest.fixture(scope="session")
def mnist():
    """The bundled MNIST, loaded once per test session."""
    return load_dataset("mnist")
