"""Indexed accumulation: embedding(-bag) gradients, index_add, scatter reductions, accumulating
index_put, segment reductions, and the gradients of copies that overlap (fold, unfold, pads).

Plain gathers, scatters and index copies move elements and are zeros (zero.py); what is counted
here is the arithmetic that combines elements: one add (or multiply, max ...) per element
folded into the destination. See docs/conventions.md, "Indexing and embeddings".
"""

from __future__ import annotations

from typing import Any, Callable

from torch._ops import OpOverload

from dispatchcount.formulas._helpers import (add_factor, arg_reader, fixed, mul_factor, register_family,
    result_tensor)

__all__ = ["EMBEDDING_BAG_SUM", "EMBEDDING_BAG_MEAN", "EMBEDDING_BAG_MAX"]

EMBEDDING_BAG_SUM, EMBEDDING_BAG_MEAN, EMBEDDING_BAG_MAX = 0, 1, 2


def _embedding_dense_backward(grad_output, indices, num_weights, padding_idx, scale_grad_by_freq,
                              *args, out=None, **kwargs):
    # Each gradient row is added into its weight row; scale_grad_by_freq divides it first.
    n = grad_output.numel()
    return add_factor(grad_output) * n * (2 if scale_grad_by_freq else 1)


def _embedding_bag(op: OpOverload) -> Callable[..., int]:
    read_mode = arg_reader(op, "mode", EMBEDDING_BAG_SUM)
    read_psw = arg_reader(op, "per_sample_weights")

    def embedding_bag_flops(weight, indices, *args, out=None, **kwargs):
        # sum: one add per looked-up element (m D), plus m D multiplies with per-sample weights;
        # mean: the adds and one divide per bag element; max: one comparison per element.
        f = mul_factor(weight)
        if not f:
            return 0
        full = (weight, indices) + args
        d = weight.shape[-1]
        looked_up = indices.numel() * d
        mode = read_mode(full, kwargs)
        if mode == EMBEDDING_BAG_MAX:
            return f * looked_up
        flops = looked_up * (2 if read_psw(full, kwargs) is not None else 1)
        if mode == EMBEDDING_BAG_MEAN:
            flops += result_tensor(out).numel()
        return f * flops

    return embedding_bag_flops


def _embedding_bag_backward(op: OpOverload) -> Callable[..., int]:
    read_mode = arg_reader(op, "mode", EMBEDDING_BAG_SUM)
    read_psw = arg_reader(op, "per_sample_weights")
    read_indices = arg_reader(op, "indices")

    def embedding_bag_backward_flops(grad, *args, out=None, **kwargs):
        # sum: each index adds its bag's gradient row (m D), times its per-sample weight (m D);
        # mean: divided by the bag size first (m D); max: one row per bag (bags D).
        f = mul_factor(grad)
        if not f:
            return 0
        full = (grad,) + args
        mode = read_mode(full, kwargs)
        if mode == EMBEDDING_BAG_MAX:
            return f * grad.numel()
        rows = read_indices(full, kwargs).numel() * grad.shape[-1]
        scale = (mode == EMBEDDING_BAG_MEAN) + (read_psw(full, kwargs) is not None)
        return f * rows * (1 + scale)

    return embedding_bag_backward_flops


def _embedding_bag_psw_backward(grad, weight, indices, *args, out=None, **kwargs):
    # d loss / d w_i = <grad row of its bag, weight row>: D multiply-adds per index.
    return mul_factor(grad) * 2 * indices.numel() * grad.shape[-1]


def _index_add(op: OpOverload) -> Callable[..., int]:
    read_alpha = arg_reader(op, "alpha", 1)

    def index_add_flops(self, dim, index, source, *args, out=None, **kwargs):
        # One add per source element, one multiply more when alpha != 1.
        per_element = 1 if read_alpha((self, dim, index, source) + args, kwargs) == 1 else 2
        return add_factor(self) * per_element * source.numel()

    return index_add_flops


def _scatter(op: OpOverload) -> Callable[..., int]:
    # scatter.src/.value are copies; scatter.reduce/.value_reduce ('add', 'multiply') fold one
    # element per index.
    reducing = "reduce" in op._overloadname

    def scatter_flops(self, dim, index, *args, out=None, **kwargs):
        return mul_factor(self) * index.numel() if reducing else 0

    return scatter_flops


def _scatter_add(self, dim, index, src, *args, out=None, **kwargs):
    return add_factor(self) * index.numel()


