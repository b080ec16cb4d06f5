"""What a training run leaves on disk, read and written in one place.

    weights.npz   W1, b1, W2, b2, ...: W_i (fan_in, fan_out), b_i (fan_out,), the original program's
                  layout, so `relu(X @ W1 + b1) @ W2 + b2` are the logits (X = pixels / 255)
    history.json  {"config": {...}, "epochs": [one record per epoch]} beside the weights

Every write is atomic (fileio.atomic_write); every read problem is a FastnnError saying what to do.
"""
import json
import zipfile
from pathlib import Path

import numpy as np

from fastnn.fileio import FastnnError, atomic_write
from fastnn.step import Layers

HISTORY = "history.json"  # the file name beside weights.npz


def write_weights(path, params):
    """Write params (a Layers of host arrays) to `path` as W1, b1, W2, b2, ..., atomically."""
    arrays = {}
    for i, (w, b) in enumerate(zip(params.weights, params.biases), start=1):
        arrays[f"W{i}"], arrays[f"b{i}"] = w, b
    with atomic_write(path) as f:
        np.savez(f, **arrays)


def read_weights(path):
    """Read and check a weights.npz: returns a Layers of the arrays as stored, or raises FastnnError."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise FastnnError(f"{path}: no such weights file") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise FastnnError(f"{path}: not a readable weights .npz file ({e}); "
                          f"pass the weights.npz that fastnn.train wrote") from None
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


def write_history(path, config, epochs):
    """Write history.json: the run's resolved config and one record per epoch, atomically."""
    with atomic_write(path, "w") as f:
        json.dump({"config": config, "epochs": epochs}, f, indent=2)


def read_history(weights_path):
    """The epoch records of the history.json beside `weights_path`; [] when there is none."""
    path = Path(weights_path).with_name(HISTORY)
    if not path.exists():
        return []
    try:
        epochs = json.loads(path.read_text())["epochs"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FastnnError(f"{path}: not a history.json written by fastnn.train ({e!r}); "
                          f"move it away to start the epoch count afresh") from None
    if not (isinstance(epochs, list) and all(isinstance(r, dict) and "loss" in r for r in epochs)):
        raise FastnnError(f"{path}: its 'epochs' are not fastnn epoch records; "
                          f"move it away to start the epoch count afresh")
    return epochs
