"""The Numba kernels (kernels/cpu.py and the numbered versions) against the NumPy reference, fastnn.ops.

    uv run pytest tests/test_kernels.py -q

Every comparison goes through helper_test_op: the same op runs in both backends on copies of the same
arguments, then every array (outputs, in-place updates, inputs that must stay untouched) and the
return value are compared, shape and dtype first, then values with tolerances that fit the dtype.
Outputs start as NaN, so a kernel that forgets to overwrite an entry fails.
"""
import inspect
import math

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_limits

from fastnn import ops
from fastnn.backends import MEMORY, OPS
from kernels import cpu, linear_backward, linear_forward

DTYPES = (np.float32, np.float64)
# matmul: sums over up to 784 products; softmax: exp/log of one row; exact: ReLU, gathers, argmax
TOLERANCES = {
    np.float32: {"matmul": 1e-4, "softmax": 1e-5, "exact": 0.0},
    np.float64: {"matmul": 1e-10, "softmax": 1e-12, "exact": 0.0},
}


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    """NumPy's spinning BLAS threads slow the Numba pool 40x when both run in turn (NUMBA.md)."""
    with threadpool_limits(1, user_api="blas"):
        yield


def assert_same(got, want, tol):
    """Shape and dtype first, then values (NaN equal to NaN)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"shape {got.shape} != {want.shape}"
    assert got.dtype == want.dtype, f"dtype {got.dtype} != {want.dtype}"
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def clone(arg):
    if isinstance(arg, tuple):
        return tuple(clone(a) for a in arg)
    return arg.copy() if isinstance(arg, np.ndarray) else arg


def flat_arrays(args):
    for arg in args:
        if isinstance(arg, tuple):
            yield from flat_arrays(arg)
        elif isinstance(arg, np.ndarray):
            yield arg


def helper_test_op(name, *args, tol="matmul", kernel=None):
    """Run fastnn.ops.<name> and the kernel (cpu.<name> unless given) on copies of args; compare all."""
    dtype = next(a.dtype.type for a in flat_arrays(args) if a.dtype.kind == "f")
    tolerance = TOLERANCES[dtype][tol]
    want_args, got_args = clone(args), clone(args)
    want = getattr(ops, name)(*want_args)
    got = (kernel or getattr(cpu, name))(*got_args)
    for g, w in zip(flat_arrays(got_args), flat_arrays(want_args)):
        assert_same(g, w, tolerance)
    if want is not None:  # the loss of softmax_cross_entropy
        assert_same(got, want, tolerance)


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


SHAPES = [(1, 1, 1), (7, 13, 5), (5, 16, 10), (64, 784, 128), (32, 784, 128)]  # (B, C, OC)
KINDS = ["random", "kinks", "sparse", "zeros", "no zeros"]


def exact_if_kinks(kind):
    """Inputs and weights in {-1, 0, 1} make every sum an exact integer: ReLU's kink compares exactly."""
    return "exact" if kind == "kinks" else "matmul"


# ---- the interface --------------------------------------------------------------------------------
def test_cpu_exposes_every_op_with_the_reference_signature():
    for name in OPS:
        kernel = getattr(cpu, name)
        params = inspect.signature(kernel.py_func).parameters
        assert list(params) == list(inspect.signature(getattr(ops, name)).parameters), name
    for name in MEMORY:
        assert callable(getattr(cpu, name))


# ---- one op at a time -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("image_dtype", [np.uint8, "float"])
def test_gather_batch(dtype, image_dtype):
    rng = np.random.default_rng(0)
    N, C, B = 50, 13, 7
    if image_dtype == np.uint8:
        images, scale = rng.integers(0, 256, (N, C)).astype(np.uint8), 1 / 255
    else:
        images, scale = rng.standard_normal((N, C)).astype(dtype), 1.0
    labels, indices = rng.integers(0, 10, N).astype(np.int64), rng.permutation(N)[:B]
    helper_test_op("gather_batch", nans((B, C), dtype), np.full(B, -1, np.int64), images, labels, indices, scale,
                   tol="exact")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["linear_forward", "linear_relu_forward"])
