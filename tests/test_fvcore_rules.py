"""convention="fvcore": each of fvcore's rules, worked out by hand, and the function-level hook.

One multiply-add counts 1. Expected numbers are derived in the comments from the shapes.
"""

from __future__ import annotations

import random
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dispatchcount import FlopMode
from dispatchcount.fvcore.einsum import fvcore_einsum_macs
from dispatchcount.fvcore import _JitValue
from dispatchcount.fvcore.rules import is_uncounted, uncounted
from dispatchcount.registry import UNSUPPORTED, ZERO, resolve

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from fvcore.nn.jit_handles import einsum_flop_jit  # fvcore's own einsum handle: the reference

aten = torch.ops.aten


def fvcore_count(fn, *args, backward: bool = False) -> FlopMode:
    with FlopMode(convention="fvcore") as fm:
        out = fn(*args)
        if backward:
            out.sum().backward()
    assert fm.unsupported_ops() == {}
    return fm


# -- matmul family -------------------------------------------------------------------------


def test_linear_counts_every_row_of_an_nd_input():
    # (2, 3, 4, 16) @ (16 -> 8): 2*3*4 rows of 16*8 multiply-adds = 3072
    fm = fvcore_count(nn.Linear(16, 8), torch.randn(2, 3, 4, 16))
    assert fm.total() == 2 * 3 * 4 * 16 * 8
    assert fm.by_operator() == {"aten.linear": 3072}


def test_broadcast_matmul_is_charged_as_fvcore_does():
    # fvcore charges prod(a.shape) * b.shape[-1] = 4*8 * 6 = 192, although the broadcast
    # product does 3 * 4*8*6 = 576 multiply-adds (its bmm is not counted on top).
    fm = fvcore_count(lambda a, b: a @ b, torch.randn(4, 8), torch.randn(3, 8, 6))
    assert fm.total() == 192


def test_mm_bmm_addmm_and_beyond_fvcore_products():
    a, b = torch.randn(5, 7), torch.randn(7, 3)
    assert fvcore_count(torch.mm, a, b).total() == 5 * 7 * 3
    assert fvcore_count(torch.addmm, torch.zeros(5, 3), a, b).total() == 5 * 7 * 3
    assert fvcore_count(torch.bmm, torch.randn(2, 5, 7), torch.randn(2, 7, 3)).total() == 2 * 5 * 7 * 3
    # baddbmm and mv: fvcore has no handle; counted, and listed as beyond fvcore
    fm = fvcore_count(torch.baddbmm, torch.zeros(2, 5, 3), torch.randn(2, 5, 7), torch.randn(2, 7, 3))
    assert fm.total() == 2 * 5 * 7 * 3
    assert fm.beyond_fvcore() == {"aten.baddbmm": 210}
    fm = fvcore_count(torch.mv, a, torch.randn(7))
    assert fm.beyond_fvcore() == {"aten.mv": 35}


# -- einsum --------------------------------------------------------------------------------


def _fvcore_reference(equation: str, shapes) -> int:
    operands = [torch.empty(s) for s in shapes]
    return int(einsum_flop_jit([_JitValue(equation), _JitValue(operands)], []))


@pytest.mark.parametrize("equation, shapes, expected", [
    # fvcore's special case "abc,abd->acd" (letters renamed): n*c*t*p = 2*3*4*5
    ("nct,ncp->ntp", [(2, 3, 4), (2, 3, 5)], 120),
    # "abc,adc->adb": n*t*g*c = 2*3*4*5
    ("ntg,ncg->nct", [(2, 3, 4), (2, 5, 4)], 120),
    # numpy: one contraction over b,h,q,k,d with a sum: 2 * (2*2*5*5*4) = 800; (800 + 1) / 2 -> 400
    ("bhqd,bhkd->bhqk", [(2, 2, 5, 4), (2, 2, 5, 4)], 400),
    # outer product, nothing summed: 7*7 = 49; (49 + 1) / 2 = 25
    ("i,j->ij", [(7,), (7,)], 25),
    # k only in the second operand, summed in the same contraction: 2 * (3*4*5) + 1 -> 60
    ("ij,jk->i", [(3, 4), (4, 5)], 60),
    # numpy prints cost + 1 with 4 significant digits: 2*8*12*197*197*64 + 1 = 476946433
    # -> "4.769e+08" -> 476900000 / 2
    ("bhqd,bhkd->bhqk", [(8, 12, 197, 64), (8, 12, 197, 64)], 238450000),
])
def test_einsum_matches_fvcore_by_hand(equation, shapes, expected):
    assert fvcore_einsum_macs(equation, shapes) == expected
    assert _fvcore_reference(equation, shapes) == expected


