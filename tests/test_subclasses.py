"""Tensor subclasses are counted on the tensors they hold, never recurse, and never leave the hook installed.

Jagged NestedTensors (a batch of sequences of 3 and 5 tokens), C++ strided nested tensors and
``TwoTensor`` wrappers. Every count is derived by hand (a matmul of (m, k) by (k, n) is 2 m k n;
softmax 6 per element as ``_safe_softmax``, its backward 4, docs/conventions.md) and checked
against the same model run on the dense tensors the subclass holds.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing._internal.two_tensor import TwoTensor
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack, is_in_torch_dispatch_mode

from dispatchcount import FlopMode
from dispatchcount.dispatch import CountingDispatch

LENGTHS = (3, 5)
T = sum(LENGTHS)  # tokens in the batch


def jagged(width: int, requires_grad: bool = False) -> torch.Tensor:
    return torch.nested.nested_tensor([torch.randn(n, width) for n in LENGTHS], layout=torch.jagged,
                                      requires_grad=requires_grad)


@pytest.fixture(autouse=True)
def _no_hook_left():
    yield
    assert _get_current_dispatch_mode_stack() == []


def test_jagged_linear_forward_and_backward_count_the_values(no_warnings):
    lin = nn.Linear(8, 4)
    x = jagged(8, requires_grad=True)
    with FlopMode(lin, strict=True) as fm:
        out = lin(x)
        out.values().sum().backward()
    matmul = 2 * T * 8 * 4
    # forward addmm; backward: the input's and the weight's gradients; sums: the loss and the bias gradient
    assert fm.by_operator() == {"aten.mm": 2 * matmul, "aten.addmm": matmul, "aten.sum": T * 4 + T * 4}
    assert fm.total(phase="backward") == 2 * matmul + T * 4
    dense_x = x.values().detach().clone().requires_grad_()
    lin.zero_grad()
    with FlopMode(lin) as dense:
        lin(dense_x).sum().backward()
    assert fm.by_operator() == dense.by_operator()
    assert torch.equal(out.values(), lin(x).values())


def test_jagged_matmul_and_fvcore(no_warnings):
    x, w = jagged(8), torch.randn(8, 4)
    with FlopMode(strict=True) as fm:
        y = x @ w
    assert fm.by_operator() == {"aten.mm": 2 * T * 8 * 4}
    assert torch.equal(y.values(), x.values() @ w)
    lin = nn.Linear(8, 4)
    with FlopMode(lin, convention="fvcore", strict=True) as fv:
        lin(x)
        x @ w
    assert fv.by_operator() == {"aten.linear": T * 8 * 4, "aten.matmul": T * 8 * 4}  # multiply-adds


def test_jagged_attention_forward_and_backward():
    heads, head_dim = 2, 8
    x = jagged(heads * head_dim, requires_grad=True)

    def attention(t):
        q = t.unflatten(-1, (heads, head_dim)).transpose(1, 2)
        return F.scaled_dot_product_attention(q, q, q)

    with FlopMode(strict=True) as fm:
        out = attention(x)
        out.values().sum().backward()
    pairs = heads * sum(n * n for n in LENGTHS)  # (query, key) pairs: 68
    elements = T * heads * head_dim  # 128
    assert fm.by_operator(phase="forward") == {
        "aten.bmm": 2 * (2 * pairs * head_dim),  # Q K^T and P V, per sequence
        "aten.mul": 2 * elements,  # q and k scaled by sqrt(scale)
        "aten._safe_softmax": 6 * pairs,
        "aten.sum": elements,  # the loss
    }
    assert fm.by_operator(phase="backward") == {
        "aten.matmul_backward": 2 * 2 * (2 * pairs * head_dim),  # both products, both gradients
        "aten._softmax_backward_data": 4 * pairs,
        "aten.mul": 2 * elements,
        "aten.add": 2 * elements,  # x is q, k and v: three gradients summed
    }
    assert torch.equal(out.values(), attention(x).values())


def test_strided_nested_matmul_is_counted_per_component(no_warnings):
    a = torch.nested.nested_tensor([torch.randn(n, 8) for n in LENGTHS])
    b = torch.nested.nested_tensor([torch.randn(8, 4) for _ in LENGTHS])
    with FlopMode(strict=True) as fm:
        y = torch.matmul(a, b)
    assert fm.by_operator() == {"aten.mm": 2 * T * 8 * 4}  # one dense product per component
    assert all(torch.equal(yi, plain) for yi, plain in zip(y.unbind(), torch.matmul(a, b).unbind()))


def test_two_tensor_counts_both_of_its_tensors(no_warnings):
    a, b, w = torch.randn(4, 8), torch.randn(4, 8), torch.randn(8, 3)
    with FlopMode(strict=True) as fm:
        r = TwoTensor(a, b) @ w
    assert fm.by_operator() == {"aten.mm": 2 * (2 * 4 * 8 * 3)}  # a @ w and b @ w
    assert torch.equal(r.a, a @ w) and torch.equal(r.b, b @ w)


def test_an_exit_that_left_a_copy_of_the_hook_never_keeps_counting():
    x = torch.randn(4, 4)
    with FlopMode() as fm:
        x @ x
        fm._hook.__enter__()  # as an inner ``with hook:`` whose exit never ran
    assert _get_current_dispatch_mode_stack() == [] and not is_in_torch_dispatch_mode()
    x @ x
    assert fm.total() == 2 * 4 * 4 * 4


def test_an_exit_that_raises_still_takes_the_hook_off(monkeypatch):
    def exit_at_the_recursion_limit(self, *exc):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(CountingDispatch, "__exit__", exit_at_the_recursion_limit)
    x = torch.randn(4, 4)
    with pytest.raises(RecursionError):
        with FlopMode() as fm:
            x @ x
    monkeypatch.undo()
    assert _get_current_dispatch_mode_stack() == [] and not is_in_torch_dispatch_mode()
    x @ x
    assert fm.total() == 2 * 4 * 4 * 4


def test_the_modes_above_a_stale_hook_are_kept():
    from torch.utils._python_dispatch import TorchDispatchMode, _pop_mode, _push_mode

    class Other(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    other, fm = Other(), FlopMode()
    fm.__enter__()
    _push_mode(other)  # pushed without a with block: only the stack changes
    fm._hook.__enter__()  # a stale copy above the other mode
    fm.__exit__(None, None, None)
    assert _get_current_dispatch_mode_stack() == [other]
    assert _pop_mode() is other
    assert not is_in_torch_dispatch_mode()
