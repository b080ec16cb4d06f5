"""What Adam, dropout and max-norm add to a training step: one train_steps call (STEPS_PER_CALL steps)
per regime of bench_train.REGIMES, the regimes interleaved round by round so that a shared machine's
drift falls on all of them alike; medians and their ratio to plain SGD.

    uv run python -m bench.regimes                       # numba, every config of bench_train
    uv run python -m bench.regimes --backend numpy --rounds 5

pytest-benchmark (`pytest --benchmark-only bench/bench_train.py`) times the same calls one regime
after another; on a noisy machine the interleaved medians here are the fairer ratios.
"""
import argparse
import time

import numpy as np

from bench.bench_train import CONFIGS, REGIMES
from bench.workload import mnist_data
from fastnn.backends import BACKENDS, get_backend
from fastnn.bundles import Steps, he_init, training_state
from fastnn.cli import friendly_errors
from fastnn.data import load_dataset
from fastnn.loop import STEPS_PER_CALL, epoch_plan


def medians(ops, data, config, rounds):
    """{regime: median seconds of one train_steps call} for one config, the regimes interleaved."""
    sizes, settings = CONFIGS[config]
    B = settings.batch_size
    order, lrs = epoch_plan(settings, np.random.default_rng(0), np.arange(len(data.labels)), 0)
    steps = Steps(ops.to_device(order[:STEPS_PER_CALL * B].reshape(STEPS_PER_CALL, B)),
                  ops.to_device(np.asarray(lrs[:STEPS_PER_CALL])), ops.to_device(np.arange(1, STEPS_PER_CALL + 1)))
    states = {regime: training_state(ops, he_init(sizes, np.float32, seed=42), B) for regime in REGIMES}
    hypers = {regime: settings.hyper._replace(**changes) for regime, changes in REGIMES.items()}
    times = {regime: [] for regime in REGIMES}
    for round_ in range(rounds + 1):  # round 0 compiles and warms up: not timed
        for regime in REGIMES:
            start = time.perf_counter()
            ops.train_steps(*states[regime], data, steps, hypers[regime])
            if round_:
                times[regime].append(time.perf_counter() - start)
    return {regime: float(np.median(t)) for regime, t in times.items()}


@friendly_errors
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.regimes", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="numba", choices=sorted(BACKENDS))
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    ops = get_backend(args.backend)
    mnist = load_dataset("mnist")
    data = ops.prepare_data(*mnist_data(mnist.train_images, mnist.train_labels))
    print(f"{args.backend}: median ms per call of {STEPS_PER_CALL} steps (ratio to sgd), {args.rounds} rounds")
    for config in CONFIGS:
        times = medians(ops, data, config, args.rounds)
        print(f"{config:24s} " + "  ".join(f"{regime} {t * 1e3:.1f} ({t / times['sgd']:.2f}x)"
                                           for regime, t in times.items()), flush=True)


if __name__ == "__main__":
    main()
