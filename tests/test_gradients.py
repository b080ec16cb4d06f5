"""The NumPy reference against float64 finite differences and published formulas: the definition of
right is itself checked."""
import numpy as np
import pytest

from fastnn import ops
from fastnn.bundles import Data, Hyper, Layers, Steps, training_state
from fastnn.settings import SGD

EPS = 1e-6  # central differences in float64: truncation ~EPS^2, rounding ~1e-16/EPS, both << 1e-7


def numerical_gradient(f, x):
    """d f() / d x by central differences, perturbing x in place one entry at a time."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        saved = x[i]
        x[i] = saved + EPS
        plus = f()
        x[i] = saved - EPS
        minus = f()
        x[i] = saved
        grad[i] = (plus - minus) / (2 * EPS)
    return grad


def away_from_kink(rng, shape):
    """Values with |v| >= 0.1, so a finite difference never straddles the ReLU kink at 0."""
    return rng.uniform(0.1, 1.0, shape) * rng.choice([-1.0, 1.0], shape)


def test_linear_backward_matches_finite_differences():
    rng = np.random.default_rng(0)
    B, C, OC = 5, 7, 3
    inp, weight, bias = rng.standard_normal((B, C)), rng.standard_normal((C, OC)), rng.standard_normal(OC)
    upstream = rng.standard_normal((B, OC))  # d loss / d out for loss = sum(out * upstream)
    out = np.empty((B, OC))

    def loss():
        ops.linear_forward(out, inp, weight, bias)
        return np.sum(out * upstream)

    dweight, dbias = np.empty((C, OC)), np.empty(OC)
    ops.linear_backward(dweight, dbias, upstream, inp)
    np.testing.assert_allclose(dweight, numerical_gradient(loss, weight), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(dbias, numerical_gradient(loss, bias), rtol=1e-7, atol=1e-9)


def test_linear_backward_input_is_the_gradient_through_relu():
    rng = np.random.default_rng(1)
    B, C, OC = 4, 6, 5
    pre = away_from_kink(rng, (B, C))  # the previous layer's pre-activation
    weight, bias = rng.standard_normal((C, OC)), rng.standard_normal(OC)
    upstream = rng.standard_normal((B, OC))
    act, out = np.empty((B, C)), np.empty((B, OC))

    def loss():
        ops.relu_forward(act, pre)
        ops.linear_forward(out, act, weight, bias)
        return np.sum(out * upstream)

    loss()
    dpre = np.empty((B, C))
    ops.linear_backward_input(dpre, upstream, weight, act)
    np.testing.assert_allclose(dpre, numerical_gradient(loss, pre), rtol=1e-7, atol=1e-9)


def test_relu_backward_matches_finite_differences_and_is_zero_at_the_kink():
    rng = np.random.default_rng(2)
    x = away_from_kink(rng, (3, 8))
    upstream = rng.standard_normal((3, 8))
    out = np.empty_like(x)

    def loss():
        ops.relu_forward(out, x)
        return np.sum(out * upstream)

    loss()
    dx = np.empty_like(x)
    ops.relu_backward(dx, upstream, out)
    np.testing.assert_allclose(dx, numerical_gradient(loss, x), rtol=1e-7, atol=1e-9)
    kinks = np.array([[-1.0, 0.0, 1.0]])
    ops.relu_forward(kinks_out := np.empty_like(kinks), kinks)
    ops.relu_backward(dk := np.empty_like(kinks), np.ones_like(kinks), kinks_out)
    assert kinks_out.tolist() == [[0.0, 0.0, 1.0]] and dk.tolist() == [[0.0, 0.0, 1.0]]


def test_softmax_cross_entropy_gradient_and_value():
    rng = np.random.default_rng(3)
    B, K = 6, 10
    logits, targets = rng.standard_normal((B, K)) * 3, rng.integers(0, K, B)
    dlogits = np.empty((B, K))

    def loss():
        return ops.softmax_cross_entropy(np.empty((B, K)), logits, targets)

    value = ops.softmax_cross_entropy(dlogits, logits, targets)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert value == pytest.approx(-np.mean(np.log(probs[np.arange(B), targets])), rel=1e-12)
    np.testing.assert_allclose(dlogits, numerical_gradient(loss, logits), rtol=1e-6, atol=1e-9)


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [-1e4, 1e4, 0.0]], np.float32)
    dlogits = np.empty_like(logits)
    loss = ops.softmax_cross_entropy(dlogits, logits, np.array([0, 0]))
    assert np.isfinite(loss) and loss == pytest.approx(1e4, rel=1e-6)  # row 2 is 2e4 nats off; row 1 is 0
    assert np.isfinite(dlogits).all()


def test_sgd_update_with_momentum_and_weight_decay_follows_the_formula():
    rng = np.random.default_rng(4)
    param, grad = rng.standard_normal(5), rng.standard_normal(5)
    moment1 = np.zeros(5)
    expected_p, expected_v = param.copy(), np.zeros(5)
    for _ in range(3):
        expected_v = 0.9 * expected_v + grad + 0.01 * expected_p
        expected_p = expected_p - 0.1 * expected_v
        ops.sgd_update(param, grad, moment1, 0.1, 0.9, 0.01)
    np.testing.assert_allclose(param, expected_p, rtol=1e-14)
    np.testing.assert_allclose(moment1, expected_v, rtol=1e-14)


def pytorch_sgd(param, grads, lr, momentum, weight_decay, nesterov):
    """A float64 transcription of PyTorch's documented SGD (torch.optim.SGD, dampening 0): the
    parameters after one step per gradient in grads."""
    buffer = None
    for t, grad in enumerate(grads, start=1):
        g = grad + weight_decay * param
        buffer = g if t == 1 else momentum * buffer + g  # b_1 = g_1, then b_t = mu * b_t-1 + g_t
        g = g + momentum * buffer if nesterov else buffer
        param = param - lr * g
    return param


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_follows_pytorchs_documented_update(nesterov):
    rng = np.random.default_rng(9)
    param0, grads = rng.standard_normal(6), rng.standard_normal((4, 6))
    hyper = Hyper(optimizer=SGD, momentum=0.9, weight_decay=0.01, nesterov=nesterov)
    param, moment1, moment2 = param0.copy(), np.zeros(6), np.zeros(6)
    for number, grad in enumerate(grads, start=1):
        ops.update(param, grad, moment1, moment2, 0.1, number, hyper)
    np.testing.assert_allclose(param, pytorch_sgd(param0, grads, 0.1, 0.9, 0.01, nesterov), rtol=1e-14)
    assert not np.allclose(param, pytorch_sgd(param0, grads, 0.1, 0.9, 0.01, not nesterov))  # the flag matters


def test_gather_batch_scales_uint8_and_picks_labels():
    images = np.array([[0, 255], [51, 102], [255, 0]], np.uint8)
    labels = np.array([7, 8, 9])
    inp, targets = np.empty((2, 2), np.float32), np.empty(2, np.int64)
    ops.gather_batch(inp, targets, Data(images, labels, 1 / 255), np.array([2, 1]))
    np.testing.assert_allclose(inp, [[1.0, 0.0], [0.2, 0.4]], rtol=1e-6)
    assert targets.tolist() == [9, 8]


def test_argmax_takes_the_first_of_ties():
    out = np.empty(2, np.int64)
    ops.argmax(out, np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0]]))
    assert out.tolist() == [1, 0]


def kingma_ba(theta, gradients, alpha, beta1, beta2, eps, weight_decay, decoupled):
    """Algorithm 1 of Kingma & Ba (2015), element by element in Python floats, with weight decay as
    an L2 term in the gradient or, decoupled, as Loshchilov & Hutter's AdamW (scaled by alpha, as
    PyTorch's AdamW). Returns the parameters after len(gradients) steps."""
    theta = [float(x) for x in theta]
    m, v = [0.0] * len(theta), [0.0] * len(theta)
    for t, grad in enumerate(gradients, start=1):
        for i, g in enumerate(float(x) for x in grad):
            if decoupled:
                theta[i] -= alpha * weight_decay * theta[i]
            else:
                g += weight_decay * theta[i]
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g ** 2
            m_hat, v_hat = m[i] / (1 - beta1 ** t), v[i] / (1 - beta2 ** t)
            theta[i] -= alpha * m_hat / (v_hat ** 0.5 + eps)
    return np.array(theta)


