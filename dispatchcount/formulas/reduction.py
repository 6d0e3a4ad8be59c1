"""Reductions, scans and softmax: FLOPs per input element ``n`` and per result element ``r``.

A reduction kernel starts its accumulator at the identity (0 for sums, -inf for max ...) and
folds in every input element, so reducing ``n`` elements costs ``n`` operations, whatever the
number of outputs. Per-result work (the division of a mean, the root of a norm) is counted per
result element. Comparisons (max, argmax, ...) are floating-point operations on float inputs.
Integer and bool inputs cost 0; complex sums cost 2x, other complex reductions 4x.
See docs/conventions.md, "Reductions, scans, softmax".
"""

from __future__ import annotations

from math import inf
from typing import Any, Callable

from torch._ops import OpOverload

from dispatchcount.formulas._helpers import (COMPLEX_ADD, COMPLEX_MUL, Tensor, arg_reader, dtype_factor,
    register_family, result_tensor)

__all__ = ["norm_cost", "REDUCTION_FLOPS"]

# (FLOPs per input element, FLOPs per result element, complex factor)
REDUCTION_FLOPS: dict[str, tuple[int, int, int]] = {
    "sum": (1, 0, COMPLEX_ADD),
    "nansum": (2, 0, COMPLEX_ADD),          # isnan test, add
    "mean": (1, 1, COMPLEX_ADD),            # add; divide per result
    "prod": (1, 0, COMPLEX_MUL),
    "amax": (1, 0, 1), "amin": (1, 0, 1),   # one comparison per element
    "argmax": (1, 0, 1), "argmin": (1, 0, 1),
    "aminmax": (2, 0, 1), "_aminmax": (2, 0, 1),
    "all": (1, 0, 1), "any": (1, 0, 1),     # x != 0 on floating inputs; bool inputs are free
    "count_nonzero": (1, 0, 1),
    "var": (4, 2, COMPLEX_MUL),             # mean (n + r), subtract, square, sum, divide (r)
    "var_mean": (4, 2, COMPLEX_MUL),
    "std": (4, 3, COMPLEX_MUL),             # var, then a square root per result
    "std_mean": (4, 3, COMPLEX_MUL),
    "logsumexp": (4, 2, COMPLEX_MUL),       # max, subtract, exp, sum (n); log, add max (r)
    # scans: one operation per element along the scanned dimension
    "cumsum": (1, 0, COMPLEX_ADD), "cumprod": (1, 0, COMPLEX_MUL),
    "cummax": (1, 0, 1), "cummin": (1, 0, 1),
    "logcumsumexp": (6, 0, COMPLEX_MUL),    # one logaddexp per element
    "_logcumsumexp": (6, 0, COMPLEX_MUL),
    # softmax: max, subtract, exp, sum, divide per element
    "_softmax": (5, 0, COMPLEX_MUL), "softmax": (5, 0, COMPLEX_MUL),
    "_safe_softmax": (6, 0, COMPLEX_MUL),   # softmax plus the all-masked-row test
    "_masked_softmax": (5, 0, COMPLEX_MUL),
    "_nested_tensor_softmax_with_shape": (5, 0, COMPLEX_MUL),
    "_softmax_backward_data": (4, 0, COMPLEX_MUL),   # y (g - sum(g y)): mul, sum, sub, mul
    "_masked_softmax_backward": (4, 0, COMPLEX_MUL),
    "_log_softmax_backward_data": (4, 0, COMPLEX_MUL),  # g - exp(y) sum(g): exp, sum, mul, sub
}


def _reduction_formula(per_input: int, per_result: int, complex_factor: int) -> Callable[..., int]:
    def reduction_flops(self: Tensor, *args: Any, out: Any = None, **kwargs: Any) -> int:
        result = result_tensor(out)
        factor = dtype_factor(complex_factor, self, result)
        if not factor:
            return 0
        results = result.numel() if (per_result and result is not None) else 0
        return factor * (per_input * self.numel() + per_result * results)

    return reduction_flops


def _rows(t: Tensor, dim: int) -> int:
    size = t.shape[dim] if t.dim() else 1
    return t.numel() // size if size else 0


