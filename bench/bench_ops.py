"""Every op of the MLP per backend on MNIST-sized batches, plus this machine's GEMM ceiling.

    uv run pytest --benchmark-only bench/bench_ops.py
    uv run pytest --benchmark-only bench/bench_ops.py -k "linear_relu_forward and 64"

Groups are "<op> <shape>", so numpy and numba of the same op and shape sit side by side. FLOPs in
extra_info are dense counts (2 * B * C * OC for a matmul), whatever a sparse kernel skips.
B = batch size, C = 784 pixels, H = hidden units, K = 10 classes. The hidden-to-hidden shapes are
the default preset's second layer (512 -> 256, B=128) and a large network's (1024 -> 1024, B=256),
on a ReLU layer's output (about half exact zeros). The single ops pay for transposes that a training
step keeps (kernels/dev/dense.py times the step's own kernels against BLAS).
"""
import functools

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from bench.workload import C, K, backend_op, describe, layer_inputs, mnist_data, preset_settings

BATCHES = (64, 128, 256)
HIDDEN = (128, 512)
HIDDEN_TO_HIDDEN = ((128, 512, 256), (256, 1024, 1024))  # (B, C, OC)
SOFTMAX_FLOPS = 5  # per logit: max, subtract, exp, sum, divide
SGD_FLOPS = 6  # per parameter: decay (2), momentum (2), step (2)
ADAM_FLOPS = 13  # per parameter: decay (2), two moments (3 + 4), sqrt, scale and eps (3), divide and step (3)
GEMM_N = 2048  # the ceiling's square float32 matmul: big enough for OpenBLAS's best


@pytest.fixture(scope="session")
def inputs(mnist):
    """inputs(B, H) -> LayerInputs of one real batch, built once per shape."""
    data = mnist_data(*mnist)
    return functools.cache(lambda B, H: layer_inputs(data, B, H))


def time_op(benchmark, ops, fn, outputs, inputs, *scalars):
    """Move inputs to the backend, warm up (Numba compiles on the first call) outside the timer, time."""
    args = (*outputs, *(ops.to_device(a) for a in inputs), *scalars)
    fn(*args)
    benchmark(fn, *args)


def layer_case(op, data, B, H):
    """(output shapes, inputs, dense FLOPs) of one layer op of 784-H-10 on the batch `data`."""
    return {
        # the first layer: hidden (B, H) = relu(x (B, C) @ w1 (C, H) + b1), x a real (sparse) batch
        "linear_relu_forward": ([(B, H)], [data.x, data.w1, data.b1], 2 * B * C * H),
        # the second layer: logits (B, K) = hidden (B, H) @ w2 (H, K) + b2
        "linear_forward": ([(B, K)], [data.hidden, data.w2, data.b2], 2 * B * H * K),
        # the first layer's gradients: dw1 (C, H) = x.T @ dhidden (B, H), db1 (H,) = sum over B
        "linear_backward": ([(C, H), (H,)], [data.dhidden, data.x], 2 * B * C * H + B * H),
        # the gradient into the hidden layer: dhidden (B, H) = (dlogits (B, K) @ w2.T) * (hidden > 0)
        "linear_backward_input": ([(B, H)], [data.dlogits, data.w2, data.hidden], 2 * B * K * H),
    }[op]


@pytest.mark.parametrize("H", HIDDEN)
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("op", ["linear_relu_forward", "linear_forward", "linear_backward", "linear_backward_input"])
def test_layer_op(benchmark, ops, inputs, op, B, H):
    """One op of a 784-H-10 layer on a real batch (see layer_case)."""
    fn = backend_op(ops, op)
    shapes, layer_inputs_, flops = layer_case(op, inputs(B, H), B, H)
    describe(benchmark, op, f"B={B} H={H}", flops, B=B, H=H)
    time_op(benchmark, ops, fn, [ops.empty(shape, np.float32) for shape in shapes], layer_inputs_)


