"""fvcore's op handles on dispatched ops: op names, argument adapters, a JIT-value shim.

fvcore names ops as the JIT does (``"aten::batch_norm"``) and calls a handle with the JIT
node's inputs and outputs (``handle(inputs, outputs)``, reading ``v.type().sizes()``,
``v.toIValue()``); a handle returns a number (filed under the op's name) or a Counter (filed
under its keys). Here the op that runs may be another overload or variant
(``native_batch_norm``, ``_native_batch_norm_legit_no_training`` ...): :func:`ops_named` maps a
fvcore name to the dispatched ops it stands for, with an adapter from the dispatched op's
arguments to the JIT node's, :class:`JitValue` lets fvcore-style handles read them, and
:class:`KeyedHandle` is the rule that charges a handle's Counter under its keys (as
:class:`HandleKey` stand-ins for ops, see ``FvcoreDispatch.charge``).

The other direction, :func:`jit_rule_handle`, turns one of this convention's rules into an
fvcore-style handle that reads real JIT values (``_DEFAULT_SUPPORTED_OPS``), and
:func:`autograd_function_handles` applies ``prim::PythonOp.<Function>`` handles to custom
``torch.autograd.Function`` calls.
"""

from __future__ import annotations

import inspect
import numbers
from collections import Counter
from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any, Callable, Iterator, List, Optional, Union

import torch
from torch._ops import OpOverload

from dispatchcount.formulas._helpers import schema_arguments
from dispatchcount.registry import resolve

__all__ = [
    "Handle",
    "HandleKey",
    "JitValue",
    "KeyedHandle",
    "autograd_function_handles",
    "handle_formula",
    "handle_key",
    "jit_name",
    "jit_rule_handle",
    "key_of",
    "ops_named",
    "output_elements",
    "PYTHON_OP",
]

Handle = Callable[[List[Any], List[Any]], Union[Counter, numbers.Number]]
PYTHON_OP = "prim::PythonOp."


def _batch_norm_args(training: Any):
    """Arguments of an aten batch-norm variant without ``training`` -> aten::batch_norm's."""

    def adapt(args: list) -> list:
        flag = training(args) if callable(training) else training
        return [*args[:5], flag, *args[5:7], True]

    return adapt


# fvcore name -> [(dispatched op packet name, overload or None for all, argument adapter)].
# The adapter turns the dispatched op's full argument list into the JIT node's, so that a
# handle written for fvcore reads the inputs where it expects them.
_ALIASES: dict[str, list[tuple[str, Optional[str], Optional[Callable[[list], list]]]]] = {
    "aten::batch_norm": [
        ("native_batch_norm", None, lambda a: [*a[:8], True]),
        ("_native_batch_norm_legit", "default", lambda a: [*a[:8], True]),
        ("_native_batch_norm_legit", "no_stats", lambda a: [*a[:3], None, None, *a[3:6], True]),
        ("_native_batch_norm_legit_no_training", None, _batch_norm_args(False)),
        ("_native_batch_norm_legit_functional", None, lambda a: [*a[:8], True]),
        ("_batch_norm_with_update", None, _batch_norm_args(True)),
        ("_batch_norm_no_update", None, _batch_norm_args(lambda a: a[3] is None and a[4] is None)),
        ("cudnn_batch_norm", None, lambda a: [*a[:8], True]),
        ("miopen_batch_norm", None, lambda a: [*a[:8], True]),
    ],
    "aten::layer_norm": [("native_layer_norm", None, lambda a: [*a[:5], True])],
    "aten::group_norm": [("native_group_norm", None, lambda a: [a[0], a[6], a[1], a[2], a[7], True])],
    "aten::_convolution": [
        ("convolution", None, lambda a: [*a[:9], False, False, True, True]),
        ("_convolution", None, None),
    ],
    "aten::adaptive_avg_pool2d": [("adaptive_avg_pool2d", None, None), ("_adaptive_avg_pool2d", None, None)],
    "aten::softmax": [("softmax", None, None), ("_softmax", None, None)],
    "aten::log_softmax": [("log_softmax", None, None), ("_log_softmax", None, None)],
    "aten::grid_sampler": [
        ("grid_sampler", None, None), ("grid_sampler_2d", None, None), ("grid_sampler_3d", None, None),
        ("_grid_sampler_2d_cpu_fallback", None, None),
    ],
    "aten::max_pool2d": [("max_pool2d", None, None), ("max_pool2d_with_indices", None, None)],
    "aten::max_pool3d": [("max_pool3d", None, None), ("max_pool3d_with_indices", None, None)],
    "aten::dropout": [("dropout", None, None), ("native_dropout", None, None)],
}

