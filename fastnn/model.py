"""MLP: a multilayer perceptron classifier with a scikit-learn style API, on any fastnn backend.

    model = MLP(hidden=(128,), backend="numba").fit(X_train, y_train, X_test, y_test)
    model.score(X_test, y_test), model.predict(X), model.predict_proba(X), model.save("weights.npz")

The model validates its inputs once, owns every buffer (allocated through the backend, so they live
where its kernels run), and calls one `train_step` per mini-batch; the backend does all the math.
"""
import math
import time
import zipfile

import numpy as np
from tqdm import tqdm

from fastnn.backends import BACKENDS, get_backend
from fastnn.fileio import FastnnError, atomic_write

DTYPES = ("float32", "float64")
SCHEDULES = ("constant", "cosine")
# A mean cross-entropy this large means the right class gets probability e^-1000: no sane run gets
# there (an untrained network sits at ln(10) = 2.3), so it is divergence, not a bad batch.
DIVERGED_LOSS = 1e3
CHECK_EVERY = 32  # steps between divergence checks
EVAL_BATCH = 2000  # rows per inference chunk: bounds memory, big enough to keep the kernels busy


def _param_error(name, allowed, got):
    """The one template for a bad parameter (scikit-learn's)."""
    return FastnnError(f"The {name!r} parameter of MLP must be {allowed}. Got {got!r} instead.")


