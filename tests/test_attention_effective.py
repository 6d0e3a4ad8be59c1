"""FlopMode(attention="effective"): only the (query, key) pairs a mask keeps, counted by hand.

Per kept pair, with head dims d = d_v = 8: forward 2 (d + d_v) + 6 = 38 FLOPs (Q K^T and P V,
then scale and softmax), backward 2 (3 d + 2 d_v) + 5 = 85 (five products, the softmax's and the
scale's gradients). Under convention="fvcore": d + d_v = 16 and 3 d + 2 d_v = 40 multiply-adds.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from dispatchcount import FlopMode
from dispatchcount.formulas.attention_effective import (
    block_mask_pairs,
    diagonal_pairs,
    effective_formulas,
)
from dispatchcount.problems import Notes

aten = torch.ops.aten
SDPA = "aten.scaled_dot_product_attention"
FORWARD, BACKWARD = 2 * (8 + 8) + 6, 2 * (3 * 8 + 2 * 8) + 5


def sdpa_counts(q, k, v, attention="effective", convention="flop", **kwargs):
    with FlopMode(attention=attention, convention=convention) as fm:
        out = F.scaled_dot_product_attention(q, k, v, **kwargs)
        if out.requires_grad:
            out.sum().backward()
    assert fm.unsupported_ops() == {}
    return fm.by_operator("forward")[SDPA], fm.by_operator("backward").get(SDPA, 0), fm.notes()


def qkv(b, h, s_q, s_k, h_kv=None, grad=True, device="cpu"):
    h_kv = h_kv or h
    q = torch.randn(b, h, s_q, 8, device=device, requires_grad=grad)
    k = torch.randn(b, h_kv, s_k, 8, device=device, requires_grad=grad)
    v = torch.randn(b, h_kv, s_k, 8, device=device, requires_grad=grad)
    return q, k, v


def test_causal_square_keeps_the_lower_triangle_forward_and_backward():
    # batch 2 x 3 heads, 7 tokens: 1 + 2 + ... + 7 = 28 pairs per head
    pairs = 2 * 3 * 28
    assert sdpa_counts(*qkv(2, 3, 7, 7), is_causal=True) == (pairs * FORWARD, pairs * BACKWARD, {})
    dense = 2 * 3 * 7 * 7
    assert sdpa_counts(*qkv(2, 3, 7, 7), attention="dense", is_causal=True)[:2] == (dense * FORWARD, dense * BACKWARD)


def test_is_causal_is_top_left_when_queries_and_keys_differ():
    # PyTorch's is_causal: query i sees keys 0..i. 3 queries, 5 keys: 1 + 2 + 3 = 6 pairs.
    assert sdpa_counts(*qkv(1, 1, 3, 5), is_causal=True)[:2] == (6 * FORWARD, 6 * BACKWARD)
    # 5 queries, 3 keys: 1 + 2 + 3 + 3 + 3 = 12
    assert sdpa_counts(*qkv(1, 1, 5, 3), is_causal=True)[:2] == (12 * FORWARD, 12 * BACKWARD)


def test_causal_lower_right_counts_the_bottom_right_triangle():
    # 3 queries against 5 keys, aligned bottom-right: query i sees keys 0..i+2: 3 + 4 + 5 = 12.
    q, k, v = qkv(2, 2, 3, 5)
    pairs = 2 * 2 * 12
    assert sdpa_counts(q, k, v, attn_mask=causal_lower_right(3, 5)) == (pairs * FORWARD, pairs * BACKWARD, {})


def test_grouped_query_attention_counts_every_query_head():
    # 4 query heads sharing 2 kv heads, causal over 6 tokens: 21 pairs per query head.
    pairs = 1 * 4 * 21
    assert sdpa_counts(*qkv(1, 4, 6, 6, h_kv=2), is_causal=True, enable_gqa=True)[:2] == (pairs * FORWARD, pairs * BACKWARD)


def test_decode_step_with_a_kv_cache():
    # One new query row against 9 cached keys: every key, 9 pairs per head (= dense).
    q, k, v = qkv(2, 3, 1, 9, grad=False)
    assert sdpa_counts(q, k, v)[0] == 2 * 3 * 9 * FORWARD
    # with left padding of 2 keys in the first sequence (a boolean mask): 7 + 9 pairs
    mask = torch.ones(2, 1, 1, 9, dtype=torch.bool)
    mask[0, ..., :2] = False
    assert sdpa_counts(q, k, v, attn_mask=mask)[0] == 3 * (7 + 9) * FORWARD
    # is_causal=True here is top-left: the single query sees key 0 only (PyTorch's semantics)
    assert sdpa_counts(q, k, v, is_causal=True)[0] == 2 * 3 * 1 * FORWARD


def test_boolean_and_additive_masks_are_read():
    q, k, v = qkv(1, 2, 4, 6)
    keep = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    pairs = 2 * (2 + 3 + 4 + 6)  # broadcast over both heads
    assert sdpa_counts(q, k, v, attn_mask=keep) == (pairs * FORWARD, pairs * BACKWARD, {})
    # additive: -inf drops a pair, any finite value (here 0 or -1) keeps it; +1 per score forward
    additive = torch.zeros(4, 6).masked_fill(~keep, float("-inf"))
    additive[3, 0] = -1.0
    q, k, v = qkv(1, 2, 4, 6)
    assert sdpa_counts(q, k, v, attn_mask=additive)[:2] == (pairs * (FORWARD + 1), pairs * BACKWARD)


def test_a_mask_changed_in_place_is_read_again():
    q, k, v = qkv(1, 1, 2, 4, grad=False)
    mask = torch.ones(2, 4, dtype=torch.bool)
    with FlopMode(attention="effective") as fm:
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        mask[:, 3] = False
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert fm.total() == (8 + 6) * FORWARD


def test_masks_without_data_are_counted_dense_and_reported():
    q, k, v = qkv(1, 2, 4, 4, device="meta")
    mask = torch.ones(4, 4, dtype=torch.bool, device="meta")
    forward, backward, notes = sdpa_counts(q, k, v, attn_mask=mask)
    assert (forward, backward) == (2 * 16 * FORWARD, 2 * 16 * BACKWARD)
    message = "attention mask without data (meta or fake tensor): its pairs counted dense"
    assert notes == {f"{SDPA}: {message}": 1, f"{SDPA} (backward): {message}": 1}
    with FlopMode(attention="effective") as fm:
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert fm.to_dict()["notes"] == {f"{SDPA}: {message}": 1}
    assert fm.table().splitlines()[-1] == f"estimated: {SDPA}: {message} (x1)"
    # is_causal needs no data: exact on meta too
    assert sdpa_counts(*qkv(1, 2, 4, 4, device="meta"), is_causal=True) == (2 * 10 * FORWARD, 2 * 10 * BACKWARD, {})


def test_meta_and_cpu_agree_on_causal_models():
    from examples.llama import llama_tiny

    model = llama_tiny()
    tokens = torch.randint(0, 128, (2, 16))
    with FlopMode(model, attention="effective") as real:
        model(tokens).sum().backward()
    with torch.device("meta"):
        meta_model = llama_tiny()
    with FlopMode(meta_model, attention="effective") as meta:
        meta_model(tokens.to("meta")).sum().backward()
    assert meta.by_operator() == real.by_operator()
    # 2 layers x batch 2 x 4 heads x 136 causal pairs of 16 tokens, head dim 8
    pairs = 2 * 2 * 4 * 136
    assert real.by_operator("forward")[SDPA] == pairs * FORWARD
    assert real.by_operator("backward")[SDPA] == pairs * BACKWARD


def test_fvcore_convention_counts_the_kept_pairs_multiply_adds():
    pairs = 2 * 3 * 28
    counts = sdpa_counts(*qkv(2, 3, 7, 7), convention="fvcore", is_causal=True)
    assert counts == (pairs * (8 + 8), pairs * (3 * 8 + 2 * 8), {})


# -- kernels called directly: variable-length flash, efficient attention ------------------------


def effective(op, convention="flop"):
    notes = Notes()
    return effective_formulas(convention, notes)[op], notes


def test_varlen_flash_counts_each_sequence_bottom_right():
    # two packed sequences of 3 and 5 tokens, 2 heads: causal 6 + 15 pairs per head
    q = torch.randn(8, 2, 8)
    cu = torch.tensor([0, 3, 8], dtype=torch.int32)
    formula, notes = effective(aten._flash_attention_forward.default)
    assert formula(q, q, q, cu, cu, 5, 5, 0.0, True, False) == 2 * (6 + 15) * FORWARD
    backward, _ = effective(aten._flash_attention_backward.default)
    assert backward(q, q, q, q, q, q, cu, cu, 5, 5, 0.0, True, q, q) == 2 * (6 + 15) * BACKWARD
    # a sliding window of 2 keys left of the diagonal: 5 tokens see 1 + 2 + 3 + 3 + 3 = 12
    assert formula(q, q, q, cu, cu, 5, 5, 0.0, True, False, window_size_left=2) == 2 * (6 + 12) * FORWARD
    # 3 queries after 5 keys of context in the second sequence (prefix caching), bottom-right:
    # 3 x 3 full pairs... query i sees keys 0..i+2: 3 + 4 + 5 = 12
    cu_k = torch.tensor([0, 3, 8], dtype=torch.int32)
    cu_q = torch.tensor([0, 3, 6], dtype=torch.int32)
    assert formula(q[:6], q, q, cu_q, cu_k, 3, 5, 0.0, True, False) == 2 * (6 + 12) * FORWARD
    assert notes.messages == {}
    # on meta the lengths are unknown: every sequence counted at max_seqlen, and reported
    meta_cu = cu.to("meta")
    qm = q.to("meta")
    assert formula(qm, qm, qm, meta_cu, meta_cu, 5, 5, 0.0, True, False) == 2 * (15 + 15) * FORWARD
    assert list(notes.messages) == ["aten._flash_attention_forward: packed sequence lengths without data (meta): every sequence counted at the maximum length"]


def test_efficient_attention_mask_types():
    # (batch, seq, heads, dim) layout; custom_mask_type 1 = top-left causal, 2 = bottom-right
    q, kv = torch.randn(1, 3, 2, 8), torch.randn(1, 5, 2, 8)
    formula, _ = effective(aten._efficient_attention_forward.default)
    args = (q, kv, kv, None, None, None, None, None, 0.0)
    assert formula(*args, 0) == 2 * 15 * FORWARD
    assert formula(*args, 1) == 2 * (1 + 2 + 3) * FORWARD
    assert formula(*args, 2) == 2 * (3 + 4 + 5) * FORWARD


def test_diagonal_pairs_closed_form_equals_enumeration():
    def enumerate_pairs(s_q, s_k, diagonal, window):
        offset = s_k - s_q if diagonal == "bottom_right" else 0
        kept = 0
        for i in range(s_q):
            for j in range(s_k):
                d = j - i - offset
                kept += (window[1] is None or d <= window[1]) and (window[0] is None or d >= -window[0])
        return kept

    for s_q in range(6):
        for s_k in range(6):
            for diagonal in ("top_left", "bottom_right"):
                for window in ((None, 0), (1, 0), (2, 1), (None, None), (0, None)):
                    assert diagonal_pairs(s_q, s_k, diagonal, window) == enumerate_pairs(s_q, s_k, diagonal, window)


# -- flex_attention's BlockMask ------------------------------------------------------------------


def test_flex_block_mask_counts_the_blocks_it_computes():
    from torch._higher_order_ops.flex_attention import flex_attention
    from torch.nn.attention.flex_attention import create_block_mask

    # causal over 256 tokens in 128 x 128 blocks: Q block 0 computes KV block 0 (partial),
    # Q block 1 computes KV blocks 0 (full) and 1 (partial): 3 tiles of 128 x 128
    block_mask = create_block_mask(lambda b, h, q, kv: q >= kv, 1, 1, 256, 256, device="cpu")
    assert block_mask_pairs(block_mask.as_tuple(), 2, 4, 256, 256) == 2 * 4 * 3 * 128 * 128
    q = torch.empty(2, 4, 256, 8)
    formula, notes = effective(flex_attention)
    assert formula(q, q, q, None, block_mask.as_tuple(), 0.125, {}) == 2 * 4 * 3 * 128 * 128 * FORWARD
    # 200 tokens: the tiles are clipped at the sequence end: 128^2 + 128 * 72 + 72^2 pairs
    short = create_block_mask(lambda b, h, q, kv: q >= kv, 1, 1, 200, 200, device="cpu")
    assert block_mask_pairs(short.as_tuple(), 1, 1, 200, 200) == 128 * 128 + 72 * 128 + 72 * 72
    # a BlockMask on meta cannot be read: dense, reported
    meta_q = q.to("meta")
    meta_mask = tuple(t.to("meta") if isinstance(t, torch.Tensor) else t for t in block_mask.as_tuple())
    assert formula(meta_q, meta_q, meta_q, None, meta_mask, 0.125, {}) == 2 * 4 * 256 * 256 * FORWARD
    assert list(notes.messages) == ["flex_attention: BlockMask without data (meta or fake tensor): counted dense"]


def test_flex_backward_reads_its_block_mask_argument():
    from torch._higher_order_ops.flex_attention import flex_attention_backward
    from torch.nn.attention.flex_attention import create_block_mask

    block_mask = create_block_mask(lambda b, h, q, kv: q >= kv, 1, 1, 256, 256, device="cpu")
    q = torch.empty(1, 1, 256, 8)
    formula, _ = effective(flex_attention_backward)
    args = (q, q, q, q, q, q, None, None, None, block_mask.as_tuple(), 0.125, {})
    assert formula(*args) == 3 * 128 * 128 * BACKWARD


def test_attention_argument_is_checked():
    with pytest.raises(ValueError, match="attention must be 'dense' or 'effective'"):
        FlopMode(attention="causal")
