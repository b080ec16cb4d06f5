"""What a training run leaves on disk, read and written in one place.

    weights.npz       W1, b1, W2, b2, ...: W_i (fan_in, fan_out), b_i (fan_out,), the original program's
                      layout, so `relu(X @ W1 + b1) @ W2 + b2` are the logits (X = pixels / 255)
    train_state.npz   beside the weights: what an exact resume needs and the weights do not hold,
                      V1, vb1, ... and S1, sb1, ... (the optimizer's state: SGD's momentum buffers or
                      Adam's two moments), BW1, Bb1, ... (with early stopping: the best weights so far)
                      and `meta`, a JSON string: how far the run got, its settings, the shuffle
                      generator's state, the epoch records and the SHA-256 of the weights it belongs with
    history.json      {"config": {...}, "epochs": [one record per epoch]} beside the weights

Every write is atomic (fileio.atomic_write); every read problem is a FastnnError saying what to do. No
file holds pickled objects: loading one runs no code.
"""
import hashlib
import json
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fastnn.bundles import Layers, OptimizerState
from fastnn.fileio import FastnnError, atomic_write, atomic_writes

HISTORY = "history.json"  # the file names beside weights.npz
STATE = "train_state.npz"
RECORD_KEYS = ("epoch", "loss", "train_accuracy")  # what every epoch record holds (plots and resume read them)


def _read_npz(path, what, remedy):
    """{name: array} of the .npz at `path`, or FastnnError naming `what` it should have been."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FastnnError(f"{path}: no such {what} file") from None
    except (OSError, ValueError, EOFError) as e:  # a directory, a pickle, text, a truncated file
        raise FastnnError(f"{path}: not a readable {what} .npz file ({e}); {remedy}") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):  # np.load reads a .npy as one bare array
        raise FastnnError(f"{path}: a single .npy array, not a {what} .npz of named arrays; {remedy}")
    try:
        with loaded as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:  # a damaged member
        raise FastnnError(f"{path}: not a readable {what} .npz file ({e}); {remedy}") from None


def _pairs(layers, w_name, b_name):
    """{W1: ..., b1: ..., W2: ...} of a Layers, with the given name prefixes."""
    arrays = {}
    for i, (w, b) in enumerate(zip(layers.weights, layers.biases), start=1):
        arrays[f"{w_name}{i}"], arrays[f"{b_name}{i}"] = w, b
    return arrays


def write_weights(path, params, state=None):
    """Write params (a Layers of host arrays) to `path` as W1, b1, W2, b2, ..., atomically, and the
    RunState `state` (if given) beside it as train_state.npz, the two renamed into place together
    (fileio.atomic_writes); the weights' digest in the state tells if they ever come apart."""
    if state is None:
        with atomic_write(path) as f:
            np.savez(f, **_pairs(params, "W", "b"))
        return
    meta = state._asdict()
    optimizer, best = meta.pop("optimizer"), meta.pop("best")
    arrays = {**_pairs(optimizer.moment1, "V", "vb"), **_pairs(optimizer.moment2, "S", "sb"),
              **(_pairs(best, "BW", "Bb") if best is not None else {})}
    with atomic_writes([path, Path(path).with_name(STATE)]) as (weights_file, state_file):
        np.savez(weights_file, **_pairs(params, "W", "b"))
        np.savez(state_file, **arrays, meta=np.array(json.dumps(meta)))


def weights_digest(params):
    """SHA-256 of a Layers' arrays (dtype, shape and bytes, in file order): ties a train_state to its weights."""
    digest = hashlib.sha256()
    for array in _pairs(params, "W", "b").values():
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def read_weights(path):
    """Read and check a weights.npz: returns a Layers of the arrays as stored, or raises FastnnError."""
    arrays = _read_npz(path, "weights", "pass the weights.npz that fastnn.train wrote")
    n_layers = sum(1 for k in arrays if k.startswith("W"))
    expected = [f"{p}{i}" for i in range(1, n_layers + 1) for p in "Wb"]
    if n_layers == 0 or sorted(arrays) != sorted(expected):
        raise FastnnError(f"{path}: expected arrays {expected or ['W1', 'b1', '...']}, "
                          f"found {sorted(arrays)}")
    weights, biases = [], []
    for i in range(1, n_layers + 1):
        w, b = arrays[f"W{i}"], arrays[f"b{i}"]
        if b.ndim == 2 and b.shape[0] == 1:
            b = b[0]  # the original program kept biases as (1, n) rows
        if w.ndim != 2 or b.shape != (w.shape[1],) or not np.issubdtype(w.dtype, np.floating) \
                or not np.issubdtype(b.dtype, np.floating):
            raise FastnnError(f"{path}: W{i} {w.shape} and b{i} {b.shape} must be float arrays "
                              f"(fan_in, fan_out) and (fan_out,)")
        if weights and w.shape[0] != weights[-1].shape[1]:
            raise FastnnError(f"{path}: W{i} has {w.shape[0]} inputs but layer {i - 1} has "
                              f"{weights[-1].shape[1]} outputs")
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise FastnnError(f"{path}: W{i} or b{i} holds NaN or inf: the weights are broken")
        weights.append(w)
        biases.append(b)
    return Layers(tuple(weights), tuple(biases))


