"""The Numba backend: every op of fastnn/ops.py as a jitted CPU kernel, same names, signatures, meaning.

    from kernels import cpu
    losses, n_correct = cpu.train_steps(params, grads, optimizer, buffers, data, steps, hyper)  # fastnn/step.py

Dimension letters (fastnn/ops.py's): B = batch size, C = input features of a layer, OC = output
features, K = classes. Weights are stored (C, OC). Outputs come first and are overwritten.

Parallelism: each prange iteration owns whole rows of its outputs (no races, no atomics), and every
sum runs in a fixed order inside one iteration, so results are bitwise identical run to run and for
any thread count. Kernels allocate nothing: the model owns every buffer and passes views (a partial
last batch is `buf[:n]`, still C-contiguous). They do not validate either; the model does, once.

Where the time goes: the first layer's forward and weight gradient are ~98% of the FLOPs. LLVM
vectorises their loops along OC with the accumulator in memory (Numba has no vector registers to hold
a tile of outputs), so the kernels hold small register blocks in scalars instead (2 x 4 in the forward,
4 x 2 in the weight gradient) and do less work: MNIST pixels are 81% exact zeros, in runs along each
row, and a block whose inputs are all exactly 0 is skipped with one branch. (Skipping instead of adding
0 * w differs from the dense product only where a weight or gradient is inf or NaN.) train_step also
fuses each weight gradient with its SGD update, gives each core a fixed half of every hidden layer's
weights, and computes the narrow last layer (K = 10 classes, shorter than a vector register) in
dot-product form from transposed copies. The numbered versions that led here are in
kernels/dev/linear_forward.py and kernels/dev/linear_backward.py.

Every jitted function that train_step calls lives in this module: numba's cache does not notice a
changed jitted callee in another file (numba PR #8396), so a split module would run stale code.
"""
import numba
import numpy as np
from numba import njit, prange

from fastnn.step import Data

# ---- tunables ----------------------------------------------------------------------------------
# They live here, beside the kernels that use them, on purpose: numba freezes a global's value into
# the compiled code, and its on-disk cache is invalidated only when this file changes. A constant
# imported from another module could be edited without any kernel being recompiled.
# Measured on the 2-core dev machine (see the module docstring and kernels/dev/).

# Every fast-math flag except nnan/ninf: NaN and inf keep their meaning (a diverged loss stays NaN).
# reassoc + contract are what let float reductions vectorise and fuse into FMAs (5x without them).
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
# Elements per parallel task of sgd_update; a smaller array (a bias) is one task, updated serially,
# since waking the thread pool costs more than the work.
SGD_CHUNK = 16384
# Rows of dweight per parallel task in linear_backward: 32 rows of 128 floats stay in L1.
DWEIGHT_ROWS = 32
# train_step computes a last layer with at most this many outputs (the 10 classes) from transposed
# copies: row updates narrower than a vector register barely vectorise.
NARROW_MAX = 16

# Start Numba's thread pool now. train_steps and forward are cached serial functions that call parallel
# kernels; when one was compiled while its kernels came from the cache, its own cache entry misses the
# hook that starts the pool on loading, and its first parallel kernel then segfaults (seen here, numba
# 0.68; the family of numba issue #8578).
numba.get_num_threads()

# Memory: the model's buffers are host NumPy arrays, exactly as for the NumPy reference.
empty = np.empty
to_device = np.ascontiguousarray
to_host = np.asarray


def prepare_data(images, labels, scale):
    """The training set for a whole fit: host arrays, as the reference keeps them."""
    return Data(images, labels, scale)


@njit(cache=True)
def _is_narrow(K, L):
    """Whether train_step runs the last layer (K outputs, of L layers) from transposed copies."""
    # A single layer has no hidden ReLU to backpropagate into: it takes the general path.
    return K <= NARROW_MAX and L > 1


