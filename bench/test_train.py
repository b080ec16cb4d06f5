"""Whole training per backend: one train_step, and one epoch of 938 (or 235) steps as MLP.fit runs it.

    uv run pytest --benchmark-only bench/test_train.py
    uv run pytest --benchmark-only bench/test_train.py -k "epoch and 128"

An epoch is a shuffle and a train_step per batch, the partial last batch included, without evaluation.
Its dense FLOPs (forward and backward, 2 per multiply-add) are ~24.5 GFLOP for 784-128-10.
"""
import numpy as np
import pytest

from bench.workload import DEFAULT_HYPER, SCALE, SEED_HYPER, backend_op, dense_flops, describe, run_epoch, \
    train_buffers

CONFIGS = {  # name -> layer sizes, batch size, (lr, momentum, weight_decay)
    "784-128-10 B=64": ((784, 128, 10), 64, SEED_HYPER),  # the seed program
    "784-512-10 B=256": ((784, 512, 10), 256, DEFAULT_HYPER),  # wider layer, bigger batches
}
EPOCH_ROUNDS = 5  # a numpy epoch of the seed config takes ~0.5-0.9 s


@pytest.mark.parametrize("config", CONFIGS)
def test_train_step(benchmark, ops, mnist, config):
    """One mini-batch: gather, forward, loss, backward, update (the same real batch every round)."""
    sizes, B, hyper = CONFIGS[config]
    fn = backend_op(ops, "train_step")
    images, labels = (ops.to_device(a) for a in mnist)
    indices = ops.to_device(np.random.default_rng(0).permutation(len(images))[:B])
    args = (*train_buffers(ops, sizes, B), images, labels, indices, SCALE, *hyper)
    describe(benchmark, "train_step", config, dense_flops(sizes, B), B=B, H=sizes[1])
    fn(*args)  # Numba compiles on the first call: outside the timer
    benchmark(fn, *args)


@pytest.mark.parametrize("config", CONFIGS)
def test_epoch(benchmark, ops, mnist, config):
    """One epoch over the 60000 training images; the warm-up epoch compiles and is not timed."""
    sizes, B, hyper = CONFIGS[config]
    backend_op(ops, "train_step")
    images, labels = (ops.to_device(a) for a in mnist)
    buffers, rng = train_buffers(ops, sizes, B), np.random.default_rng(0)
    describe(benchmark, "epoch", config, dense_flops(sizes, len(images)), B=B, H=sizes[1])
    benchmark.pedantic(run_epoch, args=(ops, buffers, images, labels, rng, hyper),
                       rounds=EPOCH_ROUNDS, iterations=1, warmup_rounds=1)