class MLP:
    """Multilayer perceptron: input -> hidden ReLU layers -> softmax, trained by mini-batch SGD.

    Parameters
    ----------
    hidden : tuple of int, sizes of the hidden layers, e.g. (128,) or (512, 256).
    backend : {"numpy", "numba", "cuda"}, which implementation of the ops runs the math.
    lr : float, learning rate (the peak rate when `schedule="cosine"`).
    momentum, weight_decay : float, SGD momentum and L2 penalty (0 = plain SGD).
    batch_size, epochs : int.
    schedule : {"constant", "cosine"}, learning rate per step: fixed, or cosine decay to 0 over the run.
    validation_fraction : float in [0, 1), share of the training set held out to report `val_accuracy`.
    shuffle : bool, reshuffle the training set every epoch (False: batches in the order given).
    dtype : {"float32", "float64"}.
    seed : int, seeds the He-normal initialisation and the per-epoch shuffles.

    Attributes (after fit)
    ----------------------
    coefs_, intercepts_ : lists of weights (C_in, C_out) and biases (C_out,), NumPy arrays.
    loss_curve_ : mean training loss per epoch.  history_ : one dict per epoch (see `fit`).
    n_iter_ : epochs trained so far (including those before a resume).  classes_ : 0..K-1.
    """

    def __init__(self, hidden=(128,), backend="numpy", lr=0.01, momentum=0.0, weight_decay=0.0,
                 batch_size=64, epochs=10, schedule="constant", validation_fraction=0.0,
                 shuffle=True, dtype="float32", seed=42):
        self.hidden = hidden
        self.backend = backend
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.epochs = epochs
        self.schedule = schedule
        self.validation_fraction = validation_fraction
        self.shuffle = shuffle
        self.dtype = dtype
        self.seed = seed

    # ---- parameters -------------------------------------------------------------------------
    def _validate_params(self):
        hidden = self.hidden
        if isinstance(hidden, int) or not all(isinstance(h, (int, np.integer)) and h > 0 for h in hidden):
            raise _param_error("hidden", "a tuple of positive ints", hidden)
        if self.backend not in BACKENDS:
            raise _param_error("backend", f"one of {sorted(BACKENDS)}", self.backend)
        if self.dtype not in DTYPES:
            raise _param_error("dtype", f"one of {list(DTYPES)}", self.dtype)
        if self.schedule not in SCHEDULES:
            raise _param_error("schedule", f"one of {list(SCHEDULES)}", self.schedule)
        for name in ("batch_size", "epochs"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise _param_error(name, "an int >= 1", value)
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < math.inf):
            raise _param_error("lr", "a float > 0", self.lr)
        for name in ("momentum", "validation_fraction"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value < 1):
                raise _param_error(name, "a float in [0, 1)", value)
        if not (isinstance(self.weight_decay, (int, float)) and 0 <= self.weight_decay < math.inf):
            raise _param_error("weight_decay", "a float >= 0", self.weight_decay)
        self._ops = get_backend(self.backend)

    def get_params(self):
        """The constructor's parameters as a dict (saved in history.json)."""
        return {name: getattr(self, name) for name in (
            "hidden", "backend", "lr", "momentum", "weight_decay", "batch_size", "epochs", "schedule",
            "validation_fraction", "shuffle", "dtype", "seed")}

    # ---- data checks ------------------------------------------------------------------------
    def _check_X(self, X, name="X"):
        """Return X as a C-contiguous uint8 (pixels, scaled by 1/255 per batch) or float array, and its scale."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[0] == 0:
            raise FastnnError(f"{name} must be a 2-D array (n_samples, n_features) with at least one row; "
                              f"got shape {X.shape}")
        if hasattr(self, "coefs_") and X.shape[1] != self.coefs_[0].shape[0]:
            raise FastnnError(f"{name} has {X.shape[1]} features but the model expects "
                              f"{self.coefs_[0].shape[0]}")
        if X.dtype == np.uint8:  # grey levels 0..255: kept as bytes, scaled as each batch is gathered
            return np.ascontiguousarray(X), 1 / 255
        if not np.issubdtype(X.dtype, np.number):
            raise FastnnError(f"{name} must hold numbers; got dtype {X.dtype}")
        X = np.ascontiguousarray(X, dtype=self.dtype)
        if not np.isfinite(X).all():
            raise FastnnError(f"{name} contains NaN or infinite values: clean the data before training")
        return X, 1.0

    def _check_y(self, y, n, name="y"):
        y = np.asarray(y)
        if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
            raise FastnnError(f"{name} must be a 1-D array of {n} integer class labels; "
                              f"got shape {y.shape} and dtype {y.dtype}")
        if y.min() < 0:
            raise FastnnError(f"{name} holds negative labels: classes must be 0..K-1")
        return np.ascontiguousarray(y, dtype=np.int64)

    # ---- buffers ----------------------------------------------------------------------------
    def _init_weights(self, n_features, n_classes):
        """He-normal weights (std sqrt(2 / fan_in), right for ReLU), zero biases."""
        sizes = [n_features, *self.hidden, n_classes]
        rng = np.random.default_rng(self.seed)
        self.coefs_ = [(rng.standard_normal((c_in, c_out)) * math.sqrt(2 / c_in)).astype(self.dtype)
                       for c_in, c_out in zip(sizes[:-1], sizes[1:])]
        self.intercepts_ = [np.zeros(c_out, self.dtype) for c_out in sizes[1:]]

    def _to_backend(self):
        """Move the parameters where the backend computes and allocate gradients and velocities."""
        ops = self._ops
        self._weights = tuple(ops.to_device(w.astype(self.dtype, copy=False)) for w in self.coefs_)
        self._biases = tuple(ops.to_device(b.astype(self.dtype, copy=False)) for b in self.intercepts_)
        self._dweights = tuple(ops.empty(w.shape, self.dtype) for w in self.coefs_)
        self._dbiases = tuple(ops.empty(b.shape, self.dtype) for b in self.intercepts_)
        # velocities start at zero; with momentum 0 they just carry this step's gradient
        self._velocities_w = tuple(ops.to_device(np.zeros_like(w, self.dtype)) for w in self.coefs_)
        self._velocities_b = tuple(ops.to_device(np.zeros_like(b, self.dtype)) for b in self.intercepts_)

    def _from_backend(self):
        self.coefs_ = [self._ops.to_host(w).copy() for w in self._weights]
        self.intercepts_ = [self._ops.to_host(b).copy() for b in self._biases]

    def _activations(self, rows):
        """acts[0] (rows, C_0) input, acts[l] (rows, C_l) hidden outputs, acts[L] (rows, K) logits."""
        sizes = [self.coefs_[0].shape[0]] + [w.shape[1] for w in self.coefs_]
        return tuple(self._ops.empty((rows, c), self.dtype) for c in sizes)

    # ---- training ---------------------------------------------------------------------------
    def fit(self, X, y, X_test=None, y_test=None, warm_start=False, progress=False, on_epoch=None):
        """Train for `self.epochs` epochs and return self.

        X (N, C) uint8 pixels (scaled by 1/255 as batches are gathered) or floats; y (N,) int labels.
        X_test, y_test: optional set scored after every epoch (`test_accuracy` in history_).
        warm_start: continue from the current weights (after `load` or an earlier fit) instead of
        initialising new ones. progress: show a progress bar per epoch. on_epoch: called with each
        epoch's history dict. One history dict per epoch: epoch, loss (mean over the epoch's batches),
        train_accuracy (of those batches, before each update), val_accuracy, test_accuracy, seconds, lr.
        """
        self._validate_params()
        X, scale = self._check_X(X)
        y = self._check_y(y, X.shape[0])
        if X_test is not None:
            X_test, _ = self._check_X(X_test, "X_test")
            y_test = self._check_y(y_test, X_test.shape[0], "y_test")
        if not (warm_start and hasattr(self, "coefs_")):
            self._init_weights(X.shape[1], int(y.max()) + 1)
            self.history_, self.loss_curve_, self.n_iter_ = [], [], 0
        n_classes = self.coefs_[-1].shape[1]
        if y.max() >= n_classes:
            raise FastnnError(f"y holds label {y.max()} but the model has {n_classes} classes")
        self.classes_ = np.arange(n_classes)

        rng = np.random.default_rng([self.seed, self.n_iter_])  # per-run stream, distinct on resume
        n_val = int(len(X) * self.validation_fraction)
        order = rng.permutation(len(X)) if n_val else np.arange(len(X))
        train_rows, val_rows = order[n_val:], order[:n_val]
        self._to_backend()
        data = (self._ops.to_device(X), self._ops.to_device(y), scale)
        B = min(self.batch_size, len(train_rows))
        full = self._step_buffers(B, n_classes)
        partial = len(train_rows) % B  # the last batch of an epoch may be smaller: views of its rows
        batches = [(start, full if start + B <= len(train_rows) else _first_rows(full, partial))
                   for start in range(0, len(train_rows), B)]
        total_steps = len(batches) * self.epochs

        for epoch_in_run in range(self.epochs):
            epoch = self.n_iter_ + 1
            start_time = time.perf_counter()
            order = train_rows if not self.shuffle else rng.permutation(train_rows)
            lrs = [self._lr_at(epoch_in_run * len(batches) + step, total_steps) for step in range(len(batches))]
            loss, correct = self._train_epoch(epoch, data, self._ops.to_device(order), batches, lrs, progress)
            self._from_backend()
            record = {"epoch": epoch, "loss": loss, "train_accuracy": correct / len(train_rows),
                      "val_accuracy": self.score(X[val_rows], y[val_rows]) if n_val else None,
                      "test_accuracy": self.score(X_test, y_test) if X_test is not None else None,
                      "seconds": time.perf_counter() - start_time, "lr": lrs[-1]}
            self.n_iter_ = epoch
            self.history_.append(record)
            self.loss_curve_.append(record["loss"])
            if on_epoch is not None:
                on_epoch(record)
        return self

    def _step_buffers(self, B, n_classes):
        """(acts, dacts, dlogits, targets) for batches of B rows: train_step's working memory."""
        acts = self._activations(B)
        # no gradient is needed for the pixels, so dacts[0] is the backend's scratch memory, nor kept
        # for the logits
        dacts = self._activations(B)[:-1]
        return acts, dacts, self._ops.empty((B, n_classes), self.dtype), self._ops.empty(B, np.int64)

    def _train_epoch(self, epoch, data, order, batches, lrs, progress):
        """One pass over `order` (device indices); returns (mean batch loss, number correct)."""
        images, labels, scale = data
        params = (self._weights, self._biases, self._dweights, self._dbiases,
                  self._velocities_w, self._velocities_b)
        losses, corrects = [], []  # kept as returned: a GPU backend's values are read in one go later
        bar = tqdm(total=len(batches), desc=f"epoch {epoch}", leave=False, unit="batch", disable=not progress)
        for step, (start, (acts, dacts, dlogits, targets)) in enumerate(batches):
            indices = order[start:start + len(targets)]
            loss, n_correct = self._ops.train_step(*params, acts, dacts, dlogits, targets, images, labels,
                                                   indices, scale, lrs[step], self.momentum, self.weight_decay)
            bar.update()
            losses.append(loss)
            corrects.append(n_correct)
            if step % CHECK_EVERY == 0 or step == len(batches) - 1:
                # reading a loss waits for the device (a GPU runs ahead of Python), so only every few steps
                self._check_diverged(epoch, step, losses)
        bar.close()
        return float(sum(losses)) / len(losses), int(sum(corrects))

    def _check_diverged(self, epoch, step, losses):
        for i in range(max(0, step + 1 - CHECK_EVERY), step + 1):
            if not losses[i] < DIVERGED_LOSS:  # also catches NaN
                raise FastnnError(f"training diverged at epoch {epoch}, step {i + 1} (loss {float(losses[i]):.4g}): "
                                  f"lower the learning rate (--lr {self.lr:g} is too high) or check the data")

    def _lr_at(self, t, total_steps):
        """Learning rate for step t of total_steps in this run."""
        if self.schedule == "cosine":  # smooth decay from lr to 0: large steps early, fine ones late
            return self.lr * 0.5 * (1 + math.cos(math.pi * t / total_steps))
        return self.lr

    # ---- inference --------------------------------------------------------------------------
    def _logits(self, X):
        """Yield (rows, logits) per chunk of X, computed by the backend; logits stay on its device."""
        if not hasattr(self, "_weights"):  # loaded, not fitted: move the weights to the backend once
            self._validate_params()
            self._to_backend()
        X, scale = self._check_X(X)
        ops = self._ops
        images = ops.to_device(X)
        rows = min(EVAL_BATCH, len(X))
        acts = self._activations(rows)
        targets = ops.empty(rows, np.int64)
        zeros = ops.to_device(np.zeros(len(X), np.int64))  # gather_batch wants labels; none here
        for start in range(0, len(X), rows):
            b = min(rows, len(X) - start)
            view = tuple(a[:b] for a in acts)
            indices = ops.to_device(np.arange(start, start + b))
            ops.gather_batch(view[0], targets[:b], images, zeros, indices, scale)
            ops.forward(view, self._weights, self._biases)
            yield slice(start, start + b), view[-1]

    def _check_fitted(self, X):
        if not hasattr(self, "coefs_"):
            raise FastnnError("this MLP is not fitted yet: call fit(X, y) or MLP.load(path) first")
        return np.asarray(X)

    def predict_proba(self, X):
        """Class probabilities (N, K) of X (N, C)."""
        X = self._check_fitted(X)
        probs = np.empty((len(X), len(self.classes_)), self.dtype)
        for rows, logits in self._logits(X):
            out = self._ops.empty(logits.shape, self.dtype)
            self._ops.softmax(out, logits)
            probs[rows] = self._ops.to_host(out)
        return probs

    def predict(self, X):
        """Predicted class (N,) of each row of X (N, C)."""
        X = self._check_fitted(X)
        labels = np.empty(len(X), np.int64)
        for rows, logits in self._logits(X):
            out = self._ops.empty(logits.shape[0], np.int64)
            self._ops.argmax(out, logits)
            labels[rows] = self._ops.to_host(out)
        return labels

    def score(self, X, y):
        """Accuracy (fraction correct) of predict(X) against y."""
        y = self._check_y(y, len(X))
        return float(np.mean(self.predict(X) == y))

    # ---- persistence ------------------------------------------------------------------------
    def save(self, path):
        """Write weights.npz: W1, b1, W2, b2, ... with W_i (fan_in, fan_out) and b_i (fan_out,), atomically."""
        if not hasattr(self, "coefs_"):
            raise FastnnError("this MLP is not fitted yet: nothing to save")
        arrays = {}
        for i, (w, b) in enumerate(zip(self.coefs_, self.intercepts_), start=1):
            arrays[f"W{i}"], arrays[f"b{i}"] = w, b
        with atomic_write(path) as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path, **params):
        """An MLP holding the weights of `path` (as written by save, or the original program's (1, n)
        biases); `params` set the rest (backend, dtype, ...). Continue training with fit(warm_start=True)."""
        weights, biases = read_weights(path)
        model = cls(hidden=tuple(w.shape[1] for w in weights[:-1]), **params)
        model._validate_params()
        model.coefs_ = [w.astype(model.dtype) for w in weights]
        model.intercepts_ = [b.astype(model.dtype) for b in biases]
        model.classes_ = np.arange(weights[-1].shape[1])
        model.history_, model.loss_curve_, model.n_iter_ = [], [], 0
        return model


def _first_rows(buffers, rows):
    """The same step buffers, viewing only their first `rows` rows (dacts[0], scratch, stays whole)."""
    acts, dacts, dlogits, targets = buffers
    return (tuple(a[:rows] for a in acts), dacts[:1] + tuple(d[:rows] for d in dacts[1:]),
            dlogits[:rows], targets[:rows])


def read_weights(path):
    """Read and check a weights.npz: returns (weights, biases) lists, or raises FastnnError saying why."""
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
    return weights, biases
