"""Render a pytest-benchmark run as a markdown table and a chart: numpy against numba, op by op.

    uv run pytest --benchmark-only --benchmark-autosave -q   # saves .benchmarks/<machine>/NNNN_*.json
    uv run python -m bench.report                            # the newest run under .benchmarks/
    uv run python -m bench.report run.json --png report.png  # a run saved with --benchmark-json run.json

One row per benchmark group (an op at one shape): each backend's median time, the speed-up
numpy/numba of the medians and of the fastest rounds, GFLOP/s from the dense FLOPs in extra_info
(median), and numba's share of this machine's float32 GEMM ceiling measured in the same run
(test_gemm_ceiling, its fastest round). Kernels that skip MNIST's zeros can pass 100%: the FLOPs are
dense counts. The chart goes beside the run file (same name, .png) unless --png says where.
"""
import argparse
import json
from pathlib import Path

from matplotlib.figure import Figure

from fastnn.backends import CPU_BACKENDS
from fastnn.cli import friendly_errors
from fastnn.fileio import FastnnError, atomic_write

RUNS = Path(".benchmarks")  # where --benchmark-autosave writes
ORDER = ("gather_batch", "linear_relu_forward", "linear_forward", "softmax_cross_entropy",
         "linear_backward_input", "linear_backward", "dropout_forward", "update (sgd)", "update (adam)", "train_steps",
         "epoch")  # a step's order
COLORS = {"numpy": "tab:blue", "numba": "tab:orange"}
NOISY = 2.0  # a median over twice the fastest round: most rounds waited on other load (flagged "~")
DPI = 110


def newest_run(folder=RUNS):
    """The most recently written run file under `folder`."""
    runs = sorted(Path(folder).rglob("*.json"), key=lambda path: path.stat().st_mtime)
    if not runs:
        raise FastnnError(f"no benchmark runs under {folder}/: run "
                          f"`uv run pytest --benchmark-only --benchmark-autosave` first")
    return runs[-1]


def read_run(path):
    """(rows, ceiling, run): one row per group, the GEMM ceiling in GFLOP/s (or None), the raw JSON.

    A row holds op, shape, flops, B, H and per backend the median and min time in seconds.
    """
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise FastnnError(f"cannot read {path}: {e.strerror}") from None
    try:
        run = json.loads(text)
        benchmarks = run["benchmarks"]
    except (ValueError, KeyError, TypeError) as e:
        raise FastnnError(f"{path}: not a pytest-benchmark JSON run ({e!r})") from None
    rows, gemm = {}, []
    for bench in benchmarks:
        info, stats = bench["extra_info"], bench["stats"]
        if info.get("op") == "gemm":  # a ceiling is the best the machine did: the fastest round
            gemm.append(info["flops"] / stats["min"] / 1e9)
            continue
        row = rows.setdefault(bench["group"], {"op": info["op"], "shape": info["shape"], "flops": info["flops"],
                                               "B": info.get("B", 0), "H": info.get("H", 0),
                                               "median": {}, "min": {}})
        row["median"][info["backend"]] = stats["median"]
        row["min"][info["backend"]] = stats["min"]
    return sorted(rows.values(), key=order), max(gemm, default=None), run


def order(row):
    """Ops in the order a training step runs them, then by batch size and hidden size."""
    return ORDER.index(row["op"]) if row["op"] in ORDER else len(ORDER), row["op"], row["B"], row["H"]


def speedup(row, stat="median"):
    """numpy time / numba time, or None when either backend is missing."""
    numpy, numba = row[stat].get("numpy"), row[stat].get("numba")
    return numpy / numba if numpy and numba else None


def gflops(row, backend):
    median = row["median"].get(backend)
    return row["flops"] / median / 1e9 if median else None


def noisy(row, backend):
    median = row["median"].get(backend)
    return bool(median) and median > NOISY * row["min"][backend]


def format_time(seconds):
    if seconds is None:
        return "—"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    return f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


def format_number(value, spec):
    return "—" if value is None else format(value, spec)