def _log_softmax(op: OpOverload) -> Callable[..., int]:
    # max, subtract, exp, sum, subtract the log per element (5n); one log per row.
    read_dim = arg_reader(op, "dim")

    def log_softmax_flops(self: Tensor, *args: Any, out: Any = None, **kwargs: Any) -> int:
        factor = dtype_factor(COMPLEX_MUL, self)
        if not factor:
            return 0
        return factor * (5 * self.numel() + _rows(self, read_dim((self,) + args, kwargs)))

    return log_softmax_flops


def norm_cost(p: Any, n: int, results: int, root: bool = True) -> int:
    """Real FLOPs of a p-norm of ``n`` elements into ``results`` values.

    p=2: square and add (2n), a square root per result; p=1: abs and add (2n); p=+-inf: abs and
    max (2n); p=0: a nonzero test and add (2n); other p: abs, pow, add (3n) and a 1/p power per
    result. ``root=False`` (a power sum) leaves out the per-result root.
    """
    if p is None or p == 2:
        return 2 * n + (results if root else 0)
    if p in (1, 0, inf, -inf):
        return 2 * n
    return 3 * n + (results if root else 0)


def _norm(op: OpOverload, p_name: str, root: bool = True) -> Callable[..., int]:
    read_p = arg_reader(op, p_name, 2)

    def norm_flops(self: Tensor, *args: Any, out: Any = None, **kwargs: Any) -> int:
        result = result_tensor(out)
        factor = dtype_factor(COMPLEX_MUL, self, result)
        if not factor:
            return 0
        results = result.numel() if result is not None else 1
        return factor * norm_cost(read_p((self,) + args, kwargs), self.numel(), results, root)

    return norm_flops


def _dist(op: OpOverload) -> Callable[..., int]:
    # ||self - other||_p: a subtraction per (broadcast) element, then the norm.
    read_p = arg_reader(op, "p", 2)

    def dist_flops(self: Tensor, other: Tensor, *args: Any, out: Any = None, **kwargs: Any) -> int:
        factor = dtype_factor(COMPLEX_MUL, self, other)
        if not factor:
            return 0
        n = max(self.numel(), other.numel())
        return factor * (n + norm_cost(read_p((self, other) + args, kwargs), n, 1))

    return dist_flops


def _trace_flops(self: Tensor, *args: Any, out: Any = None, **kwargs: Any) -> int:
    # The sum of the diagonal: min(rows, cols) additions.
    return dtype_factor(COMPLEX_ADD, self) * min(self.shape)


def _allclose_flops(self: Tensor, other: Tensor, *args: Any, out: Any = None, **kwargs: Any) -> int:
    # |a - b| <= atol + rtol * |b|: sub, abs, abs, mul, add, compare per element.
    n = max(self.numel(), other.numel())
    return dtype_factor(COMPLEX_MUL, self, other) * 6 * n


def _make_family() -> dict[str, Callable[[OpOverload], Any]]:
    family: dict[str, Callable[[OpOverload], Any]] = {}
    for name, (per_input, per_result, complex_factor) in REDUCTION_FLOPS.items():
        formula = _reduction_formula(per_input, per_result, complex_factor)
        family[name] = lambda op, formula=formula: formula
    family["_cummax_helper"] = family["cummax"]
    family["_cummin_helper"] = family["cummin"]
    # max/min: the full and per-dim reductions (max(x, y) is CompositeImplicit: maximum).
    max_min = _reduction_formula(1, 0, 1)
    family["max"] = family["min"] = lambda op: max_min
    family["_log_softmax"] = _log_softmax
    family["log_softmax"] = _log_softmax
    family["norm"] = lambda op: _norm(op, "p")
    family["native_norm"] = lambda op: _norm(op, "p")
    family["linalg_vector_norm"] = lambda op: _norm(op, "ord")
    family["linalg__powsum"] = lambda op: _norm(op, "ord", root=False)
    family["dist"] = _dist
    family["trace"] = lambda op: _trace_flops
    family["allclose"] = lambda op: _allclose_flops
    return family


FAMILY = _make_family()
register_family(FAMILY)
