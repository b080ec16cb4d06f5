"""Compile every kernel of the CUDA backend for a GPU, on a machine without one.

    python -m kernels.dev.cuda_ptx [--cc 9.0] [--out DIR]

The CUDA simulator runs kernels as Python, so it checks neither numba-cuda's typing nor its code
generation (a shared array shaped (TILE, TILE + 1) runs there and fails to compile for a GPU); this
compiles them to PTX for real and prints a line `compiled NAME: KERNEL(ARGUMENT TYPES)` for each
kernel and argument types it meets. tests/test_cuda_ptx.py runs it. It needs NVIDIA's NVVM and
NVRTC libraries, which the dev environment installs as wheels (nvidia-cuda-nvcc-cu12 holds NVVM
and ptxas; the cuda extra brings them too); `ptxas -arch=sm_90 -c -v DIR/x.ptx` then reports each
kernel's registers and spills.

How: the backend's ops run on HostlessArrays (device arrays with no memory) with every kernel launch
replaced by a compilation for its argument types, typed as the launch would type them. numba-cuda
asks the current device for its compute capability when compiling device functions, so a stand-in
device answers.
"""
import argparse
import itertools
import os
import types
from pathlib import Path

os.environ["NUMBA_ENABLE_CUDASIM"] = "0"  # before numba is imported: compile for real, not simulate

import numpy as np  # noqa: E402
from numba import cuda  # noqa: E402
from numba.cuda import dispatcher  # noqa: E402
from numba.cuda.api_util import prepare_shape_strides_dtype  # noqa: E402
from numba.cuda.cudadrv import devicearray, dummyarray  # noqa: E402
from numba.cuda.typing.typeof import Purpose, typeof  # noqa: E402

from fastnn import bundles, settings  # noqa: E402


class _NoMemory:
    """Where a HostlessArray's data would be: views of nothing are nothing."""

    def view(self, *extent):
        return self


class HostlessArray(devicearray.DeviceNDArray):
    """A numba-cuda device array without device memory, for typing only.

    Its shape, strides and contiguity flags are kept by numba-cuda's own bookkeeping (a dummy array),
    through slices (a[:rows]) and reshapes, and its numba type comes from DeviceNDArray._numba_type_:
    exactly the type the same array gets on a GPU. NumPy arrays are typed by other rules, which have
    differed: a zero-size device array with a zero stride (device_array((0, 0))) was layout 'A' in
    numba-cuda releases where NumPy's was 'C'.
    """

    def __init__(self, shape, strides, dtype, stream=0, gpu_data=None):
        # DeviceNDArray.__init__ less the allocation, which asks a GPU for a context even for 0 bytes
        self.dtype = np.dtype(dtype)
        self._dummy = dummyarray.Array.from_desc(0, tuple(shape), tuple(strides), self.dtype.itemsize)
        self.shape, self.strides, self.size = self._dummy.shape, self._dummy.strides, self._dummy.size
        self.ndim = len(self.shape)
        self.gpu_data, self.stream = _NoMemory(), stream

    __getitem__ = devicearray.DeviceNDArray._do_getitem  # DeviceNDArray's, less its require_context


def device_array(shape, dtype=np.float64, strides=None, order="C", stream=0):
    """cuda.device_array without a GPU: the same shape and strides."""
    return HostlessArray(*prepare_shape_strides_dtype(shape, strides, dtype, order))


def to_device(array, stream=0):
    """cuda.to_device without a GPU: a device array takes the host array's strides."""
    return HostlessArray(array.shape, array.strides, array.dtype)


def argument_types(*args):
    """The numba types a kernel launch gives these arguments (CUDADispatcher.typeof_pyval)."""
    return tuple(typeof(a, Purpose.argument) for a in args)


def compile_all(cc=(9, 0), out=None):
    """Run every op of kernels.cuda at the seed config (784-128-10, batch 64, and a partial last batch of
    37 rows), float32 and float64, and both train steps with SGD, Adam with dropout (hidden and input)
    and AdamW with max-norm, compiling each kernel it launches to PTX; returns
    {(kernel name, argument types): PTX file name}."""
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=cc)
    cuda.device_array, cuda.to_device = device_array, to_device
    import kernels.cuda as kc
    from kernels.cuda import persistent

    persistent._cooperative_blocks = lambda kernel, args: 1  # the real answer asks a GPU
    compiled = {}  # (kernel name, argument types) -> file name

    def launch_config(kernel, config):
        def compile_for(*args):
            key = (kernel.py_func.__name__, argument_types(*args))
            if key not in compiled:
                ptx, _ = cuda.compile_ptx(kernel.py_func, key[1], cc=cc)
                compiled[key] = f"{key[0]}_{len(compiled)}"
                if out is not None:
                    (Path(out) / f"{compiled[key]}.ptx").write_text(ptx)
                print(f"compiled {compiled[key]}: {key[0]}({', '.join(map(str, key[1]))}), launched {config}",
                      flush=True)
        return compile_for

    dispatcher.CUDADispatcher.__getitem__ = launch_config
    B, N, S, sizes = 64, 100, 2, (784, 128, 10)
    labels = np.zeros(N, np.int64)
    hypers = (bundles.Hyper(momentum=0.9, weight_decay=1e-3),  # every optimizer and regulariser a step can run
              bundles.Hyper(weight_decay=1e-4, optimizer=settings.ADAM, dropout=0.3, dropout_seed=7,
                            input_dropout=0.2),
              bundles.Hyper(weight_decay=1e-2, optimizer=settings.ADAMW, max_norm=3.0))
    for dtype in (np.float32, np.float64):
        training = bundles.training_state(kc, bundles.he_init(sizes, dtype, seed=0), B)
        params, grads, optimizer, buffers = training
        data = kc.prepare_data(np.zeros((N, sizes[0]), np.uint8), labels, 1 / 255)
        for rows, hyper in itertools.product((B, 37), hypers):  # a full batch, then a partial last one (views)
            state = training._replace(buffers=bundles.first_rows(buffers, rows))
            steps = bundles.Steps(kc.to_device(np.zeros((S, rows), np.int64)), kc.to_device(np.ones(S)),
                               kc.to_device(np.arange(1, S + 1)))
            kc.train_step(*state, data, steps.indices[0], 0.1, 1, hyper)  # version 1, launch by launch
            persistent.train_steps(*state, data, steps, hyper)
        acts, douts, targets, _ = buffers
        float_data = kc.prepare_data(np.zeros((N, sizes[0]), dtype), labels, 1.0)
        kc.gather_batch(acts[0], targets, float_data, np.arange(B))
        kc.relu_forward(acts[1], acts[1])
        kc.relu_backward(douts[0], douts[0], acts[1])
        kc.softmax(douts[1], acts[2])
        kc.argmax(targets, acts[2])
        kc.softmax_cross_entropy(douts[1], acts[2], targets)
        kc.linear_backward(grads.weights[0], grads.biases[0], douts[0], acts[0])
        kc.linear_backward_input(douts[0], douts[1], params.weights[1], acts[1])
        kc.update(params.biases[0], grads.biases[0], optimizer.moment1.biases[0], optimizer.moment2.biases[0], 0.1, 1,
                  bundles.Hyper(momentum=0.9))
        kc.update(params.weights[0], grads.weights[0], optimizer.moment1.weights[0], optimizer.moment2.weights[0],
                  1e-3, 10, bundles.Hyper(optimizer=settings.ADAMW, weight_decay=1e-2))
        kc.max_norm(params.weights[1], 3.0)
        kc.dropout_forward(acts[1], acts[1], 7, 2**40, 0, 0.5)
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
