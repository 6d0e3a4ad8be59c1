"""fvcore's tests/test_activation_count.py, case by case, against dispatchcount.fvcore."""

from __future__ import annotations

from collections import Counter, defaultdict
from math import prod

import torch
from torch import nn

from dispatchcount.fvcore import ActivationCountAnalysis, activation_count
from fvcore_reference import fvcore_nn, quiet, scaled  # noqa: F401 (quiet: an autouse fixture)


LIN_OP = "linear"  # what nn.Linear traces to on this PyTorch (tests/test_fvcore_flop_count.py)


class SmallConvNet(nn.Module):
    def __init__(self, input_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_dim, 8, 1, 1)
        self.conv2 = nn.Conv2d(8, 4, 1, 2)
        self.conv3 = nn.Conv2d(4, 2, 1, 2)

    def forward(self, x):
        return self.conv3(self.conv2(self.conv1(x)))


# (1, 3, 32, 32) -> conv1 (1, 8, 32, 32), conv2 stride 2 (1, 4, 16, 16), conv3 (1, 2, 8, 8)
CONV_OUTPUTS = (8 * 32 * 32, 4 * 16 * 16, 2 * 8 * 8)


def mega(**counts: float) -> defaultdict:
    return scaled(1e6, **counts)


def test_conv2d():
    x = torch.randn(1, 3, 32, 32)
    net = SmallConvNet(3)
    counts, _ = activation_count(net, (x,))
    assert counts == mega(conv=sum(CONV_OUTPUTS))
    # the output sizes, as fvcore's test computes them: run the layers
    sizes = []
    y = x
    for layer in (net.conv1, net.conv2, net.conv3):
        y = layer(y)
        sizes.append(prod(y.shape))
    assert tuple(sizes) == CONV_OUTPUTS


def test_linear():
    counts, _ = activation_count(nn.Linear(10, 20), (torch.randn(1, 10),))
    assert counts == mega(**{LIN_OP: 1 * 20})


def test_supported_ops():
    counts, _ = activation_count(SmallConvNet(3), (torch.randn(1, 3, 32, 32),),
                                 {"aten::_convolution": lambda inputs, outputs: Counter({"conv": 100})})
    assert counts == mega(conv=100 * 3)


def test_activation_count_class():
    linear = nn.Linear(10, 20)
    assert ActivationCountAnalysis(linear, (torch.randn(1, 10),)).by_module() == Counter({"": 20})
    net = SmallConvNet(3)
    analysis = ActivationCountAnalysis(net, (torch.randn(1, 3, 32, 32),))
    assert analysis.by_module() == Counter({"": sum(CONV_OUTPUTS), "conv1": CONV_OUTPUTS[0],
                                            "conv2": CONV_OUTPUTS[1], "conv3": CONV_OUTPUTS[2]})


def test_matches_fvcore_on_products_and_their_unsupported_ops():
    class Products(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(6, 5)

        def forward(self, x):
            y = self.fc(self.bn(self.conv(x)))                  # (2, 4, 6, 5)
            z = torch.matmul(y, y.transpose(-1, -2))            # (2, 4, 6, 6)
            return torch.einsum("bcij,bcjk->bcik", z, z).relu()

    model, inputs = Products(), (torch.randn(2, 3, 8, 8),)
    ours, theirs = ActivationCountAnalysis(model, inputs), fvcore_nn.ActivationCountAnalysis(model, inputs)
    assert ours.by_module_and_operator() == theirs.by_module_and_operator()
    assert ours.by_operator() == Counter({"conv": 2 * 4 * 6 * 6, LIN_OP: 2 * 4 * 6 * 5,
                                          "matmul": 2 * 4 * 6 * 6, "einsum": 2 * 4 * 6 * 6})
    assert ours.unsupported_ops() == theirs.unsupported_ops()  # batch norm and its counter update
