"""Custom ops with Triton kernels, installed as ``dispatchcount.kernels``.

Importing this package defines ``torch.ops.dispatchcount.selective_scan`` (and its backward op)
and registers their FLOP formulas. Triton is imported only when a Triton kernel runs.
"""

from .selective_scan import selective_scan, selective_scan_triton

__all__ = ["selective_scan", "selective_scan_triton"]
