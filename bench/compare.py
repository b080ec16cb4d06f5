"""fastnn beside PyTorch and JAX: seconds per training epoch of the same MLP, side by side in one run.

    uv run python -m bench.compare                                  # fastnn numpy and numba only
    uv run python -m bench.compare --peers-python /tmp/peers/bin/python --rounds 2 --epochs 3

Every implementation trains the same network the same way: He-normal weights, zero biases, SGD with
the config's momentum and weight decay at a constant learning rate, one shuffle per epoch, the
partial last batch included (JAX's compiled epoch drops it: a scan needs equal steps), float32, on
all cores (NumPy with all its BLAS threads, PyTorch with torch.set_num_threads(cores), JAX and Numba
as they come). Each run is a separate process, so no two thread pools meet; rounds interleave the
implementations, so that load from elsewhere falls on all of them. The table gives the median of the
epochs after the first (warm-up, compilation) over all rounds, and its ratio to each peer.

PyTorch and JAX are not fastnn's dependencies: --peers-python names an interpreter that has them
(with NumPy; fastnn itself is not needed there). PyTorch's CPU build for Python 3.11 installs with
`python3 -m venv /tmp/peers && /tmp/peers/bin/pip install numpy torch jax`. Without it, or where an
import fails, that peer's rows are skipped with a message.
"""
import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT / "fastnn" / "datasets" / "mnist"  # the bundled files (fastnn.data verifies them; here only read)
CONFIGS = {  # name -> hidden sizes, batch size, lr, momentum, weight decay (the benchmarks' epoch shapes)
    "seed 784-128-10 B=64": ((128,), 64, 0.01, 0.0, 0.0),
    "wide 784-512-10 B=256": ((512,), 256, 0.1, 0.0, 0.0),
    "default 784-512-256-10 B=128": ((512, 256), 128, 0.1, 0.9, 5e-4),
    "large 784-1024-1024-10 B=256": ((1024, 1024), 256, 0.1, 0.9, 0.0),
}
IMPLS = ("fastnn-numba", "fastnn-numpy", "torch", "jax")
PEERS = ("torch", "jax")


def read_mnist():
    """(train images (60000, 784) uint8, labels int64, test images, labels): a minimal IDX reader, so that
    the peers' interpreter needs only NumPy."""
    import numpy as np

    def idx(name):
        raw = gzip.decompress((MNIST / f"{name}.gz").read_bytes())
        dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(raw[3])]
        return np.frombuffer(raw, np.uint8, offset=4 + 4 * len(dims)).reshape(dims)

    return (idx("train-images-idx3-ubyte").reshape(-1, 784), idx("train-labels-idx1-ubyte").astype(np.int64),
            idx("t10k-images-idx3-ubyte").reshape(-1, 784), idx("t10k-labels-idx1-ubyte").astype(np.int64))


def run_fastnn(backend, hidden, batch, lr, momentum, weight_decay, epochs):
    from fastnn import MLP

    X, y, X_test, y_test = read_mnist()
    model = MLP(hidden=hidden, backend=backend, lr=lr, momentum=momentum, weight_decay=weight_decay,
                batch_size=batch, epochs=epochs, seed=42).fit(X, y)
    return [h["seconds"] for h in model.history_], model.score(X_test, y_test)


