"""Attention: ``softmax(Q K^T * scale [+ mask]) V``, one rule whatever kernel computes it.

For S (query, key) scores, counting every query head (grouped-query heads broadcast):

- products, FlopCounterMode's numbers: forward ``Q K^T`` and ``P V``, ``2 S (d_qk + d_v)``;
  backward recomputes ``Q K^T`` and computes ``dP = dO V^T``, ``dV = P^T dO``, ``dQ = dS K``,
  ``dK = dS^T Q``: ``2 S (3 d_qk + 2 d_v)``;
- per score, on top: forward :data:`SCORE_FORWARD` (the scale and the softmax), +1 for an
  added float mask, +2 with dropout; backward :data:`SCORE_BACKWARD` (the softmax's and the
  scale's gradients), +2 with dropout. A boolean mask or causal masking selects: 0.

Dense (the default) counts every score, S = batch x query heads x s_q x s_k, whatever the mask.
``scaled_dot_product_attention`` itself is charged as one call on every backend
(:mod:`dispatchcount.sdpa`), its backward by the rule of :data:`SDPA_BACKWARD`; the kernels below
are charged the same way when they are called directly. Kernels taking ``(batch, seq, heads,
dim)`` layouts or packed variable-length batches (``cu_seqlens``) are read as one problem per
sequence. ``attention_effective`` builds the formulas of ``FlopMode(attention="effective")`` from
the same readers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from torch._higher_order_ops.flex_attention import flex_attention, flex_attention_backward

from dispatchcount.formulas._helpers import (
    arg_reader,
    prod,
    attention_backward_macs,
    attention_macs,
    has_data,
    macs_to_flops,
)
from dispatchcount.registry import register_formula
from dispatchcount.sdpa import SDPA_BACKWARD

__all__ = [
    "SCORE_FORWARD",
    "SCORE_BACKWARD",
    "SDPA_BACKWARD",
    "AttentionCall",
    "Segment",
    "KERNELS",
    "attention_flops",
    "attention_backward_flops",
    "call_reader",
    "attention_cost",
    "flex_call",
    "multi_head_attention_flops",
    "transposed_is_strided",
]

aten = torch.ops.aten

Shape = Sequence[int]

SCORE_FORWARD = 6   # scale 1; softmax 5: max, subtract, exp, sum, divide (reduction.py's _softmax)
SCORE_BACKWARD = 5  # softmax backward 4: y (g - sum(g y)) (reduction.py's _softmax_backward_data); scale 1
ADDED_MASK = 1      # scores + mask, forward
DROPOUT = 2         # x * keep * 1/(1-p), forward and backward (pointwise.py's native_dropout)

TOP_LEFT, BOTTOM_RIGHT = "top_left", "bottom_right"

def attention_flops(q: Shape, k: Shape, v: Shape) -> int:
    """Forward product FLOPs for q (b, h_q, s_q, d), k (b, h_kv, s_k, d), v (b, h_kv, s_k, d_v)."""
    return 2 * attention_macs(q, k, v)


def attention_backward_flops(q: Shape, k: Shape, v: Shape) -> int:
    """Backward product FLOPs: recompute Q K^T, then dP, dV (d_v each) and dQ, dK (d_qk each)."""
    return 2 * attention_backward_macs(q, k, v)


# -- what one attention call computes ---------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """``batch x heads`` attention problems of ``s_q`` queries against ``s_k`` keys."""

    batch: int
    heads: int
    s_q: int
    s_k: int

    @property
    def scores(self) -> int:
        return self.batch * self.heads * self.s_q * self.s_k


@dataclass(frozen=True)
class AttentionCall:
    """One attention call, read from a kernel's arguments.

    ``mask``: the attention mask or bias as given (boolean: True keeps the pair; float: added to
    the scores, -inf drops the pair), broadcastable to (batch, heads, s_q, s_k); None for packed
    batches. ``diagonal``: None (no structure), ``"top_left"`` (query i's diagonal key is j = i,
    PyTorch's ``is_causal``) or ``"bottom_right"`` (j = i + s_k - s_q, FlashAttention-2's);
    ``window``: how many keys left and right of that diagonal are seen (None: unbounded), so a
    causal call has ``window=(None, 0)``, FlashAttention's sliding window ``(left, right)``.
    """

    segments: tuple[Segment, ...]
    d: int
    d_v: int
    dtype: torch.dtype
    mask: Optional[torch.Tensor] = None
    diagonal: Optional[str] = None
    window: tuple[Optional[int], Optional[int]] = (None, None)
    dropout: bool = False
    packed_without_data: bool = False  # packed lengths unknown (meta): every sequence max long

    @property
    def scores(self) -> int:
        """Every (query, key) score of every query head: the dense count."""
        return sum(s.scores for s in self.segments)


def attention_cost(call: AttentionCall, scores: int, backward: bool, convention: str = "flop") -> int:
    """The cost of ``scores`` computed scores of ``call``: products and per-score work (FLOPs),
    or under ``convention="fvcore"`` the products' multiply-adds only."""
    if not (call.dtype.is_floating_point or call.dtype.is_complex):
        return 0
    macs = scores * ((3 * call.d + 2 * call.d_v) if backward else (call.d + call.d_v))
    if convention == "fvcore":
        return macs
    per_score = SCORE_BACKWARD if backward else SCORE_FORWARD
    if not backward and call.mask is not None and call.mask.dtype.is_floating_point:
        per_score += ADDED_MASK
    if call.dropout:
        per_score += DROPOUT
    return macs_to_flops(macs, call.dtype) + per_score * scores


