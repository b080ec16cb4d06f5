"""Search the settings worth training with Optuna: one study, any number of worker processes.

    uv run python -m fastnn.sweep --backend numba --trials 60 --timeout 1800 --out sweeps/mnist
    uv run python -m fastnn.sweep --out sweeps/mnist --report          # the table, best.json, figures
    uv run python -m fastnn.sweep --out sweeps/mnist --retrain-best    # best settings, whole set, test once
    # one study shared by workers on many machines: the same command on each
    uv run python -m fastnn.sweep --storage postgresql+psycopg://user:pass@host/db --study mnist --out sweeps/mnist

A trial draws settings from the search space (--space, default fastnn/sweep_space.toml) over a
preset (--preset, default: default), trains on the training set less a held-out share (--validation) and scores that
share after every epoch; Optuna's median pruner stops a trial whose validation accuracy trails the
median of earlier trials at the same epoch. The objective is the validation accuracy of the weights
the trial ends with (its last epoch's; with early stopping, its best epoch's): the test set is not
read until --retrain-best. Each trial keeps its run folder OUT/trials/NUMBER/
(weights and history, as fastnn.train writes them; the train state while it runs) and its settings as
user attributes.

The study lives in OUT/study.db (SQLite) unless --storage names another database. Workers send a
heartbeat; a worker that dies mid-trial leaves a trial that the next worker to start a trial marks
failed and retries, from the dead trial's last saved epoch (finished bitwise as if never stopped).
A stopped sweep goes on when the same command is run again: --trials counts the study's trials.
"""
import argparse
import json
import os
import signal
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from fastnn import checkpoint, search_space
from fastnn.cli import add_common_args, friendly_errors
from fastnn.data import load_dataset
from fastnn.fileio import FastnnError, atomic_write
from fastnn.model import MLP
from fastnn.settings import PRESETS, SETTINGS

try:
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState
except ImportError:
    optuna = None

BEST = "best.json"
FIGURES = ("optimization_history", "param_importances", "parallel_coordinate")


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m fastnn.sweep", description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--trials", type=int, default=50, metavar="N",
                        help="run trials until the study has N finished (complete or pruned; default 50)")
    parser.add_argument("--timeout", type=float, metavar="S", help="stop starting trials after S seconds")
    parser.add_argument("--study", default="fastnn", metavar="NAME", help="the study's name (default fastnn)")
    parser.add_argument("--storage", metavar="URL",
                        help="the study's database, e.g. postgresql+psycopg://user:pass@host:5432/db "
                             "(default: sqlite:///OUT/study.db)")
    parser.add_argument("--space", default=search_space.DEFAULT_SPACE, metavar="FILE",
                        help="the search space, TOML (default: fastnn/sweep_space.toml)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default",
                        help="the values of the settings the space does not draw (default: default)")
    parser.add_argument("--validation", type=float, default=0.1, metavar="FRACTION",
                        help="share of the training set held out to score each trial (default 0.1)")
    parser.add_argument("--limit", type=int, metavar="N", help="use the first N training images only")
    parser.add_argument("--out", default="sweeps/fastnn", metavar="DIR",
                        help="the sweep's folder: trials/, study.db, best.json, figures (default sweeps/fastnn)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="threads of this worker (default: every core; give each of W workers on one "
                             "machine cores / W)")
    parser.add_argument("--heartbeat", type=float, default=20, metavar="S",
                        help="seconds between a worker's heartbeats; a trial silent for 3 of them is failed "
                             "and retried (default 20)")
    parser.add_argument("--sampler-seed", type=int, metavar="N",
                        help="seeds the TPE sampler (default: none; the models keep their own seed setting)")
    parser.add_argument("--report", action="store_true", help="run no trial: print the best, write best.json "
                                                                "and the figures")
    parser.add_argument("--retrain-best", action="store_true",
                        help="after the trials, train the best settings on the whole training set, then score "
                             "the test set once")
    return parser


def open_study(args, space):
    """The study NAME in the storage (created if new, with the space it searches), or FastnnError."""
    url = args.storage or f"sqlite:///{Path(args.out) / 'study.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # progress() prints one line per trial instead
    # heartbeats and their retry callback are "experimental" since Optuna 2.8: the warning says no more
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    try:
        storage = _storage(url, max(1, round(args.heartbeat)))
        study = optuna.create_study(study_name=args.study, storage=storage, direction="maximize",
                                    load_if_exists=True, sampler=optuna.samplers.TPESampler(seed=args.sampler_seed),
                                    pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1))
    except ModuleNotFoundError as e:
        raise FastnnError(f"--storage {_safe(url)} needs {e.name}: pip install fastnn[sweep] "
                          f"(from a clone: uv sync --extra sweep)") from None
    except Exception as e:  # sqlalchemy's ArgumentError, OperationalError, ...: the first line says enough
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FastnnError(f"--storage {_safe(url)}: cannot open the study ({reason})") from None
    described = search_space.describe(space)
    had = study.user_attrs.get("space")
    if had is None:
        study.set_user_attr("space", described)
    elif had != described:
        raise FastnnError(f"study {args.study!r} in {_safe(url)} searches another space than {args.space}: "
                          f"give the --space it was created with, or another --study name")
    return study


