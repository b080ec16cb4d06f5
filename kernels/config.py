"""Tunables of the Numba kernels, in one place (measured on the 2-core dev machine; see kernels/cpu.py)."""

# Every fast-math flag except nnan/ninf: NaN and inf keep their meaning (a diverged loss stays NaN).
# reassoc + contract are what let float reductions vectorise and fuse into FMAs (5x without them).
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

# Elements per parallel task of sgd_update; a smaller array (a bias) is one task, updated serially,
# since waking the thread pool costs more than the work.
SGD_CHUNK = 16384

# Rows of dweight per parallel task in linear_backward: 32 rows of 128 floats stay in L1.
DWEIGHT_ROWS = 32

# train_step computes a last layer with at most this many outputs (the 10 classes) from transposed
# copies: row updates narrower than a vector register barely vectorise.
NARROW_MAX = 16
