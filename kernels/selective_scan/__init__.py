"""The selective scan of Mamba/VMamba as the custom op ``torch.ops.dispatchcount.selective_scan``.

Modules: ``validation`` (input checks, chunk layout), ``pytorch_kernel`` (CPU kernel),
``triton_kernels`` (CUDA kernels; imports triton, loaded lazily), ``op`` (custom ops, fake
kernels, autograd), ``api`` (public functions), ``flops`` (FLOP formulas, registered on import).
"""

from . import flops, op  # noqa: F401  (op defines the ops; flops registers their formulas)
from .api import selective_scan, selective_scan_triton
from .validation import MAX_DSTATE

__all__ = ["selective_scan", "selective_scan_triton", "MAX_DSTATE"]
