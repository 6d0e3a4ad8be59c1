"""Sparse tensors: products, reductions and softmax over the stored (nonzero) values.

A sparse operand costs what its stored values cost: a sparse x dense product does one
multiply-add per stored value and dense column (2 nnz n), reductions one op per stored value,
sparse softmax 5 (backward 4) per stored value (docs/conventions.md, "Sparse"). The number of
stored values is metadata (``_nnz()``, the values' size), never the data. Where the work
depends on the sparsity pattern itself (sparse x sparse products, sparse solves) the count is
a stated estimate.
"""

from __future__ import annotations

from math import prod
from typing import Any, Callable

import torch
from torch._ops import OpOverload

from dispatchcount.formulas._helpers import (Tensor, arg_reader, fixed, mul_factor, register_family,
    result_tensor)

__all__ = ["stored_values", "sparse_product_flops"]


def stored_values(t: Tensor) -> int:
    """Stored elements: nnz times the dense block size (COO), values (compressed), or numel."""
    layout = t.layout
    if layout == torch.strided:
        return t.numel()
    if layout == torch.sparse_coo:
        return t._nnz() * prod(t.shape[t.sparse_dim():])
    return t.values().numel()


def _nnz(t: Tensor) -> int:
    return t._nnz() if t.layout != torch.strided else t.numel()


def _sparse_dense_mm(sparse: Tensor, dense: Tensor) -> int:
    # One multiply-add per stored value of the sparse matrix and column of the dense one.
    return mul_factor(sparse, dense) * 2 * stored_values(sparse) * dense.shape[-1]


def sparse_product_flops(a: Tensor, b: Tensor) -> int:
    """FLOPs of the product ``a @ b`` (mm, addmm, bmm, mv ...) where ``a`` or ``b`` is sparse
    (COO, CSR, CSC, BSR, BSC): one multiply-add per stored value of the sparse operand and
    column (a @ dense) or row (dense @ b) of the dense one; sparse x sparse as
    ``_sparse_sparse_matmul``."""
    if a.layout == torch.strided:  # dense (..., m, k) @ sparse (k, n): each value meets m rows
        rows = a.shape[-2] if a.dim() > 1 else 1
        return mul_factor(a, b) * 2 * stored_values(b) * rows
    if b.layout == torch.strided:
        return mul_factor(a, b) * 2 * stored_values(a) * (b.shape[-1] if b.dim() > 1 else 1)
    return _sparse_sparse_matmul(a, b)


def _sparse_addmm(self, mat1, mat2, *args, out=None, **kwargs):
    return _sparse_dense_mm(mat1, mat2)


def _hspmm(mat1, mat2, *args, out=None, **kwargs):
    return _sparse_dense_mm(mat1, mat2)


def _sampled_addmm(self, mat1, mat2, *args, out=None, **kwargs):
    # Only the entries of self's pattern are computed: k multiply-adds each.
    return mul_factor(mat1, mat2) * 2 * _nnz(self) * mat1.shape[-1]


def _mm_reduce(op: OpOverload) -> Callable[..., int]:
    read_reduce = arg_reader(op, "reduce")

    def mm_reduce_flops(self, other, *args, out=None, **kwargs):
        # A multiply and a reduce (add or compare) per stored value and column; mean divides.
        flops = 2 * _nnz(self) * other.shape[-1]
        if read_reduce((self, other) + args, kwargs) == "mean":
            flops += result_tensor(out).numel()
        return mul_factor(other) * flops

    return mm_reduce_flops


def _mm_reduce_backward(self, grad_out, weight, reduce, arg_out, output_mask, *args, out=None, **kwargs):
    # grad of the stored values (a dot product per value) and of the dense operand (a
    # multiply-add per value and column): 2 nnz n each.
    per = 2 * _nnz(self) * grad_out.shape[-1]
    return mul_factor(grad_out) * per * (bool(output_mask[0]) + bool(output_mask[1]))


def _sparse_sparse_matmul(self, other, *args, out=None, **kwargs):
    # Each stored value of A meets the stored values of one row of B: estimated as nnz(B)/k
    # on average (the pattern is data).
    k = other.shape[0]
    return mul_factor(self, other) * 2 * _nnz(self) * _nnz(other) // max(1, k)


def _spsolve(a, b, *args, out=None, **kwargs):
    # A lower bound: one multiply-add per stored value of A and right-hand side (fill-in of
    # the factorization depends on the pattern).
    r = b.shape[-1] if b.dim() == 2 else 1
    return mul_factor(a, b) * 2 * _nnz(a) * r


def _per_stored(per_value: int) -> Callable[..., int]:
    def per_stored_flops(self, *args, out=None, **kwargs):
        return mul_factor(self) * per_value * stored_values(self)

    return per_stored_flops


def _softmax_backward(grad_output, output, *args, out=None, **kwargs):
    return mul_factor(output) * 4 * stored_values(output)


FAMILY: dict[str, Callable[[OpOverload], Any]] = {
    "_sparse_addmm": fixed(_sparse_addmm),
    "hspmm": fixed(_hspmm),
    "sspaddmm": fixed(_sparse_addmm),
    "sparse_sampled_addmm": fixed(_sampled_addmm),
    "_sparse_mm_reduce_impl": _mm_reduce,
    "_sparse_mm_reduce_impl_backward": fixed(_mm_reduce_backward),
    "_sparse_sparse_matmul": fixed(_sparse_sparse_matmul),
    "_spsolve": fixed(_spsolve),
    "_coalesce": fixed(_per_stored(1)),        # duplicates summed: at most one add per value
    "_sparse_sum": fixed(_per_stored(1)),
    "_sparse_csr_sum": fixed(_per_stored(1)),
    "_sparse_csr_prod": fixed(_per_stored(1)),
    "_sparse_softmax": fixed(_per_stored(5)),
    "_sparse_log_softmax": fixed(_per_stored(5)),
    "_sparse_softmax_backward_data": fixed(_softmax_backward),
    "_sparse_log_softmax_backward_data": fixed(_softmax_backward),
}

register_family(FAMILY)