# -- reading the kernels' arguments -----------------------------------------------------------

# layout of q/k/v ("bhsd": (batch, heads, seq, dim); "bshd": (batch, seq, heads, dim), packed by
# cu_seqlens when given; "cudnn": bhsd unless packed), the mask argument, causal semantics.
KERNELS: dict[str, tuple[str, Optional[str], Optional[str]]] = {
    "scaled_dot_product_attention": ("bhsd", "attn_mask", TOP_LEFT),
    "scaled_dot_product_attention_backward": ("bhsd", "attn_mask", TOP_LEFT),
    "_scaled_dot_product_flash_attention": ("bhsd", None, TOP_LEFT),
    "_scaled_dot_product_flash_attention_backward": ("bhsd", None, TOP_LEFT),
    "_scaled_dot_product_flash_attention_for_cpu": ("bhsd", "attn_mask", TOP_LEFT),
    "_scaled_dot_product_flash_attention_for_cpu_backward": ("bhsd", "attn_mask", TOP_LEFT),
    "_scaled_dot_product_efficient_attention": ("bhsd", "attn_bias", TOP_LEFT),
    "_scaled_dot_product_efficient_attention_backward": ("bhsd", "attn_bias", TOP_LEFT),
    "_scaled_dot_product_cudnn_attention": ("bhsd", "attn_bias", TOP_LEFT),
    "_scaled_dot_product_cudnn_attention_backward": ("bhsd", "attn_bias", TOP_LEFT),
    "_scaled_dot_product_fused_attention_overrideable": ("bhsd", "attn_bias", TOP_LEFT),
    "_scaled_dot_product_fused_attention_overrideable_backward": ("bhsd", "attn_bias", TOP_LEFT),
    "_scaled_dot_product_attention_math_for_mps": ("bhsd", "attn_mask", TOP_LEFT),
    "_triton_scaled_dot_attention": ("bhsd", None, None),
    "_flash_attention_forward": ("bshd", None, BOTTOM_RIGHT),
    "_flash_attention_forward_no_dropout_inplace": ("bshd", None, BOTTOM_RIGHT),
    "_flash_attention_backward": ("bshd", None, BOTTOM_RIGHT),
    "_efficient_attention_forward": ("bshd", "bias", "custom_mask_type"),
    "_efficient_attention_backward": ("bshd", "bias", "custom_mask_type"),
    "_cudnn_attention_forward": ("cudnn", "attn_bias", TOP_LEFT),
    "_cudnn_attention_backward": ("cudnn", "attn_bias", TOP_LEFT),
}


def _reader_of(op: Any, *names: str) -> Callable[[tuple, dict], Any]:
    for name in names:
        if any(a.name == name for a in op._schema.arguments):
            return arg_reader(op, name)
    return lambda args, kwargs: None