def test_linear_forward(name, kind, shape, dtype):
    rng = np.random.default_rng(1)
    B, C, OC = shape
    weight_kind = "kinks" if kind == "kinks" else "random"
    helper_test_op(name, nans((B, OC), dtype), values(rng, (B, C), dtype, kind),
                   values(rng, (C, OC), dtype, weight_kind), values(rng, OC, dtype, weight_kind),
                   tol=exact_if_kinks(kind))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["random", "kinks"])
def test_relu(kind, dtype):
    rng = np.random.default_rng(2)
    x, dout = values(rng, (7, 13), dtype, kind), values(rng, (7, 13), dtype)
    helper_test_op("relu_forward", nans((7, 13), dtype), x, tol="exact")
    helper_test_op("relu_backward", nans((7, 13), dtype), dout, x, tol="exact")
    in_place = x.copy()
    cpu.relu_forward(in_place, in_place)  # out may be inp
    assert_same(in_place, np.maximum(x, 0), 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (1, 10), (7, 3), (64, 10), (256, 10)])
def test_softmax_and_cross_entropy(shape, dtype):
    rng = np.random.default_rng(3)
    logits = values(rng, shape, dtype) * 5
    logits[0, 0] = 1000  # the max subtraction keeps exp() finite
    targets = rng.integers(0, shape[1], shape[0]).astype(np.int64)
    helper_test_op("softmax", nans(shape, dtype), logits, tol="softmax")
    helper_test_op("softmax_cross_entropy", nans(shape, dtype), logits, targets, tol="softmax")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_linear_backward(kind, shape, dtype):
    rng = np.random.default_rng(4)
    B, C, OC = shape
    dout_kind = "kinks" if kind == "kinks" else "random"
    helper_test_op("linear_backward", nans((C, OC), dtype), nans(OC, dtype), values(rng, (B, OC), dtype, dout_kind),
                   values(rng, (B, C), dtype, kind), tol=exact_if_kinks(kind))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 13, 5), (64, 128, 10), (32, 512, 256)])
@pytest.mark.parametrize("kind", ["random", "kinks"])
def test_linear_backward_input(kind, shape, dtype):
    rng = np.random.default_rng(5)
    B, C, OC = shape
    helper_test_op("linear_backward_input", nans((B, C), dtype), values(rng, (B, OC), dtype, kind),
                   values(rng, (C, OC), dtype, kind), values(rng, (B, C), dtype, "kinks"), tol=exact_if_kinks(kind))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(10,), (784, 128), (128, 10)])
