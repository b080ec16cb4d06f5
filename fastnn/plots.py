"""Figures: loss and accuracy per epoch, the confusion matrix, a grid of test samples.

    plots.plot_loss_accuracy("runs/a/loss_accuracy.png", model.history_)
    plots.show_figures(["runs/a/loss_accuracy.png"])  # only when the user asked for windows

Figures are built with matplotlib's object-oriented API (`matplotlib.figure.Figure`), which renders
without a display and never picks a GUI backend; only `show_figures` touches pyplot. Every PNG is
written through `atomic_write`, so a crash never leaves half an image.
"""
import math

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fastnn.fileio import FastnnError, atomic_write

DPI = 120  # ~1200 px wide figures: sharp on screen, under 200 kB on disk
ACCURACIES = [("train_accuracy", "train"), ("val_accuracy", "validation"), ("test_accuracy", "test")]  # history keys
MISTAKE_COLOR = "tab:red"


def save_figure(fig, path):
    """Write `fig` to `path` as a PNG, atomically; returns `path`."""
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=DPI)
    return path


def plot_loss_accuracy(path, history):
    """Plot training loss (left) and accuracy in % (right) per epoch; save as PNG.

    Parameters
    ----------
    path : str or Path
        Where to write the PNG.
    history : list of dict
        One dict per epoch, as in `MLP.history_`: keys ``epoch``, ``loss``, ``train_accuracy`` and
        optionally ``val_loss``, ``val_accuracy`` and ``test_accuracy`` (accuracies are fractions in
        0..1; None when that set was not scored), and ``early_stopping`` (its ``best_epoch`` is marked).

    Returns
    -------
    path : the `path` argument.
    """
    if not history:
        raise FastnnError("history is empty: there is no epoch to plot")
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)

    loss_ax.plot([r["epoch"] for r in history], [r["loss"] for r in history], marker="o", label="train")
    validated = [r for r in history if r.get("val_loss") is not None]
    if validated:
        loss_ax.plot([r["epoch"] for r in validated], [r["val_loss"] for r in validated], marker="o",
                     label="validation")
        loss_ax.legend()
    loss_ax.set(title="loss", xlabel="epoch", ylabel="mean cross-entropy")

    for key, label in ACCURACIES:
        scored = [r for r in history if r.get(key) is not None]
        if scored:
            acc_ax.plot([r["epoch"] for r in scored], [100 * r[key] for r in scored], marker="o", label=label)
    acc_ax.set(title="accuracy", xlabel="epoch", ylabel="accuracy (%)")
    acc_ax.legend()

    first, last = history[0]["epoch"], history[-1]["epoch"]
    stops = [r["early_stopping"] for r in history if "early_stopping" in r]
    for ax in (loss_ax, acc_ax):
        for stop in stops:  # where early stopping took the weights from
            ax.axvline(stop["best_epoch"], color="grey", linestyle="--", linewidth=1)
            ax.annotate(f"weights kept: epoch {stop['best_epoch']}", (stop["best_epoch"], 1),
                        xycoords=("data", "axes fraction"), xytext=(-3, -3), textcoords="offset points",
                        ha="right", va="top", fontsize=8, color="grey")
        ax.set_xlim(first - 0.5, last + 0.5)  # half an epoch of margin: a single epoch gets one tick, not 0.95..1.05
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
    fig.suptitle(summary_line(history[-1]))
    return save_figure(fig, path)


def summary_line(record):
    """One epoch's numbers as a title: 'epoch 10: loss 0.0712 | train 98.1% | test 97.4%'."""
    parts = [f"epoch {record['epoch']}: loss {record['loss']:.4f}"]
    for key, label in ACCURACIES:
        if record.get(key) is not None:
            parts.append(f"{label} {record[key]:.1%}")
    return " | ".join(parts)


def confusion_matrix(y_true, y_pred, n_classes):
    """Count each (true, predicted) pair of labels.

    Parameters
    ----------
    y_true, y_pred : array_like of int, shape (N,)
        Labels in ``0 .. n_classes - 1``.
    n_classes : int

    Returns
    -------
    counts : ndarray of int64, shape (n_classes, n_classes)
        ``counts[t, p]`` is how many samples of true class ``t`` were predicted as ``p``; rows sum to
        the class sizes, the diagonal holds the correct predictions.
    """
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise FastnnError(f"y_true and y_pred must be 1-D and the same length; got {y_true.shape} and {y_pred.shape}")
    for name, labels in [("y_true", y_true), ("y_pred", y_pred)]:
        if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
            raise FastnnError(f"{name} must hold labels in 0..{n_classes - 1}; got {labels.min()}..{labels.max()}")
    # pair (t, p) -> cell t * n_classes + p of the flattened matrix
    counts = np.bincount(n_classes * y_true + y_pred, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes)


