"""fastnn: a small, fast, honest MLP trainer. The same math as a NumPy reference (fastnn.ops), Numba
kernels (kernels.cpu) and numba-cuda kernels (kernels.cuda)."""
from fastnn.model import MLP

__all__ = ["MLP"]