@pytest.mark.parametrize("weight_decay, decoupled", [(0.0, False), (0.01, False), (0.1, True)])
def test_adam_update_follows_kingma_and_ba(weight_decay, decoupled):
    rng = np.random.default_rng(13)
    theta, gradients = rng.standard_normal(7), rng.standard_normal((6, 7)) * [1, 1, 1, 1e-3, 1e3, 0, 1e-9]
    param, m, v = theta.copy(), np.zeros(7), np.zeros(7)
    for t, grad in enumerate(gradients, start=1):
        ops.adam_update(param, grad, m, v, 1e-2, t, 0.9, 0.999, 1e-8, weight_decay, decoupled)
    np.testing.assert_allclose(param, kingma_ba(theta, gradients, 1e-2, 0.9, 0.999, 1e-8, weight_decay, decoupled),
                               rtol=1e-13, atol=1e-15)


def test_max_norm_scales_only_the_columns_over_the_limit():
    weight = np.array([[3.0, 0.1, 0.0], [4.0, 0.1, 0.0]])  # column norms 5, 0.14, 0
    before = weight.copy()
    ops.max_norm(weight, 2.0)
    np.testing.assert_allclose(weight[:, 0], [1.2, 1.6], rtol=1e-15)  # the direction kept, the norm 2
    np.testing.assert_array_equal(weight[:, 1:], before[:, 1:])


