"""``FlopMode(attention="effective")``: attention charged only for the (query, key) pairs it keeps.

The dense rule (``attention.py``) charges every score of every query head. The effective rule
charges the same products and per-score work, but only for the pairs that a mask keeps, forward
and backward:

- ``is_causal`` (PyTorch's top-left diagonal: query i sees keys j <= i), FlashAttention's
  bottom-right diagonal (``_flash_attention_forward``, ``custom_mask_type=2``: j <= i + s_k - s_q)
  and its sliding windows (``window_size_left/right``), in closed form;
- packed variable-length batches (``cu_seqlens``): each sequence by its own lengths;
- boolean masks (True keeps the pair) and additive float masks (-inf drops it) on tensors with
  data: the mask is read, one reduction and one host synchronisation per distinct mask (the
  count is remembered for the mask object until it changes). Masks without data (meta,
  FakeTensor) are counted dense and reported in ``Counts.notes``;
- flex_attention's BlockMask: the blocks it computes (partial and full blocks, each a whole
  Q_BLOCK x KV_BLOCK tile, clipped at the sequence ends).

These formulas are a per-counter overlay (``RuleTable.overlay``): the registered, dense rules
stay untouched. See docs/conventions.md, "Effective attention".
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Optional

import torch
from torch._higher_order_ops.flex_attention import flex_attention, flex_attention_backward

from dispatchcount.formulas._helpers import has_data
from dispatchcount.formulas.attention import (
    BOTTOM_RIGHT,
    KERNELS,
    AttentionCall,
    attention_cost,
    call_reader,
    flex_call,
)
from dispatchcount.problems import Notes
from dispatchcount.sdpa import SDPA_BACKWARD

__all__ = ["effective_formulas", "diagonal_pairs", "mask_pairs", "block_mask_pairs"]

aten = torch.ops.aten


# -- pairs kept by a diagonal and a window, in closed form -----------------------------------


def _sum_clamped(n: int, c: int, lo: int, hi: int) -> int:
    """sum_{i=0}^{n-1} min(max(i + c, lo), hi), for lo <= hi."""
    below = min(max(lo - c, 0), n)            # i + c < lo
    above = min(max(n - (hi - c + 1), 0), n)  # i + c > hi
    middle = n - below - above
    first = below + c
    return below * lo + middle * first + middle * (middle - 1) // 2 + above * hi


def diagonal_pairs(s_q: int, s_k: int, diagonal: Optional[str], window: tuple[Optional[int], Optional[int]] = (None, None)) -> int:
    """Pairs (i, j) with ``i + offset - left <= j <= i + offset + right``, 0 <= j < s_k, for the
    s_q queries of one head; offset 0 (``"top_left"``) or s_k - s_q (``"bottom_right"``); None
    bounds are unbounded; no diagonal: every pair."""
    if diagonal is None or s_q <= 0 or s_k <= 0:
        return max(s_q, 0) * max(s_k, 0)
    offset = s_k - s_q if diagonal == BOTTOM_RIGHT else 0
    left, right = window
    # last key seen by query i, clamped to [-1, s_k - 1]; first key, clamped to [0, s_k]
    last = (s_k - 1) * s_q if right is None else _sum_clamped(s_q, offset + right, -1, s_k - 1)
    first = 0 if left is None else _sum_clamped(s_q, offset - left, 0, s_k)
    return last - first + s_q


def _structure(s_q: int, s_k: int, diagonal: Optional[str], window: tuple, device: Any) -> Optional[torch.Tensor]:
    """The (s_q, s_k) boolean matrix of pairs the diagonal and window keep, or None for all."""
    if diagonal is None:
        return None
    i = torch.arange(s_q, device=device).unsqueeze(1)
    j = torch.arange(s_k, device=device).unsqueeze(0)
    diff = j - i - (s_k - s_q if diagonal == BOTTOM_RIGHT else 0)
    keep = torch.ones(s_q, s_k, dtype=torch.bool, device=device)
    if window[1] is not None:
        keep &= diff <= window[1]
    if window[0] is not None:
        keep &= diff >= -window[0]
    return keep


def mask_pairs(mask: torch.Tensor, batch: int, heads: int, s_q: int, s_k: int,
               diagonal: Optional[str] = None, window: tuple = (None, None)) -> int:
    """Pairs kept by ``mask`` (broadcast to (batch, heads, s_q, s_k); bool: True keeps, float:
    -inf drops) and by the diagonal/window, summed over batch and heads. Reads the mask."""
    keep = mask if mask.dtype == torch.bool else mask != float("-inf")
    structure = _structure(s_q, s_k, diagonal, window, keep.device)
    if structure is not None:
        keep = keep & structure
    return int(keep.sum()) * (batch * heads * s_q * s_k // keep.numel()) if keep.numel() else 0


class _MaskCounts:
    """Kept-pair counts of masks already read, by mask object and version (held weakly)."""

    def __init__(self) -> None:
        self.known: dict[int, tuple[Any, int, tuple, int]] = {}

    def count(self, mask: torch.Tensor, key: tuple) -> int:
        found = self.known.get(id(mask))
        if found is not None and found[0]() is mask and found[1] == mask._version and found[2] == key:
            return found[3]
        pairs = mask_pairs(mask, *key)
        if len(self.known) > 64:
            self.known.clear()
        self.known[id(mask)] = (weakref.ref(mask), mask._version, key, pairs)
        return pairs


def _kept_pairs(call: AttentionCall, op: str, notes: Notes, masks: _MaskCounts) -> int:
    if call.packed_without_data:
        notes.add(f"{op}: packed sequence lengths without data (meta): every sequence counted at the maximum length")
    mask = call.mask
    if mask is not None and not has_data(mask):
        notes.add(f"{op}: attention mask without data (meta or fake tensor): its pairs counted dense")
        mask = None
    total = 0
    for segment in call.segments:
        if mask is not None:
            key = (segment.batch, segment.heads, segment.s_q, segment.s_k, call.diagonal, call.window)
            total += masks.count(mask, key)
        else:
            per_head = diagonal_pairs(segment.s_q, segment.s_k, call.diagonal, call.window)
            total += segment.batch * segment.heads * per_head
    return total


# -- flex_attention's BlockMask ------------------------------------------------------------------


def _block_mask_parts(block_mask: tuple) -> Optional[tuple]:
    """(kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices, Q_BLOCK, KV_BLOCK) of
    the HOP's block-mask tuple (``BlockMask.as_tuple()``: sequence lengths first in recent
    PyTorch, the block sizes and mask_mod last)."""
    if not isinstance(block_mask, (tuple, list)) or len(block_mask) < 7:
        return None
    start = 2 if isinstance(block_mask[0], int) else 0
    kv_num, kv_indices, full_num, full_indices = block_mask[start:start + 4]
    q_block, kv_block = block_mask[-3], block_mask[-2]
    if not isinstance(kv_num, torch.Tensor) or not isinstance(q_block, int):
        return None
    return kv_num, kv_indices, full_num, full_indices, q_block, kv_block


def block_mask_pairs(block_mask: tuple, batch: int, heads: int, s_q: int, s_k: int) -> Optional[int]:
    """Pairs in the blocks flex attention computes (partial and full KV blocks of each Q block,
    whole tiles clipped at the sequence ends), over batch and heads; None if unreadable."""
    parts = _block_mask_parts(block_mask)
    if parts is None:
        return None
    kv_num, kv_indices, full_num, full_indices, q_block, kv_block = parts
    tensors = [t for t in (kv_num, kv_indices, full_num, full_indices) if t is not None]
    if not all(has_data(t) for t in tensors):
        return None
    total = 0
    for num, indices in ((kv_num, kv_indices), (full_num, full_indices)):
        if num is None:
            continue
        rows = torch.clamp(s_q - torch.arange(num.shape[-1], device=num.device) * q_block, 0, q_block)
        cols = torch.clamp(s_k - indices.long() * kv_block, 0, kv_block)  # (..., q_blocks, slots)
        used = torch.arange(indices.shape[-1], device=num.device) < num.unsqueeze(-1)
        per_q_block = (cols * used).sum(-1)  # (..., q_blocks)
        pairs = int((per_q_block * rows).sum())
        total += pairs * (batch * heads // max(num[..., 0].numel(), 1))  # broadcast batch/heads
    return total


def _flex_effective(convention: str, backward: bool, notes: Notes) -> Callable[..., int]:
    block_index = 9 if backward else 4
    name = "flex_attention_backward" if backward else "flex_attention"

    def flex_effective_flops(query, key, value, *args, out=None, **kwargs) -> int:
        call = flex_call(query, key, value)
        offset = block_index - 3
        block_mask = args[offset] if len(args) > offset else kwargs.get("block_mask")
        segment = call.segments[0]
        pairs = block_mask_pairs(block_mask, segment.batch, segment.heads, segment.s_q, segment.s_k)
        if pairs is None:
            notes.add(f"{name}: BlockMask without data (meta or fake tensor): counted dense")
            pairs = call.scores
        return attention_cost(call, pairs, backward, convention)

    return flex_effective_flops


# -- the overlay ---------------------------------------------------------------------------------


def _effective(op: Any, backward: bool, convention: str, notes: Notes, masks: _MaskCounts) -> Callable[..., int]:
    read = call_reader(op)
    name = "aten.scaled_dot_product_attention (backward)" if op is SDPA_BACKWARD else str(op._overloadpacket)

    def attention_effective_flops(*args: Any, out: Any = None, **kwargs: Any) -> int:
        call = read(args, kwargs)
        return attention_cost(call, _kept_pairs(call, name, notes, masks), backward, convention)

    return attention_effective_flops


def effective_formulas(convention: str, notes: Notes) -> dict[Any, Callable[..., int]]:
    """{op: formula} charging attention kernels, sdpa calls and flex attention for the pairs
    they keep, in ``convention``'s unit; estimates are reported to ``notes``."""
    masks = _MaskCounts()
    formulas: dict[Any, Callable[..., int]] = {}
    for name in KERNELS:
        if name == "scaled_dot_product_attention_backward":
            overloads = [SDPA_BACKWARD]
        else:
            packet = getattr(aten, name, None)
            overloads = [getattr(packet, o) for o in packet.overloads()] if packet is not None else []
        for op in overloads:
            formulas[op] = _effective(op, "backward" in name, convention, notes, masks)
    formulas[flex_attention] = _flex_effective(convention, False, notes)
    formulas[flex_attention_backward] = _flex_effective(convention, True, notes)
    return formulas
