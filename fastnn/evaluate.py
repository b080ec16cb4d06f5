"""Score saved weights on the test set and write its confusion matrix.

    uv run python -m fastnn.evaluate runs/<run>/weights.npz
    uv run python -m fastnn.evaluate weights.npz --dataset fashion-mnist --out eval/

Prints the test accuracy and each class's accuracy; writes confusion_matrix.png beside the weights
(or into --out).
"""
import argparse
from pathlib import Path

import numpy as np

from fastnn import plots
from fastnn.cli import add_common_args, check_classes, friendly_errors
from fastnn.data import load_dataset
from fastnn.model import MLP


@friendly_errors
def main(argv=None):
    """Evaluate; returns {"test_accuracy": float, "confusion_matrix": path}."""
    parser = argparse.ArgumentParser(prog="python -m fastnn.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("weights", help="a weights.npz written by fastnn.train")
    add_common_args(parser)
    parser.add_argument("--out", metavar="DIR", help="where to write confusion_matrix.png "
                                                     "(default: the weights file's folder)")
    args = parser.parse_args(argv)
    model = MLP.load(args.weights, backend=args.backend, dtype=args.dtype or "float32")
    data = load_dataset(args.dataset, data_dir=args.data_dir)
    check_classes(model, args.weights, data.name, data.test_images.shape[1], len(data.classes))
    pred = model.predict(data.test_images)
    accuracy = float(np.mean(pred == data.test_labels))
    for k, name in enumerate(data.classes):
        mine = data.test_labels == k
        print(f"  {name:>12}: {np.mean(pred[mine] == k):.2%} of {mine.sum()}")
    out = Path(args.out) if args.out else Path(args.weights).parent
    figure = plots.plot_confusion_matrix(out / "confusion_matrix.png", data.test_labels, pred, data.classes)
    print(f"wrote {figure}")
    print(f"test accuracy: {accuracy:.2%}")
    return {"test_accuracy": accuracy, "confusion_matrix": figure}


if __name__ == "__main__":
    main()