def _storage(url, heartbeat):
    """Optuna's RDBStorage of url, with heartbeats every `heartbeat` seconds and the retry of a trial
    whose worker fell silent. Workers started at once on a new database each create its tables: the
    one that loses that race (a unique violation from PostgreSQL) tries again and finds them made."""
    from sqlalchemy.exc import IntegrityError

    retry = RetryHeartbeatStaleTrialCallback(max_retry=3, inherit_intermediate_values=True)
    for attempt in range(3):
        try:
            return RDBStorage(url, heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                              heartbeat_stale_trial_callback=retry)
        except IntegrityError:
            if attempt == 2:
                raise
            time.sleep(0.5)


def _safe(url):
    """A database URL with its password hidden, for messages."""
    head, at, tail = url.rpartition("@")
    if not at or ":" not in head.split("//", 1)[-1]:
        return url
    return head.rsplit(":", 1)[0] + ":***@" + tail


class Objective:
    """One trial: draw settings, train with a held-out share, report each epoch's validation accuracy."""

    def __init__(self, args, space, X, y, n_classes):
        self.args, self.space, self.X, self.y, self.n_classes = args, space, X, y, n_classes
        self.base = {**PRESETS[args.preset], "backend": args.backend, "validation_fraction": args.validation,
                     **({"dtype": args.dtype} if args.dtype else {})}

    def __call__(self, trial):
        values = search_space.draw(trial, self.space, self.base)
        model = self._start(trial, values)
        folder = Path(self.args.out) / "trials" / str(trial.number)
        trial.set_user_attr("settings", values)
        trial.set_user_attr("run", str(folder))
        history_config = {**values, "dataset": self.args.dataset, "limit": self.args.limit, "trial": trial.number}

        def report(record):
            model.save(folder / "weights.npz")
            checkpoint.write_history(folder / checkpoint.HISTORY, history_config, model.history_)
            trial.report(record["val_accuracy"], record["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {record['epoch']}: {record['val_accuracy']:.2%}")

        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        try:
            model.fit(self.X, self.y, warm_start=hasattr(model, "coefs_"), on_epoch=report, n_classes=self.n_classes)
        except FastnnError as e:  # diverged: a hopeless trial, stopped early like a pruned one
            trial.set_user_attr("stopped", str(e))
            raise optuna.TrialPruned(str(e)) from None
        finally:
            trial.set_user_attr("train_seconds", time.perf_counter() - start)
        last = model.history_[-1]  # with early stopping, the model holds its best epoch's weights
        return last["early_stopping"]["best_val_accuracy"] if "early_stopping" in last else last["val_accuracy"]

    def _start(self, trial, values):
        """A new MLP of these settings, or, for the retry of a trial whose worker died, the dead trial's
        model as its folder last saved it: fit(warm_start=True) then finishes its run bitwise."""
        params = {k: v for k, v in values.items() if k != "hidden"}
        dead = trial.user_attrs.get("run")  # a retry inherits the user attributes of the trial it retries
        if dead is not None and (Path(dead) / "weights.npz").exists():
            model = MLP.load(Path(dead) / "weights.npz", **params)
            if model.run_state_ is not None and not model.run_state_.finished:
                print(f"trial {trial.number}: retrying {dead} from its epoch {model.n_iter_}", flush=True)
                return model
        return MLP(hidden=values["hidden"], **params)


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM stops the sweep after the trial under way, which is saved as it ends
    (study.optimize's callback); a second Ctrl-C stops at once, and the study's heartbeat then has the
    cut-off trial retried by the next worker."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("stopping after the trial under way (Ctrl-C again: at once); run the same command to go on",
              file=sys.stderr, flush=True)

    def __call__(self, study, trial):
        if self.requested:
            study.stop()


def drop_optimizer_state(study, trial):
    """Once a trial has ended (complete or pruned), its run folder's train_state.npz (the optimizer's
    state, twice the weights: what a retry would resume from) goes; the weights and history stay."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED) and "run" in trial.user_attrs:
        (Path(trial.user_attrs["run"]) / checkpoint.STATE).unlink(missing_ok=True)


def progress(study, trial):
    """One line per finished trial (study.optimize's callback) and the running best."""
    if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED):
        return
    shown = " ".join(f"{name}={_short(value)}" for name, value in trial.params.items())
    value = trial.value if trial.state == TrialState.COMPLETE else trial.intermediate_values.get(
        max(trial.intermediate_values, default=0))
    seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
    try:
        best_trial = study.best_trial  # one query of the study
        best = f"best {best_trial.value:.2%} (trial {best_trial.number})"
    except ValueError:  # no complete trial yet
        best = "best: none complete yet"
    state = "done" if trial.state == TrialState.COMPLETE else "pruned"
    val = f"val {value:.2%}" if value is not None else "val -"
    print(f"trial {trial.number} {state:6s} | {val} | {seconds:.1f} s | {shown} | {best}", flush=True)


def _short(value):
    """A drawn value in a few characters: floats to 3 significant digits, layer sizes as 512,256."""
    if isinstance(value, float):
        return f"{value:.3g}"
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def report(study, out):
    """Print the best trials, write best.json and the figures; returns the best settings."""
    complete = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: -t.value)
    if not complete:
        raise FastnnError(f"study {study.study_name!r} has no complete trial yet: run the sweep first")
    states = [trial.state for trial in study.get_trials(deepcopy=False)]  # one read of the study
    print(f"study {study.study_name}: " + ", ".join(
        f"{states.count(state)} {state.name.lower()}"
        for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)))
    print("| trial | val accuracy | seconds | settings |\n|---:|---:|---:|---|")
    for trial in complete[:10]:
        changed = {k: v for k, v in trial.user_attrs["settings"].items()
                   if PRESETS["default"].get(k) != v and k not in ("backend", "validation_fraction")}
        print(f"| {trial.number} | {trial.value:.2%} | {trial.user_attrs.get('train_seconds', 0):.1f} | "
              + " ".join(f"{k}={_short(v)}" for k, v in changed.items()) + " |")
    best = complete[0]
    # the settings to train with: every one but the backend (the machine's choice) and the held-out share
    settings = {k: v for k, v in best.user_attrs["settings"].items()
                if k in SETTINGS and k not in ("backend", "validation_fraction")}
    flags = [SETTINGS[name].as_flag(value) for name, value in settings.items()]
    Path(out).mkdir(parents=True, exist_ok=True)
    with atomic_write(Path(out) / BEST, "w") as f:
        json.dump({"trial": best.number, "val_accuracy": best.value, "settings": settings, "flags": flags}, f,
                  indent=1)
    _figures(study, out)
    print(f"best: trial {best.number}, val {best.value:.2%}; wrote {Path(out) / BEST} and the figures")
    return settings


