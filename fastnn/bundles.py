"""The named bundles that every backend's `train_steps` takes, and the one place that makes them.

    params    Layers(weights, biases)      weights[l] (C_l, C_l+1), biases[l] (C_l+1,): what is learned
    grads     Layers(weights, biases)      the same shapes: the last step's gradients
    optimizer OptimizerState(moment1, moment2)  the optimizer's running averages, Layers of the same shapes
    buffers   StepBuffers(acts, douts, targets, scratch)   per-batch working memory
    data      Data(images, labels, scale)  the training set, in the backend's own representation
    steps     Steps(indices, lrs, numbers) which rows, which learning rate and which step of the run
    hyper     Hyper(optimizer, momentum, ...) the settings that stay the same for every step

L layers; sizes = (C_0, C_1, ..., C_L): C_0 input features (784 pixels), C_L = K classes. A bundle is
a NamedTuple of arrays (and tuples of arrays), so it passes unchanged into an `@njit` function.
Numba's own dispatch reads a namedtuple's fields in Python (~10 us for these), which is why backends
take many steps per call (`train_steps`), not one.
"""
import math
from collections import namedtuple
from typing import NamedTuple

import numpy as np

from fastnn.settings import SETTINGS


class Layers(NamedTuple):
    """One array per layer for the weights and one for the biases: parameters, gradients or optimizer state."""
    weights: tuple  # weights[l] (C_l, C_l+1), stored (fan_in, fan_out) so a layer is `inp @ weight`
    biases: tuple  # biases[l] (C_l+1,)


class OptimizerState(NamedTuple):
    """What the optimizer carries from step to step (both always allocated: one layout for every optimizer).
    The same two names in the reference, the Numba kernels (m1, m2 in element loops) and the CUDA kernels."""
    moment1: Layers  # a running average of the gradients: SGD's momentum buffer (PyTorch's b), Adam's m
    moment2: Layers  # a running average of the squared gradients: Adam's v; untouched by SGD


class StepBuffers(NamedTuple):
    """A step's working memory for a batch of B rows; `first_rows` gives the views for a smaller last batch."""
    acts: tuple  # acts[0] (B, C_0) the gathered batch, acts[l] (B, C_l) hidden ReLU outputs, acts[L] (B, K) logits
    douts: tuple  # douts[l] (B, C_l+1): gradient of the loss with respect to layer l's output before its
    #               ReLU; douts[L-1] is the logits' gradient (the pixels need none)
    targets: np.ndarray  # (B,) int64 labels of the batch
    scratch: np.ndarray  # (ops.scratch_size(sizes, B),) floats a fast backend may use; never sliced


class Data(NamedTuple):
    """A training set as a backend holds it (`ops.prepare_data` makes it once per fit)."""
    images: np.ndarray  # (N, C_0) uint8 grey levels, or floats
    labels: np.ndarray  # (N,) int64 in 0..K-1
    scale: float  # a gathered pixel is images[i, c] * scale: 1/255 for uint8, 1.0 for floats


class Steps(NamedTuple):
    """S consecutive mini-batches: step s trains on rows indices[s] of the data with learning rate lrs[s];
    it is step numbers[s] of the run (1, 2, ...): Adam's bias correction and the dropout masks use it."""
    indices: np.ndarray  # (S, B) int64
    lrs: np.ndarray  # (S,) float64
    numbers: np.ndarray  # (S,) int64


# The settings that stay the same for every step (the learning rate comes with Steps): the rows of
# fastnn/settings.py marked `kernel`, each as the kernels take it (settings.Setting.encode: the
# optimizer's number, plain Python numbers), and the seed of the dropout masks. What each one does is
# the reference's to say (fastnn/ops.py: update, train_step). A NamedTuple, so numba reads its fields by name.
_KERNEL_SETTINGS = [setting for setting in SETTINGS.values() if setting.kernel]
Hyper = namedtuple("Hyper", [setting.name for setting in _KERNEL_SETTINGS] + ["dropout_seed"],
                   defaults=[setting.encode(setting.default) for setting in _KERNEL_SETTINGS] + [0])