# Dispatched operator name -> the JIT node fvcore reports it as ("aten.convolution" ->
# "aten::_convolution"); other aten ops keep their name.
_JIT_NAMES: dict[str, str] = {
    **{f"aten.{packet}": name for name, entries in _ALIASES.items() for packet, _, _ in entries},
    # scaled_dot_product_attention's kernels (and its math path, see hook.py)
    **{f"aten.{packet}": "aten::scaled_dot_product_attention" for packet in (
        "_scaled_dot_product_attention_math", "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_fused_attention_overrideable")},
}


def jit_name(operator: str) -> str:
    """fvcore's spelling of an operator name of the records: "aten.add" -> "aten::add"."""
    name = _JIT_NAMES.get(operator)
    if name is not None:
        return name
    namespace, _, op = operator.partition(".")
    return f"{namespace}::{op}" if op else operator


def ops_named(name: str) -> list[tuple[OpOverload, Optional[Callable[[list], list]]]]:
    """The OpOverloads a fvcore op name ("aten::mul") stands for, with argument adapters."""
    if "::" not in name:
        raise ValueError(f"op name must look like 'aten::mul' (fvcore's spelling), got {name!r}")
    namespace, op = name.split("::", 1)
    entries = _ALIASES.get(name) or [(op, None, None)]
    found = []
    for packet_name, overload, adapt in entries:
        try:
            packet = getattr(getattr(torch.ops, namespace), packet_name)
        except (AttributeError, RuntimeError):
            continue
        overloads = [overload] if overload is not None else packet.overloads()
        found += [(getattr(packet, o), adapt) for o in overloads if hasattr(packet, o)]
    return found


class JitValue:
    """Stands in for a ``torch._C.Value`` so that fvcore-style handles (``handle(inputs,
    outputs)``, reading ``v.type().sizes()``, ``v.toIValue()`` ...) run on dispatched arguments."""

    __slots__ = ("_value",)

    def __init__(self, value: Any) -> None:
        self._value = value

    def isCompleteTensor(self) -> bool:  # noqa: N802 (JIT's spelling)
        return isinstance(self._value, torch.Tensor)

    def type(self) -> "JitValue":
        return self

    def sizes(self) -> list[int]:
        return [int(s) for s in self._value.shape]

    def dim(self) -> int:
        return self._value.dim()

    def dtype(self) -> Optional[torch.dtype]:
        return self._value.dtype if isinstance(self._value, torch.Tensor) else None

    def scalarType(self) -> str:  # noqa: N802
        return str(self._value.dtype).replace("torch.", "")

    def kind(self) -> str:
        if self._value is None:
            return "NoneType"
        return "TensorType" if isinstance(self._value, torch.Tensor) else type(self._value).__name__

    def toIValue(self) -> Any:  # noqa: N802
        return self._value

    def node(self) -> "JitValue":
        return self

    def inputs(self) -> list["JitValue"]:
        return [JitValue(v) for v in self._value]

    def debugName(self) -> str:  # noqa: N802
        return ""


# -- handles as rules ----------------------------------------------------------------------


class HandleKey:
    """Stands in for an op in the records: a name a handle filed (part of) its count under."""

    __slots__ = ("__name__", "key", "__weakref__")

    def __init__(self, key: str) -> None:
        self.key = key
        self.__name__ = _KEY_PREFIX + key

    def __repr__(self) -> str:
        return f"HandleKey({self.key!r})"


