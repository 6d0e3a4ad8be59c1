"""Normalization forward and backward, worked out by hand.

x is (2, 3, 4, 5): n = 120 elements. Statistics cost 4 per element (sum for the mean; subtract,
square, add for the variance) and 4 per group (two divides, + eps, rsqrt); normalizing costs 2
per element, weight and bias 1 each.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dispatchcount.registry import resolve
from counting import counted

aten = torch.ops.aten
N = 120



@pytest.fixture
def x():
    return torch.randn(2, 3, 4, 5)


def test_layer_norm_forward(x):
    w, b = torch.ones(5), torch.zeros(5)
    groups = 2 * 3 * 4  # rows of 5
    expected = 4 * N + 4 * groups + 2 * N + N + N  # stats, normalize, weight, bias = 1056
    assert counted(lambda: F.layer_norm(x, (5,), w, b)) == {"aten.native_layer_norm": expected}
    assert counted(lambda: F.layer_norm(x, (4, 5))) == {"aten.native_layer_norm": 6 * N + 4 * 6}


def test_layer_norm_backward_counts_the_requested_gradients(x):
    w = torch.ones(5, requires_grad=True)
    b = torch.zeros(5, requires_grad=True)
    leaf = x.clone().requires_grad_()
    groups = 24
    x_hat = 2 * N
    grad_input = N + 7 * N + 2 * groups  # g*w; two sums, x̂*mean, 2 subtractions, *rstd; 2 means
    grad_weight, grad_bias = 2 * N, N  # sum(g x̂), sum(g)
    backward = counted(lambda: F.layer_norm(leaf, (5,), w, b).backward(torch.ones_like(x)), "backward")
    assert backward == {"aten.native_layer_norm_backward": x_hat + grad_input + grad_weight + grad_bias}
    leaf = x.clone().requires_grad_()
    only_input = counted(lambda: F.layer_norm(leaf, (5,)).backward(torch.ones_like(x)), "backward")
    assert only_input == {"aten.native_layer_norm_backward": x_hat + 7 * N + 2 * groups}


def test_group_and_instance_norm(x):
    # group norm with 3 groups per sample: 2 x 3 = 6 groups of 20
    assert counted(lambda: F.group_norm(x, 3)) == {"aten.native_group_norm": 6 * N + 4 * 6}
    # instance norm runs as batch norm over (1, N*C, H, W): 6 channels, batch statistics
    assert counted(lambda: F.instance_norm(x)) == {"aten.native_batch_norm": 6 * N + 4 * 6}


def test_batch_norm_training_and_eval(x):
    bn = nn.BatchNorm2d(3)
    channels = 3
    running_update = 3 * channels + 4 * channels  # (1-m) r + m s for mean; var with n/(n-1)
    train = 6 * N + 4 * channels + 2 * N + running_update  # stats, normalize, affine, update
    assert counted(lambda: bn(x)) == {"aten.native_batch_norm": train}
    bn.eval()
    # running statistics: rsqrt(var + eps) per channel, normalize and affine per element
    assert counted(lambda: bn(x)) == {"aten.native_batch_norm": 2 * channels + 2 * N + 2 * N}


def test_batch_norm_backward(x):
    bn = nn.BatchNorm2d(3)
    leaf = x.clone().requires_grad_()
    backward = counted(lambda: bn(leaf).backward(torch.ones_like(x)), "backward")
    # x̂ (2n), grad_input (n + 7n + 2C), grad_weight (2n), grad_bias (n), C = 3
    assert backward["aten.native_batch_norm_backward"] == 2 * N + (8 * N + 6) + 2 * N + N


def test_rms_norm_formula_on_meta_tensors():
    # F.rms_norm is CompositeImplicit (counted by its pieces on CPU); the fused kernel's
    # formula: mean of squares (2n + G), rsqrt(ms + eps) (2G), x * rstd (n), weight (n).
    x = torch.empty(2, 3, 4, 5, device="meta")
    w = torch.empty(5, device="meta")
    out = (torch.empty_like(x), torch.empty(2, 3, 4, 1, device="meta"))
    groups = 24
    assert resolve(aten._fused_rms_norm.default)(x, [5], w, 1e-6, out=out) == 3 * N + 3 * groups + N


def test_weight_norm_formula():
    v, g = torch.randn(6, 4), torch.randn(6, 1)
    # ||v|| per row: square and add (2 * 24) + a root per row (6); g / ||v|| (6); v * that (24)
    assert counted(lambda: torch._weight_norm(v, g, 0)) == {"aten._weight_norm_interface": 3 * 24 + 2 * 6}


def test_batch_norm_on_integer_free_dtypes_is_counted_in_bfloat16(x):
    bn = nn.BatchNorm2d(3).to(torch.bfloat16).eval()
    assert counted(lambda: bn(x.to(torch.bfloat16)))["aten.native_batch_norm"] == 2 * 3 + 4 * N
