"""Counting on the meta device and under FakeTensorMode: no real memory, the same numbers."""

import resource

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.attention import SDPBackend, sdpa_kernel

from dispatchcount import FlopMode
from examples.llama import llama_7b, llama_tiny


def llama_matmul_flops(layers, seq, dim, heads, mlp, vocab):
    """Multiply-adds of a Llama forward, by hand: projections, attention, SwiGLU, head."""
    head_dim = dim // heads
    projections = 4 * 2 * seq * dim * dim          # q, k, v, o
    attention = 2 * heads * seq * seq * (head_dim + head_dim)  # QK^T and PV
    swiglu = 3 * 2 * seq * dim * mlp              # gate, up, down
    return layers * (projections + attention + swiglu) + 2 * seq * dim * vocab


def softmax_and_scale(layers, seq, heads):
    """What attention costs beyond its products: 6 FLOPs per (query, key) score, forward."""
    return layers * 6 * heads * seq * seq


def matmul_like(by_operator):
    return sum(n for op, n in by_operator.items() if op in ("aten.mm", "aten.bmm") or "attention" in op)


def test_llama_7b_on_meta_is_counted_without_memory():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with torch.device("meta"):
        model = llama_7b()
        tokens = torch.zeros(1, 2048, dtype=torch.long)
    assert sum(p.numel() for p in model.parameters()) == 6_738_415_616
    with FlopMode(model) as mode, torch.no_grad():
        model(tokens)
    grown_gib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2**20
    assert grown_gib < 2  # the weights alone would be 25 GiB in float32
    expected = llama_matmul_flops(layers=32, seq=2048, dim=4096, heads=32, mlp=11008, vocab=32000)
    assert matmul_like(mode.by_operator()) == expected + softmax_and_scale(32, 2048, 32)
    assert matmul_like(mode.by_module_and_operator()["layers.31.mlp"]) == 3 * 2 * 2048 * 4096 * 11008
    assert matmul_like(mode.by_module_and_operator()["lm_head"]) == 2 * 2048 * 4096 * 32000


def test_meta_count_equals_real_count():
    model = llama_tiny()
    tokens = torch.randint(0, 128, (2, 16))
    # CPU runs the fused flash kernel, meta the math path (bmm, _safe_softmax, scaling): the
    # call is charged as one, forward and backward, on both.
    with FlopMode(model) as real:
        model(tokens).sum().backward()
    with torch.device("meta"):
        meta_model = llama_tiny()
    with FlopMode(meta_model) as meta:
        meta_model(tokens.to("meta")).sum().backward()
    expected = 2 * llama_matmul_flops(layers=2, seq=16, dim=32, heads=4, mlp=64, vocab=128)
    assert matmul_like(real.by_operator(phase="forward")) == expected + 2 * softmax_and_scale(2, 16, 4)
    assert meta.by_module(phase="forward") == real.by_module(phase="forward")
    assert meta.by_module(phase="backward") == real.by_module(phase="backward")
    assert meta.by_operator() == real.by_operator()
    model.zero_grad(set_to_none=True)
    with sdpa_kernel(SDPBackend.MATH), FlopMode(model) as math:
        model(tokens).sum().backward()
    assert math.by_operator() == real.by_operator()


def test_fake_tensor_mode_inside_and_outside():
    fake = FakeTensorMode()
    with fake:
        model = nn.Linear(64, 32)
        x = torch.randn(8, 64, requires_grad=True)
    forward = 2 * 8 * 64 * 32
    backward = 2 * forward  # input and weight gradients
    with fake, FlopMode(model) as inner:
        model(x).sum().backward()
    with FlopMode(model) as outer, fake:
        model(x).sum().backward()
    for mode in (inner, outer):
        assert mode.by_operator(phase="forward")["aten.addmm"] == forward
        assert mode.by_operator(phase="backward")["aten.mm"] == backward
