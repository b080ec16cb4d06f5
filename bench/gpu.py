"""The CUDA backend against PyTorch on the same GPU: seconds per training epoch of MNIST.

    uv run python -m bench.gpu                 # on a machine with an NVIDIA GPU (and torch for its rows)
    uv run python -m bench.gpu --epochs 9      # median of 9 timed epochs instead of 5
    NUMBA_ENABLE_CUDASIM=1 uv run python -m bench.gpu --tiny   # no GPU needed: a few steps of a tiny
                                               # network in the CUDA simulator, to check the script runs

Rows per config (784-128-10 batch 64, the seed; 784-512-10 batch 256): fastnn's cuda train steps
version 1 (2L + 3 launches per step) and 2 (1 persistent launch per call of STEPS_PER_CALL steps),
each through fastnn.training.Trainer.run_epoch, the loop MLP.fit runs, and torch with the same
layers, initial weights and SGD: eager, and with the train step captured in a CUDA graph (the graph
replays full batches only, so it skips the partial last batch: 32 of 60000 images). Every
implementation runs one untimed warm-up epoch (compilation, cuBLAS heuristics), then --epochs
epochs, each timed from a synchronised start to a synchronize(); the table shows the median. Run
`uv run pytest tests/test_cuda_backend.py tests/test_train_steps.py` on the same GPU first: this
script times, it does not check.
torch is not a dependency of fastnn: without it the torch rows are skipped with a message.
"""
import argparse
import statistics
import time
import types

import numpy as np

from bench.bench_train import CONFIGS
from bench.workload import SCALE, epoch_plan, mnist_data, preset_settings
from fastnn.backends import get_backend
from fastnn.cli import friendly_errors
from fastnn.step import he_init
from fastnn.training import Trainer

TINY = {"12-8-10 B=8": ((12, 8, 10), preset_settings("default", batch_size=8))}  # --tiny: 2 full steps, 1 partial
TINY_ROWS = 20


def fastnn_rows(kc, sizes, settings, images, labels, epochs):
    """{implementation: (launches per step, [seconds per epoch])} for the cuda backend's versions."""
    L, rng = len(sizes) - 1, np.random.default_rng(0)
    data = kc.prepare_data(*mnist_data(images, labels))
    rows = {}
    for version, launches in ((1, f"{2 * L + 3}"), (2, "1 per call")):
        # the backend with this version's train_steps in place of its default
        ops = types.SimpleNamespace(**{name: getattr(kc, name) for name in kc.__all__})
        ops.train_steps = kc.TRAIN_STEPS[version]
        trainer = Trainer(ops, he_init(sizes, np.float32, seed=42), settings.batch_size, settings.hyper)

        def epoch():
            trainer.run_epoch(data, *epoch_plan(settings, rng, len(images)))

        rows[f"fastnn cuda v{version}"] = (launches, timed(epoch, kc.synchronize, epochs))
    return rows


def torch_rows(sizes, settings, images, labels, epochs):
    """The same training in torch: {"torch eager" / "torch CUDA graph": (launches, [seconds per epoch])}."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 math, as fastnn's kernels
    B, lr, (momentum, weight_decay) = settings.batch_size, settings.lr, settings.hyper
    weights = he_init(sizes, np.float32, seed=42).weights  # the He init fastnn's rows start from
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
    for name, (sizes, settings) in configs.items():
        rows = fastnn_rows(kc, sizes, settings, images, labels, epochs)
        try:
            rows.update(torch_rows(sizes, settings, images, labels, epochs))
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
