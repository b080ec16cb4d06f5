"""Every op of every fast backend (numba; cuda on a GPU or in its simulator) against the NumPy
reference, one op at a time, through tests/helpers.compare_op.

    uv run pytest tests/test_backend_ops.py -q
    uv run pytest tests/test_backend_ops.py -k numba

Inputs: random, odd shapes, exact ReLU kinks (-1, 0, 1), sparse (90% zeros, as MNIST's 81%), all
zeros, no zeros, in float32 and float64. On the CUDA simulator large shapes are skipped (skip_if_slow).
"""
import inspect

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastnn import ops as reference
from fastnn.backends import MEMORY, OPS
from fastnn.bundles import Data, Hyper
from fastnn.settings import ADAM, ADAMW
from tests.helpers import DTYPES, assert_same, compare_op, nans, network, skip_if_slow, values

# (B, C, OC): tile edges in every dimension; 784 and 263 cut the sums into several DEPTH_BLOCKs
SHAPES = [(1, 1, 1), (7, 13, 5), (5, 16, 10), (17, 20, 18), (64, 784, 128), (32, 784, 128), (263, 37, 70)]
KINDS = ["random", "kinks", "sparse", "zeros", "no zeros"]


def skip_if_slow_case(ops, shape, kind):
    """skip_if_slow for a matmul case. Sparse, all-zero and no-zero inputs exercise the CPU kernels'
    zero-skipping; the CUDA kernels have no such branches, so the simulator runs those on one tile only."""
    B, C, OC = shape
    skip_if_slow(ops, B * C * OC, limit=20_000 if kind in ("random", "kinks") else 1_000)


def exact_if_kinks(kind):
    """Inputs and weights in {-1, 0, 1} make every sum an exact integer: ReLU's kink compares exactly."""
    return "exact" if kind == "kinks" else "matmul"


def signature(fn):
    return list(inspect.signature(getattr(fn, "py_func", fn)).parameters)


def test_same_names_and_signatures_as_the_reference(backend):
    for name in OPS:
        assert signature(getattr(backend, name)) == signature(getattr(reference, name)), name
    for name in MEMORY:  # empty, to_device, to_host are NumPy's own functions in the reference
        assert callable(getattr(backend, name)), name
    for name in ("prepare_data", "scratch_size"):
        assert signature(getattr(backend, name)) == signature(getattr(reference, name)), name


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("image_dtype", [np.uint8, "float"])
def test_gather_batch(backend, dtype, image_dtype):
    rng = np.random.default_rng(0)
    N, C, B = 50, 13, 7
    if image_dtype == np.uint8:
        images, scale = rng.integers(0, 256, (N, C)).astype(np.uint8), 1 / 255
    else:
        images, scale = rng.standard_normal((N, C)).astype(dtype), 1.0
    data = Data(images, rng.integers(0, 10, N).astype(np.int64), scale)
    compare_op(backend, "gather_batch", nans((B, C), dtype), np.full(B, -1, np.int64), data, rng.permutation(N)[:B],
               tol="exact")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["linear_forward", "linear_relu_forward"])
def test_linear_forward(backend, name, kind, shape, dtype):
    B, C, OC = shape
    skip_if_slow_case(backend, shape, kind)
    rng = np.random.default_rng(1)
    weight_kind = "kinks" if kind == "kinks" else "random"
    compare_op(backend, name, nans((B, OC), dtype), values(rng, (B, C), dtype, kind),
               values(rng, (C, OC), dtype, weight_kind), values(rng, OC, dtype, weight_kind), tol=exact_if_kinks(kind))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["random", "kinks"])
def test_relu(backend, kind, dtype):
    rng = np.random.default_rng(2)
    x, dout = values(rng, (7, 13), dtype, kind), values(rng, (7, 13), dtype)
    compare_op(backend, "relu_forward", nans((7, 13), dtype), x, tol="exact")
    compare_op(backend, "relu_backward", nans((7, 13), dtype), dout, x, tol="exact")
    in_place = backend.to_device(x)
    backend.relu_forward(in_place, in_place)  # out may be inp
    assert_same(backend.to_host(in_place), np.maximum(x, 0), 0.0, "relu_forward in place")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (1, 10), (7, 3), (9, 10), (64, 10), (256, 10)])