_KEY_PREFIX = "fvcore-handle:"
_KEYS: dict[str, HandleKey] = {}


def handle_key(key: str) -> HandleKey:
    """The (one, lasting) stand-in op for handle key ``key``."""
    found = _KEYS.get(key)
    if found is None:
        found = _KEYS[key] = HandleKey(key)
    return found


def key_of(operator: str) -> Optional[str]:
    """The handle key of a records operator name, or None if it names a real op."""
    return operator[len(_KEY_PREFIX):] if operator.startswith(_KEY_PREFIX) else None


def _count(value: Any, key: str) -> Union[int, float]:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"invalid type {type(value).__name__} for the count of {key!r}: use a number")
    value = int(value) if isinstance(value, numbers.Integral) else float(value)
    if value < 0 or value != value:
        raise ValueError(f"the count of {key!r} must be a non-negative number, got {value!r}")
    return value


class KeyedHandle:
    """A ``set_op_handle`` handle as a rule of the counter.

    ``call(args, kwargs, out)`` runs the handle on a dispatched call. Its number is filed under
    ``default_key`` (fvcore: the op's name without namespace), a Counter under its own keys;
    :meth:`split` gives that breakdown, and calling the rule gives the total.
    """

    __slots__ = ("call", "default_key")

    def __init__(self, call: Callable[[tuple, dict, Any], Any], default_key: str) -> None:
        self.call = call
        self.default_key = default_key

    def split(self, args: tuple, kwargs: dict, out: Any) -> dict[str, Union[int, float]]:
        result = self.call(args, kwargs, out)
        items = result.items() if isinstance(result, Mapping) else [(self.default_key, result)]
        return {str(key): _count(value, str(key)) for key, value in items}

    def __call__(self, *args: Any, out: Any = None, **kwargs: Any) -> Union[int, float]:
        return sum(self.split(args, kwargs, out).values())


def _is_jit_handle(handle: Callable[..., Any]) -> bool:
    """fvcore handles take (inputs, outputs); dispatchcount formulas take (*args, out=...)."""
    try:
        params = inspect.signature(handle).parameters.values()
    except (TypeError, ValueError):
        return True
    if any(p.kind is p.VAR_POSITIONAL for p in params) or any(p.name == "out" for p in params):
        return False
    return True


def _outputs(out: Any) -> list:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def handle_formula(op: OpOverload, adapt: Optional[Callable[[list], list]], handle: Callable[..., Any],
                   name: str) -> KeyedHandle:
    """The rule for ``op`` that calls ``handle`` (fvcore-style or dispatchcount-style), set for
    the fvcore op ``name``."""
    jit_style = _is_jit_handle(handle)

    def call(args: tuple, kwargs: dict, out: Any) -> Any:
        full = schema_arguments(op, args, kwargs)
        if adapt is not None:
            full = adapt(full)
        if not jit_style:
            return handle(*full, out=out)
        return handle([JitValue(v) for v in full], [JitValue(v) for v in _outputs(out)])

    return KeyedHandle(call, name.split("::", 1)[1])


def function_handle(name: str, handle: Callable[..., Any]) -> KeyedHandle:
    """The rule for a ``prim::PythonOp.<Function>`` handle: the JIT node's inputs are the
    call's tensor arguments, its outputs the tensors the Function returns."""
    jit_style = _is_jit_handle(handle)

    def call(args: tuple, kwargs: dict, out: Any) -> Any:
        if not jit_style:
            return handle(*args, out=out, **kwargs)
        inputs = [JitValue(a) for a in args if isinstance(a, torch.Tensor)]
        return handle(inputs, [JitValue(v) for v in _outputs(out)])

    return KeyedHandle(call, name.split("::", 1)[1])


def output_elements(key: Optional[str] = None) -> Callable[..., Any]:
    """A formula counting the elements of the op's (first) result, filed under ``key`` if given:
    fvcore's ``generic_activation_jit``."""

    def activations(*args: Any, out: Any = None, **kwargs: Any) -> Any:
        first = _outputs(out)[0]
        count = first.numel()
        return Counter({key: count}) if key else count

    return activations