def _reduce_into(op: OpOverload, count_arg: str) -> Callable[..., int]:
    # scatter_reduce / index_reduce: one op per folded element ('sum', 'prod', 'amax', 'amin',
    # 'mean'); 'mean' also divides every destination element.
    read_reduce = arg_reader(op, "reduce")
    read_count = arg_reader(op, count_arg)

    def reduce_into_flops(self, *args, out=None, **kwargs):
        full = (self,) + args
        flops = read_count(full, kwargs).numel()
        if read_reduce(full, kwargs) == "mean":
            flops += self.numel()
        return mul_factor(self) * flops

    return reduce_into_flops


def _accumulating(op: OpOverload, count_arg: str) -> Callable[..., int]:
    # index_put(accumulate=True) / put(accumulate=True): one add per value written; without
    # accumulate these are copies.
    read_accumulate = arg_reader(op, "accumulate", False)
    read_count = arg_reader(op, count_arg)

    def accumulate_flops(self, *args, out=None, **kwargs):
        full = (self,) + args
        if not read_accumulate(full, kwargs):
            return 0
        return add_factor(self) * read_count(full, kwargs).numel()

    return accumulate_flops


def _masked_index_put_accumulate(self, mask, indices, values, *args, out=None, **kwargs):
    return add_factor(self) * values.numel()


def _segment_reduce(op: OpOverload) -> Callable[..., int]:
    read_reduce = arg_reader(op, "reduce")

    def segment_reduce_flops(data, *args, out=None, **kwargs):
        # One op per data element; 'mean' divides each result.
        flops = data.numel()
        if read_reduce((data,) + args, kwargs) == "mean":
            flops += result_tensor(out).numel()
        return mul_factor(data) * flops

    return segment_reduce_flops


def _segment_reduce_backward(op: OpOverload) -> Callable[..., int]:
    read_reduce = arg_reader(op, "reduce")

    def segment_reduce_backward_flops(grad, output, data, *args, out=None, **kwargs):
        # sum: the gradient is broadcast (a copy); mean: divided by the length (n);
        # max/min: compare with the result and share among ties (2n); prod: output / x * g (2n).
        reduce = read_reduce((grad, output, data) + args, kwargs)
        per_element = {"sum": 0, "mean": 1}.get(reduce, 2)
        return mul_factor(data) * per_element * data.numel()

    return segment_reduce_backward_flops


def _grad_accumulate(grad, *args, out=None, **kwargs):
    # Gradient of a copy whose sources overlap (fold, unfold, reflection/replication padding):
    # one add per gradient element.
    return add_factor(grad) * grad.numel()


FAMILY: dict[str, Callable[[OpOverload], Any]] = {
    "embedding_dense_backward": fixed(_embedding_dense_backward),
    "_embedding_bag": _embedding_bag,
    "_embedding_bag_forward_only": _embedding_bag,
    "_embedding_bag_backward": _embedding_bag_backward,
    "_embedding_bag_dense_backward": _embedding_bag_backward,
    "_embedding_bag_per_sample_weights_backward": fixed(_embedding_bag_psw_backward),
    "index_add": _index_add,
    "scatter": _scatter,
    "scatter_add": fixed(_scatter_add),
    "scatter_reduce": lambda op: _reduce_into(op, "index"),
    "index_reduce": lambda op: _reduce_into(op, "source"),
    "index_put": lambda op: _accumulating(op, "values"),
    "_index_put_impl": lambda op: _accumulating(op, "values"),
    "_unsafe_index_put": lambda op: _accumulating(op, "values"),
    "put": lambda op: _accumulating(op, "index"),
    "_unsafe_masked_index_put_accumulate": fixed(_masked_index_put_accumulate),
    "segment_reduce": _segment_reduce,
    "_segment_reduce_backward": _segment_reduce_backward,
    "col2im": fixed(_grad_accumulate),
    "unfold_backward": fixed(_grad_accumulate),
    "reflection_pad1d_backward": fixed(_grad_accumulate),
    "reflection_pad2d_backward": fixed(_grad_accumulate),
    "reflection_pad3d_backward": fixed(_grad_accumulate),
    "replication_pad1d_backward": fixed(_grad_accumulate),
    "replication_pad2d_backward": fixed(_grad_accumulate),
    "replication_pad3d_backward": fixed(_grad_accumulate),
}

register_family(FAMILY)
