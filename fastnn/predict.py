"""Predict the digit in an image with saved weights.

    uv run python -m fastnn.predict runs/<run>/weights.npz digit.png [more.png ...]

The image is read as greyscale and resized to 28x28 if needed. MNIST digits are light on a dark
background; an image that is mostly light (dark ink on white paper) is inverted to match, and a
transparent background is filled with the shade opposite to the ink first.
"""
import argparse

import numpy as np
from PIL import Image, UnidentifiedImageError

from fastnn.cli import check_classes, friendly_errors
from fastnn.backends import BACKENDS
from fastnn.fileio import FastnnError
from fastnn.model import MLP

SIDE = 28  # MNIST images are 28x28
DIGITS = 10


def read_image(path):
    """An image file -> (784,) uint8 in MNIST's convention (light ink on dark), plus whether it was inverted."""
    try:
        with Image.open(path) as image:
            grey = flatten_transparency(image)
    except FileNotFoundError:
        raise FastnnError(f"{path}: no such image file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise FastnnError(f"{path}: not a readable image ({e}); pass a PNG or JPEG") from None
    if grey.size != (SIDE, SIDE):
        grey = grey.resize((SIDE, SIDE), Image.Resampling.LANCZOS)
    pixels = np.asarray(grey, np.uint8).reshape(-1)  # (784,)
    inverted = pixels.mean() > 127  # mostly light: dark ink on paper, the opposite of MNIST
    return (255 - pixels if inverted else pixels), inverted


def flatten_transparency(image):
    """The image as greyscale ("L"), its transparent parts filled with the shade opposite to its ink.

    A digit drawn on a transparent background (a typical PNG export) has colour only where alpha > 0;
    dropping alpha would turn black ink on transparent black into a blank image. Filling the
    background with white under dark ink (black under light ink) keeps the digit, and read_image's
    inversion then makes it light on dark like MNIST.
    """
    if "A" not in image.getbands() and "transparency" not in image.info:
        return image.convert("L")
    rgba = image.convert("RGBA")
    grey = np.asarray(rgba.convert("L"), np.float64)  # (H, W) 0..255
    alpha = np.asarray(rgba.getchannel("A"), np.float64) / 255  # (H, W) 0..1
    ink = np.average(grey, weights=alpha) if alpha.sum() else 0.0  # the opaque pixels' mean shade
    background = 255.0 if ink < 128 else 0.0
    return Image.fromarray(np.rint(grey * alpha + background * (1 - alpha)).astype(np.uint8), "L")


@friendly_errors
def main(argv=None):
    """Print one line per image: its predicted class and that class's probability. Returns the list."""
    parser = argparse.ArgumentParser(prog="python -m fastnn.predict", description=__doc__.splitlines()[0])
    parser.add_argument("weights", help="a weights.npz written by fastnn.train")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (28x28 or resizable)")
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="numpy")
    args = parser.parse_args(argv)
    model = MLP.load(args.weights, backend=args.backend)
    check_classes(model, args.weights, "MNIST", SIDE * SIDE, DIGITS)
    results = []
    for path in args.images:
        pixels, inverted = read_image(path)
        probs = model.predict_proba(pixels[None, :])[0]  # (K,)
        label = int(probs.argmax())
        note = " (inverted: dark ink on light background)" if inverted else ""
        print(f"{path}: {label} (probability {probs[label]:.1%}){note}")
        results.append((label, float(probs[label])))
    return results


if __name__ == "__main__":
    main()
