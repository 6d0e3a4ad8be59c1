"""Attention: the two batched products of softmax(Q K^T) V, FlopCounterMode's rule.

Forward: ``Q K^T`` and ``P V``, ``2 * b * h_q * s_q * s_k * (d_qk + d_v)``. Backward recomputes
``Q K^T`` and computes ``dP = dO V^T``, ``dV = P^T dO``, ``dQ = dS K``, ``dK = dS^T Q``: five
products. Grouped-query attention counts every query head; causal masking and the softmax
itself are not counted (as FlopCounterMode). Fused kernels taking ``(batch, seq, heads, dim)``
layouts or packed variable-length batches (``cum_seq``) are unpacked to one (b, h, s, d) problem
per sequence.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import torch
from torch._higher_order_ops.flex_attention import flex_attention, flex_attention_backward
from torch._subclasses.fake_tensor import FakeTensor
from torch._subclasses.functional_tensor import FunctionalTensor

from dispatchcount.formulas._helpers import attention_backward_macs, attention_macs, macs_to_flops
from dispatchcount.registry import register_formula

aten = torch.ops.aten

Shape = Sequence[int]


def attention_flops(q: Shape, k: Shape, v: Shape) -> int:
    """Forward FLOPs for q (b, h_q, s_q, d), k (b, h_kv, s_k, d), v (b, h_kv, s_k, d_v)."""
    return 2 * attention_macs(q, k, v)


def attention_backward_flops(q: Shape, k: Shape, v: Shape) -> int:
    """Backward FLOPs: recompute Q K^T, then dP, dV (d_v each) and dQ, dK (d_qk each)."""
    return 2 * attention_backward_macs(q, k, v)


# -- (b, h, s, d) layout: the scaled_dot_product_* family ---------------------------------


@register_formula(
    [
        aten._scaled_dot_product_efficient_attention,
        aten._scaled_dot_product_flash_attention,
        aten._scaled_dot_product_cudnn_attention,
        aten._scaled_dot_product_flash_attention_for_cpu,
        aten._scaled_dot_product_fused_attention_overrideable,
        aten._triton_scaled_dot_attention,
    ]
)
def sdpa_flop(query, key, value, *args, out=None, **kwargs) -> int:
    return attention_flops(query.shape, key.shape, value.shape)


@register_formula(
    [
        aten._scaled_dot_product_efficient_attention_backward,
        aten._scaled_dot_product_flash_attention_backward,
        aten._scaled_dot_product_cudnn_attention_backward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward,
        aten._scaled_dot_product_fused_attention_overrideable_backward,
    ]
)
def sdpa_backward_flop(grad_out, query, key, value, *args, out=None, **kwargs) -> int:
    return attention_backward_flops(query.shape, key.shape, value.shape)


# -- (b, s, h, d) layout, optionally packed by cumulative sequence offsets -----------------


def _lengths(offsets: torch.Tensor, max_len: int) -> list[int]:
    # Fake and meta tensors have no data: every sequence is assumed max_len long.
    if offsets.device.type == "meta" or isinstance(offsets, (FakeTensor, FunctionalTensor)):
        return [max_len] * (offsets.shape[0] - 1)
    return (offsets[1:] - offsets[:-1]).tolist()


def _bshd_problems(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cum_seq_q: Optional[torch.Tensor],
    cum_seq_k: Optional[torch.Tensor],
    max_q: int,
    max_k: int,
) -> Iterator[tuple[Shape, Shape, Shape]]:
    """(q, k, v) shapes in (b, h, s, d) of each attention problem."""
    if cum_seq_q is None:
        b, s_q, h_q, d = query.shape
        _, s_k, h_kv, d_v = value.shape
        yield (b, h_q, s_q, d), (b, h_kv, s_k, d), (b, h_kv, s_k, d_v)
        return
    # Packed: query ([1,] total_q, h_q, d), key/value ([1,] total_k, h_kv, d)
    h_q, d = query.shape[-2:]
    h_kv, d_v = value.shape[-2:]
    for s_q, s_k in zip(_lengths(cum_seq_q, max_q), _lengths(cum_seq_k, max_k)):
        yield (1, h_q, s_q, d), (1, h_kv, s_k, d), (1, h_kv, s_k, d_v)


@register_formula(aten._flash_attention_forward)
def flash_attention_forward_flop(query, key, value, cum_seq_q, cum_seq_k, max_q, max_k, *args, out=None, **kwargs) -> int:
    problems = _bshd_problems(query, key, value, cum_seq_q, cum_seq_k, max_q, max_k)
    return sum(attention_flops(*p) for p in problems)


@register_formula(aten._flash_attention_forward_no_dropout_inplace)
def flash_attention_forward_inplace_flop(out_buffer, query, key, value, cum_seq_q, cum_seq_k, max_q, max_k, *args, out=None, **kwargs) -> int:
    return flash_attention_forward_flop(query, key, value, cum_seq_q, cum_seq_k, max_q, max_k)


@register_formula(aten._efficient_attention_forward)
def efficient_attention_forward_flop(query, key, value, bias, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *args, out=None, **kwargs) -> int:
    problems = _bshd_problems(query, key, value, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    return sum(attention_flops(*p) for p in problems)


@register_formula(aten._cudnn_attention_forward)
def cudnn_attention_forward_flop(query, key, value, attn_bias, cum_seq_q, cum_seq_k, max_q, max_k, *args, out=None, **kwargs) -> int:
    if cum_seq_q is None:  # (b, h, s, d)
        return attention_flops(query.shape, key.shape, value.shape)
    problems = _bshd_problems(query, key, value, cum_seq_q, cum_seq_k, max_q, max_k)
    return sum(attention_flops(*p) for p in problems)


@register_formula(aten._flash_attention_backward)
def flash_attention_backward_flop(grad_out, query, key, value, out_fwd, logsumexp, cum_seq_q, cum_seq_k, max_q, max_k, *args, out=None, **kwargs) -> int:
    problems = _bshd_problems(query, key, value, cum_seq_q, cum_seq_k, max_q, max_k)
    return sum(attention_backward_flops(*p) for p in problems)


@register_formula(aten._efficient_attention_backward)
def efficient_attention_backward_flop(grad_out, query, key, value, bias, out_fwd, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *args, out=None, **kwargs) -> int:
    problems = _bshd_problems(query, key, value, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    return sum(attention_backward_flops(*p) for p in problems)


@register_formula(aten._cudnn_attention_backward)
def cudnn_attention_backward_flop(grad_out, query, key, value, out_fwd, logsumexp, philox_seed, philox_offset, attn_bias, cum_seq_q, cum_seq_k, max_q, max_k, *args, out=None, **kwargs) -> int:
    if cum_seq_q is None or cum_seq_q.numel() == 0:
        return attention_backward_flops(query.shape, key.shape, value.shape)
    problems = _bshd_problems(query, key, value, cum_seq_q, cum_seq_k, max_q, max_k)
    return sum(attention_backward_flops(*p) for p in problems)


# -- whole multi-head attention blocks (nn.MultiheadAttention's inference fast path) -------


@register_formula([aten._native_multi_head_attention, aten._triton_multi_head_attention])
def native_multi_head_attention_flop(query, key, value, embed_dim, num_head, qkv_weight, qkv_bias, proj_weight, *args, out=None, **kwargs) -> int:
    """Q, K, V projections, attention over heads, output projection."""
    b, s_q, e = query.shape
    s_k = key.shape[1]
    projections = b * s_q * e * e + 2 * b * s_k * e * e + b * s_q * e * e
    head_dim = embed_dim // num_head
    shapes = (b, num_head, s_q, head_dim), (b, num_head, s_k, head_dim), (b, num_head, s_k, head_dim)
    return macs_to_flops(projections, query.dtype) + attention_flops(*shapes)


# -- flex attention (a higher-order op): dense counts, as FlopCounterMode ------------------


@register_formula(flex_attention)
def flex_attention_flop(query, key, value, *args, out=None, **kwargs) -> int:
    return attention_flops(query.shape, key.shape, value.shape)


@register_formula(flex_attention_backward)
def flex_attention_backward_flop(query, key, value, *args, out=None, **kwargs) -> int:
    return attention_backward_flops(query.shape, key.shape, value.shape)