def test_dropout_keeps_each_unit_with_probability_one_minus_rate_independently():
    keep = ops.dropout_keep(1000, 1000, seed=1, number=1, layer=0, rate=0.3)
    assert abs(keep.mean() - 0.7) < 0.003  # 1e6 draws: the standard deviation is 0.0005
    assert abs(keep[:, :500].mean() - keep[:, 500:].mean()) < 0.003 and abs(keep[::2].mean() - keep[1::2].mean()) < 0.003
    both = (keep[:, :-1] & keep[:, 1:]).mean()  # neighbours independent: 0.49 kept together
    assert abs(both - 0.49) < 0.003
    draws = [ops.dropout_keep(64, 100, seed, step, layer, 0.5) for seed, step, layer in
             [(1, 1, 0), (2, 1, 0), (1, 2, 0), (1, 1, 1), (3, 0, 0), (1, 2**31 + 1, 0)]]
    for i, a in enumerate(draws):  # another seed, step or layer: another mask (agreeing on about half)
        for b in draws[i + 1:]:
            assert 0.4 < (a == b).mean() < 0.6
    assert ops.dropout_keep(8, 8, 5, 5, 0, 0.0).all()


def test_dropout_keeps_a_unit_whose_bits_equal_the_threshold():
    """keep = top 24 bits >= threshold: a rate whose threshold is exactly one unit's bits keeps that unit,
    and one a step of 2^-24 higher drops it (the edge a `>` would move)."""
    seed, step, layer = 9, 4, 1
    row_key = ops.hash32(ops.hash32(ops.hash32(ops.hash32(np.uint64(seed)) ^ np.uint64(step)) ^ np.uint64(layer)))
    bits = int(ops.hash32(row_key ^ np.uint64(0)) >> np.uint64(8))  # unit 0 of row 0
    at, above = bits / 2**24, (bits + 1) / 2**24
    assert ops.dropout_threshold(at) == bits
    assert ops.dropout_keep(1, 1, seed, step, layer, at)[0, 0]
    assert not ops.dropout_keep(1, 1, seed, step, layer, above)[0, 0]


