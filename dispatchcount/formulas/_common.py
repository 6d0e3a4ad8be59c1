"""Small helpers shared by the formula families."""

from __future__ import annotations

from math import prod
from typing import Sequence

import torch

__all__ = ["prod", "macs_to_flops", "is_counted_dtype"]


def is_counted_dtype(dtype: torch.dtype) -> bool:
    """FLOPs are floating-point operations: integer and bool tensors cost 0."""
    return dtype.is_floating_point or dtype.is_complex


def macs_to_flops(macs: int, dtype: torch.dtype) -> int:
    """FLOPs of ``macs`` multiply-adds in ``dtype``.

    A real multiply-add is 2 FLOPs (FlopCounterMode's convention). A complex multiply-add is
    8 real FLOPs: (a+bi)(c+di) takes 4 multiplies and 2 adds, and accumulating it 2 more adds.
    Integer and bool dtypes are not floating point: 0.
    """
    if dtype.is_complex:
        return 8 * macs
    if dtype.is_floating_point:
        return 2 * macs
    return 0


def shape(t: torch.Tensor | Sequence[int]) -> Sequence[int]:
    return t.shape if isinstance(t, torch.Tensor) else t
