"""Sorting, selection, searching and histograms: comparisons of floating-point values.

A comparison of two floats is a floating-point operation (1 FLOP); integer keys cost 0. The
counts are the textbook comparison counts (docs/conventions.md, "Sorting and searching"):
sorting L elements ``L ceil(log2 L)``; top-k ``n ceil(log2(k + 1))`` (a heap of k);
selection (kthvalue, median) ``2n`` (expected quickselect); binary search ``ceil(log2(L + 1))``
per query; histograms 5 per element (2 range tests, (x - lo) * bins / (hi - lo)).
"""

from __future__ import annotations

from math import ceil, log2
from typing import Any, Callable

from torch._ops import OpOverload

from dispatchcount.formulas._helpers import Tensor, arg_reader, dtype_factor, fixed, register_family, size_hint

__all__ = ["sort_cost", "search_cost"]


def _f(*tensors: Any) -> int:
    return dtype_factor(1, *[t for t in tensors if isinstance(t, Tensor)])


def _log2ceil(x: int) -> int:
    x = size_hint(x)  # a comparison or log2 of a symbolic size would add a guard
    return ceil(log2(x)) if x > 1 else 0


def sort_cost(n: int, length: int) -> int:
    """Comparisons to sort ``n`` elements in slices of ``length``: n ceil(log2 length)."""
    return n * _log2ceil(length)


def search_cost(queries: int, length: int) -> int:
    """Comparisons of ``queries`` binary searches in a sorted run of ``length``."""
    return queries * max(1, _log2ceil(length + 1))


def _dim_length(t: Tensor, dim: int) -> int:
    return t.shape[dim] if t.dim() else 1


def _sort(op: OpOverload) -> Callable[..., int]:
    read_dim = arg_reader(op, "dim", -1)

    def sort_flops(self, *args, out=None, **kwargs):
        f = _f(self)
        return f and f * sort_cost(self.numel(), _dim_length(self, read_dim((self,) + args, kwargs)))

    return sort_flops


def _topk(self, k, *args, out=None, **kwargs):
    return _f(self) * self.numel() * max(1, _log2ceil(k + 1))


def _selection(self, *args, out=None, **kwargs):
    # kthvalue, median: expected quickselect, about 2n comparisons.
    return _f(self) * 2 * self.numel()


def _nan_selection(self, *args, out=None, **kwargs):
    # nanmedian: an isnan test more per element.
    return _f(self) * 3 * self.numel()


def _sort_then_compare(default_dim: int) -> Callable[[OpOverload], Callable[..., int]]:
    """mode (along ``dim``, default -1) and unique_dim (default 0): sort the slices along
    ``dim`` (a comparison of two slices is counted at full slice length), then compare
    neighbours to count runs."""

    def build(op: OpOverload) -> Callable[..., int]:
        read_dim = arg_reader(op, "dim", default_dim)

        def sort_then_compare_flops(self, *args, out=None, **kwargs):
            f = _f(self)
            n = self.numel()
            return f and f * (sort_cost(n, _dim_length(self, read_dim((self,) + args, kwargs))) + n)

        return sort_then_compare_flops

    return build


def _unique(self, *args, out=None, **kwargs):
    # Sort everything, then compare neighbours.
    n = self.numel()
    return _f(self) * (sort_cost(n, n) + n)


def _unique_consecutive(self, *args, out=None, **kwargs):
    return _f(self) * self.numel()


def _searchsorted(sorted_sequence, values, *args, out=None, **kwargs):
    queries = values.numel() if isinstance(values, Tensor) else 1
    return _f(sorted_sequence, values) * search_cost(queries, sorted_sequence.shape[-1])


def _bucketize(values, boundaries, *args, out=None, **kwargs):
    queries = values.numel() if isinstance(values, Tensor) else 1
    return _f(values, boundaries) * search_cost(queries, boundaries.numel())


def _isin(elements, test_elements, *args, out=None, **kwargs):
    # PyTorch compares every pair when the test set is small (numel < 10 n^0.145), else sorts
    # both sets together and compares neighbours.
    n = elements.numel() if isinstance(elements, Tensor) else 1
    m = test_elements.numel() if isinstance(test_elements, Tensor) else 1
    f = _f(elements, test_elements)
    if m < 10 * n**0.145:
        return f * n * m
    return f * (sort_cost(n + m, n + m) + n + m)


def _bincount(self, weights=None, *args, out=None, **kwargs):
    # Counting integers is free; with float weights each element adds its weight.
    return _f(weights) * self.numel() if weights is not None else 0


def _histogram_cost(n: int, given_range: bool, weighted: bool) -> int:
    # Range tests and bin index (5 per element); min and max of the data when no range is
    # given (2n); weighted accumulation (n).
    return 5 * n + (0 if given_range else 2 * n) + (n if weighted else 0)


def _histc(op: OpOverload) -> Callable[..., int]:
    read_min, read_max = arg_reader(op, "min", 0), arg_reader(op, "max", 0)

    def histc_flops(self, *args, out=None, **kwargs):
        full = (self,) + args
        given = not (read_min(full, kwargs) == 0 and read_max(full, kwargs) == 0)
        return _f(self) * _histogram_cost(self.numel(), given, False)

    return histc_flops


def _histogram(op: OpOverload) -> Callable[..., int]:
    read_range, read_weight = arg_reader(op, "range"), arg_reader(op, "weight")
    tensor_bins = op._overloadname.startswith("bins_tensor") or op._schema.name.endswith(
        "from_bin_tensors"
    )

    def histogram_flops(self, bins, *args, out=None, **kwargs):
        f = _f(self)
        if not f:
            return 0
        full = (self, bins) + args
        n = self.numel()
        weighted = read_weight(full, kwargs) is not None
        if tensor_bins:
            # Bin edges given as tensors: a binary search per element and dimension.
            edges = bins.numel() if isinstance(bins, Tensor) else max(b.numel() for b in bins)
            return f * (search_cost(n, edges) + (n if weighted else 0))
        return f * _histogram_cost(n, read_range(full, kwargs) is not None, weighted)

    return histogram_flops


def _histogramdd_bin_edges(op: OpOverload) -> Callable[..., int]:
    read_range = arg_reader(op, "range")

    def bin_edges_flops(self, bins, *args, out=None, **kwargs):
        # The edges are a linspace (free) between the data's min and max per dimension (2n),
        # unless a range is given.
        given = read_range((self, bins) + args, kwargs) is not None
        return 0 if given else _f(self) * 2 * self.numel()

    return bin_edges_flops


FAMILY: dict[str, Callable[[OpOverload], Any]] = {
    "sort": _sort,
    "topk": fixed(_topk),
    "kthvalue": fixed(_selection),
    "median": fixed(_selection),
    "nanmedian": fixed(_nan_selection),
    "mode": _sort_then_compare(-1),
    "_unique": fixed(_unique),
    "_unique2": fixed(_unique),
    "unique_dim": _sort_then_compare(0),
    "unique_dim_consecutive": fixed(_unique_consecutive),
    "unique_consecutive": fixed(_unique_consecutive),
    "searchsorted": fixed(_searchsorted),
    "bucketize": fixed(_bucketize),
    "isin": fixed(_isin),
    "bincount": fixed(_bincount),
    "histc": _histc,
    "histogram": _histogram,
    "_histogramdd_from_bin_cts": _histogram,
    "_histogramdd_from_bin_tensors": _histogram,
    "_histogramdd_bin_edges": _histogramdd_bin_edges,
}

register_family(FAMILY)
