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

from kernels.config import DWEIGHT_ROWS, FASTMATH, NARROW_MAX, SGD_CHUNK, SPARSE_MAX_DENSITY

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
    """out[b] (OC) = inp[b] (C) @ weight (C, OC) + bias (OC).

    Row (axpy) form: out[b] += inp[b, k] * weight[k] is a contiguous update that vectorises along
    OC. Its cost is the load and store of out[b] around the FMAs, so several rows of weight are
    added per pass over out[b]: four in the dense path, two nonzero ones in the sparse path.
    """
    C = inp.shape[1]
    OC = weight.shape[1]
    for j in range(OC):
        out[b, j] = bias[j]
    nonzeros = 0
    for k in range(C):
        nonzeros += inp[b, k] != 0
    # Skipping zeros pays when they dominate (MNIST pixels: 81%, in runs along a row); with ReLU
    # outputs (~50%, scattered) the mispredicted branches cost more than the FMAs they save.
    if nonzeros <= C * SPARSE_MAX_DENSITY:
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
    else:
        for k in range(0, C - 3, 4):
            x0, x1, x2, x3 = inp[b, k], inp[b, k + 1], inp[b, k + 2], inp[b, k + 3]
            for j in range(OC):
                out[b, j] = (out[b, j] + x0 * weight[k, j] + x1 * weight[k + 1, j]
                             + x2 * weight[k + 2, j] + x3 * weight[k + 3, j])
        for k in range(C - C % 4, C):
            x = inp[b, k]
            for j in range(OC):
                out[b, j] += x * weight[k, j]


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
def _dweight_rows(dweight, dout, inp, c0, c1):
    """dweight[c0:c1] (c1 - c0, OC) = inp[:, c0:c1].T @ dout (B, OC), batch rows in fixed order.

    Batch rows are taken four at a time (one pass over dweight[c] adds four rows of dout), and a
    group whose four inputs are all exactly 0 is skipped: with MNIST pixels that is most groups.
    Looping over b outside c reads inp along its rows, where zeros come in runs the branch predictor
    follows; down a column they are scattered.
    """
    B = inp.shape[0]
    OC = dout.shape[1]
    for c in range(c0, c1):
        for j in range(OC):
            dweight[c, j] = 0
    for b in range(0, B - 3, 4):
        for c in range(c0, c1):
            x0, x1, x2, x3 = inp[b, c], inp[b + 1, c], inp[b + 2, c], inp[b + 3, c]
            # one branch, not four (LLVM turns `x0 != 0 or ...` into a chain of branches); a sum of
            # absolute values is 0 only when all four are, and NaN != 0 keeps NaN inputs
            if abs(x0) + abs(x1) + abs(x2) + abs(x3) != 0:
                for j in range(OC):
                    dweight[c, j] = (dweight[c, j] + x0 * dout[b, j] + x1 * dout[b + 1, j]
                                     + x2 * dout[b + 2, j] + x3 * dout[b + 3, j])
    for b in range(B - B % 4, B):
        for c in range(c0, c1):
            x = inp[b, c]
            if x != 0:
                for j in range(OC):
                    dweight[c, j] += x * dout[b, j]


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
    C = inp.shape[1]
    # prange over blocks of DWEIGHT_ROWS rows of dweight: iteration i owns its block (which stays in
    # L1 while the whole batch is added in row order)
    for i in prange((C + DWEIGHT_ROWS - 1) // DWEIGHT_ROWS):
        c0 = i * DWEIGHT_ROWS
        _dweight_rows(dweight, dout, inp, c0, min(c0 + DWEIGHT_ROWS, C))  # (DWEIGHT_ROWS, OC)
    _dbias(dbias, dout)  # (OC,)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def linear_backward_input(dinp, dout, weight, inp):
    """Gradient into the layer's input, through the ReLU that produced it.

    dinp (B, C) = (dout (B, OC) @ weight (C, OC).T) * (inp > 0), inp being the previous ReLU's output.
    """
    B, C = dinp.shape
    OC = dout.shape[1]
    # prange over batch rows: iteration b owns dinp[b]
    for b in prange(B):
        for c in range(C):
            # dot-product form: dout[b] and weight[c] are both contiguous along OC
            total = dinp.dtype.type(0)
            for j in range(OC):
                total += dout[b, j] * weight[c, j]
            # the ReLU mask as a product, not a branch: the mask is ~50% random, a branch on it
            # mispredicts more than the dot product costs
            dinp[b, c] = total * (inp[b, c] > 0)  # (B, C)


@njit(fastmath=FASTMATH, cache=True)
def _sgd_span(param, grad, velocity, lr, momentum, weight_decay):
    """sgd_update of 1-D arrays (a row, a chunk), serially; the scalars already have the arrays' dtype."""
    for i in range(param.size):
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
    n_chunks = (param_flat.size + SGD_CHUNK - 1) // SGD_CHUNK  # a bias is a single chunk
    # prange over chunks of SGD_CHUNK elements: iteration i owns its chunk of param and velocity
    for i in prange(n_chunks):
        chunk = slice(i * SGD_CHUNK, (i + 1) * SGD_CHUNK)
        _sgd_span(param_flat[chunk], grad_flat[chunk], velocity_flat[chunk], rate, mom, decay)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _linear_backward_sgd(weight, bias, dweight, dbias, velocity_w, velocity_b, dout, inp, lr, momentum, weight_decay):
    """linear_backward, then sgd_update of weight and bias, fused (train_step's backward for one layer).

    Each block of dweight rows updates its rows of weight and velocity while it is still in L1, instead
    of a second pass over three (C, OC) arrays. Same results as the two ops in sequence.
    """
    C = dweight.shape[0]
    rate, mom, decay = weight.dtype.type(lr), weight.dtype.type(momentum), weight.dtype.type(weight_decay)
    # prange over blocks of DWEIGHT_ROWS rows: iteration i owns those rows of dweight, weight, velocity_w
    for i in prange((C + DWEIGHT_ROWS - 1) // DWEIGHT_ROWS):
        c0 = i * DWEIGHT_ROWS
        c1 = min(c0 + DWEIGHT_ROWS, C)
        _dweight_rows(dweight, dout, inp, c0, c1)  # (c1 - c0, OC)
        for c in range(c0, c1):
            _sgd_span(weight[c], dweight[c], velocity_w[c], rate, mom, decay)  # row views: (OC,)
    _dbias(dbias, dout)  # (OC,)
    _sgd_span(bias, dbias, velocity_b, rate, mom, decay)  # OC biases: serial


# ---- the narrow last layer inside train_step --------------------------------------------------
# With OC = K = 10 classes a row update of OC floats is shorter than one vector register, so the row
# form above runs nearly scalar. train_step computes that layer from transposed copies instead, in
# dot-product form, kept in buffers that are free at that moment (see train_step).


@njit(fastmath=FASTMATH, cache=True)
def _transpose(out, inp):
    """out (N, M) = inp (M, N).T, serially (the narrow layer: about a thousand elements)."""
    for i in range(inp.shape[0]):
        for j in range(inp.shape[1]):
            out[j, i] = inp[i, j]


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _linear_forward_t(out, inp, weight_t, bias):
    """out (B, OC) = inp (B, C) @ weight_t (OC, C).T + bias (OC), in dot-product form."""
    B, C = inp.shape
    # prange over batch rows: iteration b owns out[b]
    for b in prange(B):
        for j in range(out.shape[1]):
            total = bias[j]
            for k in range(C):  # inp[b] and weight_t[j] both contiguous along C
                total += inp[b, k] * weight_t[j, k]
            out[b, j] = total  # (B, OC)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _dweight_t(dweight_t, dout, inp):
    """dweight_t (OC, C) = dout (B, OC).T @ inp (B, C): rows of inp added along C, four per pass."""
    B, C = inp.shape
    # prange over OC: iteration j owns dweight_t[j], summing the batch in row order
    for j in prange(dweight_t.shape[0]):
        for c in range(C):
            dweight_t[j, c] = 0
        for b in range(0, B - 3, 4):
            d0, d1, d2, d3 = dout[b, j], dout[b + 1, j], dout[b + 2, j], dout[b + 3, j]
            for c in range(C):
                dweight_t[j, c] = (dweight_t[j, c] + d0 * inp[b, c] + d1 * inp[b + 1, c]
                                   + d2 * inp[b + 2, c] + d3 * inp[b + 3, c])
        for b in range(B - B % 4, B):
            d = dout[b, j]
            for c in range(C):
                dweight_t[j, c] += d * inp[b, c]


@njit(fastmath=FASTMATH, cache=True)
def _narrow_forward(out, inp, weight, bias, weight_t):
    """linear_forward of the narrow last layer; weight_t (OC, C) is borrowed scratch for weight.T."""
    _transpose(weight_t, weight)  # (OC, C)
    _linear_forward_t(out, inp, weight_t, bias)  # (B, OC)


@njit(fastmath=FASTMATH, cache=True)
def _narrow_backward_sgd(weight, bias, dweight, dbias, velocity_w, velocity_b, dinp, dout, inp,
                         lr, momentum, weight_decay):
    """linear_backward, linear_backward_input and sgd_update of the narrow last layer.

    dinp (B, C) serves as scratch for dweight.T (OC, C) until the input gradient is written into it.
    """
    C, OC = weight.shape
    dweight_t = dinp.reshape(dinp.size)[:OC * C].reshape((OC, C))
    _dweight_t(dweight_t, dout, inp)  # (OC, C)
    _transpose(dweight, dweight_t)  # (C, OC)
    _dbias(dbias, dout)  # (OC,)
    linear_backward_input(dinp, dout, weight, inp)  # (B, C), with weight before its update
    rate, mom, decay = weight.dtype.type(lr), weight.dtype.type(momentum), weight.dtype.type(weight_decay)
    _sgd_span(weight.reshape(C * OC), dweight.reshape(C * OC), velocity_w.reshape(C * OC), rate, mom, decay)
    _sgd_span(bias, dbias, velocity_b, rate, mom, decay)


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
    last = L - 1
    B, K = dlogits.shape
    # A narrow last layer (the K classes) runs in dot-product form from transposed copies held in
    # two buffers that are free at that moment: dweights[last] until its gradient is written, and
    # dacts[last] until the input gradient is. A single layer has no dacts; B < K leaves it too small.
    narrow = K <= NARROW_MAX and L > 1 and B >= K
    gather_batch(acts[0], targets, images, labels, indices, scale)  # (B, C_0), (B,)
    for l in range(last):
        linear_relu_forward(acts[l + 1], acts[l], weights[l], biases[l])  # (B, C_l+1)
    if narrow:
        weight_t = dweights[last].reshape((K, weights[last].shape[0]))
        _narrow_forward(acts[L], acts[last], weights[last], biases[last], weight_t)  # (B, K)
    else:
        linear_forward(acts[L], acts[last], weights[last], biases[last])  # (B, K)
    n_correct = 0  # before the update, like the loss
    for b in range(B):
        if _argmax_row(acts[L], b) == targets[b]:
            n_correct += 1
    loss = softmax_cross_entropy(dlogits, acts[L], targets)  # dlogits (B, K)
    dout = dlogits
    for l in range(last, -1, -1):
        if l == last and narrow:
            _narrow_backward_sgd(weights[l], biases[l], dweights[l], dbiases[l], velocities_w[l], velocities_b[l],
                                 dacts[l], dout, acts[l], lr, momentum, weight_decay)
        else:
            if l > 0:  # the input gradient first: it needs weights[l] before the update
                linear_backward_input(dacts[l], dout, weights[l], acts[l])  # (B, C_l)
            _linear_backward_sgd(weights[l], biases[l], dweights[l], dbiases[l], velocities_w[l], velocities_b[l],
                                 dout, acts[l], lr, momentum, weight_decay)  # (C_l, C_l+1), (C_l+1,)
        if l > 0:
            dout = dacts[l]
    return loss, n_correct