def run_torch(hidden, batch, lr, momentum, weight_decay, epochs):
    import numpy as np
    import torch

    torch.set_num_threads(os.cpu_count())
    X, y, X_test, y_test = read_mnist()
    X, y, X_test = torch.from_numpy(X).float() / 255, torch.from_numpy(y), torch.from_numpy(X_test).float() / 255
    torch.manual_seed(42)
    sizes, layers = (784, *hidden, 10), []
    for c_in, c_out in zip(sizes[:-1], sizes[1:]):
        linear = torch.nn.Linear(c_in, c_out)
        torch.nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
        torch.nn.init.zeros_(linear.bias)
        layers += [linear, torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    loss_fn, rng, seconds = torch.nn.CrossEntropyLoss(), np.random.default_rng(0), []
    for _ in range(epochs):
        start = time.perf_counter()
        order = torch.from_numpy(rng.permutation(len(X)))
        for first in range(0, len(X), batch):
            rows = order[first:first + batch]
            loss = loss_fn(model(X[rows]), y[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
        seconds.append(time.perf_counter() - start)
    with torch.no_grad():
        return seconds, float((model(X_test).argmax(1).numpy() == y_test).mean())


def run_jax(hidden, batch, lr, momentum, weight_decay, epochs):
    import jax
    import jax.numpy as jnp
    import numpy as np

    X, y, X_test, y_test = read_mnist()
    X, y = jnp.asarray(X, jnp.float32) / 255, jnp.asarray(y)
    sizes, rng = (784, *hidden, 10), np.random.default_rng(42)
    params = [(jnp.asarray(rng.standard_normal((c, oc)) * np.sqrt(2 / c), jnp.float32), jnp.zeros(oc, jnp.float32))
              for c, oc in zip(sizes[:-1], sizes[1:])]

    def loss_fn(params, rows):
        h = X[rows]
        for w, b in params[:-1]:
            h = jax.nn.relu(h @ w + b)
        logits = h @ params[-1][0] + params[-1][1]
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(rows.shape[0]), y[rows]])

    def step(carry, rows):  # PyTorch's SGD: g += wd * p; v = m * v + g; p -= lr * v
        params, velocity = carry
        grads = jax.grad(loss_fn)(params, rows)
        grads = jax.tree_util.tree_map(lambda g, p: g + weight_decay * p, grads, params)
        velocity = jax.tree_util.tree_map(lambda v, g: momentum * v + g, velocity, grads)
        return (jax.tree_util.tree_map(lambda p, v: p - lr * v, params, velocity), velocity), None

    epoch = jax.jit(lambda carry, rows: jax.lax.scan(step, carry, rows)[0])  # a whole epoch, one dispatch
    carry, order_rng, seconds, steps = (params, jax.tree_util.tree_map(jnp.zeros_like, params)), \
        np.random.default_rng(0), [], len(X) // batch
    for _ in range(epochs):
        start = time.perf_counter()
        carry = epoch(carry, jnp.asarray(order_rng.permutation(len(X))[:steps * batch].reshape(steps, batch)))
        jax.block_until_ready(carry)
        seconds.append(time.perf_counter() - start)
    h = jnp.asarray(X_test, jnp.float32) / 255
    for w, b in carry[0][:-1]:
        h = jax.nn.relu(h @ w + b)
    return seconds, float(jnp.mean(jnp.argmax(h @ carry[0][-1][0] + carry[0][-1][1], 1) == jnp.asarray(y_test)))


def run_one(impl, config, epochs):
    """Train `impl` on `config` in this process; print a RESULT line with the seconds of each epoch."""
    args = (*CONFIGS[config], epochs)
    if impl.startswith("fastnn-"):
        seconds, accuracy = run_fastnn(impl.removeprefix("fastnn-"), *args)
    else:
        seconds, accuracy = {"torch": run_torch, "jax": run_jax}[impl](*args)
    print("RESULT " + json.dumps({"epoch_s": seconds, "test_accuracy": accuracy}), flush=True)


def spawn(impl, config, epochs, peers_python):
    """The epochs of one run of `impl` in a new process, or the reason it failed."""
    python = peers_python if impl in PEERS else sys.executable
    done = subprocess.run([python, "-m", "bench.compare", "--run", impl, "--config", config, "--epochs", str(epochs)],
                          cwd=ROOT, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):]), None
    return None, (done.stderr.strip().splitlines() or ["no output"])[-1]


def compare(configs, rounds, epochs, peers_python):
    """Interleaved rounds of every implementation on every config; returns {config: {impl: [seconds]}}."""
    seconds, skipped = {c: {} for c in configs}, set()
    for r in range(rounds):
        for config in configs:
            for impl in IMPLS:
                if impl in skipped:
                    continue
                result, error = spawn(impl, config, epochs, peers_python)
                if result is None:
                    print(f"{impl}: skipped ({error})", flush=True)
                    skipped.add(impl)
                    continue
                seconds[config].setdefault(impl, []).extend(result["epoch_s"][1:])  # the first epoch warms up
                print(f"round {r + 1} | {config} | {impl}: " + " ".join(f"{s:.3f}" for s in result["epoch_s"])
                      + f" s | test accuracy {result['test_accuracy']:.2%}", flush=True)
    return seconds


def table(seconds):
    """Markdown: per config, each implementation's median epoch and how many times faster fastnn numba is."""
    lines = ["| config | implementation | median epoch s | numba is x faster |", "|---|---|---:|---:|"]
    for config, runs in seconds.items():
        numba = statistics.median(runs["fastnn-numba"]) if "fastnn-numba" in runs else None
        for impl, times in sorted(runs.items(), key=lambda kv: statistics.median(kv[1])):
            median = statistics.median(times)
            ratio = f"{median / numba:.2f}" if numba else "-"
            lines.append(f"| {config} | {impl} | {median:.3f} | {ratio} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--peers-python", default=sys.executable,
                        help="an interpreter with torch and jax installed (default: this one)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of every implementation (default: 2)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run, the first one not counted (default: 3)")
    parser.add_argument("--config", choices=sorted(CONFIGS), action="append",
                        help="only this config (repeatable; default: all)")
    parser.add_argument("--run", choices=IMPLS, help=argparse.SUPPRESS)  # one run, in a child process
    args = parser.parse_args(argv)
    if args.run:
        return run_one(args.run, args.config[0], args.epochs)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is not counted")
    print(table(compare(args.config or list(CONFIGS), args.rounds, args.epochs, args.peers_python)))


if __name__ == "__main__":
    main()
