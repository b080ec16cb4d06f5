"""What a sweep adds to its trials: Optuna's and the study storage's time per trial, and what a second
worker buys.

    uv run python -m bench.sweep_overhead --postgres postgresql+psycopg://user@127.0.0.1:5432/db
    uv run python -m bench.sweep_overhead --workers --postgres URL     # 1 worker vs 2, one core each

Overhead: N one-epoch trials of the seed preset (numba; MNIST's 60,000 training rows, 10% held out),
timed three ways in one process, alternately over --rounds rounds: the trials' own work alone (fit,
the held-out share scored, the run folder written after the epoch, as fastnn.sweep's objective does),
then through study.optimize on SQLite, then on PostgreSQL. Overhead per trial = (sweep - alone) / N.
Workers: N trials of --epochs epochs (3) each by one `python -m fastnn.sweep --threads 1` process, then by two
at once on a fresh PostgreSQL study; wall times from the first start to the last exit.
"""
import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from fastnn import checkpoint, search_space, sweep
from fastnn.data import load_dataset
from fastnn.model import MLP
from fastnn.settings import PRESETS

SPACE = "[lr]\nlow = 0.005\nhigh = 0.02\nlog = true\n[epochs]\nchoices = [{epochs}]\n"


def trials_alone(X, y, n, folder):
    """n trials' own work, without Optuna: what the objective does besides talking to the study."""
    start = time.perf_counter()
    for i in range(n):
        model = MLP(**{**PRESETS["seed"], "backend": "numba", "epochs": 1, "validation_fraction": 0.1})
        run = folder / str(i)

        def save(record, model=model, run=run):
            model.save(run / "weights.npz")
            checkpoint.write_history(run / checkpoint.HISTORY, {}, model.history_)
        run.mkdir(parents=True)
        model.fit(X, y, on_epoch=save, n_classes=10)
    return time.perf_counter() - start


def trials_in_a_study(X, y, n, folder, storage):
    """n trials through study.optimize, fastnn.sweep's objective and callbacks, on `storage`."""
    space_file = folder / "space.toml"
    space_file.write_text(SPACE.format(epochs=1))
    args = sweep.build_parser().parse_args(["--backend", "numba", "--preset", "seed", "--out", str(folder),
                                            "--study", uuid.uuid4().hex, "--space", str(space_file),
                                            *(["--storage", storage] if storage else [])])
    space = search_space.load_space(space_file)
    study = sweep.open_study(args, space)
    start = time.perf_counter()
    study.optimize(sweep.Objective(args, space, X, y, 10), n_trials=n, callbacks=[sweep.progress],
                   gc_after_trial=False)
    return time.perf_counter() - start


def overhead(args):
    data = load_dataset("mnist")
    X, y = data.train_images, data.train_labels
    ways = {"alone": None, "sqlite": "", "postgresql": args.postgres}
    times = {way: [] for way in ways if way != "postgresql" or args.postgres}
    trials_alone(X[:1000], y[:1000], 1, Path(tempfile.mkdtemp()))  # numba's kernels loaded, outside the timing
    for _ in range(args.rounds):
        for way in times:
            with tempfile.TemporaryDirectory() as folder:
                seconds = (trials_alone(X, y, args.trials, Path(folder)) if way == "alone"
                           else trials_in_a_study(X, y, args.trials, Path(folder), ways[way]))
            times[way].append(seconds / args.trials)
            print(f"{way}: {seconds / args.trials * 1e3:.1f} ms per trial", flush=True)
    alone = statistics.median(times["alone"])
    print(f"\nmedians of {args.rounds} rounds of {args.trials} one-epoch seed-preset trials (numba):")
    print(f"trial alone {alone * 1e3:.1f} ms")
    for way in times:
        if way != "alone":
            extra = statistics.median(times[way]) - alone
            print(f"{way}: {extra * 1e3:+.1f} ms per trial = {extra / alone:+.1%} of the trial")


def workers(args):
    """Wall seconds of N trials by 1 worker, then by 2, each with one thread, on PostgreSQL."""
    with tempfile.TemporaryDirectory() as folder:
        space_file = Path(folder) / "space.toml"
        space_file.write_text(SPACE.format(epochs=args.epochs))
        walls = {}
        for n_workers in (1, 2):
            argv = [sys.executable, "-m", "fastnn.sweep", "--backend", "numba", "--preset", "seed", "--threads", "1",
                    "--trials", str(args.trials), "--space", str(space_file), "--storage", args.postgres,
                    "--study", uuid.uuid4().hex, "--out", str(Path(folder) / f"w{n_workers}")]
            start = time.perf_counter()
            processes = [subprocess.Popen(argv, stdout=subprocess.DEVNULL) for _ in range(n_workers)]
            if any(p.wait() for p in processes):
                raise SystemExit(f"a worker failed: {argv}")
            walls[n_workers] = time.perf_counter() - start
            print(f"{n_workers} worker(s), one thread each: {args.trials} trials in {walls[n_workers]:.1f} s",
                  flush=True)
    print(f"2 workers vs 1: {walls[1] / walls[2]:.2f}x faster")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", metavar="URL", help="a PostgreSQL database for the study (else SQLite only)")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", action="store_true", help="time 1 worker against 2 (needs --postgres)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each --workers trial (default 3)")
    args = parser.parse_args(argv)
    workers(args) if args.workers else overhead(args)


if __name__ == "__main__":
    main()
