"""Train an MLP on MNIST and save the model, its history and figures.

    uv run python -m fastnn.train --backend numpy            # the default preset (>= 98% test accuracy)
    uv run python -m fastnn.train --preset seed              # the original program: 784-128-10, SGD
    uv run python -m fastnn.train --preset best --backend numba   # >= 98.8%: Adam, dropout, max-norm
    uv run python -m fastnn.train --hidden 512,256 --epochs 5 --out runs/big
    uv run python -m fastnn.train --resume runs/big/weights.npz --epochs 3 --out runs/big

Writes weights.npz, train_state.npz and history.json into --out (default runs/<timestamp>/) after
every epoch, and loss_accuracy.png, confusion_matrix.png and samples.png at the end, each atomically.
A run stopped early (Ctrl-C, a crash, a killed process) is finished by running the same command with
--resume OUT/weights.npz added: the weights come out bitwise as if it had never stopped.
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from fastnn import checkpoint
from fastnn.backends import get_backend
from fastnn.cli import add_common_args, add_setting_flag, check_classes, friendly_errors
from fastnn.data import load_dataset
from fastnn.fileio import FastnnError
from fastnn.model import MLP
from fastnn.settings import PRESETS, SETTINGS

def build_parser():
    parser = argparse.ArgumentParser(prog="python -m fastnn.train", description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default",
                        help="starting values for every setting; the flags below override them (default: default)")
    parser.add_argument("--settings", metavar="FILE",
                        help="a JSON file of settings over the preset's, such as fastnn.sweep's best.json; "
                             "the flags below override them")
    for name, setting in SETTINGS.items():
        if name not in ("backend", "dtype"):  # add_common_args' own
            values = {preset: setting.show(PRESETS[preset][name]) for preset in PRESETS}
            default_text = (f"every preset: {values['default']}" if len(set(values.values())) == 1 else
                            "presets: " + ", ".join(f"{preset} {value}" for preset, value in values.items()))
            add_setting_flag(parser, name, default_text=default_text)
    parser.add_argument("--limit", type=int, metavar="N", help="train on the first N training images only")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: runs/<timestamp>/)")
    parser.add_argument("--resume", metavar="FILE", help="continue training from a saved weights.npz")
    parser.add_argument("--show", action="store_true", help="also open the figures in windows")
    parser.add_argument("--no-plots", action="store_true",
                        help="skip the figures (and matplotlib's ~1 s import): weights and history only")
    return parser


def resolve_config(args):
    """Every setting: the preset's value (fastnn.settings.PRESETS), over it the --settings file's, over
    that the flags'."""
    config = {**PRESETS[args.preset], **(read_settings(args.settings) if args.settings else {})}
    return {name: value if (value := getattr(args, name)) is not None else config_value
            for name, config_value in config.items()}


def read_settings(path):
    """{name: value} of a JSON file of settings: {"lr": 0.1, ...}, or fastnn.sweep's best.json."""
    try:
        values = json.loads(Path(path).read_text())
    except OSError as e:
        raise FastnnError(f"--settings {path}: cannot read it ({e.strerror})") from None
    except ValueError as e:
        raise FastnnError(f"--settings {path}: not JSON ({e})") from None
    values = values.get("settings", values) if isinstance(values, dict) else values
    if not isinstance(values, dict):
        raise FastnnError(f"--settings {path}: expected a JSON object of settings, like {{\"lr\": 0.1}}")
    unknown = sorted(set(values) - set(SETTINGS))
    if unknown:
        raise FastnnError(f"--settings {path}: unknown setting {unknown[0]!r}; known: {', '.join(SETTINGS)}")
    return {name: tuple(value) if name == "hidden" and isinstance(value, list) else value
            for name, value in values.items()}


def check_out_folder(out):
    """Make sure the outputs can be written to `out` before any training time is spent."""
    if out.exists() and not out.is_dir():
        raise FastnnError(f"--out {out} is a file: give a folder to write the outputs into")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise FastnnError(f"--out {out}: cannot write there ({e.strerror}): choose another folder") from None


def resume_line(path, model, epochs):
    """What --resume is about to do, in one line."""
    state = model.run_state_
    if state is not None and not state.finished:
        return (f"resuming {path}: its run stopped after epoch {state.first_epoch - 1 + state.done} of "
                f"{state.first_epoch - 1 + state.epochs}; finishing it exactly as it would have run")
    why = "its run finished" if state is not None else "no train state beside it"
    return (f"resuming {path} after epoch {model.n_iter_} ({why}): {epochs} more epochs as a new run, "
            f"with the optimizer's state from zero and a new schedule")