# -- this convention's rules as fvcore-style handles -----------------------------------------


def _jit_argument(value: Any) -> Any:
    """A JIT value (or a :class:`JitValue`) as the argument a formula reads: a meta tensor of its
    shape, a constant, a list."""
    if isinstance(value, JitValue):
        return value.toIValue()
    kind = value.type()
    if isinstance(kind, torch._C.TensorType):
        sizes = kind.sizes()
        if sizes is None:
            return None
        return torch.empty(sizes, dtype=kind.dtype() or torch.float32, device="meta")
    node = value.node()
    if node.kind() == "prim::ListConstruct":
        return [_jit_argument(v) for v in node.inputs()]
    return value.toIValue()


def jit_rule_handle(op: OpOverload, key: Optional[str] = None) -> Handle:
    """An fvcore-style ``handle(inputs, outputs)`` giving ``op``'s ``convention="fvcore"`` count
    from JIT values (``torch._C.Value`` of a trace, or :class:`JitValue`), filed under ``key``
    (a Counter) if given, else a number."""

    def handle(inputs: List[Any], outputs: List[Any]) -> Any:
        args = [_jit_argument(v) for v in inputs]
        results = [_jit_argument(v) for v in outputs]
        count = resolve(op, "fvcore")(*args, out=results[0] if len(results) == 1 else tuple(results))
        return Counter({key: count}) if key else count

    handle.__name__ = f"{op._overloadpacket.__name__}_flop_jit"
    return handle


# -- prim::PythonOp handles: custom autograd Functions ---------------------------------------


def _function_classes(name: str) -> list[type]:
    """Every loaded ``torch.autograd.Function`` subclass called ``name``."""
    found, pending, seen = [], [torch.autograd.Function], set()
    while pending:
        cls = pending.pop()
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.add(sub)
                pending.append(sub)
                if sub.__name__ == name:
                    found.append(sub)
    return found


def _active_hook() -> Any:
    """The innermost fvcore dispatch hook on this thread's mode stack, or None."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    for mode in reversed(_get_current_dispatch_mode_stack()):
        if getattr(mode, "charges_fvcore_handles", False):  # dispatchcount.fvcore.hook.FvcoreDispatch
            return mode
    return None


_MISSING = object()


def _counting_apply(target: type, saved: Any, rule: KeyedHandle, key: HandleKey) -> classmethod:
    def unpatched(cls: type) -> Callable[..., Any]:
        if saved is not _MISSING:
            return saved.__get__(None, cls)
        return super(target, cls).apply

    def apply(cls: type, *args: Any, **kwargs: Any) -> Any:
        hook = _active_hook() if cls is target else None
        if hook is None or hook.suspended:  # not counting, or inside an op charged as a whole
            return unpatched(cls)(*args, **kwargs)
        # The handle stands for the whole Function, as the PythonOp node does in fvcore's
        # trace: the ops its forward dispatches are not counted on top.
        with hook.counting_suspended():
            out = unpatched(cls)(*args, **kwargs)
        hook.charge(key, rule, args, kwargs, out)
        return out

    return classmethod(apply)


@contextmanager
def autograd_function_handles(handles: Mapping[str, Callable[..., Any]]) -> Iterator[None]:
    """While entered, ``Function.apply`` of the Functions named by ``"prim::PythonOp.<Name>"``
    keys charges their handle (to the counter whose mode is active) instead of counting the ops
    its forward dispatches."""
    patched: list[tuple[type, Any]] = []
    try:
        for name, handle in handles.items():
            rule = function_handle(name, handle)
            class_name = name[len(PYTHON_OP):]
            for cls in _function_classes(class_name):
                saved = cls.__dict__.get("apply", _MISSING)
                patched.append((cls, saved))
                cls.apply = _counting_apply(cls, saved, rule, handle_key(name.split("::", 1)[1]))
        yield
    finally:
        for cls, saved in reversed(patched):
            if saved is _MISSING:
                del cls.apply
            else:
                cls.apply = saved
