"""Tunables of the Numba kernels, in one place (measured on the 2-core dev machine; see kernels/cpu.py)."""

# Every fast-math flag except nnan/ninf: NaN and inf keep their meaning (a diverged loss stays NaN).
# reassoc + contract are what let float reductions vectorise and fuse into FMAs (5x without them).
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

# Arrays with fewer elements are updated serially: waking the thread pool costs more than the work.
SGD_PARALLEL_MIN = 16384