@njit(cache=True)
def scratch_size(sizes, batch_size):
    """Floats of StepBuffers.scratch that train_steps uses for layer sizes (C_0, ..., K).

    The hidden layers' forward sums each half of its inputs separately: one (B, C_l+1) buffer of
    partial sums. A narrow last layer keeps weight.T and dweight.T: 2 * K * C_L-1 floats. The two are
    never needed at the same time. (Jitted, so that train_steps checks the scratch with this very code.)
    """
    L, K = len(sizes) - 1, sizes[-1]
    widest_hidden = 0
    for l in range(1, L):
        widest_hidden = max(widest_hidden, sizes[l])
    transposes = 2 * K * sizes[L - 1] if _is_narrow(K, L) else 0
    return max(batch_size * widest_hidden, transposes)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def gather_batch(inp, targets, data, indices):
    """Gather one mini-batch and scale it to floats (the uint8 -> float conversion fused into the copy).

    inp (B, C) float, targets (B,) int64 <- data (images (N, C) uint8 or float, labels (N,), scale), indices (B,).
    """
    images, labels, scale = data
    B, C = inp.shape
    # prange over batch rows: iteration b owns inp[b] and targets[b]
    for b in prange(B):
        row = indices[b]
        for k in range(C):
            # the product is taken in float64 and rounded once, as NumPy's uint8 * float does
            inp[b, k] = images[row, k] * scale  # (B, C)
        targets[b] = labels[row]


@njit(fastmath=FASTMATH, cache=True)
def _linear_two_rows(out, inp, weight, b, c0, c1):
    """out[b:b+2] (2, OC) += inp[b:b+2, c0:c1] (2, c1 - c0) @ weight[c0:c1] (c1 - c0, OC).

    A 2 x 4 register block: two batch rows take four rows of weight per pass, so each loaded chunk of
    weight feeds two FMAs and each load and store of out feeds four (the row form alone, one FMA per
    load and store of out, is bound by those memory accesses). A block whose 8 inputs are all exactly
    0 is skipped: most of them for MNIST pixels (81% zeros, in runs along rows), few for ReLU outputs.
    """
    OC = weight.shape[1]
    for k in range(c0, c1 - 3, 4):
        x0, x1, x2, x3 = inp[b, k], inp[b, k + 1], inp[b, k + 2], inp[b, k + 3]
        y0, y1, y2, y3 = inp[b + 1, k], inp[b + 1, k + 1], inp[b + 1, k + 2], inp[b + 1, k + 3]
        # one branch, not eight (LLVM turns `x0 != 0 or ...` into a chain of branches): a sum of
        # absolute values is 0 only when all are, and NaN inputs still go through
        if abs(x0) + abs(x1) + abs(x2) + abs(x3) + abs(y0) + abs(y1) + abs(y2) + abs(y3) != 0:
            for j in range(OC):
                w0, w1, w2, w3 = weight[k, j], weight[k + 1, j], weight[k + 2, j], weight[k + 3, j]
                out[b, j] = out[b, j] + x0 * w0 + x1 * w1 + x2 * w2 + x3 * w3
                out[b + 1, j] = out[b + 1, j] + y0 * w0 + y1 * w1 + y2 * w2 + y3 * w3
    for k in range(c1 - (c1 - c0) % 4, c1):
        x, y = inp[b, k], inp[b + 1, k]
        for j in range(OC):
            out[b, j] += x * weight[k, j]
            out[b + 1, j] += y * weight[k, j]


@njit(fastmath=FASTMATH, cache=True)
def _linear_one_row(out, inp, weight, b, c0, c1):
    """out[b] (OC) += inp[b, c0:c1] @ weight[c0:c1]: the last row of an odd batch."""
    for k in range(c0, c1):
        x = inp[b, k]
        if x != 0:
            for j in range(weight.shape[1]):
                out[b, j] += x * weight[k, j]