def test_einsum_matches_fvcore_on_random_equations():
    rng = random.Random(0)
    letters = "abcdefg"
    for _ in range(150):
        sizes = {ch: rng.randint(1, 6) for ch in letters}
        terms = ["".join(rng.sample(letters, rng.randint(1, 4))) for _ in range(rng.randint(1, 4))]
        used = sorted(set("".join(terms)))
        output = "".join(ch for ch in used if rng.random() < 0.5)
        equation = ",".join(terms) + "->" + output
        shapes = [tuple(sizes[ch] for ch in t) for t in terms]
        assert fvcore_einsum_macs(equation, shapes) == _fvcore_reference(equation, shapes), equation


def test_einsum_ellipsis_and_implicit_output_match_fvcore():
    for equation, shapes in [
        ("...ij,...jk->...ik", [(2, 3, 4, 5), (3, 5, 6)]),
        ("...ij,jk", [(2, 3, 4), (4, 5)]),
        ("ij,jk", [(3, 4), (4, 5)]),
        ("b i d, b j d -> b i j", [(2, 3, 4), (2, 5, 4)]),
        ("ii->i", [(4, 4)]),
    ]:
        assert fvcore_einsum_macs(equation, shapes) == _fvcore_reference(equation, shapes), equation


def test_einsum_is_counted_at_the_call_in_grad_mode():
    # "i,j->ij" dispatches a mul (free under fvcore's rules), yet fvcore charges it 25
    a = torch.randn(7, requires_grad=True)
    fm = fvcore_count(lambda x: torch.einsum("i,j->ij", x, x), a)
    assert fm.by_operator() == {"aten.einsum": 25}
    # three operands: fvcore's optimal path, (3x4)(4x5) then (3x5)(5x6): 60 + 90
    fm = fvcore_count(lambda x, y, z: torch.einsum("ij,jk,kl->il", x, y, z),
                      torch.randn(3, 4), torch.randn(4, 5), torch.randn(5, 6))
    assert fm.total() == 150


# -- convolution ---------------------------------------------------------------------------


def test_convolutions():
    x = torch.randn(2, 4, 10, 10)
    # grouped: out 2x6x8x8, weight 6x2x3x3: batch * prod(weight) * out spatial = 2*108*64
    assert fvcore_count(nn.Conv2d(4, 6, 3, groups=2), x).total() == 2 * 108 * 64
    # transposed: weight 4x3x2x2, input spatial 10x10: 2 * 48 * 100
    assert fvcore_count(nn.ConvTranspose2d(4, 3, 2, stride=2), x).total() == 2 * 48 * 100
    # padding="same": fvcore sees aten::_convolution_mode and has no handle; counted as beyond
    fm = fvcore_count(nn.Conv2d(4, 6, 3, padding="same"), x)
    assert fm.total() == 2 * (6 * 4 * 9) * 100
    assert fm.beyond_fvcore() == {"aten._convolution_mode": 43200}


def test_backward_counts_each_backward_op_like_its_forward():
    conv, norm, fc = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4 * 6 * 6, 5)
    model = nn.Sequential(conv, norm, nn.ReLU(), nn.Flatten(), fc)
    fm = fvcore_count(model, torch.randn(2, 3, 8, 8), backward=True)
    conv_macs = 2 * (4 * 3 * 3 * 3) * 36   # 7776
    norm_cost = 2 * 4 * 36 * 5             # training, affine: 5 per element = 1440
    fc_macs = 2 * 144 * 5                  # 1440
    assert fm.total("forward") == conv_macs + norm_cost + fc_macs
    # input needs no gradient: conv backward computes the weight gradient only (1 forward);
    # the linear layer's backward is two products of its forward's size
    assert fm.by_operator("backward") == {
        "aten.convolution_backward": conv_macs,
        "aten.mm": 2 * fc_macs,
        "aten.native_batch_norm_backward": norm_cost,
    }


def test_attention_beyond_fvcore_forward_and_backward():
    # cross-attention, batch 2, 3 heads, 5 queries, 7 keys, head dim 4 (CPU flash kernel)
    q = torch.randn(2, 3, 5, 4, requires_grad=True)
    k = torch.randn(2, 3, 7, 4, requires_grad=True)
    v = torch.randn(2, 3, 7, 4, requires_grad=True)
    fm = fvcore_count(F.scaled_dot_product_attention, q, k, v, backward=True)
    per_head = 5 * 7
    assert fm.by_operator("forward") == {"aten.scaled_dot_product_attention": 2 * 3 * per_head * (4 + 4)}
    # the fused backward recomputes q k^T, then dP, dV (v dim each), dQ, dK (qk dim each)
    assert fm.total("backward") == 2 * 3 * per_head * (3 * 4 + 2 * 4)      # 4200
    assert sum(fm.beyond_fvcore().values()) == fm.total()


