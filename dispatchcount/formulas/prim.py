"""The JIT's ``prim`` ops that reach dispatch modes (metadata queries of tensor subclasses)."""

import torch

from dispatchcount.registry import register_zero

register_zero(torch.ops.prim.device, torch.ops.prim.layout)
