"""The command-line entry points end to end, on a few hundred images."""
import json

import numpy as np
import pytest
from PIL import Image

from fastnn import evaluate, predict, train


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    metrics = train.main(["--limit", "300", "--epochs", "1", "--hidden", "32", "--out", str(out)])
    return out, metrics


def test_train_writes_every_output(trained_run, capsys):
    out, metrics = trained_run
    assert sorted(p.name for p in out.iterdir()) == [
        "confusion_matrix.png", "history.json", "loss_accuracy.png", "samples.png", "weights.npz"]
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads((out / "history.json").read_text())
    assert history["config"]["hidden"] == [32] and history["config"]["limit"] == 300
    (epoch,) = history["epochs"]
    assert set(epoch) >= {"epoch", "loss", "train_accuracy", "test_accuracy", "seconds"}
    assert epoch["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert 0.3 < metrics["test_accuracy"] <= 1  # 300 images, one epoch: well above chance (0.1)


def test_train_prints_one_line_per_epoch_and_the_accuracy_last(tmp_path, capsys):
    metrics = train.main(["--preset", "seed", "--limit", "200", "--epochs", "2", "--out", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" |")[0] for line in lines if line.startswith("epoch")] == ["epoch 1/2", "epoch 2/2"]
    assert lines[-1] == f"test accuracy: {metrics['test_accuracy']:.2%}"


def test_resume_continues_the_epoch_count(trained_run, tmp_path):
    out, _ = trained_run
    metrics = train.main(["--resume", str(out / "weights.npz"), "--limit", "300", "--epochs", "1",
                          "--out", str(tmp_path)])
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert json.loads((tmp_path / "history.json").read_text())["config"]["hidden"] == [32]


def test_evaluate_prints_accuracy_and_writes_the_confusion_matrix(trained_run, tmp_path, capsys):
    out, metrics = trained_run
    result = evaluate.main([str(out / "weights.npz"), "--out", str(tmp_path)])
    assert result["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert (tmp_path / "confusion_matrix.png").exists()
    assert capsys.readouterr().out.splitlines()[-1] == f"test accuracy: {metrics['test_accuracy']:.2%}"


def test_predict_reads_an_image_and_inverts_dark_on_light(trained_run, tmp_path, mnist, capsys):
    out, _ = trained_run
    digit = mnist.test_images[0].reshape(28, 28)  # a 7
    Image.fromarray(digit).save(tmp_path / "seven.png")
    Image.fromarray(255 - digit).resize((56, 56)).save(tmp_path / "paper.png")  # dark ink, twice the size
    (label, prob), (label2, _) = predict.main([str(out / "weights.npz"), str(tmp_path / "seven.png"),
                                               str(tmp_path / "paper.png")])
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"{tmp_path / 'seven.png'}: {label} (probability {prob:.1%})"
    assert "inverted" in printed[1] and label2 == label
    assert 0 <= label <= 9 and 0.1 <= prob <= 1


@pytest.mark.parametrize("argv, message", [
    (["--hidden", "12,x"], "expected sizes like 128 or 512,256"),
    (["--backend", "tpu"], "invalid choice: 'tpu'"),
    (["--limit", "0"], "error: --limit must be >= 1"),
    (["--resume", "missing.npz"], "error: missing.npz: no such weights file"),
    (["--dataset", "fashion-mnist", "--data-dir", "/nonexistent/dir/x"], "error: "),
])
def test_bad_input_gives_one_clear_line(argv, message, capsys, monkeypatch, tmp_path):
    import fastnn.data
    monkeypatch.setattr(fastnn.data, "_open_url", lambda url: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(SystemExit) as e:
        train.main(argv + ["--out", str(tmp_path)])
    text = str(e.value.code) if isinstance(e.value.code, str) else capsys.readouterr().err
    assert message in text.strip().splitlines()[-1] and "Traceback" not in text  # argparse prints usage first


def test_bad_image_and_bad_weights_give_one_clear_line(trained_run, tmp_path):
    out, _ = trained_run
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(SystemExit, match="not a readable image"):
        predict.main([str(out / "weights.npz"), str(tmp_path / "notes.png")])
    np.savez(tmp_path / "w.npz", W1=np.zeros((3, 2)))
    with pytest.raises(SystemExit, match="expected arrays"):
        evaluate.main([str(tmp_path / "w.npz")])


@pytest.mark.parametrize("backend", ["numpy", "numba"])
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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json", "weights.npz"]
    assert capsys.readouterr().out.splitlines()[-2] == f"saved weights and history to {tmp_path}/"


@pytest.mark.parametrize("cached", [False, True])
def test_the_first_numba_run_says_it_compiles(tmp_path, capsys, monkeypatch, cached):
    from kernels import cpu

    index = {"an overload": "compiled"} if cached else {}  # numba's cache index: {} when absent or stale
    monkeypatch.setattr(cpu.train_steps._cache._cache_file, "_load_index", lambda: index)
    train.main(["--backend", "numba", "--preset", "seed", "--limit", "200", "--epochs", "1", "--no-plots",
                "--out", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    assert (cpu.COMPILE_NOTICE in lines) != cached
    if not cached:
        assert lines.index(cpu.COMPILE_NOTICE) < next(i for i, line in enumerate(lines) if line.startswith("epoch"))
