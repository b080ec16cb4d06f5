"""The NumPy reference: every op of the MLP, readable and obviously correct.

This module is the definition of "right". The Numba kernels (kernels/cpu.py) and the CUDA kernels
(kernels/cuda/) expose the same functions with the same signatures, and the tests compare them
against these.

Conventions (llm.c's): outputs first, then inputs, then scalars; outputs are overwritten, never
accumulated into, so there is no zero-grad step. Dimension letters:
    B = batch size, C = input features of a layer, OC = output features, K = classes (10)
Weights are stored (C, OC), so a layer is plain `inp @ weight + bias`. A whole training step takes the
named bundles of fastnn/bundles.py.
"""
import numpy as np

from fastnn.bundles import Data
from fastnn.settings import ADAMW, SGD

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


def sgd_update(param, grad, moment1, lr, momentum, weight_decay, nesterov=False):
    """One SGD step with optional momentum and L2 weight decay, in place (PyTorch's formulation).

    g = grad + weight_decay * param;  moment1 = momentum * moment1 + g;  param -= lr * moment1
    moment1 is the momentum buffer. With momentum = weight_decay = 0 this is plain `param -= lr * grad`.
    nesterov (Sutskever et al. 2013, in PyTorch's form): param -= lr * (g + momentum * moment1), the
    gradient plus where the momentum is about to carry the parameters.
    """
    g = grad + weight_decay * param if weight_decay else grad
    np.multiply(moment1, momentum, out=moment1)
    moment1 += g
    if nesterov:
        param -= lr * (g + momentum * moment1)
    else:
        param -= lr * moment1


def adam_update(param, grad, moment1, moment2, lr, number, beta1, beta2, eps, weight_decay, decoupled):
    """One Adam step (Kingma & Ba 2015, Algorithm 1), in place, at step number t = 1, 2, ... of the run.

    decoupled False (Adam): g = grad + weight_decay * param, the L2 penalty in the gradient.
    decoupled True (AdamW, Loshchilov & Hutter): param *= 1 - lr * weight_decay, and g = grad.
    m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g^2   (m: moment1, v: moment2)
    param -= lr * m_hat / (sqrt(v_hat) + eps), m_hat = m / (1 - beta1^t), v_hat = v / (1 - beta2^t):
    the bias corrections undo the moments' start at zero.
    """
    dtype = param.dtype.type  # every scalar in the arrays' dtype: float32 math stays float32
    g = grad + dtype(weight_decay) * param if weight_decay and not decoupled else grad
    if weight_decay and decoupled:
        param *= dtype(1 - lr * weight_decay)
    moment1 *= dtype(beta1)
    moment1 += dtype(1 - beta1) * g
    moment2 *= dtype(beta2)
    moment2 += dtype(1 - beta2) * g * g
    m_hat = moment1 / dtype(1 - beta1 ** number)
    v_hat = moment2 / dtype(1 - beta2 ** number)
    param -= dtype(lr) * m_hat / (np.sqrt(v_hat) + dtype(eps))


def update(param, grad, moment1, moment2, lr, number, hyper):
    """The update hyper.optimizer names (fastnn.bundles.Hyper), in place, of one parameter array and its
    optimizer state (moment1, moment2: its OptimizerState), at step `number` (1, 2, ...) with rate lr."""
    if hyper.optimizer == SGD:
        sgd_update(param, grad, moment1, lr, hyper.momentum, hyper.weight_decay, hyper.nesterov)
    else:
        adam_update(param, grad, moment1, moment2, lr, number, hyper.beta1, hyper.beta2, hyper.eps,
                    hyper.weight_decay, hyper.optimizer == ADAMW)


def max_norm(weight, limit):
    """Scale each column of weight (C, OC), the incoming weights of one unit, down to L2 norm <= limit,
    in place (Srivastava et al. 2014); columns within the limit stay as they are."""
    norms = np.sqrt(np.sum(weight * weight, axis=0))  # (OC,)
    over = norms > limit
    weight[:, over] *= (weight.dtype.type(limit) / norms[over])  # (C, n_over)


# ---- dropout --------------------------------------------------------------------------------------
# The masks come from a counter-based generator: the mask bit of unit j of row b is a hash of
# (seed, step number, layer, b, j), so any backend, any thread, in any order, draws the same bit for it,
# and nothing is carried from step to step. The hash is Chris Wellons' "lowbias32", a 32-bit
# integer finaliser with full avalanche; it is computed on uint64 values below 2^32, whose products
# stay below 2^64 (exact in every backend), then cut back to 32 bits.
MASK32 = np.uint64(0xFFFFFFFF)


def hash32(x):
    """lowbias32 of uint64 values (scalars or arrays) below 2^32; returns uint64 below 2^32."""
    x = np.uint64(x) if np.isscalar(x) else x.astype(np.uint64)
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x7FEB352D)) & MASK32
    x = x ^ (x >> np.uint64(15))
    x = (x * np.uint64(0x846CA68B)) & MASK32
    return x ^ (x >> np.uint64(16))