def test_attention_with_unequal_head_dims_runs_as_matmuls_and_is_charged_once():
    # v dim 6 != qk dim 4: the math path runs bmm's; the call is still charged once, as attention
    q, k, v = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 7, 4), torch.randn(2, 3, 7, 6)
    fm = fvcore_count(F.scaled_dot_product_attention, q, k, v)
    assert fm.by_operator() == {"aten.scaled_dot_product_attention": 2 * 3 * 5 * 7 * (4 + 6)}


# -- normalization -------------------------------------------------------------------------


def test_norms_train_and_eval():
    x = torch.randn(2, 4, 3, 5)  # 120 elements
    assert fvcore_count(nn.BatchNorm2d(4).train(), x).total() == 120 * 5
    assert fvcore_count(nn.BatchNorm2d(4).eval(), x).total() == 120 * 2
    assert fvcore_count(nn.BatchNorm2d(4, affine=False).eval(), x).total() == 120 * 1
    assert fvcore_count(nn.BatchNorm2d(4, affine=False).train(), x).total() == 120 * 4
    assert fvcore_count(nn.GroupNorm(2, 4), x).total() == 120 * 5
    assert fvcore_count(nn.LayerNorm(5, elementwise_affine=False), x).total() == 120 * 4
    # instance norm is a training-style norm for fvcore even in eval with running statistics
    # (it dispatches an eval batch norm, which would cost 120 * 1)
    inorm = nn.InstanceNorm2d(4, track_running_stats=True).eval()
    assert fvcore_count(inorm, x).by_operator() == {"aten.instance_norm": 120 * 4}


# -- upsample, pooling, grid_sample -------------------------------------------------------


def test_resampling():
    x = torch.randn(2, 3, 4, 6)  # 144 elements
    assert fvcore_count(nn.Upsample(scale_factor=2), x).total() == 144 * 4          # output size
    assert fvcore_count(nn.Upsample(scale_factor=2, mode="bilinear"), x).total() == 4 * 576
    assert fvcore_count(nn.Upsample(scale_factor=2, mode="bicubic"), x).total() == 0  # no handle
    # global average pooling runs as a mean, yet fvcore charges adaptive_avg_pool2d its input
    assert fvcore_count(nn.AdaptiveAvgPool2d(1), x).by_operator() == {"aten.adaptive_avg_pool2d": 144}
    assert fvcore_count(lambda t: t.mean((-1, -2), keepdim=True), x).total() == 0
    assert fvcore_count(nn.AdaptiveAvgPool2d((2, 3)), x).total() == 144
    assert fvcore_count(nn.AdaptiveAvgPool1d(2), x.flatten(2)).total() == 0       # no handle
    assert fvcore_count(nn.MaxPool2d(2), x).total() == 0
    grid = torch.rand(2, 5, 7, 2) * 2 - 1
    assert fvcore_count(lambda t, g: F.grid_sample(t, g, align_corners=False), x, grid).total() == 4 * (2 * 3 * 5 * 7)


def test_elementwise_ops_are_free_but_known():
    x = torch.randn(4, 4)
    fm = fvcore_count(lambda t: (t * 2 + 1).exp().softmax(-1).sum(), x)
    assert fm.total() == 0
    for op in (aten.mul.Tensor, aten.exp.default, aten._softmax.default, aten.sum.default):
        # 0, but a rule of its own (not UNSUPPORTED), and their calls are recorded: the
        # drop-in front lists them as fvcore lists its unsupported operators
        assert resolve(op, "fvcore") is uncounted
        assert is_uncounted(str(op._overloadpacket))
    assert fm.counts().operator_calls() == {"aten.mul": 1, "aten.add": 1, "aten.exp": 1,
                                            "aten._softmax": 1, "aten.sum": 1}
    # views and copies stay explicit zeros: not recorded at all
    assert resolve(aten.view.default, "fvcore") is ZERO


