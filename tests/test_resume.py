"""Exact resume: a training run stopped by Ctrl-C or killed outright, then finished by running the same
command with --resume added, ends with bitwise the weights of the run left alone."""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from fastnn import checkpoint, train

# The default preset (momentum 0.9, weight decay, cosine schedule), smaller, with a validation split:
# every piece of state a resume must restore. Epochs of a few hundred ms leave time to stop the run
# between its first saved epoch and its last.
COMMAND = ["--hidden", "128,64", "--limit", "12000", "--epochs", "8", "--validation", "0.1", "--no-plots"]


def arrays(path):
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def stop_after_first_epoch(argv, how):
    """Run `python -m fastnn.train argv` and send it signal `how` as soon as its first epoch is saved.

    The run prints each epoch's line before it saves that epoch, so the line of epoch 2 says that epoch
    1 is on disk; reading it blocks until it comes. The child starts with Ctrl-C at its default, as from
    a shell: a parent that ignores SIGINT (mutmut's runner does) passes that on, and Python then installs
    no KeyboardInterrupt handler.
    """
    # one BLAS thread, as in this test session (conftest.py): NumPy's products split their sums by thread
    # count, so the numpy backend is bitwise reproducible at a fixed BLAS thread count only
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "fastnn.train", *argv], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in process.stdout:  # a first numba run compiles first: the read waits for it
        if line.startswith("epoch 2/"):
            process.send_signal(how)
            break
    stdout, stderr = process.communicate(timeout=300)
    return process.returncode, stdout, stderr


@pytest.mark.parametrize("backend, how", [("numpy", signal.SIGINT), ("numba", signal.SIGKILL)])
def test_a_stopped_run_finishes_bitwise_as_if_never_stopped(tmp_path, backend, how):
    argv = COMMAND + ["--backend", backend]
    straight = train.main(argv + ["--out", str(tmp_path / "straight")])  # also fills numba's cache

    out = tmp_path / "stopped"
    code, _, stderr = stop_after_first_epoch(argv + ["--out", str(out)], how)
    assert code != 0
    if how == signal.SIGINT:  # Ctrl-C: one line saying how to finish the run
        assert stderr.strip().splitlines()[-1].startswith("error: interrupted after epoch ")
        assert f"run the same command with --resume {out / 'weights.npz'}" in stderr
    stopped_at = checkpoint.read_state(out / "weights.npz").done
    assert 1 <= stopped_at < 8, "the run ended before it could be stopped: make its epochs longer"
    assert arrays(out / "weights.npz")["W1"].tobytes() != arrays(tmp_path / "straight" / "weights.npz")["W1"].tobytes()

    resumed = train.main(argv + ["--out", str(out), "--resume", str(out / "weights.npz")])
    want, got = arrays(tmp_path / "straight" / "weights.npz"), arrays(out / "weights.npz")
    assert sorted(got) == sorted(want) == ["W1", "W2", "W3", "b1", "b2", "b3"]  # the original program's layout
    for name in want:
        assert got[name].tobytes() == want[name].tobytes(), name
    assert [r["loss"] for r in resumed["history"]] == [r["loss"] for r in straight["history"]]
    assert [r["epoch"] for r in resumed["history"]] == list(range(1, 9))
    assert resumed["test_accuracy"] == straight["test_accuracy"]
