"""The counting hook of ``convention="fvcore"``: fvcore's composite ops counted as JIT sees them.

fvcore counts ``aten::einsum``, ``aten::matmul``, ``aten::linear``, ``aten::instance_norm`` and
``aten::adaptive_avg_pool2d`` as one node each. Outside ``torch.inference_mode()`` a dispatch mode
only sees what they decompose into, and for some calls that changes the number: an einsum
outer product becomes a ``mul`` (fvcore charges half its size), a broadcast matmul becomes a
larger ``bmm`` (fvcore charges ``prod(a.shape) * b.shape[-1]``), ``AdaptiveAvgPool2d(1)`` runs as
``mean`` (fvcore charges the input size), instance norm in eval becomes an eval batch norm
(fvcore charges it as a training norm).

:class:`FvcoreFunctionMode` is a ``TorchFunctionMode`` that, for those Python functions only (and
for convolutions with string padding, which fvcore sees as a node it has no handle for;
``scaled_dot_product_attention`` is one call on every backend for every convention, see
``dispatchcount.sdpa``), turns the call into the aten composite op it stands for, charges
that op's ``convention="fvcore"`` rule once, and runs the call unchanged with the counting of
what it dispatches suspended. Every other call passes straight through; outputs are the very
tensors the call returns.

:class:`FvcoreDispatch` is FlopMode's dispatch hook for this convention (declared in
``dispatchcount.registry.CONVENTIONS``): the same counting, plus the suspension and the
function mode's lifetime. Per-analysis handles (``FlopCountAnalysis.set_op_handle``) reach it as
the counter's own formulas (``FlopMode(formulas=...)``), for composite calls too. An active ``TorchFunctionMode`` makes
``torch.overrides.has_torch_function`` true, which turns off the inference fast path of
``nn.MultiheadAttention`` and ``nn.TransformerEncoder(Layer)`` and so changes their output bits;
the function mode is therefore taken off the stack while those modules run, when their fast
path is possible at all (their ops are then counted at dispatch level, which for them gives
fvcore's numbers). Set handles (``FlopCountAnalysis.set_op_handle``) come as
``handles.KeyedHandle`` rules; :meth:`FvcoreDispatch.charge` files their counts under the keys
they return.

The function mode also counts recurrent layers at the call (``torch.lstm``, ``torch.gru`` ...,
the cells): what they dispatch depends on the backend (one ``mkldnn_rnn_layer`` per layer on
CPU, ``_cudnn_rnn`` on CUDA, a loop of ``addmm`` for a CPU GRU), the call's gate products do not.

Limit: a ``TorchFunctionMode`` is not re-entered from inside a Python function that itself
handles ``__torch_function__`` (e.g. ``F.multi_head_attention_forward``); calls made there are
counted at dispatch level. For ``F.multi_head_attention_forward`` without attention weights
(``need_weights=False``), the attention is ``scaled_dot_product_attention``, which fvcore has
no handle for; when it runs its math path (meta tensors, dropout in training ...) it
dispatches two ``bmm`` per call, which are therefore charged as
``aten._scaled_dot_product_attention_math`` (beyond fvcore) while that function runs.
"""

from __future__ import annotations

import inspect
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
from dispatchcount.fvcore.handles import KeyedHandle, handle_key
from dispatchcount.registry import UNSUPPORTED, resolve

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


def _rnn(packet: Any, data_if_tensor_at: int):
    """A recurrent layer call: the ``data`` overload (packed sequence) when argument
    ``data_if_tensor_at`` is a tensor (``batch_sizes`` for LSTM, ``hx`` for GRU/RNN)."""

    def call(args, kwargs) -> Call:
        if kwargs or len(args) <= data_if_tensor_at or not isinstance(args[0], torch.Tensor):
            return None
        packed = isinstance(args[data_if_tensor_at], torch.Tensor)
        return (packet.data if packed else packet.input), tuple(args)

    return call


def _rnn_cell(op: OpOverload):
    def call(args, kwargs) -> Call:
        if kwargs or len(args) < 4 or not _tensors(args[0], args[2], args[3]):
            return None
        return op, tuple(args)

    return call


_CALLS: dict[Callable, Callable[[tuple, dict], Call]] = {
    torch.lstm: _rnn(aten.lstm, 1),
    torch.gru: _rnn(aten.gru, 2),
    torch.rnn_tanh: _rnn(aten.rnn_tanh, 2),
    torch.rnn_relu: _rnn(aten.rnn_relu, 2),
    torch.lstm_cell: _rnn_cell(aten.lstm_cell.default),
    torch.gru_cell: _rnn_cell(aten.gru_cell.default),
    torch.rnn_tanh_cell: _rnn_cell(aten.rnn_tanh_cell.default),
    torch.rnn_relu_cell: _rnn_cell(aten.rnn_relu_cell.default),
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
}


_MHA_SIGNATURE = inspect.signature(F.multi_head_attention_forward)