def plot_confusion_matrix(path, y_true, y_pred, class_names):
    """Plot the confusion matrix as an annotated heat map; save as PNG.

    Parameters
    ----------
    path : str or Path
        Where to write the PNG.
    y_true, y_pred : array_like of int, shape (N,)
        True and predicted labels, indices into `class_names`.
    class_names : sequence of str
        One name per class, e.g. ``"0" .. "9"`` or Fashion-MNIST's ``"T-shirt/top"``, ...

    Returns
    -------
    path : the `path` argument.
    """
    n = len(class_names)
    counts = confusion_matrix(y_true, y_pred, n)
    fig = Figure(figsize=(8, 7), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8, label="count")
    annotate_cells(ax, counts)

    ticks = np.arange(n)
    if max(map(len, class_names)) > 2:  # long names ("T-shirt/top") would overlap side by side
        ax.set_xticks(ticks, class_names, rotation=45, ha="right", rotation_mode="anchor")
    else:
        ax.set_xticks(ticks, class_names)
    ax.set_yticks(ticks, class_names)
    ax.set(xlabel="predicted", ylabel="true")
    correct, total = np.trace(counts), counts.sum()
    accuracy = correct / total if total else float("nan")
    ax.set_title(f"confusion matrix: accuracy {accuracy:.2%} ({correct} of {total})")
    return save_figure(fig, path)


def annotate_cells(ax, counts):
    """Write each cell's count on it: white on dark cells, black on light ones, grey for zeros."""
    dark = counts > counts.max() / 2  # the "Blues" colormap is dark above about half its range
    fontsize = 9 if len(counts) <= 10 else 6
    for (t, p), count in np.ndenumerate(counts):
        color = "white" if dark[t, p] else "black" if count else "0.7"
        ax.text(p, t, str(count), ha="center", va="center", color=color, fontsize=fontsize)


def plot_samples(path, images, y_true, y_pred, probs, class_names, n=36):
    """Plot a grid of images titled with prediction, confidence and truth; mistakes framed in red.

    Shows the first `n` images, except that when fewer than a third of those are mistakes, later
    mistakes take the place of the last correct ones (see `choose_samples`).

    Parameters
    ----------
    path : str or Path
        Where to write the PNG.
    images : ndarray of uint8, shape (N, 784)
        28x28 images, flattened row by row.
    y_true, y_pred : ndarray of int, shape (N,)
        True and predicted labels, indices into `class_names`.
    probs : ndarray of float, shape (N,)
        The model's probability for its predicted class.
    class_names : sequence of str
    n : int
        How many images to show, at most.

    Returns
    -------
    path : the `path` argument.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    chosen = choose_samples(y_true == y_pred, n)
    cols = math.ceil(math.sqrt(len(chosen)))
    rows = math.ceil(len(chosen) / cols)
    fig = Figure(figsize=(1.6 * cols, 1.9 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, i in zip(axes, chosen):
        draw_sample(ax, images[i], class_names[y_pred[i]], probs[i], class_names[y_true[i]])
    for ax in axes[len(chosen):]:
        ax.set_visible(False)
    n_wrong = np.count_nonzero(y_true[chosen] != y_pred[chosen])
    fig.suptitle(f"{len(chosen)} test samples; mistakes in red: {n_wrong}")
    return save_figure(fig, path)


def choose_samples(correct, n):
    """Pick which samples to show: the first `n`, with up to a third of them mistakes if any exist.

    Deterministic: keeps the earliest mistakes and the earliest correct samples, in index order.

    Parameters
    ----------
    correct : ndarray of bool, shape (N,)
        Whether each sample was predicted right.
    n : int
        How many to pick (fewer when N < n).

    Returns
    -------
    indices : ndarray of int, shape (min(n, N),), increasing.
    """
    n = min(n, len(correct))
    wrong, right = np.flatnonzero(~correct), np.flatnonzero(correct)
    # at least the mistakes already among the first n; at least n // 3 when there are that many
    n_wrong = min(len(wrong), max(n // 3, np.count_nonzero(~correct[:n])))
    return np.sort(np.concatenate([wrong[:n_wrong], right[:n - n_wrong]]))


def draw_sample(ax, image, pred_name, prob, true_name):
    """One 28x28 image titled 'pred P (xx%)' over 'true T'; red title and frame when P != T."""
    mistake = pred_name != true_name
    ax.imshow(image.reshape(28, 28), cmap="gray_r", vmin=0, vmax=255)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"pred {pred_name} ({prob:.0%})\ntrue {true_name}", fontsize=8,
                 color=MISTAKE_COLOR if mistake else "black")
    for spine in ax.spines.values():
        spine.set_visible(mistake)
        spine.set_color(MISTAKE_COLOR)
        spine.set_linewidth(2.5)


def show_figures(paths):
    """Open saved PNGs in windows (for ``--show``); blocks until the windows are closed.

    Parameters
    ----------
    paths : iterable of str or Path
        PNGs written by the functions above.
    """
    import matplotlib.pyplot as plt  # imported here so that saving figures never needs a display

    for path in paths:
        image = plt.imread(path)
        height, width = image.shape[:2]
        fig = plt.figure(str(path), figsize=(width / DPI, height / DPI), dpi=DPI)
        ax = fig.add_axes((0, 0, 1, 1))
        ax.imshow(image)
        ax.set_axis_off()
    plt.show()
