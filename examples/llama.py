"""A compact Llama-style decoder (RMSNorm, rotary attention, SwiGLU MLP) for counting FLOPs.

``llama_7b()`` has Llama-7B's shapes (hidden 4096, 32 layers, 32 heads, MLP 11008, vocabulary
32000). Build it on the meta device to count it without allocating memory:

    python -m dispatchcount examples.llama:llama_7b --input-shape 1,2048 --input-dtype int64 \
        --device meta

``model(tokens, cache)`` with a :class:`KVCache` decodes incrementally: the call appends the
tokens' keys and values to the cache; each new token attends to the cache and, causally, to the
new tokens (a single decoded token: no mask at all).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class KVCache:
    """Every layer's keys and values so far, (batch, heads, tokens, head_dim) each."""

    def __init__(self, layers: int) -> None:
        self.keys: list[Optional[torch.Tensor]] = [None] * layers
        self.values: list[Optional[torch.Tensor]] = [None] * layers

    def __len__(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys[layer] is not None:
            k, v = torch.cat((self.keys[layer], k), dim=2), torch.cat((self.values[layer], v), dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: Optional[KVCache] = None, layer: int = 0, causal: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = (p(x).view(b, s, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        if causal is None:  # no cache before these tokens: plain causal attention
            y = F.scaled_dot_product_attention(q, k, v, is_causal=s > 1)
        else:  # after a cache: token i sees the cache and the new tokens up to itself
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=causal)
        return self.o_proj(y.transpose(1, 2).reshape(b, s, d))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(dim)
        self.self_attn = Attention(dim, heads)
        self.post_attention_layernorm = RMSNorm(dim)
        self.mlp = MLP(dim, hidden)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: Optional[KVCache] = None, layer: int = 0, causal: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, layer, causal)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    def __init__(self, vocab: int, dim: int, layers: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.head_dim = dim // heads
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, hidden) for _ in range(layers))
        self.norm = RMSNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens: torch.Tensor, cache: Optional[KVCache] = None) -> torch.Tensor:
        s = tokens.shape[1]
        start = len(cache) if cache is not None else 0
        inv_freq = 1.0 / (10000 ** (torch.arange(0, self.head_dim, 2, device=tokens.device) / self.head_dim))
        positions = torch.arange(start, start + s, device=tokens.device, dtype=inv_freq.dtype)
        angles = torch.outer(positions, inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        cos, sin = angles.cos(), angles.sin()
        x = self.embed_tokens(tokens)
        causal = None
        if start and s > 1:  # new tokens after a cache: a bottom-right causal mask
            causal = torch.ones(s, start + s, dtype=torch.bool, device=tokens.device).tril(start)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, cache, i, causal)
        return self.lm_head(self.norm(x))


def llama_7b() -> Llama:
    """Llama-7B's shapes: 6.74B parameters."""
    return Llama(vocab=32000, dim=4096, layers=32, heads=32, hidden=11008)


def llama_tiny() -> Llama:
    """A small model with the same structure, for tests and quick runs."""
    return Llama(vocab=128, dim=32, layers=2, heads=4, hidden=64)
