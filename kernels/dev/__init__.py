"""Developer tools, imported by no backend: numbered versions of the Numba kernels with their
check-then-time harness (`python -m kernels.dev.linear_forward`), and the PTX compiler for the CUDA
kernels (`python -m kernels.dev.cuda_ptx`)."""
