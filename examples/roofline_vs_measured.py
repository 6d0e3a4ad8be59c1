"""Estimated (roofline) vs measured time per module: a Llama-style block and a ViT-B/16, forward
and backward, counted with ``FlopMode(metrics=("flops", "bytes", "time"))``.

    python examples/roofline_vs_measured.py                      # CUDA: bf16, the sizes below
    python examples/roofline_vs_measured.py --device-spec h100-sxm --timer sync
    python examples/roofline_vs_measured.py --device cpu         # tiny sizes: a smoke test of the CPU path

Sizes: the Llama block has Llama-7B's shapes (d 4096, 32 heads, MLP 11008) on batch 8 x 2048
tokens; ViT-B/16 (d 768, 12 layers, 12 heads, MLP 3072) on 64 images of 224x224. Each model is
warmed up, timed without the counter (CUDA events over ``--repeats`` steps: the plain step time,
which MFU is computed from), then run under the counter (once to resolve every op's rules, once
measured). Printed per model: the roofline
table on ``--device-spec`` with the measured time per module and the roofline's share of it,
estimated vs measured per phase and per operator, the timer's overhead (the counted step's wall
time against the plain one), MFU and HFU. On an H200 the whole script takes well under a minute.
On CPU the estimates are still for ``--device-spec``: only the script's path is exercised.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dispatchcount import FlopMode, devices  # noqa: E402
from dispatchcount.meters import OpTimer  # noqa: E402
from dispatchcount.report import human, human_seconds  # noqa: E402
from dispatchcount.roofline import compute_unit  # noqa: E402
from examples.llama import DecoderLayer  # noqa: E402


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + self.proj(y)
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """ViT (Dosovitskiy et al., 2021): patch embedding, class token, pre-norm blocks, head."""

    def __init__(self, image: int, patch: int, dim: int, depth: int, heads: int, mlp: int, classes: int) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (image // patch) ** 2 + 1, dim))
        self.blocks = nn.Sequential(*[ViTBlock(dim, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


class LlamaBlock(nn.Module):
    """One decoder layer of ``examples/llama.py`` with its rotary tables."""

    def __init__(self, dim: int, heads: int, hidden: int, seq: int) -> None:
        super().__init__()
        self.layer = DecoderLayer(dim, heads, hidden)
        head_dim = dim // heads
        inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        angles = torch.outer(torch.arange(seq, dtype=torch.float32), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x, self.cos.to(x.dtype), self.sin.to(x.dtype))


def sizes(tiny: bool) -> dict[str, dict[str, int]]:
    if tiny:
        return {"llama": dict(batch=2, seq=16, dim=64, heads=4, hidden=128),
                "vit": dict(batch=2, image=32, patch=16, dim=64, depth=2, heads=2, mlp=128, classes=10)}
    return {"llama": dict(batch=8, seq=2048, dim=4096, heads=32, hidden=11008),
            "vit": dict(batch=64, image=224, patch=16, dim=768, depth=12, heads=12, mlp=3072, classes=1000)}


def build(name: str, s: dict[str, int], device: torch.device, dtype: torch.dtype) -> tuple[nn.Module, torch.Tensor]:
    with device:
        if name == "llama":
            model = LlamaBlock(s["dim"], s["heads"], s["hidden"], s["seq"])
            x = torch.randn(s["batch"], s["seq"], s["dim"], dtype=dtype, requires_grad=True)
        else:
            model = ViT(s["image"], s["patch"], s["dim"], s["depth"], s["heads"], s["mlp"], s["classes"])
            x = torch.randn(s["batch"], 3, s["image"], s["image"], dtype=dtype)
    return model.to(dtype), x


def forward_products(name: str, s: dict[str, int]) -> int:
    """Forward FLOPs of the products (matmul, convolution, attention), by hand. Attention is
    one op: QK^T and PV, and 6 FLOPs per score for the scaling and the softmax
    (docs/conventions.md, scaled_dot_product_attention)."""
    if name == "llama":
        tokens, d = s["batch"] * s["seq"], s["dim"]
        projections = 4 * 2 * tokens * d * d + 3 * 2 * tokens * d * s["hidden"]
        scores = s["batch"] * s["heads"] * s["seq"] ** 2  # causal counted dense
        return projections + 4 * s["batch"] * s["seq"] ** 2 * d + 6 * scores
    patches = (s["image"] // s["patch"]) ** 2
    n, d, b = patches + 1, s["dim"], s["batch"]
    embed = 2 * b * patches * 3 * s["patch"] ** 2 * d
    block = 2 * b * n * d * (3 * d + d + 2 * s["mlp"]) + 4 * b * n * n * d + 6 * b * s["heads"] * n * n
    return embed + s["depth"] * block + 2 * b * d * s["classes"]


def step(model: nn.Module, x: torch.Tensor) -> None:
    model(x).float().sum().backward()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def plain_seconds(run: Callable[[], None], device: torch.device, repeats: int) -> float:
    """Seconds per step without the counter (after the warm-up)."""
    synchronize(device)
    begin = time.perf_counter()
    for _ in range(repeats):
        run()
    synchronize(device)
    return (time.perf_counter() - begin) / repeats


def compare(name: str, s: dict[str, int], args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    model, x = build(name, s, device, dtype)
    run = lambda: step(model, x)  # noqa: E731

    def forget_gradients() -> None:  # so that every step writes fresh gradients, none accumulate
        model.zero_grad(set_to_none=True)
        x.grad = None

    for _ in range(args.warmup):
        run()
    forget_gradients()
    plain = plain_seconds(run, device, args.repeats)
    forget_gradients()

    timer = OpTimer(cuda=args.timer)
    metrics = ("flops", "bytes", "time")
    with FlopMode(model, metrics=metrics, timer=timer):  # resolves every op's rules once
        run()
    forget_gradients()
    synchronize(device)
    begin = time.perf_counter()
    with FlopMode(model, metrics=metrics, timer=timer) as fm:
        run()
    synchronize(device)
    counted_wall = time.perf_counter() - begin
    spec = devices[args.device_spec]
    est = fm.roofline(spec)

    title = "llama block" if name == "llama" else "vit-b/16"
    print(f"=== {title}: {s}, {str(dtype).replace('torch.', '')} on {device}, forward + backward")
    print(est.table(depth=args.depth))
    products = sum(v for op, v in fm.by_operator("forward").items() if compute_unit(op) == "tensor")
    print(f"forward products (matmul, conv, attention): {products:,} FLOPs (by hand: {forward_products(name, s):,})")
    print(f"{'phase':<10}{'FLOPs':>10}{'bytes':>10}{'estimated':>12}{'measured':>12}{'roofline %':>12}")
    for phase in ("forward", "backward"):
        e, m = est.seconds(phase), fm.total(phase, metric="seconds")
        print(f"{phase:<10}{human(fm.total(phase)):>10}{human(fm.total(phase, metric='bytes')) + 'B':>10}"
              f"{human_seconds(e):>12}{human_seconds(m):>12}{(f'{100 * e / m:.0f}%' if m else '-'):>12}")
    measured_ops = fm.by_operator(metric="seconds")
    print("top operators, estimated vs measured:")
    for op, e in list(est.by_operator().items())[: args.top]:
        m = measured_ops.get(op, 0.0)
        print(f"  {op:<52}{human_seconds(e):>10}{human_seconds(m):>10}{(f'{100 * e / m:.0f}%' if m else '-'):>7}")
    measured = fm.total(metric="seconds")
    print(f"plain step: {human_seconds(plain)}; counted step: {human_seconds(counted_wall)} wall "
          f"({counted_wall / plain:.2f}x the plain step: the counter's and the timer's overhead), "
          f"sum of timed ops {human_seconds(measured)}")
    print(f"MFU {100 * fm.mfu(plain, spec):.1f}%  HFU {100 * fm.hfu(plain, spec):.1f}%  "
          f"(counted FLOPs at {spec.name}'s dense peaks / the plain step)")
    print(f"estimated step on {spec.name}: {human_seconds(est.seconds())}; unsupported ops: "
          f"{fm.unsupported_ops() or 'none'}")
    return {"model": title, "sizes": s, "plain_seconds": plain, "counted_wall_seconds": counted_wall,
            "mfu": fm.mfu(plain, spec), "hfu": fm.hfu(plain, spec), "report": fm.to_dict(device=spec)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--device-spec", default="h200", choices=sorted(devices))
    parser.add_argument("--models", default="llama,vit", help="comma-separated: llama, vit")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (the CPU smoke test; the default on CPU)")
    parser.add_argument("--full", action="store_true", help="the full sizes even on CPU (tens of minutes)")
    parser.add_argument("--timer", default="events", choices=("events", "sync"), help="CUDA timing (see meters.OpTimer)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--top", type=int, default=8, help="operators listed")
    parser.add_argument("--json", type=Path, help="also write every figure and both reports here")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device; use --device cpu (with --tiny)")
    if args.device == "cuda":
        print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    elif not (args.tiny or args.full):
        args.tiny = True
        print("no GPU: tiny sizes (the full ones take tens of minutes on CPU; --full to run them)", flush=True)
    results = [compare(name, sizes(args.tiny)[name], args) for name in args.models.split(",")]
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
