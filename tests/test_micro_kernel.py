"""kernels.cpu's micro-kernel on its own (the LLVM IR of _tile_intrinsic) and its packing, against
NumPy in float64: every tile edge (rows 1..TILE_ROWS, columns 0..a tile's width), empty and odd sums,
overwrite and accumulate, a tile inside a larger array whose other entries must stay as they were,
both dtypes. The products built from them are checked op by op in test_backend_ops.py and whole in
test_train_steps.py.
"""
import numpy as np
import pytest
from numba import njit

from kernels import cpu
from tests.helpers import DTYPES


@njit
def tile(out, i0, j0, a, a_start, a_row, b, b_start, depth, n_rows, n_cols, accumulate):
    cpu._tile(out, i0, j0, a, a_start, a_row, b, b_start, depth, n_rows, n_cols, accumulate)


def tile_width(dtype):
    return cpu.TILE_VECTORS * cpu.VECTOR_BYTES // np.dtype(dtype).itemsize


def check_tile(dtype, n_rows, n_cols, depth, accumulate, seed):
    """One tile at (3, 5) of an output filled with a guard value: A is rows 2.. of a, from column 4 on;
    B a packed panel starting 7 floats into its array."""
    rng = np.random.default_rng(seed)
    width, i0, j0 = tile_width(dtype), 3, 5
    a = rng.standard_normal((2 + cpu.TILE_ROWS + 1, 4 + max(depth, 0) + 3)).astype(dtype)
    b = rng.standard_normal(7 + max(depth, 0) * width + 5).astype(dtype)
    out = np.full((i0 + cpu.TILE_ROWS + 4, j0 + width + 4), 7.5, dtype)
    before = out.copy()
    tile(out, i0, j0, a, 2 * a.shape[1] + 4, a.shape[1], b, 7, depth, n_rows, n_cols, accumulate)
    A = a[2:2 + n_rows, 4:4 + max(depth, 0)].astype(np.float64)
    B = b[7:7 + max(depth, 0) * width].reshape(-1, width)[:, :n_cols]
    want = A @ B + (7.5 if accumulate else 0)
    window = (slice(i0, i0 + n_rows), slice(j0, j0 + n_cols))
    rtol = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(out[window], want, rtol=rtol, atol=rtol * max(depth, 1))
    outside = np.ones(out.shape, bool)
    outside[window] = False
    np.testing.assert_array_equal(out[outside], before[outside])  # not one entry past the edges written


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_edge_of_a_tile(dtype):
    for n_rows in range(1, cpu.TILE_ROWS + 1):
        for n_cols in range(0, tile_width(dtype) + 1):
            check_tile(dtype, n_rows, n_cols, 19, accumulate=n_cols % 2, seed=n_rows * 100 + n_cols)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("depth", [-2, 0, 1, 2, 257, 300])
@pytest.mark.parametrize("accumulate", [0, 1])
def test_sums_of_every_length(dtype, depth, accumulate):
    """No terms (depth <= 0) give zeros, or leave the tile as it was when accumulating."""
    check_tile(dtype, cpu.TILE_ROWS, tile_width(dtype), depth, accumulate, seed=depth + 2)
    check_tile(dtype, 1, 3, depth, accumulate, seed=depth + 3)


def test_nan_and_inf_propagate():
    """No fast-math flag that drops NaN or inf: they reach the sums as in NumPy."""
    width = tile_width(np.float32)
    a = np.ones((cpu.TILE_ROWS, 4), np.float32)
    a[0, 1], a[1, 2] = np.nan, np.inf
    out = np.zeros((cpu.TILE_ROWS, width), np.float32)
    tile(out, 0, 0, a, 0, 4, np.ones(4 * width, np.float32), 0, 4, cpu.TILE_ROWS, width, 0)
    assert np.isnan(out[0]).all() and np.isposinf(out[1]).all() and (out[2:] == 4).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transposed", [0, 1])
def test_pack_lays_out_tiles_with_zeros_past_the_edge(dtype, transposed):
    """Rows 2:7 and columns 3 to 5 past two whole tiles of B, which is b or b.T."""
    width = tile_width(dtype)
    B = np.random.default_rng(0).standard_normal((9, 2 * width + 10)).astype(dtype)
    b = np.ascontiguousarray(B.T) if transposed else B
    panel = np.full(5 * 3 * width + 4, np.nan, dtype)
    cpu._pack(panel, b, 2, 7, 3, 3 + 2 * width + 5, width, transposed)
    tiles = panel[:5 * 3 * width].reshape(3, 5, width)  # (tile, k, column)
    np.testing.assert_array_equal(tiles[0], B[2:7, 3:3 + width])
    np.testing.assert_array_equal(tiles[1], B[2:7, 3 + width:3 + 2 * width])
    np.testing.assert_array_equal(tiles[2, :, :5], B[2:7, 3 + 2 * width:3 + 2 * width + 5])
    assert (tiles[2, :, 5:] == 0).all()
    assert np.isnan(panel[5 * 3 * width:]).all()  # nothing written past the panel