def _lengths(offsets: torch.Tensor, max_len: int) -> list[int]:
    # Fake and meta tensors have no data: every sequence is assumed max_len long.
    if not has_data(offsets):
        return [int(max_len)] * (offsets.shape[0] - 1)
    return (offsets[1:] - offsets[:-1]).tolist()


def _window_size(size: Optional[int]) -> Optional[int]:
    return None if size is None or size < 0 else int(size)  # -1: unbounded


def call_reader(op: Any) -> Callable[[tuple, dict], AttentionCall]:
    """A reader ``read(args, kwargs) -> AttentionCall`` for attention kernel ``op``, built once
    from its schema."""
    layout, mask_name, causal_kind = KERNELS[op._schema.name.split("::", 1)[-1]]
    query = _reader_of(op, "query", "q")
    key = _reader_of(op, "key", "k")
    value = _reader_of(op, "value", "v")
    mask = _reader_of(op, mask_name) if mask_name else (lambda args, kwargs: None)
    dropout = _reader_of(op, "dropout_p")
    is_causal = _reader_of(op, "is_causal")
    mask_type = _reader_of(op, "custom_mask_type")
    cum_q, cum_k = _reader_of(op, "cum_seq_q", "cu_seqlens_q"), _reader_of(op, "cum_seq_k", "cu_seqlens_k")
    max_q, max_k = _reader_of(op, "max_q", "max_seqlen_q"), _reader_of(op, "max_k", "max_seqlen_k")
    window_left, window_right = _reader_of(op, "window_size_left"), _reader_of(op, "window_size_right")

    def read(args: tuple, kwargs: dict) -> AttentionCall:
        q, k, v = query(args, kwargs), key(args, kwargs), value(args, kwargs)
        offsets_q = cum_q(args, kwargs) if layout != "bhsd" else None
        if offsets_q is not None and offsets_q.numel() == 0:
            offsets_q = None
        packed_without_data = False
        if layout == "bhsd" or (layout == "cudnn" and offsets_q is None):
            *batch, s_q, d = q.shape  # (..., heads, s_q, d): any leading dims
            heads = batch[-1] if batch else 1
            segments: tuple[Segment, ...] = (Segment(prod(batch[:-1]), heads, s_q, k.shape[-2]),)
            d_v = v.shape[-1]
        elif offsets_q is None:
            b, s_q, h_q, d = q.shape
            segments = (Segment(b, h_q, s_q, k.shape[1]),)
            d_v = v.shape[-1]
        else:  # packed: q ([1,] total_q, h_q, d), k/v ([1,] total_k, h_kv, d)
            h_q, d = q.shape[-2:]
            d_v = v.shape[-1]
            offsets_k = cum_k(args, kwargs)
            lengths_q = _lengths(offsets_q, max_q(args, kwargs))
            lengths_k = _lengths(offsets_k, max_k(args, kwargs))
            packed_without_data = not (has_data(offsets_q) and has_data(offsets_k))
            segments = tuple(Segment(1, h_q, sq, sk) for sq, sk in zip(lengths_q, lengths_k))
        if causal_kind == "custom_mask_type":
            diagonal = {1: TOP_LEFT, 2: BOTTOM_RIGHT}.get(int(mask_type(args, kwargs) or 0))
        else:
            diagonal = causal_kind if is_causal(args, kwargs) else None
        left, right = _window_size(window_left(args, kwargs)), _window_size(window_right(args, kwargs))
        if diagonal is not None:
            right = 0
        elif left is not None or right is not None:
            diagonal = BOTTOM_RIGHT  # FlashAttention aligns its sliding window bottom-right
        return AttentionCall(
            segments=segments,
            d=int(d),
            d_v=int(d_v),
            dtype=q.dtype,
            mask=mask(args, kwargs) if offsets_q is None else None,
            diagonal=diagonal,
            window=(left, right),
            dropout=bool(dropout(args, kwargs) or 0.0),
            packed_without_data=packed_without_data,
        )

    return read


def _dense_formula(op: Any, backward: bool) -> Callable[..., int]:
    read = call_reader(op)

    def attention_dense_flops(*args: Any, out: Any = None, **kwargs: Any) -> int:
        call = read(args, kwargs)
        return attention_cost(call, call.scores, backward)

    attention_dense_flops.__qualname__ = f"attention_dense_flops[{op}]"  # what explain() names
    return attention_dense_flops