def test_custom_ops_need_an_fvcore_formula():
    lib = torch.library.Library("fvcoretest", "FRAGMENT")
    lib.define("scale(Tensor x) -> Tensor")
    lib.impl("scale", lambda x: x * 3, "CompositeExplicitAutograd")
    assert resolve(torch.ops.fvcoretest.scale.default, "fvcore") is UNSUPPORTED
    with pytest.warns(UserWarning, match="fvcoretest.scale"):
        with FlopMode(convention="fvcore") as fm:
            torch.ops.fvcoretest.scale(torch.randn(3))
    assert fm.unsupported_ops() == {"fvcoretest.scale": 1}


# -- the function-level hook ----------------------------------------------------------------


def _function_modes() -> int:
    return torch._C._len_torch_function_stack()


def test_function_mode_is_removed_on_exit_and_on_error():
    before = _function_modes()
    with FlopMode(convention="fvcore"):
        assert _function_modes() == before + 1
    assert _function_modes() == before
    with pytest.raises(ValueError):
        with FlopMode(convention="fvcore"):
            raise ValueError("boom")
    assert _function_modes() == before
    with FlopMode(convention="flop"):
        assert _function_modes() == before  # the "flop" convention needs no function mode


def test_nested_fvcore_modes_both_count():
    x = torch.randn(3, 4)
    with FlopMode(convention="fvcore") as outer:
        with FlopMode(convention="fvcore") as inner:
            torch.einsum("ij,kj->ik", x, x)   # 2 * 3*3*4 + 1 -> 36
    assert inner.total() == outer.total() == 36


def test_meta_tensors_count_like_real_ones():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    real = fvcore_count(model, torch.randn(2, 3, 10, 10)).total()
    meta = fvcore_count(model.to("meta"), torch.randn(2, 3, 10, 10, device="meta")).total()
    # conv 2*(8*27)*64 + bn 2*8*64*5 + pool 2*8*64 + linear 2*8*4
    assert real == meta == 27648 + 5120 + 1024 + 64


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(16, 2, batch_first=True)
        self.layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)

    def forward(self, x):
        return self.layer(self.mha(x, x, x, need_weights=False)[0])


def test_inference_fast_paths_stay_bit_identical_and_are_counted():
    # A TorchFunctionMode turns the fast path of nn's attention modules off; the fvcore hook
    # steps aside while they run, so outputs are the same bits as without counting.
    torch.manual_seed(0)
    model, x = _Encoder().eval(), torch.randn(2, 5, 16)
    before = _function_modes()
    with torch.no_grad():
        plain = model(x)
        with FlopMode(model, convention="fvcore") as fm:
            counted = model(x)
    assert torch.equal(plain, counted)
    assert _function_modes() == before
    tokens = 2 * 5
    # MHA: 4 projections of 16x16 per token, attention 5 keys x (8 + 8) per head and token
    mha = 4 * tokens * 16 * 16 + tokens * 2 * 5 * (8 + 8)                       # 11840
    # encoder layer: the same attention, feed-forward 2 x 16x32 per token, 2 layer norms at 5
    layer = mha + 2 * tokens * 16 * 32 + 2 * 5 * tokens * 16                     # 23680
    assert fm.by_operator() == {"aten._transformer_encoder_layer_fwd": layer,
                                "aten._native_multi_head_attention": mha}
    assert fm.beyond_fvcore() == fm.by_operator()


def test_function_mode_restored_after_an_error_inside_a_fast_path_module():
    model = _Encoder().eval()
    before = _function_modes()
    with pytest.raises(Exception):
        with torch.no_grad(), FlopMode(model, convention="fvcore"):
            model(torch.randn(2, 5, 7))  # wrong embedding size
    assert _function_modes() == before


def test_reports_list_what_is_counted_beyond_fvcore():
    model = nn.Sequential(nn.Linear(8, 8))
    q = torch.randn(1, 2, 3, 4)
    with FlopMode(model, convention="fvcore") as fm:
        model(torch.randn(3, 8))
        F.scaled_dot_product_attention(q, q, q)
    # linear 3*8*8 = 192; attention 1*2*3*3*(4 + 4) = 144, beyond fvcore
    assert fm.total() == 192 + 144
    assert fm.beyond_fvcore() == {"aten.scaled_dot_product_attention": 144}
    assert fm.to_dict()["beyond_fvcore"] == {"aten.scaled_dot_product_attention": 144}
    assert "counted beyond fvcore (fvcore has no handle for them): aten.scaled_dot_product_attention 144" in fm.table()
    with FlopMode(model) as flop:
        model(torch.randn(3, 8))
    assert flop.beyond_fvcore() == {} and "beyond fvcore" not in flop.table()
