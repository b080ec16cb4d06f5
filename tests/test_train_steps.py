"""Whole training steps of every fast backend against the reference: train_steps on real MNIST
batches (full, then smaller last batches through views), bitwise determinism across thread counts,
and the CUDA backend's two versions of the step.

    uv run pytest tests/test_train_steps.py -q
    uv run pytest tests/test_train_steps.py -q -m simulator   # the CUDA cases, in its simulator (minutes)
"""
import math
import os
import subprocess
import sys

import numba
import numpy as np
import pytest

from fastnn import ops as reference
from fastnn.backends import get_backend
from fastnn.bundles import Data, Hyper, Steps, first_rows, to_host, training_state
from fastnn.fileio import FastnnError
from fastnn.settings import ADAM, ADAMW
from tests.helpers import DTYPES, ON_SIMULATOR, TOLERANCES, arrays, assert_same, network, skip_if_slow

HYPER = Hyper(momentum=0.9, weight_decay=1e-4)
# every optimizer and regulariser a step can run: each fast backend must follow the reference in all
HYPERS = {"sgd": HYPER,
          "adam+dropout": Hyper(weight_decay=1e-4, optimizer=ADAM, dropout=0.3, dropout_seed=7, input_dropout=0.2),
          "adamw+max_norm": Hyper(weight_decay=1e-2, optimizer=ADAMW, max_norm=0.7),
          "sgd+dropout+max_norm": Hyper(momentum=0.9, dropout=0.5, dropout_seed=3, max_norm=0.5),
          "nesterov": Hyper(momentum=0.9, nesterov=True, weight_decay=1e-4)}
B = 16  # rows per full batch; the calls below also run batches of 9 and 3 rows


@pytest.fixture(scope="module")
def batches(mnist):
    """Real MNIST rows for three calls: two full batches, then a batch of 9 rows, then one of 3."""
    order = np.random.default_rng(11).permutation(len(mnist.train_labels))
    data = Data(mnist.train_images, mnist.train_labels.astype(np.int64), 1 / 255)
    return data, [order[:2 * B].reshape(2, B), order[2 * B:2 * B + 9].reshape(1, 9), order[64:67].reshape(1, 3)]


def for_network(batches, sizes):
    """The batches' data cut to a network's input and class counts: the first 200 images, their first
    C_0 pixels, labels modulo K (the calls' rows are taken modulo 200)."""
    data, calls = batches
    images = np.ascontiguousarray(data.images[:200, :sizes[0]])
    return Data(images, data.labels[:200] % sizes[-1], data.scale), [rows % 200 for rows in calls]


def train(ops, sizes, dtype, data, calls, train_steps=None, hyper=HYPER):
    """Run train_steps on a fresh network, call by call; returns ([losses], [n_correct], final TrainingState)."""
    state = training_state(ops, network(sizes, dtype), B)
    data = ops.prepare_data(data.images, data.labels, data.scale)
    losses, n_correct = [], []
    lr = 0.1 if hyper.optimizer not in (ADAM, ADAMW) else 1e-3
    for rows in calls:
        buffers = first_rows(state.buffers, rows.shape[1])
        lrs = np.linspace(lr, lr / 2, len(rows))
        numbers = np.arange(len(losses) + 1, len(losses) + 1 + len(rows))
        steps = Steps(ops.to_device(rows), ops.to_device(lrs), ops.to_device(numbers))
        call_losses, call_correct = (train_steps or ops.train_steps)(*state._replace(buffers=buffers), data, steps,
                                                                     hyper)
        losses += [float(x) for x in call_losses]
        n_correct += [int(x) for x in call_correct]
    return losses, n_correct, state


def assert_steps_match(ops, sizes, dtype, batches, train_steps=None, hyper=HYPER):
    want_losses, want_correct, want = train(reference, sizes, dtype, *batches, hyper=hyper)
    got_losses, got_correct, got = train(ops, sizes, dtype, *batches, train_steps=train_steps, hyper=hyper)
    tol = TOLERANCES[dtype]
    assert_same(got_losses, want_losses, tol["softmax"], "losses")
    assert got_correct == want_correct
    for name, got_layers, want_layers in (("params", got.params, want.params),
                                          ("moment1", got.optimizer.moment1, want.optimizer.moment1),
                                          ("moment2", got.optimizer.moment2, want.optimizer.moment2)):
        for g, w in zip(arrays(to_host(ops, got_layers)), arrays(want_layers)):
            assert_same(g, w, tol["matmul"], name)


@pytest.mark.parametrize("dtype", DTYPES)
# (784, 128, 10): a sparse first layer on CSR rows; (784, 530, 10): on listed tiles (kernels.cpu.LISTED_FROM_UNITS)
@pytest.mark.parametrize("sizes", [(784, 10), (784, 128, 10), (784, 530, 10), (784, 64, 32, 10), (784, 32, 20),
                                   (20, 16, 12, 10)])
def test_train_steps_match_the_reference(step_backend, batches, sizes, dtype):
    skip_if_slow(step_backend, B * sum(a * b for a, b in zip(sizes, sizes[1:])))
    assert_steps_match(step_backend, sizes, dtype, for_network(batches, sizes))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sizes", [(784, 10), (784, 128, 10), (784, 530, 10), (784, 64, 32, 10), (20, 16, 12, 10)])
