"""The CUDA kernels (kernels/cuda.py) against the NumPy reference (fastnn/ops.py), through one helper.

Without a GPU, numba's CUDA simulator runs them (tests/conftest.py switches it on before numba is
imported): one Python thread per CUDA thread, so shapes stay tiny there; on a GPU the MNIST-sized
cases run as well. Run: `uv run pytest tests/test_cuda.py`.
"""
import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numba import config

from fastnn import ops
from fastnn.backends import MEMORY, OPS, get_backend
from fastnn.fileio import FastnnError

kc = pytest.importorskip("kernels.cuda", reason="numba-cuda is not installed")
if not kc.cuda.is_available():
    pytest.skip("no NVIDIA GPU and the CUDA simulator is off", allow_module_level=True)

from kernels.cuda_metrics import DeviceScalar, StepLog  # noqa: E402

ON_GPU = not config.ENABLE_CUDASIM
gpu_only = pytest.mark.skipif(not ON_GPU, reason="too slow for the CUDA simulator")
# float32 tolerances as seen with numba on CPU (STYLE.md): matmuls over hundreds of inputs 1e-4,
# softmax and loss 1e-5; float64 leaves only rounding in the last digits
TOL = {np.float32: {"matmul": 1e-4, "softmax": 1e-5}, np.float64: {"matmul": 1e-10, "softmax": 1e-12}}
# (B, C, OC): a single element, odd sizes, tiles cut at both edges, and on a GPU the seed layer
SHAPES = [(1, 1, 1), (7, 13, 9), (17, 20, 18), pytest.param((64, 784, 128), marks=gpu_only)]


def gpu_compiler_missing():
    """True unless NVIDIA's NVVM and NVRTC libraries can be loaded (kernels/cuda_ptx.py says how)."""
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib
        for lib in ("nvvm", "nvrtc"):
            load_nvidia_dynamic_lib(lib)
    except Exception:  # ImportError, or the pathfinder's DynamicLibNotFoundError
        return True
    return False


def helper_test_op(name, *args, tol=0.0):
    """Run ops.<name> and kernels.cuda.<name> on copies of args; compare every array and the result.

    Shape and dtype first, then values within rtol = atol = tol (0: exact). Output arrays come in
    filled with NaN, so an output not overwritten everywhere shows up.
    """
    ref_args = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    dev_args = [kc.to_device(a) if isinstance(a, np.ndarray) else a for a in args]
    want = getattr(ops, name)(*ref_args)
    got = getattr(kc, name)(*dev_args)
    for i, (ref, dev) in enumerate(zip(ref_args, dev_args)):
        if isinstance(ref, np.ndarray):
            out = kc.to_host(dev)
            assert (out.shape, out.dtype) == (ref.shape, ref.dtype), f"argument {i}"
            np.testing.assert_allclose(out, ref, rtol=tol, atol=tol, err_msg=f"{name}: argument {i}")
    if want is not None:
        assert float(got) == pytest.approx(want, rel=tol, abs=tol)


def randn(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def kinks(rng, shape, dtype):
    """Values in {-1, 0, 1}: every ReLU kink case, exactly."""
    return rng.integers(-1, 2, shape).astype(dtype)


def nans(shape, dtype):
    return np.full(shape, np.nan, dtype)


def test_same_names_and_signatures_as_the_reference():
    for name in OPS:
        assert inspect.signature(getattr(kc, name)).parameters.keys() == \
            inspect.signature(getattr(ops, name)).parameters.keys(), name
    for version, step in kc.TRAIN_STEPS.items():
        assert inspect.signature(step).parameters.keys() == \
            inspect.signature(ops.train_step).parameters.keys(), version
    assert all(callable(getattr(kc, name)) for name in MEMORY)


def test_check_available_says_what_to_do(monkeypatch):
    assert get_backend("cuda") is kc
    monkeypatch.setattr(kc.cuda, "is_available", lambda: False)
    with pytest.raises(FastnnError, match="no NVIDIA GPU found: use --backend numba"):
        kc.check_available()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FastnnError, match="uv sync --extra cuda"):
        kc.check_available()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ["linear_forward", "linear_relu_forward"])
def test_linear_forward(name, shape, dtype):
    B, C, OC = shape
    rng = np.random.default_rng(1)
    helper_test_op(name, nans((B, OC), dtype), randn(rng, (B, C), dtype), randn(rng, (C, OC), dtype),
                   randn(rng, OC, dtype), tol=TOL[dtype]["matmul"])


