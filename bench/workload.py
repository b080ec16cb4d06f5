"""What the benchmarks time: real MNIST batches, the buffers MLP.fit allocates, one training epoch.

Imported by bench/test_*.py; run them with `uv run pytest --benchmark-only` (see bench/conftest.py).
B = batch size, C = 784 pixels, H = hidden units, K = 10 classes.
"""
import math
from typing import NamedTuple

import numpy as np
import pytest

from fastnn import ops as reference

C, K = 784, 10
SCALE = 1 / 255  # uint8 grey levels -> [0, 1], as MLP.fit passes it to train_step
SEED_HYPER = (0.01, 0.0, 0.0)  # lr, momentum, weight_decay of the seed preset (plain SGD)
DEFAULT_HYPER = (0.01, 0.9, 5e-4)  # momentum and weight decay as the default preset uses them


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


def he_normal(rng, fan_in, fan_out):
    """(fan_in, fan_out) float32 weights with std sqrt(2 / fan_in), as MLP initialises them."""
    return (rng.standard_normal((fan_in, fan_out)) * math.sqrt(2 / fan_in)).astype(np.float32)


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


def layer_inputs(images, labels, B, H, seed=0):
    """The inputs and outputs of every op for one batch of B real images through 784-H-10."""
    rng = np.random.default_rng(seed)
    indices = rng.permutation(len(images))[:B]
    x, targets = np.empty((B, C), np.float32), np.empty(B, np.int64)
    reference.gather_batch(x, targets, images, labels, indices, SCALE)
    w1, b1 = he_normal(rng, C, H), np.zeros(H, np.float32)
    w2, b2 = he_normal(rng, H, K), np.zeros(K, np.float32)
    hidden, logits = np.empty((B, H), np.float32), np.empty((B, K), np.float32)
    reference.linear_relu_forward(hidden, x, w1, b1)
    reference.linear_forward(logits, hidden, w2, b2)
    dlogits, dhidden = np.empty((B, K), np.float32), np.empty((B, H), np.float32)
    reference.softmax_cross_entropy(dlogits, logits, targets)
    reference.linear_backward_input(dhidden, dlogits, w2, hidden)
    return LayerInputs(indices, x, targets, w1, b1, hidden, w2, b2, logits, dlogits, dhidden)


class TrainBuffers(NamedTuple):
    """train_step's first ten arguments, in its order: parameters, gradients, velocities, activations."""
    weights: tuple
    biases: tuple
    dweights: tuple
    dbiases: tuple
    velocities_w: tuple
    velocities_b: tuple
    acts: tuple
    dacts: tuple
    dlogits: object
    targets: object

    def rows(self, b):
        """Views of the first b rows of every per-batch buffer (an epoch's partial last batch)."""
        return self._replace(acts=tuple(a[:b] for a in self.acts),
                             dacts=self.dacts[:1] + tuple(d[:b] for d in self.dacts[1:]),
                             dlogits=self.dlogits[:b], targets=self.targets[:b])


def train_buffers(ops, sizes, B, seed=42):
    """Buffers for layer sizes (C_0, ..., K) and batch B, allocated through `ops` as MLP.fit does."""
    rng = np.random.default_rng(seed)
    pairs = list(zip(sizes[:-1], sizes[1:]))
    weights = tuple(ops.to_device(he_normal(rng, c, oc)) for c, oc in pairs)
    biases = tuple(ops.to_device(np.zeros(oc, np.float32)) for _, oc in pairs)
    return TrainBuffers(
        weights, biases,
        dweights=tuple(ops.empty(w.shape, np.float32) for w in weights),
        dbiases=tuple(ops.empty(b.shape, np.float32) for b in biases),
        velocities_w=tuple(ops.to_device(np.zeros(w.shape, np.float32)) for w in weights),
        velocities_b=tuple(ops.to_device(np.zeros(b.shape, np.float32)) for b in biases),
        acts=tuple(ops.empty((B, c), np.float32) for c in sizes),
        dacts=tuple(ops.empty((B, c), np.float32) for c in sizes[:-1]),  # dacts[0]: scratch
        dlogits=ops.empty((B, sizes[-1]), np.float32),
        targets=ops.empty(B, np.int64))


def run_epoch(ops, buffers, images, labels, rng, hyper):
    """One epoch as MLP.fit runs it, without evaluation: a shuffle, then train_step per batch."""
    B, N = len(buffers.targets), len(images)
    order = ops.to_device(rng.permutation(N))
    for start in range(0, N, B):
        b = min(B, N - start)  # 60000 = 937 * 64 + 32: the last batch is partial
        view = buffers if b == B else buffers.rows(b)
        ops.train_step(*view, images, labels, order[start:start + b], SCALE, *hyper)


def dense_flops(sizes, rows):
    """Dense FLOPs (2 per multiply-add) of forward and backward for `rows` samples through `sizes`.

    Per layer: the forward matmul and the weight gradient; every layer but the first also passes a
    gradient to its input (the pixels need none). ~24.5 GFLOP for an epoch of 784-128-10.
    """
    macs = [c * oc for c, oc in zip(sizes[:-1], sizes[1:])]
    return 2 * rows * (2 * sum(macs) + sum(macs[1:]))
