"""The command-line entry points end to end, on a few hundred images."""
import json

import numpy as np
import pytest
from PIL import Image

from fastnn import evaluate, predict, train
from fastnn.backends import CPU_BACKENDS


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """The default preset, small: 2000 images, 3 epochs, 32 hidden units (~90% test accuracy)."""
    out = tmp_path_factory.mktemp("run")
    metrics = train.main(["--limit", "2000", "--epochs", "3", "--hidden", "32", "--out", str(out)])
    return out, metrics


def test_train_writes_every_output(trained_run, capsys):
    out, metrics = trained_run
    assert sorted(p.name for p in out.iterdir()) == [
        "confusion_matrix.png", "history.json", "loss_accuracy.png", "samples.png", "train_state.npz",
        "weights.npz"]
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads((out / "history.json").read_text())
    assert history["config"]["hidden"] == [32] and history["config"]["limit"] == 2000
    assert [epoch["epoch"] for epoch in history["epochs"]] == [1, 2, 3]
    epoch = history["epochs"][-1]
    assert set(epoch) >= {"epoch", "loss", "train_accuracy", "test_accuracy", "seconds"}
    assert epoch["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert 0.8 < metrics["test_accuracy"] <= 1  # 2000 images, 3 epochs: far above chance (0.1)


def test_train_prints_one_line_per_epoch_and_the_accuracy_last(tmp_path, capsys):
    metrics = train.main(["--preset", "seed", "--limit", "200", "--epochs", "2", "--out", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" |")[0] for line in lines if line.startswith("epoch")] == ["epoch 1/2", "epoch 2/2"]
    assert lines[-1] == f"test accuracy: {metrics['test_accuracy']:.2%}"


def test_adam_dropout_and_early_stopping_from_the_command_line(tmp_path, capsys):
    """Every new flag reaches the model; the history and the figure carry the validation curves and
    why the run stopped."""
    metrics = train.main(["--limit", "1500", "--hidden", "32", "--epochs", "30", "--optimizer", "adamw", "--lr",
                          "0.02", "--weight-decay", "0.01", "--dropout", "0.2", "--input-dropout", "0.1", "--max-norm",
                          "4", "--validation", "0.2", "--early-stopping", "2", "--schedule", "constant",
                          "--out", str(tmp_path)])
    history = json.loads((tmp_path / "history.json").read_text())
    config = history["config"]
    assert (config["optimizer"], config["dropout"], config["input_dropout"], config["max_norm"],
            config["early_stopping"]) == ("adamw", 0.2, 0.1, 4.0, 2)
    epochs = history["epochs"]
    assert all(e["val_loss"] > 0 and 0 < e["val_accuracy"] <= 1 for e in epochs)
    note = epochs[-1]["early_stopping"]
    assert note["stopped"] and len(epochs) < 30, "lr 0.02 with Adam should stop improving within 30 epochs"
    out = capsys.readouterr().out.splitlines()
    assert f"early stopping: {note['reason']}" in out
    assert metrics["test_accuracy"] == epochs[-1]["test_accuracy"]  # the kept weights are what was saved and scored
    assert (tmp_path / "loss_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resuming_a_finished_run_trains_on_as_a_new_run_and_says_so(trained_run, tmp_path, capsys):
    out, _ = trained_run
    metrics = train.main(["--resume", str(out / "weights.npz"), "--limit", "300", "--epochs", "1",
                          "--out", str(tmp_path)])
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3, 4]
    assert json.loads((tmp_path / "history.json").read_text())["config"]["hidden"] == [32]
    assert (f"resuming {out / 'weights.npz'} after epoch 3 (its run finished): 1 more epochs as a new run, "
            f"with the optimizer's state from zero and a new schedule") in capsys.readouterr().out.splitlines()


def test_evaluate_prints_accuracy_and_writes_the_confusion_matrix(trained_run, tmp_path, capsys):
    out, metrics = trained_run
    result = evaluate.main([str(out / "weights.npz"), "--out", str(tmp_path)])
    assert result["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert (tmp_path / "confusion_matrix.png").exists()
    assert capsys.readouterr().out.splitlines()[-1] == f"test accuracy: {metrics['test_accuracy']:.2%}"


def test_predict_reads_a_seven_as_a_seven_in_every_form(trained_run, tmp_path, mnist, capsys):
    out, _ = trained_run
    digit = mnist.test_images[0].reshape(28, 28)  # the test set's first image: a 7
    Image.fromarray(digit).save(tmp_path / "seven.png")
    Image.fromarray(255 - digit).resize((56, 56)).save(tmp_path / "paper.png")  # dark ink, twice the size
    ink = np.zeros((28, 28, 4), np.uint8)
    ink[..., 3] = digit  # black ink on a transparent background: colour is black everywhere
    Image.fromarray(ink, "RGBA").save(tmp_path / "transparent.png")
    paths = [str(tmp_path / name) for name in ("seven.png", "paper.png", "transparent.png")]
    results = predict.main([str(out / "weights.npz"), *paths])
    printed = capsys.readouterr().out.splitlines()
    assert [label for label, _ in results] == [7, 7, 7]
    assert results[0][1] > 0.5
    assert printed[0] == f"{paths[0]}: 7 (probability {results[0][1]:.1%})"
    assert "inverted" in printed[1] and "inverted" in printed[2]


def test_transparency_is_filled_with_the_shade_opposite_to_the_ink(mnist, tmp_path):
    digit = mnist.test_images[0].reshape(28, 28)
    white_ink = np.full((28, 28, 4), 255, np.uint8)
    white_ink[..., 3] = digit  # light ink on transparent white: the background must become black
    Image.fromarray(white_ink, "RGBA").save(tmp_path / "white.png")
    pixels, inverted = predict.read_image(tmp_path / "white.png")
    assert not inverted
    np.testing.assert_allclose(pixels.astype(int), digit.reshape(-1), atol=1)


@pytest.fixture
def bad_files(tmp_path, trained_run):
    """Files a user might wrongly pass, by name: {name: path}."""
    out, _ = trained_run
    files = {"file": tmp_path / "a_file.txt", "npy": tmp_path / "w.npy", "wide": tmp_path / "w128" / "weights.npz",
             "corrupt": tmp_path / "corrupt" / "weights.npz", "foreign": tmp_path / "foreign" / "weights.npz"}
    files["file"].write_text("not a folder")
    np.save(files["npy"], np.zeros((784, 10)))
    files["wide"].parent.mkdir()
    np.savez(files["wide"], W1=np.zeros((784, 128)), b1=np.zeros(128))  # a hidden layer alone: not a classifier
    for name, history in [("corrupt", "\x00\x9c{garbage"), ("foreign", '{"epochs": [{"loss": 1.0}]}')]:
        files[name].parent.mkdir()
        files[name].write_bytes((out / "weights.npz").read_bytes())
        (files[name].parent / "history.json").write_text(history)
    return files


@pytest.mark.parametrize("argv, message", [
    (["--hidden", "12,x"], "expected sizes like 128 or 512,256"),
    (["--backend", "tpu"], "invalid choice: 'tpu'"),
    (["--limit", "0"], "error: --limit must be from 1 to the 60000 training images of mnist, got 0"),
    (["--limit", "70000"], "error: --limit must be from 1 to the 60000 training images of mnist, got 70000"),
    (["--seed", "-1"], "error: The 'seed' parameter of MLP must be an int >= 0. Got -1 instead."),
    (["--limit", "100", "--validation", "0.001"], "holds out no row: use at least 0.01, or 0"),
    (["--resume", "missing.npz"], "error: missing.npz: no such weights file"),
    (["--resume", "{npy}"], "a single .npy array, not a weights .npz"),
    (["--resume", "{wide}"], "the model maps 784 inputs to 128 outputs, but mnist has 784 pixels and 10 classes"),
    (["--resume", "{corrupt}"], "history.json: not a history.json written by fastnn.train"),
    (["--resume", "{foreign}"], "history.json: not a history.json written by fastnn.train"),
    (["--out", "{file}"], "a_file.txt is a file: give a folder"),
    (["--out", "{file}/run"], "cannot write there (Not a directory)"),
    (["--dataset", "fashion-mnist", "--data-dir", "/nonexistent/dir/x"], "error: "),
    (["--optimizer", "rmsprop"], "invalid choice: 'rmsprop'"),
    (["--dropout", "1"], "error: The 'dropout' parameter of MLP must be a float in [0, 1). Got 1.0 instead."),
    (["--input-dropout", "-0.1"], "error: The 'input_dropout' parameter of MLP must be a float in [0, 1)"),
    (["--max-norm", "-2"], "error: The 'max_norm' parameter of MLP must be a float >= 0. Got -2.0 instead."),
    (["--early-stopping", "3"], "error: early_stopping watches the validation accuracy: set validation_fraction "
                                "(say 0.1; --validation 0.1 on the command line)"),
    (["--early-stopping", "-1", "--validation", "0.1"], "The 'early_stopping' parameter of MLP must be an int >= 0"),
])
def test_bad_input_gives_one_clear_line(argv, message, bad_files, capsys, monkeypatch, tmp_path):
    import fastnn.data
    monkeypatch.setattr(fastnn.data, "_open_url", lambda url: (_ for _ in ()).throw(OSError("offline")))
    argv = [arg.format(**bad_files) for arg in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    assert e.value.code not in (0, None)
    text = str(e.value.code) if isinstance(e.value.code, str) else capsys.readouterr().err
    assert message in text.strip().splitlines()[-1] and "Traceback" not in text  # argparse prints usage first
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())  # nothing trained or saved


@pytest.mark.parametrize("weights, message", [
    ("{npy}", "a single .npy array, not a weights .npz"),
    ("{wide}", "the model maps 784 inputs to 128 outputs, but mnist has 784 pixels and 10 classes"),
])
def test_evaluate_refuses_weights_that_do_not_fit_the_dataset(weights, message, bad_files, tmp_path):
    with pytest.raises(SystemExit) as e:
        evaluate.main([weights.format(**bad_files), "--out", str(tmp_path / "eval")])
    assert message in str(e.value.code) and "\n" not in str(e.value.code)
    assert not (tmp_path / "eval").exists()


def test_a_small_limit_still_builds_one_output_per_class(tmp_path):
    """--limit 3 holds the labels 5, 0, 4: the model still has the dataset's 10 outputs."""
    train.main(["--limit", "3", "--epochs", "1", "--hidden", "8", "--no-plots", "--out", str(tmp_path)])
    with np.load(tmp_path / "weights.npz") as npz:
        assert npz["W2"].shape == (8, 10)


def test_bad_image_and_bad_weights_give_one_clear_line(trained_run, tmp_path):
    out, _ = trained_run
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(SystemExit, match="not a readable image"):
        predict.main([str(out / "weights.npz"), str(tmp_path / "notes.png")])
    np.savez(tmp_path / "w.npz", W1=np.zeros((3, 2)))
    with pytest.raises(SystemExit, match="expected arrays"):
        evaluate.main([str(tmp_path / "w.npz")])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_divergence_stops_with_one_line_and_leaves_earlier_weights_whole(trained_run, tmp_path, backend):
    """A run that diverges exits with a clear line and never touches the weights file already in --out."""
    out, _ = trained_run
    run = tmp_path / backend
    run.mkdir()
    before = (out / "weights.npz").read_bytes()
    (run / "weights.npz").write_bytes(before)
    with pytest.raises(SystemExit, match="training diverged at epoch 1.*lower the learning rate"):
        train.main(["--backend", backend, "--limit", "300", "--epochs", "1", "--hidden", "32", "--lr", "1e4",
                    "--out", str(run)])
    assert (run / "weights.npz").read_bytes() == before
    assert sorted(p.name for p in run.iterdir()) == ["weights.npz"]  # no temp file left behind


def test_no_plots_writes_weights_and_history_only(tmp_path, capsys):
    train.main(["--limit", "200", "--epochs", "1", "--hidden", "16", "--no-plots", "--out", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json", "train_state.npz", "weights.npz"]
    assert capsys.readouterr().out.splitlines()[-2] == f"saved weights and history to {tmp_path}/"


@pytest.mark.parametrize("cached", [False, True])
def test_the_first_numba_run_says_it_compiles(tmp_path, capsys, monkeypatch, cached):
    from kernels import cpu

    index = {"an overload": "compiled"} if cached else {}  # numba's cache index: {} when absent or stale
    monkeypatch.setattr(cpu._train_steps._cache._cache_file, "_load_index", lambda: index)
    train.main(["--backend", "numba", "--preset", "seed", "--limit", "200", "--epochs", "1", "--no-plots",
                "--out", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    assert (cpu.COMPILE_NOTICE in lines) != cached
    if not cached:
        assert lines.index(cpu.COMPILE_NOTICE) < next(i for i, line in enumerate(lines) if line.startswith("epoch"))
