"""An LLM's FLOPs as counted, beside the formulas people quote, term by term.

Run from the repository root:

    python examples/llm_accounting.py            # Llama-7B shapes, 1 x 2048 tokens, meta device
    python examples/llm_accounting.py --small    # a tiny model of the same structure

A training step (forward, cross-entropy, backward) of ``examples/llama.py``'s Llama on the meta
device is counted and set beside:

- 6 N T (Kaplan et al. 2020, "Scaling Laws for Neural Language Models"; nanoGPT's estimate_mfu):
  2 N FLOPs per token forward, 4 N backward, N every parameter;
- PaLM's 6 N + 12 L H Q T per token (Chowdhery et al. 2022, appendix B): plus attention's
  Q K^T and P V, forward and backward, dense;
- Megatron-LM's 72 B s l h^2 (1 + s / 6h + V / 12lh) per step, 96 B s l h^2 (1 + s / 6h +
  V / 16lh) with activation recomputation (Narayanan et al. 2021, section 5.1), which assumes a
  GPT layer: 12 h^2 weights (a 4h MLP) and a logit layer.

The difference is explained term by term: weight matmuls, the output head, the embedding (a
lookup, which 6 N T charges as a matmul), attention (the flash backward's recomputation of
Q K^T, and the softmax, which PaLM leaves out; causal masking, which ``attention="effective"``
takes into account), the elementwise ops (norms, rotary embeddings, SiLU, residuals, the loss),
and the recomputation of activation checkpointing. Then one decode step with a KV cache of the
whole context beside 2 N.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dispatchcount import FlopMode  # noqa: E402
from dispatchcount.report import human, tabulate  # noqa: E402
from examples.llama import KVCache, Llama  # noqa: E402

SDPA = "aten.scaled_dot_product_attention"


@dataclass(frozen=True)
class Shape:
    layers: int
    dim: int
    heads: int
    mlp: int
    vocab: int
    seq: int
    batch: int

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def tokens(self) -> int:
        return self.batch * self.seq


LLAMA_7B = Shape(layers=32, dim=4096, heads=32, mlp=11008, vocab=32000, seq=2048, batch=1)
SMALL = Shape(layers=2, dim=64, heads=4, mlp=160, vocab=256, seq=32, batch=2)


class Checkpointed(nn.Module):
    """A decoder layer under activation checkpointing: its forward runs again in the backward."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, *args):
        return checkpoint(self.layer, *args, use_reentrant=False)


def build(shape: Shape, checkpointed: bool = False) -> Llama:
    with torch.device("meta"):
        model = Llama(shape.vocab, shape.dim, shape.layers, shape.heads, shape.mlp)
    if checkpointed:
        model.layers = nn.ModuleList(Checkpointed(layer) for layer in model.layers)
    return model


def training_step(shape: Shape, attention: str = "dense", checkpointed: bool = False) -> FlopMode:
    model = build(shape, checkpointed)
    tokens = torch.zeros(shape.batch, shape.seq, dtype=torch.long, device="meta")
    with FlopMode(model, attention=attention) as fm:
        logits = model(tokens)
        F.cross_entropy(logits.view(-1, shape.vocab), tokens.view(-1)).backward()
    return fm


def decode_step(shape: Shape) -> FlopMode:
    """One sequence: the prompt of ``seq`` tokens (section "prefill"), then one token ("decode")."""
    model = build(shape)
    cache = KVCache(shape.layers)
    with torch.no_grad(), FlopMode(model) as fm:
        with fm.section("prefill"):
            model(torch.zeros(1, shape.seq, dtype=torch.long, device="meta"), cache)
        with fm.section("decode"):
            model(torch.zeros(1, 1, dtype=torch.long, device="meta"), cache)
    return fm


def parameters(shape: Shape) -> dict[str, int]:
    d, m, v = shape.dim, shape.mlp, shape.vocab
    weights = shape.layers * (4 * d * d + 3 * d * m)  # q, k, v, o; gate, up, down
    norms = (2 * shape.layers + 1) * d
    return {"weights": weights, "head": v * d, "embedding": v * d, "norms": norms,
            "all": weights + 2 * v * d + norms}


