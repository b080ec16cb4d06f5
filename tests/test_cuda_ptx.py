"""Every CUDA kernel compiles for a GPU (sm_90), typed as a GPU's device arrays type it, on a machine
without a GPU.

The rest of the suite runs the CUDA kernels in numba-cuda's simulator (tests/conftest.py switches it on
for the whole session), which runs them as Python and types nothing. So these tests compile in a
separate process, through kernels/dev/cuda_ptx.py. They need NVIDIA's NVVM and NVRTC libraries: the dev
environment installs them (pyproject.toml's dev group); without them the tests skip.
"""
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
KERNELS = {"_gather_kernel", "forward_kernel", "backward_kernel", "_relu_kernel", "_relu_backward_kernel",
           "_softmax_kernel", "_argmax_kernel", "_xent_kernel", "_update_kernel", "_max_norm_kernel",
           "_dropout_kernel", "_update_layers_kernel",
           "train_steps_kernel"}  # every kernel the ops of kernels/cuda/ launch (train_steps_kernel: persistent)


def compiler_missing():
    """Why NVVM or NVRTC cannot be loaded here, or '' when both can."""
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib
        for lib in ("nvvm", "nvrtc"):
            load_nvidia_dynamic_lib(lib)
    except Exception as e:  # ImportError, or the pathfinder's DynamicLibNotFoundError
        return f"NVIDIA's compiler libraries are not installed ({type(e).__name__}); `uv sync` installs them"
    return ""


pytestmark = pytest.mark.skipif(bool(compiler_missing()), reason=compiler_missing() or "-")


def run_compiler(*args):
    """python *args in a process where numba compiles for a GPU instead of simulating one."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def test_every_kernel_compiles_for_a_gpu_with_contiguous_arrays():
    out = run_compiler("-m", "kernels.dev.cuda_ptx", "--cc", "9.0")
    compiled = re.findall(r"^compiled \w+: (\w+)\((.*)\), launched", out, re.MULTILINE)
    for dtype in ("float32", "float64"):
        assert {name for name, types in compiled if f"array({dtype}" in types} == KERNELS, dtype
    # max-norm alone (one weight) and in version 1's train step (every layer's); the step's other kernels
    # take its settings as one DeviceHyper, so one compilation of each serves SGD, Adam and dropout
    layers = {re.search(r" x (\d+)\)", types)[1] for name, types in compiled if name == "_max_norm_kernel"}
    assert layers == {"1", "2"}
    # every array a kernel gets is C-contiguous on a GPU, zero-size placeholders and partial-batch views
    # included: an 'A' among 'C' arrays in a tuple is what broke the persistent kernel
    assert not [line for line in out.splitlines() if ", A)" in line]
    assert out.splitlines()[-1] == f"{len(compiled)} kernels compiled for sm_90"


def test_the_check_catches_a_tuple_mixing_layouts():
    # the persistent kernel's bug, in small: a tuple indexed at run time must hold arrays of one type
    out = run_compiler("-c", textwrap.dedent("""
        import numpy as np
        from numba import cuda
        from kernels.dev.cuda_ptx import argument_types, device_array

        def write(arrays, i):
            arrays[i][0, 0] = 1

        a = device_array((4, 10), np.float32)
        nothing = device_array((0, 0), np.float32)  # strides (0, 4), as kernels/cuda/device.py's placeholder
        print(*argument_types(a[:3], nothing, a.reshape(40).reshape(4, 10)), sep="; ")
        mixed = argument_types((a[:, :5], a), 0)  # a column slice is not contiguous: layout 'A'
        try:
            cuda.compile_ptx(write, mixed, cc=(9, 0))
        except Exception as e:
            print(type(e).__name__, " ".join(str(e).split()))
    """))
    layouts, failure = out.splitlines()[:2]
    assert layouts == "; ".join(["array(float32, 2d, C)"] * 3)  # as numba-cuda 0.30 types them on a GPU
    assert failure.startswith("TypingError")
    assert "getitem(Tuple(array(float32, 2d, A), array(float32, 2d, C)), int64)" in failure
