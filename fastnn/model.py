"""MLP: a multilayer perceptron classifier with a scikit-learn style API, on any fastnn backend.

    model = MLP(hidden=(128,), backend="numba").fit(X_train, y_train)
    model.score(X_test, y_test), model.predict(X), model.predict_proba(X), model.save("weights.npz")

The model checks its parameters and data, then hands the work on: the training loop to
fastnn/loop.py, the math to the backend, the files to fastnn/checkpoint.py.
"""
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fastnn import checkpoint, loop, settings
from fastnn.backends import get_backend
from fastnn.bundles import Layers, activations, he_init, hyper_of, layer_sizes, to_device
from fastnn.early_stopping import EarlyStopping
from fastnn.fileio import FastnnError
from fastnn.ops import hash32

EVAL_BATCH = 2000  # rows per inference chunk: bounds memory, big enough to keep the kernels busy


class RunStart(NamedTuple):
    """Where a fit's run starts: a new run, or the rest of an interrupted one."""
    first_epoch: int  # the number of the run's first epoch
    done: int  # epochs of the run already trained (an interrupted run's), 0 for a new run
    optimizer: object  # the OptimizerState to go on from; None: zeros
    rng: np.random.Generator  # the shuffles' generator, where the run's next epoch draws
    train_rows: np.ndarray  # (N - V,) the rows trained on
    val_rows: np.ndarray  # (V,) the rows held out for val_accuracy
    early_stopping: EarlyStopping  # None without early stopping


