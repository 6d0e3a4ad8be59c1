"""Reductions, scans and softmax, worked out by hand.

Rule: reducing n elements costs n (the accumulator starts at the identity), per-result work
(divide, root, log) is counted per result. x below is (4, 6): n = 24, 4 rows of 6.
"""

import math

import pytest
import torch

from counting import counted

N, ROWS = 24, 4



@pytest.fixture
def x():
    return torch.randn(4, 6)


def test_sums_and_means(x):
    assert counted(lambda: x.sum()) == {"aten.sum": N}
    assert counted(lambda: x.sum(dim=1)) == {"aten.sum": N}  # 6 adds into each of 4 results
    assert counted(lambda: x.mean(dim=1)) == {"aten.mean": N + ROWS}  # + one divide per result
    assert counted(lambda: x.mean()) == {"aten.mean": N + 1}
    assert counted(lambda: x.prod(dim=0)) == {"aten.prod": N}
    assert counted(lambda: x.nansum()) == {"aten.nansum": 2 * N}  # isnan test, add


def test_comparison_reductions(x):
    assert counted(lambda: x.amax(dim=0)) == {"aten.amax": N}
    assert counted(lambda: x.argmax()) == {"aten.argmax": N}  # float comparisons, int result
    assert counted(lambda: x.max(dim=1)) == {"aten.max": N}
    # max(x, y) is CompositeImplicit: it decomposes to maximum, one comparison per element
    assert counted(lambda: torch.ops.aten.max.other(x, x)) == {"aten.maximum": N}
    assert counted(lambda: torch.aminmax(x)) == {"aten.aminmax": 2 * N}
    assert counted(lambda: torch.arange(24).reshape(4, 6).argmax()) == {}  # integers: 0


def test_variance_and_standard_deviation(x):
    # mean (n + r), subtract (n), square (n), sum (n), divide (r) = 4n + 2r; std: + sqrt (r)
    assert counted(lambda: x.var(dim=1)) == {"aten.var": 4 * N + 2 * ROWS}
    assert counted(lambda: x.std(dim=1)) == {"aten.std": 4 * N + 3 * ROWS}
    assert counted(lambda: torch.var_mean(x, dim=1)) == {"aten.var_mean": 4 * N + 2 * ROWS}
    assert counted(lambda: x.var()) == {"aten.var": 4 * N + 2}


def test_logsumexp(x):
    # max, subtract, exp, sum per element (4n); log and add the max back per result (2r)
    assert counted(lambda: x.logsumexp(dim=1)) == {"aten.logsumexp": 4 * N + 2 * ROWS}


def test_softmax_forward_and_backward(x):
    # softmax: max, subtract, exp, sum, divide = 5 per element
    assert counted(lambda: x.softmax(dim=1)) == {"aten._softmax": 5 * N}
    # log_softmax: max, subtract, exp, sum, subtract (5n) and one log per row
    assert counted(lambda: x.log_softmax(dim=1)) == {"aten._log_softmax": 5 * N + ROWS}
    leaf = x.clone().requires_grad_()
    backward = counted(lambda: leaf.softmax(dim=1).backward(torch.ones(4, 6)), "backward")
    assert backward == {"aten._softmax_backward_data": 4 * N}  # y (g - sum(g y))
    leaf = x.clone().requires_grad_()
    backward = counted(lambda: leaf.log_softmax(dim=1).backward(torch.ones(4, 6)), "backward")
    assert backward == {"aten._log_softmax_backward_data": 4 * N}  # g - exp(y) sum(g)


def test_norms(x):
    vector_norm = torch.linalg.vector_norm
    assert counted(lambda: vector_norm(x)) == {"aten.linalg_vector_norm": 2 * N + 1}  # sq, add; sqrt
    assert counted(lambda: vector_norm(x, 1)) == {"aten.linalg_vector_norm": 2 * N}  # abs, add
    assert counted(lambda: vector_norm(x, math.inf)) == {"aten.linalg_vector_norm": 2 * N}  # abs, max
    assert counted(lambda: vector_norm(x, 3)) == {"aten.linalg_vector_norm": 3 * N + 1}  # abs, pow, add; root
    assert counted(lambda: vector_norm(x, dim=1)) == {"aten.linalg_vector_norm": 2 * N + ROWS}
    # dist: one subtraction per element, then the 2-norm
    assert counted(lambda: torch.dist(x, x)) == {"aten.dist": N + 2 * N + 1}


def test_scans(x):
    assert counted(lambda: x.cumsum(dim=1)) == {"aten.cumsum": N}
    assert counted(lambda: x.cumprod(dim=0)) == {"aten.cumprod": N}
    assert counted(lambda: x.cummax(dim=1)) == {"aten.cummax": N}
    assert counted(lambda: x.logcumsumexp(dim=1)) == {"aten.logcumsumexp": 6 * N}  # a logaddexp each


def test_trace_and_complex_sums():
    assert counted(lambda: torch.randn(4, 6).trace()) == {"aten.trace": 4}  # 4 diagonal adds
    z = torch.randn(4, 6, dtype=torch.complex64)
    assert counted(lambda: z.sum()) == {"aten.sum": 2 * N}  # real and imaginary parts
