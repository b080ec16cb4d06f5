"""Compile every kernel of the CUDA backend for a GPU, on a machine without one.

    python -m kernels.cuda_ptx [--cc 9.0] [--out DIR]

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


def compile_all(cc=(9, 0), out=None):
    """Run every op of kernels.cuda at the seed config (784-128-10, batch 64), float32 and float64,
    compiling each kernel it launches to PTX; returns {(kernel name, argument types): PTX file name}."""
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=cc)
    cuda.device_array = lambda shape, dtype=np.float64, **kw: np.zeros(shape, dtype)
    import kernels.cuda as kc
    import kernels.cuda_persistent as kp

    kp._cooperative_blocks = lambda kernel, args: 1  # the real answer asks a GPU
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
    B, C, H, K, N = 64, 784, 128, 10, 100
    for dtype in (np.float32, np.float64):
        def f(*shape, dtype=dtype):
            return rng.standard_normal(shape).astype(dtype)

        weights, biases = [f(C, H), f(H, K)], [f(H), f(K)]
        acts, dacts, dlogits = [f(B, C), f(B, H), f(B, K)], [f(B, C), f(B, H)], f(B, K)
        targets, labels = np.zeros(B, np.int64), np.zeros(N, np.int64)
        images = rng.integers(0, 256, (N, C), np.uint8)
        state = dict(weights=weights, biases=biases, dweights=[w.copy() for w in weights],
                     dbiases=[b.copy() for b in biases], velocities_w=[w.copy() for w in weights],
                     velocities_b=[b.copy() for b in biases], acts=acts, dacts=dacts, dlogits=dlogits,
                     targets=targets, images=images, labels=labels, scale=1 / 255, momentum=0.9, weight_decay=1e-3)
        for train_step in kc.TRAIN_STEPS.values():
            train_step(**state, indices=np.arange(B), lr=0.1)
        kc.train_steps(**state, indices=np.arange(2 * B), lrs=np.ones(2, dtype))
        kc.gather_batch(acts[0], targets, images.astype(dtype), labels, np.arange(B), 1.0)  # float data
        kc.relu_forward(acts[1], acts[1])
        kc.relu_backward(dacts[1], dacts[1], acts[1])
        kc.softmax(dlogits, acts[2])
        kc.argmax(targets, acts[2])
        kc.softmax_cross_entropy(dlogits, acts[2], targets)
        kc.linear_backward(weights[0], biases[0], acts[1], acts[0])
        kc.linear_backward_input(acts[0], acts[1], weights[0], acts[0])
        kc.sgd_update(biases[0], biases[0], biases[0], 0.1, 0.9, 0.0)
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
