"""python -m fastnn.sweep: the SQLite default, the search space's refusals, and, against a real
PostgreSQL server (FASTNN_POSTGRES_URL; .ci/run starts one), workers sharing a study, a worker killed
mid-trial, and a stopped sweep resumed. Tiny data (a few hundred MNIST rows, 8-unit layers, the numpy
backend: no compiling), so each trial takes milliseconds."""
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")  # the sweep extra

from fastnn import sweep  # noqa: E402

POSTGRES = os.environ.get("FASTNN_POSTGRES_URL")
needs_postgres = pytest.mark.skipif(not POSTGRES, reason="no PostgreSQL server: set FASTNN_POSTGRES_URL "
                                                         "(.ci/run starts one)")
TINY = """
[optimizer]
choices = ["sgd", "adam"]
[lr.sgd]
low = 0.01
high = 0.3
log = true
[lr.adam]
low = 1e-3
high = 1e-2
log = true
[width]
choices = [8, 16]
[depth]
low = 1
high = 2
[epochs]
low = 1
high = 2
"""


def space_file(tmp_path, text=TINY, name="space.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def sweep_args(tmp_path, *extra, space=None):
    return ["--limit", "400", "--out", str(tmp_path / "sweep"), "--space", str(space or space_file(tmp_path)),
            *extra]


def finished(study):
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))


def load(storage, name="fastnn"):
    return optuna.load_study(study_name=name, storage=storage)


def test_a_sqlite_sweep_keeps_every_trial_and_goes_on_when_run_again(tmp_path, capsys):
    sweep.main(sweep_args(tmp_path, "--trials", "4", "--sampler-seed", "1"))
    out = tmp_path / "sweep"
    study = load(f"sqlite:///{out / 'study.db'}")
    assert len(finished(study)) == 4
    progress = trial_lines(capsys.readouterr().out)  # one line per finished trial, with the running best
    assert len(progress) == 4 and all(" | best " in line for line in progress)
    for trial in finished(study):  # its folder, as fastnn.train writes one, and its settings
        folder = out / "trials" / str(trial.number)
        assert (folder / "weights.npz").exists() and json.loads((folder / "history.json").read_text())["epochs"]
        assert trial.user_attrs["settings"]["validation_fraction"] == 0.1
        assert trial.user_attrs["settings"]["hidden"] == [trial.params[f"width_{i}"]
                                                          for i in range(1, trial.params["depth"] + 1)]
    best = json.loads((out / "best.json").read_text())
    assert best["val_accuracy"] == study.best_value and best["trial"] == study.best_trial.number
    assert all((out / f"{name}.png").stat().st_size > 10_000 for name in sweep.FIGURES)

    sweep.main(sweep_args(tmp_path, "--trials", "6"))  # the same command, more trials: the study goes on
    assert sorted(t.number for t in finished(load(f"sqlite:///{out / 'study.db'}"))) == list(range(6))


def test_best_json_is_what_fastnn_train_takes_back(tmp_path):
    from fastnn import train

    sweep.main(sweep_args(tmp_path, "--trials", "2"))
    best = json.loads((tmp_path / "sweep" / "best.json").read_text())
    for source in (["--settings", str(tmp_path / "sweep" / "best.json")], best["flags"]):
        config = train.resolve_config(train.build_parser().parse_args(source))
        assert {k: config[k] for k in best["settings"]} == {k: tuple(v) if k == "hidden" else v
                                                          for k, v in best["settings"].items()}


def test_retrain_best_trains_on_every_row_and_scores_the_test_set(tmp_path, capsys):
    sweep.main(sweep_args(tmp_path, "--trials", "2", "--retrain-best"))
    assert "retrained the best settings on 400 images" in capsys.readouterr().out
    history = json.loads((tmp_path / "sweep" / "best" / "history.json").read_text())
    assert history["config"]["validation_fraction"] == 0.0 and history["epochs"][-1]["val_accuracy"] is None


@pytest.mark.parametrize("text, message", [
    ("[lrr]\nlow = 1\nhigh = 2\n", "unknown setting 'lrr'"),
    ("[hidden]\nchoices = [[8]]\n", "unknown setting 'hidden' (hidden is drawn as depth and width)"),
    ("[dropout]\nlow = 0.0\nhigh = 1.5\n", "[dropout] low and high must be a float in [0, 1); got 1.5"),
    ("[lr]\nlow = 0.0\nhigh = 0.1\nlog = true\n", "[lr] low and high must be a float > 0; got 0.0"),
    ("[lr]\nlow = 0.3\nhigh = 0.1\n", "[lr] low (0.3) must be below high (0.1)"),
    ("[optimizer]\nchoices = ['sgd', 'rmsprop']\n", "[optimizer] choice 'rmsprop' is not one of ['sgd', 'adam', 'adamw']"),
    ("[lr.rmsprop]\nlow = 0.1\nhigh = 0.2\n", "[lr.rmsprop]: 'rmsprop' is not an optimizer"),
    ("[momentum]\nlow = 0.5\nhigh = 0.9\nspread = 2\n", "[momentum] has unknown key 'spread'"),
    ("[epochs]\nlow = 1\nhigh = 5\nstep = 0\n", "[epochs] step must be an int >= 1"),
    ("lr = 0.1\n", "lr must be a table ([lr])"),
    ("[lr\nlow = 1\n", "not valid TOML"),
])
def test_a_bad_space_is_one_line_naming_the_problem(tmp_path, text, message):
    with pytest.raises(SystemExit) as e:
        sweep.main(sweep_args(tmp_path, space=space_file(tmp_path, text)))
    assert message in str(e.value.code) and str(e.value.code).startswith("error: --space ")
    assert "\n" not in str(e.value.code)


