"""Every setting of a training run, written once: its values, default, presets, help, and whether an
interrupted run can only be finished with the value it started with.

    SETTINGS["momentum"]    Setting(name="momentum", allowed=Interval(float, 0, 1, closed="left"), default=0.0, ...)
    PRESETS["default"]      {"hidden": (512, 256), "backend": "numpy", ...}: every setting, as the preset sets it
    check(values, "MLP")    FastnnError for the first value out of its range, or two that do not go together

Everything else reads this table by name: MLP's parameters, defaults, checks and docstring
(fastnn/model.py), FastnnClassifier's parameters (fastnn/estimator.py), the command line's flags and
presets (fastnn/cli.py, fastnn/train.py), the kernels' Hyper (fastnn/bundles.py: the rows marked
`kernel`), the check before finishing an interrupted run (the rows marked `resume`), and bench's
workloads. The validation half follows scikit-learn's `_parameter_constraints`.
"""
import inspect
import math
from typing import NamedTuple

import numpy as np

from fastnn.backends import BACKENDS
from fastnn.fileio import FastnnError


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value):
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


# ---- what values a setting takes --------------------------------------------------------------------
class Interval(NamedTuple):
    """Numbers of one kind (int or float) from low to high; `closed` says which ends belong."""
    kind: type
    low: float
    high: float = math.inf
    closed: str = "left"  # "both", "left", "right" or "neither"

    def allows(self, value):
        if not (_is_int(value) if self.kind is int else _is_real(value)):
            return False
        above = value >= self.low if self.closed in ("both", "left") else value > self.low
        below = value <= self.high if self.closed in ("both", "right") else value < self.high
        return above and below

    def encode(self, value):
        """The value as the kernels take it: a plain Python number of this kind."""
        return self.kind(value)

    def __str__(self):
        noun = "an int" if self.kind is int else "a float"
        left_in, right_in = self.closed in ("both", "left"), self.closed in ("both", "right")
        if self.high == math.inf:
            return f"{noun} {'>=' if left_in else '>'} {self.low:g}"
        return f"{noun} in {'[' if left_in else '('}{self.low:g}, {self.high:g}{']' if right_in else ')'}"


class Options(NamedTuple):
    """One of a few names; `codes` gives the number the kernels take for each (None: the name itself)."""
    names: tuple
    codes: dict = None

    def allows(self, value):
        return isinstance(value, str) and value in self.names

    def encode(self, value):
        return value if self.codes is None else self.codes[value]

    def __str__(self):
        return f"one of {list(self.names)}"


class Flag(NamedTuple):
    """True or False (NumPy's bools too)."""

    def allows(self, value):
        return isinstance(value, (bool, np.bool_))

    def encode(self, value):
        return bool(value)

    def __str__(self):
        return "True or False"


class LayerSizes(NamedTuple):
    """The hidden layers' widths: a tuple of positive ints, () for none."""

    def allows(self, value):
        return isinstance(value, (tuple, list)) and all(_is_int(h) and h > 0 for h in value)

    def encode(self, value):
        return tuple(int(h) for h in value)

    def parse(self, text):
        """'512,256' -> (512, 256); the command line's --hidden."""
        try:
            return tuple(int(part) for part in text.split(","))
        except ValueError:
            raise ValueError(f"expected sizes like 128 or 512,256, got {text!r}") from None

    def __str__(self):
        return "a tuple of positive ints"


# ---- the table ----------------------------------------------------------------------------------------
class Setting(NamedTuple):
    name: str  # MLP's parameter, and the Hyper field if `kernel`
    allowed: object  # Interval, Options, Flag or LayerSizes: what values it takes
    default: object
    help: str  # one line
    presets: dict = {}  # {preset: value} where a preset sets it; elsewhere the preset keeps the default
    kernel: bool = False  # the kernels read it at every step: a field of fastnn.bundles.Hyper
    resume: bool = True  # finishing an interrupted run needs the value it started with
    flag: str = None  # the command-line flag; None: --name with dashes
    metavar: str = None  # the flag's value in --help; None: N for ints, X for floats

    def encode(self, value):
        return self.allowed.encode(value)

    @property
    def option(self):
        """The command-line flag (a Flag's, that turns it on; `negative` turns it off)."""
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def negative(self):
        """A Flag's flag that turns it off: --no-shuffle."""
        return "--no-" + self.option[2:]

    @property
    def value_name(self):
        """The flag's value in --help and the README: metavar, else N for ints and X for floats."""
        return self.metavar or ("N" if self.allowed.kind is int else "X")

    def show(self, value):
        """The value as the command line writes it: 512,256 for (512, 256)."""
        return ",".join(map(str, value)) if isinstance(self.allowed, LayerSizes) else str(value)

    def as_flag(self, value):
        """The one command-line argument that sets the setting to value: --lr=0.1, --no-shuffle."""
        if isinstance(self.allowed, Flag):
            return self.option if value else self.negative
        return f"{self.option}={self.show(value)}"


