"""Matrix products: one multiply-add per (m, n, k) triple, 2 FLOPs (FlopCounterMode's rule).

A product's FLOPs are labelled with the dtype its operands are multiplied in (``matmul_cost``):
``"tf32"`` for float32 on CUDA with TF32 allowed, fp8 for ``_scaled_mm``.

A sparse operand (a layout other than strided: COO, CSR, CSC, BSR, BSC) is charged by its
stored values (``sparse.sparse_product_flops``), as ``torch.sparse.mm`` is; the layout is read
once per call. The additive terms of ``addmm``/``baddbmm``/``addmv`` (``beta * self``) are not
counted, as FlopCounterMode does not count them; bias is folded into the accumulation on every
backend. ``matmul``, ``linear``, ``einsum`` and ``tensordot`` are CompositeImplicit: they reach
the counter as the products below.
"""

from __future__ import annotations

import torch

from dispatchcount.formula_result import IntegerWork
from dispatchcount.formulas._helpers import macs_to_flops, matmul_cost
from dispatchcount.formulas.sparse import sparse_product_flops
from dispatchcount.registry import Cost, register_formula

aten = torch.ops.aten
_STRIDED = torch.strided
# macs_to_flops's factor for every dtype, looked up once: mm and addmm run for every product.
_FLOPS_PER_MAC = {d: macs_to_flops(1, d) for d in vars(torch).values() if isinstance(d, torch.dtype)}


def _product(a, b, out) -> int:
    """FLOPs of a (m, k) @ (k, n) product of strided ``a`` and ``b``, labelled by matmul_cost
    where the result's dtype is not the one multiplied in (CUDA, out_dtype)."""
    m, k = a.shape
    flops = _FLOPS_PER_MAC[a.dtype] * m * b.shape[-1] * k
    if a.is_cuda or (out is not None and out.dtype is not a.dtype):
        return matmul_cost(flops, a, out)
    return flops


@register_formula(aten.mm)
def mm_flop(a, b, *args, out=None, **kwargs) -> int:
    if a.layout is not _STRIDED or b.layout is not _STRIDED:
        return sparse_product_flops(a, b)
    return _product(a, b, out)


@register_formula(aten._int_mm)
def int_mm_flop(a, b, *args, out=None, **kwargs) -> IntegerWork:
    # int8 x int8 -> int32: integer multiply-adds, not FLOPs (recorded as int_ops).
    m, k = a.shape
    return IntegerWork(0, 2 * m * b.shape[-1] * k)


@register_formula([aten.addmm, aten._addmm_activation])
def addmm_flop(bias, a, b, *args, out=None, **kwargs) -> int:
    if a.layout is not _STRIDED or b.layout is not _STRIDED:
        return sparse_product_flops(a, b)
    return _product(a, b, out)


@register_formula(aten.bmm)
def bmm_flop(a, b, *args, out=None, **kwargs) -> int:
    if a.layout is not _STRIDED or b.layout is not _STRIDED:
        return sparse_product_flops(a, b)
    batch, m, k = a.shape
    n = b.shape[-1]
    return matmul_cost(macs_to_flops(batch * m * n * k, a.dtype), a, out)


@register_formula([aten.baddbmm, aten.addbmm])
def baddbmm_flop(bias, a, b, *args, out=None, **kwargs) -> int:
    # addbmm sums the batch of products into one matrix: the same multiply-adds.
    return bmm_flop(a, b, out=out)


@register_formula([aten._scaled_mm, aten._scaled_mm_v2])
def scaled_mm_flop(a, b, *args, out=None, **kwargs) -> int:
    # Low-precision (fp8) inputs still do floating-point multiply-adds, in their dtype (the
    # result is bf16 or fp32); scaling is not counted.
    m, k = a.shape
    return Cost(2 * m * b.shape[-1] * k, a.dtype)


@register_formula(aten.mv)
def mv_flop(a, x, *args, out=None, **kwargs) -> int:
    if a.layout is not _STRIDED:
        return sparse_product_flops(a, x)
    m, k = a.shape
    return macs_to_flops(m * k, a.dtype)


@register_formula(aten.addmv)
def addmv_flop(bias, a, x, *args, out=None, **kwargs) -> int:
    return mv_flop(a, x)


@register_formula([aten.dot, aten.vdot])
def dot_flop(a, b, *args, out=None, **kwargs) -> int:
    return macs_to_flops(a.numel(), a.dtype)


@register_formula(aten.addr)
def addr_flop(bias, u, v, *args, out=None, **kwargs) -> int:
    # self + u v^T: one multiply and one add per output element.
    return macs_to_flops(u.numel() * v.numel(), u.dtype)


@register_formula(aten.mkldnn_linear)
def mkldnn_linear_flop(x, weight, *args, out=None, **kwargs) -> int:
    out_features, in_features = weight.shape
    rows = x.numel() // in_features
    return macs_to_flops(rows * out_features * in_features, x.dtype)
