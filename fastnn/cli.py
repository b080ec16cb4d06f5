"""What the command-line entry points share: the data and backend flags, and how errors are shown."""
import functools
import sys

from fastnn.backends import BACKENDS
from fastnn.fileio import FastnnError

DATASETS = ("mnist", "fashion-mnist")


def add_common_args(parser):
    """--backend, --dtype, --dataset, --data-dir: the same meaning in train, evaluate and predict."""
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="numpy",
                        help="which implementation runs the math (default: numpy)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default=None,
                        help="floating-point type (default: float32)")
    parser.add_argument("--dataset", choices=DATASETS, default="mnist",
                        help="mnist is bundled; fashion-mnist is read from --data-dir or downloaded once")
    parser.add_argument("--data-dir", metavar="DIR", default=None,
                        help="folder holding the four IDX files (default: bundled / user cache)")


def check_classes(model, weights_path, dataset, n_pixels, n_classes):
    """Refuse a model whose input is not the dataset's pixels or whose output layer is not one unit per
    class: its predictions would be read as the wrong labels."""
    n_inputs, n_outputs = model.coefs_[0].shape[0], model.coefs_[-1].shape[1]
    if (n_inputs, n_outputs) != (n_pixels, n_classes):
        raise FastnnError(f"{weights_path}: the model maps {n_inputs} inputs to {n_outputs} outputs, but {dataset} "
                          f"has {n_pixels} pixels and {n_classes} classes: pass weights trained on it")


def friendly_errors(main):
    """Run main(argv); a FastnnError, an OS error (disk full, permissions) or Ctrl-C becomes one line on
    stderr and a non-zero exit status."""
    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except FastnnError as e:
            sys.exit(f"error: {e}")
        except OSError as e:  # e.g. [Errno 28] No space left on device: 'runs/a/.weights.npz.x.tmp'
            sys.exit(f"error: {e}")
        except KeyboardInterrupt:
            sys.exit("interrupted")
    return wrapper
