"""The counting hook of ``convention="fvcore"``: fvcore's composite ops counted as JIT sees them.

fvcore counts ``aten::einsum``, ``aten::matmul``, ``aten::linear``, ``aten::instance_norm`` and
``aten::adaptive_avg_pool2d`` as one node each. Outside ``torch.inference_mode()`` a dispatch mode
only sees what they decompose into, and for some calls that changes the number: an einsum
outer product becomes a ``mul`` (fvcore charges half its size), a broadcast matmul becomes a
larger ``bmm`` (fvcore charges ``prod(a.shape) * b.shape[-1]``), ``AdaptiveAvgPool2d(1)`` runs as
``mean`` (fvcore charges the input size), instance norm in eval becomes an eval batch norm
(fvcore charges it as a training norm).

:class:`FvcoreFunctionMode` is a ``TorchFunctionMode`` that, for those Python functions only (and
for convolutions with string padding and ``scaled_dot_product_attention``, which fvcore sees as
nodes it has no handle for), turns the call into the aten composite op it stands for, charges
that op's ``convention="fvcore"`` rule once, and runs the call unchanged with the counting of
what it dispatches suspended. Every other call passes straight through; outputs are the very
tensors the call returns.

:class:`FvcoreDispatch` is FlopMode's dispatch hook for this convention (declared in
``dispatchcount.registry.CONVENTIONS``): the same counting, plus the suspension and the
function mode's lifetime. Per-analysis handles (``FlopCountAnalysis.set_op_handle``) reach it as
the counter's own formulas (``FlopMode(formulas=...)``), for composite calls too. An active ``TorchFunctionMode`` makes
``torch.overrides.has_torch_function`` true, which turns off the inference fast path of
``nn.MultiheadAttention`` and ``nn.TransformerEncoder(Layer)`` and so changes their output bits;
the function mode is therefore taken off the stack while those modules run (their ops are then
counted at dispatch level, which for them gives fvcore's numbers).

Limit: a ``TorchFunctionMode`` is not re-entered from inside a Python function that itself
handles ``__torch_function__`` (e.g. ``F.multi_head_attention_forward``); calls made there are
counted at dispatch level.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
from torch import nn
from torch._ops import OpOverload
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.overrides import TorchFunctionMode

from dispatchcount.dispatch import CountingDispatch
from dispatchcount.subclasses import subclass_runs
from dispatchcount.formulas._helpers import bind

__all__ = ["FvcoreDispatch", "FvcoreFunctionMode"]

aten = torch.ops.aten
Call = Optional[tuple[OpOverload, tuple]]


def _tensors(*values: Any) -> bool:
    return all(isinstance(v, torch.Tensor) for v in values)


def _einsum(args, kwargs) -> Call:
    if not args:
        return None
    if isinstance(args[0], str):
        operands = args[1:]
        if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
            operands = operands[0]
        equation = args[0]
    else:
        equation, operands = _sublist_equation(args)
    if not operands or not _tensors(*operands):
        return None
    return aten.einsum.default, (equation, list(operands))


def _letter(label: Any) -> str:
    if label is Ellipsis:
        return "..."
    return "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"[label]


def _sublist_equation(args: Sequence[Any]) -> tuple[str, list]:
    """``einsum(a, [0, 1], b, [1, 2], [0, 2])`` -> ("ab,bc->ac", [a, b])."""
    operands, terms = list(args[0::2]), args[1::2]
    output = None
    if len(args) % 2 == 1:  # the last argument is the output sublist
        operands, output = operands[:-1], args[-1]
    equation = ",".join("".join(_letter(i) for i in term) for term in terms)
    if output is not None:
        equation += "->" + "".join(_letter(i) for i in output)
    return equation, operands


def _matmul(args, kwargs) -> Call:
    a, b = bind(args, kwargs, ("input", "other"), {})
    return (aten.matmul.default, (a, b)) if _tensors(a, b) else None


def _rmatmul(args, kwargs) -> Call:
    a, b = bind(args, kwargs, ("self", "other"), {})
    return (aten.matmul.default, (b, a)) if _tensors(a, b) else None


def _linear(args, kwargs) -> Call:
    x, w, b = bind(args, kwargs, ("input", "weight", "bias"), {})
    return (aten.linear.default, (x, w, b)) if _tensors(x, w) else None


def _adaptive_avg_pool2d(args, kwargs) -> Call:
    x, size = bind(args, kwargs, ("input", "output_size"), {})
    return (aten.adaptive_avg_pool2d.default, (x, size)) if _tensors(x) else None


def _adaptive_avg_pool1d(args, kwargs) -> Call:
    x, size = bind(args, kwargs, ("input", "output_size"), {})
    return (aten.adaptive_avg_pool1d.default, (x, size)) if _tensors(x) else None


_F_INSTANCE_NORM = ("input", "running_mean", "running_var", "weight", "bias",
                    "use_input_stats", "momentum", "eps")
_ATEN_INSTANCE_NORM = ("input", "weight", "bias", "running_mean", "running_var",
                       "use_input_stats", "momentum", "eps", "cudnn_enabled")


def _f_instance_norm(args, kwargs) -> Call:
    x, mean, var, w, b, use_stats, momentum, eps = bind(
        args, kwargs, _F_INSTANCE_NORM, {"use_input_stats": True, "momentum": 0.1, "eps": 1e-5}
    )
    if not _tensors(x):
        return None
    return aten.instance_norm.default, (x, w, b, mean, var, use_stats, momentum, eps, False)


def _torch_instance_norm(args, kwargs) -> Call:
    values = bind(args, kwargs, _ATEN_INSTANCE_NORM, {})
    return (aten.instance_norm.default, tuple(values)) if _tensors(values[0]) else None


def _conv(args, kwargs) -> Call:
    x, w, b, stride, padding, dilation, groups = bind(
        args, kwargs, ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
        {"stride": 1, "padding": 0, "dilation": 1, "groups": 1},
    )
    if not isinstance(padding, str) or not _tensors(x, w):
        return None  # numeric padding dispatches aten.convolution, counted as fvcore counts it
    return aten._convolution_mode.default, (x, w, b, stride, padding, dilation, groups)


def _sdpa(args, kwargs) -> Call:
    q, k, v = bind(args, kwargs, ("query", "key", "value"), {})
    return (aten.scaled_dot_product_attention.default, (q, k, v)) if _tensors(q, k, v) else None


_CALLS: dict[Callable, Callable[[tuple, dict], Call]] = {
    torch.einsum: _einsum,
    torch.matmul: _matmul,
    torch.Tensor.matmul: _matmul,
    torch.Tensor.__matmul__: _matmul,
    torch.Tensor.__rmatmul__: _rmatmul,
    F.linear: _linear,
    F.adaptive_avg_pool2d: _adaptive_avg_pool2d,
    torch._C._nn.adaptive_avg_pool2d: _adaptive_avg_pool2d,
    torch.adaptive_avg_pool1d: _adaptive_avg_pool1d,
    F.instance_norm: _f_instance_norm,
    torch.instance_norm: _torch_instance_norm,
    torch.conv1d: _conv,
    torch.conv2d: _conv,
    torch.conv3d: _conv,
    F.scaled_dot_product_attention: _sdpa,
}


def _on_subclass(values: Any) -> bool:
    types = {type(t) for t in pytree.tree_leaves(values) if isinstance(t, torch.Tensor) and type(t) is not torch.Tensor}
    return bool(types) and subclass_runs(tuple(types))


class FvcoreFunctionMode(TorchFunctionMode):
    """Charges fvcore's composite ops once per Python call (see the module docstring)."""

    def __init__(self, counter: "FvcoreDispatch") -> None:
        super().__init__()
        self._counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        try:
            to_call = _CALLS.get(func)
            call = to_call(args, kwargs) if to_call is not None else None
        except Exception:  # unhashable callable, or arguments torch itself will reject
            call = None
        if call is None:
            return func(*args, **kwargs)
        op, op_args = call
        if _on_subclass(op_args):  # DTensor, NestedTensor ...: counted at dispatch, on the tensors they hold
            return func(*args, **kwargs)
        rule = self._counter.composite_rule(op)
        if rule is None:
            return func(*args, **kwargs)
        with self._counter.counting_suspended():
            out = func(*args, **kwargs)
        self._counter.charge(op, rule, op_args, {}, out)
        return out


