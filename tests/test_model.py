"""The MLP: the seed preset against the original program's formulas, save/load, resume, clear errors."""
import re

import numpy as np
import pytest

from fastnn import checkpoint
from fastnn.backends import CPU_BACKENDS
from fastnn.fileio import FastnnError
from fastnn.model import MLP
from fastnn.settings import PRESETS

SEED_PARAMS = {k: v for k, v in PRESETS["seed"].items() if k not in ("hidden", "backend")}


def original_program_steps(X, y, W1, b1, W2, b2, lr, batch):
    """A straightforward transcription of the original program's math (784-128-10, plain SGD)."""
    W1, b1, W2, b2 = W1.copy(), b1.copy(), W2.copy(), b2.copy()
    for start in range(0, len(X), batch):
        x = X[start:start + batch] / 255.0
        Y = np.eye(10)[y[start:start + batch]]
        m = x.shape[0]
        Z1 = x @ W1 + b1
        A1 = np.maximum(0, Z1)
        Z2 = A1 @ W2 + b2
        exp = np.exp(Z2 - Z2.max(axis=1, keepdims=True))
        A2 = exp / exp.sum(axis=1, keepdims=True)
        dZ2 = (A2 - Y) / m
        dW2, db2 = A1.T @ dZ2, dZ2.sum(axis=0, keepdims=True)
        dZ1 = (dZ2 @ W2.T) * (Z1 > 0)
        dW1, db1 = x.T @ dZ1, dZ1.sum(axis=0, keepdims=True)
        W1, b1, W2, b2 = W1 - lr * dW1, b1 - lr * db1, W2 - lr * dW2, b2 - lr * db2
    return W1, b1, W2, b2


def original_init(tmp_path):
    """He init as the original program did it, saved in its layout ((1, n) biases)."""
    rng = np.random.RandomState(42)
    W1 = rng.randn(784, 128) * np.sqrt(2 / 784)
    W2 = rng.randn(128, 10) * np.sqrt(2 / 128)
    b1, b2 = np.zeros((1, 128)), np.zeros((1, 10))
    np.savez(tmp_path / "init.npz", W1=W1, b1=b1, W2=W2, b2=b2)
    return W1, b1, W2, b2


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-10), ("float32", 2e-4)])
def test_seed_preset_matches_the_original_formulas(mnist, tmp_path, dtype, rtol):
    X, y = mnist.train_images[:64 * 5 + 32], mnist.train_labels[:64 * 5 + 32]  # 5 batches and a partial one
    W1, b1, W2, b2 = original_init(tmp_path)
    params = {**SEED_PARAMS, "epochs": 1, "shuffle": False, "dtype": dtype}
    model = MLP.load(tmp_path / "init.npz", **params).fit(X, y, warm_start=True)
    expected = original_program_steps(X, y, W1, b1, W2, b2, params["lr"], params["batch_size"])
    got = (model.coefs_[0], model.intercepts_[0], model.coefs_[1], model.intercepts_[1])
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e.reshape(g.shape), rtol=rtol, atol=rtol * 1e-2)