class RunState(NamedTuple):
    """How far a fit got: with the weights it belongs to, enough to finish it bitwise as if never stopped."""
    first_epoch: int  # the number of the run's first epoch (the epochs before it were earlier runs)
    epochs: int  # the run's planned length: the cosine schedule spans it
    done: int  # epochs of it finished
    optimizer: OptimizerState  # the optimizer's state after epoch `done`, host arrays
    rng_state: dict  # the shuffle generator's bit_generator.state after epoch `done`
    settings: dict  # the settings and data fingerprint the run started with: a continuation must match
    history: list  # every epoch record so far, earlier runs' included
    weights_sha256: str  # weights_digest of the parameters after epoch `done`
    best: Layers = None  # with early stopping: the parameters of the run's best epoch so far

    @property
    def finished(self):
        """Whether the run is over: every epoch done, or stopped early (its last record says so)."""
        return self.done == self.epochs or (self.done > 0 and "early_stopping" in self.history[-1])


def read_state(weights_path):
    """The RunState of the train_state.npz beside `weights_path`; None when there is none."""
    path = Path(weights_path).with_name(STATE)
    if not path.exists():
        return None
    remedy = f"move it away to train on from {Path(weights_path).name} as a new run"
    arrays = _read_npz(path, "train state", remedy)
    try:
        meta = json.loads(str(arrays.pop("meta")))
        n_layers = sum(1 for k in arrays if k.startswith("V"))

        def layers(w_name, b_name):
            return Layers(tuple(arrays[f"{w_name}{i}"] for i in range(1, n_layers + 1)),
                          tuple(arrays[f"{b_name}{i}"] for i in range(1, n_layers + 1)))

        best = layers("BW", "Bb") if "BW1" in arrays else None
        state = RunState(optimizer=OptimizerState(layers("V", "vb"), layers("S", "sb")), best=best, **meta)
        check_records(state.history)
        if not (isinstance(state.rng_state, dict) and isinstance(state.settings, dict)
                and all(isinstance(n, int) for n in (state.first_epoch, state.epochs, state.done))
                and 0 <= state.done <= state.epochs and len(state.history) == state.first_epoch - 1 + state.done):
            raise ValueError("inconsistent run progress")
    except (KeyError, ValueError, TypeError) as e:  # missing or foreign fields
        raise FastnnError(f"{path}: not a train state written by fastnn ({e}); {remedy}") from None
    return state


def write_history(path, config, epochs):
    """Write history.json: the run's resolved config and one record per epoch, atomically."""
    with atomic_write(path, "w") as f:
        json.dump({"config": config, "epochs": epochs}, f, indent=2)


def check_records(epochs):
    """Raise ValueError unless `epochs` is a list of epoch records numbered 1, 2, ..."""
    if not isinstance(epochs, list):
        raise ValueError("the epoch records are not a list")
    for number, record in enumerate(epochs, start=1):
        if not (isinstance(record, dict) and all(isinstance(record.get(k), (int, float)) for k in RECORD_KEYS)
                and record["epoch"] == number):
            raise ValueError(f"record {number} is not epoch {number} with {', '.join(RECORD_KEYS)}")


def read_history(weights_path):
    """The epoch records of the history.json beside `weights_path`; [] when there is none."""
    path = Path(weights_path).with_name(HISTORY)
    if not path.exists():
        return []
    try:
        epochs = json.loads(path.read_text())["epochs"]
        check_records(epochs)
    except (OSError, ValueError, KeyError, TypeError) as e:  # UnicodeDecodeError is a ValueError
        raise FastnnError(f"{path}: not a history.json written by fastnn.train ({e}); "
                          f"move it away to start the epoch count afresh") from None
    return epochs
