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

:class:`FvcoreDispatch` is FlopMode's dispatch hook for this convention: the same counting, plus
the suspension, per-analysis rule overrides (``dispatchcount.fvcore.FlopCountAnalysis.set_op_handle``),
and the function mode's lifetime. An active ``TorchFunctionMode`` makes
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
from torch import nn
from torch._ops import OpOverload
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.overrides import TorchFunctionMode

from dispatchcount.mode import _as_count, _CountingDispatch
from dispatchcount.registry import resolve

__all__ = ["FvcoreDispatch", "FvcoreFunctionMode"]

aten = torch.ops.aten
Call = Optional[tuple[OpOverload, tuple]]


def _bind(args: Sequence[Any], kwargs: dict, names: Sequence[str], defaults: dict) -> list:
    values = list(args[: len(names)])
    for name in names[len(values):]:
        values.append(kwargs.get(name, defaults.get(name)))
    return values


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
    a, b = _bind(args, kwargs, ("input", "other"), {})
    return (aten.matmul.default, (a, b)) if _tensors(a, b) else None


def _rmatmul(args, kwargs) -> Call:
    a, b = _bind(args, kwargs, ("self", "other"), {})
    return (aten.matmul.default, (b, a)) if _tensors(a, b) else None


def _linear(args, kwargs) -> Call:
    x, w, b = _bind(args, kwargs, ("input", "weight", "bias"), {})
    return (aten.linear.default, (x, w, b)) if _tensors(x, w) else None


def _adaptive_avg_pool2d(args, kwargs) -> Call:
    x, size = _bind(args, kwargs, ("input", "output_size"), {})
    return (aten.adaptive_avg_pool2d.default, (x, size)) if _tensors(x) else None


def _adaptive_avg_pool1d(args, kwargs) -> Call:
    x, size = _bind(args, kwargs, ("input", "output_size"), {})
    return (aten.adaptive_avg_pool1d.default, (x, size)) if _tensors(x) else None


_F_INSTANCE_NORM = ("input", "running_mean", "running_var", "weight", "bias",
                    "use_input_stats", "momentum", "eps")
_ATEN_INSTANCE_NORM = ("input", "weight", "bias", "running_mean", "running_var",
                       "use_input_stats", "momentum", "eps", "cudnn_enabled")


def _f_instance_norm(args, kwargs) -> Call:
    x, mean, var, w, b, use_stats, momentum, eps = _bind(
        args, kwargs, _F_INSTANCE_NORM, {"use_input_stats": True, "momentum": 0.1, "eps": 1e-5}
    )
    if not _tensors(x):
        return None
    return aten.instance_norm.default, (x, w, b, mean, var, use_stats, momentum, eps, False)


def _torch_instance_norm(args, kwargs) -> Call:
    values = _bind(args, kwargs, _ATEN_INSTANCE_NORM, {})
    return (aten.instance_norm.default, tuple(values)) if _tensors(values[0]) else None


def _conv(args, kwargs) -> Call:
    x, w, b, stride, padding, dilation, groups = _bind(
        args, kwargs, ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
        {"stride": 1, "padding": 0, "dilation": 1, "groups": 1},
    )
    if not isinstance(padding, str) or not _tensors(x, w):
        return None  # numeric padding dispatches aten.convolution, counted as fvcore counts it
    return aten._convolution_mode.default, (x, w, b, stride, padding, dilation, groups)


def _sdpa(args, kwargs) -> Call:
    q, k, v = _bind(args, kwargs, ("query", "key", "value"), {})
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
        rule = self._counter.composite_rule(op)
        if rule is None:
            return func(*args, **kwargs)
        with self._counter.counting_suspended():
            out = func(*args, **kwargs)
        self._counter.charge_rule(op, rule, op_args, out)
        return out


# Modules whose forward takes an inference fast path only when has_torch_function is false.
_FAST_PATH_MODULES = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerEncoder)


class FvcoreDispatch(_CountingDispatch):
    """FlopMode's dispatch hook under ``convention="fvcore"``.

    ``overrides`` maps an ``OpOverload`` to a rule (a formula, or ``None`` to count 0) that
    replaces the registered one for this counter only.
    """

    def __init__(self, counter: Any, overrides: Optional[dict] = None) -> None:
        super().__init__(counter)
        self.overrides: dict = dict(overrides or {})
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

    def rule_for(self, op: OpOverload) -> Any:
        if self.overrides and op in self.overrides:
            rule = self.overrides[op]
            return _count_zero if rule is None else rule
        return resolve(op, self.convention)

    def composite_rule(self, op: OpOverload) -> Optional[Callable[..., Any]]:
        """The formula to charge for composite ``op`` at the Python call, or None."""
        if self.suspended:
            return None
        rule = self.rule_for(op)
        return rule if callable(rule) else None

    def charge_rule(
        self, op: OpOverload, rule: Callable[..., Any], args: tuple, out: Any, kwargs: Optional[dict] = None
    ) -> None:
        """Charge ``rule(*args, out=out, **kwargs)`` to the running module, as a call of ``op``."""
        try:
            if kwargs:
                kwargs = {k: v for k, v in kwargs.items() if k != "out"}  # ``out=`` is the result
                flops = rule(*args, out=out, **kwargs)
            else:
                flops = rule(*args, out=out)
            if type(flops) is not int:
                flops = _as_count(flops)
        except Exception as error:
            self.counter._note_error(op, error)
            return
        self.record(op, flops)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.suspended:
            return func(*args, **(kwargs or {}))
        if self.overrides and func in self.overrides:
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            self.charge_rule(func, self.rule_for(func), args, out, kwargs)
            return out
        return super().__torch_dispatch__(func, types, args, kwargs)


def _count_zero(*args: Any, out: Any = None, **kwargs: Any) -> int:
    return 0
