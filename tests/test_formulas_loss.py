"""Losses forward and backward, worked out by hand. Inputs are (4, 7): n = 28."""

import pytest
import torch
import torch.nn.functional as F

from dispatchcount.registry import resolve
from counting import counted

N = 28
MEAN = N + 1  # reduction="mean": n adds and one divide



@pytest.fixture
def x():
    return torch.randn(4, 7)


def test_cross_entropy_is_log_softmax_and_nll(x):
    target = torch.tensor([1, 2, 3, 4])
    forward = counted(lambda: F.cross_entropy(x, target))
    # log_softmax: 5 per element + a log per row; nll: negate 4 picks, mean: sum the 4 values
    # and the 4 weights, divide once
    assert forward == {"aten._log_softmax": 5 * N + 4, "aten.nll_loss_forward": 4 + 2 * 4 + 1}
    leaf = x.clone().requires_grad_()
    backward = counted(lambda: F.cross_entropy(leaf, target).backward(), "backward")
    # nll backward: -g / total_weight per target (2); log_softmax backward 4 per element
    assert backward == {"aten.nll_loss_backward": 2 * 4, "aten._log_softmax_backward_data": 4 * N}
    weight = torch.rand(7)
    weighted = counted(lambda: F.nll_loss(x, target, weight=weight))
    assert weighted == {"aten.nll_loss_forward": 2 * 4 + 2 * 4 + 1}  # negate and weight each


def test_mse_and_its_reductions(x):
    y = torch.randn(4, 7)
    assert counted(lambda: F.mse_loss(x, y)) == {"aten.mse_loss": 2 * N + MEAN}  # (x - y)^2
    assert counted(lambda: F.mse_loss(x, y, reduction="sum")) == {"aten.mse_loss": 2 * N + N}
    assert counted(lambda: F.mse_loss(x, y, reduction="none")) == {"aten.mse_loss": 2 * N}
    leaf = x.clone().requires_grad_()
    backward = counted(lambda: F.mse_loss(leaf, y).backward(), "backward")
    assert backward == {"aten.mse_loss_backward": (3 + 1) * N}  # 2 (x - y) g, / n


def test_robust_regression_losses(x):
    y = torch.randn(4, 7)
    assert counted(lambda: F.smooth_l1_loss(x, y)) == {"aten.smooth_l1_loss": 6 * N + MEAN}
    assert counted(lambda: F.huber_loss(x, y)) == {"aten.huber_loss": 5 * N + MEAN}
    # l1_loss is CompositeImplicit: sub, abs, mean
    assert counted(lambda: F.l1_loss(x, y)) == {"aten.sub": N, "aten.abs": N, "aten.mean": MEAN}
    assert counted(lambda: F.soft_margin_loss(x, y.sign())) == {"aten.sign": N, "aten.soft_margin_loss": 5 * N + MEAN}


def test_binary_cross_entropy(x):
    p, y = x.sigmoid(), torch.rand(4, 7)
    assert counted(lambda: F.binary_cross_entropy(p, y)) == {"aten.binary_cross_entropy": 10 * N + MEAN}
    w = torch.rand(4, 7)
    assert counted(lambda: F.binary_cross_entropy(p, y, w)) == {"aten.binary_cross_entropy": 11 * N + MEAN}
    assert counted(lambda: F.binary_cross_entropy_with_logits(x, y)) == {
        "aten.binary_cross_entropy_with_logits": 8 * N + MEAN  # (1 - y) x - log_sigmoid(x)
    }
    pos = torch.rand(7)
    assert counted(lambda: F.binary_cross_entropy_with_logits(x, y, pos_weight=pos)) == {
        "aten.binary_cross_entropy_with_logits": 12 * N + MEAN
    }


def test_multi_margin(x):
    target = torch.tensor([1, 2, 3, 4])
    # per (sample, class) 4; per sample / C (4); mean over the 4 samples (4 + 1)
    assert counted(lambda: F.multi_margin_loss(x, target)) == {"aten.multi_margin_loss": 4 * N + 4 + 5}


def test_ctc_loss_lattice():
    log_probs = torch.randn(5, 2, 4).log_softmax(2)  # T=5, N=2, C=4
    targets = torch.tensor([[1, 2, 3], [1, 1, 2]])  # S = 3: 2S + 1 = 7 lattice states
    cells = 5 * 2 * 7
    forward = counted(lambda: torch.ops.aten._ctc_loss(log_probs, targets, [5, 5], [3, 3]))
    assert forward == {"aten._ctc_loss": 13 * cells + 6 * 2}
    rule = resolve(torch.ops.aten._ctc_loss_backward.default)
    grad = rule(torch.ones(2), log_probs, targets, [5, 5], [3, 3], torch.ones(2), torch.ones(2, 5, 7), 0,
                out=torch.empty(5, 2, 4))
    assert grad == (13 + 7) * cells + 6 * 5 * 2 * 4