def test_softmax_and_cross_entropy(backend, shape, dtype):
    rng = np.random.default_rng(3)
    logits = values(rng, shape, dtype) * 5
    logits[0, 0] = 1000  # the max subtraction keeps exp() finite
    targets = rng.integers(0, shape[1], shape[0]).astype(np.int64)
    compare_op(backend, "softmax", nans(shape, dtype), logits, tol="softmax")
    compare_op(backend, "softmax_cross_entropy", nans(shape, dtype), logits, targets, tol="softmax")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_linear_backward(backend, kind, shape, dtype):
    B, C, OC = shape
    skip_if_slow_case(backend, shape, kind)
    rng = np.random.default_rng(4)
    dout_kind = "kinks" if kind == "kinks" else "random"
    compare_op(backend, "linear_backward", nans((C, OC), dtype), nans(OC, dtype),
               values(rng, (B, OC), dtype, dout_kind), values(rng, (B, C), dtype, kind), tol=exact_if_kinks(kind))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 13, 5), (17, 20, 18), (64, 128, 10), (32, 512, 256)])
@pytest.mark.parametrize("kind", ["random", "kinks"])
def test_linear_backward_input(backend, kind, shape, dtype):
    B, C, OC = shape
    skip_if_slow(backend, B * C * OC)
    rng = np.random.default_rng(5)
    compare_op(backend, "linear_backward_input", nans((B, C), dtype), values(rng, (B, OC), dtype, kind),
               values(rng, (C, OC), dtype, kind), values(rng, (B, C), dtype, "kinks"), tol=exact_if_kinks(kind))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(10,), (13,), (7, 18), (784, 128), (128, 10)])
@pytest.mark.parametrize("lr, number, hyper", [
    (0.05, 1, Hyper()),  # plain SGD
    (0.05, 4, Hyper(momentum=0.9)),
    (0.05, 4, Hyper(momentum=0.9, weight_decay=5e-4)),
    (0.05, 4, Hyper(momentum=0.9, weight_decay=5e-4, nesterov=True)),
    (1e-3, 1, Hyper(optimizer=ADAM)),
    (1e-3, 7, Hyper(optimizer=ADAM, weight_decay=5e-4)),
    (1e-3, 1000, Hyper(optimizer=ADAMW, weight_decay=5e-2)),
])
def test_update(backend, lr, number, hyper, shape, dtype):
    skip_if_slow(backend, np.prod(shape))
    rng = np.random.default_rng(6)
    param, grad, moment1 = (values(rng, shape, dtype) for _ in range(3))
    moment2 = values(rng, shape, dtype, "no zeros") ** 2  # a running mean of squares: never negative
    compare_op(backend, "update", param, grad, moment1, moment2, lr, number, hyper, tol="softmax")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (7, 18), (784, 128), (128, 10)])
@pytest.mark.parametrize("limit", [0.5, 3.0, 1e9])
def test_max_norm(backend, limit, shape, dtype):
    """Columns over the limit (most at 0.5, some at 3, none at 1e9) are scaled down, the others untouched."""
    skip_if_slow(backend, np.prod(shape))
    weight = values(np.random.default_rng(9), shape, dtype) * np.linspace(0.01, 0.4, shape[1]).astype(dtype)
    compare_op(backend, "max_norm", weight, limit, tol="softmax")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (64, 128), (128, 1024)])
@pytest.mark.parametrize("rate", [0.0, 0.2, 0.5, 0.9])
def test_dropout_forward_draws_the_reference_masks_bit_for_bit(backend, rate, shape, dtype):
    skip_if_slow(backend, np.prod(shape), limit=2_000)
    rng = np.random.default_rng(10)
    inp = values(rng, shape, dtype, "no zeros")
    for seed, step, layer in [(0, 1, 0), (42, 12345, 1), (2**32 - 1, 2**40 + 3, 2)]:
        compare_op(backend, "dropout_forward", nans(shape, dtype), inp, seed, step, layer, rate, tol="exact")


@pytest.mark.parametrize("dtype", DTYPES)
def test_argmax_ties_take_the_first(backend, dtype):
    logits = np.array([[1, 3, 3, 0], [2, 2, 2, 2], [-np.inf, -np.inf, -1, -1], [1e4, 1e4, 0, 0]], dtype)
    compare_op(backend, "argmax", np.full(4, -1, np.int64), logits, tol="exact")


