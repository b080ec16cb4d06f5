"""The backend registry: a name -> a module exposing the ops of fastnn/ops.py with the same signatures.

    numpy  fastnn.ops      the NumPy reference, the definition of right
    numba  kernels.cpu     Numba-jitted parallel CPU kernels
    cuda   kernels.cuda    numba-cuda kernels for NVIDIA GPUs (a package; optional extra: `uv sync --extra cuda`)

Backends are imported on first use, so a missing optional dependency only matters to whoever asks
for that backend, and it is reported as one clear line rather than an ImportError.
"""
import importlib

from fastnn.fileio import FastnnError

BACKENDS = {
    "numpy": "fastnn.ops",
    "numba": "kernels.cpu",
    "cuda": "kernels.cuda",
}
CPU_BACKENDS = ("numpy", "numba")  # those that run on any machine (tests and benchmarks run both)
FAST_BACKENDS = ("numba", "cuda")  # those checked against the reference, "numpy"

# The functions every backend module must define (tests check the signatures match fastnn.ops).
OPS = (
    "gather_batch", "linear_forward", "relu_forward", "linear_relu_forward", "relu_backward",
    "softmax", "softmax_cross_entropy", "linear_backward", "linear_backward_input", "update", "max_norm",
    "dropout_forward", "argmax", "forward", "train_step", "train_steps",
)
# How the model allocates and moves the buffers it owns, hands over the training set once per fit,
# and learns how much scratch memory the backend's train_steps wants (fastnn/bundles.py uses them).
MEMORY = ("empty", "to_device", "to_host", "prepare_data", "scratch_size")


def get_backend(name):
    """Return the ops module registered as `name`, or raise FastnnError saying what to do."""
    if name not in BACKENDS:
        raise FastnnError(f"The 'backend' parameter must be one of {sorted(BACKENDS)}. Got {name!r} instead.")
    try:
        module = importlib.import_module(BACKENDS[name])
    except ImportError as e:
        raise FastnnError(f"backend {name!r} could not be loaded ({e}); install what it needs "
                          f"(the cuda backend: `uv sync --extra cuda`) or use --backend numpy") from e
    check = getattr(module, "check_available", None)
    if check is not None:
        check()  # e.g. the cuda backend raises FastnnError when no GPU is present
    return module