@pytest.mark.parametrize("shape", HIDDEN_TO_HIDDEN, ids=lambda shape: "B={} {}->{}".format(*shape))
@pytest.mark.parametrize("op", ["linear_relu_forward", "linear_backward", "linear_backward_input"])
def test_hidden_layer_op(benchmark, ops, op, shape):
    """One op of a hidden-to-hidden layer: forward with ReLU, weight gradient, input gradient through the
    previous ReLU."""
    B, C_in, OC = shape
    fn, rng = backend_op(ops, op), np.random.default_rng(0)
    inp = np.maximum(rng.standard_normal((B, C_in)), 0).astype(np.float32)  # a ReLU's output
    weight = (rng.standard_normal((C_in, OC)) * np.sqrt(2 / C_in)).astype(np.float32)
    dout = (rng.standard_normal((B, OC)) * (rng.random((B, OC)) < 0.5)).astype(np.float32)  # ReLU-masked
    outputs, inputs_ = {
        "linear_relu_forward": ([(B, OC)], [inp, weight, np.zeros(OC, np.float32)]),
        "linear_backward": ([(C_in, OC), (OC,)], [dout, inp]),
        "linear_backward_input": ([(B, C_in)], [dout, weight, inp]),
    }[op]
    describe(benchmark, op, f"B={B} {C_in}->{OC}", 2 * B * C_in * OC, B=B, H=OC)
    time_op(benchmark, ops, fn, [ops.empty(s, np.float32) for s in outputs], inputs_)


@pytest.mark.parametrize("B", BATCHES)
def test_softmax_cross_entropy(benchmark, ops, inputs, B):
    """Loss and dlogits (B, K) of the logits a real batch produces."""
    fn, data = backend_op(ops, "softmax_cross_entropy"), inputs(B, HIDDEN[0])
    describe(benchmark, "softmax_cross_entropy", f"B={B}", SOFTMAX_FLOPS * B * K, B=B)
    time_op(benchmark, ops, fn, [ops.empty((B, K), np.float32)], [data.logits, data.targets])


# The update of w1 (C, H) in place, by each optimizer: the default preset's SGD (momentum and weight
# decay), and Adam with L2 weight decay at step 10 (bias corrections live). The gradient is constant:
# SGD's param settles where decay balances it, Adam's steps stay near lr, no overflow over many rounds.
UPDATES = {"sgd": (preset_settings("default").hyper, 0.1, SGD_FLOPS),
           "adam": (preset_settings("default", optimizer="adam").hyper, 1e-3, ADAM_FLOPS)}


@pytest.mark.parametrize("optimizer", UPDATES)
@pytest.mark.parametrize("H", HIDDEN)
def test_update(benchmark, ops, inputs, H, optimizer):
    """One step of `optimizer` on w1 (C, H), in place."""
    hyper, lr, flops = UPDATES[optimizer]
    fn, data = backend_op(ops, "update"), inputs(BATCHES[0], H)
    describe(benchmark, f"update ({optimizer})", f"W1 H={H}", flops * C * H, H=H)
    param, moment1, moment2 = (ops.to_device(a) for a in (data.w1.copy(), np.zeros_like(data.w1),
                                                        np.zeros_like(data.w1)))
    grad = np.full_like(data.w1, 1e-3)
    time_op(benchmark, ops, fn, [param], [grad, moment1, moment2], lr, 10, hyper)


@pytest.mark.parametrize("H", HIDDEN)
def test_dropout_forward(benchmark, ops, inputs, H):
    """Inverted dropout at rate 0.5 on a hidden layer's output (B, H): the masks drawn, the kept scaled."""
    fn, B = backend_op(ops, "dropout_forward"), BATCHES[1]
    describe(benchmark, "dropout_forward", f"B={B} H={H}", B * H, B=B, H=H)
    time_op(benchmark, ops, fn, [ops.empty((B, H), np.float32)], [np.ones((B, H), np.float32)], 42, 7, 1, 0.5)


@pytest.mark.parametrize("B", BATCHES)
def test_gather_batch(benchmark, ops, mnist, inputs, B):
    """x (B, C) float32 = images[indices] (uint8) * 1/255, and the batch's targets (B,)."""
    fn, data = backend_op(ops, "gather_batch"), inputs(B, HIDDEN[0])
    describe(benchmark, "gather_batch", f"B={B}", B * C, B=B)
    outputs = [ops.empty((B, C), np.float32), ops.empty(B, np.int64)]
    args = (*outputs, ops.prepare_data(*mnist_data(*mnist)), ops.to_device(data.indices))
    fn(*args)
    benchmark(fn, *args)


@pytest.mark.parametrize("threads", ["all", 1])
def test_gemm_ceiling(benchmark, threads):
    """This machine's float32 GEMM ceiling: NumPy/OpenBLAS on 2048^3, with all of BLAS's threads and one."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((GEMM_N, GEMM_N), dtype=np.float32) for _ in range(2))
    out = np.empty_like(a)
    benchmark.extra_info["backend"] = "numpy"
    describe(benchmark, "gemm", f"{GEMM_N}^3", 2 * GEMM_N**3, threads=threads)
    with threadpool_limits(limits=None if threads == "all" else threads, user_api="blas"):
        benchmark.pedantic(np.matmul, args=(a, b), kwargs={"out": out}, rounds=5, warmup_rounds=1)
