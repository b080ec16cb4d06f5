"""The CUDA backend against PyTorch on the same GPU: seconds per training epoch of MNIST.

    uv run python -m bench.gpu                 # on a machine with an NVIDIA GPU (and torch for its rows)
    uv run python -m bench.gpu --epochs 9      # median of 9 timed epochs instead of 5
    NUMBA_ENABLE_CUDASIM=1 uv run python -m bench.gpu --tiny   # no GPU needed: a few steps of a tiny
                                               # network in the CUDA simulator, to check the script runs

Rows per config (784-128-10 batch 64, the seed; 784-512-10 batch 256): fastnn's cuda train_step
version 1 (2L + 3 launches per step) and 2 (1 persistent launch per step), version 2's train_steps
(1 launch per epoch of full batches, then the partial last batch), and torch with the same layers,
initial weights and SGD: eager, and with the train step captured in a CUDA graph (the graph replays
full batches only, so it skips the partial last batch: 32 of 60000 images). Every implementation
runs one untimed warm-up epoch (compilation, cuBLAS heuristics), then --epochs epochs, each timed
from a synchronised start to a synchronize(); the table shows the median. Run
`uv run pytest tests/test_cuda.py` on the same GPU first: this script times, it does not check.
torch is not a dependency of fastnn: without it the torch rows are skipped with a message.
"""
import argparse
import functools
import statistics
import time
import types

import numpy as np

from bench.test_train import CONFIGS
from bench.workload import SCALE, run_epoch, train_buffers
from fastnn.backends import get_backend
from fastnn.cli import friendly_errors

TINY = {"12-8-10 B=8": ((12, 8, 10), 8, (0.01, 0.9, 5e-4))}  # --tiny: 3 steps an epoch, 2 full and 1 partial
TINY_ROWS = 20


def fastnn_rows(kc, sizes, B, hyper, images, labels, epochs):
    """{implementation: (launches per step, [seconds per epoch])} for the cuda backend's versions."""
    L, rng = len(sizes) - 1, np.random.default_rng(0)
    dev_images, dev_labels = kc.to_device(images), kc.to_device(labels)
    rows = {}
    for version, launches in ((1, f"{2 * L + 3}"), (2, "1")):
        ops = types.SimpleNamespace(to_device=kc.to_device, train_step=kc.TRAIN_STEPS[version])
        epoch = functools.partial(run_epoch, ops, train_buffers(kc, sizes, B), dev_images, dev_labels, rng, hyper)
        rows[f"fastnn cuda v{version}"] = (launches, timed(epoch, kc.cuda.synchronize, epochs))
    buffers = train_buffers(kc, sizes, B)
    full = len(images) // B * B
    lrs = kc.to_device(np.full(len(images) // B, hyper[0], np.float32))

    def epoch_in_one_launch():
        order = kc.to_device(rng.permutation(len(images)))
        kc.train_steps(*buffers, dev_images, dev_labels, order[:full], SCALE, lrs, *hyper[1:])
        if full < len(images):
            last = buffers.rows(len(images) - full)  # the partial last batch
            kc.TRAIN_STEPS[2](*last, dev_images, dev_labels, order[full:], SCALE, *hyper)

    rows["fastnn cuda v2 train_steps"] = ("1 per epoch", timed(epoch_in_one_launch, kc.cuda.synchronize, epochs))
    return rows


def torch_rows(sizes, B, hyper, images, labels, epochs):
    """The same training in torch: {"torch eager" / "torch CUDA graph": (launches, [seconds per epoch])}."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 math, as fastnn's kernels
    lr, momentum, weight_decay = hyper
    weights = train_buffers(get_backend("numpy"), sizes, B).weights  # the He init fastnn's rows start from
    layers = []
    for w in weights:
        linear = torch.nn.Linear(*w.shape)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(w.T.copy()))  # torch stores (OC, C)
            linear.bias.zero_()
        layers += [linear, torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1]).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    dev_images, dev_labels = torch.from_numpy(images).cuda(), torch.from_numpy(labels).cuda()
    N, rng = len(images), np.random.default_rng(0)

    def step(idx):
        loss = torch.nn.functional.cross_entropy(model(dev_images[idx].float() * SCALE), dev_labels[idx])
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()

    def eager_epoch():
        order = torch.from_numpy(rng.permutation(N)).cuda()
        for start in range(0, N, B):
            step(order[start:start + B])

    # CUDA graph capture as torch's docs show it: warm up on a side stream, then capture one step
    static_idx = torch.arange(B, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step(static_idx)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(static_idx)

    def graph_epoch():
        order = torch.from_numpy(rng.permutation(N)).cuda()
        for start in range(0, N - B + 1, B):
            static_idx.copy_(order[start:start + B])
            graph.replay()

    return {"torch eager": ("many", timed(eager_epoch, torch.cuda.synchronize, epochs)),
            "torch CUDA graph": ("1 graph", timed(graph_epoch, torch.cuda.synchronize, epochs))}


def timed(epoch, synchronize, epochs):
    """Seconds of each of `epochs` epochs after one warm-up epoch, each from and to an idle GPU."""
    epoch()
    synchronize()
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        epoch()
        synchronize()  # kernels are asynchronous: the clock stops when the GPU is done
        seconds.append(time.perf_counter() - start)
    return seconds


@friendly_errors
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per row (median shown)")
    parser.add_argument("--tiny", action="store_true", help="a tiny network and data: checks the script runs")
    args = parser.parse_args(argv)
    kc = get_backend("cuda")
    if args.tiny:
        configs, epochs = TINY, 1
        rng = np.random.default_rng(0)
        images, labels = rng.integers(0, 256, (TINY_ROWS, 12), np.uint8), rng.integers(0, 10, TINY_ROWS)
    else:
        from fastnn.data import load_dataset

        configs, epochs = CONFIGS, args.epochs
        data = load_dataset("mnist")
        images, labels = data.train_images, data.train_labels.astype(np.int64)
    print(f"{len(images)} training rows, median of {epochs} epochs after one warm-up, float32")
    table = ["| config | implementation | launches per step | s per epoch (median) | vs torch CUDA graph |",
             "|---|---|---|---:|---:|"]
    for name, (sizes, B, hyper) in configs.items():
        rows = fastnn_rows(kc, sizes, B, hyper, images, labels, epochs)
        try:
            rows.update(torch_rows(sizes, B, hyper, images, labels, epochs))
        except ImportError:
            print(f"{name}: torch is not installed: no torch rows")
        except (AssertionError, RuntimeError) as e:  # torch without CUDA, or no GPU (the simulator)
            print(f"{name}: torch cannot run on a GPU here ({str(e).splitlines()[0]}): no torch rows")
        medians = {impl: statistics.median(seconds) for impl, (_, seconds) in rows.items()}
        graph = medians.get("torch CUDA graph")
        for impl, (launches, _) in rows.items():
            ratio = f"{medians[impl] / graph:.2f}x" if graph else "-"
            table.append(f"| {name} | {impl} | {launches} | {medians[impl]:.4f} | {ratio} |")
    print("\n".join(table))
    return table


if __name__ == "__main__":
    main()
