"""The Numba backend: every op of fastnn/ops.py as a jitted CPU kernel, same names, signatures, meaning.

    from kernels import cpu
    loss, n_correct = cpu.train_step(weights, biases, ...)  # tuples of arrays, as in fastnn.ops

Dimension letters (fastnn/ops.py's): B = batch size, C = input features of a layer, OC = output
features, K = classes. Weights are stored (C, OC). Outputs come first and are overwritten.

Parallelism: each prange iteration owns whole rows of its outputs (no races, no atomics), and every
sum runs in a fixed order inside one iteration, so results are bitwise identical run to run and for
any thread count. Kernels allocate nothing: the model owns every buffer and passes views (a partial
last batch is `buf[:n]`, still C-contiguous). They do not validate either; the model does, once.

Where the time goes, and the trick: the first layer's forward and weight gradient are ~98% of the
FLOPs, and their input (MNIST pixels) is 81% exact zeros, as is about half of every ReLU output. The
matmuls skip exact zeros of their sparse operand: the same sums with a fraction of the work. (Skipping
instead of adding 0 * w differs from the dense product only when a weight is inf or NaN.) The
numbered versions that led here are in kernels/linear_forward.py and kernels/linear_backward.py.

Every jitted function that train_step calls lives in this module: numba's cache does not notice a
changed jitted callee in another file (numba PR #8396), so a split module would run stale code.
"""
import numpy as np
from numba import njit, prange

from kernels.config import FASTMATH, SGD_PARALLEL_MIN

# Memory: the model's buffers are host NumPy arrays, exactly as for the NumPy reference.
empty = np.empty
to_device = np.ascontiguousarray
to_host = np.asarray


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def gather_batch(inp, targets, images, labels, indices, scale):
    """Gather one mini-batch and scale it to floats (the uint8 -> float conversion fused into the copy).

    inp (B, C) float, targets (B,) int64 <- images (N, C) uint8 or float, labels (N,), indices (B,).
    """
    B, C = inp.shape
    # prange over batch rows: iteration b owns inp[b] and targets[b]
    for b in prange(B):
        row = indices[b]
        for k in range(C):
            # the product is taken in float64 and rounded once, as NumPy's uint8 * float does
            inp[b, k] = images[row, k] * scale  # (B, C)
        targets[b] = labels[row]


@njit(fastmath=FASTMATH, cache=True)
def _linear_row(out, inp, weight, bias, b):
    """out[b] (OC) = inp[b] (C) @ weight (C, OC) + bias (OC), skipping exact zeros of inp[b].

    Row form: out[b] += inp[b, k] * weight[k] is a contiguous axpy that vectorises along OC. Its cost
    is the load and store of out[b] around every FMA, so nonzero inputs are taken in pairs: one pass
    over out[b] per two rows of weight halves that traffic (1.5-2x faster than one at a time).
    """
    C = inp.shape[1]
    OC = weight.shape[1]
    for j in range(OC):
        out[b, j] = bias[j]
    k1 = -1  # a nonzero input waiting for its partner
    for k in range(C):
        x = inp[b, k]
        if x != 0:
            if k1 < 0:
                k1 = k
            else:
                x1 = inp[b, k1]
                for j in range(OC):
                    out[b, j] = out[b, j] + x1 * weight[k1, j] + x * weight[k, j]
                k1 = -1
    if k1 >= 0:
        x1 = inp[b, k1]
        for j in range(OC):
            out[b, j] += x1 * weight[k1, j]


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def linear_forward(out, inp, weight, bias):
    """out (B, OC) = inp (B, C) @ weight (C, OC) + bias (OC)."""
    # prange over batch rows: iteration b owns out[b]
    for b in prange(inp.shape[0]):
        _linear_row(out, inp, weight, bias, b)  # (OC,)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def linear_relu_forward(out, inp, weight, bias):
    """out (B, OC) = relu(inp (B, C) @ weight (C, OC) + bias (OC)): a hidden layer, ReLU in the epilogue."""
    # prange over batch rows: iteration b owns out[b], and applies the ReLU while the row is in L1
    for b in prange(inp.shape[0]):
        _linear_row(out, inp, weight, bias, b)  # (OC,)
        for j in range(out.shape[1]):
            if out[b, j] < 0:  # a comparison, not max(): NaN stays NaN, as with np.maximum
                out[b, j] = 0


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def relu_forward(out, inp):
    """out = max(inp, 0), elementwise (any shape, C-contiguous); out may be inp."""
    out_flat, inp_flat = out.reshape(out.size), inp.reshape(inp.size)  # views, no copies
    # prange over elements: iteration i owns out_flat[i]
    for i in prange(out_flat.size):
        x = inp_flat[i]
        out_flat[i] = 0 if x < 0 else x  # NaN stays NaN


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def relu_backward(dinp, dout, out):
    """dinp = dout where the ReLU's output is positive, else 0 (the derivative at the kink is 0)."""
    dinp_flat, dout_flat, out_flat = dinp.reshape(dinp.size), dout.reshape(dout.size), out.reshape(out.size)
    # prange over elements: iteration i owns dinp_flat[i]
    for i in prange(dinp_flat.size):
        # a product with the mask, as the reference: a NaN gradient stays NaN even where masked
        dinp_flat[i] = dout_flat[i] * (out_flat[i] > 0)