# Hyper.optimizer: numbers, not names, so that numba compiles one train step for every optimizer
SGD, ADAM, ADAMW = 0, 1, 2

# MLP's parameters, in this order. The presets (fastnn.train --preset): "default" (>= 98% test accuracy
# in ~10 s of training on 2 cores), "best" (>= 98.8%: after Srivastava et al.'s dropout MLPs, with Adam,
# in ~4 minutes on 2 cores) and "seed" (the original program this project grew from: 93.82%).
_ROWS = (
    Setting("hidden", LayerSizes(), (128,), "hidden layer sizes, e.g. 128 or 512,256", metavar="SIZES",
            presets={"default": (512, 256),  # two layers: ~0.3 points above one of 256 (98.44% vs 98.18% measured)
                     "best": (1024, 1024)},
            resume=False),  # the weights hold them
    Setting("backend", Options(tuple(sorted(BACKENDS))), "numpy", "which implementation runs the math",
            resume=False),  # every backend computes the same steps
    Setting("optimizer", Options(("sgd", "adam", "adamw"), {"sgd": SGD, "adam": ADAM, "adamw": ADAMW}), "sgd",
            "sgd (with momentum), adam, or adamw (Adam with decoupled weight decay)",
            presets={"best": "adam"}, kernel=True),
    Setting("lr", Interval(float, 0, closed="neither"), 0.01, "learning rate (the peak rate under the cosine schedule)",
            presets={"default": 0.1, "best": 1e-3}),
    Setting("momentum", Interval(float, 0, 1), 0.0, "SGD's momentum (0: plain SGD; Adam has beta1 instead)",
            presets={"default": 0.9}, kernel=True),
    Setting("nesterov", Flag(), False, "Nesterov momentum: SGD steps along grad + momentum * its new momentum buffer",
            kernel=True),
    Setting("weight_decay", Interval(float, 0), 0.0, "L2 penalty (sgd, adam) or decoupled decay rate (adamw)",
            presets={"default": 5e-4},  # a little L2 keeps the test accuracy from sagging late in the run
            kernel=True),  # "best": none, dropout and max-norm regularise instead
    Setting("beta1", Interval(float, 0, 1), 0.9, "Adam's decay rate of its first moment", kernel=True),
    Setting("beta2", Interval(float, 0, 1), 0.999, "Adam's decay rate of its second moment", kernel=True),
    Setting("eps", Interval(float, 0, closed="neither"), 1e-8, "Adam's term that keeps its division finite",
            kernel=True),
    Setting("dropout", Interval(float, 0, 1), 0.0, "rate of inverted dropout on every hidden layer's output (0: none)",
            presets={"best": 0.4}, kernel=True, metavar="RATE"),
    Setting("input_dropout", Interval(float, 0, 1), 0.0, "rate of inverted dropout on the input features (0: none)",
            presets={"best": 0.2}, kernel=True, metavar="RATE"),
    Setting("max_norm", Interval(float, 0), 0.0,
            "largest L2 norm of a unit's incoming weights, enforced after every update (0: no limit)",
            presets={"best": 3.0}, kernel=True, metavar="NORM"),
    Setting("batch_size", Interval(int, 1), 64, "rows per mini-batch", presets={"default": 128, "best": 128}),
    Setting("epochs", Interval(int, 1), 10, "epochs to train", presets={"default": 15, "best": 60}),
    Setting("schedule", Options(("constant", "cosine")), "constant",
            "learning rate per step: constant, or cosine decay to 0 over the run",
            presets={"default": "cosine", "best": "cosine"}),
    Setting("validation_fraction", Interval(float, 0, 1), 0.0,
            "share of the training set held out to report its accuracy (val_accuracy)",
            flag="--validation", metavar="FRACTION"),
    Setting("early_stopping", Interval(int, 0), 0,
            "stop after this many epochs without a better validation accuracy and keep the best epoch's weights "
            "(needs a validation share; 0: off)", metavar="EPOCHS"),
    Setting("shuffle", Flag(), True, "reshuffle the training set every epoch (off: batches in the order given)"),
    Setting("dtype", Options(("float32", "float64")), "float32", "floating-point type of the weights and the math"),
    Setting("seed", Interval(int, 0), 42,  # NumPy's generators take no negative seed
            "seeds the initialisation, the validation split, the shuffles and the dropout masks"),
)
SETTINGS = {setting.name: setting for setting in _ROWS}
DEFAULTS = {setting.name: setting.default for setting in _ROWS}
PRESETS = {preset: {s.name: s.presets.get(preset, s.default) for s in _ROWS} for preset in ("default", "best", "seed")}


