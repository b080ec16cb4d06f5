"""Version 1 of the CUDA backend: one kernel per op of fastnn/ops.py, and a train step of 2L + 3 launches.

Same names, parameters and math as the NumPy reference (outputs first, overwritten), with device
arrays where it has NumPy arrays; scalars stay Python numbers. The device functions that do the math
are in kernels/cuda/device.py, shared with the persistent kernel (kernels/cuda/persistent.py).
"""
import functools

import numpy as np
from numba import cuda, float64, int32
from numba.np.numpy_support import from_dtype

from kernels.cuda.device import (THREADS, TILE, TILE_SHAPE, argmax_row, gather_rows, linear_backward_tiles,
                                 linear_forward_tiles, n_tiles, nothing, sgd_flat, sgd_layers, softmax_row,
                                 softmax_xent_rows)
from kernels.cuda.metrics import metrics, step_log

# Grids of THREADS-thread blocks (every kernel but the matmuls and the loss) stop at MAX_BLOCKS: the
# kernels loop grid-stride over their elements or rows, so more blocks would only add scheduling
MAX_BLOCKS = 1024


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
    def backward_kernel(dweight, dbias, dinp, dout, inp, weight, input_grad):
        sa = cuda.shared.array(TILE_SHAPE, shared_dtype)
        sb = cuda.shared.array(TILE_SHAPE, shared_dtype)
        linear_backward_tiles(dweight, dbias, dinp, dout, inp, weight, input_grad, cuda.blockIdx.x,
                              cuda.gridDim.x, sa, sb)

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
    for b in range(cuda.grid(1), logits.shape[0], cuda.gridsize(1)):  # a thread per row of K logits
        softmax_row(probs, logits, b)


@cuda.jit
def _argmax_kernel(out, logits):
    for b in range(cuda.grid(1), logits.shape[0], cuda.gridsize(1)):  # a thread per row of K logits
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
def gather_batch(inp, targets, data, indices):
    """inp (B, C) = data.images[indices] * data.scale, targets (B,) = data.labels[indices]."""
    _gather_kernel[_grid(inp.size), THREADS](inp, targets, data.images, data.labels, indices, np.float64(data.scale))


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
        dweight, dbias, nothing(2, dout.dtype), dout, inp, nothing(2, dout.dtype), False)


def linear_backward_input(dinp, dout, weight, inp):
    """dinp (B, C) = (dout (B, OC) @ weight (C, OC).T) * (inp (B, C) > 0)."""
    _, backward_kernel = _tile_kernels(dout.dtype)
    backward_kernel[max(1, n_tiles(dinp.shape)), (TILE, TILE)](
        nothing(2, dout.dtype), nothing(1, dout.dtype), dinp, dout, inp, weight, True)


def sgd_update(param, grad, velocity, lr, momentum, weight_decay):
    """velocity = momentum * velocity + grad + weight_decay * param;  param -= lr * velocity."""
    n, real = param.size, param.dtype.type  # scalars in the param's dtype: float32 math stays float32
    _sgd_kernel[_grid(n), THREADS](param.reshape(n), grad.reshape(n), velocity.reshape(n),
                                   real(lr), real(momentum), real(weight_decay))


def argmax(out, logits):
    """out (B,) = index of the first largest logit of each row of logits (B, K)."""
    _argmax_kernel[_grid(logits.shape[0]), THREADS](out, logits)


def forward(acts, params):
    """acts[L] (B, K) = logits of acts[0] (B, C_0); acts[l] (B, C_l) = hidden ReLU outputs. L launches."""
    weights, biases = params
    L = len(weights)
    forward_kernel, _ = _tile_kernels(acts[0].dtype)
    for l in range(L):  # the hidden layers with their ReLU, then the logits without
        out = acts[l + 1]
        forward_kernel[max(1, n_tiles(out.shape)), (TILE, TILE)](out, acts[l], weights[l], biases[l], l < L - 1)


def train_step(params, grads, optimizer, buffers, data, indices, lr, hyper):
    """fastnn.ops.train_step in 2L + 3 launches; returns (loss, n_correct) as DeviceScalars."""
    weights, biases = params
    acts, douts, targets, _ = buffers
    L, dtype = len(weights), weights[0].dtype
    _, backward_kernel = _tile_kernels(dtype)
    gather_batch(acts[0], targets, data, indices)
    forward(acts, params)
    log = step_log()
    first = log.claim(1)
    _xent_kernel[1, THREADS](douts[L - 1], acts[L], targets, log.device, first % len(log))
    for l in range(L - 1, -1, -1):
        dinp = douts[l - 1] if l > 0 else nothing(2, dtype)  # the pixels need no gradient
        backward_kernel[max(1, n_tiles(weights[l].shape) + n_tiles(dinp.shape)), (TILE, TILE)](
            grads.weights[l], grads.biases[l], dinp, douts[l], acts[l], weights[l], l > 0)
    real = dtype.type  # scalars in the parameters' dtype: float32 math stays float32
    velocity = optimizer.velocity
    n = sum(w.size + b.size for w, b in zip(weights, biases))
    _sgd_layers_kernel[_grid(n), THREADS](tuple(weights), tuple(biases), tuple(grads.weights), tuple(grads.biases),
                                          tuple(velocity.weights), tuple(velocity.biases), real(lr),
                                          real(hyper.momentum), real(hyper.weight_decay))
    return metrics(first, 1)[0]


def train_steps(params, grads, optimizer, buffers, data, steps, hyper):
    """fastnn.ops.train_steps as S train_steps of 2L + 3 launches each; returns (losses, n_correct),
    lists of DeviceScalars. steps.indices (S, B) and steps.lrs (S,) are device arrays."""
    lrs = steps.lrs.copy_to_host()  # (S,) read on the host, one small copy per call
    results = [train_step(params, grads, optimizer, buffers, data, steps.indices[s], float(lrs[s]), hyper)
               for s in range(len(lrs))]
    return [loss for loss, _ in results], [n_correct for _, n_correct in results]