@pytest.mark.parametrize("momentum, weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.9, 5e-4)])
def test_sgd_update(momentum, weight_decay, shape, dtype):
    rng = np.random.default_rng(6)
    param, grad, velocity = (values(rng, shape, dtype) for _ in range(3))
    helper_test_op("sgd_update", param, grad, velocity, 0.05, momentum, weight_decay, tol="softmax")


@pytest.mark.parametrize("dtype", DTYPES)
def test_argmax_ties_take_the_first_and_nan_wins(dtype):
    logits = np.array([[1, 3, 3, 0], [2, 2, 2, 2], [0, np.nan, 5, np.nan], [-np.inf, -np.inf, -1, -1]], dtype)
    helper_test_op("argmax", np.full(4, -1, np.int64), logits, tol="exact")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sizes", [(784, 10), (784, 128, 10), (784, 64, 32, 10)])
def test_forward(sizes, dtype):
    rng = np.random.default_rng(7)
    weights, biases = init_params(sizes, dtype, rng)
    acts = (values(rng, (9, sizes[0]), dtype, "sparse"),) + tuple(nans((9, c), dtype) for c in sizes[1:])
    helper_test_op("forward", acts, weights, biases)


def test_partial_batch_views_leave_the_other_rows_alone():
    """The last batch of an epoch is a view buf[:n] of the model's buffers: rows n: stay untouched."""
    rng = np.random.default_rng(12)
    B, n, C, OC = 64, 32, 784, 128
    out, dinp, dlogits = (np.full(shape, 7.0, np.float32) for shape in [(B, OC), (B, C), (B, 10)])
    inp, logits = values(rng, (B, C), np.float32, "sparse"), values(rng, (B, 10), np.float32)
    weight, bias = values(rng, (C, OC), np.float32), values(rng, OC, np.float32)
    cpu.linear_relu_forward(out[:n], inp[:n], weight, bias)
    cpu.linear_backward_input(dinp[:n], out[:n], weight, inp[:n])
    cpu.softmax_cross_entropy(dlogits[:n], logits[:n], np.zeros(n, np.int64))
    for buffer in (out, dinp, dlogits):
        assert np.all(buffer[n:] == 7.0) and not np.any(buffer[:n] == 7.0)


# ---- the numbered versions ------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("number", sorted(linear_forward.KERNELS))
def test_linear_forward_versions(number, dtype):
    rng = np.random.default_rng(8)
    B, C, OC = 13, 784, 40
    helper_test_op("linear_relu_forward", nans((B, OC), dtype), values(rng, (B, C), dtype, "sparse"),
                   values(rng, (C, OC), dtype), values(rng, OC, dtype), kernel=linear_forward.KERNELS[number])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("number", sorted(linear_backward.KERNELS))
def test_linear_backward_versions(number, dtype):
    rng = np.random.default_rng(9)
    B, C, OC = 13, 784, 40
    helper_test_op("linear_backward", nans((C, OC), dtype), nans(OC, dtype), values(rng, (B, OC), dtype),
                   values(rng, (B, C), dtype, "sparse"), kernel=linear_backward.KERNELS[number])


def test_versions_tables_end_with_the_backend_kernel():
    assert linear_forward.KERNELS[max(linear_forward.KERNELS)] is cpu.linear_relu_forward
    assert linear_backward.KERNELS[max(linear_backward.KERNELS)] is cpu.linear_backward


# ---- properties -----------------------------------------------------------------------------------
@st.composite
def matmul_case(draw):
    B, C, OC = (draw(st.integers(1, 40)) for _ in range(3))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**32 - 1))
    zeros = draw(st.sampled_from([0.0, 0.5, 0.9, 1.0]))  # share of exact zeros in the input
    rng = np.random.default_rng(seed)
    inp = np.where(rng.random((B, C)) < zeros, 0, rng.standard_normal((B, C))).astype(dtype)
    return rng, inp, values(rng, (C, OC), dtype), values(rng, OC, dtype), values(rng, (B, OC), dtype)


@settings(max_examples=40, deadline=None)
@given(matmul_case())
def test_matmuls_on_drawn_shapes(case):
    rng, inp, weight, bias, dout = case
    (B, C), OC, dtype = inp.shape, weight.shape[1], inp.dtype
    helper_test_op("linear_forward", nans((B, OC), dtype), inp, weight, bias)
    helper_test_op("linear_relu_forward", nans((B, OC), dtype), inp, weight, bias)
    helper_test_op("linear_backward", nans((C, OC), dtype), nans(OC, dtype), dout, inp)
    helper_test_op("linear_backward_input", nans((B, C), dtype), dout, weight, np.maximum(inp, 0))


@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 300), K=st.integers(1, 12), dtype=st.sampled_from(DTYPES), spread=st.floats(0.01, 50),
       seed=st.integers(0, 2**32 - 1))
def test_softmax_cross_entropy_on_drawn_shapes(B, K, dtype, spread, seed):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((B, K)) * spread).astype(dtype)
    targets = rng.integers(0, K, B).astype(np.int64)
    helper_test_op("softmax_cross_entropy", nans((B, K), dtype), logits, targets, tol="softmax")


