"""Compile every kernel of the CUDA backend for a GPU, on a machine without one.

    python -m kernels.dev.cuda_ptx [--cc 9.0] [--out DIR]

The CUDA simulator runs kernels as Python, so it checks neither numba-cuda's typing nor its code
generation (a shared array shaped (TILE, TILE + 1) runs there and fails to compile for a GPU); this
compiles them to PTX for real. It needs NVIDIA's compiler libraries, which the project does not
depend on: `uv pip install --target DIR nvidia-cuda-nvcc nvidia-cuda-nvrtc` and
LD_LIBRARY_PATH=DIR/nvidia/cu13/lib (or a CUDA toolkit). `ptxas -arch=sm_90 -c -v DIR/x.ptx` then
reports each kernel's registers and spills.

How: the backend's ops run on NumPy arrays (numba gives them the types of device arrays) with every
kernel launch replaced by a compilation for its argument types. numba-cuda asks the current device
for its compute capability when compiling device functions, so a stand-in device answers.
"""
import argparse
import os
import types
from pathlib import Path

os.environ["NUMBA_ENABLE_CUDASIM"] = "0"  # before numba is imported: compile for real, not simulate

import numpy as np  # noqa: E402
from numba import cuda, typeof  # noqa: E402
from numba.core.typing.typeof import Purpose  # noqa: E402
from numba.cuda import dispatcher  # noqa: E402

from fastnn import step  # noqa: E402


def compile_all(cc=(9, 0), out=None):
    """Run every op of kernels.cuda at the seed config (784-128-10, batch 64), float32 and float64,
    compiling each kernel it launches to PTX; returns {(kernel name, argument types): PTX file name}."""
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=cc)
    cuda.device_array = lambda shape, dtype=np.float64, **kw: np.zeros(shape, dtype)
    cuda.to_device = np.array
    import kernels.cuda as kc
    from kernels.cuda import persistent

    persistent._cooperative_blocks = lambda kernel, args: 1  # the real answer asks a GPU
    compiled = {}  # (kernel name, argument types) -> file name

    def launch_config(kernel, config):
        def compile_for(*args):
            key = (kernel.py_func.__name__, tuple(typeof(a, Purpose.argument) for a in args))
            if key not in compiled:
                ptx, _ = cuda.compile_ptx(kernel.py_func, key[1], cc=cc)
                compiled[key] = f"{key[0]}_{len(compiled)}"
                if out is not None:
                    (Path(out) / f"{compiled[key]}.ptx").write_text(ptx)
                print(f"compiled {compiled[key]}, launched {config}", flush=True)
        return compile_for

    dispatcher.CUDADispatcher.__getitem__ = launch_config
    rng = np.random.default_rng(0)
    B, N, sizes = 64, 100, (784, 128, 10)
    for dtype in (np.float32, np.float64):
        training = step.training_state(kc, step.he_init(sizes, dtype, seed=0), B)
        params, grads, optimizer, buffers = training
        acts, douts, targets, _ = buffers
        data = kc.prepare_data(rng.integers(0, 256, (N, sizes[0]), np.uint8), np.zeros(N, np.int64), 1 / 255)
        hyper = step.Hyper(momentum=0.9, weight_decay=1e-3)
        kc.train_step(*training, data, np.arange(B), 0.1, hyper)  # version 1, launch by launch
        persistent.train_steps(*training, data, step.Steps(np.arange(2 * B).reshape(2, B), np.ones(2)), hyper)
        kc.gather_batch(acts[0], targets, data._replace(images=data.images.astype(dtype), scale=1.0), np.arange(B))
        kc.relu_forward(acts[1], acts[1])
        kc.relu_backward(douts[0], douts[0], acts[1])
        kc.softmax(douts[1], acts[2])
        kc.argmax(targets, acts[2])
        kc.softmax_cross_entropy(douts[1], acts[2], targets)
        kc.linear_backward(grads.weights[0], grads.biases[0], douts[0], acts[0])
        kc.linear_backward_input(douts[0], douts[1], params.weights[1], acts[1])
        kc.sgd_update(params.biases[0], grads.biases[0], optimizer.velocity.biases[0], 0.1, 0.9, 0.0)
    return compiled


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cc", default="9.0", help="compute capability to compile for (9.0: H100, H200)")
    parser.add_argument("--out", help="folder to write each kernel's PTX into")
    args = parser.parse_args(argv)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    compiled = compile_all(tuple(int(x) for x in args.cc.split(".")), args.out)
    print(f"{len(compiled)} kernels compiled for sm_{args.cc.replace('.', '')}")
    return compiled


if __name__ == "__main__":
    main()
