"""Version 2 of the CUDA train step: one persistent cooperative kernel runs whole training steps.

Each phase of a step (gather, forward per layer, each with its dropout, loss, backward per layer, the
update, max-norm if on) is spread over all blocks of the grid, and a grid-wide barrier (cooperative
groups, `cuda.cg.this_grid().sync()`) separates a phase from the next one that reads its results:
2L + 2 barriers per step (2L + 3 with max-norm) instead of 2L + 3 launches. `train_steps` runs S steps
in a single launch, so the launch cost is paid once per call, not per step. The grid is as large as
can be co-resident (a cooperative launch must be), capped at the largest phase's tile count.

Hazards, phase by phase: every phase writes outputs no other block of the same phase writes or reads
(distinct tiles, distinct elements, distinct columns); a phase reading another's output comes after
a barrier. In detail:
- Dropout has no phase: the gather and a forward tile drop their own outputs as they store them,
  with masks hashed from (seed, step, activation, row, unit), so no thread reads another's bits; the
  phases that read those outputs (the next forward, the backward, whose mask they are) come after
  the barriers between.
- The update (SGD, Adam) is elementwise: each element of a parameter and of its optimizer state is
  read and written by one thread. The gradients it reads were written before the last backward
  barrier, and the weights it overwrites were last read (by the backward phases) before it.
- Max-norm reads whole columns of each weight, whose elements the update spread over every block:
  so a barrier separates the two. Then a thread owns a column (reads its norm, scales it); columns
  are disjoint, so no barrier inside.
- The last phase of a step (the update, or max-norm) has no barrier after it: the next step's gather
  writes acts[0] and targets, which neither touches, and its first reader of the parameters
  (forward) follows the barrier after that gather.
- Every block must reach every barrier: the barriers sit in code that all threads run, their
  conditions (hyper.max_norm, the step and layer loops) are the same for the whole grid.

The CUDA simulator runs cooperative grids of one block only, so the tests exercise every phase
with one block looping over all tiles; the cross-block barriers need a real GPU.
"""
import functools

import numpy as np
from numba import config, cuda, float64, int32
from numba.np.numpy_support import from_dtype

from kernels.cuda.device import (THREADS, TILE, TILE_SHAPE, device_hyper, gather_rows, linear_backward_tiles,
                                 linear_forward_tiles, max_norm_layers, n_tiles, softmax_xent_rows, update_layers)
from kernels.cuda.metrics import metrics, step_log


@functools.cache
def _kernel(dtype):
    """The persistent kernel for one float dtype (shared arrays need their dtype at compile time)."""
    shared_dtype = from_dtype(dtype)

    @cuda.jit
    def train_steps_kernel(weights, biases, dweights, dbiases, moment1_w, moment1_b, moment2_w, moment2_b,
                           acts, douts, targets, images, labels, indices, scale, lrs, numbers, hyper, log, log_first):
        # step s gathers rows indices[s] (S, B), is step numbers[s] (S,) of the run and updates with rate lrs[s] (S,)
        sa = cuda.shared.array(TILE_SHAPE, shared_dtype)  # one declaration a line: the simulator
        sb = cuda.shared.array(TILE_SHAPE, shared_dtype)  # tells shared arrays apart by line
        loss_parts = cuda.shared.array(THREADS, float64)
        correct_parts = cuda.shared.array(THREADS, int32)
        grid = cuda.cg.this_grid()
        block, blocks = cuda.blockIdx.x, cuda.gridDim.x
        thread = block * THREADS + cuda.threadIdx.y * TILE + cuda.threadIdx.x
        threads = blocks * THREADS
        L = len(weights)
        for s in range(indices.shape[0]):
            gather_rows(acts[0], targets, images, labels, indices[s], scale, hyper, numbers[s], thread, threads)
            grid.sync()
            for l in range(L):  # hidden layers with ReLU and dropout, the last one plain: logits
                linear_forward_tiles(acts[l + 1], acts[l], weights[l], biases[l], l < L - 1, hyper, numbers[s],
                                     l + 1, block, blocks, sa, sb)
                grid.sync()
            if block == 0:  # B rows of K = 10 logits: one block is plenty
                softmax_xent_rows(douts[L - 1], acts[L], targets, log, (log_first + s) % log.shape[0],
                                  loss_parts, correct_parts)
            grid.sync()
            for l in range(L - 1, -1, -1):
                # douts[l - 1] receives the input gradient; layer 0 has none (its dinp is not touched)
                linear_backward_tiles(dweights[l], dbiases[l], douts[max(l - 1, 0)], douts[l], acts[l], weights[l],
                                      l > 0, hyper, block, blocks, sa, sb)
                grid.sync()
            update_layers(weights, biases, dweights, dbiases, moment1_w, moment1_b, moment2_w, moment2_b, lrs[s],
                          numbers[s], hyper, thread, threads)
            if hyper.max_norm != 0:  # the same for every block: all of them meet at this barrier
                grid.sync()  # every element of every column updated before a column's norm
                max_norm_layers(weights, hyper.max_norm, thread, threads)

    return train_steps_kernel


def _cooperative_blocks(kernel, args):
    """How many blocks of the kernel compiled for args fit on the GPU at once (a cooperative grid must)."""
    if config.ENABLE_CUDASIM:
        return 1  # the simulator has no barrier across blocks
    signature = tuple(kernel.typeof_pyval(a) for a in args)
    return kernel.compile(signature).max_cooperative_grid_blocks((TILE, TILE))


_grid_blocks = {}  # (dtype, L, images dtype) -> _cooperative_blocks


def _launch(kernel, args, kind, work_tiles):
    """Launch the cooperative kernel on as many blocks as fit at once, but no more than work_tiles;
    kind: what its compiled code depends on besides the argument count, (dtype, L, images dtype)."""
    if kind not in _grid_blocks:
        _grid_blocks[kind] = _cooperative_blocks(kernel, args)
    kernel[max(1, min(_grid_blocks[kind], work_tiles)), (TILE, TILE)](*args)


def train_steps(params, grads, optimizer, buffers, data, steps, hyper):
    """fastnn.ops.train_steps in one launch: S = len(steps.lrs) steps, steps.indices (S, B), steps.lrs (S,)
    and steps.numbers (S,) device arrays. Returns (losses, n_correct), lists of S DeviceScalars."""
    weights, biases = params
    acts, douts, targets, _ = buffers
    S = steps.indices.shape[0]
    log = step_log()
    first = log.claim(S)
    moment1, moment2 = optimizer
    args = (tuple(weights), tuple(biases), tuple(grads.weights), tuple(grads.biases), tuple(moment1.weights),
            tuple(moment1.biases), tuple(moment2.weights), tuple(moment2.biases), tuple(acts), tuple(douts), targets,
            data.images, data.labels, steps.indices, np.float64(data.scale), steps.lrs, steps.numbers,
            device_hyper(hyper), log.device, first % len(log))
    work_tiles = max(max(n_tiles(a.shape) for a in acts[1:]),  # forward; backward: dweight and dinp tiles
                     max(n_tiles(w.shape) + (n_tiles(acts[l].shape) if l else 0) for l, w in enumerate(weights)))
    _launch(_kernel(weights[0].dtype), args, (weights[0].dtype, len(weights), data.images.dtype), work_tiles)
    results = metrics(first, S)
    return [loss for loss, _ in results], [n_correct for _, n_correct in results]