def _register_kernels() -> None:
    for name in KERNELS:
        packet = getattr(aten, name, None) if name != "scaled_dot_product_attention_backward" else None
        if name == "scaled_dot_product_attention_backward":
            overloads = [SDPA_BACKWARD]
        elif packet is None:
            continue  # not in this PyTorch build
        else:
            overloads = [getattr(packet, o) for o in packet.overloads()]
        for op in overloads:
            register_formula(op)(_dense_formula(op, backward="backward" in name))


_register_kernels()


# -- whole multi-head attention blocks (nn.MultiheadAttention's inference fast path) -------


def multi_head_attention_flops(batch: int, seq: int, embed: int, heads: int, dtype: torch.dtype,
                               need_weights: bool = False, average_weights: bool = True,
                               masked: bool = False, bias_added: bool = True) -> int:
    """nn.MultiheadAttention on (batch, seq, embed), self-attention, batch first, as its slow path
    (``F.multi_head_attention_forward``, what runs on meta or in training) is counted.

    The slow path transposes its input to (seq, batch, embed). Where that view is not
    contiguous (``bias_added``), the packed in-projection runs as a product plus a bias add (1
    per element), else as one ``addmm`` (bias folded, not counted). Attention is the sdpa call,
    or without sdpa (``need_weights``) the query scaling, two ``bmm``, a softmax (5 per score)
    and, to average the weights over heads, a mean; the out-projection is an ``addmm``.
    """
    tokens, head_dim = batch * seq, embed // heads
    flops = macs_to_flops(4 * tokens * embed * embed, dtype)  # q, k, v and out projections
    if bias_added:
        flops += 3 * tokens * embed  # the in-projection's bias add
    scores = batch * heads * seq * seq
    if need_weights:
        flops += tokens * embed + macs_to_flops(2 * scores * head_dim, dtype) + 5 * scores
        if average_weights:
            flops += scores + batch * seq * seq
    else:
        call = AttentionCall((Segment(batch, heads, seq, seq),), head_dim, head_dim, dtype)
        flops += attention_cost(call, scores, backward=False) + (ADDED_MASK * scores if masked else 0)
    return flops


@register_formula([aten._native_multi_head_attention, aten._triton_multi_head_attention])
def native_multi_head_attention_flop(query, key, value, embed_dim, num_head, qkv_weight, qkv_bias, proj_weight,
                                     proj_bias, mask=None, need_weights=True, average_attn_weights=True,
                                     *args, out=None, **kwargs) -> int:
    """The fast path, counted as the slow path it replaces (the same program on every device)."""
    b, s, e = query.shape if query.dim() == 3 else (1, *query.shape)
    return multi_head_attention_flops(b, s, e, num_head, query.dtype, bool(need_weights),
                                      bool(average_attn_weights), masked=mask is not None,
                                      bias_added=transposed_is_strided(query))


def transposed_is_strided(x: torch.Tensor) -> bool:
    """Whether the (seq, batch, embed) view of a batch-first ``x`` is not contiguous (then
    ``F.linear`` on it adds its bias as an op of its own)."""
    return x.dim() == 3 and not x.transpose(0, 1).is_contiguous()


# -- flex attention (a higher-order op) --------------------------------------------------------


def flex_call(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> AttentionCall:
    """Flex attention's q (b, h_q, s_q, d), k (b, h_kv, s_k, d), v (b, h_kv, s_k, d_v) as one call
    (its score_mod is not counted: it is user code)."""
    b, h_q, s_q, d = query.shape
    return AttentionCall((Segment(b, h_q, s_q, key.shape[-2]),), d, value.shape[-1], query.dtype)


@register_formula(flex_attention)
def flex_attention_flop(query, key, value, *args, out=None, **kwargs) -> int:
    call = flex_call(query, key, value)
    return attention_cost(call, call.scores, backward=False)


@register_formula(flex_attention_backward)
def flex_attention_backward_flop(query, key, value, *args, out=None, **kwargs) -> int:
    call = flex_call(query, key, value)
    return attention_cost(call, call.scores, backward=True)