def check(values, owner="MLP"):
    """Raise FastnnError for the first of `values` ({name: value}, every setting) out of its range, in
    scikit-learn's words, then for settings that do not go together."""
    for name, setting in SETTINGS.items():
        if not setting.allowed.allows(values[name]):
            raise FastnnError(f"The {name!r} parameter of {owner} must be {setting.allowed}. "
                              f"Got {values[name]!r} instead.")
    if values["nesterov"] and (values["optimizer"] != "sgd" or not values["momentum"]):
        raise FastnnError("nesterov looks ahead along SGD's momentum: use optimizer 'sgd' with momentum > 0 "
                          "(say --momentum 0.9), or leave nesterov off")
    if values["early_stopping"] and not values["validation_fraction"]:
        raise FastnnError("early_stopping watches the validation accuracy: set validation_fraction "
                          "(say 0.1; --validation 0.1 on the command line) or early_stopping=0")


def values_of(obj):
    """{name: value} of every setting, read from obj's attributes (an MLP, a FastnnClassifier)."""
    return {name: getattr(obj, name) for name in SETTINGS}


def init_method(defaults):
    """An __init__ that takes every setting as a keyword argument (defaults {name: value}) and stores it
    as an attribute of the same name, as scikit-learn's estimators do. Its signature lists them, so
    inspect.signature, help() and scikit-learn's get_params and clone see each one."""
    def __init__(self, **params):
        unknown = sorted(params.keys() - defaults.keys())
        if unknown:
            raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument {unknown[0]!r}")
        for name, default in defaults.items():
            setattr(self, name, params.get(name, default))

    keyword = inspect.Parameter.KEYWORD_ONLY
    __init__.__signature__ = inspect.Signature(
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [inspect.Parameter(name, keyword, default=value) for name, value in defaults.items()])
    return __init__


def parameters_doc(defaults, indent="    "):
    """The 'Parameters' section of a class docstring (numpydoc), one entry per setting, each line
    indented as the docstring's own lines are."""
    lines = ["Parameters", "----------"]
    for name, setting in SETTINGS.items():
        lines.append(f"{name} : {setting.allowed}, default {defaults[name]!r}")
        lines.append(f"    {setting.help[0].upper()}{setting.help[1:]}.")
    return "".join(f"{indent}{line}\n" for line in lines)


def markdown():
    """The table as Markdown, one row per setting: its flag, meaning, values and each preset's value
    (the README's "Settings" table is this text; a test keeps the two the same)."""
    lines = ["| flag | meaning | values | " + " | ".join(f"`--preset {p}`" for p in PRESETS) + " |",
             "|---|---|---|" + "---|" * len(PRESETS)]
    for name, setting in SETTINGS.items():
        if isinstance(setting.allowed, Flag):
            flag = f"`{setting.option}`, `{setting.negative}`"
        elif isinstance(setting.allowed, Options):
            flag = f"`{setting.option} {{{','.join(setting.allowed.names)}}}`"
        else:
            flag = f"`{setting.option} {setting.value_name}`"
        presets = " | ".join(setting.show(PRESETS[p][name]) for p in PRESETS)
        lines.append(f"| {flag} | {setting.help} | {setting.allowed} | {presets} |")
    return "\n".join(lines)