def test_a_study_searching_another_space_is_refused(tmp_path):
    sweep.main(sweep_args(tmp_path, "--trials", "1"))
    other = space_file(tmp_path, TINY.replace("choices = [8, 16]", "choices = [8, 32]"), "other.toml")
    with pytest.raises(SystemExit, match="study 'fastnn' in sqlite:.* searches another space than .*other.toml: "
                                         "give the --space it was created with, or another --study name"):
        sweep.main(sweep_args(tmp_path, "--trials", "2", space=other))


@pytest.mark.parametrize("url, message", [
    ("postgresql+psycopg://nobody:secret@127.0.0.1:1/none", "cannot open the study"),
    ("nosuchdb://x/y", "cannot open the study"),
])
def test_an_unreachable_or_wrong_database_is_one_line(tmp_path, url, message):
    with pytest.raises(SystemExit) as e:
        sweep.main(sweep_args(tmp_path, "--storage", url))
    assert message in str(e.value.code) and "\n" not in str(e.value.code) and "secret" not in str(e.value.code)


def test_without_the_extra_it_says_how_to_install_it():
    code = ("import sys; from fastnn import model, train; assert 'optuna' not in sys.modules, 'the core imports it'; "
            "sys.modules['optuna'] = None; from fastnn import sweep; sweep.main([])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == ("error: python -m fastnn.sweep needs Optuna: pip install fastnn[sweep] "
                                     "(from a clone: uv sync --extra sweep)")


# ---- many workers on one PostgreSQL study -----------------------------------------------------------------
def worker(tmp_path, study, *extra, space=None):
    """A sweep worker process (python -m fastnn.sweep) on the PostgreSQL study `study`, one thread."""
    argv = [sys.executable, "-m", "fastnn.sweep", *sweep_args(tmp_path, "--storage", POSTGRES, "--study", study,
                                                             "--threads", "1", *extra, space=space)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def trial_lines(output):
    return [line for line in output.splitlines() if line.startswith("trial ") and "retrying" not in line]


@needs_postgres
def test_two_workers_share_one_study_and_run_no_trial_twice(tmp_path):
    study = f"two-{uuid.uuid4().hex[:8]}"
    # trials of ~0.2 s, 30 of them: the second worker is up long before the first could finish them all
    workers = [worker(tmp_path, study, "--trials", "30", "--limit", "3000") for _ in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    numbers = [int(line.split()[1]) for out in outputs for line in trial_lines(out)]
    assert all(trial_lines(out) for out in outputs)  # both worked
    assert len(numbers) == len(set(numbers))  # no trial run twice
    trials = finished(load(POSTGRES, study))
    assert sorted(t.number for t in trials) == sorted(numbers) and len(trials) >= 30  # the counts add up


@needs_postgres
def test_a_worker_killed_mid_trial_leaves_a_trial_that_is_retried_from_its_last_epoch(tmp_path):
    study = f"kill-{uuid.uuid4().hex[:8]}"
    slow = space_file(tmp_path, "[epochs]\nchoices = [40]\n[width]\nchoices = [64]\n", "slow.toml")
    args = ("--trials", "1", "--heartbeat", "1")
    victim = worker(tmp_path, study, *args, "--limit", "3000", space=slow)
    history = tmp_path / "sweep" / "trials" / "0" / "history.json"
    deadline = time.monotonic() + 120
    while not (history.exists() and len(json.loads(history.read_text())["epochs"]) >= 3):
        assert time.monotonic() < deadline and victim.poll() is None, victim.communicate()
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    time.sleep(3.5)  # past the grace period of 3 heartbeats
    rescuer = worker(tmp_path, study, *args, "--limit", "3000", space=slow)
    out, err = rescuer.communicate(timeout=300)
    assert rescuer.returncode == 0, err
    trials = load(POSTGRES, study).get_trials(deepcopy=False)
    dead, retry = trials[0], trials[1]
    assert dead.state == optuna.trial.TrialState.FAIL and retry.state == optuna.trial.TrialState.COMPLETE
    assert retry.params == dead.params and f"retrying {tmp_path / 'sweep' / 'trials' / '0'} from its epoch" in out
    epochs = json.loads((tmp_path / "sweep" / "trials" / "1" / "history.json").read_text())["epochs"]
    assert [record["epoch"] for record in epochs] == list(range(1, 41))  # the dead trial's epochs, then the rest


@needs_postgres
def test_a_stopped_sweep_goes_on_when_the_same_command_runs_again(tmp_path):
    study = f"resume-{uuid.uuid4().hex[:8]}"
    first = worker(tmp_path, study, "--trials", "1000")
    deadline = time.monotonic() + 120
    while True:  # Ctrl-C once it has finished two trials: it stops after the one under way
        try:
            if len(finished(load(POSTGRES, study))) >= 2:
                break
        except KeyError:  # the study is not created yet
            pass
        assert time.monotonic() < deadline and first.poll() is None, first.communicate()
        time.sleep(0.1)
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=60) == 0 and "stopping after the trial under way" in first.communicate()[1]
    done = len(finished(load(POSTGRES, study)))
    again = worker(tmp_path, study, "--trials", str(done + 3))
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert len(finished(load(POSTGRES, study))) == done + 3 and len(trial_lines(out)) == 3
