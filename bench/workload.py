"""What the benchmarks time: real MNIST batches, the state MLP.fit allocates, epochs as MLP.fit runs them.

Imported by bench/bench_*.py; run them with `uv run pytest --benchmark-only` (see bench/conftest.py).
B = batch size, C = 784 pixels, H = hidden units, K = 10 classes.
"""
from typing import NamedTuple

import numpy as np
import pytest

from fastnn import ops as reference
from fastnn.bundles import Data, he_init
from fastnn.model import MLP
from fastnn.settings import PRESETS

C, K = 784, 10
SCALE = 1 / 255  # uint8 grey levels -> [0, 1], as MLP.fit hands them to the backend


def preset_settings(name, **changes):
    """The training loop's settings (loop.Settings) of a fastnn.train preset, with `changes` (MLP
    parameters) applied: what MLP.fit would run, its optimizer, dropout and max-norm included."""
    model = MLP(**{**PRESETS[name], **changes})
    model.check_params()
    return model.training_settings()


def backend_op(ops, name):
    """ops.<name>, or skip the benchmark while the backend does not define it (yet)."""
    fn = getattr(ops, name, None)
    if fn is None:
        pytest.skip(f"{ops.__name__} has no {name}")
    return fn


def describe(benchmark, op, shape, flops, **dims):
    """Group the benchmark as "<op> <shape>" (so backends sit side by side) and record its FLOPs."""
    benchmark.group = f"{op} {shape}"
    benchmark.extra_info.update(op=op, shape=shape, flops=flops, **dims)


class LayerInputs(NamedTuple):
    """One realistic forward and backward pass of 784-H-10 on a real batch, by the NumPy reference."""
    indices: np.ndarray  # (B,) rows of the training set
    x: np.ndarray  # (B, C) pixels scaled to [0, 1]: ~81% exact zeros, as sparse kernels will see them
    targets: np.ndarray  # (B,) int64
    w1: np.ndarray  # (C, H)
    b1: np.ndarray  # (H,)
    hidden: np.ndarray  # (B, H) ReLU output
    w2: np.ndarray  # (H, K)
    b2: np.ndarray  # (K,)
    logits: np.ndarray  # (B, K)
    dlogits: np.ndarray  # (B, K)
    dhidden: np.ndarray  # (B, H) gradient into the hidden pre-activation: ReLU-masked


def layer_inputs(data, B, H, seed=0):
    """The inputs and outputs of every op for one batch of B real images through 784-H-10."""
    indices = np.random.default_rng(seed).permutation(len(data.images))[:B]
    x, targets = np.empty((B, C), np.float32), np.empty(B, np.int64)
    reference.gather_batch(x, targets, data, indices)
    (w1, w2), (b1, b2) = he_init((C, H, K), np.float32, seed)
    hidden, logits = np.empty((B, H), np.float32), np.empty((B, K), np.float32)
    reference.linear_relu_forward(hidden, x, w1, b1)
    reference.linear_forward(logits, hidden, w2, b2)
    dlogits, dhidden = np.empty((B, K), np.float32), np.empty((B, H), np.float32)
    reference.softmax_cross_entropy(dlogits, logits, targets)
    reference.linear_backward_input(dhidden, dlogits, w2, hidden)
    return LayerInputs(indices, x, targets, w1, b1, hidden, w2, b2, logits, dlogits, dhidden)


def dense_flops(sizes, rows):
    """Dense FLOPs (2 per multiply-add) of forward and backward for `rows` samples through `sizes`.

    Per layer: the forward matmul and the weight gradient; every layer but the first also passes a
    gradient to its input (the pixels need none). ~24.5 GFLOP for an epoch of 784-128-10.
    """
    macs = [c * oc for c, oc in zip(sizes[:-1], sizes[1:])]
    return 2 * rows * (2 * sum(macs) + sum(macs[1:]))


def mnist_data(images, labels):
    """The MNIST training set as MLP.fit hands it to a backend: uint8 images, int64 labels, scale 1/255."""
    return Data(images, labels.astype(np.int64), SCALE)
