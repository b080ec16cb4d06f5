"""Where the CUDA backend keeps the model's arrays: device memory, and the training set on the GPU.

The model owns every buffer and makes them with `empty(shape, dtype)` (an uninitialised device
array), `to_device(array)` (a copy on the GPU) and `to_host(array)` (a NumPy copy back); the kernels
allocate nothing per step.
"""
import importlib.util

import numpy as np
from numba import cuda

from fastnn.fileio import FastnnError
from fastnn.step import Data


def check_available():
    """Raise FastnnError unless numba-cuda is installed and sees a GPU (or the simulator is on)."""
    if importlib.util.find_spec("numba_cuda") is None:
        raise FastnnError("the cuda backend needs numba-cuda: install the cuda extra: uv sync --extra cuda")
    if not cuda.is_available():
        raise FastnnError("no NVIDIA GPU found: use --backend numba")


def empty(shape, dtype):
    """A new uninitialised device array."""
    return cuda.device_array(shape, np.dtype(dtype))


def to_device(array):
    """A copy of a NumPy array on the GPU (C-contiguous)."""
    return cuda.to_device(np.ascontiguousarray(array))


def to_host(array):
    """A NumPy copy of a device array (waits for the kernels writing it)."""
    return array.copy_to_host()


def synchronize():
    """Wait until every kernel queued so far has finished (launches return before the GPU is done)."""
    cuda.synchronize()


def prepare_data(images, labels, scale):
    """The training set on the GPU for a whole fit: images (N, C) stay uint8 there (4x smaller than
    floats) and are scaled as each batch is gathered."""
    return Data(to_device(images), to_device(labels), scale)


def scratch_size(sizes, batch_size):
    """Floats of StepBuffers.scratch the CUDA train steps use: none."""
    return 0
