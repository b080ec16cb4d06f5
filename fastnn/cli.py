"""What the command-line entry points share: the data and backend flags, flags made from the settings'
table, and how errors are shown."""
import argparse
import functools
import sys

from fastnn.fileio import FastnnError
from fastnn.settings import SETTINGS, Flag, Interval, Options

DATASETS = ("mnist", "fashion-mnist")


def add_setting_flag(parser, name, default=None, default_text=None):
    """The flag of setting `name` (fastnn.settings), its value stored under the setting's name; None
    (default) when not given, so that a preset's or the model's own value stands. default_text: what
    --help says about the default (else "default: " the setting's default)."""
    setting = SETTINGS[name]
    flag = setting.option
    help_text = f"{setting.help} ({default_text or 'default: ' + setting.show(setting.default)})"
    if isinstance(setting.allowed, Flag):
        parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=default, help=help_text)
    elif isinstance(setting.allowed, Options):
        parser.add_argument(flag, dest=name, choices=setting.allowed.names, default=default, help=help_text)
    else:
        parser.add_argument(flag, dest=name, type=_parser(setting.allowed), default=default,
                            metavar=setting.value_name, help=help_text)


def _parser(allowed):
    """argparse's type= for a setting's values: int or float for an Interval (argparse then says "invalid
    int value: 'x'"), else allowed.parse, its ValueError shown in its own words."""
    if isinstance(allowed, Interval):
        return allowed.kind

    def parse(text):
        try:
            return allowed.parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def add_common_args(parser):
    """--backend, --dtype, --dataset, --data-dir: the same meaning in train, evaluate and predict."""
    add_setting_flag(parser, "backend", default=SETTINGS["backend"].default)
    add_setting_flag(parser, "dtype")
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
