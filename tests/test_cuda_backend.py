"""What only the CUDA backend has: its availability check, per-step metrics that stay on the GPU, row,
elementwise and column kernels on more work than their grid has threads, dropout masks at the largest
seeds and step numbers inside whole train steps, and a model trained end to end on it. (Its ops and
train steps are compared with the reference in test_backend_ops.py and test_train_steps.py; every
kernel is compiled for a real GPU in test_cuda_ptx.py.)

Without a GPU, numba's CUDA simulator runs the kernels (tests/conftest.py switches it on before numba
is imported). Run: `uv run pytest tests/test_cuda_backend.py`.
"""
import importlib.util

import numpy as np
import pytest

from fastnn import ops as reference
from fastnn.backends import get_backend
from fastnn.bundles import Hyper, Steps, to_host, training_state
from fastnn.fileio import FastnnError
from fastnn.settings import ADAMW
from tests.helpers import TOLERANCES, arrays, assert_same, compare_op, nans, network, values

try:
    kc = get_backend("cuda")
except FastnnError as e:
    pytest.skip(str(e), allow_module_level=True)

from cuda.pathfinder import DynamicLibNotFoundError  # noqa: E402
from numba.cuda.cudadrv.error import CudaSupportError  # noqa: E402

from kernels.cuda import memory, op_kernels  # noqa: E402
from kernels.cuda.device import THREADS  # noqa: E402
from kernels.cuda.metrics import DeviceScalar, StepLog  # noqa: E402


@pytest.fixture
def first_launch_again():
    """check_available's test launch runs once per process: forget its result before and after the test."""
    memory._first_launch_problem.cache_clear()
    yield
    memory._first_launch_problem.cache_clear()


class FailingKernel:
    """Stands in for a kernel whose launch raises `error`."""

    def __init__(self, error):
        self.error = error

    def __getitem__(self, launch_config):
        def launch(*args):
            raise self.error
        return launch


def test_check_available_says_what_to_do(monkeypatch):
    monkeypatch.setattr(memory.cuda, "is_available", lambda: False)
    with pytest.raises(FastnnError, match="no NVIDIA GPU found: use --backend numba"):
        kc.check_available()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FastnnError, match="uv sync --extra cuda"):
        kc.check_available()


def test_check_available_launches_a_kernel(first_launch_again):
    kc.check_available()
    assert memory._first_launch_problem() == ""


@pytest.mark.parametrize("error, fix", [
    # what numba-cuda raises at the first launch when the cuda extra's toolchain is not installed
    (DynamicLibNotFoundError('Failure finding "libnvrtc.so.13 or libnvrtc.so.12": No such file: libnvrtc.so.13'
                             '\nsearched: site-packages, conda, CUDA_HOME'), "NVIDIA's compiler libraries are missing"),
    (OSError("libnvvm.so.4: cannot open shared object file: No such file or directory"), "uv sync --extra cuda"),
    (CudaSupportError("Error at driver init:\nCall to cuInit results in CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE"),
     "or use --backend numba"),
    (AttributeError("`np.row_stack` was removed in the NumPy 2.5 release.\nUse `np.vstack` instead."),
     "tested versions"),
])
def test_check_available_turns_a_failed_first_launch_into_one_line(monkeypatch, first_launch_again, error, fix):
    monkeypatch.setattr(memory, "_count_to_one", FailingKernel(error))
    with pytest.raises(FastnnError) as raised:
        kc.check_available()
    message = str(raised.value)
    assert "\n" not in message
    assert type(error).__name__ in message and fix in message, message


@pytest.mark.parametrize("op", ["softmax", "argmax"])
def test_row_kernels_write_rows_past_a_capped_grid(monkeypatch, op):
    monkeypatch.setattr(op_kernels, "MAX_BLOCKS", 1)  # one block of THREADS threads for all the rows
    B, K = THREADS + 45, 3
    logits = np.random.default_rng(4).standard_normal((B, K))
    if op == "softmax":
        compare_op(kc, "softmax", nans((B, K), np.float64), logits, tol="softmax")
    else:
        compare_op(kc, "argmax", np.full(B, -1, np.int64), logits, tol="exact")


@pytest.mark.parametrize("op", ["update", "max_norm", "dropout_forward"])
def test_elementwise_and_column_kernels_write_past_a_capped_grid(monkeypatch, op):
    monkeypatch.setattr(op_kernels, "MAX_BLOCKS", 1)  # one block of THREADS threads for all the elements or columns
    rng = np.random.default_rng(5)
    if op == "update":
        n = THREADS + 45
        param, grad, moment1 = (values(rng, n, np.float32) for _ in range(3))
        compare_op(kc, op, param, grad, moment1, values(rng, n, np.float32, "no zeros") ** 2, 1e-3, 3,
                   Hyper(optimizer=ADAMW, weight_decay=1e-2), tol="softmax")
    elif op == "max_norm":
        compare_op(kc, op, values(rng, (3, THREADS + 45), np.float32), 0.5, tol="softmax")
    else:
        compare_op(kc, op, nans((3, THREADS + 45), np.float32), values(rng, (3, THREADS + 45), np.float32), 9, 5, 1,
                   0.5, tol="exact")


@pytest.mark.parametrize("version", [1, 2])
def test_train_steps_draw_the_reference_masks_at_the_largest_seed_and_step_numbers(version):
    """Dropout of the pixels and the hidden layer keyed by step numbers past 2^32 and the largest seed, with
    AdamW and max-norm, in both versions of the train steps: each step's masks, update and limit as the
    reference's."""
    sizes, dtype, rows = (12, 8, 10), np.float64, np.array([[0, 3, 5, 1], [2, 4, 6, 7]])
    rng = np.random.default_rng(6)
    data = (rng.integers(0, 256, (8, 12), np.uint8), rng.integers(0, 10, 8), 1 / 255)
    hyper = Hyper(weight_decay=1e-2, optimizer=ADAMW, dropout=0.5, dropout_seed=2**32 - 1, max_norm=0.9,
                  input_dropout=0.2)
    lrs, numbers = np.array([1e-2, 5e-3]), np.array([2**40 + 3, 2**40 + 4])
    states = []
    for ops_, train_steps in ((reference, reference.train_steps), (kc, kc.TRAIN_STEPS[version])):
        state = training_state(ops_, network(sizes, dtype), rows.shape[1])
        losses, _ = train_steps(*state, ops_.prepare_data(*data), Steps(*map(ops_.to_device, (rows, lrs, numbers))),
                                hyper)
        states.append(([float(x) for x in losses], state))
    (want_losses, want), (got_losses, got) = states
    tol = TOLERANCES[dtype]
    assert_same(got_losses, want_losses, tol["softmax"], "losses")
    for got_layers, want_layers in ((got.params, want.params), (got.optimizer.moment2, want.optimizer.moment2)):
        for g, w in zip(arrays(to_host(kc, got_layers)), arrays(want_layers)):
            assert_same(g, w, tol["matmul"])


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

