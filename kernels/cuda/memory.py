"""Where the CUDA backend keeps the model's arrays: device memory, and the training set on the GPU.

The model owns every buffer and makes them with `empty(shape, dtype)` (an uninitialised device
array), `to_device(array)` (a copy on the GPU) and `to_host(array)` (a NumPy copy back); the kernels
allocate nothing per step.
"""
import functools
import importlib.util

import numpy as np
from numba import cuda

from fastnn.bundles import Data
from fastnn.fileio import FastnnError


def check_available():
    """Raise FastnnError, one line that says what to do, unless a tiny kernel compiles and runs here (on a
    GPU, or in the simulator)."""
    if importlib.util.find_spec("numba_cuda") is None:  # numba's own, retired CUDA target
        raise FastnnError("the cuda backend needs numba-cuda: install the cuda extra: uv sync --extra cuda")
    if not cuda.is_available():
        raise FastnnError("no NVIDIA GPU found: use --backend numba")
    problem = _first_launch_problem()
    if problem:
        raise FastnnError(problem)


@cuda.jit
def _count_to_one(out):
    out[0] += 1


@functools.cache
def _first_launch_problem():
    """'' if a one-thread kernel compiles, launches and writes here, else why not, in one line.

    A GPU and its driver are not enough: numba-cuda compiles with NVIDIA's NVVM and NVRTC libraries
    (wheels in the cuda extra) and breaks with some numba and NumPy releases; all of that shows only at
    the first launch, as a deep traceback. Once per process: the first compilation takes ~1 s.
    """
    try:
        out = cuda.to_device(np.zeros(1, np.int32))
        _count_to_one[1, 1](out)
        if out.copy_to_host()[0] == 1:
            return ""
        error = "a test kernel ran but did not write its result"
    except Exception as e:  # a missing library, a driver too old, an incompatible numba or NumPy, ...
        error = " ".join(f"{type(e).__name__}: {e}".split())[:300]  # the gist, on one line
    if "nvrtc" in error.lower() or "nvvm" in error.lower():
        fix = "NVIDIA's compiler libraries are missing: install the cuda extra: uv sync --extra cuda"
    else:
        fix = "install the cuda extra's tested versions (uv sync --extra cuda; README, CUDA) or use --backend numba"
    return f"the cuda backend cannot run a kernel here ({error}): {fix}"


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
