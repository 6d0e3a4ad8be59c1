"""Matmul, convolution and attention counts equal torch.utils.flop_counter.FlopCounterMode's."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from dispatchcount import FlopMode

aten = torch.ops.aten

# FlopCounterMode's own formulas, lent to it for the CPU fused attention kernel it has no entry
# for, so that both counters see the same ops.
def _as_raw(formula):
    # FlopCounterMode's public formulas already convert tensors to shapes: mark them so.
    def raw(*args, **kwargs):
        return formula(*args, **kwargs)

    raw._get_raw = True
    return raw


CPU_ATTENTION = {
    aten._scaled_dot_product_flash_attention_for_cpu: _as_raw(flop_counter.sdpa_flop),
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _as_raw(flop_counter.sdpa_backward_flop),
}


def fcm_counts(fn, **kwargs):
    with FlopCounterMode(display=False, **kwargs) as counter:
        fn()
    return {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}, counter.get_total_flops()


def ours(fn, model=None):
    with FlopMode(model) as mode:
        fn()
    return mode


def assert_same_as_fcm(fn, model=None, **fcm_kwargs):
    reference, reference_total = fcm_counts(fn, **fcm_kwargs)
    mode = ours(fn, model)
    mine = mode.by_operator()
    assert reference_total > 0
    for op, flops in reference.items():
        assert mine.get(op, 0) == flops, op
    assert sum(mine.get(op, 0) for op in reference) == reference_total
    return mode


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 16, (3, 1), dilation=(2, 1))
        self.up = nn.ConvTranspose2d(16, 4, 4, stride=2, output_padding=1)
        self.conv3d = nn.Conv3d(1, 2, 2)
        self.conv1d = nn.Conv1d(4, 6, 5, padding=2)
        self.fc = nn.Linear(6, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = self.up(self.conv2(x))
        y = self.conv3d(x.unsqueeze(1)).flatten(2)[:, :, :40].transpose(1, 2)
        z = self.conv1d(x.flatten(2)).mean(-1)
        return self.fc(z).sum() + y.sum()


class MatmulNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(12, 24)
        self.weight = nn.Parameter(torch.randn(24, 24))
        self.bias = nn.Parameter(torch.randn(24))

    def forward(self, x):  # x: (batch, seq, 12)
        h = self.proj(x)                                        # 3-D linear: mm
        h = torch.einsum("bsd,de->bse", h, self.weight)        # einsum with a raw parameter
        scores = torch.bmm(h, h.transpose(1, 2))                # bmm
        h = torch.baddbmm(h, scores.softmax(-1), h)             # baddbmm
        flat = h.reshape(-1, 24)
        return torch.addmm(self.bias, flat, self.weight).sum() + torch.matmul(h, self.weight).sum()


class AttentionNet(nn.Module):
    def __init__(self, dim=32, heads=4, kv_heads=2):
        super().__init__()
        self.heads, self.kv_heads = heads, kv_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim * kv_heads // heads)
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        b, s, d = x.shape
        q = self.q(x).view(b, s, self.heads, -1).transpose(1, 2)
        k, v = self.kv(x).view(b, s, 2, self.kv_heads, -1).permute(2, 0, 3, 1, 4)
        k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
        v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, s, d))


def test_convolutions_forward_and_backward_equal_fcm():
    model = ConvNet()
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    mode = assert_same_as_fcm(lambda: model(x).backward(), model)
    assert mode.total(phase="backward") > 0


def test_matmul_family_forward_and_backward_equal_fcm():
    model = MatmulNet()
    x = torch.randn(3, 5, 12, requires_grad=True)
    assert_same_as_fcm(lambda: model(x).backward(), model)


SDPA = "aten.scaled_dot_product_attention"


def test_scaled_dot_product_attention_products_equal_fcm():
    # AttentionNet: batch 2, 4 query heads (2 kv heads repeated), 7 tokens, head dim 8. The call
    # is charged as one op; its products are FlopCounterMode's fused-kernel numbers, plus 6 per
    # score forward (scale, softmax) and 5 backward (their gradients).
    model = AttentionNet()
    x = torch.randn(2, 7, 32, requires_grad=True)

    def run():
        model(x).sum().backward()

    reference, _ = fcm_counts(run, custom_mapping=CPU_ATTENTION)
    mode = ours(run, model)
    scores = 2 * 4 * 7 * 7
    fcm_forward = reference["aten._scaled_dot_product_flash_attention_for_cpu"]
    fcm_backward = reference["aten._scaled_dot_product_flash_attention_for_cpu_backward"]
    assert fcm_forward == 2 * scores * (8 + 8)
    assert mode.by_operator("forward")[SDPA] == fcm_forward + 6 * scores
    assert mode.by_operator("backward")[SDPA] == fcm_backward + 5 * scores
    mine = mode.by_operator()
    for op, flops in reference.items():  # everything else, op by op
        if "attention" not in op:
            assert mine.get(op, 0) == flops, op


@pytest.mark.parametrize("backend", [SDPBackend.MATH, SDPBackend.FLASH_ATTENTION])
def test_scaled_dot_product_attention_is_one_rule_on_every_backend(backend):
    model = AttentionNet()
    x = torch.randn(2, 7, 32, requires_grad=True)

    def run(chosen):
        model.zero_grad(set_to_none=True)  # each run starts without .grad to accumulate into
        x.grad = None
        with sdpa_kernel(chosen):
            model(x).sum().backward()

    mode = ours(lambda: run(backend), model)
    fused = ours(lambda: run(SDPBackend.FLASH_ATTENTION), model)
    assert mode.by_operator("forward") == fused.by_operator("forward")
    assert mode.by_operator("backward") == fused.by_operator("backward")
    # FlopCounterMode counts what each backend dispatches: the math path's backward has four
    # products (nothing recomputed), the fused kernel's five; dispatchcount counts five on both.
    reference, _ = fcm_counts(lambda: run(backend), custom_mapping=CPU_ATTENTION)
    scores, recompute = 2 * 4 * 7 * 7, 2 * 2 * 4 * 7 * 7 * 8
    fcm_attention = sum(n for op, n in reference.items() if "attention" in op or op == "aten.bmm")
    expected = fused.by_operator()[SDPA] - (6 + 5) * scores
    assert fcm_attention == (expected - recompute if backend == SDPBackend.MATH else expected)


def test_attention_counts_by_hand():
    # q, k, v: (b=2, h=4, s=7, d=8). Forward: QK^T and PV, 2*b*h*s*s*d each, and 6 per score.
    q, k, v = (torch.randn(2, 4, 7, 8, requires_grad=True) for _ in range(3))
    with FlopMode() as mode:
        F.scaled_dot_product_attention(q, k, v).sum().backward()
    scores = 2 * 4 * 7 * 7
    per_product = 2 * scores * 8
    ops = mode.by_operator("forward")
    assert ops[SDPA] == 2 * per_product + 6 * scores
    # Backward: recompute QK^T, dP = dO V^T, dV = P^T dO, dQ = dS K, dK = dS^T Q; 5 per score.
    assert mode.by_operator("backward")[SDPA] == 5 * per_product + 5 * scores


def test_fused_kernels_called_directly_follow_the_same_rule():
    q, k, v = (torch.randn(2, 4, 7, 8) for _ in range(3))
    with FlopMode() as mode:
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)
    scores = 2 * 4 * 7 * 7
    assert mode.by_operator() == {"aten._scaled_dot_product_flash_attention_for_cpu": 2 * scores * 16 + 6 * scores}


def test_grouped_convolution_weight_gradient_divides_by_groups():
    # Depthwise conv: 8 channels, groups=8, 3x3 kernel on 5x5 padded to 5x5, batch 2.
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    x = torch.randn(2, 8, 5, 5, requires_grad=True)
    with FlopMode() as mode:
        conv(x).sum().backward()
    forward = 2 * 2 * 5 * 5 * 8 * 1 * 3 * 3  # 2 * batch * out pixels * c_out * c_in/groups * taps
    ops = mode.by_operator()
    assert ops["aten.convolution"] == forward
    # Input gradient and weight gradient each do the forward's multiply-adds. FlopCounterMode
    # charges the weight gradient groups times over (8 * forward): the one place we differ.
    assert ops["aten.convolution_backward"] == 2 * forward
    reference, _ = fcm_counts(lambda: conv(x).sum().backward())
    assert reference["aten.convolution_backward"] == forward + 8 * forward


def test_flex_attention_formulas_equal_fcm():
    # FlexAttention cannot run eagerly on CPU under a dispatch mode; check the formulas
    # themselves against FlopCounterMode's registry entries and by hand.
    from torch._higher_order_ops.flex_attention import flex_attention, flex_attention_backward

    from dispatchcount.registry import resolve

    q, k, v = (torch.empty(2, 4, 16, 8, device="meta") for _ in range(3))
    forward, backward = resolve(flex_attention), resolve(flex_attention_backward)
    scores = 2 * 4 * 16 * 16
    by_hand = 2 * scores * 8
    assert forward(q, k, v, None, None) == 2 * by_hand + 6 * scores
    assert backward(q, k, v, q, q, q, None) == 5 * by_hand + 5 * scores
    fcm = flop_counter.flop_registry
    if flex_attention not in fcm:  # older FlopCounterModes have no flex_attention entry
        pytest.skip(f"torch {torch.__version__}'s FlopCounterMode has no flex_attention entry to compare with")
    assert fcm[flex_attention](q, k, v) == 2 * by_hand
    assert fcm[flex_attention_backward](q, k, v, q, q, q, None) == 5 * by_hand