def dropout_threshold(rate):
    """A unit is kept when the top 24 bits of its hash are >= this: kept with probability 1 - rate
    (to 2^-24)."""
    return int(round(rate * (1 << 24)))


def dropout_keep(rows, units, seed, number, layer, rate):
    """keep (rows, units) bool: which units of activation `layer` (acts[layer]: 0 the input) inverted dropout keeps
    at step number `number` of a run seeded `seed`: hash32(row_key(b) ^ j) >> 8 >= dropout_threshold(rate),
    row_key(b) = hash32(hash32(hash32(hash32(seed) ^ number) ^ layer) ^ b). Seed and step number count
    modulo 2^32 (a run of 4e9 steps would see its masks again)."""
    seed_key = hash32(np.uint64(seed) & MASK32)
    step_key = hash32(hash32(seed_key ^ (np.uint64(number) & MASK32)) ^ np.uint64(layer))
    row_keys = hash32(step_key ^ np.arange(rows, dtype=np.uint64))  # (rows,)
    bits = hash32(row_keys[:, None] ^ np.arange(units, dtype=np.uint64))  # (rows, units)
    return (bits >> np.uint64(8)) >= np.uint64(dropout_threshold(rate))


def dropout_forward(out, inp, seed, number, layer, rate):
    """Inverted dropout: out (B, H) = inp (B, H) * keep / (1 - rate), keep = dropout_keep(...); out may
    be inp. Dividing by the keep probability in training leaves inference with nothing to do."""
    keep = dropout_keep(*inp.shape, seed, number, layer, rate)  # (B, H)
    scale = inp.dtype.type(1 / (1 - rate))
    np.multiply(inp, keep * scale, out=out)  # (B, H); a dropped unit becomes 0 (0 * x, x finite)


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


def train_step(params, grads, optimizer, buffers, data, indices, lr, number, hyper):
    """One mini-batch on rows `indices` (B,), step `number` (1, 2, ...) of the run: gather, forward
    (with dropout if hyper.input_dropout or hyper.dropout), loss, backward, update (hyper.optimizer),
    max-norm (if hyper.max_norm).

    Returns (mean loss, number of rows whose largest logit is the target), both measured before the
    update. The bundles are fastnn/bundles.py's; buffers are views sized to this batch.
    """
    weights, biases = params
    acts, douts, targets = buffers.acts, buffers.douts, buffers.targets
    L = len(weights)
    gather_batch(acts[0], targets, data, indices)  # (B, C_0), (B,)
    if hyper.input_dropout:  # the first weight's gradient then sees the dropped pixels, as it should
        dropout_forward(acts[0], acts[0], hyper.dropout_seed, number, 0, hyper.input_dropout)
    for l in range(L - 1):
        linear_relu_forward(acts[l + 1], acts[l], weights[l], biases[l])  # (B, C_l+1)
        if hyper.dropout:
            dropout_forward(acts[l + 1], acts[l + 1], hyper.dropout_seed, number, l + 1, hyper.dropout)
    linear_forward(acts[L], acts[L - 1], weights[L - 1], biases[L - 1])  # logits (B, K)
    n_correct = int(np.sum(acts[L].argmax(axis=1) == targets))
    loss = softmax_cross_entropy(douts[L - 1], acts[L], targets)  # (B, K)
    for l in range(L - 1, -1, -1):
        linear_backward(grads.weights[l], grads.biases[l], douts[l], acts[l])  # (C_l, C_l+1), (C_l+1,)
        if l > 0:
            # acts[l] is 0 where the ReLU was off or dropout dropped the unit: the mask of both
            linear_backward_input(douts[l - 1], douts[l], weights[l], acts[l])  # (B, C_l)
            if hyper.dropout:  # a kept unit's output was scaled by 1 / (1 - rate): so is its gradient
                np.multiply(douts[l - 1], douts[l - 1].dtype.type(1 / (1 - hyper.dropout)), out=douts[l - 1])
    for l in range(L):
        update(weights[l], grads.weights[l], optimizer.moment1.weights[l], optimizer.moment2.weights[l], lr,
               number, hyper)
        update(biases[l], grads.biases[l], optimizer.moment1.biases[l], optimizer.moment2.biases[l], lr, number, hyper)
        if hyper.max_norm:
            max_norm(weights[l], hyper.max_norm)
    return loss, n_correct


def train_steps(params, grads, optimizer, buffers, data, steps, hyper):
    """S mini-batches in one call: step s is train_step on rows steps.indices[s] with rate steps.lrs[s],
    step number steps.numbers[s].

    Returns (losses (S,) float64, n_correct (S,) int64). Every backend trains through this function;
    one call runs many steps so that a compiled backend pays its call overhead once, not per step.
    """
    S = len(steps.lrs)
    losses, n_correct = np.empty(S), np.empty(S, np.int64)
    for s in range(S):
        # a Python float: a NumPy float64 scalar would make `lr * moment1` a float64 product (NEP 50)
        lr, number = float(steps.lrs[s]), int(steps.numbers[s])
        losses[s], n_correct[s] = train_step(params, grads, optimizer, buffers, data, steps.indices[s], lr, number,
                                             hyper)
    return losses, n_correct
