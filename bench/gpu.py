"""The CUDA backend against PyTorch on the same GPU: seconds per training epoch of MNIST.

    uv run python -m bench.gpu                 # on a machine with an NVIDIA GPU (and torch for its rows)
    uv run python -m bench.gpu --epochs 9      # median of 9 timed epochs instead of 5
    uv run python -m bench.gpu --regime sgd --regime adam   # only these kinds of step (default: all)
    NUMBA_ENABLE_CUDASIM=1 uv run python -m bench.gpu --tiny   # no GPU needed: a few steps of a tiny
                                               # network in the CUDA simulator, to check the script runs

Rows per config (bench/bench_train.py's CONFIGS) and kind of step (its REGIMES: the presets' SGD,
Adam, dropout, max-norm): fastnn's cuda train steps version 1 (2L + 3 launches per step, one more
with max-norm) and 2 (1 persistent launch per call of STEPS_PER_CALL steps), each through
fastnn.loop.Trainer.run_epoch, the loop MLP.fit runs, and torch with the same layers, initial
weights, optimizer, dropout and max-norm: eager, and with the train step captured in a CUDA graph
(the graph replays full batches only, so it skips the partial last batch: 32 of 60000 images).
Adam runs at ADAM_LR: the presets' SGD rates would make it diverge, and the trainer stops a
diverged run. Every implementation runs one untimed warm-up epoch (compilation, cuBLAS
heuristics), then --epochs epochs, each timed from a synchronised start to a synchronize(); the
table shows the median. Run `uv run pytest tests/test_cuda_backend.py tests/test_train_steps.py`
on the same GPU first: this script times, it does not check.
torch is not a dependency of fastnn: without it the torch rows are skipped with a message.
"""
import argparse
import itertools
import statistics
import time
import types

import numpy as np

from bench.bench_train import CONFIGS, REGIMES
from bench.workload import SCALE, mnist_data, preset_settings
from fastnn.backends import get_backend
from fastnn.bundles import he_init
from fastnn.cli import friendly_errors
from fastnn.loop import Trainer, epoch_plan
from fastnn.settings import ADAMW, SGD

TINY = {"12-8-10 B=8": ((12, 8, 10), preset_settings("default", batch_size=8))}  # --tiny: 2 full steps, 1 partial
TINY_ROWS = 20
ADAM_LR = 1e-3  # Adam's usual rate (Kingma & Ba's default)


def regime_settings(settings, regime):
    """settings with the Hyper changes of REGIMES[regime], and ADAM_LR for an Adam step."""
    hyper = settings.hyper._replace(**REGIMES[regime])
    return settings._replace(hyper=hyper, lr=settings.lr if hyper.optimizer == SGD else ADAM_LR)


def fastnn_rows(kc, sizes, settings, images, labels, epochs):
    """{implementation: (launches per step, [seconds per epoch])} for the cuda backend's versions."""
    L, rng = len(sizes) - 1, np.random.default_rng(0)
    data = kc.prepare_data(*mnist_data(images, labels))
    rows = {}
    for version, launches in ((1, f"{2 * L + 3 + bool(settings.hyper.max_norm)}"), (2, "1 per call")):
        # the backend with this version's train_steps in place of its default
        ops = types.SimpleNamespace(**{name: getattr(kc, name) for name in kc.__all__})
        ops.train_steps = kc.TRAIN_STEPS[version]
        trainer = Trainer(ops, he_init(sizes, np.float32, seed=42), settings.batch_size, settings.hyper)

        def epoch():
            trainer.run_epoch(data, *epoch_plan(settings, rng, np.arange(len(images)), 0))

        rows[f"fastnn cuda v{version}"] = (launches, timed(epoch, kc.synchronize, epochs))
    return rows


def torch_rows(sizes, settings, images, labels, epochs):
    """The same training in torch: {"torch eager" / "torch CUDA graph": (launches, [seconds per epoch])}."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 math, as fastnn's kernels
    B, lr, hyper = settings.batch_size, settings.lr, settings.hyper
    weights = he_init(sizes, np.float32, seed=42).weights  # the He init fastnn's rows start from
    layers, linears = [], []
    for l, w in enumerate(weights):
        linear = torch.nn.Linear(*w.shape)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(w.T.copy()))  # torch stores (OC, C)
            linear.bias.zero_()
        linears.append(linear)
        layers.append(linear)
        if l < len(weights) - 1:  # a hidden layer: ReLU, then dropout as fastnn's; the logits have neither
            layers += [torch.nn.ReLU()] + ([torch.nn.Dropout(hyper.dropout)] if hyper.dropout else [])
    model = torch.nn.Sequential(*layers).cuda()
    opt = torch_optimizer(torch, model.parameters(), lr, hyper)
    dev_images, dev_labels = torch.from_numpy(images).cuda(), torch.from_numpy(labels).cuda()
    N, rng = len(images), np.random.default_rng(0)

    def step(idx):
        loss = torch.nn.functional.cross_entropy(model(dev_images[idx].float() * SCALE), dev_labels[idx])
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()
        if hyper.max_norm:
            with torch.no_grad():
                for linear in linears:  # a row of torch's (OC, C) weight is a unit's incoming weights
                    linear.weight.renorm_(2, 0, hyper.max_norm)

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


def torch_optimizer(torch, parameters, lr, hyper):
    """torch's optimizer for Hyper hyper; Adam's `capturable` keeps its step count on the GPU, as a CUDA
    graph needs (the eager rows use the same optimizer)."""
    if hyper.optimizer == SGD:
        return torch.optim.SGD(parameters, lr=lr, momentum=hyper.momentum, weight_decay=hyper.weight_decay)
    adam = torch.optim.AdamW if hyper.optimizer == ADAMW else torch.optim.Adam
    return adam(parameters, lr=lr, betas=(hyper.beta1, hyper.beta2), eps=hyper.eps, weight_decay=hyper.weight_decay,
                capturable=True)


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
    parser.add_argument("--regime", action="append", choices=list(REGIMES),
                        help="a kind of step to time (repeatable; default: every one)")
    args = parser.parse_args(argv)
    regimes = args.regime or list(REGIMES)
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
    table = ["| config | step | implementation | launches per step | s per epoch (median) | vs torch CUDA graph |",
             "|---|---|---|---|---:|---:|"]
    for (name, (sizes, config_settings)), regime in itertools.product(configs.items(), regimes):
        settings = regime_settings(config_settings, regime)
        rows = fastnn_rows(kc, sizes, settings, images, labels, epochs)
        try:
            rows.update(torch_rows(sizes, settings, images, labels, epochs))
        except ImportError:
            print(f"{name}, {regime}: torch is not installed: no torch rows")
        except (AssertionError, RuntimeError) as e:  # torch without CUDA, or no GPU (the simulator)
            print(f"{name}, {regime}: torch cannot run on a GPU here ({str(e).splitlines()[0]}): no torch rows")
        medians = {impl: statistics.median(seconds) for impl, (_, seconds) in rows.items()}
        graph = medians.get("torch CUDA graph")
        for impl, (launches, _) in rows.items():
            ratio = f"{medians[impl] / graph:.2f}x" if graph else "-"
            table.append(f"| {name} | {regime} | {impl} | {launches} | {medians[impl]:.4f} | {ratio} |")
    print("\n".join(table))
    return table


if __name__ == "__main__":
    main()
