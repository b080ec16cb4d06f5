"""What only the CUDA backend has: its availability check, per-step metrics that stay on the GPU, a
model trained end to end on it, and compilation of every kernel for a real GPU. (Its ops and train
steps are compared with the reference in test_backend_ops.py and test_train_steps.py.)

Without a GPU, numba's CUDA simulator runs the kernels (tests/conftest.py switches it on before numba
is imported). Run: `uv run pytest tests/test_cuda_backend.py`.
"""
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastnn.backends import get_backend
from fastnn.fileio import FastnnError

try:
    kc = get_backend("cuda")
except FastnnError as e:
    pytest.skip(str(e), allow_module_level=True)

from kernels.cuda import memory  # noqa: E402
from kernels.cuda.metrics import DeviceScalar, StepLog  # noqa: E402


def gpu_compiler_missing():
    """True unless NVIDIA's NVVM and NVRTC libraries can be loaded (kernels/dev/cuda_ptx.py says how)."""
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib
        for lib in ("nvvm", "nvrtc"):
            load_nvidia_dynamic_lib(lib)
    except Exception:  # ImportError, or the pathfinder's DynamicLibNotFoundError
        return True
    return False


def test_check_available_says_what_to_do(monkeypatch):
    monkeypatch.setattr(memory.cuda, "is_available", lambda: False)
    with pytest.raises(FastnnError, match="no NVIDIA GPU found: use --backend numba"):
        kc.check_available()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FastnnError, match="uv sync --extra cuda"):
        kc.check_available()


def test_device_scalars_read_late_and_refuse_overwritten_steps():
    log = StepLog(steps=4)
    first = log.claim(3)
    log.device.copy_to_device(np.array([[0.5, 3], [0.25, 2], [0.125, 1], [0, 0]]))
    loss, correct = DeviceScalar(log, first + 1, 0, float), DeviceScalar(log, first + 1, 1, int)
    assert (float(loss), int(correct), 1.0 + loss, loss < 1, 0 < loss) == (0.25, 2, 1.25, True, True)
    log.claim(4)  # four more steps: the ring of four rows has moved past step 1
    with pytest.raises(RuntimeError, match="overwritten"):
        float(loss)


def test_model_trains_on_the_cuda_backend_like_numpy():
    from fastnn.model import MLP

    rng = np.random.default_rng(10)
    X, y = rng.integers(0, 256, (24, 12), np.uint8), rng.integers(0, 10, 24)  # a full and a partial batch
    params = dict(hidden=(8,), lr=0.1, momentum=0.9, batch_size=16, epochs=1, seed=0)
    want = MLP(backend="numpy", **params).fit(X, y)
    got = MLP(backend="cuda", **params).fit(X, y)
    assert got.loss_curve_ == pytest.approx(want.loss_curve_, rel=1e-5)
    assert got.history_[0]["train_accuracy"] == want.history_[0]["train_accuracy"]
    np.testing.assert_allclose(got.coefs_[0], want.coefs_[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(got.predict(X), want.predict(X))


@pytest.mark.skipif(gpu_compiler_missing(), reason="no NVVM/NVRTC to compile for a GPU (kernels/dev/cuda_ptx.py)")
def test_every_kernel_compiles_for_a_gpu():
    # the simulator runs kernels as Python: only a real compilation checks numba-cuda's typing
    done = subprocess.run([sys.executable, "-m", "kernels.dev.cuda_ptx"], cwd=Path(__file__).parents[1],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
