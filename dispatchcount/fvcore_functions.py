"""Count fvcore's composite ops at the Python call, as JIT tracing sees them.

fvcore counts ``aten::einsum``, ``aten::matmul``, ``aten::linear``, ``aten::instance_norm`` and
``aten::adaptive_avg_pool2d`` as one node each. Outside ``torch.inference_mode()`` a dispatch mode
only sees what they decompose into, and for some calls that changes the number: an einsum
outer product becomes a ``mul`` (fvcore charges half its size), a broadcast matmul becomes a
larger ``bmm`` (fvcore charges ``prod(a.shape) * b.shape[-1]``), ``AdaptiveAvgPool2d(1)`` runs as
``mean`` (fvcore charges the input size), instance norm in eval becomes an eval batch norm
(fvcore charges it as a training norm).

:class:`FvcoreFunctionMode` is a ``TorchFunctionMode`` that, for those Python functions only,
turns the call into the aten composite op it stands for, has the counter charge that op's
``convention="fvcore"`` rule once, and runs the call unchanged with the counting of what it
dispatches suspended. Every other call passes straight through. Outputs are the very tensors
the call returns.

Limit: a ``TorchFunctionMode`` is not re-entered from inside a Python function that itself
handles ``__torch_function__`` (e.g. ``F.multi_head_attention_forward``); calls made there are
counted at dispatch level.
"""

from __future__ import annotations

from typing import Any, Callable, ContextManager, Optional, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch._ops import OpOverload
from torch.overrides import TorchFunctionMode

__all__ = ["FvcoreFunctionMode", "CompositeCounter"]

aten = torch.ops.aten
Call = Optional[tuple[OpOverload, tuple]]


class CompositeCounter(Protocol):
    """What :class:`FvcoreFunctionMode` needs from the counter (FlopMode provides it)."""

    def count_composite(self, op: OpOverload, args: tuple, kwargs: dict, out: Any) -> None:
        """Charge ``op``'s rule, with these schema-ordered arguments and result, once."""

    def counting_suspended(self) -> ContextManager[None]:
        """While entered, dispatched ops are seen but charged 0."""


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

    def __init__(self, counter: CompositeCounter) -> None:
        super().__init__()
        self._counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        to_call = _CALLS.get(func)
        call = to_call(args, kwargs) if to_call is not None else None
        if call is None:
            return func(*args, **kwargs)
        with self._counter.counting_suspended():
            out = func(*args, **kwargs)
        op, op_args = call
        self._counter.count_composite(op, op_args, {}, out)
        return out