def hyper_of(values, dropout_seed=0):
    """The Hyper of settings {name: value} (every setting, checked) and the dropout masks' seed."""
    return Hyper(**{s.name: s.encode(values[s.name]) for s in _KERNEL_SETTINGS}, dropout_seed=dropout_seed)


class TrainingState(NamedTuple):
    """Everything one fit keeps where the backend computes (see `training_state`)."""
    params: Layers
    grads: Layers
    optimizer: OptimizerState
    buffers: StepBuffers


def layer_sizes(weights):
    """(C_0, C_1, ..., C_L) of a network with these weights."""
    return (weights[0].shape[0],) + tuple(w.shape[1] for w in weights)


def he_init(sizes, dtype, seed):
    """Host parameters for layer sizes (C_0, ..., K): He-normal weights, std sqrt(2 / fan_in) (right for
    ReLU), drawn layer by layer from default_rng(seed) in float64 and then cast; zero biases."""
    rng = np.random.default_rng(seed)
    pairs = list(zip(sizes[:-1], sizes[1:]))
    weights = tuple((rng.standard_normal((c, oc)) * math.sqrt(2 / c)).astype(dtype) for c, oc in pairs)
    return Layers(weights, tuple(np.zeros(oc, dtype) for _, oc in pairs))


def activations(ops, sizes, rows, dtype):
    """acts for `rows` rows: acts[l] (rows, C_l) for every layer size, allocated by the backend."""
    return tuple(ops.empty((rows, c), dtype) for c in sizes)


def step_buffers(ops, sizes, batch_size, dtype):
    """StepBuffers for batches of up to batch_size rows, allocated by the backend (`ops.empty`)."""
    return StepBuffers(acts=activations(ops, sizes, batch_size, dtype),
                       douts=tuple(ops.empty((batch_size, c), dtype) for c in sizes[1:]),
                       targets=ops.empty(batch_size, np.int64),
                       scratch=ops.empty(ops.scratch_size(sizes, batch_size), dtype))


def first_rows(buffers, rows):
    """Views of the first `rows` rows of every per-batch buffer: a smaller last batch (still C-contiguous).
    The scratch stays whole: its layout is the backend's, not per row."""
    return buffers._replace(acts=tuple(a[:rows] for a in buffers.acts),
                            douts=tuple(d[:rows] for d in buffers.douts),
                            targets=buffers.targets[:rows])


def to_device(ops, layers):
    """A copy of a host Layers where the backend computes: training never writes into the caller's arrays."""
    return Layers(tuple(ops.to_device(np.array(w)) for w in layers.weights),
                  tuple(ops.to_device(np.array(b)) for b in layers.biases))


def to_host(ops, layers):
    """A Layers as new NumPy arrays, independent of the backend's."""
    return Layers(tuple(np.array(ops.to_host(w)) for w in layers.weights),
                  tuple(np.array(ops.to_host(b)) for b in layers.biases))


def zeros_like(layers):
    """A Layers of host zeros shaped as `layers`."""
    return Layers(tuple(np.zeros_like(w) for w in layers.weights), tuple(np.zeros_like(b) for b in layers.biases))


def new_optimizer_state(params):
    """The OptimizerState a run starts from: zeros, host arrays."""
    return OptimizerState(zeros_like(params), zeros_like(params))


def training_state(ops, params, batch_size, optimizer=None):
    """TrainingState for host parameters `params` and optimizer state `optimizer` (an OptimizerState of
    host arrays; None: zeros), copied to the backend with empty gradients and step buffers for batches
    of batch_size rows."""
    dtype = params.weights[0].dtype
    sizes = layer_sizes(params.weights)
    optimizer = new_optimizer_state(params) if optimizer is None else optimizer
    grads = Layers(tuple(ops.empty(w.shape, dtype) for w in params.weights),
                   tuple(ops.empty(b.shape, dtype) for b in params.biases))
    return TrainingState(params=to_device(ops, params), grads=grads,
                         optimizer=OptimizerState(*(to_device(ops, layers) for layers in optimizer)),
                         buffers=step_buffers(ops, sizes, batch_size, dtype))
