"""Shared by the numbered-version modules (kernels/dev/linear_forward.py, linear_backward.py):
real MNIST batches, a check of every version against the reference, and timing that gives every call
a fresh batch.

Fresh data matters: on one repeated batch the branch predictor learns its zero pattern and the
zero-skipping kernels look 30-50% faster than they run in training.
"""
import time

import numpy as np
from threadpoolctl import threadpool_limits

from fastnn.data import load_dataset

N_BATCHES = 32  # distinct batches cycled through while timing
TIMED_CALLS = 300  # per version; the median is reported
WARMUP_CALLS = 20


def mnist_batches(B, n, dtype=np.float32, seed=0):
    """n random batches of B MNIST training images, (B, 784) pixels scaled to [0, 1]."""
    images = load_dataset("mnist").train_images  # (60000, 784) uint8, checksum-verified
    rng = np.random.default_rng(seed)
    return [(images[rng.choice(len(images), B, replace=False)] / 255).astype(dtype) for _ in range(n)]


def time_fresh(fn, load):
    """Median seconds of fn() over TIMED_CALLS calls; load(i) puts batch i in place, untimed, first."""
    seconds = []
    for call in range(WARMUP_CALLS + TIMED_CALLS):
        load(call % N_BATCHES)
        start = time.perf_counter()
        fn()
        if call >= WARMUP_CALLS:
            seconds.append(time.perf_counter() - start)
    return float(np.median(seconds))


def benchmark(versions, reference, load, flops):
    """Time the NumPy reference and each numbered version in this one process; print a table.

    versions: {number: zero-argument callable}. NumPy runs with its BLAS threads; the Numba versions
    run with BLAS capped at one thread, because spinning BLAS threads slow Numba's pool (docs/numba.md).
    """
    ref_seconds = time_fresh(reference, load)
    print(f"{'version':>8} {'time (us)':>10} {'GFLOP/s':>8} {'vs numpy':>9}")
    print(f"{'numpy':>8} {ref_seconds * 1e6:10.1f} {flops / ref_seconds / 1e9:8.1f} {1.0:8.2f}x")
    with threadpool_limits(1, user_api="blas"):
        for number, fn in versions.items():
            seconds = time_fresh(fn, load)
            print(f"{number:>8} {seconds * 1e6:10.1f} {flops / seconds / 1e9:8.1f} {ref_seconds / seconds:8.2f}x")


def check_then_time(argv, kernels, reference, make_inputs, B=64, C=784):
    """`python -m kernels.dev.<module> [N]`: check version N (all by default) against the reference on
    every batch, then time it, for a layer of OC = 128 and 512 outputs.

    kernels: {number: kernel(*outputs, *inputs)}; reference: the fastnn.ops op, same signature.
    make_inputs(rng, inp, OC) -> (output shapes, inputs); inp (B, C) receives each MNIST batch in place.
    """
    numbers = [int(argv[0])] if argv else list(kernels)
    batches = mnist_batches(B, N_BATCHES)
    inp = batches[0].copy()

    def load(i):
        inp[:] = batches[i]

    for OC in (128, 512):
        shapes, inputs = make_inputs(np.random.default_rng(OC), inp, OC)
        want = [np.empty(shape, np.float32) for shape in shapes]
        got = [np.empty(shape, np.float32) for shape in shapes]
        for i in range(N_BATCHES):  # every batch, as timed
            load(i)
            reference(*want, *inputs)
            for n in numbers:
                for out in got:
                    out.fill(np.nan)
                kernels[n](*got, *inputs)
                for g, w in zip(got, want):
                    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4, err_msg=f"version {n}")
        print(f"B={B} C={C} OC={OC} float32: all results match. Starting benchmarks.")
        benchmark({n: (lambda n=n: kernels[n](*got, *inputs)) for n in numbers},
                  lambda: reference(*want, *inputs), load, flops=2 * B * C * OC)