def test_linear_relu_forward_is_exact_at_the_kinks():
    # small integers: every product and sum is exact in float32, in any order, and many outputs are 0
    rng = np.random.default_rng(11)
    helper_test_op("linear_relu_forward", nans((17, 18), np.float32), kinks(rng, (17, 20), np.float32),
                   kinks(rng, (20, 18), np.float32), kinks(rng, 18, np.float32))


@pytest.mark.parametrize("shape", SHAPES)
def test_linear_backward(shape):
    B, C, OC = shape
    rng = np.random.default_rng(2)
    helper_test_op("linear_backward", nans((C, OC), np.float32), nans(OC, np.float32),
                   randn(rng, (B, OC), np.float32), randn(rng, (B, C), np.float32), tol=1e-4)


@pytest.mark.parametrize("shape", SHAPES)
def test_linear_backward_input_masks_at_the_kinks(shape):
    B, C, OC = shape
    rng = np.random.default_rng(3)
    helper_test_op("linear_backward_input", nans((B, C), np.float32), randn(rng, (B, OC), np.float32),
                   randn(rng, (C, OC), np.float32), kinks(rng, (B, C), np.float32), tol=1e-4)


def test_relu_is_exact_at_the_kinks():
    rng = np.random.default_rng(4)
    x = kinks(rng, (7, 13), np.float32)
    helper_test_op("relu_forward", nans((7, 13), np.float32), x)
    helper_test_op("relu_backward", nans((7, 13), np.float32), randn(rng, (7, 13), np.float32), x)
    inplace = kc.to_device(x)  # out may be inp
    kc.relu_forward(inplace, inplace)
    np.testing.assert_array_equal(kc.to_host(inplace), np.maximum(x, 0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_cross_entropy_and_argmax(dtype):
    rng = np.random.default_rng(5)
    logits = randn(rng, (9, 10), dtype) * 3
    logits[0] = 1e4  # huge and tied: no overflow, argmax takes the first
    logits[1, 3:6] = 50
    targets = rng.integers(0, 10, 9)
    tol = TOL[dtype]["softmax"]
    helper_test_op("softmax", nans((9, 10), dtype), logits, tol=tol)
    helper_test_op("softmax_cross_entropy", nans((9, 10), dtype), logits, targets, tol=tol)
    helper_test_op("argmax", np.full(9, -1, np.int64), logits)


def test_gather_batch_scales_uint8_exactly():
    rng = np.random.default_rng(6)
    images, labels = rng.integers(0, 256, (30, 13), np.uint8), rng.integers(0, 10, 30)
    indices = rng.permutation(30)[:7]
    for dtype in (np.float32, np.float64):
        helper_test_op("gather_batch", nans((7, 13), dtype), np.full(7, -1, np.int64), images, labels,
                       indices, 1 / 255)


@pytest.mark.parametrize("shape", [(13,), (7, 18)])
def test_sgd_update_with_momentum_and_weight_decay(shape):
    rng = np.random.default_rng(7)
    param, grad, velocity = (randn(rng, shape, np.float32) for _ in range(3))
    helper_test_op("sgd_update", param, grad, velocity, 0.1, 0.9, 1e-2, tol=1e-6)
    helper_test_op("sgd_update", param, grad, velocity, 0.1, 0.0, 0.0, tol=1e-6)


def make_network(rng, sizes, dtype):
    """He-initialised weights, zero biases, zero velocities: fastnn.model's starting state."""
    weights = [randn(rng, (c, oc), dtype) * np.sqrt(2 / c).astype(dtype) for c, oc in zip(sizes, sizes[1:])]
    biases = [np.zeros(oc, dtype) for oc in sizes[1:]]
    return weights, biases


def test_forward_through_three_layers():
    rng = np.random.default_rng(8)
    sizes = (20, 16, 12, 10)
    weights, biases = make_network(rng, sizes, np.float32)
    acts = [rng.random((5, sizes[0]), np.float32)] + [nans((5, c), np.float32) for c in sizes[1:]]
    ref = [a.copy() for a in acts]
    ops.forward(ref, weights, biases)
    dev = [kc.to_device(a) for a in acts]
    kc.forward(dev, [kc.to_device(w) for w in weights], [kc.to_device(b) for b in biases])
    for got, want in zip(dev, ref):
        np.testing.assert_allclose(kc.to_host(got), want, rtol=1e-5, atol=1e-5)


class Training:
    """One network's whole training state, twice: NumPy arrays for the reference, device arrays for CUDA."""

    def __init__(self, sizes, B, dtype, seed=9):
        rng, N = np.random.default_rng(seed), 3 * B  # rows for three batches
        weights, biases = make_network(rng, sizes, dtype)
        self.host = {
            "weights": weights, "biases": biases,
            "dweights": [nans(w.shape, dtype) for w in weights], "dbiases": [nans(b.shape, dtype) for b in biases],
            "velocities_w": [np.zeros_like(w) for w in weights], "velocities_b": [np.zeros_like(b) for b in biases],
            "acts": [nans((B, c), dtype) for c in sizes],
            "dacts": [nans((B, c), dtype) for c in sizes[:-1]],  # dacts[0]: scratch
            "dlogits": nans((B, sizes[-1]), dtype), "targets": np.zeros(B, np.int64),
            "images": rng.integers(0, 256, (N, sizes[0]), np.uint8), "labels": rng.integers(0, sizes[-1], N),
        }
        self.dev = {k: [kc.to_device(a) for a in v] if isinstance(v, list) else kc.to_device(v)
                    for k, v in self.host.items()}
        self.order = rng.permutation(N)
        self.B = B

    def batches(self, steps):
        return [self.order[s * self.B:(s + 1) * self.B] for s in range(steps)]

    def reference_steps(self, steps, lrs, momentum=0.9, weight_decay=1e-3):
        return [ops.train_step(**self.host, indices=idx, scale=1 / 255, lr=lr, momentum=momentum,
                               weight_decay=weight_decay) for idx, lr in zip(self.batches(steps), lrs)]

    def assert_parameters_match(self, tol):
        for name in ("weights", "biases", "velocities_w", "velocities_b"):
            for got, want in zip(self.dev[name], self.host[name]):
                np.testing.assert_allclose(kc.to_host(got), want, rtol=tol, atol=tol, err_msg=name)


SEED_NETWORK = pytest.param((784, 128, 10), 64, np.float32, marks=gpu_only)  # MNIST-sized, on a GPU only


@pytest.mark.parametrize("version", sorted(kc.TRAIN_STEPS))
@pytest.mark.parametrize("sizes, B, dtype", [((20, 16, 10), 8, np.float32), ((13, 9, 7, 10), 5, np.float64),
                                             SEED_NETWORK])
def test_train_steps_follow_the_reference(version, sizes, B, dtype):
    state, steps, lrs = Training(sizes, B, dtype), 2, (0.1, 0.05)  # the second step uses momentum
    want = state.reference_steps(steps, lrs)
    got = [kc.TRAIN_STEPS[version](**state.dev, indices=kc.to_device(idx), scale=1 / 255, lr=lr, momentum=0.9,
                                   weight_decay=1e-3) for idx, lr in zip(state.batches(steps), lrs)]
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert [float(loss) for loss, _ in got] == pytest.approx([loss for loss, _ in want], rel=tol)
    assert [int(n) for _, n in got] == [n for _, n in want]
    state.assert_parameters_match(tol=10 * tol)


@pytest.mark.parametrize("sizes, B, dtype", [((20, 16, 10), 8, np.float32), SEED_NETWORK])
def test_persistent_kernel_runs_many_steps_in_one_launch(sizes, B, dtype):
    # on a GPU this is where blocks meet at grid-wide barriers: the simulator runs one block only
    state, steps, lrs = Training(sizes, B, dtype), 3, (0.1, 0.08, 0.06)
    want = state.reference_steps(steps, lrs)
    indices = kc.to_device(np.concatenate(state.batches(steps)))
    got = kc.train_steps(**state.dev, indices=indices, scale=1 / 255, lrs=kc.to_device(np.float32(lrs)),
                         momentum=0.9, weight_decay=1e-3)
    assert [float(loss) for loss, _ in got] == pytest.approx([loss for loss, _ in want], rel=1e-5)
    assert [int(n) for _, n in got] == [n for _, n in want]
    state.assert_parameters_match(tol=1e-4)


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


@pytest.mark.skipif(gpu_compiler_missing(), reason="no NVVM/NVRTC to compile for a GPU (see kernels/cuda_ptx.py)")
def test_every_kernel_compiles_for_a_gpu():
    # the simulator runs kernels as Python: only a real compilation checks numba-cuda's typing
    done = subprocess.run([sys.executable, "-m", "kernels.cuda_ptx"], cwd=Path(__file__).parents[1],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