@njit(fastmath=FASTMATH, cache=True)
def _row_max(logits, b):
    """The largest logits[b, k] (for a stable exp; a NaN logit makes the row NaN through exp anyway)."""
    largest = logits[b, 0]
    for k in range(1, logits.shape[1]):
        if logits[b, k] > largest:
            largest = logits[b, k]
    return largest


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def softmax(probs, logits):
    """probs (B, K) = softmax of logits (B, K) over classes."""
    B, K = logits.shape
    # prange over rows: iteration b owns probs[b]
    for b in prange(B):
        # subtracting the row max changes nothing mathematically but keeps exp() from overflowing
        largest = _row_max(logits, b)
        total = probs.dtype.type(0)
        for k in range(K):
            probs[b, k] = np.exp(logits[b, k] - largest)
            total += probs[b, k]
        for k in range(K):
            probs[b, k] /= total  # (B, K)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def softmax_cross_entropy(dlogits, logits, targets):
    """Mean cross-entropy loss of softmax(logits) against targets, and its gradient.

    dlogits (B, K) <- (softmax(logits) - onehot(targets)) / B; logits (B, K), targets (B,) ints in
    [0, K). Returns the mean loss as a Python float.
    """
    B, K = logits.shape
    inv_b = dlogits.dtype.type(1 / B)
    # prange over rows: iteration b owns dlogits[b]
    for b in prange(B):
        largest = _row_max(logits, b)
        total = dlogits.dtype.type(0)
        for k in range(K):
            dlogits[b, k] = np.exp(logits[b, k] - largest)
            total += dlogits[b, k]
        for k in range(K):
            dlogits[b, k] = dlogits[b, k] / total * inv_b  # (B, K) softmax / B
        # The row's loss, log-sum-exp minus the target's shifted logit (so a tiny probability never
        # becomes log(0)), waits in the target's cell for the serial pass: no buffer needed.
        t = targets[b]
        dlogits[b, t] = np.log(total) - (logits[b, t] - largest)
    # serial, in row order: the same bits for any thread count (B is only 64..256)
    loss = 0.0
    for b in range(B):
        t = targets[b]
        row_loss = dlogits[b, t]
        loss += row_loss
        dlogits[b, t] = (np.exp(-row_loss) - 1) * inv_b  # softmax at the target is exp(-row_loss)
    return loss / B


@njit(fastmath=FASTMATH, cache=True)
def _dweight_row(dweight, dout, inp, c):
    """dweight[c] (OC) = inp[:, c] (B) @ dout (B, OC), skipping exact zeros of inp[:, c].

    The same paired axpy as _linear_row: nonzero batch rows two at a time, one pass over dweight[c].
    """
    B = inp.shape[0]
    OC = dout.shape[1]
    for j in range(OC):
        dweight[c, j] = 0
    b1 = -1  # a batch row with a nonzero input, waiting for its partner
    for b in range(B):
        x = inp[b, c]
        if x != 0:
            if b1 < 0:
                b1 = b
            else:
                x1 = inp[b1, c]
                for j in range(OC):
                    dweight[c, j] = dweight[c, j] + x1 * dout[b1, j] + x * dout[b, j]
                b1 = -1
    if b1 >= 0:
        x1 = inp[b1, c]
        for j in range(OC):
            dweight[c, j] += x1 * dout[b1, j]


@njit(fastmath=FASTMATH, cache=True)
def _dbias(dbias, dout):
    """dbias (OC) = dout (B, OC) summed over the batch, serially in row order (B * OC adds: small)."""
    for j in range(dout.shape[1]):
        dbias[j] = 0
    for b in range(dout.shape[0]):
        for j in range(dout.shape[1]):
            dbias[j] += dout[b, j]


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def linear_backward(dweight, dbias, dout, inp):
    """Parameter gradients of out = inp @ weight + bias.

    dweight (C, OC) = inp (B, C).T @ dout (B, OC); dbias (OC) = dout summed over the batch.
    """
    # prange over C: iteration c owns dweight[c] and sums over the batch in row order
    for c in prange(inp.shape[1]):
        _dweight_row(dweight, dout, inp, c)  # (OC,)
    _dbias(dbias, dout)  # (OC,)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def linear_backward_input(dinp, dout, weight, inp):
    """Gradient into the layer's input, through the ReLU that produced it.

    dinp (B, C) = (dout (B, OC) @ weight (C, OC).T) * (inp > 0), inp being the previous ReLU's output.
    Masked units skip their dot product and get 0 (the reference's product gives NaN there only when
    dout already holds NaN or inf, i.e. after the loss is NaN).
    """
    B, C = dinp.shape
    OC = dout.shape[1]
    # prange over batch rows: iteration b owns dinp[b]
    for b in prange(B):
        for c in range(C):
            total = dinp.dtype.type(0)
            if inp[b, c] > 0:  # the ReLU mask, fused: about half the dot products are skipped
                # dot-product form: dout[b] and weight[c] are both contiguous along OC
                for j in range(OC):
                    total += dout[b, j] * weight[c, j]
            dinp[b, c] = total  # (B, C)


