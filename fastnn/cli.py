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


def friendly_errors(main):
    """Run main(argv); a FastnnError or Ctrl-C becomes one line on stderr and an exit code."""
    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except FastnnError as e:
            sys.exit(f"error: {e}")
        except KeyboardInterrupt:
            sys.exit("interrupted")
    return wrapper