# ---- whole training steps -------------------------------------------------------------------------
def init_params(sizes, dtype, rng):
    """He-normal weights and small random biases, as tuples (the model's layout)."""
    weights = tuple((rng.standard_normal((a, b)) * math.sqrt(2 / a)).astype(dtype) for a, b in zip(sizes, sizes[1:]))
    biases = tuple((rng.standard_normal(b) * 0.01).astype(dtype) for b in sizes[1:])
    return weights, biases


class Trainer:
    """The model's buffers for one backend, and its per-step call with views for a partial batch."""

    def __init__(self, backend, sizes, dtype, B):
        weights, biases = init_params(sizes, dtype, np.random.default_rng(10))
        self.backend = backend
        self.params = [weights, biases, clone(weights), clone(biases),
                       tuple(np.zeros_like(w) for w in weights), tuple(np.zeros_like(b) for b in biases)]
        self.acts = tuple(np.empty((B, c), dtype) for c in sizes)
        self.dacts = tuple(np.empty((B, c), dtype) for c in sizes[:-1])  # dacts[0]: scratch
        self.dlogits, self.targets = np.empty((B, sizes[-1]), dtype), np.empty(B, np.int64)

    def step(self, images, labels, indices, lr=0.05, momentum=0.9, weight_decay=1e-4):
        b = len(indices)
        return self.backend.train_step(
            *self.params, tuple(a[:b] for a in self.acts), (self.dacts[0],) + tuple(d[:b] for d in self.dacts[1:]),
            self.dlogits[:b], self.targets[:b], images, labels, indices, 1 / 255, lr, momentum, weight_decay)


@pytest.fixture(scope="module")
def batches(mnist):
    """Six steps of real MNIST: four full batches of 64, then partial batches of 32 and 7 (views, as in fit)."""
    order = np.random.default_rng(11).permutation(len(mnist.train_labels))
    images, labels = mnist.train_images, mnist.train_labels.astype(np.int64)
    return images, labels, [order[i * 64:(i + 1) * 64] for i in range(4)] + [order[256:288], order[288:295]]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sizes", [(784, 10), (784, 128, 10), (784, 64, 32, 10), (784, 32, 20)])
def test_train_step_matches_the_reference(batches, sizes, dtype):
    images, labels, steps = batches
    reference, numba_ = Trainer(ops, sizes, dtype, 64), Trainer(cpu, sizes, dtype, 64)
    tol = TOLERANCES[dtype]
    for indices in steps:
        want_loss, want_correct = reference.step(images, labels, indices)
        got_loss, got_correct = numba_.step(images, labels, indices)
        assert isinstance(got_loss, float) and isinstance(got_correct, int)
        assert_same(got_loss, want_loss, tol["softmax"])
        assert got_correct == want_correct
    for got, want in zip(flat_arrays(numba_.params), flat_arrays(reference.params)):
        assert_same(got, want, tol["matmul"])


def train_weights(batches, threads):
    images, labels, steps = batches
    trainer = Trainer(cpu, (784, 128, 10), np.float32, 64)
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        for indices in steps:
            trainer.step(images, labels, indices)
    finally:
        numba.set_num_threads(previous)
    return list(flat_arrays(trainer.params))


def test_train_step_is_bitwise_deterministic(batches):
    all_threads = numba.config.NUMBA_NUM_THREADS
    first, again = train_weights(batches, all_threads), train_weights(batches, all_threads)
    one_thread = train_weights(batches, 1)
    for a, b, c in zip(first, again, one_thread):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_nan_in_the_input_makes_the_loss_nan(batches):
    images, labels, steps = batches
    float_images = images[:1000].astype(np.float32) / 255
    float_images[steps[0][0] % 1000, 300] = np.nan
    trainer = Trainer(cpu, (784, 128, 10), np.float32, 64)
    loss, _ = trainer.step(float_images, labels[:1000], steps[0] % 1000)
    assert math.isnan(loss)