@njit(fastmath=FASTMATH, cache=True)
def _sgd_element(param, grad, velocity, i, lr, momentum, weight_decay):
    """One element of sgd_update; the scalars already have the arrays' dtype."""
    g = grad[i]
    if weight_decay != 0:  # as the reference: no 0 * param term, so an inf weight stays inf
        g += weight_decay * param[i]
    velocity[i] = momentum * velocity[i] + g
    param[i] -= lr * velocity[i]


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def sgd_update(param, grad, velocity, lr, momentum, weight_decay):
    """One SGD step with optional momentum and L2 weight decay, in place (PyTorch's formulation).

    g = grad + weight_decay * param;  velocity = momentum * velocity + g;  param -= lr * velocity
    param, grad, velocity: any shape, C-contiguous.
    """
    param_flat, grad_flat = param.reshape(param.size), grad.reshape(grad.size)  # views, no copies
    velocity_flat = velocity.reshape(velocity.size)
    # the scalars in the arrays' dtype: float64 scalars would make float32 math run in float64
    rate, mom, decay = param.dtype.type(lr), param.dtype.type(momentum), param.dtype.type(weight_decay)
    if param_flat.size < SGD_PARALLEL_MIN:  # biases, small layers: not worth waking the threads
        for i in range(param_flat.size):
            _sgd_element(param_flat, grad_flat, velocity_flat, i, rate, mom, decay)
    else:
        # prange over elements: iteration i owns param_flat[i] and velocity_flat[i]
        for i in prange(param_flat.size):
            _sgd_element(param_flat, grad_flat, velocity_flat, i, rate, mom, decay)


@njit(fastmath=FASTMATH, cache=True)
def _argmax_row(logits, b):
    """Index of the largest logits[b, k], by np.argmax's rules: ties take the first, the first NaN wins."""
    best = 0
    if np.isnan(logits[b, 0]):
        return 0
    for k in range(1, logits.shape[1]):
        if np.isnan(logits[b, k]):
            return k
        if logits[b, k] > logits[b, best]:
            best = k
    return best


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def argmax(out, logits):
    """out (B,) = index of the largest logit in each row of logits (B, K); ties take the first."""
    # prange over rows: iteration b owns out[b]
    for b in prange(logits.shape[0]):
        out[b] = _argmax_row(logits, b)


@njit(fastmath=FASTMATH, cache=True)
def forward(acts, weights, biases):
    """Inference: acts[L] (B, K) <- logits of acts[0] (B, C_0) through all L layers.

    acts, weights, biases: tuples of arrays (train_step's layout); acts[l] (B, C_l) for 0 < l < L
    receive the hidden ReLU outputs.
    """
    L = len(weights)
    for l in range(L - 1):
        linear_relu_forward(acts[l + 1], acts[l], weights[l], biases[l])  # (B, C_l+1)
    linear_forward(acts[L], acts[L - 1], weights[L - 1], biases[L - 1])  # (B, K)


@njit(fastmath=FASTMATH, cache=True)
def train_step(weights, biases, dweights, dbiases, velocities_w, velocities_b,
               acts, dacts, dlogits, targets, images, labels, indices, scale, lr, momentum, weight_decay):
    """One mini-batch of SGD: gather, forward, loss, backward, update. Returns (loss, n_correct).

    Same arguments as fastnn.ops.train_step, the per-layer ones as tuples of arrays (weights[l]
    (C_l, C_l+1), acts[l] (B, C_l), dacts[0] unused). One jitted call per batch: no Python runs
    between the kernels.
    """
    L = len(weights)
    gather_batch(acts[0], targets, images, labels, indices, scale)  # (B, C_0), (B,)
    forward(acts, weights, biases)  # acts[L] = logits (B, K)
    logits = acts[L]
    n_correct = 0  # before the update, like the loss
    for b in range(logits.shape[0]):
        if _argmax_row(logits, b) == targets[b]:
            n_correct += 1
    loss = softmax_cross_entropy(dlogits, logits, targets)  # dlogits (B, K)
    dout = dlogits
    for l in range(L - 1, -1, -1):
        linear_backward(dweights[l], dbiases[l], dout, acts[l])  # (C_l, C_l+1), (C_l+1,)
        if l > 0:
            linear_backward_input(dacts[l], dout, weights[l], acts[l])  # (B, C_l)
            dout = dacts[l]
    for l in range(L):
        sgd_update(weights[l], dweights[l], velocities_w[l], lr, momentum, weight_decay)
        sgd_update(biases[l], dbiases[l], velocities_b[l], lr, momentum, weight_decay)
    return loss, n_correct
