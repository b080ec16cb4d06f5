"""The training loop: epochs of mini-batches through a backend's train_steps, the learning-rate
schedule, and the divergence check.

    for epoch in loop.fit(ops, params, data, rows, settings, rng):   # one Epoch per epoch
        print(epoch.loss, epoch.params.weights[0].shape)

An epoch is a shuffle of the training rows, then every batch of them: the full batches in calls of
STEPS_PER_CALL steps, the smaller last batch (if any) in a call of its own, through views of the same
buffers (fastnn.bundles.first_rows).
"""
import math
import time
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from fastnn.bundles import Hyper, Layers, OptimizerState, Steps, first_rows, to_host, training_state
from fastnn.fileio import FastnnError

# A mean cross-entropy this large means the right class gets probability e^-1000: no sane run gets
# there (an untrained network sits at ln(10) = 2.3), so it is divergence, not a bad batch.
DIVERGED_LOSS = 1e3
# Steps per train_steps call. Between calls the losses are checked for divergence and the progress bar
# moves; reading a GPU's losses waits for it, so not after every step.
STEPS_PER_CALL = 32
SCHEDULES = ("constant", "cosine")


class Settings(NamedTuple):
    """How to train: MLP's parameters that the loop needs."""
    batch_size: int
    epochs: int
    lr: float  # the peak rate under the cosine schedule
    schedule: str  # one of SCHEDULES
    hyper: Hyper  # the optimizer's constants, dropout, max-norm
    shuffle: bool  # reshuffle the rows every epoch (False: batches in the order given)


class Epoch(NamedTuple):
    """What one epoch of fit() did."""
    number: int  # 1-based, counting the epochs before a resume
    loss: float  # mean of the epoch's batch losses
    n_correct: int  # rows whose largest logit was the target, each measured before its batch's update
    lr: float  # the learning rate of the epoch's last step
    seconds: float  # training time: shuffle, steps, copying the parameters back
    compile_seconds: float  # compiling (or loading) the backend's train_steps before the fit's first epoch, else 0
    params: Layers  # the parameters after the epoch, host copies
    optimizer: OptimizerState  # the optimizer's state after the epoch, host copies: what an exact resume needs


def learning_rate(settings, t, total_steps):
    """Learning rate for step t of total_steps in this run."""
    if settings.schedule == "cosine":  # smooth decay from lr to 0: large steps early, fine ones late
        return settings.lr * 0.5 * (1 + math.cos(math.pi * t / total_steps))
    return settings.lr