# Modules whose forward takes an inference fast path only when has_torch_function is false.
_FAST_PATH_MODULES = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerEncoder)


class FvcoreDispatch(CountingDispatch):
    """FlopMode's dispatch hook under ``convention="fvcore"``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.suspended = 0
        self.functions = FvcoreFunctionMode(self)
        self._entered = 0
        self._handles: list[Any] = []
        self._thread: Optional[int] = None
        self._paused = 0
        self._popped = False

    # -- lifetime: the function mode lives as long as the outermost entry -------------------

    def __enter__(self):
        result = super().__enter__()
        self._entered += 1
        if self._entered == 1:
            self._thread = threading.get_ident()
            self.functions.__enter__()
            self._handles = [
                register_module_forward_pre_hook(self._pause),
                register_module_forward_hook(self._resume, always_call=True),
            ]
        return result

    def __exit__(self, exc_type, exc, tb):
        self._entered -= 1
        if self._entered == 0:
            for handle in self._handles:
                handle.remove()
            self._handles = []
            if not self._popped:
                self.functions.__exit__(exc_type, exc, tb)
            self._paused, self._popped = 0, False
        return super().__exit__(exc_type, exc, tb)

    def _pause(self, module: nn.Module, args: Any) -> None:
        if not isinstance(module, _FAST_PATH_MODULES) or threading.get_ident() != self._thread:
            return
        if self._paused == 0:
            depth = torch._C._len_torch_function_stack()
            if depth and torch._C._get_function_stack_at(depth - 1) is self.functions:
                torch._C._pop_torch_function_stack()
                self._popped = True
        self._paused += 1

    def _resume(self, module: nn.Module, args: Any, output: Any) -> None:
        if not isinstance(module, _FAST_PATH_MODULES) or threading.get_ident() != self._thread:
            return
        if self._paused == 0:
            return
        self._paused -= 1
        if self._paused == 0 and self._popped:
            torch._C._push_on_torch_function_stack(self.functions)
            self._popped = False

    # -- counting ------------------------------------------------------------------------

    @contextmanager
    def counting_suspended(self) -> Iterator[None]:
        """While entered, dispatched ops run uncounted (a composite op was charged for them)."""
        self.suspended += 1
        try:
            yield
        finally:
            self.suspended -= 1

    def composite_rule(self, op: OpOverload) -> Optional[Callable[..., Any]]:
        """The formula to charge for composite ``op`` at the Python call, or None."""
        if self.suspended:
            return None
        rule = self.rule(op)
        return rule if callable(rule) else None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.suspended:
            return func(*args, **(kwargs or {}))
        return super().__torch_dispatch__(func, types, args, kwargs)