def _attention_without_weights(args, kwargs) -> bool:
    """Whether this ``F.multi_head_attention_forward`` call runs scaled_dot_product_attention."""
    try:
        bound = _MHA_SIGNATURE.bind(*args, **kwargs)
    except TypeError:
        return False
    return not bound.arguments.get("need_weights", True)
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
            if func is F.multi_head_attention_forward and _attention_without_weights(args, kwargs):
                with self._counter.products_as_attention():
                    return func(*args, **kwargs)
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


def _fast_path_possible(module: nn.Module) -> bool:
    """False when the module's inference fast path is ruled out whatever the function mode does
    (each condition is one those modules check themselves): in training, with gradients to
    compute, on the meta device, with a MultiheadAttention that is not batch-first. Then the
    function mode stays, and sees the slow path's calls."""
    enabled = getattr(torch.backends, "mha", None)
    if enabled is not None and not enabled.get_fastpath_enabled():
        return False
    modules = list(module.modules())
    if all(m.training for m in modules):
        return False
    attention = next((m for m in modules if isinstance(m, nn.MultiheadAttention)), None)
    if attention is not None and not attention.batch_first:
        return False
    params = list(module.parameters())
    if params and all(p.device.type == "meta" for p in params):
        return False
    if params and torch.is_grad_enabled() and all(p.requires_grad for p in params):
        return False
    return True


_ATTENTION_MATH = aten._scaled_dot_product_attention_math.default
_BMM = aten.bmm.default


class FvcoreDispatch(CountingDispatch):
    """FlopMode's dispatch hook under ``convention="fvcore"``."""

    charges_fvcore_handles = True  # how handles.py finds the active hook without importing it

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.as_attention = 0
        self.functions = FvcoreFunctionMode(self)
        self._entered = 0
        self._handles: list[Any] = []
        self._thread: Optional[int] = None
        self._pauses: list[bool] = []  # per fast-path module call in progress: did it pause
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
            self._paused, self._popped, self._pauses = 0, False, []
        return super().__exit__(exc_type, exc, tb)

    def _pause(self, module: nn.Module, args: Any) -> None:
        if not isinstance(module, _FAST_PATH_MODULES) or threading.get_ident() != self._thread:
            return
        pause = self._paused > 0 or _fast_path_possible(module)
        self._pauses.append(pause)
        if not pause:
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
        if not self._pauses or not self._pauses.pop() or self._paused == 0:
            return
        self._paused -= 1
        if self._paused == 0 and self._popped:
            torch._C._push_on_torch_function_stack(self.functions)
            self._popped = False

    # -- counting ------------------------------------------------------------------------

    def products_as_attention(self) -> Iterator[None]:
        """While entered, ``bmm`` is charged as the math path of scaled_dot_product_attention."""
        return self._raised("as_attention")

    @contextmanager
    def _raised(self, counter: str) -> Iterator[None]:
        setattr(self, counter, getattr(self, counter) + 1)
        try:
            yield
        finally:
            setattr(self, counter, getattr(self, counter) - 1)

    def composite_rule(self, op: OpOverload) -> Optional[Callable[..., Any]]:
        """The formula to charge for composite ``op`` at the Python call, or None."""
        if self.suspended:
            return None
        rule = self.rule(op)
        return rule if callable(rule) else None

    def charge(self, func: Any, rule: Any, args: tuple, kwargs: dict, out: Any) -> None:
        """As CountingDispatch.charge; a ``set_op_handle`` handle's count goes under each of the
        keys it returns (fvcore files a Counter by its keys)."""
        if type(rule) is not KeyedHandle:
            return super().charge(func, rule, args, kwargs, out)
        try:
            parts = rule.split(args, kwargs, out)
        except Exception as error:
            self.problems.formula_failed(func, error)
            return None
        for key, count in parts.items():
            super().charge(handle_key(key), _Fixed(count), args, kwargs, out)
        return None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.suspended:
            return func(*args, **(kwargs or {}))
        if self.as_attention and func is _BMM:
            out = func(*args, **(kwargs or {}))
            # fvcore's trace has one scaled_dot_product_attention node here, no bmm: a handle
            # set for aten::bmm does not apply, the bmm rule (its multiply-adds) does.
            self.charge(_ATTENTION_MATH, resolve(_BMM, "fvcore"), args, {}, out)
            return out
        rule = self.rules.get(id(func))
        if rule is None:
            rule = self.resolve(func)
        if rule is UNSUPPORTED:
            # Recorded (0 FLOPs, one call) so that the drop-in front knows where it ran.
            self.problems.no_rule(func)
            out = func(*args, **(kwargs or {}))
            self.charge(func, rule, args, kwargs or {}, out)
            return out
        return super().__torch_dispatch__(func, types, args, kwargs)


class _Fixed:
    """A rule that returns one precomputed count."""

    __slots__ = ("count",)

    def __init__(self, count: Any) -> None:
        self.count = count

    def __call__(self, *args: Any, out: Any = None, **kwargs: Any) -> Any:
        return int(self.count)  # fvcore handles may return fractions: truncated per call, as documented
