"""fvcore's ``set_op_handle`` on dispatched ops: op names, argument adapters, a JIT-value shim.

fvcore names ops as the JIT does (``"aten::batch_norm"``) and calls a handle with the JIT
node's inputs and outputs (``handle(inputs, outputs)``, reading ``v.type().sizes()``,
``v.toIValue()``). Here the op that runs may be another overload or variant
(``native_batch_norm``, ``_native_batch_norm_legit_no_training`` ...): :func:`ops_named` maps a
fvcore name to the dispatched ops it stands for, with an adapter from the dispatched op's
arguments to the JIT node's, and :class:`JitValue` lets fvcore-style handles read them.
"""

from __future__ import annotations

import inspect
from collections import Counter
from typing import Any, Callable, Optional

import torch
from torch._ops import OpOverload

from dispatchcount.formula_result import as_count
from dispatchcount.formulas._helpers import schema_arguments

__all__ = ["JitValue", "handle_formula", "ops_named"]



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
}


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

    def scalarType(self) -> str:  # noqa: N802
        return str(self._value.dtype).replace("torch.", "")

    def toIValue(self) -> Any:  # noqa: N802
        return self._value

    def node(self) -> "JitValue":
        return self

    def inputs(self) -> list["JitValue"]:
        return [JitValue(v) for v in self._value]

    def debugName(self) -> str:  # noqa: N802
        return ""


def _is_jit_handle(handle: Callable[..., Any]) -> bool:
    """fvcore handles take (inputs, outputs); dispatchcount formulas take (*args, out=...)."""
    try:
        params = inspect.signature(handle).parameters.values()
    except (TypeError, ValueError):
        return True
    if any(p.kind is p.VAR_POSITIONAL for p in params) or any(p.name == "out" for p in params):
        return False
    return True


def handle_formula(op: OpOverload, adapt: Optional[Callable[[list], list]], handle: Callable[..., Any]):
    """A formula for ``op`` that calls ``handle``, fvcore-style or dispatchcount-style."""
    jit_style = _is_jit_handle(handle)

    def formula(*args: Any, out: Any = None, **kwargs: Any) -> int:
        full = schema_arguments(op, args, kwargs)
        if adapt is not None:
            full = adapt(full)
        if not jit_style:
            return _as_number(handle(*full, out=out))
        outputs = list(out) if isinstance(out, (tuple, list)) else [out]
        return _as_number(handle([JitValue(v) for v in full], [JitValue(v) for v in outputs]))

    return formula


def _as_number(count: Any) -> int:
    # fvcore handles may return a Counter by op name; the total must be a count (as_count).
    return as_count(sum(count.values()) if isinstance(count, Counter) else count)