@friendly_errors
def main(argv=None):
    """Train, evaluate, save; returns a dict of the final metrics and where the outputs went."""
    args = build_parser().parse_args(argv)
    config = resolve_config(args)
    if args.show and args.no_plots:
        raise FastnnError("--show needs the figures: drop --no-plots")
    data = load_dataset(args.dataset, data_dir=args.data_dir)
    n_train = len(data.train_images)
    if args.limit is not None and not 1 <= args.limit <= n_train:
        raise FastnnError(f"--limit must be from 1 to the {n_train} training images of {args.dataset}, "
                          f"got {args.limit}")
    X, y = data.train_images[:args.limit], data.train_labels[:args.limit]
    out = Path(args.out or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))

    params = {k: v for k, v in config.items() if k != "hidden"}
    if args.resume:  # the epochs, and the run state if the run was interrupted, are saved beside it
        model = MLP.load(args.resume, **params)
        config["hidden"] = model.hidden
        check_classes(model, args.resume, data.name, data.test_images.shape[1], len(data.classes))
    else:
        model = MLP(hidden=config["hidden"], **params)
    model.check_params()  # a bad --seed or --lr is reported before the output folder is made
    check_out_folder(out)

    print(f"fastnn | {args.dataset} {len(X)} train / {len(data.test_images)} test | backend {args.backend} | "
          + " ".join(f"{k}={v}" for k, v in config.items() if k != "backend"), flush=True)
    if args.resume:
        print(resume_line(args.resume, model, config["epochs"]), flush=True)
    notice = getattr(get_backend(args.backend), "compile_notice", lambda: None)()
    if notice:
        print(notice, flush=True)

    run_config = {**config, "dataset": args.dataset, "limit": args.limit,
                  "resumed_from": args.resume}
    last_epoch = None

    def score_report_and_save(record):
        """After each epoch: the test accuracy, one line, and the weights, run state and history on disk,
        so that a run stopped at any point can be finished with --resume."""
        nonlocal last_epoch
        state = model.run_state_
        last_epoch = state.first_epoch - 1 + state.epochs
        record["test_accuracy"] = model.score(data.test_images, data.test_labels)
        val = f" | val {record['val_accuracy']:.2%}" if record["val_accuracy"] is not None else ""
        if record.get("compile_seconds"):
            print(f"{args.backend}: kernels ready in {record['compile_seconds']:.1f} s (compiled, or loaded from the "
                  f"cache), not counted in the epochs' seconds", flush=True)
        print(f"epoch {record['epoch']}/{last_epoch} | "
              f"loss {record['loss']:.4f} | train {record['train_accuracy']:.2%}{val} | "
              f"test {record['test_accuracy']:.2%} | {record['seconds']:.2f} s", flush=True)
        if "early_stopping" in record:
            print(f"early stopping: {record['early_stopping']['reason']}", flush=True)
        model.save(out / "weights.npz")
        checkpoint.write_history(out / checkpoint.HISTORY, run_config, model.history_)

    try:
        model.fit(X, y, warm_start=bool(args.resume), progress=sys.stderr.isatty(),
                  on_epoch=score_report_and_save, n_classes=len(data.classes))
    except KeyboardInterrupt:
        if last_epoch is None:
            raise
        raise FastnnError(f"interrupted after epoch {model.n_iter_} of {last_epoch}: to finish the run, "
                          f"run the same command with --resume {out / 'weights.npz'}") from None

    probs = model.predict_proba(data.test_images)  # (N, K)
    test_pred = probs.argmax(axis=1)
    accuracy = float((test_pred == data.test_labels).mean())
    if not args.no_plots:
        from fastnn import plots  # matplotlib takes ~1 s to import: only when figures are wanted

        figures = [
            plots.plot_loss_accuracy(out / "loss_accuracy.png", model.history_),
            plots.plot_confusion_matrix(out / "confusion_matrix.png", data.test_labels, test_pred, data.classes),
            plots.plot_samples(out / "samples.png", data.test_images, data.test_labels, test_pred,
                               probs.max(axis=1), data.classes),
        ]
    saved = "weights and history" if args.no_plots else "weights, history and figures"
    print(f"saved {saved} to {out}/")
    print(f"test accuracy: {accuracy:.2%}")
    if args.show:
        plots.show_figures(figures)
    return {"test_accuracy": accuracy, "out": out, "history": model.history_}


if __name__ == "__main__":
    main()
