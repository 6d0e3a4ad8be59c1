"""examples/vmamba.py: parameter counts and fvcore-convention FLOPs derived by hand from the
architecture, compared with the model and with VMamba's published table (arXiv:2401.10166,
appendix: Vanilla-VMamba-T 22.9M / 5.63G, VMamba-T [s1l8] 30.2M / 4.91G)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: examples/

from dispatchcount import FlopMode  # noqa: E402
from examples.vmamba import DropPath, vmamba_tiny_s1l8, vmamba_tiny_v0  # noqa: E402

DIMS = (96, 192, 384, 768)
GRIDS = (56, 28, 14, 7)  # token grid side per stage for a 224x224 image (stride 4, then /2)
HEAD = 768 * 1000 + 1000  # Linear(768, 1000)


def rank(c: int) -> int:
    return math.ceil(c / 16)  # dt_rank = "auto"


# ---- parameters -------------------------------------------------------------------------------
def v0_block_params(c: int) -> int:
    # d_inner = 2c, N = 16, K = 4 routes, R = ceil(c/16)
    d, n, r, k = 2 * c, 16, rank(c), 4
    norm = 2 * c
    in_proj = c * 2 * d  # x and z, no bias
    conv = d * 9 + d  # depthwise 3x3 with bias
    x_proj = k * (r + 2 * n) * d
    dt_proj = k * d * r + k * d  # weight + bias
    a_logs, ds = k * d * n, k * d
    out_norm, out_proj = 2 * d, d * c
    return norm + in_proj + conv + x_proj + dt_proj + a_logs + ds + out_norm + out_proj


def s1l8_block_params(c: int) -> int:
    # d_inner = c, N = 1, no z, conv without bias, MLP ratio 4 (with biases)
    d, n, r, k = c, 1, rank(c), 4
    ssm = 2 * c + c * d + d * 9 + k * (r + 2 * n) * d + k * d * r + k * d + k * d * n + k * d + 2 * d + d * c
    mlp = 2 * c + (c * 4 * c + 4 * c) + (4 * c * c + c)
    return ssm + mlp


def v0_params() -> int:
    stem = 3 * 96 * 16 + 96 + 2 * 96  # conv 4x4 stride 4 + LayerNorm
    blocks = sum(dep * v0_block_params(c) for c, dep in zip(DIMS, (2, 2, 9, 2)))
    merging = sum(2 * 4 * c + 4 * c * 2 * c for c in DIMS[:3])  # LN(4c) + Linear(4c, 2c), no bias
    return stem + blocks + merging + 2 * 768 + HEAD


def s1l8_params() -> int:
    stem = (3 * 48 * 9 + 48) + 2 * 48 + (48 * 96 * 9 + 96) + 2 * 96
    blocks = sum(dep * s1l8_block_params(c) for c, dep in zip(DIMS, (2, 2, 8, 2)))
    down = sum(c * 2 * c * 9 + 2 * c + 2 * 2 * c for c in DIMS[:3])  # conv 3x3 s2 + LN
    return stem + blocks + down + 2 * 768 + HEAD


def test_v0_parameters_by_hand_and_published():
    params = sum(p.numel() for p in vmamba_tiny_v0().parameters())
    assert params == v0_params() == 22_893_448
    assert abs(params / 22.9e6 - 1) < 0.03


def test_s1l8_parameters_by_hand_and_published():
    params = sum(p.numel() for p in vmamba_tiny_s1l8().parameters())
    assert params == s1l8_params() == 30_249_064
    assert abs(params / 30.2e6 - 1) < 0.03


# ---- fvcore-convention FLOPs (multiply-adds; LayerNorm 5 per element; elementwise free) --------
def exact_einsum(equation: str, *shapes) -> int:
    """Multiply-adds of a two-operand contraction: the product of every index's size."""
    sizes = {}
    for term, shape in zip(equation.split("->")[0].split(","), shapes):
        sizes.update(zip(term, shape))
    return math.prod(sizes.values())


def fvcore_einsum(equation: str, *shapes) -> int:
    """fvcore's einsum handle (fvcore/nn/jit_handles.py): numpy.einsum_path's "Optimized FLOP
    count" line, which numpy prints with 4 significant digits, halved and floored."""
    report = np.einsum_path(equation, *(np.zeros(s) for s in shapes), optimize="optimal")[1]
    line = next(l for l in report.splitlines() if "optimized flop" in l.lower())
    return math.floor(float(line.split(":")[-1]) / 2)


def ss2d_einsums(L: int, d: int, n: int, r: int, einsum) -> int:
    """SS2D's two einsums over its K=4 routes: x_proj (bkdl,kcd->bkcl), dt_proj (bkrl,kdr->bkdl)."""
    k = 4
    return (einsum("bkdl,kcd->bkcl", (1, k, d, L), (k, r + 2 * n, d))
            + einsum("bkrl,kdr->bkdl", (1, k, r, L), (k, d, r)))


