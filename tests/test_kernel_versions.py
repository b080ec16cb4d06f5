"""The numbered kernel versions in kernels/dev/ against the reference, and the backend's use of the winner.

    uv run pytest tests/test_kernel_versions.py -q -m versions

The versions compile afresh on every run (~17 s; kernels/dev/linear_forward.py says why they are not
cached), so the default run leaves them out: it tests the winner, kernels.cpu's, in test_backend_ops.py.
"""
import numpy as np
import pytest

from kernels import cpu
from kernels.dev import dense, linear_backward, linear_forward
from tests.helpers import DTYPES, compare_op, nans, values


@pytest.mark.versions
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("number", sorted(linear_forward.KERNELS))
def test_linear_forward_versions(number, dtype):
    rng = np.random.default_rng(8)
    B, C, OC = 13, 784, 40
    compare_op(cpu, "linear_relu_forward", nans((B, OC), dtype), values(rng, (B, C), dtype, "sparse"),
               values(rng, (C, OC), dtype), values(rng, OC, dtype), kernel=linear_forward.KERNELS[number])


@pytest.mark.versions
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("number", sorted(linear_backward.KERNELS))
def test_linear_backward_versions(number, dtype):
    rng = np.random.default_rng(9)
    B, C, OC = 13, 784, 40
    compare_op(cpu, "linear_backward", nans((C, OC), dtype), nans(OC, dtype), values(rng, (B, OC), dtype),
               values(rng, (B, C), dtype, "sparse"), kernel=linear_backward.KERNELS[number])


@pytest.mark.versions
@pytest.mark.parametrize("number", sorted(dense.VERSIONS))
def test_dense_kernel_versions(number):
    """Each version of the dense training kernels (kernels/dev/dense.py) at odd sizes: every tile and
    panel has an edge."""
    layer = dense.make_layer(13, 37, 70, seed=number)
    dense.check(dense.VERSIONS[number](layer), layer)


def test_versions_tables_end_with_the_backend_kernel():
    assert linear_forward.KERNELS[max(linear_forward.KERNELS)] is cpu.linear_relu_forward
    assert linear_backward.KERNELS[max(linear_backward.KERNELS)] is cpu.linear_backward
