"""Optimizer steps: _foreach_* ops and fused kernels, worked out by hand.

Parameters below have 12 + 5 = 17 elements.
"""

import pytest
import torch
from torch import nn

from counting import counted

N = 17



@pytest.fixture
def params():
    ps = [nn.Parameter(torch.randn(3, 4)), nn.Parameter(torch.randn(5))]
    for p in ps:
        p.grad = torch.randn_like(p)
    return ps


def test_foreach_ops_cost_their_pointwise_op_per_tensor():
    a = [torch.randn(3, 4), torch.randn(5)]
    b = [torch.randn(3, 4), torch.randn(5)]
    assert counted(lambda: torch._foreach_add(a, b)) == {"aten._foreach_add": N}
    assert counted(lambda: torch._foreach_add(a, b, alpha=2)) == {"aten._foreach_add": 2 * N}
    assert counted(lambda: torch._foreach_mul_([t.clone() for t in a], 0.5))["aten._foreach_mul_"] == N
    assert counted(lambda: torch._foreach_addcmul(a, a, b, value=0.5)) == {"aten._foreach_addcmul": 3 * N}
    assert counted(lambda: torch._foreach_lerp(a, b, 0.1)) == {"aten._foreach_lerp": 3 * N}
    assert counted(lambda: torch._foreach_sqrt([t.abs() for t in a]))["aten._foreach_sqrt"] == N
    # 2-norm per tensor: square and add per element, a root per tensor
    assert counted(lambda: torch._foreach_norm(a)) == {"aten._foreach_norm": 2 * N + 2}
    ints = [torch.arange(4), torch.arange(3)]
    assert counted(lambda: torch._foreach_add(ints, 1)) == {}


def test_fused_adam_and_adamw(params):
    adam = torch.optim.Adam(params, fused=True)
    # 13 per element; the two step counters (one element each) are incremented by _foreach_add_
    assert counted(adam.step) == {"aten._fused_adam_": 13 * N, "aten._foreach_add_": 2}
    adam = torch.optim.Adam(params, fused=True, weight_decay=0.1, amsgrad=True)
    assert counted(adam.step)["aten._fused_adam_"] == (13 + 2 + 1) * N  # g += wd p; max
    adamw = torch.optim.AdamW(params, fused=True)  # decoupled decay 0.01: p *= 1 - lr wd
    assert counted(adamw.step)["aten._fused_adamw_"] == (13 + 1) * N


def test_fused_sgd_and_adagrad(params):
    sgd = torch.optim.SGD(params, lr=0.1, momentum=0.9, fused=True)
    assert counted(sgd.step) == {"aten._fused_sgd_": 2 * N}  # first step: the buffer is g
    assert counted(sgd.step) == {"aten._fused_sgd_": (2 + 3) * N}  # then mu buf + (1 - d) g
    adagrad = torch.optim.Adagrad(params, fused=True)
    assert counted(adagrad.step)["aten._fused_adagrad_"] == 7 * N


def test_amp_unscale(params):
    grads = [p.grad for p in params]
    found_inf, inv_scale = torch.zeros(1), torch.full((1,), 0.5)
    # isfinite test and a multiply per gradient element
    assert counted(lambda: torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv_scale)) == {
        "aten._amp_foreach_non_finite_check_and_unscale_": 2 * N
    }
