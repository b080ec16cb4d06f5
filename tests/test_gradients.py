"""The NumPy reference against float64 finite differences: the definition of right is itself checked."""
import numpy as np
import pytest

from fastnn import ops
from fastnn.step import Data, Hyper, Layers, training_state

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
    velocity = np.zeros(5)
    expected_p, expected_v = param.copy(), np.zeros(5)
    for _ in range(3):
        expected_v = 0.9 * expected_v + grad + 0.01 * expected_p
        expected_p = expected_p - 0.1 * expected_v
        ops.sgd_update(param, grad, velocity, 0.1, 0.9, 0.01)
    np.testing.assert_allclose(param, expected_p, rtol=1e-14)
    np.testing.assert_allclose(velocity, expected_v, rtol=1e-14)


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


@pytest.mark.parametrize("hidden", [(6,), (5, 4)])
def test_train_step_gradients_of_the_whole_model_match_finite_differences(hidden):
    """lr = 0 leaves the weights alone, so train_step's gradients can be checked against the loss."""
    rng = np.random.default_rng(5)
    B, C, K = 4, 9, 3
    sizes = [C, *hidden, K]
    params = Layers(tuple(rng.standard_normal((a, b)) for a, b in zip(sizes[:-1], sizes[1:])),
                    tuple(rng.standard_normal(b) * 0.1 for b in sizes[1:]))
    images, labels = rng.standard_normal((B, C)), rng.integers(0, K, B)
    state = training_state(ops, params, B)
    weights, biases = state.params

    def loss():
        acts = tuple(np.empty((B, s)) for s in sizes)
        acts[0][:] = images
        ops.forward(acts, state.params)
        return ops.softmax_cross_entropy(np.empty((B, K)), acts[-1], labels)

    value, _ = ops.train_step(*state, Data(images, labels, 1.0), np.arange(B), 0.0, Hyper(0.0, 0.0))
    assert value == pytest.approx(loss(), rel=1e-12)
    for w, dw, b, db in zip(weights, state.grads.weights, biases, state.grads.biases):
        np.testing.assert_allclose(dw, numerical_gradient(loss, w), rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(db, numerical_gradient(loss, b), rtol=1e-6, atol=1e-8)