def _figures(study, out):
    """Optuna's matplotlib figures of the study, each written atomically as a PNG; the parallel
    coordinates of the six most important parameters (all of them make a tangle)."""
    import matplotlib
    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as plots

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the importances of a parameter drawn in few trials
        important = list(optuna.importance.get_param_importances(study))[:6]
        for name in FIGURES:
            ax = getattr(plots, f"plot_{name}")(study, **({"params": important} if name == "parallel_coordinate"
                                                          else {}))
            figure = (ax.flat[0] if isinstance(ax, np.ndarray) else ax).figure
            figure.set_size_inches(11, 6)
            figure.tight_layout()
            with atomic_write(Path(out) / f"{name}.png") as f:
                figure.savefig(f, format="png", dpi=100)
            matplotlib.pyplot.close(figure)


def retrain(settings, args, data):
    """The best settings on the whole training set (no held-out share), then the test set, once."""
    params = {**settings, "validation_fraction": 0.0, "early_stopping": 0, "backend": args.backend}
    model = MLP(**params)
    X, y = data.train_images[:args.limit], data.train_labels[:args.limit]
    folder = Path(args.out) / "best"
    model.fit(X, y, n_classes=len(data.classes))
    model.save(folder / "weights.npz")
    checkpoint.write_history(folder / checkpoint.HISTORY, params, model.history_)
    accuracy = model.score(data.test_images, data.test_labels)
    seconds = sum(record["seconds"] for record in model.history_)
    print(f"retrained the best settings on {len(X)} images in {seconds:.1f} s of training: "
          f"test accuracy {accuracy:.2%}; weights in {folder}/")
    return accuracy


