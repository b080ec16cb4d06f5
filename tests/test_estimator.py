"""FastnnClassifier: scikit-learn's own estimator checks, any labels, Pipeline, GridSearchCV and
cross_val_score, and a core that works without scikit-learn."""
import inspect
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")  # an optional extra: the rest of the suite runs without it

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import make_blobs  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from fastnn.estimator import FastnnClassifier  # noqa: E402
from fastnn.model import MLP  # noqa: E402


def blobs(labels=(0, 1, 2), n=150):
    """An easy problem: one cluster per label, far apart, on unscaled features (10 to 50)."""
    centers = 30 + 10 * np.arange(len(labels))[:, None] * [1, -1]  # (K, 2)
    X, y = make_blobs(n_samples=n, centers=centers, random_state=0)
    return X, np.asarray(labels)[y]


@parametrize_with_checks([FastnnClassifier()])
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def test_its_parameters_are_mlps_with_three_defaults_changed():
    ours, mlps = (inspect.signature(cls).parameters for cls in (FastnnClassifier, MLP))
    assert list(ours) == list(mlps)  # a parameter added to MLP goes into FastnnClassifier.__init__ too
    assert {name for name in ours if ours[name].default != mlps[name].default} == {"optimizer", "lr", "epochs"}
    values = {name: f"value of {name}" for name in ours}
    assert FastnnClassifier(**values).get_params() == values  # each one handed on to MLP under its name


def test_get_params_set_params_and_clone():
    model = FastnnClassifier(hidden=(8,), lr=0.01)
    assert model.get_params() == {**FastnnClassifier().get_params(), "hidden": (8,), "lr": 0.01}
    assert model.set_params(epochs=3) is model and model.epochs == 3
    copy = clone(model.fit(*blobs()))
    assert copy.get_params() == model.get_params() and not hasattr(copy, "coefs_")


@pytest.mark.parametrize("labels", [("bird", "cat", "dog"), (-1, 1), (3, 7, 10)])
def test_predicts_in_the_labels_it_was_given(labels):
    X, y = blobs(labels)
    model = FastnnClassifier().fit(X, y)
    assert list(model.classes_) == sorted(labels) and model.n_features_in_ == 2
    assert model.predict(X).dtype == y.dtype and model.score(X, y) > 0.95
    assert model.predict_proba(X).shape == (len(X), len(labels))
    np.testing.assert_array_equal(model.classes_[model.predict_proba(X).argmax(axis=1)], model.predict(X))


def test_validation_split_and_early_stopping_with_string_labels():
    X, y = blobs(("bird", "cat", "dog"), n=300)
    model = FastnnClassifier(validation_fraction=0.2, early_stopping=5).fit(X, y)
    assert model.history_[-1]["early_stopping"]["best_val_accuracy"] > 0.95


def test_not_fitted():
    for method in (FastnnClassifier().predict, FastnnClassifier().predict_proba):
        with pytest.raises(NotFittedError):
            method(np.zeros((1, 2)))


def test_pipeline_grid_search_and_cross_validation():
    X, y = blobs(("bird", "cat", "dog"))
    pipe = make_pipeline(StandardScaler(), FastnnClassifier(hidden=(16,)))
    assert pipe.fit(X, y).score(X, y) > 0.95
    search = GridSearchCV(pipe, {"fastnnclassifier__lr": [1e-6, 1e-3]}, cv=3).fit(X, y)
    assert search.best_params_ == {"fastnnclassifier__lr": 1e-3} and search.best_score_ > 0.95
    assert set(search.predict(X)) <= {"bird", "cat", "dog"}
    assert cross_val_score(pipe, X, y, cv=3).min() > 0.9


def test_numba_backend():
    X, y = blobs((-1, 1))
    assert FastnnClassifier(backend="numba", hidden=(16,)).fit(X, y).score(X, y) > 0.95


def test_the_core_needs_no_scikit_learn(tmp_path):
    """fastnn.model and fastnn.train import and train with scikit-learn blocked; fastnn.estimator says
    how to install it."""
    script = f"""
import sys
sys.modules["sklearn"] = None  # `import sklearn` now raises ImportError
import numpy as np
from fastnn import train
from fastnn.model import MLP
MLP(epochs=1).fit(np.random.rand(50, 4), np.arange(50) % 3).predict(np.random.rand(5, 4))
train.main(["--backend", "numpy", "--hidden", "16", "--epochs", "1", "--limit", "500", "--no-plots",
            "--out", {str(tmp_path)!r}])
try:
    import fastnn.estimator
except ImportError as e:
    print(e)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "test accuracy" in done.stdout
    assert "pip install fastnn[sklearn]" in done.stdout and "uv sync --extra sklearn" in done.stdout