def test_panels_are_whole_tiles():
    """A panel's edge tiles are the product's edge tiles only: panels are whole tiles in both dtypes."""
    assert cpu.PANEL_ROWS % cpu.TILE_ROWS == 0
    assert all(cpu.PANEL_COLS % tile_width(dtype) == 0 for dtype in DTYPES)
    assert cpu.PACK_SIZE >= cpu.DEPTH_BLOCK * cpu.PANEL_COLS


@njit
def listed_tile(out, i0, j0, a, a_start, b, b_start, depth, ks, ks_start, n_rows, n_cols, accumulate):
    cpu._listed_tile(out, i0, j0, a, a_start, b, b_start, depth, ks, ks_start, n_rows, n_cols, accumulate)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_rows, n_cols", [(cpu.TILE_ROWS, None), (1, 3), (5, 0), (7, 17)])
def test_a_listed_tile_adds_the_listed_terms_only(dtype, n_rows, n_cols):
    """The tile of _nonzero_terms' listings: A packed term by term, B's rows picked by the list."""
    rng = np.random.default_rng(n_rows)
    width = tile_width(dtype)
    n_cols = width if n_cols is None else n_cols
    ks = np.array([9, 0, 4, 5, 11, 3, 2], np.int32)  # listed terms (a tile's are ascending; any order adds)
    A = rng.standard_normal((cpu.TILE_ROWS, len(ks))).astype(dtype)  # (rows, terms)
    B = rng.standard_normal((12, width)).astype(dtype)  # a packed panel of 12 terms
    packed = np.concatenate([np.full(3, np.nan, dtype), A.T.ravel()])  # starts 3 floats in
    ks_all = np.concatenate([np.array([-1], np.int32), ks])  # the list starts 1 entry in
    out = np.full((cpu.TILE_ROWS + 2, width + 2), 7.5, dtype)
    before = out.copy()
    listed_tile(out, 1, 2, packed, 3, B.ravel(), 0, len(ks) - 1, ks_all, 1, n_rows, n_cols, 0)  # all but the last
    want = A[:n_rows, :-1].astype(np.float64) @ B[ks[:-1], :n_cols]
    rtol = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(out[1:1 + n_rows, 2:2 + n_cols], want, rtol=rtol, atol=rtol * len(ks))
    outside = np.ones(out.shape, bool)
    outside[1:1 + n_rows, 2:2 + n_cols] = False
    np.testing.assert_array_equal(out[outside], before[outside])


@pytest.mark.parametrize("dtype", DTYPES)
def test_nonzero_terms_lists_each_tiles_nonzero_columns_per_depth_block(dtype):
    rng = np.random.default_rng(3)
    M, K = cpu.TILE_ROWS + 5, 600  # two tiles, the second short; depth blocks of 200
    a = (rng.standard_normal((M, K)) * (rng.random((M, K)) < 0.03)).astype(dtype)
    a[:, 7] = 0  # a column zero in every row
    block = cpu._depth_block(K)
    terms = np.full((2, K), -9, np.int32)
    term_starts = np.full((2, K // block + 1), -9, np.int32)
    packed = np.full((2, K * cpu.TILE_ROWS), np.nan, dtype)
    cpu._nonzero_terms(terms, term_starts, packed, a)
    for tile in range(2):
        rows = a[tile * cpu.TILE_ROWS:(tile + 1) * cpu.TILE_ROWS]
        listed = np.flatnonzero((rows != 0).any(axis=0))  # (n,) ascending
        starts = term_starts[tile]
        assert starts[0] == 0 and starts[-1] == len(listed)
        for n in range(K // block):  # offsets into each block
            in_block = listed[(listed >= n * block) & (listed < (n + 1) * block)]
            np.testing.assert_array_equal(terms[tile, starts[n]:starts[n + 1]], in_block - n * block)
        values = packed[tile, :len(listed) * cpu.TILE_ROWS].reshape(len(listed), cpu.TILE_ROWS)  # (n, rows)
        padded = np.zeros((cpu.TILE_ROWS, K), dtype)
        padded[:len(rows)] = rows
        np.testing.assert_array_equal(values, padded[:, listed].T)  # zeros past the last row