def own(fm: FlopMode, phase=None) -> dict[str, int]:
    """FLOPs by module kind: the layers' linear layers, lm_head, embed_tokens, attention, rest."""
    by_module = fm.by_module(phase)
    own_ops = fm.by_module_and_operator(phase, inclusive=False)
    # the products of the layers' Linear modules (the adds that sum the gradients of an input
    # read by several of them, q/k/v and gate/up, are elementwise work)
    linear = sum(ops.get("aten.mm", 0) for name, ops in own_ops.items() if name.rsplit(".", 1)[-1].endswith("_proj"))
    attention = fm.by_operator(phase).get(SDPA, 0)
    terms = {
        "weight matmuls": linear,
        "lm_head": by_module.get("lm_head", 0),
        "embedding": by_module.get("embed_tokens", 0),
        "attention": attention,
    }
    terms["elementwise, norms, loss"] = fm.total(phase) - sum(terms.values())
    return terms


def g(flops: float) -> str:
    return human(flops) + "FLOP"


def report_training(shape: Shape) -> dict:
    B, T, L, H, Q, d, V = shape.batch, shape.seq, shape.layers, shape.heads, shape.head_dim, shape.dim, shape.vocab
    n = parameters(shape)
    tokens = shape.tokens
    start = time.perf_counter()
    dense = training_step(shape)
    effective = training_step(shape, attention="effective")
    recomputed = training_step(shape, checkpointed=True)
    seconds = time.perf_counter() - start

    print(f"== training step: {shape}, on the meta device ({seconds:.1f} s for three counts) ==")
    print(f"parameters N = {n['all']:,} (layers' weights {n['weights']:,}, lm_head {n['head']:,}, "
          f"embedding {n['embedding']:,}, norms {n['norms']:,})\n")
    counted = dense.total()
    figures = {
        "counted, dense attention": counted,
        "counted, effective attention (causal)": effective.total(),
        "counted, every layer checkpointed": recomputed.total(),
        "6 N T": 6 * n["all"] * tokens,
        "PaLM (6 N + 12 L H Q T) T": (6 * n["all"] + 12 * L * H * Q * T) * tokens,
        "Megatron 72 B s l h^2 (1 + s/6h + V/12lh)": round(72 * B * T * L * d * d * (1 + T / (6 * d) + V / (12 * L * d))),
        "Megatron, recompute, 96 B s l h^2 (1 + s/6h + V/16lh)":
            round(96 * B * T * L * d * d * (1 + T / (6 * d) + V / (16 * L * d))),
    }
    print(tabulate([[k, f"{v:,}", g(v), f"{v / counted:.3f}"] for k, v in figures.items()],
                   ["FLOPs of one step", "exact", "", "/ counted"]))

    terms = own(dense)
    scores = B * L * H * T * T  # (query, key) scores of every head, every layer
    causal = B * L * H * T * (T + 1) // 2
    by_hand = {
        "weight matmuls": 6 * n["weights"] * tokens,
        "lm_head": 6 * n["head"] * tokens,
        "attention": 14 * scores * Q + 11 * scores,
    }
    rows = [
        ("weight matmuls", f"6 tokens x {n['weights']:,}", 6 * n["weights"] * tokens, 6 * n["weights"] * tokens),
        ("lm_head", "6 tokens d V", 6 * n["head"] * tokens, 6 * n["head"] * tokens),
        ("embedding", "a lookup; backward adds", 6 * n["embedding"] * tokens, 6 * n["embedding"] * tokens),
        ("attention", "14 S Q + 11 S", 0, 12 * L * H * Q * T * tokens),
        ("elementwise, norms, loss", "", 6 * n["norms"] * tokens, 6 * n["norms"] * tokens),
    ]
    table = []
    for name, how, in_kaplan, in_palm in rows:
        value = terms[name]
        check = by_hand.get(name)
        table.append([name, f"{value:,}", how, "" if check is None else ("yes" if check == value else f"NO: {check:,}"),
                      f"{in_kaplan:,}", f"{in_palm:,}"])
    table.append(["total", f"{counted:,}", "", "", f"{figures['6 N T']:,}", f"{figures['PaLM (6 N + 12 L H Q T) T']:,}"])
    print("\nterm by term (S = B L H T^2 = {:,} scores, Q = {} the head dim):".format(scores, Q))
    print(tabulate(table, ["term", "counted", "by hand", "= by hand", "in 6 N T", "in PaLM"]))

    print("\nwhy they differ:")
    print(f"- attention: 6 N T has none. PaLM counts 12 S Q = {g(12 * scores * Q)} (Q K^T and P V, forward and "
          f"backward); the flash backward also recomputes Q K^T, 2 S Q = {g(2 * scores * Q)}, and the softmax "
          f"and scale cost 6 + 5 per score, 11 S = {g(11 * scores)}.")
    print(f"- causal masking keeps {causal:,} of the {scores:,} scores: attention='effective' charges "
          f"{g(effective.by_operator().get(SDPA, 0))} of attention instead of {g(terms['attention'])}.")
    print(f"- embedding: 6 N T and PaLM charge its {n['embedding']:,} parameters as a matmul, "
          f"{g(6 * n['embedding'] * tokens)}; it is a lookup (forward 0, backward {terms['embedding']:,}).")
    elementwise = terms["elementwise, norms, loss"]
    print(f"- elementwise ops (RMSNorm, rotary, SiLU, gating, residuals, the gradient sums of inputs read twice, "
          f"softmax cross-entropy): {g(elementwise)}, {100 * elementwise / counted:.2f}% of the step; the "
          f"formulas count products only (and 6 N T charges the {n['norms']:,} norm weights as a matmul).")
    per_layer = 4 * d * d + 3 * d * shape.mlp
    print(f"- Megatron assumes 12 h^2 = {12 * d * d:,} weights per layer (a 4h MLP); this layer has "
          f"{per_layer:,} ({per_layer / (d * d):.4f} h^2, SwiGLU {shape.mlp}). Its attention term is PaLM's, "
          f"its logit term the lm_head, and it leaves the embedding out.")
    recompute = recomputed.total("recompute")
    forward_layers = sum(v for k, v in recomputed.by_module("forward").items()
                         if k.count(".") == 1 and k.startswith("layers."))
    skipped = L * (2 * tokens * shape.mlp * d + tokens * d)  # down_proj and the last residual add
    print(f"- recompute: checkpointing every layer runs its forward again in the backward, {g(recompute)} "
          f"({recompute:,}): the layers' forward, {forward_layers:,}, less what PyTorch's non-reentrant "
          f"checkpoint need not redo, the ops after the last tensor the backward reads (down_proj and the "
          f"residual add, {skipped:,}; equal: {recompute == forward_layers - skipped}). Megatron's 96 instead "
          f"of 72 assumes the whole forward again.")
    return {"terms": terms, "figures": figures, "recompute": recompute}


