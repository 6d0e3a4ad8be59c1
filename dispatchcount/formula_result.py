"""What a FLOP formula may return: a non-negative integer count, checked and made concrete.

A formula returns an ``int``; the dispatch hook takes those as they are (the common case, and
the cheapest). Anything else goes through :func:`as_count`:

- an integral float (``12.0``) is that integer; a negative, fractional, infinite or NaN result,
  a bool or a non-number is a ``TypeError``, which the hook reports as the op's formula error;
- a ``torch.SymInt`` / ``SymFloat`` (a formula run on tensors with symbolic sizes: FakeTensorMode
  with a ShapeEnv, a torch.compile backend's dynamic example inputs) is replaced by its *size
  hint*, the value for the sizes actually traced, read without adding a guard to the user's
  ShapeEnv (``int(symint)`` would add ``Eq(expr, value)`` and specialize the program). A count
  that depends on data (an unbacked size, no hint) is a formula error;
- :class:`IntegerWork`: the result of an op whose products run in integer arithmetic
  (quantized kernels): its floating-point part in FLOPs, its integer multiply-adds apart
  (metric ``"int_ops"``, see docs/conventions.md, "Quantized kernels").

Formulas registered from outside dispatchcount are wrapped by :func:`checked`, so that their
negative ``int`` results are caught too; dispatchcount's own formulas are trusted there (and
tested), which keeps the check off the per-op path.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Callable

import torch

__all__ = ["IntegerWork", "as_count", "checked", "size_hint"]


class IntegerWork:
    """A formula result: ``flops`` floating-point operations and ``int_ops`` integer operations
    (a multiply-add is 2, as for FLOPs)."""

    __slots__ = ("flops", "int_ops")

    def __init__(self, flops: Any, int_ops: Any) -> None:
        self.flops = flops
        self.int_ops = int_ops

    def __repr__(self) -> str:
        return f"IntegerWork(flops={self.flops!r}, int_ops={self.int_ops!r})"


def size_hint(value: Any) -> Any:
    """``value`` with a symbolic int or float replaced by its size hint (no guard is added)."""
    if not isinstance(value, (torch.SymInt, torch.SymFloat)):
        return value
    node = value.node
    hint = node.hint
    if hint is None and node.shape_env is not None:
        hint = node.shape_env.size_hint(node.expr, allow_none=True)
    if hint is None:
        raise TypeError(f"the count {value} depends on data (a size without a hint)")
    return int(hint) if isinstance(value, torch.SymInt) else float(hint)


def as_count(flops: Any) -> int:
    """A formula's result as a non-negative int; a TypeError for anything that is not a count.

    Integers of other types (``numpy.int64`` from ``np.prod``, as fvcore's handles use) and
    integral floats are accepted."""
    flops = size_hint(flops)
    if type(flops) is int or (not isinstance(flops, (bool, float, torch.Tensor)) and hasattr(flops, "__index__")):
        value = operator.index(flops)
        if value >= 0:
            return value
    elif isinstance(flops, float) and math.isfinite(flops) and flops >= 0 and flops.is_integer():
        return int(flops)
    raise TypeError(f"a FLOP formula must return a non-negative integer, got {flops!r}")


def checked(formula: Callable[..., Any]) -> Callable[..., Any]:
    """``formula`` with every result checked by :func:`as_count` (for formulas not written here)."""

    def checked_formula(*args: Any, out: Any = None, **kwargs: Any) -> Any:
        flops = formula(*args, out=out, **kwargs)
        if type(flops) is int and flops >= 0:
            return flops
        if type(flops) is IntegerWork:
            return IntegerWork(as_count(flops.flops), as_count(flops.int_ops))
        return as_count(flops)

    checked_formula.__wrapped__ = formula  # type: ignore[attr-defined]
    return checked_formula