def test_save_load_round_trip_gives_identical_predictions(mnist, tmp_path):
    X, y = mnist.train_images[:500], mnist.train_labels[:500]
    model = MLP(hidden=(32, 16), epochs=1, momentum=0.9).fit(X, y)
    model.save(tmp_path / "weights.npz")
    loaded = MLP.load(tmp_path / "weights.npz")
    with np.load(tmp_path / "weights.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == ["W1", "W2", "W3", "b1", "b2", "b3"]
        assert npz["W1"].shape == (784, 32) and npz["b1"].shape == (32,) and npz["W3"].shape == (16, 10)
    assert loaded.hidden == (32, 16)
    np.testing.assert_array_equal(loaded.predict(mnist.test_images), model.predict(mnist.test_images))
    np.testing.assert_array_equal(loaded.predict_proba(mnist.test_images[:50]),
                                  model.predict_proba(mnist.test_images[:50]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train_state.npz", "weights.npz"]  # no temp file left


class Interrupt(Exception):
    pass


def stop_after(epoch):
    def on_epoch(record):
        if record["epoch"] == epoch:
            raise Interrupt
    return on_epoch


# the optimizers' state, dropout's step numbers and early stopping's best weights must all resume
RESUMED_RUNS = {"sgd": dict(lr=0.05, momentum=0.9, weight_decay=1e-3),
                "adam+dropout": dict(optimizer="adam", lr=2e-3, weight_decay=1e-4, dropout=0.3, input_dropout=0.2),
                "adamw+max-norm+early stopping": dict(optimizer="adamw", lr=2e-3, weight_decay=1e-2, max_norm=1.0,
                                                      early_stopping=3)}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("run", RESUMED_RUNS)
def test_an_interrupted_fit_finishes_bitwise_as_if_never_stopped(mnist, tmp_path, backend, run):
    """The optimizer's state, the cosine schedule, the shuffles, the dropout masks and a validation
    split: all continue where they were."""
    X, y = mnist.train_images[:1000], mnist.train_labels[:1000]
    params = dict(hidden=(32, 16), epochs=4, schedule="cosine", validation_fraction=0.1, batch_size=64,
                  backend=backend, **RESUMED_RUNS[run])
    straight = MLP(**params).fit(X, y)
    stopped = MLP(**params)
    with pytest.raises(Interrupt):
        stopped.fit(X, y, on_epoch=stop_after(2))
    stopped.save(tmp_path / "weights.npz")
    resumed = MLP.load(tmp_path / "weights.npz", **{k: v for k, v in params.items() if k != "hidden"})
    assert resumed.n_iter_ == 2 and resumed.run_state_.done == 2
    resumed.fit(X, y, warm_start=True)
    for a, b in zip(straight.coefs_ + straight.intercepts_, resumed.coefs_ + resumed.intercepts_):
        np.testing.assert_array_equal(a, b)
    assert [r["loss"] for r in resumed.history_] == [r["loss"] for r in straight.history_]
    assert [r["val_accuracy"] for r in resumed.history_] == [r["val_accuracy"] for r in straight.history_]


def test_a_finished_fit_trains_on_as_a_new_run(mnist):
    X, y = mnist.train_images[:640], mnist.train_labels[:640]
    params = dict(hidden=(16,), lr=0.05, shuffle=False, dtype="float64")
    straight = MLP(epochs=2, **params).fit(X, y)
    resumed = MLP(epochs=1, **params).fit(X, y)
    resumed.fit(X, y, warm_start=True)  # constant rate, no momentum, no shuffle: a new run is the same math
    assert resumed.n_iter_ == 2 and resumed.run_state_.first_epoch == 2
    for a, b in zip(straight.coefs_ + straight.intercepts_, resumed.coefs_ + resumed.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize("change, message", [
    ({"lr": 0.1}, "lr=0.05 (now 0.1)"),
    ({"epochs": 5}, "epochs=3 (now 5)"),
    ({"rows": 500}, "rows=600 (now 500)"),
    ({"labels": True}, "data_crc32="),
])
def test_an_interrupted_fit_refuses_other_settings_or_data(mnist, tmp_path, change, message):
    X, y = mnist.train_images[:600], mnist.train_labels[:600].copy()
    params = dict(hidden=(8,), epochs=3, lr=0.05)
    model = MLP(**params)
    with pytest.raises(Interrupt):
        model.fit(X, y, on_epoch=stop_after(1))
    model.lr, model.epochs = change.get("lr", model.lr), change.get("epochs", model.epochs)
    if "rows" in change:
        X, y = X[:change["rows"]], y[:change["rows"]]
    if "labels" in change:
        y[0] = (y[0] + 1) % 10
    with pytest.raises(FastnnError, match=r"stopped at epoch 1 of 3 and can only be finished with the settings "
                                          r"and data it started with: it had .*" + re.escape(message)):
        model.fit(X, y, warm_start=True)


def test_a_train_state_that_belongs_to_other_weights_is_refused(mnist, tmp_path):
    model = MLP(hidden=(8,), epochs=1).fit(mnist.train_images[:300], mnist.train_labels[:300])
    model.save(tmp_path / "weights.npz")
    model.coefs_[0][0, 0] += 1  # as if weights.npz had been replaced after the state was written
    checkpoint.write_weights(tmp_path / "weights.npz", model._params())
    with pytest.raises(FastnnError, match="train_state.npz belongs to other weights than"):
        MLP.load(tmp_path / "weights.npz")


def test_fit_records_history_and_learns(mnist):
    X, y = mnist.train_images[:2000], mnist.train_labels[:2000]
    model = MLP(hidden=(64,), epochs=3, lr=0.1, validation_fraction=0.1)

    def score_test_set(record):  # the CLI's way of scoring the test set after every epoch
        record["test_accuracy"] = model.score(mnist.test_images[:1000], mnist.test_labels[:1000])

    model.fit(X, y, on_epoch=score_test_set)
    assert [h["epoch"] for h in model.history_] == [1, 2, 3] and model.n_iter_ == 3
    assert model.loss_curve_ == [h["loss"] for h in model.history_]
    assert model.loss_curve_[2] < model.loss_curve_[0]
    assert model.history_[-1]["test_accuracy"] > 0.75 and model.history_[-1]["val_accuracy"] > 0.75  # chance: 0.1
    probs = model.predict_proba(mnist.test_images[:10])
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    assert model.score(mnist.test_images[:1000], mnist.test_labels[:1000]) == model.history_[-1]["test_accuracy"]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_predict_uses_what_coefs_hold(mnist, backend):
    model = MLP(hidden=(16,), epochs=1, backend=backend).fit(mnist.train_images[:300], mnist.train_labels[:300])
    model.intercepts_[-1] = np.zeros(10, np.float32)
    model.intercepts_[-1][3] = 1e6  # class 3 wins everywhere
    assert (model.predict(mnist.test_images[:20]) == 3).all()


def test_load_keeps_counting_the_epochs_of_the_history_beside_the_weights(mnist, tmp_path):
    model = MLP(hidden=(16,), epochs=2).fit(mnist.train_images[:300], mnist.train_labels[:300])
    model.save(tmp_path / "weights.npz")
    checkpoint.write_history(tmp_path / checkpoint.HISTORY, {}, model.history_)
    loaded = MLP.load(tmp_path / "weights.npz", epochs=1)
    assert loaded.n_iter_ == 2 and loaded.loss_curve_ == model.loss_curve_
    loaded.fit(mnist.train_images[:300], mnist.train_labels[:300], warm_start=True)
    assert [h["epoch"] for h in loaded.history_] == [1, 2, 3]


@pytest.mark.parametrize("params, message", [
    ({"backend": "tpu"}, "The 'backend' parameter of MLP must be one of ['cuda', 'numba', 'numpy']. Got 'tpu'"),
    ({"hidden": (0,)}, "The 'hidden' parameter of MLP must be a tuple of positive ints"),
    ({"lr": -1.0}, "The 'lr' parameter of MLP must be a float > 0. Got -1.0"),
    ({"momentum": 1.5}, "The 'momentum' parameter of MLP must be a float in [0, 1)"),
    ({"dtype": "float16"}, "The 'dtype' parameter of MLP must be one of ['float32', 'float64']"),
    ({"batch_size": 0}, "The 'batch_size' parameter of MLP must be an int >= 1"),
    ({"seed": -1}, "The 'seed' parameter of MLP must be an int >= 0. Got -1 instead."),
    ({"seed": 1.5}, "The 'seed' parameter of MLP must be an int >= 0. Got 1.5 instead."),
    ({"optimizer": "rmsprop"}, "The 'optimizer' parameter of MLP must be one of ['sgd', 'adam', 'adamw']"),
    ({"dropout": 1.0}, "The 'dropout' parameter of MLP must be a float in [0, 1). Got 1.0"),
    ({"beta2": -0.1}, "The 'beta2' parameter of MLP must be a float in [0, 1)"),
    ({"eps": 0}, "The 'eps' parameter of MLP must be a float > 0"),
    ({"max_norm": -1}, "The 'max_norm' parameter of MLP must be a float >= 0"),
    ({"early_stopping": 2.5}, "The 'early_stopping' parameter of MLP must be an int >= 0"),
    ({"early_stopping": 3}, "early_stopping watches the validation accuracy: set validation_fraction"),
    ({"epochs": True}, "The 'epochs' parameter of MLP must be an int >= 1. Got True"),
])
def test_parameter_errors_follow_one_template(params, message):
    with pytest.raises(FastnnError) as e:
        MLP(**params).fit(np.zeros((4, 3), np.uint8), np.array([0, 1, 0, 1]))
    assert str(e.value).startswith(message)


def test_bad_data_is_rejected_clearly():
    with pytest.raises(FastnnError, match="NaN or infinite"):
        MLP().fit(np.array([[0.0, np.nan]]), np.array([0]))
    with pytest.raises(FastnnError, match="1-D array of 2 integer class labels"):
        MLP().fit(np.zeros((2, 3)), np.array([0.5, 1.0]))
    with pytest.raises(FastnnError, match="not fitted"):
        MLP().predict(np.zeros((1, 3)))
    with pytest.raises(FastnnError, match="holds integers from -1 to 300: integer inputs are read as grey levels"):
        MLP().fit(np.array([[0, 300], [-1, 5]]), np.array([0, 1]))
    with pytest.raises(FastnnError, match="must hold numbers .* got dtype bool"):
        MLP().fit(np.zeros((2, 3), bool), np.array([0, 1]))
    with pytest.raises(FastnnError, match=r"validation_fraction=0.2 of 4 rows holds out no row: use at least 0.25"):
        MLP(validation_fraction=0.2).fit(np.zeros((4, 3), np.uint8), np.array([0, 1, 0, 1]))


def test_integer_pixels_of_any_type_are_grey_levels(mnist):
    """int64 values 0..255 train exactly as the same uint8 pixels (scaled by 1/255), not unscaled."""
    X, y = mnist.train_images[:300], mnist.train_labels[:300]
    as_bytes = MLP(hidden=(16,), epochs=1).fit(X, y)
    as_int64 = MLP(hidden=(16,), epochs=1).fit(X.astype(np.int64), y)
    for a, b in zip(as_bytes.coefs_, as_int64.coefs_):
        np.testing.assert_array_equal(a, b)


def test_n_classes_sets_the_output_layer_whatever_labels_the_sample_holds(mnist):
    X, y = mnist.train_images[:3], mnist.train_labels[:3]  # labels 5, 0, 4
    assert MLP(hidden=(8,), epochs=1).fit(X, y).coefs_[-1].shape == (8, 6)  # default: y.max() + 1
    assert MLP(hidden=(8,), epochs=1).fit(X, y, n_classes=10).coefs_[-1].shape == (8, 10)
    with pytest.raises(FastnnError, match="the model has 6 outputs but the data has 10 classes"):
        MLP(hidden=(8,), epochs=1).fit(X, y).fit(X, y, warm_start=True, n_classes=10)


def test_weights_beyond_float32s_range_are_refused_not_made_infinite(tmp_path):
    np.savez(tmp_path / "w.npz", W1=np.full((3, 2), 1e39), b1=np.zeros(2))  # finite in float64
    with pytest.raises(FastnnError, match="W1 or b1 holds values beyond float32's range: load it with dtype float64"):
        MLP.load(tmp_path / "w.npz")
    assert MLP.load(tmp_path / "w.npz", dtype="float64").coefs_[0][0, 0] == 1e39


def test_numba_and_numpy_agree_on_test_accuracy_after_two_epochs(mnist):
    """The seed preset for 2 epochs on all of MNIST: the backends' float32 sums differ in order only."""
    accuracy = {}
    for backend in CPU_BACKENDS:
        model = MLP(hidden=(128,), backend=backend, **dict(SEED_PARAMS, epochs=2))
        model.fit(mnist.train_images, mnist.train_labels)
        accuracy[backend] = model.score(mnist.test_images, mnist.test_labels)
    assert accuracy["numpy"] > 0.9
    assert abs(accuracy["numba"] - accuracy["numpy"]) <= 0.003, accuracy


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_diverging_learning_rate_stops_with_a_clear_message(mnist, backend):
    X, y = mnist.train_images[:256], mnist.train_labels[:256]
    with pytest.raises(FastnnError, match="training diverged at epoch 1, step .*lower the learning rate"):
        MLP(hidden=(16,), lr=1e4, epochs=2, backend=backend).fit(X, y, progress=False)
    with pytest.raises(FastnnError, match=r"training diverged at epoch 2, step 1 \(loss nan\)"):
        model = MLP(hidden=(16,), epochs=1, backend=backend).fit(X, y)  # weights broken by hand: NaN reaches the loss
        model.coefs_[0][0, :] = np.nan
        model.fit(X.astype(np.float32) + 1, y, warm_start=True)


def test_early_stopping_stops_keeps_the_best_weights_and_says_why(mnist):
    """A learning rate that overshoots after a few epochs: the validation accuracy stops improving."""
    X, y = mnist.train_images[:1500], mnist.train_labels[:1500]
    kept = {}

    def remember(record):  # the weights of every epoch, before early stopping picks one
        kept[record["epoch"]] = [w.copy() for w in model.coefs_]

    model = MLP(hidden=(32,), epochs=40, lr=0.5, momentum=0.9, validation_fraction=0.2, early_stopping=2, seed=3)
    model.fit(X, y, on_epoch=remember)
    history = model.history_
    note = history[-1]["early_stopping"]
    best = max(history, key=lambda r: r["val_accuracy"])
    assert note["stopped"] and len(history) < 40 and len(history) == best["epoch"] + 2
    assert note["best_epoch"] == best["epoch"] and note["best_val_accuracy"] == best["val_accuracy"]
    assert f"stopped after epoch {len(history)} of 40" in note["reason"]
    assert all("early_stopping" not in r for r in history[:-1])
    for got, want in zip(model.coefs_, kept[best["epoch"]] if best["epoch"] < len(history) else kept[len(history)]):
        np.testing.assert_array_equal(got, want)
    assert model.run_state_.finished and model.run_state_.best is None
    assert model.score(X[:300], y[:300]) >= 0  # the kept weights predict


def test_early_stopping_that_never_triggers_still_keeps_the_best_epoch(mnist):
    X, y = mnist.train_images[:1000], mnist.train_labels[:1000]
    model = MLP(hidden=(16,), epochs=3, lr=0.05, validation_fraction=0.2, early_stopping=5).fit(X, y)
    note = model.history_[-1]["early_stopping"]
    assert not note["stopped"] and "ran every epoch" in note["reason"]
    assert len(model.history_) == 3


def test_validation_loss_is_the_cross_entropy_of_the_held_out_rows(mnist):
    X, y = mnist.train_images[:600], mnist.train_labels[:600]
    model = MLP(hidden=(16,), epochs=2, validation_fraction=0.25, shuffle=False).fit(X, y)
    record = model.history_[-1]
    val_rows = np.random.default_rng([model.seed, 0]).permutation(len(X))[:150]  # fit's split of a first run
    probs = model.predict_proba(X[val_rows])
    assert record["val_loss"] == pytest.approx(-np.mean(np.log(probs[np.arange(150), y[val_rows]])), rel=1e-5)
    assert record["val_accuracy"] == model.score(X[val_rows], y[val_rows])
    assert MLP(hidden=(16,), epochs=1).fit(X, y).history_[0]["val_loss"] is None


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_adam_dropout_and_max_norm_train_and_dropout_is_off_at_inference(mnist, backend):
    X, y = mnist.train_images[:2000], mnist.train_labels[:2000]
    model = MLP(hidden=(64, 32), epochs=3, optimizer="adamw", lr=3e-3, weight_decay=1e-2, dropout=0.3,
                max_norm=2.0, batch_size=64, backend=backend).fit(X, y)
    assert model.history_[-1]["train_accuracy"] > 0.7  # measured with dropout on: below the test accuracy
    assert model.score(mnist.test_images[:1000], mnist.test_labels[:1000]) > 0.8  # measured: 0.84
    np.testing.assert_array_equal(model.predict_proba(X[:50]), model.predict_proba(X[:50]))  # no masks at inference
    for w in model.coefs_:  # every unit's incoming weights within the limit (to float32 rounding)
        assert np.sqrt((w.astype(np.float64) ** 2).sum(axis=0)).max() <= 2.0 * (1 + 1e-6)
