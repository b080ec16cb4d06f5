"""The settings table (fastnn/settings.py) and everything derived from it: MLP's parameters and checks,
the command line's flags and presets, the kernels' Hyper, the run-state check, the README's table."""
import inspect
import math
from pathlib import Path

import numpy as np
import pytest

from fastnn import settings, train
from fastnn.bundles import Hyper, hyper_of
from fastnn.fileio import FastnnError
from fastnn.model import MLP
from fastnn.settings import DEFAULTS, PRESETS, SETTINGS, Flag, Interval, LayerSizes, Options

README = Path(__file__).parents[1] / "README.md"


def test_mlp_takes_every_setting_by_name_with_its_default():
    parameters = inspect.signature(MLP).parameters
    assert {name: p.default for name, p in parameters.items()} == DEFAULTS
    assert all(p.kind == p.KEYWORD_ONLY for p in parameters.values())
    model = MLP(lr=0.5, hidden=(3,))
    assert settings.values_of(model) == {**DEFAULTS, "lr": 0.5, "hidden": (3,)}
    with pytest.raises(TypeError, match="unexpected keyword argument 'learning_rate'"):
        MLP(learning_rate=0.1)
    for name in SETTINGS:  # the docstring's Parameters section names every one
        assert f"\n    {name} : " in MLP.__doc__


def test_every_preset_passes_the_checks_and_the_defaults_do():
    for values in (DEFAULTS, *PRESETS.values()):
        settings.check(values)
        MLP(**values).check_params()


@pytest.mark.parametrize("allowed, good, bad", [
    (Interval(float, 0, closed="neither"), [1e-9, 3, 1e300], [0, -1, math.inf, math.nan, True, "1"]),
    (Interval(float, 0, 1), [0, 0.5, 0.999], [1, 1.5, -1e-9, math.nan]),
    (Interval(int, 1), [1, np.int64(7)], [0, 1.0, True, 2.5]),
    (Options(("a", "b")), ["a", "b"], ["c", 1, None]),
    (Flag(), [True, False, np.bool_(True)], [0, 1, "yes", None]),
    (LayerSizes(), [(), (3,), [4, 5], (np.int32(2),)], [3, "12", (0,), (2.0,), (True,)]),
])
def test_each_kind_of_values_allows_what_it_says(allowed, good, bad):
    assert all(allowed.allows(value) for value in good)
    assert not any(allowed.allows(value) for value in bad)


def test_a_bad_value_is_named_in_scikit_learns_words():
    for name, setting in SETTINGS.items():
        bad = "nonsense" if not isinstance(setting.allowed, Options) else 3.5
        with pytest.raises(FastnnError, match=f"^The '{name}' parameter of MLP must be .* Got {bad!r} instead.$"):
            settings.check({**DEFAULTS, name: bad})


@pytest.mark.parametrize("changes", [{"optimizer": "adam"}, {"momentum": 0.0}])
def test_nesterov_needs_sgd_with_momentum(changes):
    with pytest.raises(FastnnError, match="^nesterov looks ahead along SGD's momentum: use optimizer 'sgd'"):
        settings.check({**DEFAULTS, "momentum": 0.9, "nesterov": True, **changes})
    settings.check({**DEFAULTS, "momentum": 0.9, "nesterov": True})


def test_hyper_holds_every_kernel_setting_as_the_kernels_take_it():
    kernel = [name for name, setting in SETTINGS.items() if setting.kernel]
    assert list(Hyper._fields) == kernel + ["dropout_seed"]
    hyper = hyper_of({**DEFAULTS, "optimizer": "adamw", "momentum": np.float32(0.5), "max_norm": 2}, dropout_seed=9)
    assert hyper.optimizer == settings.ADAMW and hyper.dropout_seed == 9
    assert type(hyper.momentum) is float and type(hyper.max_norm) is float  # one numba type whatever was given
    assert Hyper() == hyper_of(DEFAULTS)


def test_every_setting_has_a_flag_that_overrides_the_preset():
    parser = train.build_parser()
    for name, setting in SETTINGS.items():
        if isinstance(setting.allowed, Flag):
            argv, want = [f"--no-{setting.option[2:]}"], False
        elif isinstance(setting.allowed, Options):
            argv, want = [setting.option, setting.allowed.names[-1]], setting.allowed.names[-1]
        elif isinstance(setting.allowed, LayerSizes):
            argv, want = [setting.option, "7,5"], (7, 5)
        else:
            argv, want = [setting.option, "3"], setting.allowed.kind(3)
        config = train.resolve_config(parser.parse_args(["--preset", "best", *argv]))
        assert config == {**PRESETS["best"], name: want}, name


def test_the_run_state_check_covers_the_resume_settings_and_takes_a_missing_one_as_its_default(mnist_small):
    X, y = mnist_small
    model = MLP(hidden=(8,), epochs=3)
    fingerprint = model._run_settings(X, y)
    assert {name for name, s in SETTINGS.items() if s.resume} == fingerprint.keys() - {"rows", "data_crc32"}

    class State:  # a run state written before the setting `momentum` existed, and one with another lr
        done, epochs = 1, 3
        settings = {k: v for k, v in fingerprint.items() if k != "momentum"}
    MLP._check_continuation(State, fingerprint)
    State.settings = {**fingerprint, "lr": 0.5}
    with pytest.raises(FastnnError, match=r"it had lr=0.5 \(now 0.01\)"):
        MLP._check_continuation(State, fingerprint)


def test_the_readme_table_is_the_settings_table():
    text = README.read_text()
    start = text.index("<!-- settings table: fastnn.settings.markdown() -->\n")
    end = text.index("\n<!-- end of settings table -->")
    assert text[start:end].split("\n", 1)[1] == settings.markdown()


@pytest.fixture
def mnist_small(mnist):
    return mnist.train_images[:100], mnist.train_labels[:100]
