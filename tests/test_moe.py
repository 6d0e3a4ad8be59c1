"""Mixture of experts: routing ops and aten._grouped_mm, both conventions, counted by hand.

A token-choice top-2 MoE layer (Mixtral, Qwen-MoE, DeepSeek style, as torch's grouped GEMM runs
it): T = 10 tokens of width D = 16, E = 4 experts with hidden width H = 32, K = 2 experts per token.
"""

import pytest
import torch
import torch.nn.functional as F

from dispatchcount import FlopMode
from dispatchcount.registry import resolve

aten = torch.ops.aten
T, D, E, H, K = 10, 16, 4, 32, 2


def _grouped_mm_runs_on_cpu() -> bool:
    try:
        torch._grouped_mm(torch.randn(8, 16), torch.randn(1, 16, 16), offs=torch.tensor([8], dtype=torch.int32))
        return True
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


# PyTorch 2.13 has a CPU kernel for _grouped_mm; builds without one run only the formula tests
needs_cpu_kernel = pytest.mark.skipif(not _grouped_mm_runs_on_cpu(), reason="no CPU kernel for _grouped_mm in this PyTorch")


def moe(x, router, w1, w2):
    probs = (x @ router).softmax(-1)                 # router: mm 2 T D E, softmax 5 T E
    weights, experts = probs.topk(K, dim=-1)          # T E ceil(log2(K + 1)) comparisons
    weights = weights / weights.sum(-1, keepdim=True)  # T K adds, T K divides
    flat = experts.flatten()
    order = flat.argsort(stable=True)                 # integer work: free
    offs = torch.bincount(flat, minlength=E).cumsum(0).to(torch.int32)
    tokens = x.repeat_interleave(K, dim=0)[order]     # (T K, D), grouped by expert
    h = F.silu(torch._grouped_mm(tokens, w1, offs=offs))  # 2 T K D H, silu 5 T K H
    y = torch._grouped_mm(h, w2, offs=offs)           # 2 T K H D
    out = torch.zeros(T * K, D).index_copy(0, order, y)
    return (out.view(T, K, D) * weights.unsqueeze(-1)).sum(1)  # T K D multiplies and adds


def parameters(device="cpu"):
    return [torch.randn(*shape, device=device, requires_grad=True) for shape in ((T, D), (D, E), (E, D, H), (E, H, D))]


@needs_cpu_kernel
def test_moe_forward_by_hand():
    with FlopMode() as fm:
        moe(*parameters())
    grouped = 2 * T * K * D * H
    assert fm.by_operator() == {
        "aten.mm": 2 * T * D * E,
        "aten._softmax": 5 * T * E,
        "aten.topk": T * E * 2,
        "aten.sum": T * K + T * K * D,
        "aten.div": T * K,
        "aten._grouped_mm": 2 * grouped,
        "aten.silu": 5 * T * K * H,
        "aten.mul": T * K * D,
    }
    assert fm.unsupported_ops() == {}


@needs_cpu_kernel
def test_grouped_mm_backward_is_two_products_per_forward_product():
    with FlopMode() as fm:
        moe(*parameters()).sum().backward()
    # each grouped GEMM: the input gradient (2-D x 3-D) and the weight gradient (2-D x 2-D
    # split by offsets along the token dimension): the forward's multiply-adds each
    assert fm.by_operator("backward")["aten._grouped_mm"] == 2 * 2 * (2 * T * K * D * H)


@needs_cpu_kernel
def test_meta_counts_what_cpu_counts():
    with FlopMode() as cpu:
        moe(*parameters()).sum().backward()
    # on meta the routing cannot be computed; the shapes are what matter: equal offsets (the
    # meta kernel of _grouped_mm takes bfloat16 only: the same multiply-adds)
    with FlopMode() as meta:
        x, router, w1, w2 = (t.detach().bfloat16().requires_grad_() for t in parameters("meta"))
        tokens = x.repeat(K, 1)
        offs = torch.arange(1, E + 1, device="meta", dtype=torch.int32) * (T * K // E)
        y = torch._grouped_mm(F.silu(torch._grouped_mm(tokens, w1, offs=offs)), w2, offs=offs)
        y.mul(2).sum().backward()  # a contiguous gradient (the meta kernel rejects stride-0 ones)
    assert meta.by_operator("forward")["aten._grouped_mm"] == cpu.by_operator("forward")["aten._grouped_mm"]
    assert meta.by_operator("backward")["aten._grouped_mm"] == cpu.by_operator("backward")["aten._grouped_mm"]


@pytest.mark.parametrize("convention", ["flop", "fvcore"])
def test_grouped_mm_layouts(convention):
    unit = 2 if convention == "flop" else 1
    formula = resolve(aten._grouped_mm.default, convention)
    a, w = torch.empty(20, 16, device="meta"), torch.empty(4, 16, 32, device="meta")
    out = torch.empty(20, 32, device="meta")
    assert formula(a, w, out=out) == unit * 20 * 16 * 32                  # 2-D x 3-D, by offsets
    batched = torch.empty(4, 5, 16, device="meta")
    assert formula(batched, w, out=torch.empty(4, 5, 32, device="meta")) == unit * 4 * 5 * 16 * 32
    # weight gradient: (K=16, M=20)^T-layout x (20, 32) split by offsets into 4 groups
    grad_w = torch.empty(4, 16, 32, device="meta")
    assert formula(torch.empty(16, 20, device="meta"), torch.empty(20, 32, device="meta"), out=grad_w) == unit * 16 * 32 * 20
    scaled = resolve(aten._scaled_grouped_mm.default, convention)
    fp8 = torch.empty(20, 16, device="meta", dtype=torch.float8_e4m3fn)
    assert scaled(fp8, torch.empty(4, 16, 32, device="meta", dtype=torch.float8_e4m3fn), out=out) == unit * 20 * 16 * 32


@needs_cpu_kernel
def test_fvcore_counts_grouped_mm_beyond_fvcore():
    with FlopMode(convention="fvcore") as fm:
        moe(*parameters()).sum().backward()
    grouped = T * K * D * H
    assert fm.by_operator("forward") == {"aten.matmul": T * D * E, "aten._grouped_mm": 2 * grouped}
    assert fm.by_operator("backward")["aten._grouped_mm"] == 2 * 2 * grouped
    assert fm.beyond_fvcore() == {"aten._grouped_mm": 6 * grouped}
