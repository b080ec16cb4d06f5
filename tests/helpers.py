"""The one way tests compare a backend with the NumPy reference, and the inputs they compare on.

    compare_op(ops, "linear_forward", nans((B, OC), dtype), inp, weight, bias)

runs fastnn.ops.<name> and ops.<name> on copies of the same arguments (device copies for a GPU
backend), then checks every array argument afterwards (outputs, in-place updates, inputs that must
stay untouched) and the return value: shape and dtype first, then values within the tolerance of
TOLERANCES. Outputs come in filled with NaN, so an entry a kernel forgets to write fails.
"""
import os

import numpy as np
import pytest

from fastnn import ops as reference
from fastnn.bundles import Layers, he_init

# Tolerances that fit each dtype's arithmetic (rtol = atol). matmul: sums over up to 784 products,
# whose order differs between BLAS and a kernel (float32 rounding ~1e-7 per add); softmax: exp and
# log of one row; exact: ReLU, gathers, argmax, and sums of small integers, exact in any order.
TOLERANCES = {
    np.float32: {"matmul": 1e-4, "softmax": 1e-5, "exact": 0.0},
    np.float64: {"matmul": 1e-10, "softmax": 1e-12, "exact": 0.0},
}
DTYPES = (np.float32, np.float64)

# Whether numba-cuda's simulator stands in for a GPU (tests/conftest.py decides, before numba loads).
SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
# The marks of a whole CUDA train step: the simulator marker there (~10-30 s a case, deselected by
# default), none on a GPU, where it takes a second. For pytest.param(..., marks=ON_SIMULATOR).
ON_SIMULATOR = [pytest.mark.simulator] if SIMULATED else []


def is_simulated(ops):
    """True for the CUDA backend running in numba-cuda's simulator: one Python thread per CUDA thread."""
    return ops.__name__ == "kernels.cuda" and SIMULATED


def skip_if_slow(ops, macs, limit=20_000):
    """Skip a case of more than `limit` multiply-adds on the CUDA simulator (a 64x784x128 matmul takes
    minutes there); on a real GPU and on the CPU every case runs."""
    if is_simulated(ops) and macs > limit:
        pytest.skip(f"GPU only: {macs} multiply-adds are too slow for the CUDA simulator")


def nested_map(fn, arg):
    """fn applied to every array in arg, through tuples and namedtuples, keeping their types."""
    if isinstance(arg, tuple):
        mapped = [nested_map(fn, a) for a in arg]
        return type(arg)(*mapped) if hasattr(arg, "_fields") else tuple(mapped)
    return fn(arg) if isinstance(arg, np.ndarray) else arg


def arrays(arg):
    """Every array in arg, through tuples and namedtuples, in order."""
    if isinstance(arg, tuple):
        for a in arg:
            yield from arrays(a)
    elif isinstance(arg, np.ndarray) or hasattr(arg, "copy_to_host"):
        yield arg


def assert_same(got, want, tol, what=""):
    """Shape and dtype first, then values (NaN equal to NaN)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=what)


def compare_op(ops, name, *args, tol="matmul", kernel=None):
    """Run fastnn.ops.<name> and the backend's (or `kernel`) on copies of args; compare every array and
    the result. The dtype of the first float array picks the row of TOLERANCES."""
    dtype = next(a.dtype.type for a in arrays(args) if a.dtype.kind == "f")
    tolerance = TOLERANCES[dtype][tol]
    want_args = nested_map(np.copy, args)
    got_args = nested_map(ops.to_device, nested_map(np.copy, args))
    want = getattr(reference, name)(*want_args)
    got = (kernel or getattr(ops, name))(*got_args)
    for i, (g, w) in enumerate(zip(arrays(got_args), arrays(want_args))):
        assert_same(ops.to_host(g), w, tolerance, f"{name}: array argument {i}")
    if want is not None:  # the loss of softmax_cross_entropy (a DeviceScalar from the GPU)
        assert_same(float(got), want, tolerance, f"{name}: result")


def nans(shape, dtype):
    return np.full(shape, np.nan, dtype)


def values(rng, shape, dtype, kind="random"):
    """Test inputs: random normals, exact kinks (-1, 0, 1), sparse (90% zeros), all zeros, no zeros."""
    if kind == "kinks":
        return rng.integers(-1, 2, shape).astype(dtype)
    x = rng.standard_normal(shape).astype(dtype)
    if kind == "sparse":
        return np.where(rng.random(shape) < 0.9, 0, np.abs(x)).astype(dtype)
    if kind == "zeros":
        return np.zeros(shape, dtype)
    if kind == "no zeros":
        return (np.abs(x) + 0.1).astype(dtype)
    return x


def network(sizes, dtype, seed=10):
    """Host parameters for layer sizes: He-normal weights and small random biases (zero biases would
    hide a kernel that drops them)."""
    weights, _ = he_init(sizes, dtype, seed)
    rng = np.random.default_rng(seed + 1)
    return Layers(weights, tuple((rng.standard_normal(c) * 0.01).astype(dtype) for c in sizes[1:]))
