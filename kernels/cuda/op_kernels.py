"""Version 1 of the CUDA backend: one kernel per op of fastnn/ops.py, and a train step of 2L + 3 launches
(2L + 4 with max-norm; dropout rides in the matmul kernels).

Same names, parameters and math as the NumPy reference (outputs first, overwritten), with device
arrays where it has NumPy arrays; scalars stay Python numbers. The device functions that do the math
are in kernels/cuda/device.py, shared with the persistent kernel (kernels/cuda/persistent.py).
"""
import functools

import numpy as np
from numba import cuda, float64, int32
from numba.np.numpy_support import from_dtype

from fastnn.bundles import Hyper
from kernels.cuda.device import (THREADS, TILE, TILE_SHAPE, argmax_row, device_hyper, dropout_elements, gather_rows,
                                 linear_backward_tiles, linear_forward_tiles, max_norm_layers, n_tiles, nothing,
                                 softmax_row, softmax_xent_rows, update_flat, update_layers)
from kernels.cuda.metrics import metrics, step_log

# Grids of THREADS-thread blocks (every kernel but the matmuls and the loss) stop at MAX_BLOCKS: the
# kernels loop grid-stride over their elements or rows, so more blocks would only add scheduling
MAX_BLOCKS = 1024
# The settings of the ops that are one gather, or one layer's forward or backward, alone: no dropout
PLAIN = device_hyper(Hyper())


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
    def forward_kernel(out, inp, weight, bias, relu, hyper, number, layer):
        sa = cuda.shared.array(TILE_SHAPE, shared_dtype)  # one declaration a line: the simulator
        sb = cuda.shared.array(TILE_SHAPE, shared_dtype)  # tells shared arrays apart by line
        linear_forward_tiles(out, inp, weight, bias, relu, hyper, number, layer, cuda.blockIdx.x, cuda.gridDim.x,
                             sa, sb)

    @cuda.jit
    def backward_kernel(dweight, dbias, dinp, dout, inp, weight, input_grad, hyper):
        sa = cuda.shared.array(TILE_SHAPE, shared_dtype)
        sb = cuda.shared.array(TILE_SHAPE, shared_dtype)
        linear_backward_tiles(dweight, dbias, dinp, dout, inp, weight, input_grad, hyper, cuda.blockIdx.x,
                              cuda.gridDim.x, sa, sb)

    return forward_kernel, backward_kernel


@cuda.jit
def _gather_kernel(inp, targets, images, labels, indices, scale, hyper, number):
    gather_rows(inp, targets, images, labels, indices, scale, hyper, number, cuda.grid(1), cuda.gridsize(1))


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
def _update_kernel(param, grad, moment1, moment2, lr, number, hyper):
    update_flat(param, grad, moment1, moment2, lr, number, hyper, cuda.grid(1), cuda.gridsize(1))


@cuda.jit
def _update_layers_kernel(weights, biases, dweights, dbiases, moment1_w, moment1_b, moment2_w, moment2_b, lr,
                          number, hyper):
    update_layers(weights, biases, dweights, dbiases, moment1_w, moment1_b, moment2_w, moment2_b, lr, number,
                  hyper, cuda.grid(1), cuda.gridsize(1))


@cuda.jit
def _max_norm_kernel(weights, limit):
    # weights: a tuple of (C, OC) arrays; a thread per column
    max_norm_layers(weights, limit, cuda.grid(1), cuda.gridsize(1))


@cuda.jit
def _dropout_kernel(out, inp, hyper, number, layer):
    dropout_elements(out, inp, hyper, number, layer, cuda.grid(1), cuda.gridsize(1))


# ---- ops (fastnn/ops.py's signatures) ------------------------------------------------------
def gather_batch(inp, targets, data, indices):
    """inp (B, C) = data.images[indices] * data.scale, targets (B,) = data.labels[indices]."""
    _gather(inp, targets, data, indices, PLAIN, 0)


def _gather(inp, targets, data, indices, hyper, number):
    """gather_batch, with the input dropout of DeviceHyper hyper at step `number` on the pixels."""
    _gather_kernel[_grid(inp.size), THREADS](inp, targets, data.images, data.labels, indices, np.float64(data.scale),
                                             hyper, number)


def linear_forward(out, inp, weight, bias):
    """out (B, OC) = inp (B, C) @ weight (C, OC) + bias (OC)."""
    forward_kernel, _ = _tile_kernels(out.dtype)
    forward_kernel[max(1, n_tiles(out.shape)), (TILE, TILE)](out, inp, weight, bias, False, PLAIN, 0, 0)


def relu_forward(out, inp):
    """out = max(inp, 0), elementwise; out may be inp."""
    _relu_kernel[_grid(out.size), THREADS](out.reshape(out.size), inp.reshape(inp.size))


def linear_relu_forward(out, inp, weight, bias):
    """out (B, OC) = relu(inp (B, C) @ weight (C, OC) + bias (OC)), the ReLU in the matmul's epilogue."""
    forward_kernel, _ = _tile_kernels(out.dtype)
    forward_kernel[max(1, n_tiles(out.shape)), (TILE, TILE)](out, inp, weight, bias, True, PLAIN, 0, 0)


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
        dweight, dbias, nothing(2, dout.dtype), dout, inp, nothing(2, dout.dtype), False, PLAIN)


