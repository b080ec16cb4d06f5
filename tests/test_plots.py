"""Figures: each writes a readable PNG atomically; the confusion matrix and sample choice count right."""
import matplotlib.image
import numpy as np
import pytest

from fastnn import plots
from fastnn.fileio import FastnnError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DIGITS = [str(k) for k in range(10)]


def check_png(path, tmp_path, min_height, min_width):
    """`path` is a complete PNG of at least the given size, and no temporary file is left beside it."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    height, width, channels = matplotlib.image.imread(path).shape
    assert height >= min_height and width >= min_width and channels in (3, 4)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def fake_predictions(n=200, error_rate=0.1, seed=0):
    """Random images and labels, with about `error_rate` of the predictions wrong."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 784), dtype=np.uint8)
    y_true = rng.integers(0, 10, n)
    wrong = rng.random(n) < error_rate
    y_pred = np.where(wrong, (y_true + rng.integers(1, 10, n)) % 10, y_true)
    probs = rng.uniform(0.1, 1.0, n)
    return images, y_true, y_pred, probs


def history(n_epochs, with_test=True):
    """A fake `MLP.history_` of `n_epochs` improving epochs."""
    return [{"epoch": e, "loss": 1 / e, "train_accuracy": 1 - 0.1 / e,
             "test_accuracy": 1 - 0.2 / e if with_test else None, "seconds": 0.5} for e in range(1, n_epochs + 1)]


@pytest.mark.parametrize("n_epochs, with_test", [(10, True), (1, True), (3, False)])
def test_plot_loss_accuracy_writes_png(tmp_path, n_epochs, with_test):
    path = tmp_path / "loss_accuracy.png"
    assert plots.plot_loss_accuracy(path, history(n_epochs, with_test)) == path
    check_png(path, tmp_path, min_height=400, min_width=1000)


def test_plot_confusion_matrix_writes_png(tmp_path):
    _, y_true, y_pred, _ = fake_predictions()
    path = tmp_path / "confusion_matrix.png"
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    assert plots.plot_confusion_matrix(path, y_true, y_pred, names) == path
    check_png(path, tmp_path, min_height=700, min_width=800)


@pytest.mark.parametrize("n_images", [200, 10])
def test_plot_samples_writes_png(tmp_path, n_images):
    images, y_true, y_pred, probs = fake_predictions(n_images)
    path = tmp_path / "samples.png"
    assert plots.plot_samples(path, images, y_true, y_pred, probs, DIGITS) == path
    check_png(path, tmp_path, min_height=400, min_width=400)


def test_confusion_matrix_counts_by_hand():
    y_true = [0, 0, 1, 2, 2, 2]
    y_pred = [0, 1, 1, 2, 0, 2]
    expected = [[1, 1, 0],
                [0, 1, 0],
                [1, 0, 2]]
    counts = plots.confusion_matrix(y_true, y_pred, 3)
    np.testing.assert_array_equal(counts, expected)
    assert counts.sum() == len(y_true)


def test_confusion_matrix_rows_are_class_sizes():
    _, y_true, y_pred, _ = fake_predictions()
    counts = plots.confusion_matrix(y_true, y_pred, 10)
    assert counts.shape == (10, 10) and counts.sum() == len(y_true)
    np.testing.assert_array_equal(counts.sum(axis=1), np.bincount(y_true, minlength=10))
    assert np.trace(counts) == np.sum(y_true == y_pred)


def test_confusion_matrix_rejects_labels_out_of_range():
    with pytest.raises(FastnnError, match="y_pred must hold labels in 0..2"):
        plots.confusion_matrix([0, 1], [0, 3], 3)


def test_choose_samples_swaps_in_mistakes_up_to_a_third():
    correct = np.ones(100, dtype=bool)
    correct[[5, 50, 60, 70, 80]] = False
    chosen = plots.choose_samples(correct, 9)
    # a third of 9 is 3: the mistake at 5 and the next two (50, 60) replace the last correct ones
    np.testing.assert_array_equal(chosen, [0, 1, 2, 3, 4, 5, 6, 50, 60])


def test_choose_samples_keeps_first_n_when_enough_mistakes_or_none():
    mostly_wrong = np.zeros(20, dtype=bool)
    np.testing.assert_array_equal(plots.choose_samples(mostly_wrong, 6), np.arange(6))
    all_right = np.ones(20, dtype=bool)
    np.testing.assert_array_equal(plots.choose_samples(all_right, 6), np.arange(6))
    np.testing.assert_array_equal(plots.choose_samples(all_right[:4], 6), np.arange(4))
