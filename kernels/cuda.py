"""The CUDA backend: fastnn/ops.py's ops as numba-cuda kernels, for NVIDIA GPUs.

Same names, same parameters, same math as the NumPy reference (outputs first, overwritten), with
device arrays (numba DeviceNDArray) where it has NumPy arrays; scalars stay Python numbers.
Dimension letters: B = batch rows, C = input features, OC = output features, K = classes, L = layers.

Memory. The model owns every buffer and makes them with this module's `empty(shape, dtype)`
(uninitialised device array), `to_device(array)` (a copy on the GPU) and `to_host(array)` (a NumPy
copy back): weights, biases, their gradients and velocities, acts, dacts (dacts[0] is scratch, unused here),
dlogits, targets (int64), the dataset's images (N, C) uint8 or float and labels (N,) int64, and each
epoch's shuffled row indices (int64). The kernels allocate nothing per step.

Returned numbers. A step's loss and accuracy are computed on the GPU; turning them into Python
numbers makes the host wait for the GPU. So softmax_cross_entropy and train_step return
DeviceScalar handles (kernels/cuda_metrics.py) in place of the reference's float and int:
float(x), int(x), x + y, x < y read them, and a read waits once for everything written so far.
Keep an epoch's handles and read them at its end: one wait per epoch. Reading them every step
(a divergence check after each step) works too, at the price of a wait per step.

Launches per SGD step (a network of L layers: L = 2 for one hidden layer)
    version 1, one kernel per op, fused:  2L + 3  (gather, L forward with bias [+ ReLU], softmax
        cross-entropy with argmax and accuracy, L backward each writing dweight, dbias and the
        masked dinp, one SGD update of every parameter)
    version 2, persistent cooperative kernel (kernels/cuda_persistent.py):  1, with 2L + 2 grid-wide
        barriers inside; its `train_steps` (cuda only) runs S steps, e.g. an epoch's full batches, in 1.
`train_step` is version 1, the one tested on many blocks, until bench/gpu.py has timed both on a GPU
and tests/test_cuda.py has passed there; TRAIN_STEPS holds both.
"""
import functools
import importlib.util

import numpy as np
from numba import cuda, float64, int32
from numba.np.numpy_support import from_dtype

from fastnn.fileio import FastnnError
from kernels import cuda_persistent
from kernels.cuda_device import (THREADS, TILE, TILE_SHAPE, argmax_row, gather_rows, linear_backward_tiles,
                                 linear_forward_tiles, n_tiles, nothing, sgd_flat, sgd_layers, softmax_row,
                                 softmax_xent_rows)
from kernels.cuda_metrics import metrics, step_log

MAX_BLOCKS = 1024  # elementwise grids: grid-stride loops, so more blocks would only add scheduling


def check_available():
    """Raise FastnnError unless numba-cuda is installed and sees a GPU (or the simulator is on)."""
    if importlib.util.find_spec("numba_cuda") is None:
        raise FastnnError("the cuda backend needs numba-cuda: install the cuda extra: uv sync --extra cuda")
    if not cuda.is_available():
        raise FastnnError("no NVIDIA GPU found: use --backend numba")


# ---- memory --------------------------------------------------------------------------------
def empty(shape, dtype):
    """A new uninitialised device array."""
    return cuda.device_array(shape, np.dtype(dtype))


def to_device(array):
    """A copy of a NumPy array on the GPU (C-contiguous)."""
    return cuda.to_device(np.ascontiguousarray(array))


def to_host(array):
    """A NumPy copy of a device array (waits for the kernels writing it)."""
    return array.copy_to_host()


