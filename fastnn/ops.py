"""The NumPy reference: every op of the MLP, readable and obviously correct.

This module is the definition of "right". The Numba kernels (kernels/cpu.py) and the CUDA kernels
(kernels/cuda/) expose the same functions with the same signatures, and the tests compare them
against these.

Conventions (llm.c's): outputs first, then inputs, then scalars; outputs are overwritten, never
accumulated into, so there is no zero-grad step. Dimension letters:
    B = batch size, C = input features of a layer, OC = output features, K = classes (10)
Weights are stored (C, OC), so a layer is plain `inp @ weight + bias`. A whole training step takes the
named bundles of fastnn/step.py.
"""
import numpy as np

from fastnn.step import Data

# Memory: where the model's arrays live. Host memory here; the CUDA backend moves them to the GPU.
empty = np.empty  # empty(shape, dtype) -> a new uninitialised array
to_device = np.ascontiguousarray  # to_device(array) -> the backend's copy (here: C-contiguous, no copy if already)
to_host = np.asarray  # to_host(array) -> a NumPy array


def prepare_data(images, labels, scale):
    """The training set as this backend keeps it for a whole fit: here, as it is.

    images (N, C) uint8 or float, labels (N,) int64; a pixel's value is images[i, c] * scale.
    """
    return Data(images, labels, scale)


def scratch_size(sizes, batch_size):
    """Floats of StepBuffers.scratch that train_steps needs for layer sizes and batch_size: none here."""
    return 0


def gather_batch(inp, targets, data, indices):
    """Gather one mini-batch and scale it to floats.

    inp (B, C) float, targets (B,) int64 <- data (images (N, C), labels (N,), scale), indices (B,).
    The dataset stays uint8 in memory (4x smaller than float32); each batch is converted here.
    """
    np.multiply(data.images[indices], data.scale, out=inp, casting="unsafe")  # (B, C)
    targets[:] = data.labels[indices]  # (B,)


def linear_forward(out, inp, weight, bias):
    """out (B, OC) = inp (B, C) @ weight (C, OC) + bias (OC)."""
    np.matmul(inp, weight, out=out)  # (B, OC)
    out += bias  # (B, OC), bias broadcast over rows


def relu_forward(out, inp):
    """out = max(inp, 0), elementwise; out may be inp."""
    np.maximum(inp, 0, out=out)


def linear_relu_forward(out, inp, weight, bias):
    """out (B, OC) = relu(inp (B, C) @ weight (C, OC) + bias (OC)): a hidden layer."""
    linear_forward(out, inp, weight, bias)
    relu_forward(out, out)


def relu_backward(dinp, dout, out):
    """dinp = dout where the ReLU's output is positive, else 0.

    At the kink (input exactly 0) we take the derivative as 0, as PyTorch does.
    """
    np.multiply(dout, out > 0, out=dinp)


def softmax(probs, logits):
    """probs (B, K) = softmax of logits (B, K) over classes."""
    # subtracting the row max changes nothing mathematically but keeps exp() from overflowing
    np.subtract(logits, logits.max(axis=1, keepdims=True), out=probs)  # (B, K)
    np.exp(probs, out=probs)
    probs /= probs.sum(axis=1, keepdims=True)


def softmax_cross_entropy(dlogits, logits, targets):
    """Mean cross-entropy loss of softmax(logits) against targets, and its gradient.

    dlogits (B, K) <- d(mean loss)/d(logits) = (softmax(logits) - onehot(targets)) / B
    logits (B, K), targets (B,) ints in [0, K). Returns the mean loss as a Python float.
    """
    B = logits.shape[0]
    rows = np.arange(B)
    # log-sum-exp with the max subtracted: exact in math, no overflow in floats, and the log of a
    # probability is taken from the shifted logits directly, so a tiny probability never becomes log(0)
    shifted = logits - logits.max(axis=1, keepdims=True)  # (B, K)
    log_norm = np.log(np.exp(shifted).sum(axis=1))  # (B,)
    loss = np.mean(log_norm - shifted[rows, targets])
    softmax(dlogits, logits)  # (B, K) probabilities
    dlogits[rows, targets] -= 1
    dlogits /= B
    return float(loss)