def v0_fvcore_flops(einsum=fvcore_einsum) -> int:
    total = 0
    for c, g, dep in zip(DIMS, GRIDS, (2, 2, 9, 2)):
        L, d, n, r, k = g * g, 2 * c, 16, rank(c), 4
        block = (
            5 * L * c  # norm
            + L * c * 2 * d  # in_proj
            + L * d * 9  # depthwise conv
            + ss2d_einsums(L, d, n, r, einsum)  # x_proj, dt_proj
            + 9 * L * k * d * n + L * k * d  # selective scan with D (VMamba's formula)
            + 5 * L * d  # out_norm
            + L * d * c  # out_proj
        )
        total += dep * block
    total += 56 * 56 * 96 * 3 * 16 + 5 * 56 * 56 * 96  # patch embedding conv + LN
    for c, g in zip(DIMS[:3], GRIDS[:3]):  # patch merging at the output grid (g/2)^2
        L = (g // 2) ** 2
        total += 5 * L * 4 * c + L * 4 * c * 2 * c
    total += 5 * 49 * 768 + 49 * 768 + 768 * 1000  # final LN, average pool (fvcore: 1/input), head
    return total


def s1l8_fvcore_flops(einsum=fvcore_einsum) -> int:
    total = 0
    for c, g, dep in zip(DIMS, GRIDS, (2, 2, 8, 2)):
        L, d, n, r, k = g * g, c, 1, rank(c), 4
        block = (
            5 * L * c + L * c * d + L * d * 9
            + ss2d_einsums(L, d, n, r, einsum)
            + 9 * L * k * d * n + L * k * d
            + 5 * L * d + L * d * c
            + 5 * L * c + L * c * 4 * c + L * 4 * c * c  # norm2 + MLP
        )
        total += dep * block
    total += 112 * 112 * 48 * 3 * 9 + 5 * 112 * 112 * 48  # stem conv1 + LN
    total += 56 * 56 * 96 * 48 * 9 + 5 * 56 * 56 * 96  # stem conv2 + LN
    for c, g in zip(DIMS[:3], GRIDS[:3]):
        L = (g // 2) ** 2
        total += L * 2 * c * c * 9 + 5 * L * 2 * c  # conv 3x3 stride 2 + LN
    total += 5 * 49 * 768 + 49 * 768 + 768 * 1000
    return total


def _count_on_meta(builder, convention):
    with torch.device("meta"):
        model = builder().eval()
        x = torch.randn(1, 3, 224, 224)
    with FlopMode(model, convention=convention) as fm, torch.no_grad():
        model(x)
    return model, fm


@pytest.mark.parametrize(
    "builder, by_hand, published",
    [(vmamba_tiny_v0, v0_fvcore_flops, 5.63e9), (vmamba_tiny_s1l8, s1l8_fvcore_flops, 4.91e9)],
)
def test_fvcore_flops_by_hand_and_published(builder, by_hand, published):
    _, fm = _count_on_meta(builder, "fvcore")
    assert fm.unsupported_ops() == {}
    assert fm.formula_errors() == {}
    assert fm.total() == by_hand()
    assert abs(fm.total() / published - 1) < 0.03


def test_hand_derivations_round_to_published():
    # The derivations above are independent of the code: they alone reproduce the paper's table,
    # with fvcore's rounded einsum cost and with the exact multiply-adds alike.
    for einsum in (fvcore_einsum, exact_einsum):
        assert round(v0_fvcore_flops(einsum) / 1e9, 2) == 5.63
        assert round(s1l8_fvcore_flops(einsum) / 1e9, 2) == 4.91
    assert v0_fvcore_flops(exact_einsum) == 5_626_902_528
    assert s1l8_fvcore_flops(exact_einsum) == 4_905_609_984


def test_fvcore_einsum_rounding_is_numpys():
    # numpy reports 2 * 91,521,024 + 1 multiply-adds as "1.830e+08": fvcore counts 91,500,000.
    assert exact_einsum("bkdl,kcd->bkcl", (1, 4, 192, 3136), (4, 38, 192)) == 91_521_024
    assert fvcore_einsum("bkdl,kcd->bkcl", (1, 4, 192, 3136), (4, 38, 192)) == 91_500_000


def test_ss2d_raw_parameter_einsums_are_charged_to_ss2d():
    model, fm = _count_on_meta(vmamba_tiny_v0, "fvcore")
    name = "layers.0.0.ss2d"
    L, d, k, n, r = 56 * 56, 192, 4, 16, 6
    children = sum(fm.by_module()[f"{name}.{c}"] for c, _ in model.get_submodule(name).named_children())
    own = fm.by_module()[name] - children
    scan = 9 * L * k * d * n + L * k * d
    assert own == scan + ss2d_einsums(L, d, n, r, fvcore_einsum)
    assert fm.by_module_and_operator()[name]["dispatchcount.selective_scan"] == scan


def test_drop_path_costs_nothing_in_eval_and_runs_in_training():
    model = vmamba_tiny_v0(num_classes=10)
    assert model.get_submodule("layers.2.8.drop_path").p > 0
    x = torch.randn(1, 3, 32, 32)
    with FlopMode(model.eval()) as fm, torch.no_grad():
        model(x)
    assert fm.by_module()["layers.2.8.drop_path"] == 0
    assert "layers.2.8.drop_path" not in fm.uncalled_modules()
    torch.manual_seed(0)
    with FlopMode(model.train()) as fm, torch.no_grad():
        model(x)
    assert fm.by_module()["layers.2.8.drop_path"] > 0


def test_drop_path_rejects_bad_probability():
    with pytest.raises(ValueError, match="p must be in"):
        DropPath(1.0)


@pytest.mark.parametrize("builder", [vmamba_tiny_v0, vmamba_tiny_s1l8])
def test_real_forward_backward_on_cpu_is_unchanged_by_counting(builder):
    torch.manual_seed(0)
    model = builder(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)  # the smallest image of four stages; the kernels' tests cover batches
    reference = model(x)
    with FlopMode(model) as fm:
        out = model(x)
        out.square().mean().backward()
    assert out.shape == (1, 10)
    assert torch.equal(out, reference)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert fm.total(phase="backward") > fm.total(phase="forward") > 0
    assert fm.by_operator(phase="backward").get("dispatchcount.selective_scan_backward", 0) > 0
    assert fm.unsupported_ops() == {}


def test_vssm_rejects_non_image_input():
    with pytest.raises(ValueError, match=r"\(batch, channels, height, width\)"):
        vmamba_tiny_s1l8()(torch.randn(3, 32, 32))
