"""The first layer, sparse or dense, decided by measurement: train_steps on real MNIST batches with the
training set handed over as sparse images (kernels.cpu's rule: below LISTED_FROM_UNITS units the CSR
rows of their non-zeros, from it on the micro-kernel's listed tiles, which add only the pixels where
one of a tile's images is not 0) or as dense rows (the micro-kernel over every pixel).

    uv run python -m kernels.dev.first_layer

Each shape is one hidden layer (784-H-10, SGD with momentum 0.9) at the batch size the side-by-side
comparison uses for it, and also the default preset's two layers and the large shape. Both forms run
the same compiled train_steps (CsrData.sparse decides); each is timed as the median of CALLS calls of
STEPS_PER_CALL steps, alternating the two forms, after a warm-up call. The machine is shared: compare
the columns of one run. (The CSR rows against the listed tiles at every width: set LISTED_FROM_UNITS
in kernels/cpu.py to 0 or to 10**9 and run this again.)
"""
import time

import numpy as np

from fastnn.bundles import Hyper, Steps, he_init, training_state
from fastnn.data import load_dataset
from fastnn.loop import STEPS_PER_CALL
from kernels import cpu

SHAPES = (((784, 128, 10), 64), ((784, 256, 10), 128), ((784, 512, 10), 256), ((784, 1024, 10), 256),
          ((784, 512, 256, 10), 128), ((784, 1024, 1024, 10), 256))
CALLS = 15


def dense_data(images, labels):
    """prepare_data's result with the sparse form turned off: the first layer gathers dense rows."""
    return cpu.CsrData(images, labels, 1 / 255, False, *(np.empty(0, t) for t in (np.int64, np.int32, np.uint8)))


def main():
    mnist = load_dataset("mnist")
    images, labels = mnist.train_images, mnist.train_labels.astype(np.int64)
    forms = {"sparse": cpu.prepare_data(images, labels, 1 / 255), "dense": dense_data(images, labels)}
    assert forms["sparse"].sparse
    hyper = Hyper(momentum=0.9)
    print(f"{'layers':>22} {'B':>4} {'sparse ms/step':>15} {'dense ms/step':>14} {'dense/sparse':>13}")
    for sizes, B in SHAPES:
        rng = np.random.default_rng(0)
        steps = Steps(rng.permutation(len(images))[:STEPS_PER_CALL * B].reshape(STEPS_PER_CALL, B),
                      np.full(STEPS_PER_CALL, 0.01), np.arange(1, STEPS_PER_CALL + 1))
        states = {form: training_state(cpu, he_init(sizes, np.float32, seed=42), B) for form in forms}
        seconds = {form: [] for form in forms}
        for call in range(CALLS + 1):
            for form, data in forms.items():
                start = time.perf_counter()
                cpu.train_steps(*states[form], data, steps, hyper)
                if call:  # call 0 compiles and warms up
                    seconds[form].append(time.perf_counter() - start)
        sparse, dense = (np.median(seconds[form]) / STEPS_PER_CALL * 1e3 for form in ("sparse", "dense"))
        print(f"{'-'.join(map(str, sizes)):>22} {B:>4} {sparse:15.3f} {dense:14.3f} {dense / sparse:13.2f}")


if __name__ == "__main__":
    main()
