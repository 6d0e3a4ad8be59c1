"""Rules: what each op costs, by convention.

A *rule* is resolved once per ``OpOverload`` and convention, then cached. It is one of:

- a formula, ``formula(*args, out=result, **kwargs) -> int``, called with the op's arguments as
  dispatched (schema order);
- ``ZERO``: the op does no floating-point arithmetic (views, copies, factories, ...);
- ``DECOMPOSE``: the op has no rule of its own but a CompositeImplicitAutograd kernel; the
  mode runs that kernel and counts the pieces;
- ``UNSUPPORTED``: nothing is known; the mode reports the op, never silently counts 0.

Resolution order: a formula for the overload, a formula for its packet, an explicit zero,
decomposition, then the convention's resolvers (rules by tag or family), else UNSUPPORTED.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Iterable, Union

import torch
from torch._ops import HigherOrderOperator, OpOverload, OpOverloadPacket

__all__ = [
    "CONVENTIONS",
    "ZERO",
    "DECOMPOSE",
    "UNSUPPORTED",
    "HIGHER_ORDER",
    "Formula",
    "register_formula",
    "register_zero",
    "register_resolver",
    "resolve",
    "rule_cache",
]

Formula = Callable[..., int]
Op = Union[OpOverload, OpOverloadPacket, HigherOrderOperator]

CONVENTIONS = ("flop", "fvcore")


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


ZERO = _Marker("ZERO")
DECOMPOSE = _Marker("DECOMPOSE")
UNSUPPORTED = _Marker("UNSUPPORTED")
HIGHER_ORDER = _Marker("HIGHER_ORDER")  # a higher-order op with no formula: the mode runs its body

_formulas: dict[str, dict[Op, Formula]] = {c: {} for c in CONVENTIONS}
_zeros: set[Op] = set()
_resolvers: dict[str, list[Callable[[OpOverload], Any]]] = {c: [] for c in CONVENTIONS}
# Shared with live modes: cleared in place when a rule changes, never replaced.
_caches: dict[str, dict[OpOverload, Any]] = {c: {} for c in CONVENTIONS}


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")


def _as_ops(op: Op | Iterable[Op]) -> list[Op]:
    ops = list(op) if isinstance(op, (list, tuple, set, frozenset)) else [op]
    for o in ops:
        if not isinstance(o, (OpOverload, OpOverloadPacket, HigherOrderOperator)):
            raise TypeError(
                "op must be a torch OpOverload (torch.ops.ns.name.overload), "
                f"OpOverloadPacket (torch.ops.ns.name) or HigherOrderOperator, got {type(o).__name__}: {o!r}"
            )
    return ops


def _invalidate() -> None:
    for cache in _caches.values():
        cache.clear()


def register_formula(
    op: Op | Iterable[Op], convention: str = "flop"
) -> Callable[[Formula], Formula]:
    """Register ``formula(*args, out=None, **kwargs) -> int`` as the cost of ``op``.

    ``op`` is an ``OpOverload`` (one overload), an ``OpOverloadPacket`` (all its overloads) or a
    list of them. The formula receives the op's arguments as dispatched, in schema order, and
    the op's result as ``out``. It applies to ``convention`` only. Registering again replaces.
    """
    _check_convention(convention)
    ops = _as_ops(op)

    def register(formula: Formula) -> Formula:
        if not callable(formula):
            raise TypeError(f"formula must be callable, got {type(formula).__name__}")
        for o in ops:
            _formulas[convention][o] = formula
        _invalidate()
        return formula

    return register


def register_zero(*ops: Op) -> None:
    """Declare that ``ops`` do no floating-point arithmetic, in every convention."""
    for o in _as_ops(list(ops)):
        _zeros.add(o)
    _invalidate()


def register_resolver(convention: str, resolver: Callable[[OpOverload], Any]) -> None:
    """Add a resolver: ``resolver(op)`` returns a rule for ops it knows (by tag, by family), else None.

    Resolvers are asked in registration order, after formulas, zeros and decomposition.
    """
    _check_convention(convention)
    _resolvers[convention].append(resolver)
    _invalidate()


def _has_composite_implicit(op: OpOverload) -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(
            op.name(), torch._C.DispatchKey.CompositeImplicitAutograd
        )
    except RuntimeError:  # not a dispatcher op (e.g. the JIT's prim::device)
        return False


def _resolve_uncached(op: OpOverload, convention: str) -> Any:
    formulas = _formulas[convention]
    if isinstance(op, HigherOrderOperator):
        return formulas.get(op, HIGHER_ORDER)
    packet = op._overloadpacket
    formula = formulas.get(op) or formulas.get(packet)
    if formula is not None:
        return formula
    if op in _zeros or packet in _zeros:
        return ZERO
    if _has_composite_implicit(op):
        return DECOMPOSE
    for resolver in _resolvers[convention]:
        try:
            rule = resolver(op)
        except Exception as error:  # a broken resolver must not break the user's run
            warnings.warn(f"dispatchcount: resolver {resolver!r} failed on {op}: {error!r}", stacklevel=2)
            continue
        if rule is not None:
            return rule
    return UNSUPPORTED


def resolve(op: OpOverload, convention: str = "flop") -> Any:
    """The rule for ``op`` under ``convention`` (a formula, ZERO, DECOMPOSE or UNSUPPORTED)."""
    cache = _caches[convention]
    rule = cache.get(op)
    if rule is None:
        rule = cache[op] = _resolve_uncached(op, convention)
    return rule


def rule_cache(convention: str) -> dict[OpOverload, Any]:
    """The live cache for ``convention``: op -> rule for ops resolved so far."""
    _check_convention(convention)
    return _caches[convention]
