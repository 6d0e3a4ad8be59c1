"""Helpers for the per-family formulas: dtypes, results, argument readers, name-based resolvers.

Formulas run for every op call, so everything here is cheap: shapes, numel and dtypes only,
never tensor data (arguments may be meta or fake tensors).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch._ops import OpOverload

from dispatchcount.registry import register_resolver

__all__ = [
    "COMPLEX_ADD",
    "COMPLEX_MUL",
    "Tensor",
    "arg_reader",
    "base_name",
    "counted",
    "dtype_factor",
    "first_tensor",
    "first_tensor_list",
    "has_arg",
    "out_argument_names",
    "register_family",
    "without_out_arguments",
    "result_tensor",
]

Tensor = torch.Tensor

# A complex add is 2 real adds; a complex multiply is 4 real multiplies and 2 adds, a complex
# multiply-add 8 real FLOPs against 2 for a real one. Additive ops cost COMPLEX_ADD times their
# real count on complex elements, everything else (products, functions) COMPLEX_MUL times.
COMPLEX_ADD = 2
COMPLEX_MUL = 4

ArgReader = Callable[[tuple, dict], Any]


def counted(dtype: torch.dtype) -> bool:
    """FLOPs are floating-point operations: only floating and complex dtypes are counted."""
    return dtype.is_floating_point or dtype.is_complex


def dtype_factor(complex_factor: int, *tensors: Optional[Tensor]) -> int:
    """0 when no tensor is floating point, ``complex_factor`` when one is complex, else 1."""
    factor = 0
    for t in tensors:
        if t is None:
            continue
        dtype = t.dtype
        if dtype.is_complex:
            return complex_factor
        if dtype.is_floating_point:
            factor = 1
    return factor


def result_tensor(out: Any) -> Optional[Tensor]:
    """The op's (first) result tensor; None for ops that return nothing."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for o in out:
            if isinstance(o, Tensor):
                return o
    return None


def first_tensor(args: tuple) -> Optional[Tensor]:
    """The first tensor argument (looking into lists), or None."""
    for a in args:
        if isinstance(a, Tensor):
            return a
        if isinstance(a, (list, tuple)):
            for t in a:
                if isinstance(t, Tensor):
                    return t
    return None


def first_tensor_list(args: tuple) -> list:
    """The first list-of-tensors argument (``_foreach_*`` ops), or []."""
    for a in args:
        if isinstance(a, (list, tuple)) and a and isinstance(a[0], Tensor):
            return a
    return []


def arg_reader(op: OpOverload, name: str, default: Any = None) -> ArgReader:
    """A reader ``read(args, kwargs)`` of argument ``name`` of ``op`` as dispatched.

    Built once per overload at resolution time (it inspects the schema), so that the formula
    itself does one index or dict lookup. Absent arguments read as ``default``.
    """
    for index, argument in enumerate(op._schema.arguments):
        if argument.name != name:
            continue
        if argument.kwarg_only:
            return lambda args, kwargs: kwargs.get(name, default)

        def read(args: tuple, kwargs: dict) -> Any:
            if len(args) > index:
                return args[index]
            return kwargs.get(name, default)

        return read
    return lambda args, kwargs: default


def has_arg(op: OpOverload, name: str) -> bool:
    return any(a.name == name for a in op._schema.arguments)


def base_name(op: OpOverload) -> str:
    """The op's name without namespace and without the trailing ``_`` of in-place variants."""
    name = op._schema.name.split("::", 1)[-1]
    if name.endswith("_") and not name.endswith("__"):
        name = name[:-1]
    return name


RuleFactory = Callable[[OpOverload], Any]


def register_family(table: dict[str, RuleFactory], convention: str = "flop") -> None:
    """Resolve ops by base name: ``table[base_name(op)](op)`` builds the op's rule.

    One entry covers the functional, in-place (``abs_``) and ``out=`` overloads of an op; the
    factory may inspect the overload's schema to build a cheap formula.
    """

    def resolve_by_name(op: OpOverload) -> Any:
        if op.namespace != "aten":
            return None
        factory = table.get(base_name(op))
        return None if factory is None else without_out_arguments(op, factory(op))

    register_resolver(convention, resolve_by_name)


def out_argument_names(op: OpOverload) -> tuple[str, ...]:
    """Names of the keyword-only tensors an ``out=`` overload writes (``out``, ``values``, ...)."""
    return tuple(
        a.name
        for a in op._schema.arguments
        if a.kwarg_only and a.alias_info is not None and a.alias_info.is_write
    )


def without_out_arguments(op: OpOverload, rule: Any) -> Any:
    """``rule`` for ``op``; for out= overloads, a wrapper that drops the written tensors from the
    kwargs (they are the result, which the formula gets as ``out``), so that their names
    (``a``, ``values``, ``output`` ...) never collide with a formula's own parameters."""
    names = out_argument_names(op)
    if not names or not callable(rule):
        return rule

    def formula_without_out_arguments(*args: Any, out: Any = None, **kwargs: Any) -> int:
        for name in names:
            kwargs.pop(name, None)
        return rule(*args, out=out, **kwargs)

    formula_without_out_arguments.__wrapped__ = rule  # type: ignore[attr-defined]
    return formula_without_out_arguments
