"""Whole training per backend: a train_steps call as the training loop makes it, and whole epochs.

    uv run pytest --benchmark-only bench/bench_train.py
    uv run pytest --benchmark-only bench/bench_train.py -k "epoch and 128"

An epoch is fastnn.loop.Trainer.run_epoch, the very loop MLP.fit runs: a shuffle, then every batch
(the partial last one included) in calls of STEPS_PER_CALL steps, without evaluation. Its dense FLOPs
(forward and backward, 2 per multiply-add) are ~24.5 GFLOP for 784-128-10.
"""
import numpy as np
import pytest

from bench.workload import backend_op, dense_flops, describe, mnist_data, preset_settings
from fastnn.bundles import Steps, he_init, training_state
from fastnn.loop import STEPS_PER_CALL, Trainer, epoch_plan
from fastnn.settings import ADAM

CONFIGS = {  # name -> layer sizes, training settings: the shapes of the side-by-side comparison
    "784-128-10 B=64": ((784, 128, 10), preset_settings("seed")),  # the seed program
    "784-512-10 B=256": ((784, 512, 10), preset_settings("seed", batch_size=256, lr=0.1)),  # a wide layer
    "784-512-256-10 B=128": ((784, 512, 256, 10), preset_settings("default")),  # the default preset
    "784-1024-1024-10 B=256": ((784, 1024, 1024, 10), preset_settings("default", batch_size=256, weight_decay=0.0)),
}
# What a step runs besides the plain update: each is timed beside "sgd" (momentum and weight decay, as
# the presets) on the same batches; the goal is at most 15% more per step for Adam and for dropout.
REGIMES = {"sgd": {}, "adam": dict(optimizer=ADAM), "dropout 0.5": dict(dropout=0.5, dropout_seed=1),
           "max-norm 3": dict(max_norm=3.0)}
EPOCH_ROUNDS = 3  # epochs of the largest config take ~5 s


@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("config", CONFIGS)
def test_train_steps(benchmark, ops, mnist, config, regime):
    """One train_steps call of STEPS_PER_CALL steps on fresh real batches (the same ones every round)."""
    sizes, settings = CONFIGS[config]
    hyper = settings.hyper._replace(**REGIMES[regime])
    fn, B = backend_op(ops, "train_steps"), settings.batch_size
    state = training_state(ops, he_init(sizes, np.float32, seed=42), B)
    data = ops.prepare_data(*mnist_data(*mnist))
    order, lrs = epoch_plan(settings, np.random.default_rng(0), np.arange(len(mnist[0])), 0)
    steps = Steps(ops.to_device(order[:STEPS_PER_CALL * B].reshape(STEPS_PER_CALL, B)),
                  ops.to_device(np.asarray(lrs[:STEPS_PER_CALL])), ops.to_device(np.arange(1, STEPS_PER_CALL + 1)))
    describe(benchmark, "train_steps", f"{config} x{STEPS_PER_CALL} {regime}", STEPS_PER_CALL * dense_flops(sizes, B),
             B=B, H=sizes[1], regime=regime)
    fn(*state, data, steps, hyper)  # Numba compiles on the first call: outside the timer
    benchmark(fn, *state, data, steps, hyper)


@pytest.mark.parametrize("config", CONFIGS)
def test_epoch(benchmark, ops, mnist, config):
    """One epoch over the 60000 training images; the warm-up epoch compiles and is not timed."""
    sizes, settings = CONFIGS[config]
    backend_op(ops, "train_steps")
    trainer = Trainer(ops, he_init(sizes, np.float32, seed=42), settings.batch_size, settings.hyper)
    data, rng = ops.prepare_data(*mnist_data(*mnist)), np.random.default_rng(0)
    describe(benchmark, "epoch", config, dense_flops(sizes, len(mnist[0])), B=settings.batch_size, H=sizes[1])
    benchmark.pedantic(lambda: trainer.run_epoch(data, *epoch_plan(settings, rng, np.arange(len(mnist[0])), 0)),
                       rounds=EPOCH_ROUNDS, iterations=1, warmup_rounds=1)
