"""Count a small GPT-style model, forward and backward, in both conventions.

Run from the repository root:  python examples/count_transformer.py

What it shows:
- the module table at depth 3, forward and backward FLOPs apart, in the "flop" convention
  (one multiply-add = 2 FLOPs; matmul/attention equal torch.utils.flop_counter.FlopCounterMode)
  and in the "fvcore" convention (one multiply-add = 1, elementwise ops free);
- the weight-tied output head (``F.linear(x, self.tok_emb.weight)``) is charged to the module
  that ran it (the root), not to the embedding that owns the weight;
- the matmul FLOPs equal the by-hand count 2 * tokens * (weights of every Linear and the head),
  and attention (charged as one ``aten.scaled_dot_product_attention`` call on every backend)
  equals its two matmuls, 4 * batch * heads * T^2 * head_dim, plus 8 FLOPs per score (scale and
  softmax 6, dropout 2);
- no op is unsupported.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dispatchcount import FlopMode  # noqa: E402


@dataclass
class GPTConfig:
    vocab: int = 512
    context: int = 64
    dim: int = 128
    heads: int = 4
    layers: int = 2
    mlp_ratio: int = 4
    dropout: float = 0.1


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.heads, self.dropout = cfg.heads, cfg.dropout
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2)
                   for t in self.qkv(x).split(C, dim=2))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.dim)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.dim)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.dim, cfg.mlp_ratio * cfg.dim), nn.GELU(),
            nn.Linear(cfg.mlp_ratio * cfg.dim, cfg.dim), nn.Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Token + position embeddings, pre-norm blocks, final LayerNorm, head tied to the embedding."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab, cfg.dim)
        self.pos_emb = nn.Embedding(cfg.context, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.dim)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(T, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return F.linear(self.ln_f(x), self.tok_emb.weight)  # weight-tied head, run by the root


def matmul_flops_by_hand(cfg: GPTConfig, batch: int, T: int) -> tuple[int, int]:
    """Forward (linear, attention) FLOPs, one multiply-add = 2: every Linear (and the tied head)
    costs 2 * tokens * in * out; attention's two matmuls (q k^T, then p v) 2 * 2 * B * h * T^2 * hd,
    and 8 per score: the scale, the softmax (6) and dropout (2, in training)."""
    tokens, d, hidden = batch * T, cfg.dim, cfg.mlp_ratio * cfg.dim
    per_layer = d * 3 * d + d * d + d * hidden + hidden * d
    linear = 2 * tokens * (cfg.layers * per_layer + d * cfg.vocab)
    scores = cfg.layers * batch * cfg.heads * T * T
    attention = 4 * scores * (d // cfg.heads) + 8 * scores
    return linear, attention


def main() -> None:
    torch.manual_seed(0)
    cfg = GPTConfig()
    batch, T = 2, cfg.context
    model = GPT(cfg).train()
    idx = torch.randint(0, cfg.vocab, (batch, T))
    targets = torch.randint(0, cfg.vocab, (batch, T))

    print(f"GPT: {cfg}")
    print(f"params: {sum(p.numel() for p in model.parameters()):,}; batch {batch} x {T} tokens")

    results = {}
    for convention in ("flop", "fvcore"):
        with FlopMode(model, convention=convention) as fm:
            logits = model(idx)
            loss = F.cross_entropy(logits.view(-1, cfg.vocab), targets.view(-1))
            loss.backward()
        model.zero_grad(set_to_none=True)
        results[convention] = fm
        print(f"\n== convention={convention!r}: forward + backward of one training step ==")
        print(fm.table(depth=3))
        print(f"forward:  {fm.total(phase='forward'):,}")
        print(f"backward: {fm.total(phase='backward'):,}")
        print(f"total:    {fm.total():,}")
        print(f"unsupported ops: {fm.unsupported_ops() or 'none'}")

    fm = results["flop"]
    linear, attention = matmul_flops_by_hand(cfg, batch, T)
    forward_ops = fm.by_operator(phase="forward")
    matmul_ops = ("aten.mm", "aten.addmm")  # what Linear and F.linear dispatch to
    counted_linear = sum(forward_ops.get(op, 0) for op in matmul_ops)
    # With dropout in training, CPU attention runs its math path (bmm, softmax, dropout, bmm):
    # the call is charged as one all the same.
    counted_attention = forward_ops["aten.scaled_dot_product_attention"]
    print("\n== checks (convention='flop', forward) ==")
    print(f"linear + tied head matmuls: counted {counted_linear:,}, by hand {linear:,}")
    print(f"causal attention:           counted {counted_attention:,}, by hand {attention:,}")
    head = 2 * batch * T * cfg.dim * cfg.vocab
    root_mm = sum(own_ops(fm, "", phase="forward").get(op, 0) for op in matmul_ops)
    print(f"tied head F.linear(x, tok_emb.weight), charged to the root itself: {root_mm:,} "
          f"(2 * tokens * dim * vocab = {head:,}); to tok_emb: {fm.by_module(phase='forward')['tok_emb']:,}")


def own_ops(fm: FlopMode, name: str, phase: str | None = None) -> dict[str, int]:
    """{operator: FLOPs} of the ops module ``name`` ran itself, outside any of its children."""
    return fm.by_module_and_operator(phase=phase, inclusive=False)[name]


if __name__ == "__main__":
    main()