def linear_backward_input(dinp, dout, weight, inp):
    """dinp (B, C) = (dout (B, OC) @ weight (C, OC).T) * (inp (B, C) > 0)."""
    _, backward_kernel = _tile_kernels(dout.dtype)
    backward_kernel[max(1, n_tiles(dinp.shape)), (TILE, TILE)](
        nothing(2, dout.dtype), nothing(1, dout.dtype), dinp, dout, inp, weight, True, PLAIN)


def update(param, grad, moment1, moment2, lr, number, hyper):
    """The update hyper.optimizer names, in place, at step `number` with rate lr: fastnn.ops.update."""
    n = param.size
    _update_kernel[_grid(n), THREADS](param.reshape(n), grad.reshape(n), moment1.reshape(n), moment2.reshape(n),
                                      float(lr), np.int64(number), device_hyper(hyper))


def max_norm(weight, limit):
    """Scale each column of weight (C, OC) whose L2 norm exceeds limit down to limit, in place."""
    _max_norm_kernel[_grid(weight.shape[1]), THREADS]((weight,), float(limit))


def dropout_forward(out, inp, seed, number, layer, rate):
    """out (B, H) = inp (B, H) * keep / (1 - rate), the reference's masks bit for bit; out may be inp."""
    hyper = device_hyper(Hyper(dropout=rate, dropout_seed=seed))
    _dropout_kernel[_grid(inp.size), THREADS](out, inp, hyper, np.int64(number), np.int64(layer))


def argmax(out, logits):
    """out (B,) = index of the first largest logit of each row of logits (B, K)."""
    _argmax_kernel[_grid(logits.shape[0]), THREADS](out, logits)


def forward(acts, params):
    """acts[L] (B, K) = logits of acts[0] (B, C_0); acts[l] (B, C_l) = hidden ReLU outputs. L launches."""
    _forward(acts, params, PLAIN, 0)


def _forward(acts, params, hyper, number):
    """forward, with the dropout of DeviceHyper hyper at step `number` on the hidden layers' outputs
    (activations 1 .. L - 1)."""
    weights, biases = params
    L = len(weights)
    forward_kernel, _ = _tile_kernels(acts[0].dtype)
    for l in range(L):  # the hidden layers with their ReLU (and dropout), then the logits without
        out = acts[l + 1]
        forward_kernel[max(1, n_tiles(out.shape)), (TILE, TILE)](out, acts[l], weights[l], biases[l], l < L - 1,
                                                                 hyper, number, l + 1)


def train_step(params, grads, optimizer, buffers, data, indices, lr, number, hyper):
    """fastnn.ops.train_step in 2L + 3 launches, 2L + 4 with max-norm; returns (loss, n_correct) as
    DeviceScalars."""
    weights, biases = params
    acts, douts, targets, _ = buffers
    L, dtype = len(weights), weights[0].dtype
    _, backward_kernel = _tile_kernels(dtype)
    settings, number = device_hyper(hyper), np.int64(number)
    _gather(acts[0], targets, data, indices, settings, number)
    _forward(acts, params, settings, number)
    log = step_log()
    first = log.claim(1)
    _xent_kernel[1, THREADS](douts[L - 1], acts[L], targets, log.device, first % len(log))
    for l in range(L - 1, -1, -1):
        dinp = douts[l - 1] if l > 0 else nothing(2, dtype)  # the pixels need no gradient
        backward_kernel[max(1, n_tiles(weights[l].shape) + n_tiles(dinp.shape)), (TILE, TILE)](
            grads.weights[l], grads.biases[l], dinp, douts[l], acts[l], weights[l], l > 0, settings)
    moment1, moment2 = optimizer
    n = sum(w.size + b.size for w, b in zip(weights, biases))
    _update_layers_kernel[_grid(n), THREADS](tuple(weights), tuple(biases), tuple(grads.weights), tuple(grads.biases),
                                             tuple(moment1.weights), tuple(moment1.biases), tuple(moment2.weights),
                                             tuple(moment2.biases), float(lr), number, settings)
    if hyper.max_norm:  # after the update kernel, in stream order: every column's update is done
        _max_norm_kernel[_grid(max(w.shape[1] for w in weights)), THREADS](tuple(weights), settings.max_norm)
    return metrics(first, 1)[0]


def train_steps(params, grads, optimizer, buffers, data, steps, hyper):
    """fastnn.ops.train_steps as S train_steps of 2L + 3 launches each (2L + 4 with max-norm); returns
    (losses, n_correct), lists of DeviceScalars. steps.indices (S, B), steps.lrs (S,) and steps.numbers (S,)
    are device arrays."""
    lrs, numbers = steps.lrs.copy_to_host(), steps.numbers.copy_to_host()  # (S,) each, read on the host
    results = [train_step(params, grads, optimizer, buffers, data, steps.indices[s], float(lrs[s]), int(numbers[s]),
                          hyper) for s in range(len(lrs))]
    return [loss for loss, _ in results], [n_correct for _, n_correct in results]