@friendly_errors
def main(argv=None):
    args = build_parser().parse_args(argv)
    if optuna is None:
        raise FastnnError("python -m fastnn.sweep needs Optuna: pip install fastnn[sweep] "
                          "(from a clone: uv sync --extra sweep)")
    if not 0 < args.validation < 1:
        raise FastnnError(f"--validation must be a share between 0 and 1 (say 0.1), got {args.validation}")
    if args.threads is not None:
        import numba  # the backends' thread pools: numba's, and BLAS's for numpy
        from threadpoolctl import threadpool_limits
        numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
        threadpool_limits(args.threads)
    space = search_space.load_space(args.space)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    study = open_study(args, space)
    data = load_dataset(args.dataset, data_dir=args.data_dir)
    if args.limit is not None and not 1 <= args.limit <= len(data.train_images):
        raise FastnnError(f"--limit must be from 1 to the {len(data.train_images)} training images, got {args.limit}")
    if not args.report:
        X, y = data.train_images[:args.limit], data.train_labels[:args.limit]
        print(f"fastnn.sweep | study {args.study} | {args.dataset} {len(X)} train rows, {args.validation:.0%} held "
              f"out | backend {args.backend} | pid {os.getpid()}", flush=True)
        states = (TrialState.COMPLETE, TrialState.PRUNED)  # a failed trial (a dead worker's) is retried
        if len(study.get_trials(deepcopy=False, states=states)) < args.trials:
            study.optimize(Objective(args, space, X, y, len(data.classes)), timeout=args.timeout,
                           callbacks=[optuna.study.MaxTrialsCallback(args.trials, states=states),
                                      drop_optimizer_state, progress, StopRequest()], gc_after_trial=False)
    best = report(study, args.out)
    if args.retrain_best:
        retrain(best, args, data)


if __name__ == "__main__":
    sys.exit(main())