class MLP:
    """Multilayer perceptron: input -> hidden ReLU layers -> softmax, trained by mini-batch SGD or Adam.

    Its parameters are the settings of fastnn/settings.py, keyword arguments, listed below.

    Attributes (after fit or load)
    ------------------------------
    coefs_, intercepts_ : lists of weights (C_in, C_out) and biases (C_out,), NumPy arrays; predict
        uses what they hold.
    history_ : one dict per epoch (see `fit`).  loss_curve_ : mean training loss per epoch.
    n_iter_ : epochs trained so far (including those before a resume).  classes_ : 0..K-1.
    run_state_ : how far the last fit got (a checkpoint.RunState), None before any: what finishing an
        interrupted run needs besides the weights; `save` writes it beside them.
    """

    __init__ = settings.init_method(settings.DEFAULTS)
    __doc__ += "\n" + settings.parameters_doc(settings.DEFAULTS)

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
    def check_params(self):
        """Raise FastnnError naming the first parameter that is out of its range; fit does this first."""
        settings.check(settings.values_of(self))

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
        if np.issubdtype(X.dtype, np.integer):  # grey levels 0..255: kept as bytes, scaled as batches are gathered
            if X.dtype != np.uint8 and (X.min() < 0 or X.max() > 255):
                raise FastnnError(f"{name} holds integers from {X.min()} to {X.max()}: integer inputs are read as "
                                  f"grey levels 0..255 (and scaled by 1/255); pass other features as floats")
            return np.ascontiguousarray(X, dtype=np.uint8), 1 / 255
        if not np.issubdtype(X.dtype, np.floating):
            raise FastnnError(f"{name} must hold numbers (uint8 grey levels or floats); got dtype {X.dtype}")
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
    def fit(self, X, y, warm_start=False, progress=False, on_epoch=None, n_classes=None):
        """Train for `self.epochs` epochs and return self.

        X (N, C) uint8 pixels (or other integer grey levels 0..255; scaled by 1/255 as batches are
        gathered) or floats; y (N,) int labels in 0..n_classes-1. n_classes: the output layer's width
        for a new model (default: y.max() + 1; a dataset's class count when y is a sample of it).
        warm_start: continue from the current weights and history (after `load` or an earlier fit)
        instead of initialising new ones. If the last run stopped before its last epoch (`run_state_`
        says how far it got), this finishes it bitwise as if it had never stopped: optimizer state,
        schedule, shuffles and dropout masks where they were; it then needs the same settings and data.
        Otherwise it trains `self.epochs` more epochs as a new run. progress: show a progress bar per epoch.
        on_epoch(record): called after each epoch with its history record, coefs_, history_ and
        run_state_ already updated; it may add entries (say, "test_accuracy") to the record.
        A record: epoch, loss (mean over the epoch's batches), train_accuracy (of those batches, each
        before its update), val_loss and val_accuracy (mean cross-entropy and accuracy on the validation
        split, None without one), seconds (training only: shuffle, steps, copying the weights back), lr
        (of the epoch's last step); the fit's first record also has compile_seconds (the backend compiling
        or loading its train_steps before it: 0.0 for numpy); with early stopping,
        the run's last record also has early_stopping: {stopped, best_epoch, best_val_accuracy, reason},
        and the model then holds the best epoch's weights.
        """
        self.check_params()
        ops = get_backend(self.backend)
        X, scale = self._check_X(X)
        y = self._check_y(y, X.shape[0])
        if not (warm_start and hasattr(self, "coefs_")):
            n_outputs = int(y.max()) + 1 if n_classes is None else n_classes
            self._set_params(he_init((X.shape[1], *self.hidden, n_outputs), self.dtype, self.seed))
            self.history_, self.run_state_ = [], None
        self._check_classes(y, n_classes)
        fingerprint = self._run_settings(X, y)
        run = self._start_run(len(X), fingerprint, self.run_state_ if warm_start else None)
        # the dropout masks' seed: another run of the same model (a warm start) draws other masks
        dropout_seed = int(hash32(hash32(self.seed & 0xFFFFFFFF) ^ run.first_epoch))
        data = ops.prepare_data(X, y, scale)
        for epoch in loop.fit(ops, self._params(), data, run.train_rows, self.training_settings(dropout_seed), run.rng,
                              run.first_epoch, progress, run.optimizer, run.done):
            record = self._epoch_record(epoch, X[run.val_rows], y[run.val_rows], len(run.train_rows))
            if epoch.number == run.first_epoch + run.done:  # the fit's first epoch
                record["compile_seconds"] = epoch.compile_seconds
            self.history_.append(record)
            params = epoch.params
            if run.early_stopping is not None:  # at the run's end: the best epoch's
                params = run.early_stopping.after_epoch(record, params)
            self._set_params(params)
            self.run_state_ = checkpoint.RunState(
                run.first_epoch, self.epochs, epoch.number - run.first_epoch + 1, epoch.optimizer,
                run.rng.bit_generator.state, fingerprint, list(self.history_), checkpoint.weights_digest(params),
                None if run.early_stopping is None else run.early_stopping.best)
            if on_epoch is not None:
                on_epoch(record)
            if self.run_state_.finished:
                break
        return self

    def training_settings(self, dropout_seed=0):
        """The training loop's settings (a loop.Settings) from these parameters, as fit runs them
        (fit checks the parameters first). dropout_seed: the seed of the dropout masks (fit derives it
        from seed and the run's first epoch)."""
        values = settings.values_of(self)
        return loop.Settings(**{name: values[name] for name in loop.Settings._fields if name != "hyper"},
                             hyper=hyper_of(values, dropout_seed))

    def _set_params(self, params):
        """coefs_ and intercepts_ from a Layers of host arrays."""
        self.coefs_, self.intercepts_ = list(params.weights), list(params.biases)

    def _check_classes(self, y, n_classes):
        """Refuse labels, or a class count, that the output layer does not have."""
        classes = self.coefs_[-1].shape[1]
        if n_classes is not None and n_classes != classes:
            raise FastnnError(f"the model has {classes} outputs but the data has {n_classes} classes")
        if y.max() >= classes:
            raise FastnnError(f"y holds label {y.max()} but the model has {classes} classes")

    def _start_run(self, n_rows, fingerprint, state):
        """The RunStart of a fit on n_rows rows: the rest of the run `state` (a RunState) describes if it
        was interrupted (it must have the same fingerprint), else a new run after the epochs so far."""
        n_val = int(n_rows * self.validation_fraction)
        if self.validation_fraction and not n_val:
            raise FastnnError(f"validation_fraction={self.validation_fraction} of {n_rows} rows holds out no row: "
                              f"use at least {1 / n_rows:.2g}, or 0 for no validation split")
        unfinished = state is not None and not state.finished
        if unfinished:
            self._check_continuation(state, fingerprint)
        first_epoch, done = (state.first_epoch, state.done) if unfinished else (self.n_iter_ + 1, 0)
        # one generator per run, seeded by where the run starts: the validation split, then the shuffles
        rng = np.random.default_rng([self.seed, first_epoch - 1])
        order = rng.permutation(n_rows) if n_val else np.arange(n_rows)
        if done:
            rng.bit_generator.state = state.rng_state  # where the shuffles were after epoch `done`
        stopper = None
        if self.early_stopping:
            stopper = EarlyStopping(self.early_stopping, first_epoch - 1 + self.epochs, self.history_[first_epoch - 1:],
                                    state.best if unfinished else None)
        return RunStart(first_epoch, done, state.optimizer if unfinished else None, rng, order[n_val:], order[:n_val],
                        stopper)

    def _epoch_record(self, epoch, X_val, y_val, n_train):
        """The history record of a loop.Epoch (see fit), with the loss and accuracy on X_val, y_val."""
        self._set_params(epoch.params)  # the validation split is scored with the epoch's weights
        val_loss, val_accuracy = self._loss_and_accuracy(X_val, y_val) if len(y_val) else (None, None)
        return {"epoch": epoch.number, "loss": epoch.loss, "train_accuracy": epoch.n_correct / n_train,
                "val_loss": val_loss, "val_accuracy": val_accuracy, "seconds": epoch.seconds, "lr": epoch.lr}

    def _run_settings(self, X, y):
        """What a run's trajectory depends on besides the weights: checked before finishing a run."""
        # the settings marked `resume`, as plain Python values (a GridSearchCV may set NumPy ones): the
        # settings are stored as JSON
        values = {name: value.item() if isinstance(value, np.generic) else value
                  for name, value in settings.values_of(self).items() if settings.SETTINGS[name].resume}
        return {**values, "rows": len(X),
                # a fingerprint of the data (~30 ms for MNIST): another --limit or dataset is another run
                "data_crc32": zlib.crc32(y, zlib.crc32(X))}

    @staticmethod
    def _check_continuation(state, fingerprint):
        """Refuse to finish the interrupted run `state` with other settings or data (a _run_settings)."""
        # a setting the run's version of fastnn did not have yet: it ran with that setting's default
        had = {name: state.settings.get(name, getattr(settings.SETTINGS.get(name), "default", None))
               for name in fingerprint}
        changed = [f"{k}={had[k]!r} (now {v!r})" for k, v in fingerprint.items() if had[k] != v]
        if changed:
            raise FastnnError(f"the run stopped at epoch {state.done} of {state.epochs} and can only be finished "
                              f"with the settings and data it started with: it had {', '.join(changed)}")

    # ---- inference --------------------------------------------------------------------------
    def _logits(self, X):
        """Yield (rows, logits) per chunk of X, computed by the backend from coefs_ and intercepts_;
        the logits stay where the backend computes."""
        self._check_fitted()
        self.check_params()
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

    def _loss_and_accuracy(self, X, y):
        """Mean cross-entropy and accuracy of the model on X, y (y int labels 0..K-1)."""
        probs = self.predict_proba(X)  # (N, K)
        picked = probs[np.arange(len(y)), y].astype(np.float64)  # (N,)
        # a probability that rounded to 0 counts as the smallest positive float, not as an infinite loss
        loss = -np.mean(np.log(np.maximum(picked, np.finfo(probs.dtype).tiny)))
        return float(loss), float(np.mean(probs.argmax(axis=1) == y))

    def score(self, X, y):
        """Accuracy (fraction correct) of predict(X) against y."""
        y = self._check_y(y, len(X))
        return float(np.mean(self.predict(X) == y))

    # ---- persistence ------------------------------------------------------------------------
    def save(self, path):
        """Write weights.npz (fastnn/checkpoint.py's layout) and, after a fit, train_state.npz beside it
        (what finishing an interrupted run needs), each atomically."""
        if not hasattr(self, "coefs_"):
            raise FastnnError("this MLP is not fitted yet: nothing to save")
        checkpoint.write_weights(path, self._params(), self.run_state_)

    @classmethod
    def load(cls, path, **params):
        """An MLP holding the weights of `path` (as written by save, or the original program's (1, n)
        biases), with the epochs and run state saved beside it if any; `params` set the rest (backend,
        dtype, ...). Continue training with fit(warm_start=True)."""
        weights, biases = stored = checkpoint.read_weights(path)
        model = cls(hidden=tuple(w.shape[1] for w in weights[:-1]), **params)
        model.check_params()
        model.coefs_, model.intercepts_ = [], []
        for i, (w, b) in enumerate(zip(weights, biases), start=1):
            with np.errstate(over="ignore"):  # overflow becomes inf, refused just below
                w, b = w.astype(model.dtype), b.astype(model.dtype)
            if not (np.isfinite(w).all() and np.isfinite(b).all()):  # finite float64 beyond float32's range
                raise FastnnError(f"{path}: W{i} or b{i} holds values beyond {model.dtype}'s range: "
                                  f"load it with dtype float64")
            model.coefs_.append(w)
            model.intercepts_.append(b)
        state = checkpoint.read_state(path)
        if state is not None and state.weights_sha256 != checkpoint.weights_digest(stored):
            raise FastnnError(f"{Path(path).with_name(checkpoint.STATE)} belongs to other weights than {path} "
                              f"(another run's, or saved mid-write): move it away to use the weights alone")
        model.run_state_ = state
        model.history_ = state.history if state is not None else checkpoint.read_history(path)
        return model
