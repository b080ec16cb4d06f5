"""The CUDA backend: fastnn/ops.py's ops as numba-cuda kernels, for NVIDIA GPUs.

Same names, same parameters, same math as the NumPy reference (outputs first, overwritten), with
device arrays (numba DeviceNDArray) where it has NumPy arrays; scalars stay Python numbers.
Dimension letters: B = batch rows, C = input features, OC = output features, K = classes, L = layers.

    memory.py      device arrays, the training set on the GPU, check_available
    device.py      the math, as device functions, written once for both versions below
    op_kernels.py  version 1: one kernel per op; a train step of 2L + 3 launches (2L + 4 with max-norm)
    persistent.py  version 2: one persistent cooperative kernel runs S whole steps, 2L + 2 grid-wide
                   barriers per step (2L + 3 with max-norm) and one launch per call
    metrics.py     per-step loss and accuracy that stay on the GPU until read

Returned numbers. A step's loss and accuracy are computed on the GPU; turning them into Python
numbers makes the host wait for the GPU. So softmax_cross_entropy and the train steps return
DeviceScalar handles (metrics.py) in place of the reference's floats and ints: float(x), int(x),
x + y, x < y read them, and a read waits once for everything written so far.

`train_steps` is version 1, the one tested on many blocks, until bench/gpu.py has timed both on a GPU
and the tests have passed there; TRAIN_STEPS holds both.
"""
from kernels.cuda import op_kernels, persistent
from kernels.cuda.memory import check_available, empty, prepare_data, scratch_size, synchronize, to_device, to_host
from kernels.cuda.op_kernels import (argmax, dropout_forward, forward, gather_batch, linear_backward,
                                     linear_backward_input, linear_forward, linear_relu_forward, max_norm,
                                     relu_backward, relu_forward, softmax, softmax_cross_entropy, train_step, update)

TRAIN_STEPS = {1: op_kernels.train_steps, 2: persistent.train_steps}
train_steps = TRAIN_STEPS[1]

__all__ = ["argmax", "check_available", "dropout_forward", "empty", "forward", "gather_batch", "linear_backward",
           "linear_backward_input", "linear_forward", "linear_relu_forward", "max_norm", "prepare_data",
           "relu_backward", "relu_forward", "scratch_size", "softmax", "softmax_cross_entropy", "synchronize",
           "to_device", "to_host", "train_step", "train_steps", "update", "TRAIN_STEPS"]