def linear_backward(dweight, dbias, dout, inp):
    """Parameter gradients of out = inp @ weight + bias.

    dweight (C, OC) = inp (B, C).T @ dout (B, OC); dbias (OC) = dout summed over the batch.
    """
    np.matmul(inp.T, dout, out=dweight)  # (C, OC)
    np.sum(dout, axis=0, out=dbias)  # (OC,)


def linear_backward_input(dinp, dout, weight, inp):
    """Gradient into the layer's input, through the ReLU that produced it.

    dinp (B, C) = (dout (B, OC) @ weight (C, OC).T) * (inp > 0)
    inp (B, C) is the previous hidden layer's ReLU output, so `inp > 0` is that ReLU's mask: the
    result is the gradient with respect to the previous layer's pre-activation, ready for its
    linear_backward. (The first layer needs no input gradient: the pixels are not learned.)
    """
    np.matmul(dout, weight.T, out=dinp)  # (B, C)
    relu_backward(dinp, dinp, inp)


def sgd_update(param, grad, velocity, lr, momentum, weight_decay):
    """One SGD step with optional momentum and L2 weight decay, in place (PyTorch's formulation).

    g = grad + weight_decay * param;  velocity = momentum * velocity + g;  param -= lr * velocity
    With momentum = weight_decay = 0 this is plain `param -= lr * grad`.
    """
    g = grad + weight_decay * param if weight_decay else grad
    np.multiply(velocity, momentum, out=velocity)
    velocity += g
    param -= lr * velocity


def argmax(out, logits):
    """out (B,) = index of the largest logit in each row of logits (B, K); ties take the first."""
    np.argmax(logits, axis=1, out=out)


def forward(acts, params):
    """Inference: acts[L] (B, K) <- logits of acts[0] (B, C_0) through all L layers of params.

    acts[l] (B, C_l) for 0 < l < L receive the hidden ReLU outputs (StepBuffers' layout).
    """
    weights, biases = params
    L = len(weights)
    for l in range(L - 1):
        linear_relu_forward(acts[l + 1], acts[l], weights[l], biases[l])
    linear_forward(acts[L], acts[L - 1], weights[L - 1], biases[L - 1])


def train_step(params, grads, optimizer, buffers, data, indices, lr, hyper):
    """One mini-batch of SGD on rows `indices` (B,): gather, forward, loss, backward, update.

    Returns (mean loss, number of rows whose largest logit is the target), both measured before the
    update. The bundles are fastnn/step.py's; buffers are views sized to this batch.
    """
    weights, biases = params
    acts, douts, targets = buffers.acts, buffers.douts, buffers.targets
    L = len(weights)
    gather_batch(acts[0], targets, data, indices)  # (B, C_0), (B,)
    forward(acts, params)  # acts[L] = logits (B, K)
    n_correct = int(np.sum(acts[L].argmax(axis=1) == targets))
    loss = softmax_cross_entropy(douts[L - 1], acts[L], targets)  # (B, K)
    for l in range(L - 1, -1, -1):
        linear_backward(grads.weights[l], grads.biases[l], douts[l], acts[l])  # (C_l, C_l+1), (C_l+1,)
        if l > 0:
            linear_backward_input(douts[l - 1], douts[l], weights[l], acts[l])  # (B, C_l)
    velocity = optimizer.velocity
    for l in range(L):
        sgd_update(weights[l], grads.weights[l], velocity.weights[l], lr, hyper.momentum, hyper.weight_decay)
        sgd_update(biases[l], grads.biases[l], velocity.biases[l], lr, hyper.momentum, hyper.weight_decay)
    return loss, n_correct


def train_steps(params, grads, optimizer, buffers, data, steps, hyper):
    """S mini-batches of SGD in one call: step s is train_step on rows steps.indices[s] with rate steps.lrs[s].

    Returns (losses (S,) float64, n_correct (S,) int64). Every backend trains through this function;
    one call runs many steps so that a compiled backend pays its call overhead once, not per step.
    """
    S = len(steps.lrs)
    losses, n_correct = np.empty(S), np.empty(S, np.int64)
    for s in range(S):
        # a Python float: a NumPy float64 scalar would make `lr * velocity` a float64 product (NEP 50)
        lr = float(steps.lrs[s])
        losses[s], n_correct[s] = train_step(params, grads, optimizer, buffers, data, steps.indices[s], lr, hyper)
    return losses, n_correct