# ---- kernels -------------------------------------------------------------------------------
def _grid(n, per_block=THREADS):
    """Blocks for n work items, at least 1 (an empty grid is a launch error), at most MAX_BLOCKS."""
    return min(MAX_BLOCKS, max(1, -(-n // per_block)))


@functools.cache
def _tile_kernels(dtype):
    """The shared-memory matmul kernels for one float dtype (shared arrays need their dtype at compile time).

    One block of (TILE, TILE) threads per output tile: launch n_tiles(...) blocks.
    """
    shared_dtype = from_dtype(dtype)

    @cuda.jit
    def forward_kernel(out, inp, weight, bias, relu):
        sa = cuda.shared.array(TILE_SHAPE, shared_dtype)  # one declaration a line: the simulator
        sb = cuda.shared.array(TILE_SHAPE, shared_dtype)  # tells shared arrays apart by line
        linear_forward_tiles(out, inp, weight, bias, relu, cuda.blockIdx.x, cuda.gridDim.x, sa, sb)

    @cuda.jit
    def backward_kernel(dweight, dbias, dinp, dout, inp, weight):
        sa = cuda.shared.array(TILE_SHAPE, shared_dtype)
        sb = cuda.shared.array(TILE_SHAPE, shared_dtype)
        linear_backward_tiles(dweight, dbias, dinp, dout, inp, weight, cuda.blockIdx.x, cuda.gridDim.x, sa, sb)

    return forward_kernel, backward_kernel


@cuda.jit
def _gather_kernel(inp, targets, images, labels, indices, scale):
    gather_rows(inp, targets, images, labels, indices, scale, cuda.grid(1), cuda.gridsize(1))


@cuda.jit
def _relu_kernel(out, inp):
    # out, inp: flat (B * C,) views
    zero = out.dtype.type(0)
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = zero if inp[i] < 0 else inp[i]  # `< 0`: NaN passes through, as with np.maximum


@cuda.jit
def _relu_backward_kernel(dinp, dout, out):
    # dinp, dout, out: flat (B * C,) views
    zero = dinp.dtype.type(0)
    for i in range(cuda.grid(1), dinp.size, cuda.gridsize(1)):
        dinp[i] = dout[i] if out[i] > 0 else zero


@cuda.jit
def _softmax_kernel(probs, logits):
    b = cuda.grid(1)  # one thread per row of K logits
    if b < logits.shape[0]:
        softmax_row(probs, logits, b)


@cuda.jit
def _argmax_kernel(out, logits):
    b = cuda.grid(1)  # one thread per row of K logits
    if b < logits.shape[0]:
        argmax_row(out, logits, b)


@cuda.jit
def _xent_kernel(dlogits, logits, targets, log, slot):
    # one block of THREADS threads: the batch's loss and correct count are summed in shared memory
    loss_parts = cuda.shared.array(THREADS, float64)
    correct_parts = cuda.shared.array(THREADS, int32)
    softmax_xent_rows(dlogits, logits, targets, log, slot, loss_parts, correct_parts)


@cuda.jit
def _sgd_kernel(param, grad, velocity, lr, momentum, weight_decay):
    sgd_flat(param, grad, velocity, lr, momentum, weight_decay, cuda.grid(1), cuda.gridsize(1))


@cuda.jit
def _sgd_layers_kernel(weights, biases, dweights, dbiases, velocities_w, velocities_b, lr, momentum,
                       weight_decay):
    sgd_layers(weights, biases, dweights, dbiases, velocities_w, velocities_b, lr, momentum, weight_decay,
               cuda.grid(1), cuda.gridsize(1))


# ---- ops (fastnn/ops.py's signatures) ------------------------------------------------------
def gather_batch(inp, targets, images, labels, indices, scale):
    """inp (B, C) = images[indices] * scale, targets (B,) = labels[indices]."""
    _gather_kernel[_grid(inp.size), THREADS](inp, targets, images, labels, indices, np.float64(scale))


def linear_forward(out, inp, weight, bias):
    """out (B, OC) = inp (B, C) @ weight (C, OC) + bias (OC)."""
    forward_kernel, _ = _tile_kernels(out.dtype)
    forward_kernel[max(1, n_tiles(out.shape)), (TILE, TILE)](out, inp, weight, bias, False)


def relu_forward(out, inp):
    """out = max(inp, 0), elementwise; out may be inp."""
    _relu_kernel[_grid(out.size), THREADS](out.reshape(out.size), inp.reshape(inp.size))


def linear_relu_forward(out, inp, weight, bias):
    """out (B, OC) = relu(inp (B, C) @ weight (C, OC) + bias (OC)), the ReLU in the matmul's epilogue."""
    forward_kernel, _ = _tile_kernels(out.dtype)
    forward_kernel[max(1, n_tiles(out.shape)), (TILE, TILE)](out, inp, weight, bias, True)


def relu_backward(dinp, dout, out):
    """dinp = dout where out > 0, else 0."""
    n = dinp.size
    _relu_backward_kernel[_grid(n), THREADS](dinp.reshape(n), dout.reshape(n), out.reshape(n))


def softmax(probs, logits):
    """probs (B, K) = softmax of logits (B, K) over classes."""
    _softmax_kernel[_grid(logits.shape[0]), THREADS](probs, logits)


def softmax_cross_entropy(dlogits, logits, targets):
    """dlogits (B, K) = (softmax(logits) - onehot(targets)) / B; returns the mean loss as a DeviceScalar."""
    log = step_log()
    first = log.claim(1)
    _xent_kernel[1, THREADS](dlogits, logits, targets, log.device, first % len(log))
    return metrics(first, 1)[0][0]


def linear_backward(dweight, dbias, dout, inp):
    """dweight (C, OC) = inp (B, C).T @ dout (B, OC); dbias (OC) = dout summed over B."""
    _, backward_kernel = _tile_kernels(dout.dtype)
    backward_kernel[max(1, n_tiles(dweight.shape)), (TILE, TILE)](
        dweight, dbias, nothing(2, dout.dtype), dout, inp, nothing(2, dout.dtype))


def linear_backward_input(dinp, dout, weight, inp):
    """dinp (B, C) = (dout (B, OC) @ weight (C, OC).T) * (inp (B, C) > 0)."""
    _, backward_kernel = _tile_kernels(dout.dtype)
    backward_kernel[max(1, n_tiles(dinp.shape)), (TILE, TILE)](
        nothing(2, dout.dtype), nothing(1, dout.dtype), dinp, dout, inp, weight)


def sgd_update(param, grad, velocity, lr, momentum, weight_decay):
    """velocity = momentum * velocity + grad + weight_decay * param;  param -= lr * velocity."""
    n, real = param.size, param.dtype.type  # scalars in the param's dtype: float32 math stays float32
    _sgd_kernel[_grid(n), THREADS](param.reshape(n), grad.reshape(n), velocity.reshape(n),
                                   real(lr), real(momentum), real(weight_decay))


def argmax(out, logits):
    """out (B,) = index of the first largest logit of each row of logits (B, K)."""
    _argmax_kernel[_grid(logits.shape[0]), THREADS](out, logits)


def forward(acts, weights, biases):
    """acts[L] (B, K) = logits of acts[0] (B, C_0); acts[l] (B, C_l) = hidden ReLU outputs. L launches."""
    L = len(weights)
    for l in range(L - 1):
        linear_relu_forward(acts[l + 1], acts[l], weights[l], biases[l])
    linear_forward(acts[L], acts[L - 1], weights[L - 1], biases[L - 1])


def train_step1(weights, biases, dweights, dbiases, velocities_w, velocities_b, acts, dacts, dlogits, targets,
                images, labels, indices, scale, lr, momentum, weight_decay):
    """fastnn.ops.train_step in 2L + 3 launches; returns (loss, n_correct) as DeviceScalars."""
    L, dtype = len(weights), weights[0].dtype
    _, backward_kernel = _tile_kernels(dtype)
    gather_batch(acts[0], targets, images, labels, indices, scale)
    forward(acts, weights, biases)
    log = step_log()
    first = log.claim(1)
    _xent_kernel[1, THREADS](dlogits, acts[L], targets, log.device, first % len(log))
    dout = dlogits
    for l in range(L - 1, -1, -1):
        dinp = dacts[l] if l > 0 else nothing(2, dtype)  # pixels need no gradient
        backward_kernel[max(1, n_tiles(weights[l].shape) + n_tiles(dinp.shape)), (TILE, TILE)](
            dweights[l], dbiases[l], dinp, dout, acts[l], weights[l])
        dout = dinp
    real = dtype.type
    n = sum(w.size + b.size for w, b in zip(weights, biases))
    _sgd_layers_kernel[_grid(n), THREADS](tuple(weights), tuple(biases), tuple(dweights), tuple(dbiases),
                                          tuple(velocities_w), tuple(velocities_b), real(lr), real(momentum),
                                          real(weight_decay))
    return metrics(first, 1)[0]


TRAIN_STEPS = {1: train_step1, 2: cuda_persistent.train_step}
train_step = TRAIN_STEPS[1]
train_steps = cuda_persistent.train_steps  # S steps in one launch: see kernels/cuda_persistent.py
