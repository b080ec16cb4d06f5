"""MLP: a multilayer perceptron classifier with a scikit-learn style API, on any fastnn backend.

    model = MLP(hidden=(128,), backend="numba").fit(X_train, y_train)
    model.score(X_test, y_test), model.predict(X), model.predict_proba(X), model.save("weights.npz")

The model checks its parameters and data, then hands the work on: the training loop to
fastnn/training.py, the math to the backend, the files to fastnn/checkpoint.py.
"""
import math

import numpy as np

from fastnn import checkpoint, training
from fastnn.backends import BACKENDS, get_backend
from fastnn.fileio import FastnnError
from fastnn.step import Hyper, Layers, activations, he_init, layer_sizes, to_device

DTYPES = ("float32", "float64")
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

    Attributes (after fit or load)
    ------------------------------
    coefs_, intercepts_ : lists of weights (C_in, C_out) and biases (C_out,), NumPy arrays; predict
        uses what they hold.
    history_ : one dict per epoch (see `fit`).  loss_curve_ : mean training loss per epoch.
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

    # ---- what follows from the learned state ------------------------------------------------
    @property
    def classes_(self):
        """The labels 0..K-1, K the width of the last layer."""
        return np.arange(self.coefs_[-1].shape[1])

    @property
    def n_iter_(self):
        """Epochs trained so far, those before a resume included."""
        return len(self.history_)

    @property
    def loss_curve_(self):
        """Mean training loss of each epoch."""
        return [record["loss"] for record in self.history_]

    # ---- checks -----------------------------------------------------------------------------
    def _validate_params(self):
        hidden = self.hidden
        if isinstance(hidden, int) or not all(isinstance(h, (int, np.integer)) and h > 0 for h in hidden):
            raise _param_error("hidden", "a tuple of positive ints", hidden)
        if self.backend not in BACKENDS:
            raise _param_error("backend", f"one of {sorted(BACKENDS)}", self.backend)
        if self.dtype not in DTYPES:
            raise _param_error("dtype", f"one of {list(DTYPES)}", self.dtype)
        if self.schedule not in training.SCHEDULES:
            raise _param_error("schedule", f"one of {list(training.SCHEDULES)}", self.schedule)
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

    def _check_X(self, X, name="X"):
        """X as a C-contiguous uint8 (pixels, scaled by 1/255 as batches are gathered) or float array,
        and that scale."""
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

    def _check_fitted(self):
        if not hasattr(self, "coefs_"):
            raise FastnnError("this MLP is not fitted yet: call fit(X, y) or MLP.load(path) first")

    def _params(self):
        """coefs_ and intercepts_ as a Layers in the model's dtype."""
        return Layers(tuple(np.asarray(w, self.dtype) for w in self.coefs_),
                      tuple(np.asarray(b, self.dtype) for b in self.intercepts_))

    # ---- training ---------------------------------------------------------------------------
    def fit(self, X, y, warm_start=False, progress=False, on_epoch=None):
        """Train for `self.epochs` epochs and return self.

        X (N, C) uint8 pixels (scaled by 1/255 as batches are gathered) or floats; y (N,) int labels.
        warm_start: continue from the current weights and history (after `load` or an earlier fit)
        instead of initialising new ones. progress: show a progress bar per epoch.
        on_epoch(record): called after each epoch with its history record, coefs_ already updated; it
        may add entries (say, "test_accuracy") before the record is kept.
        A record: epoch, loss (mean over the epoch's batches), train_accuracy (of those batches, each
        before its update), val_accuracy (None without a validation split), seconds (training only:
        shuffle, steps, copying the weights back), lr (of the epoch's last step).
        """
        self._validate_params()
        ops = get_backend(self.backend)
        X, scale = self._check_X(X)
        y = self._check_y(y, X.shape[0])
        if not (warm_start and hasattr(self, "coefs_")):
            params = he_init((X.shape[1], *self.hidden, int(y.max()) + 1), self.dtype, self.seed)
            self.coefs_, self.intercepts_ = list(params.weights), list(params.biases)
            self.history_ = []
        n_classes = self.coefs_[-1].shape[1]
        if y.max() >= n_classes:
            raise FastnnError(f"y holds label {y.max()} but the model has {n_classes} classes")

        rng = np.random.default_rng([self.seed, self.n_iter_])  # per-run stream, distinct on resume
        n_val = int(len(X) * self.validation_fraction)
        order = rng.permutation(len(X)) if n_val else np.arange(len(X))
        train_rows, val_rows = order[n_val:], order[:n_val]
        settings = training.Settings(self.batch_size, self.epochs, self.lr, self.schedule,
                                     Hyper(self.momentum, self.weight_decay), self.shuffle)
        data = ops.prepare_data(X, y, scale)
        for epoch in training.fit(ops, self._params(), data, train_rows, settings, rng, self.n_iter_ + 1, progress):
            self.coefs_, self.intercepts_ = list(epoch.params.weights), list(epoch.params.biases)
            record = {"epoch": epoch.number, "loss": epoch.loss, "train_accuracy": epoch.n_correct / len(train_rows),
                      "val_accuracy": self.score(X[val_rows], y[val_rows]) if n_val else None,
                      "seconds": epoch.seconds, "lr": epoch.lr}
            if on_epoch is not None:
                on_epoch(record)
            self.history_.append(record)
        return self

    # ---- inference --------------------------------------------------------------------------
    def _logits(self, X):
        """Yield (rows, logits) per chunk of X, computed by the backend from coefs_ and intercepts_;
        the logits stay where the backend computes."""
        self._check_fitted()
        self._validate_params()
        ops = get_backend(self.backend)
        X, scale = self._check_X(X)
        params = to_device(ops, self._params())
        rows = min(EVAL_BATCH, len(X))
        acts = activations(ops, layer_sizes(params.weights), rows, self.dtype)
        for start in range(0, len(X), rows):
            chunk = X[start:start + rows]
            # scaled on the host, as gather_batch would: a product in float64, rounded once
            inputs = ops.to_device(np.multiply(chunk, scale, dtype=np.float64).astype(self.dtype))  # (b, C_0)
            view = (inputs,) + tuple(a[:len(chunk)] for a in acts[1:])
            ops.forward(view, params)
            yield slice(start, start + len(chunk)), view[-1]

    def predict_proba(self, X):
        """Class probabilities (N, K) of X (N, C)."""
        ops = get_backend(self.backend)
        probs = []
        for _, logits in self._logits(X):
            out = ops.empty(logits.shape, self.dtype)
            ops.softmax(out, logits)
            probs.append(ops.to_host(out))
        return np.concatenate(probs)

    def predict(self, X):
        """Predicted class (N,) of each row of X (N, C)."""
        ops = get_backend(self.backend)
        labels = []
        for _, logits in self._logits(X):
            out = ops.empty(logits.shape[0], np.int64)
            ops.argmax(out, logits)
            labels.append(ops.to_host(out))
        return np.concatenate(labels)

    def score(self, X, y):
        """Accuracy (fraction correct) of predict(X) against y."""
        y = self._check_y(y, len(X))
        return float(np.mean(self.predict(X) == y))

    # ---- persistence ------------------------------------------------------------------------
    def save(self, path):
        """Write weights.npz (fastnn/checkpoint.py's layout), atomically."""
        if not hasattr(self, "coefs_"):
            raise FastnnError("this MLP is not fitted yet: nothing to save")
        checkpoint.write_weights(path, self._params())

    @classmethod
    def load(cls, path, **params):
        """An MLP holding the weights of `path` (as written by save, or the original program's (1, n)
        biases) and the epochs of the history.json beside it, if any; `params` set the rest (backend,
        dtype, ...). Continue training with fit(warm_start=True)."""
        weights, biases = checkpoint.read_weights(path)
        model = cls(hidden=tuple(w.shape[1] for w in weights[:-1]), **params)
        model._validate_params()
        model.coefs_ = [w.astype(model.dtype) for w in weights]
        model.intercepts_ = [b.astype(model.dtype) for b in biases]
        model.history_ = checkpoint.read_history(path)
        return model
