"""The selective scan of Mamba/VMamba as the custom op ``torch.ops.dispatchcount.selective_scan``.

Modules: ``validation`` (input checks, chunk layout), ``pytorch_kernel`` (CPU kernel),
``triton_kernels`` (CUDA kernels; needs triton), ``op`` (the ops, their fake path and autograd),
``api`` (the public function), ``flops`` (FLOP formulas, registered on import).
"""

from . import flops, op  # noqa: F401  (op defines the ops; flops registers their formulas)
from .api import selective_scan
from .validation import MAX_DSTATE

__all__ = ["selective_scan", "MAX_DSTATE"]
