"""Per-step training metrics that stay on the GPU until someone reads them.

A step's (loss, n_correct) is computed on the device. Copying it to the host after every step would
make the host wait for the GPU every step (the queue of launches drains, and MNIST-sized steps are
launch-bound), so the kernels write it into a device log instead and train_step returns DeviceScalar
handles. Reading one (float(x), int(x), x + y, x < y) copies every log row written since
the last read in one transfer: reading a whole epoch's handles at its end costs one wait.
"""
import numpy as np
from numba import cuda

LOG_STEPS = 1 << 16  # log rows (16 B each): ~70 epochs at batch 64 can pass between reads


class StepLog:
    """A ring of LOG_STEPS rows (loss, n_correct) on the device, float64, and its host mirror."""

    def __init__(self, steps=LOG_STEPS):
        self.device = cuda.device_array((steps, 2), np.float64)
        self.host = np.zeros((steps, 2))
        self.written = 0  # steps handed out so far; step s lives in row s % steps
        self.fetched = 0  # steps copied to the host so far

    def claim(self, n):
        """Hand out n consecutive steps; returns the first (its row: step % len(log))."""
        first = self.written
        self.written += n
        return first

    def __len__(self):
        return len(self.host)

    def value(self, step, column):
        """The log's value for `step` (column 0: loss, 1: n_correct), fetching what is new if needed."""
        if self.written - step > len(self):
            raise RuntimeError(f"step {step}'s metrics were overwritten: read them within {len(self)} steps")
        if step >= self.fetched:
            self._fetch()
        return self.host[step % len(self), column]

    def _fetch(self):
        # copy_to_host on the default stream waits for the kernels queued before it, which wrote these rows
        first, last = self.fetched % len(self), self.written % len(self)
        if self.written - self.fetched >= len(self):
            self.device.copy_to_host(self.host)
        elif first <= last:
            self.device[first:last].copy_to_host(self.host[first:last])
        else:  # the new rows wrap around the end of the ring
            self.device[first:].copy_to_host(self.host[first:])
            self.device[:last].copy_to_host(self.host[:last])
        self.fetched = self.written


class DeviceScalar:
    """A number a kernel writes on the device: reading it (float(x), int(x), x + y, x < y) waits for the GPU."""

    __slots__ = ("_log", "_step", "_column", "_type")

    def __init__(self, log, step, column, type_):
        self._log, self._step, self._column, self._type = log, step, column, type_

    def item(self):
        """The value as a Python float (loss) or int (n_correct)."""
        return self._type(self._log.value(self._step, self._column))

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __add__(self, other):
        return self.item() + other

    __radd__ = __add__  # `total += x` with total a float: float.__add__ declines, this answers

    def __lt__(self, other):
        return self.item() < other

    def __gt__(self, other):
        return self.item() > other

    def __repr__(self):
        return f"DeviceScalar(step {self._step}: {self.item()!r})"


_log = None


def step_log():
    """The process's step log, allocated on first use (in the current CUDA context)."""
    global _log
    if _log is None:
        _log = StepLog()
    return _log


def metrics(first, n):
    """[(loss, n_correct)] DeviceScalar pairs for the n steps from `first`."""
    log = step_log()
    return [(DeviceScalar(log, s, 0, float), DeviceScalar(log, s, 1, int)) for s in range(first, first + n)]