@pytest.mark.parametrize("name", [name for name in HYPERS if name != "sgd"])
def test_every_optimizer_and_regulariser_steps_match_the_reference(step_backend, batches, name, sizes, dtype):
    skip_if_slow(step_backend, B * sum(a * b for a, b in zip(sizes, sizes[1:])))
    assert_steps_match(step_backend, sizes, dtype, for_network(batches, sizes), hyper=HYPERS[name])


def test_train_step_returns_python_numbers_like_the_reference(batches):
    """One step alone, as the reference defines it: (loss float, n_correct int)."""
    from kernels import cpu

    data, calls = batches
    results = []
    for ops in (reference, cpu):
        state = training_state(ops, network((784, 32, 10), np.float32), B)
        results.append(ops.train_step(*state, ops.prepare_data(*data), calls[0][0], 0.1, 1, HYPER))
    (want_loss, want_correct), (got_loss, got_correct) = results
    assert isinstance(got_loss, float) and isinstance(got_correct, int)
    assert got_loss == pytest.approx(want_loss, rel=1e-5) and got_correct == want_correct


def numba_weights(batches, threads, hyper, sizes):
    from kernels import cpu

    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        _, _, state = train(cpu, sizes, np.float32, *batches, hyper=hyper)
    finally:
        numba.set_num_threads(previous)
    return list(arrays(state.params)) + list(arrays(state.optimizer))


@pytest.mark.parametrize("sizes", [(784, 128, 64, 10), (784, 530, 10)])  # the first layer on CSR rows, listed tiles
@pytest.mark.parametrize("name", HYPERS)
def test_numba_train_steps_are_bitwise_deterministic_for_any_thread_count(batches, name, sizes):
    """The same bits at 1, 2 and 3 threads (as many as numba was started with), dropout included."""
    first = numba_weights(batches, numba.config.NUMBA_NUM_THREADS, HYPERS[name], sizes)
    for threads in (numba.config.NUMBA_NUM_THREADS, 1, 2, 3):
        if threads > numba.config.NUMBA_NUM_THREADS:
            continue  # numba cannot start more threads than it was launched with
        for a, b in zip(first, numba_weights(batches, threads, HYPERS[name], sizes)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS >= 3, reason="the test above runs 3 threads here")
def test_numba_bitwise_determinism_holds_at_three_threads_on_a_smaller_machine():
    """numba starts no more threads than NUMBA_NUM_THREADS (the core count): on a 2-core machine the
    test above runs again in a process allowed 3."""
    env = {**os.environ, "NUMBA_NUM_THREADS": "3"}
    result = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-n", "0", "-k",
                             "bitwise_deterministic_for_any_thread_count"], env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-3000:]
    assert f"{2 * len(HYPERS)} passed" in result.stdout


def test_numba_nan_in_the_input_makes_the_loss_nan(batches):
    from kernels import cpu

    data, calls = batches
    images = data.images[:1000].astype(np.float32) / 255
    images[calls[0][0, 0] % 1000, 300] = np.nan
    rows = (calls[0] % 1000)[:1]
    state = training_state(cpu, network((784, 32, 10), np.float32), B)
    losses, _ = cpu.train_steps(*state, cpu.prepare_data(images, data.labels[:1000], 1.0),
                                Steps(rows, np.array([0.1]), np.array([1])), HYPER)
    assert math.isnan(losses[0])


def test_numba_refuses_a_scratch_too_small(batches):
    from kernels import cpu

    data, calls = batches
    state = training_state(cpu, network((784, 32, 10), np.float32), B)
    small = state.buffers._replace(scratch=np.empty(1, np.float32))
    with pytest.raises(ValueError, match="scratch is smaller"):
        cpu.train_steps(*state._replace(buffers=small), cpu.prepare_data(*data), Steps(calls[0], np.full(2, 0.1), np.arange(1, 3)),
                        HYPER)


@pytest.mark.parametrize("sizes, dtype", [pytest.param(*case, marks=ON_SIMULATOR) for case in
                                          [((20, 16, 10), np.float32), ((13, 9, 7, 10), np.float64),
                                           ((784, 128, 10), np.float32)]])
def test_cuda_persistent_kernel_follows_the_reference(batches, sizes, dtype):
    """Version 2 of the CUDA train steps (one persistent kernel, one launch per call); version 1 is the
    backend's train_steps, tested above. On a GPU the persistent kernel's blocks meet at grid-wide
    barriers, which the simulator's single block never does."""
    try:
        kc = get_backend("cuda")
    except FastnnError as e:
        pytest.skip(str(e))
    skip_if_slow(kc, B * sum(a * b for a, b in zip(sizes, sizes[1:])))
    assert kc.train_steps is kc.TRAIN_STEPS[1]
    for hyper in HYPERS.values():
        assert_steps_match(kc, sizes, dtype, for_network(batches, sizes), train_steps=kc.TRAIN_STEPS[2], hyper=hyper)