def markdown(rows, ceiling, run, path):
    """The run as a markdown table, headed by where and when it was measured and the GEMM ceiling."""
    machine = run.get("machine_info", {})
    cpu = machine.get("cpu", {})
    lines = [f"Run `{path}` ({run.get('datetime', '?')[:19]}), {cpu.get('brand_raw', '?')}, "
             f"{cpu.get('count', '?')} cores, Python {machine.get('python_version', '?')}.",
             f"GEMM ceiling (float32 2048^3 through NumPy/OpenBLAS, fastest round): {ceiling:.0f} GFLOP/s."
             if ceiling else "GEMM ceiling: not measured in this run (test_gemm_ceiling).",
             "",
             "| op | shape | numpy | numba | speed-up | speed-up (min) | numpy GFLOP/s | numba GFLOP/s "
             "| numba % of ceiling |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        times = [("~" if noisy(row, b) else "") + format_time(row["median"].get(b)) for b in CPU_BACKENDS]
        numba_rate = gflops(row, "numba")
        share = 100 * numba_rate / ceiling if numba_rate and ceiling else None
        lines.append(f"| {row['op']} | {row['shape']} | {times[0]} | {times[1]} | "
                     f"{format_number(speedup(row), '.2f')} | {format_number(speedup(row, 'min'), '.2f')} | "
                     f"{format_number(gflops(row, 'numpy'), '.1f')} | {format_number(numba_rate, '.1f')} | "
                     f"{format_number(share, '.0f')} |")
    lines += ["", f"Times are medians; ~ marks a median over {NOISY:g}x that benchmark's fastest round (most "
                  f"rounds waited on other processes). speed-up (min) compares the fastest rounds. GFLOP/s count "
                  f"dense FLOPs, so kernels that skip MNIST's zero pixels can pass 100% of the ceiling."]
    return "\n".join(lines)


def plot(rows, ceiling, title):
    """Two panels sharing one row per group: speed-up numpy/numba, and GFLOP/s against the ceiling."""
    labels = [f"{row['op']}  {row['shape']}" for row in rows]
    y = list(range(len(rows)))
    fig = Figure(figsize=(14, 1.8 + 0.3 * len(rows)), layout="constrained")
    ax_speed, ax_rate = fig.subplots(1, 2, sharey=True)
    fig.suptitle(title)

    measured = [(i, speedup(row), speedup(row, "min")) for i, row in zip(y, rows) if speedup(row)]
    if measured:
        ax_speed.barh([i for i, _, _ in measured], [s for _, s, _ in measured], height=0.7,
                      color=["tab:green" if s >= 1 else "tab:red" for _, s, _ in measured],
                      label="medians (green: numba faster)")
        ax_speed.scatter([m for _, _, m in measured], [i for i, _, _ in measured], marker="|", s=120,
                         color="black", zorder=3, label="fastest rounds")
        for i, s, m in measured:
            text = f"{s:.2f}x" if 1 / NOISY < s / m < NOISY else f"{s:.2f}x (fastest {m:.2f}x)"
            ax_speed.annotate(text, (max(s, m), i), xytext=(4, 0), textcoords="offset points",
                              va="center", fontsize=8)
        ax_speed.set_xscale("log")
        ax_speed.set_xlim(right=30 * max(max(s, m) for _, s, m in measured))  # room for the labels
        ax_speed.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8)
    else:
        ax_speed.text(0.5, 0.5, "no numba results in this run", transform=ax_speed.transAxes,
                      ha="center", va="center", color="grey")
        ax_speed.set_xticks([])
    ax_speed.axvline(1, color="black", linewidth=0.8)
    ax_speed.set_xlabel("speed-up: numpy time / numba time (log; > 1: numba faster)")
    ax_speed.set_yticks(y, labels, fontsize=8)
    ax_speed.invert_yaxis()  # the step's first op on top, epochs at the bottom

    height = 0.4
    for offset, backend in ((-height / 2, "numpy"), (height / 2, "numba")):
        rates = [(i + offset, gflops(row, backend)) for i, row in zip(y, rows) if gflops(row, backend)]
        if rates:
            ax_rate.barh([i for i, _ in rates], [r for _, r in rates], height=height,
                         color=COLORS[backend], label=backend)
    if ceiling:
        ax_rate.axvline(ceiling, color="black", linestyle="--", linewidth=1,
                        label=f"float32 GEMM ceiling: {ceiling:.0f} GFLOP/s")
    ax_rate.set_xscale("log")
    ax_rate.set_xlabel("GFLOP/s: dense FLOPs / median time (log)")
    ax_rate.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=8)
    for ax in (ax_speed, ax_rate):
        ax.grid(axis="x", which="both", alpha=0.3)
        for i in range(1, len(rows)):  # a thin rule between ops
            if rows[i]["op"] != rows[i - 1]["op"]:
                ax.axhline(i - 0.5, color="grey", linewidth=0.5)
    return fig


@friendly_errors
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", type=Path,
                        help=f"a pytest-benchmark JSON file (default: the newest under {RUNS}/)")
    parser.add_argument("--png", type=Path, help="where to write the chart (default: beside the run, .png)")
    args = parser.parse_args(argv)
    path = args.run or newest_run()
    rows, ceiling, run = read_run(path)
    if not rows:
        raise FastnnError(f"{path}: no benchmarks of fastnn ops in this run")
    print(markdown(rows, ceiling, run, path))
    png = args.png or path.with_suffix(".png")
    fig = plot(rows, ceiling, f"fastnn: numpy vs numba, {run.get('datetime', '')[:16]} ({path.name})")
    with atomic_write(png) as f:
        fig.savefig(f, format="png", dpi=DPI)
    print(f"\nchart: {png}")
    return rows


if __name__ == "__main__":
    main()