def epoch_plan(settings, rng, rows, epoch):
    """(order, lrs) of epoch `epoch` (0-based) of a run of settings on `rows` (N,): the rows in the
    order of the epoch's batches (a shuffle drawn from rng, unless settings.shuffle is off) and each
    of its steps' learning rate, the schedule spanning every epoch of the run."""
    steps_per_epoch = -(-len(rows) // settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    order = rng.permutation(rows) if settings.shuffle else rows
    return order, [learning_rate(settings, epoch * steps_per_epoch + t, total_steps) for t in range(steps_per_epoch)]


class Trainer:
    """One fit's state where the backend computes, and an epoch of train_steps calls on it."""

    def __init__(self, ops, params, batch_size, hyper, optimizer=None):
        """params: host Layers, optimizer: a host OptimizerState (None: zeros), copied to the backend;
        batches of up to batch_size rows."""
        self.ops, self.batch_size, self.hyper = ops, batch_size, hyper
        self.state = training_state(ops, params, batch_size, optimizer)

    def compile(self, data):
        """Have a compiling backend compile (or load from its cache) its train_steps for this fit's
        types before the first step, and return the seconds it took (0.0 for a backend that does not)."""
        compile_train_steps = getattr(self.ops, "compile_train_steps", None)
        if compile_train_steps is None:
            return 0.0
        one_step = Steps(self.ops.to_device(np.zeros((1, self.batch_size), np.int64)),
                         self.ops.to_device(np.zeros(1)), self.ops.to_device(np.ones(1, np.int64)))
        return compile_train_steps(*self.state, data, one_step, self.hyper)

    def params(self):
        """The current parameters as host copies."""
        return to_host(self.ops, self.state.params)

    def optimizer(self):
        """The current optimizer state as host copies."""
        return OptimizerState(*(to_host(self.ops, layers) for layers in self.state.optimizer))

    def run_epoch(self, data, order, lrs, first_number=1, epoch=1, progress=False):
        """Train on rows `order` (N,) of data, batch after batch, step t at rate lrs[t] as step
        first_number + t of the run.

        Returns (mean batch loss, number correct). Raises FastnnError at the first call whose losses
        show divergence, naming the epoch and step.
        """
        ops, B = self.ops, self.batch_size
        n_full, rest = divmod(len(order), B)
        indices = order[:n_full * B].reshape(n_full, B)  # (S, B): a view of the order
        calls = [(first, indices[first:first + STEPS_PER_CALL], self.state)
                 for first in range(0, n_full, STEPS_PER_CALL)]
        if rest:  # the smaller last batch, through views of its rows
            calls.append((n_full, order[n_full * B:].reshape(1, rest),
                          self.state._replace(buffers=first_rows(self.state.buffers, rest))))
        lrs = np.asarray(lrs, np.float64)
        numbers = np.arange(first_number, first_number + len(lrs), dtype=np.int64)
        losses, n_correct = [], 0
        bar = tqdm(total=len(lrs), desc=f"epoch {epoch}", leave=False, unit="batch", disable=not progress)
        for first, rows, state in calls:
            steps = Steps(ops.to_device(rows), ops.to_device(lrs[first:first + len(rows)]),
                          ops.to_device(numbers[first:first + len(rows)]))
            call_losses, call_correct = ops.train_steps(*state, data, steps, self.hyper)
            call_losses = np.asarray(call_losses, np.float64)  # reading a GPU's values waits for it
            diverged = np.flatnonzero(~(call_losses < DIVERGED_LOSS))  # also catches NaN
            if diverged.size:
                raise FastnnError(f"training diverged at epoch {epoch}, step {first + diverged[0] + 1} "
                                  f"(loss {call_losses[diverged[0]]:.4g}): lower the learning rate "
                                  f"(--lr; this epoch ran at up to {lrs.max():g}) or check the data")
            losses.extend(call_losses.tolist())
            n_correct += int(np.sum(np.asarray(call_correct, np.int64)))
            bar.update(len(rows))
        bar.close()
        return sum(losses) / len(losses), n_correct


def fit(ops, params, data, rows, settings, rng, first_epoch=1, progress=False, optimizer=None, epochs_done=0):
    """Train host params (a Layers) on rows `rows` of data: epochs epochs_done .. settings.epochs - 1
    of a run of settings.epochs epochs (the schedule and the step numbers span the whole run).

    data: the backend's (ops.prepare_data); rng: the generator of the shuffles, in the state it had
    after epoch epochs_done; optimizer: the OptimizerState then (None: zeros, a new run);
    first_epoch: the number of the run's first epoch. Yields one Epoch after each epoch, its
    parameters and optimizer state copied back to the host. A run stopped after any epoch and
    continued from that epoch's params, optimizer state and rng state trains bitwise as the
    uninterrupted run.
    """
    batch_size = min(settings.batch_size, len(rows))
    trainer = Trainer(ops, params, batch_size, settings.hyper, optimizer)
    compile_seconds = trainer.compile(data)
    for e in range(epochs_done, settings.epochs):
        start = time.perf_counter()
        order, lrs = epoch_plan(settings, rng, rows, e)
        loss, n_correct = trainer.run_epoch(data, order, lrs, e * len(lrs) + 1, first_epoch + e, progress)
        params, optimizer = trainer.params(), trainer.optimizer()
        yield Epoch(first_epoch + e, loss, n_correct, lrs[-1], time.perf_counter() - start, compile_seconds, params,
                    optimizer)
        compile_seconds = 0.0
