"""MLP: a multilayer perceptron classifier with a scikit-learn style API, on any fastnn backend.

    model = MLP(hidden=(128,), backend="numba").fit(X_train, y_train)
    model.score(X_test, y_test), model.predict(X), model.predict_proba(X), model.save("weights.npz")

The model checks its parameters and data, then hands the work on: the training loop to
fastnn/training.py, the math to the backend, the files to fastnn/checkpoint.py.
"""
import inspect
import math
import zlib
from pathlib import Path

import numpy as np

from fastnn import checkpoint, training
from fastnn.backends import BACKENDS, get_backend
from fastnn.fileio import FastnnError
from fastnn.ops import hash32
from fastnn.step import OPTIMIZERS, Hyper, Layers, activations, he_init, layer_sizes, to_device

DTYPES = ("float32", "float64")
EVAL_BATCH = 2000  # rows per inference chunk: bounds memory, big enough to keep the kernels busy


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value):
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _param_error(name, allowed, got):
    """The one template for a bad parameter (scikit-learn's)."""
    return FastnnError(f"The {name!r} parameter of MLP must be {allowed}. Got {got!r} instead.")


class MLP:
    """Multilayer perceptron: input -> hidden ReLU layers -> softmax, trained by mini-batch SGD or Adam.

    Parameters
    ----------
    hidden : tuple of int, sizes of the hidden layers, e.g. (128,) or (512, 256).
    backend : {"numpy", "numba", "cuda"}, which implementation of the ops runs the math.
    optimizer : {"sgd", "adam", "adamw"}: SGD with momentum; Adam (Kingma & Ba) with weight decay as an
        L2 term in the gradient; AdamW, Adam with decoupled weight decay (Loshchilov & Hutter).
    lr : float, learning rate (the peak rate when `schedule="cosine"`).
    momentum : float in [0, 1), SGD's momentum (0 = plain SGD; Adam uses beta1 instead).
    weight_decay : float >= 0, the L2 penalty (SGD, Adam) or the decoupled decay rate (AdamW).
    beta1, beta2, eps : Adam's decay rates of its two moment estimates, and the term that keeps its
        division finite.
    dropout : float in [0, 1), the rate of inverted dropout on every hidden layer's output in training.
    input_dropout : float in [0, 1), the rate of inverted dropout on the input features in training.
    max_norm : float >= 0, the largest L2 norm of a unit's incoming weights, enforced after every
        update; 0 = no limit.
    batch_size, epochs : int.
    schedule : {"constant", "cosine"}, learning rate per step: fixed, or cosine decay to 0 over the run.
    validation_fraction : float in [0, 1), share of the training set held out to report `val_accuracy`.
    early_stopping : int >= 0, stop after this many epochs without a better validation accuracy and
        keep the best epoch's weights; 0 = train every epoch. Needs validation_fraction > 0.
    shuffle : bool, reshuffle the training set every epoch (False: batches in the order given).
    dtype : {"float32", "float64"}.
    seed : int >= 0, seeds the He-normal initialisation, the validation split, the per-epoch shuffles
        and the dropout masks.

    Attributes (after fit or load)
    ------------------------------
    coefs_, intercepts_ : lists of weights (C_in, C_out) and biases (C_out,), NumPy arrays; predict
        uses what they hold.
    history_ : one dict per epoch (see `fit`).  loss_curve_ : mean training loss per epoch.
    n_iter_ : epochs trained so far (including those before a resume).  classes_ : 0..K-1.
    run_state_ : how far the last fit got (a checkpoint.RunState), None before any: what finishing an
        interrupted run needs besides the weights; `save` writes it beside them.
    """

    def __init__(self, hidden=(128,), backend="numpy", optimizer="sgd", lr=0.01, momentum=0.0, weight_decay=0.0,
                 beta1=0.9, beta2=0.999, eps=1e-8, dropout=0.0, input_dropout=0.0, max_norm=0.0, batch_size=64,
                 epochs=10, schedule="constant", validation_fraction=0.0, early_stopping=0, shuffle=True,
                 dtype="float32", seed=42):
        self.hidden = hidden
        self.backend = backend
        self.optimizer = optimizer
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.dropout = dropout
        self.input_dropout = input_dropout
        self.max_norm = max_norm
        self.batch_size = batch_size
        self.epochs = epochs
        self.schedule = schedule
        self.validation_fraction = validation_fraction
        self.early_stopping = early_stopping
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
    def check_params(self):
        """Raise FastnnError naming the first parameter that is out of its range; fit does this first."""
        hidden = self.hidden
        if isinstance(hidden, int) or not all(isinstance(h, (int, np.integer)) and h > 0 for h in hidden):
            raise _param_error("hidden", "a tuple of positive ints", hidden)
        if self.backend not in BACKENDS:
            raise _param_error("backend", f"one of {sorted(BACKENDS)}", self.backend)
        if self.dtype not in DTYPES:
            raise _param_error("dtype", f"one of {list(DTYPES)}", self.dtype)
        if self.schedule not in training.SCHEDULES:
            raise _param_error("schedule", f"one of {list(training.SCHEDULES)}", self.schedule)
        if self.optimizer not in OPTIMIZERS:
            raise _param_error("optimizer", f"one of {list(OPTIMIZERS)}", self.optimizer)
        for name in ("batch_size", "epochs"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise _param_error(name, "an int >= 1", value)
        if not _is_int(self.early_stopping) or self.early_stopping < 0:
            raise _param_error("early_stopping", "an int >= 0 (epochs without improvement; 0 = off)",
                               self.early_stopping)
        for name in ("lr", "eps"):
            value = getattr(self, name)
            if not (_is_real(value) and 0 < value < math.inf):
                raise _param_error(name, "a float > 0", value)
        for name in ("momentum", "beta1", "beta2", "dropout", "input_dropout", "validation_fraction"):
            value = getattr(self, name)
            if not (_is_real(value) and 0 <= value < 1):
                raise _param_error(name, "a float in [0, 1)", value)
        for name in ("weight_decay", "max_norm"):
            value = getattr(self, name)
            if not (_is_real(value) and 0 <= value < math.inf):
                raise _param_error(name, "a float >= 0", value)
        if self.early_stopping and not self.validation_fraction:
            raise FastnnError("early_stopping watches the validation accuracy: set validation_fraction "
                              "(say 0.1; --validation 0.1 on the command line) or early_stopping=0")
        if not _is_int(self.seed) or self.seed < 0:
            raise _param_error("seed", "an int >= 0", self.seed)  # NumPy's generators take no negative seed

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
        n_val = int(len(X) * self.validation_fraction)
        if self.validation_fraction and not n_val:
            raise FastnnError(f"validation_fraction={self.validation_fraction} of {len(X)} rows holds out no row: "
                              f"use at least {1 / len(X):.2g}, or 0 for no validation split")
        if not (warm_start and hasattr(self, "coefs_")):
            n_classes = int(y.max()) + 1 if n_classes is None else n_classes
            params = he_init((X.shape[1], *self.hidden, n_classes), self.dtype, self.seed)
            self.coefs_, self.intercepts_ = list(params.weights), list(params.biases)
            self.history_, self.run_state_ = [], None
        classes = self.coefs_[-1].shape[1]
        if n_classes is not None and n_classes != classes:
            raise FastnnError(f"the model has {classes} outputs but the data has {n_classes} classes")
        if y.max() >= classes:
            raise FastnnError(f"y holds label {y.max()} but the model has {classes} classes")

        settings = self._run_settings(X, y)
        state = self.run_state_ if warm_start else None
        if state is not None and not state.finished:  # an interrupted run: finish it
            self._check_continuation(state, settings)
            first_epoch, done, optimizer, best = state.first_epoch, state.done, state.optimizer, state.best
        else:
            first_epoch, done, optimizer, best = self.n_iter_ + 1, 0, None, None
        # one generator per run, seeded by where the run starts: the validation split, then the shuffles
        rng = np.random.default_rng([self.seed, first_epoch - 1])
        order = rng.permutation(len(X)) if n_val else np.arange(len(X))
        train_rows, val_rows = order[n_val:], order[:n_val]
        if done:
            rng.bit_generator.state = state.rng_state  # where the shuffles were after epoch `done`
        # the dropout masks' seed: another run of the same model (a warm start) draws other masks
        dropout_seed = int(hash32(hash32(self.seed & 0xFFFFFFFF) ^ first_epoch))
        loop = self.training_settings(dropout_seed)
        data = ops.prepare_data(X, y, scale)
        for epoch in training.fit(ops, self._params(), data, train_rows, loop, rng, first_epoch, progress,
                                  optimizer, done):
            params = epoch.params
            self.coefs_, self.intercepts_ = list(params.weights), list(params.biases)
            val_loss, val_accuracy = self._loss_and_accuracy(X[val_rows], y[val_rows]) if n_val else (None, None)
            record = {"epoch": epoch.number, "loss": epoch.loss, "train_accuracy": epoch.n_correct / len(train_rows),
                      "val_loss": val_loss, "val_accuracy": val_accuracy, "seconds": epoch.seconds, "lr": epoch.lr}
            if epoch.number == first_epoch + done:  # the fit's first epoch
                record["compile_seconds"] = epoch.compile_seconds
            self.history_.append(record)
            if self.early_stopping:
                best_record = self._best_record(first_epoch)
                best = params if best_record is record else best
                stop = epoch.number - best_record["epoch"] >= self.early_stopping
                if stop or epoch.number == first_epoch - 1 + self.epochs:  # the run ends: keep the best weights
                    record["early_stopping"] = self._early_stop_note(best_record, stop, first_epoch)
                    params, best = best, None
                    self.coefs_, self.intercepts_ = list(params.weights), list(params.biases)
            self.run_state_ = checkpoint.RunState(
                first_epoch, self.epochs, epoch.number - first_epoch + 1, epoch.optimizer, rng.bit_generator.state,
                settings, list(self.history_), checkpoint.weights_digest(params), best)
            if on_epoch is not None:
                on_epoch(record)
            if self.run_state_.finished:
                break
        return self

    def training_settings(self, dropout_seed=0):
        """The training loop's settings (a training.Settings) from these parameters, as fit runs them
        (fit checks the parameters first). dropout_seed: the seed of the dropout masks (fit derives it
        from seed and the run's first epoch)."""
        hyper = Hyper(momentum=self.momentum, weight_decay=self.weight_decay, optimizer=OPTIMIZERS[self.optimizer],
                      beta1=self.beta1, beta2=self.beta2, eps=self.eps, dropout=self.dropout, dropout_seed=dropout_seed,
                      max_norm=self.max_norm, input_dropout=self.input_dropout)
        return training.Settings(batch_size=self.batch_size, epochs=self.epochs, lr=self.lr, schedule=self.schedule,
                                 hyper=hyper, shuffle=self.shuffle)

    def _best_record(self, first_epoch):
        """The record of this run's epoch with the highest validation accuracy (the first, on ties)."""
        return max(self.history_[first_epoch - 1:], key=lambda record: record["val_accuracy"])

    def _early_stop_note(self, best_record, stopped, first_epoch):
        """What early stopping did, for the run's last record."""
        best, val = best_record["epoch"], best_record["val_accuracy"]
        last = self.history_[-1]["epoch"]
        reason = (f"no validation accuracy above {val:.2%} (epoch {best}) for {self.early_stopping} epochs: "
                  f"stopped after epoch {last} of {first_epoch - 1 + self.epochs}" if stopped
                  else f"ran every epoch; the best validation accuracy was {val:.2%}, at epoch {best}")
        return {"stopped": stopped, "best_epoch": best, "best_val_accuracy": val,
                "reason": f"{reason}; kept the weights of epoch {best}"}

    def _run_settings(self, X, y):
        """What a run's trajectory depends on besides the weights: checked before finishing a run."""
        # every parameter but the layer sizes (the weights hold them) and the backend; plain Python numbers
        # (a GridSearchCV may set NumPy ones): the settings are stored as JSON
        names = [name for name in inspect.signature(MLP).parameters if name not in ("hidden", "backend")]
        settings = {name: getattr(self, name) for name in names}
        settings = {k: v.item() if isinstance(v, np.generic) else v for k, v in settings.items()}
        return {**settings, "rows": len(X),
                # a fingerprint of the data (~30 ms for MNIST): another --limit or dataset is another run
                "data_crc32": zlib.crc32(y, zlib.crc32(X))}

    @staticmethod
    def _check_continuation(state, settings):
        changed = [f"{k}={state.settings.get(k)!r} (now {v!r})" for k, v in settings.items()
                   if state.settings.get(k) != v]
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
        probs = MLP.predict_proba(self, X)  # (N, K); MLP's own: a subclass's (fastnn.estimator) checks X again
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