def test_dropout_forward_scales_what_it_keeps():
    inp = np.full((50, 40), 3.0, np.float32)
    out = np.empty_like(inp)
    ops.dropout_forward(out, inp, 4, 9, 1, 0.25)
    keep = ops.dropout_keep(50, 40, 4, 9, 1, 0.25)
    np.testing.assert_array_equal(out, np.where(keep, np.float32(3.0) * np.float32(1 / 0.75), 0))


@pytest.mark.parametrize("hidden, dropout, input_dropout", [((6,), 0.0, 0.0), ((5, 4), 0.0, 0.0), ((6,), 0.5, 0.0),
                                                            ((5, 4), 0.3, 0.2)])
def test_train_step_gradients_of_the_whole_model_match_finite_differences(hidden, dropout, input_dropout):
    """lr = 0 leaves the weights alone, so train_step's gradients can be checked against the loss.
    The dropout masks are a function of (seed, step, layer, row, unit), not of the weights: with them
    drawn, the loss is a function of the weights like any other."""
    rng = np.random.default_rng(5)
    B, C, K = 4, 9, 3
    sizes = [C, *hidden, K]
    params = Layers(tuple(rng.standard_normal((a, b)) for a, b in zip(sizes[:-1], sizes[1:])),
                    tuple(rng.standard_normal(b) * 0.1 for b in sizes[1:]))
    images, labels = rng.standard_normal((B, C)), rng.integers(0, K, B)
    state = training_state(ops, params, B)
    weights, biases = state.params

    hyper = Hyper(optimizer=SGD, dropout=dropout, dropout_seed=11, input_dropout=input_dropout)
    number = 5

    def loss():
        acts = [images.copy()] + [np.empty((B, s)) for s in sizes[1:]]
        ops.dropout_forward(acts[0], acts[0], hyper.dropout_seed, number, 0, input_dropout)
        for l in range(len(weights)):
            ops.linear_forward(acts[l + 1], acts[l], weights[l], biases[l])
            if l < len(weights) - 1:
                ops.relu_forward(acts[l + 1], acts[l + 1])
                ops.dropout_forward(acts[l + 1], acts[l + 1], hyper.dropout_seed, number, l + 1, dropout)
        return ops.softmax_cross_entropy(np.empty((B, K)), acts[-1], labels)

    value, _ = ops.train_step(*state, Data(images, labels, 1.0), np.arange(B), 0.0, number, hyper)
    assert value == pytest.approx(loss(), rel=1e-12)
    for w, dw, b, db in zip(weights, state.grads.weights, biases, state.grads.biases):
        np.testing.assert_allclose(dw, numerical_gradient(loss, w), rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(db, numerical_gradient(loss, b), rtol=1e-6, atol=1e-8)


def test_train_steps_returns_float64_losses_and_int64_counts_of_each_step():
    rng = np.random.default_rng(6)
    B, C, K = 4, 5, 3
    params = Layers((rng.standard_normal((C, K)),), (np.zeros(K),))
    data = Data(rng.standard_normal((8, C)), rng.integers(0, K, 8), 1.0)
    steps = Steps(np.arange(8).reshape(2, B), np.array([0.1, 0.1]), np.array([1, 2]))
    losses, n_correct = ops.train_steps(*training_state(ops, params, B), data, steps, Hyper(optimizer=SGD))
    assert losses.shape == n_correct.shape == (2,)
    assert losses.dtype == np.float64 and n_correct.dtype == np.int64
    assert ((0 <= n_correct) & (n_correct <= B)).all() and (losses > 0).all()