@njit(fastmath=FASTMATH, cache=True)
def _linear_rows(out, inp, weight, bias, b, c0, c1, with_bias):
    """out[b:b+2] = inp[b:b+2, c0:c1] @ weight[c0:c1] (+ bias if with_bias); only row b if it is the last."""
    rows = min(2, inp.shape[0] - b)
    zero = out.dtype.type(0)
    for r in range(b, b + rows):
        for j in range(weight.shape[1]):
            out[r, j] = bias[j] if with_bias else zero
    if rows == 2:
        _linear_two_rows(out, inp, weight, b, c0, c1)  # (2, OC)
    else:
        _linear_one_row(out, inp, weight, b, c0, c1)  # (OC,)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def linear_forward(out, inp, weight, bias):
    """out (B, OC) = inp (B, C) @ weight (C, OC) + bias (OC)."""
    C = inp.shape[1]
    # prange over pairs of batch rows: task t owns out[2t:2t+2]
    for t in prange((inp.shape[0] + 1) // 2):
        _linear_rows(out, inp, weight, bias, 2 * t, 0, C, True)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def linear_relu_forward(out, inp, weight, bias):
    """out (B, OC) = relu(inp (B, C) @ weight (C, OC) + bias (OC)): a hidden layer, ReLU in the epilogue."""
    B, C = inp.shape
    OC = out.shape[1]
    # prange over pairs of batch rows: task t owns out[2t:2t+2], and applies the ReLU while in L1
    for t in prange((B + 1) // 2):
        _linear_rows(out, inp, weight, bias, 2 * t, 0, C, True)
        for b in range(2 * t, min(2 * t + 2, B)):
            for j in range(OC):
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


@njit(fastmath=FASTMATH, cache=True)
def _exp_row(out, logits, b):
    """out[b] (K) = exp(logits[b] - its max); returns that row's sum and max."""
    # subtracting the row max changes nothing mathematically but keeps exp() from overflowing
    largest = _row_max(logits, b)
    total = out.dtype.type(0)
    for k in range(logits.shape[1]):
        out[b, k] = np.exp(logits[b, k] - largest)
        total += out[b, k]
    return total, largest


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def softmax(probs, logits):
    """probs (B, K) = softmax of logits (B, K) over classes."""
    B, K = logits.shape
    # prange over rows: iteration b owns probs[b]
    for b in prange(B):
        total, _ = _exp_row(probs, logits, b)  # (K,)
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
        total, largest = _exp_row(dlogits, logits, b)  # (K,)
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
    """dweight[c0:c1] (c1 - c0, OC) = inp[:, c0:c1].T @ dout (B, OC), batch rows added in order.

    A 4 x 2 register block: four batch rows go into two rows of dweight per pass, so each loaded
    chunk of dout feeds two FMAs and each load and store of dweight feeds four. A block whose 8
    inputs are all exactly 0 is skipped. Batch rows run outside pixels: inp is read along its rows,
    where MNIST's zeros come in runs the branch predictor follows (down a column they are scattered).
    """
    B = inp.shape[0]
    OC = dout.shape[1]
    for c in range(c0, c1):
        for j in range(OC):
            dweight[c, j] = 0
    for b in range(0, B - 3, 4):
        for c in range(c0, c1 - 1, 2):
            x0, x1, x2, x3 = inp[b, c], inp[b + 1, c], inp[b + 2, c], inp[b + 3, c]
            y0, y1, y2, y3 = inp[b, c + 1], inp[b + 1, c + 1], inp[b + 2, c + 1], inp[b + 3, c + 1]
            # one branch for the block, as in _linear_two_rows
            if abs(x0) + abs(x1) + abs(x2) + abs(x3) + abs(y0) + abs(y1) + abs(y2) + abs(y3) != 0:
                for j in range(OC):
                    d0, d1, d2, d3 = dout[b, j], dout[b + 1, j], dout[b + 2, j], dout[b + 3, j]
                    dweight[c, j] = dweight[c, j] + x0 * d0 + x1 * d1 + x2 * d2 + x3 * d3
                    dweight[c + 1, j] = dweight[c + 1, j] + y0 * d0 + y1 * d1 + y2 * d2 + y3 * d3
        if (c1 - c0) % 2:  # an odd last row of dweight
            c = c1 - 1
            x0, x1, x2, x3 = inp[b, c], inp[b + 1, c], inp[b + 2, c], inp[b + 3, c]
            for j in range(OC):
                dweight[c, j] = (dweight[c, j] + x0 * dout[b, j] + x1 * dout[b + 1, j]
                                 + x2 * dout[b + 2, j] + x3 * dout[b + 3, j])
    for b in range(B - B % 4, B):  # the last B % 4 batch rows
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
def _sgd_step(param, grad, velocity, lr, momentum, weight_decay):
    """One parameter's SGD step: returns its new (param, velocity). Scalars in the arrays' dtype."""
    if weight_decay != 0:  # as the reference: no 0 * param term, so an inf weight stays inf
        grad += weight_decay * param
    velocity = momentum * velocity + grad
    return param - lr * velocity, velocity


@njit(fastmath=FASTMATH, cache=True)
def _sgd_span(param, grad, velocity, lr, momentum, weight_decay):
    """sgd_update of 1-D arrays (a chunk, a bias), serially."""
    for i in range(param.size):
        param[i], velocity[i] = _sgd_step(param[i], grad[i], velocity[i], lr, momentum, weight_decay)


@njit(fastmath=FASTMATH, cache=True)
def _sgd_rows(param, grad, velocity, r0, r1, lr, momentum, weight_decay):
    """sgd_update of rows r0:r1 of 2-D arrays, indexed in place (a view per row costs more than a row)."""
    for r in range(r0, r1):
        for i in range(param.shape[1]):
            param[r, i], velocity[r, i] = _sgd_step(param[r, i], grad[r, i], velocity[r, i],
                                                    lr, momentum, weight_decay)


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


# ---- train_step's hidden layers: each core keeps to one half of every weight matrix -------------
# In train_step the work on a hidden layer is split into two halves of its input features C: the
# forward sums each half separately (the two partial sums are added at the end), and the backward
# gives each half's rows of dweight, weight and velocity to the same core. Split by batch rows, both
# cores would read all of weight in the forward, one would then write half of it in the update, and
# those cache lines would move between the cores every step (measured: steps 10-15% slower).
# The two halves are fixed, whatever the thread count, so results stay bitwise reproducible.


@njit(fastmath=FASTMATH, cache=True)
def _half(C, h):
    """The feature range [c0, c1) of half h (0 or 1) of C features, split at a block of DWEIGHT_ROWS."""
    blocks = (C + DWEIGHT_ROWS - 1) // DWEIGHT_ROWS
    split = min((blocks + 1) // 2 * DWEIGHT_ROWS, C)
    if h == 0:
        return 0, split
    return split, C


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _linear_relu_forward_halves(out, partial, inp, weight, bias):
    """linear_relu_forward, its sum over C split in two halves; partial (B, OC) is scratch for half 1's sums."""
    B, C = inp.shape
    OC = out.shape[1]
    # prange over the two halves of C: half 0 sums into out (from the bias), half 1 into partial
    for h in prange(2):
        c0, c1 = _half(C, h)
        for b in range(0, B, 2):
            if h == 0:
                _linear_rows(out, inp, weight, bias, b, c0, c1, True)  # (2, OC)
            else:
                _linear_rows(partial, inp, weight, bias, b, c0, c1, False)  # (2, OC)
    # prange over batch rows: iteration b owns out[b]
    for b in prange(B):
        for j in range(OC):
            total = out[b, j] + partial[b, j]
            out[b, j] = 0 if total < 0 else total  # (B, OC), NaN stays NaN


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _linear_backward_sgd(params, grads, optimizer, l, dout, inp, lr, hyper):
    """linear_backward of layer l, then sgd_update of its weight and bias, fused (train_step's backward).

    dout (B, OC) is the gradient at the layer's output, inp (B, C) its input. Each block of dweight
    rows updates its rows of weight and velocity while it is still in L1, instead of a second pass
    over three (C, OC) arrays. Same results as the two ops in sequence.
    """
    weight, dweight, velocity_w = params.weights[l], grads.weights[l], optimizer.velocity.weights[l]
    C = dweight.shape[0]
    real = weight.dtype.type  # the scalars in the arrays' dtype: float64 ones would make float32 math float64
    rate, mom, decay = real(lr), real(hyper.momentum), real(hyper.weight_decay)
    # prange over the two halves of C, as in the forward: half h owns those rows of dweight, weight
    # and velocity_w, in blocks of DWEIGHT_ROWS that stay in L1 while the batch is added in row order
    for h in prange(2):
        c0, c1 = _half(C, h)
        for r0 in range(c0, c1, DWEIGHT_ROWS):
            r1 = min(r0 + DWEIGHT_ROWS, c1)
            _dweight_rows(dweight, dout, inp, r0, r1)  # (r1 - r0, OC)
            _sgd_rows(weight, dweight, velocity_w, r0, r1, rate, mom, decay)  # (r1 - r0, OC)
    dbias = grads.biases[l]
    _dbias(dbias, dout)  # (OC,)
    _sgd_span(params.biases[l], dbias, optimizer.velocity.biases[l], rate, mom, decay)  # OC biases: serial


# ---- the narrow last layer inside train_step --------------------------------------------------
# With OC = K = 10 classes a row update of OC floats is shorter than one vector register, so the row
# form above runs nearly scalar. train_step computes that layer from transposed copies instead, in
# dot-product form, kept in the step's scratch memory (see scratch_size).


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


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _linear_backward_input_t(dinp, dout, weight_t, inp):
    """linear_backward_input from weight_t (OC, C) = weight.T: row form along C, OC rows per pass.

    dinp (B, C) = (dout (B, OC) @ weight_t) * (inp > 0). With OC = 10 the dot-product form of
    linear_backward_input sums only 10 terms, too few to vectorise; here each row of weight_t adds
    C floats at a time.
    """
    B, C = dinp.shape
    OC = dout.shape[1]
    # prange over batch rows: iteration b owns dinp[b]
    for b in prange(B):
        for c in range(C):
            dinp[b, c] = 0
        for j in range(OC):
            d = dout[b, j]
            for c in range(C):
                dinp[b, c] += d * weight_t[j, c]  # (C,)
        for c in range(C):
            dinp[b, c] *= inp[b, c] > 0  # the ReLU mask as a product, as linear_backward_input


@njit(fastmath=FASTMATH, cache=True)
def _narrow_forward(out, inp, weight, bias, weight_t):
    """linear_forward of the narrow last layer; weight_t (OC, C) receives weight.T, kept for the backward."""
    _transpose(weight_t, weight)  # (OC, C)
    _linear_forward_t(out, inp, weight_t, bias)  # (B, OC)


@njit(fastmath=FASTMATH, cache=True)
def _narrow_backward_sgd(params, grads, optimizer, l, dinp, dout, inp, transposes, lr, hyper):
    """linear_backward, linear_backward_input and sgd_update of the narrow last layer l.

    transposes (2, OC, C): [0] still holds weight.T from _narrow_forward; [1] receives dweight.T
    before it is transposed into place.
    """
    weight, dweight = params.weights[l], grads.weights[l]
    C, OC = weight.shape
    _linear_backward_input_t(dinp, dout, transposes[0], inp)  # (B, C), from the weight before its update
    _dweight_t(transposes[1], dout, inp)  # (OC, C)
    _transpose(dweight, transposes[1])  # (C, OC)
    dbias = grads.biases[l]
    _dbias(dbias, dout)  # (OC,)
    real = weight.dtype.type
    rate, mom, decay = real(lr), real(hyper.momentum), real(hyper.weight_decay)
    _sgd_span(weight.reshape(C * OC), dweight.reshape(C * OC), optimizer.velocity.weights[l].reshape(C * OC),
              rate, mom, decay)
    _sgd_span(params.biases[l], dbias, optimizer.velocity.biases[l], rate, mom, decay)


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
def forward(acts, params):
    """Inference: acts[L] (B, K) <- logits of acts[0] (B, C_0) through all L layers of params.

    acts: a tuple of arrays (StepBuffers' layout); acts[l] (B, C_l) for 0 < l < L receive the hidden
    ReLU outputs.
    """
    weights, biases = params
    L = len(weights)
    for l in range(L - 1):
        linear_relu_forward(acts[l + 1], acts[l], weights[l], biases[l])  # (B, C_l+1)
    linear_forward(acts[L], acts[L - 1], weights[L - 1], biases[L - 1])  # (B, K)


@njit(fastmath=FASTMATH, cache=True)
def _scratch_view(scratch, shape):
    """The first prod(shape) floats of the scratch, as a C-contiguous array of `shape`."""
    n = 1
    for extent in shape:
        n *= extent
    return scratch[:n].reshape(shape)


@njit(fastmath=FASTMATH, cache=True)
def train_step(params, grads, optimizer, buffers, data, indices, lr, hyper):
    """One mini-batch of SGD: gather, forward, loss, backward, update. Returns (loss, n_correct).

    fastnn.ops.train_step's arguments and results. Buffers are views sized to this batch; their
    scratch is whole, at least scratch_size(sizes, B) floats (train_steps checks).
    """
    weights, biases = params
    acts, douts, targets, scratch = buffers
    L = len(weights)
    last = L - 1
    B, K = douts[last].shape
    C_last = weights[last].shape[0]
    narrow = _is_narrow(K, L)
    gather_batch(acts[0], targets, data, indices)  # (B, C_0), (B,)
    for l in range(last):
        partial = _scratch_view(scratch, acts[l + 1].shape)  # (B, C_l+1) half 1's sums
        _linear_relu_forward_halves(acts[l + 1], partial, acts[l], weights[l], biases[l])  # (B, C_l+1)
    transposes = _scratch_view(scratch, (2 if narrow else 0, K, C_last))  # weight.T and dweight.T (K, C_last)
    if narrow:
        _narrow_forward(acts[L], acts[last], weights[last], biases[last], transposes[0])  # (B, K)
    else:
        linear_forward(acts[L], acts[last], weights[last], biases[last])  # (B, K)
    n_correct = 0  # before the update, like the loss
    for b in range(B):
        if _argmax_row(acts[L], b) == targets[b]:
            n_correct += 1
    loss = softmax_cross_entropy(douts[last], acts[L], targets)  # (B, K)
    for l in range(last, -1, -1):
        if l == last and narrow:
            _narrow_backward_sgd(params, grads, optimizer, l, douts[l - 1], douts[l], acts[l], transposes, lr, hyper)
        else:
            if l > 0:  # the input gradient first: it needs weights[l] before the update
                linear_backward_input(douts[l - 1], douts[l], weights[l], acts[l])  # (B, C_l)
            _linear_backward_sgd(params, grads, optimizer, l, douts[l], acts[l], lr, hyper)  # (C_l, C_l+1), (C_l+1,)
    return loss, n_correct


@njit(fastmath=FASTMATH, cache=True)
def train_steps(params, grads, optimizer, buffers, data, steps, hyper):
    """S mini-batches of SGD in one call: fastnn.ops.train_steps. Returns (losses (S,), n_correct (S,)).

    A call from Python costs ~10 us here (numba reads every array of the bundles), about 5% of a
    small step: once per S steps it is noise.
    """
    weights = params.weights
    sizes = np.empty(len(weights) + 1, np.int64)  # (C_0, ..., K)
    sizes[0] = weights[0].shape[0]
    for l in range(len(weights)):
        sizes[l + 1] = weights[l].shape[1]
    # the kernels index the scratch without bounds checks: refuse one too small before it is written
    if buffers.scratch.size < scratch_size(sizes, buffers.acts[0].shape[0]):
        raise ValueError("buffers.scratch is smaller than scratch_size(): allocate the buffers with fastnn.step")
    S = steps.lrs.shape[0]
    losses, n_correct = np.empty(S), np.empty(S, np.int64)
    for s in range(S):
        losses[s], n_correct[s] = train_step(params, grads, optimizer, buffers, data, steps.indices[s],
                                             steps.lrs[s], hyper)
    return losses, n_correct
