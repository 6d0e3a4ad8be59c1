"""Pointwise formulas, worked out by hand: FLOPs per element x elements (docs/conventions.md)."""

import pytest
import torch
import torch.nn.functional as F

from counting import counted

N = 12  # elements of the (3, 4) operands below



@pytest.fixture
def x():
    return torch.randn(3, 4)


def test_arithmetic_is_one_flop_per_element(x):
    y = torch.randn(3, 4)
    assert counted(lambda: x + y) == {"aten.add": N}
    assert counted(lambda: x * y) == {"aten.mul": N}
    assert counted(lambda: x / y) == {"aten.div": N}
    assert counted(lambda: -x) == {"aten.neg": N}


def test_a_scalar_factor_counts_only_when_it_is_not_one(x):
    y = torch.randn(3, 4)
    assert counted(lambda: torch.add(x, y, alpha=1)) == {"aten.add": N}
    assert counted(lambda: torch.add(x, y, alpha=2)) == {"aten.add": 2 * N}  # x + 2*y: mul, add
    assert counted(lambda: torch.addcmul(x, y, y)) == {"aten.addcmul": 2 * N}  # x + y*y
    assert counted(lambda: torch.addcmul(x, y, y, value=0.5)) == {"aten.addcmul": 3 * N}


def test_broadcast_result_counts_its_elements():
    a, b = torch.randn(3, 1), torch.randn(1, 4)
    assert counted(lambda: a * b) == {"aten.mul": 3 * 4}


def test_in_place_and_out_variants_cost_the_same(x):
    y = torch.randn(3, 4)
    assert counted(lambda: x.clone().add_(y)) == {"aten.add_": N}
    assert counted(lambda: torch.add(x, y, out=torch.empty(3, 4))) == {"aten.add": N}
    assert counted(lambda: torch.sigmoid(x, out=torch.empty(3, 4))) == {"aten.sigmoid": 4 * N}


def test_integer_and_bool_operands_cost_nothing():
    i = torch.arange(12).reshape(3, 4)
    assert counted(lambda: i + i) == {}  # reports leave out operators that counted 0
    assert counted(lambda: i * 3) == {}
    assert counted(lambda: i == i) == {}
    assert counted(lambda: i.pow(2)) == {}
    assert counted(lambda: (i > 3) & (i < 9)) == {}
    # An integer tensor divided (true division) produces floats: floating-point divides.
    assert counted(lambda: i / 2) == {"aten.div": N}


def test_comparisons_of_floats_count_one(x):
    assert counted(lambda: x > 0) == {"aten.gt": N}
    assert counted(lambda: torch.isnan(x)) == {"aten.isnan": N}
    assert counted(lambda: torch.maximum(x, x)) == {"aten.maximum": N}


def test_clamp_costs_one_comparison_per_bound(x):
    assert counted(lambda: x.clamp(min=0)) == {"aten.clamp": N}
    assert counted(lambda: x.clamp(-1, 1)) == {"aten.clamp": 2 * N}
    assert counted(lambda: x.clamp_min(0)) == {"aten.clamp_min": N}


def test_division_with_rounding_and_rounding_to_decimals(x):
    assert counted(lambda: torch.div(x, 2.0, rounding_mode="floor")) == {"aten.div": 2 * N}
    assert counted(lambda: torch.round(x, decimals=2)) == {"aten.round": 3 * N}  # *100, round, /100


def test_transcendental_functions_count_one_evaluation(x):
    for fn, name in ((torch.exp, "exp"), (torch.tanh, "tanh"), (torch.erf, "erf"), (torch.sqrt, "sqrt")):
        assert counted(lambda: fn(x.abs())).get(f"aten.{name}") == N


def test_fused_activations_count_their_arithmetic(x):
    assert counted(lambda: torch.sigmoid(x)) == {"aten.sigmoid": 4 * N}  # 1/(1+exp(-x))
    assert counted(lambda: F.silu(x)) == {"aten.silu": 5 * N}  # x * sigmoid(x)
    assert counted(lambda: F.gelu(x)) == {"aten.gelu": 5 * N}  # x/2 (1 + erf(x/sqrt2))
    # tanh form: x^2, x^3, 0.044715 x^3, add, sqrt(2/pi)*, tanh, 1+, *x, *0.5 = 9
    assert counted(lambda: F.gelu(x, approximate="tanh")) == {"aten.gelu": 9 * N}
    assert counted(lambda: F.softplus(x)) == {"aten.softplus": 6 * N}
    assert counted(lambda: F.elu(x)) == {"aten.elu": 6 * N}
    assert counted(lambda: F.hardswish(x)) == {"aten.hardswish": 5 * N}
    assert counted(lambda: F.leaky_relu(x)) == {"aten.leaky_relu": 2 * N}
    assert counted(lambda: torch.lerp(x, x, 0.5)) == {"aten.lerp": 3 * N}  # a + w (b - a)


@pytest.mark.parametrize(
    "fn, op, per_element",
    [
        (torch.sigmoid, "aten.sigmoid_backward", 3),  # g * y * (1 - y)
        (torch.tanh, "aten.tanh_backward", 3),  # g * (1 - y * y)
        (torch.relu, "aten.threshold_backward", 1),  # x <= 0 ? 0 : g
        (F.gelu, "aten.gelu_backward", 11),  # cdf 4 + pdf 4 + g (cdf + x pdf) 3
        (F.silu, "aten.silu_backward", 9),  # sigmoid 4 + g s (1 + x (1 - s)) 5
        (F.mish, "aten.mish_backward", 14),  # tanh(softplus) 4, sigmoid 4, g (t + x s (1 - t^2)) 6
    ],
)
def test_activation_gradients(x, fn, op, per_element):
    leaf = x.clone().requires_grad_()  # a fresh leaf: no gradient accumulation into .grad
    backward = counted(lambda: fn(leaf).backward(torch.ones(3, 4)), "backward")
    assert backward == {op: per_element * N}


def test_complex_elements(x):
    z = torch.randn(3, 4, dtype=torch.complex64)
    assert counted(lambda: z + z) == {"aten.add": 2 * N}  # real and imaginary adds
    assert counted(lambda: z * z) == {"aten.mul": 4 * N}  # complex products: 4x
    assert counted(lambda: z.abs()) == {"aten.abs": 4 * N}  # sqrt(re^2 + im^2) from a complex operand


def test_argument_dependent_costs(x):
    assert counted(lambda: torch.mvlgamma(x.abs() + 2, p=3)) == {"aten.add": N, "aten.abs": N,
                                                                  "aten.mvlgamma": 3 * 3 * N}
    assert counted(lambda: torch.logit(x.sigmoid(), eps=1e-6))["aten.logit"] == (3 + 2) * N
    training = counted(lambda: torch.ops.aten.native_dropout(x, 0.5, True))
    assert training == {"aten.native_dropout": 2 * N}  # x * mask * scale
    assert counted(lambda: torch.ops.aten.native_dropout(x, 0.5, False)) == {}  # eval: a copy


def test_selections_and_logic_are_zero(x):
    mask = x > 0
    # Only the comparison that made the mask and the negation are arithmetic.
    assert counted(lambda: torch.where(x > 0, x, -x)) == {"aten.gt": N, "aten.neg": N}
    assert counted(lambda: x.masked_fill(mask, 0.0)) == {}
    assert counted(lambda: torch.logical_and(x, x)) == {}
    assert counted(lambda: x.clone()) == {}
