"""FastnnClassifier: the MLP as a scikit-learn estimator, for Pipeline, GridSearchCV, cross_val_score
and clone. An optional extra: `pip install fastnn[sklearn]` (from a clone: `uv sync --extra sklearn`).

    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from fastnn.estimator import FastnnClassifier

    pipe = make_pipeline(StandardScaler(), FastnnClassifier(hidden=(64,)))
    search = GridSearchCV(pipe, {"fastnnclassifier__lr": [1e-3, 1e-2]}).fit(X, y)  # y: any labels
    search.predict(X_new)  # in y's labels

What it adds to MLP: labels of any kind (strings, -1/1, non-contiguous ints; `classes_` holds them and
predictions are in them), scikit-learn's input checks (ValueError for bad X or y, NotFittedError,
`n_features_in_`, `feature_names_in_` for DataFrames) and accuracy as `score`. X is read as numbers:
uint8 pixels are 0..255 here, not grey levels scaled by 1/255 as MLP reads them, so divide them by
255 or put a scaler before it. Persist it with pickle or joblib (`model_.save` writes the weights
alone, not the labels).
"""
import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as e:  # the core needs no scikit-learn; only this module does
    raise ImportError("fastnn.estimator needs scikit-learn >= 1.6: pip install fastnn[sklearn] "
                      "(from a clone: uv sync --extra sklearn)") from e

from fastnn import settings
from fastnn.model import MLP

# MLP's defaults, three changed: MLP's are the original program's for MNIST's 60,000 rows (938 steps an
# epoch), but on the few hundred rows of a typical scikit-learn problem 10 epochs are a few dozen steps,
# too few, and SGD at 0.01 diverges on unscaled features (load_wine, load_breast_cancer; check_estimator's
# features near 100). Adam's steps stay near lr whatever the scale of the features.
DEFAULTS = {**settings.DEFAULTS, "optimizer": "adam", "lr": 1e-3, "epochs": 200}


class FastnnClassifier(ClassifierMixin, BaseEstimator):
    """MLP (fastnn.model: the parameters, the training, the backends) as a scikit-learn classifier.

    The parameters are MLP's (fastnn/settings.py), with scikit-learn's MLPClassifier defaults for the
    optimizer (Adam, lr 1e-3) and the epochs (200); give MNIST-sized data fewer epochs. fit trains an
    MLP of these parameters on the labels' positions 0..K-1 and keeps it as `model_`.

    Attributes (after fit): classes_ (the labels of y, sorted; output unit k stands for classes_[k]),
    n_features_in_, feature_names_in_ (X a DataFrame with string column names), model_ (the MLP), and
    the MLP's coefs_, intercepts_, history_, loss_curve_, n_iter_.
    """

    __init__ = settings.init_method(DEFAULTS)
    __doc__ += "\n" + settings.parameters_doc(DEFAULTS)

    coefs_ = property(lambda self: self.model_.coefs_, doc="MLP.coefs_")
    intercepts_ = property(lambda self: self.model_.intercepts_, doc="MLP.intercepts_")
    history_ = property(lambda self: self.model_.history_, doc="MLP.history_")
    loss_curve_ = property(lambda self: self.model_.loss_curve_, doc="MLP.loss_curve_")
    n_iter_ = property(lambda self: self.model_.n_iter_, doc="MLP.n_iter_")

    def fit(self, X, y):
        """Train on X (n_samples, n_features), numbers, and y (n_samples,), labels of any kind; return self."""
        # floats: MLP would read integer X as grey levels and refuse ints outside 0..255
        X, y = validate_data(self, X, y, dtype=(np.float64, np.float32))
        check_classification_targets(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        self.model_ = MLP(**self.get_params()).fit(X, codes, n_classes=len(self.classes_))
        return self

    def predict_proba(self, X):
        """Class probabilities (n_samples, n_classes), columns in the order of classes_."""
        X = self._check_predict_X(X)
        return self.model_.predict_proba(X)

    def predict(self, X):
        """The most probable label of each row of X."""
        X = self._check_predict_X(X)
        return self.classes_[self.model_.predict(X)]

    def _check_predict_X(self, X):
        """scikit-learn's NotFittedError and ValueErrors before MLP's own checks can raise FastnnError."""
        check_is_fitted(self)
        return validate_data(self, X, dtype=(np.float64, np.float32), reset=False)