def test_numba_argmax_lets_the_first_nan_win():
    """np.argmax's rule for NaN, which the Numba kernel follows (the CUDA one does not promise it)."""
    from kernels import cpu

    compare_op(cpu, "argmax", np.full(2, -1, np.int64), np.array([[0, np.nan, 5, np.nan], [np.nan, 1, 2, 3]]),
               tol="exact")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sizes", [(784, 10), (784, 128, 10), (784, 64, 32, 10), (20, 16, 12, 10)])
def test_forward(backend, sizes, dtype):
    skip_if_slow(backend, 9 * sum(a * b for a, b in zip(sizes, sizes[1:])))
    rng = np.random.default_rng(7)
    acts = (values(rng, (9, sizes[0]), dtype, "sparse"),) + tuple(nans((9, c), dtype) for c in sizes[1:])
    compare_op(backend, "forward", acts, network(sizes, dtype))


def test_partial_batch_views_leave_the_other_rows_alone(backend):
    """The last batch of an epoch is a view buf[:n] of the model's buffers: rows n: stay untouched."""
    rng = np.random.default_rng(12)
    B, n, C, OC = 16, 9, 20, 18
    out, dinp, dlogits = (np.full(shape, 7.0, np.float32) for shape in [(B, OC), (B, C), (B, 10)])
    inp, logits = values(rng, (B, C), np.float32, "sparse"), values(rng, (B, 10), np.float32)
    weight, bias = values(rng, (C, OC), np.float32), values(rng, OC, np.float32)
    out, dinp, dlogits, inp, logits, weight, bias = map(backend.to_device,
                                                        (out, dinp, dlogits, inp, logits, weight, bias))
    backend.linear_relu_forward(out[:n], inp[:n], weight, bias)
    backend.linear_backward_input(dinp[:n], out[:n], weight, inp[:n])
    backend.softmax_cross_entropy(dlogits[:n], logits[:n], backend.to_device(np.zeros(n, np.int64)))
    for buffer in map(backend.to_host, (out, dinp, dlogits)):
        assert np.all(buffer[n:] == 7.0) and not np.any(buffer[:n] == 7.0)


# ---- properties, on the CPU (the simulator would take hours) ----------------------------------------
@st.composite
def matmul_case(draw):
    B, C, OC = (draw(st.integers(1, 40)) for _ in range(3))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**32 - 1))
    zeros = draw(st.sampled_from([0.0, 0.5, 0.9, 1.0]))  # share of exact zeros in the input
    rng = np.random.default_rng(seed)
    inp = np.where(rng.random((B, C)) < zeros, 0, rng.standard_normal((B, C))).astype(dtype)
    return inp, values(rng, (C, OC), dtype), values(rng, OC, dtype), values(rng, (B, OC), dtype)


@given(matmul_case())  # examples: tests/conftest.py's profiles
def test_numba_matmuls_on_drawn_shapes(case):
    from kernels import cpu

    inp, weight, bias, dout = case
    (B, C), OC, dtype = inp.shape, weight.shape[1], inp.dtype
    compare_op(cpu, "linear_forward", nans((B, OC), dtype), inp, weight, bias)
    compare_op(cpu, "linear_relu_forward", nans((B, OC), dtype), inp, weight, bias)
    compare_op(cpu, "linear_backward", nans((C, OC), dtype), nans(OC, dtype), dout, inp)
    compare_op(cpu, "linear_backward_input", nans((B, C), dtype), dout, weight, np.maximum(inp, 0))


@given(B=st.integers(1, 300), K=st.integers(1, 12), dtype=st.sampled_from(DTYPES), spread=st.floats(0.01, 50),
       seed=st.integers(0, 2**32 - 1))
def test_numba_softmax_cross_entropy_on_drawn_shapes(B, K, dtype, spread, seed):
    from kernels import cpu

    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((B, K)) * spread).astype(dtype)
    targets = rng.integers(0, K, B).astype(np.int64)
    compare_op(cpu, "softmax_cross_entropy", nans((B, K), dtype), logits, targets, tol="softmax")
