"""A sweep's search space: a TOML file of settings and the ranges or choices to draw them from
(fastnn/sweep_space.toml is the default and says how it is written), checked against the settings
table, and drawn for an Optuna trial.

    space = load_space("my_space.toml")       # {name: Dimension}; FastnnError names any problem
    values = draw(trial, space, base)          # every setting: base, with this trial's draws
"""
import json
from pathlib import Path
from typing import NamedTuple

from fastnn.fileio import FastnnError
from fastnn.settings import SETTINGS, Interval

try:
    import tomllib
except ImportError:  # Python 3.10: the sweep extra brings tomli
    import tomli as tomllib

DEFAULT_SPACE = Path(__file__).with_name("sweep_space.toml")
LAYERS = {"depth": Interval(int, 0), "width": Interval(int, 1)}  # they make `hidden`, depth layers of a width
OPTIMIZERS = SETTINGS["optimizer"].allowed.names


class Dimension(NamedTuple):
    """How one setting is drawn: from [low, high] (log-uniform if log; ints in steps of step) or from
    choices; only for trials of `optimizers` (None: every trial)."""
    low: float = None
    high: float = None
    log: bool = False
    step: int = 1
    choices: tuple = None
    optimizers: tuple = None


def load_space(path=DEFAULT_SPACE):
    """{name: Dimension or {optimizer: Dimension}} of the TOML file at path, checked."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise FastnnError(f"--space {path}: cannot read it ({e.strerror})") from None
    try:
        tables = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise FastnnError(f"--space {path}: not valid TOML ({e})") from None
    return {name: _dimension_or_per_optimizer(path, name, table) for name, table in tables.items()}


def _dimension_or_per_optimizer(path, name, table):
    allowed = LAYERS.get(name) or getattr(SETTINGS.get(name), "allowed", None)
    if allowed is None or name == "hidden":
        known = sorted(set(SETTINGS) - {"hidden"} | set(LAYERS))
        raise FastnnError(f"--space {path}: unknown setting {name!r} (hidden is drawn as depth and width); "
                          f"known: {', '.join(known)}")
    if not isinstance(table, dict):
        raise FastnnError(f"--space {path}: {name} must be a table ([{name}]) with low and high, or choices")
    if table and all(isinstance(value, dict) for value in table.values()):  # one sub-table per optimizer
        for optimizer in table:
            if optimizer not in OPTIMIZERS:
                raise FastnnError(f"--space {path}: [{name}.{optimizer}]: {optimizer!r} is not an optimizer "
                                  f"({', '.join(OPTIMIZERS)})")
        return {optimizer: _dimension(path, f"{name}.{optimizer}", allowed, sub) for optimizer, sub in table.items()}
    return _dimension(path, name, allowed, table)


def _dimension(path, where, allowed, table):
    """The Dimension of table [where], its values checked against what the setting allows."""
    def refuse(problem):
        return FastnnError(f"--space {path}: [{where}] {problem}")

    unknown = set(table) - set(Dimension._fields)
    if unknown:
        raise refuse(f"has unknown key {sorted(unknown)[0]!r}: use low and high (log, step), or choices")
    optimizers = table.get("optimizers")
    if optimizers is not None and (not isinstance(optimizers, list) or not set(optimizers) <= set(OPTIMIZERS)):
        raise refuse(f"optimizers must be a list of {', '.join(OPTIMIZERS)}; got {optimizers!r}")
    optimizers = tuple(optimizers) if optimizers is not None else None
    if "choices" in table:
        choices = table["choices"]
        if set(table) - {"choices", "optimizers"} or not isinstance(choices, list) or not choices:
            raise refuse("gives choices = [...] and nothing else but optimizers")
        for choice in choices:
            if not allowed.allows(choice):
                raise refuse(f"choice {choice!r} is not {allowed}")
        return Dimension(choices=tuple(choices), optimizers=optimizers)
    if not isinstance(allowed, Interval):
        raise refuse(f"takes choices = [...] ({allowed})")
    if "low" not in table or "high" not in table:
        raise refuse("needs low and high, or choices")
    low, high, log, step = table["low"], table["high"], table.get("log", False), table.get("step", 1)
    for bound in (low, high):
        if not allowed.allows(bound):
            raise refuse(f"low and high must be {allowed}; got {bound!r}")
    if not low < high:
        raise refuse(f"low ({low}) must be below high ({high})")
    if not isinstance(log, bool) or (log and low <= 0):
        raise refuse("log = true needs low > 0" if log is True else f"log must be true or false; got {log!r}")
    if not (isinstance(step, int) and step >= 1) or (step != 1 and (allowed.kind is not int or log)):
        raise refuse("step must be an int >= 1, for a setting of ints drawn without log")
    if allowed.kind is float:
        low, high = float(low), float(high)  # Optuna draws floats only from a float range
    return Dimension(low, high, log, step, None, optimizers)


def describe(space):
    """The space as canonical JSON: a study remembers the space it was created with."""
    def plain(dimension):
        return dimension._asdict() if isinstance(dimension, Dimension) else {k: plain(v) for k, v in dimension.items()}
    return json.dumps({name: plain(dimension) for name, dimension in space.items()}, sort_keys=True)


def draw(trial, space, base):
    """Every setting: base ({name: value}), with the values an Optuna trial draws from space. Optuna's
    parameter names are the settings' (lr_sgd for a per-optimizer range of lr; width_1, width_2 for
    the layers)."""
    values = dict(base)
    if "optimizer" in space:  # first: the other draws may depend on it
        values["optimizer"] = _suggest(trial, "optimizer", space["optimizer"])
    optimizer = values["optimizer"]
    for name, dimension in space.items():
        if name in ("optimizer", "depth", "width"):
            continue
        if isinstance(dimension, dict):  # a range per optimizer
            if optimizer in dimension:
                values[name] = _suggest(trial, f"{name}_{optimizer}", dimension[optimizer])
        elif dimension.optimizers is None or optimizer in dimension.optimizers:
            values[name] = _suggest(trial, name, dimension)
    if "depth" in space or "width" in space:
        depth = _suggest(trial, "depth", space["depth"]) if "depth" in space else len(base["hidden"])
        width = space.get("width")
        values["hidden"] = tuple(_suggest(trial, f"width_{layer}", width) if width else base["hidden"][0]
                                 for layer in range(1, depth + 1))
    return values


def _suggest(trial, name, dimension):
    if dimension.choices is not None:
        return trial.suggest_categorical(name, dimension.choices)
    if isinstance(dimension.low, int):
        return trial.suggest_int(name, dimension.low, dimension.high, step=dimension.step, log=dimension.log)
    return trial.suggest_float(name, dimension.low, dimension.high, log=dimension.log)