def report_decode(shape: Shape) -> dict:
    n = parameters(shape)
    fm = decode_step(shape)
    rows = {r: 0 for r in ("weight matmuls", "lm_head", "embedding", "attention")}
    for row in fm.counts().rows:
        if row.section != "decode":
            continue
        if row.operator == SDPA:
            rows["attention"] += row.values[0]
        elif row.module == "lm_head":
            rows["lm_head"] += row.values[0]
        elif row.module == "embed_tokens":
            rows["embedding"] += row.values[0]
        elif row.module.endswith("_proj"):
            rows["weight matmuls"] += row.values[0]
    decode = fm.by_section()["decode"]
    rows["elementwise, norms"] = decode - sum(rows.values())
    keys = shape.seq + 1
    in_2n = {"weight matmuls": 2 * n["weights"], "lm_head": 2 * n["head"], "embedding": 2 * n["embedding"],
             "attention": 0, "elementwise, norms": 2 * n["norms"]}
    by_hand = {"weight matmuls": 2 * n["weights"], "lm_head": 2 * n["head"],
               "attention": shape.layers * shape.heads * keys * (4 * shape.head_dim + 6)}
    print(f"\n== one decode step: 1 token after a KV cache of {shape.seq} (batch 1), under no_grad ==")
    print(f"(the {shape.seq}-token prefill before it: {fm.by_section()['prefill']:,})")
    table = [[name, f"{value:,}", "" if name not in by_hand else ("yes" if by_hand[name] == value else "NO"),
              f"{in_2n[name]:,}"] for name, value in rows.items()]
    table.append(["total", f"{decode:,}", "", f"{2 * n['all']:,}"])
    print(tabulate(table, ["term", "counted", "= by hand", "in 2 N"]))
    print(f"counted / 2 N = {decode / (2 * n['all']):.3f}: attention over the {keys} keys, L H (T + 1) (4 Q + 6) "
          f"= {by_hand['attention']:,}, is not in 2 N; the embedding lookup ({2 * n['embedding']:,} in 2 N) costs 0.")
    return {"terms": rows, "decode": decode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="a tiny model instead of Llama-7B's shapes")
    shape = SMALL if parser.parse_args().small else LLAMA_7B
    report_training(shape)
    report_decode(shape)


if __name__ == "__main__":
    main()
