"""Rules: what each op costs, by convention, and the table of conventions.

A *rule* is resolved once per op and convention, then cached. It is one of:

- a formula, ``formula(*args, out=result, **kwargs) -> int``, called with the op's arguments as
  dispatched (schema order); on the rare calls whose FLOPs are in a dtype other than the result's
  (fp8 operands of ``_scaled_mm``, TF32 matmuls), it returns a :class:`Cost` instead of an int;
- ``ZERO``: the op does no floating-point arithmetic (views, copies, factories, ...);
- ``DECOMPOSE``: the op has no rule of its own but a CompositeImplicitAutograd kernel; the
  mode runs that kernel and counts the pieces;
- ``HIGHER_ORDER``: a higher-order op without a formula; the mode runs its body;
- ``UNSUPPORTED``: nothing is known; the mode reports the op, never silently counts 0.

Resolution order: a formula for the overload, a formula for its packet, an explicit zero,
decomposition, then the convention's resolvers (rules by tag or family), else UNSUPPORTED.
:func:`explain` says which step gave an op its rule.

Every convention is declared once, in :data:`CONVENTIONS`: its rule table, the dispatch hook
that counts with it, its unit, and the ops it counts beyond its reference tool.
"""

from __future__ import annotations

import importlib
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import torch
from torch._ops import HigherOrderOperator, OpOverload, OpOverloadPacket

from dispatchcount.formula_result import checked

__all__ = [
    "CONVENTIONS",
    "Convention",
    "RuleTable",
    "Explanation",
    "ZERO",
    "DECOMPOSE",
    "UNSUPPORTED",
    "HIGHER_ORDER",
    "Transfer",
    "Formula",
    "Cost",
    "convention",
    "register_formula",
    "register_zero",
    "register_resolver",
    "resolve",
    "explain",
]

Formula = Callable[..., int]
Op = Union[OpOverload, OpOverloadPacket, HigherOrderOperator]
Resolver = Callable[[OpOverload], Any]


class Cost:
    """A formula's result when the FLOPs are computed in another dtype than the op's result:
    ``Cost(flops, torch.float8_e4m3fn)`` for ``_scaled_mm``, ``Cost(flops, "tf32")`` for a float32
    matmul on TF32 tensor cores. ``dtype`` is a ``torch.dtype`` or a label string."""

    __slots__ = ("flops", "dtype")

    def __init__(self, flops: int, dtype: Any) -> None:
        self.flops = flops
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"Cost({self.flops!r}, {self.dtype!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is Cost and (self.flops, self.dtype) == (other.flops, other.dtype)

    def __hash__(self) -> int:
        return hash((self.flops, self.dtype))


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


ZERO = _Marker("ZERO")
DECOMPOSE = _Marker("DECOMPOSE")
UNSUPPORTED = _Marker("UNSUPPORTED")
HIGHER_ORDER = _Marker("HIGHER_ORDER")

_COMPOSITE_IMPLICIT = torch._C.DispatchKey.CompositeImplicitAutograd


class Transfer:
    """What a communication formula returns: 0 FLOPs, and ``nbytes`` this rank hands to a
    collective (recorded in the ``comm_bytes`` metric)."""

    __slots__ = ("nbytes",)

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes

    def __repr__(self) -> str:
        return f"Transfer({self.nbytes})"


@dataclass(frozen=True)
class Explanation:
    """Which rule an op gets under a convention, and why."""

    op: str
    convention: str
    kind: str  # "formula" | "zero" | "decompose" | "resolver" | "higher_order" | "unsupported"
    rule: Any
    source: str  # where the rule comes from: a function's qualified name, a resolver's family
    reason: str

    def __str__(self) -> str:
        return f"{self.op} under convention {self.convention!r}: {self.reason}"


def _qualified_name(fn: Any) -> str:
    while hasattr(fn, "__wrapped__"):
        fn = fn.__wrapped__
    module = getattr(fn, "__module__", None) or "?"
    return f"{module}.{getattr(fn, '__qualname__', repr(fn))}"


def _has_composite_implicit(op: OpOverload) -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), _COMPOSITE_IMPLICIT)
    except RuntimeError:  # not a dispatcher op (e.g. the JIT's prim::device)
        return False


class RuleTable:
    """The rules of one convention: formulas by op, explicit zeros, resolvers, and a cache.

    The cache maps ``id(op)`` to the op's rule: ``OpOverload.__hash__`` is a Python function,
    and the dispatch hook looks the rule up for every op. Live hooks hold the cache itself, so
    it is cleared in place when a rule changes, never replaced.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.formulas: dict[Op, Formula] = {}
        self.zeros: set[Op] = set()
        self.resolvers: list[tuple[str, Resolver]] = []
        self.cache: dict[int, Any] = {}
        self._ops: dict[int, Any] = {}  # keeps every cached op alive, so that its id stays unique
        self._overlays: "weakref.WeakSet[RuleOverlay]" = weakref.WeakSet()
        self.loaded = False

    def invalidate(self) -> None:
        self.cache.clear()
        for overlay in self._overlays:
            overlay.cache.clear()

    def resolve(self, op: Any) -> Any:
        """The rule for ``op`` (cached)."""
        rule = self.cache.get(id(op))
        if rule is None:
            rule = _checked_unless_builtin(self.explain(op).rule)
            self._ops[id(op)] = op
            self.cache[id(op)] = rule
        return rule

    def explain(self, op: Any) -> Explanation:
        """The rule for ``op`` and the step of the resolution order that gave it (uncached)."""
        name = str(op)
        if isinstance(op, HigherOrderOperator):
            formula = self.formulas.get(op)
            if formula is not None:
                return Explanation(name, self.name, "formula", formula, _qualified_name(formula),
                                   f"formula {_qualified_name(formula)}")
            return Explanation(name, self.name, "higher_order", HIGHER_ORDER, "",
                               "higher-order op without a formula: the ops of its body are counted")
        packet = op._overloadpacket
        for key, what in ((op, "overload"), (packet, "packet")):
            formula = self.formulas.get(key)
            if formula is not None:
                source = _qualified_name(formula)
                return Explanation(name, self.name, "formula", formula, source,
                                   f"formula {source} (registered for the {what} {key})")
        if op in self.zeros or packet in self.zeros:
            return Explanation(name, self.name, "zero", ZERO, "",
                               "explicit zero: the op does no floating-point arithmetic")
        if _has_composite_implicit(op):
            return Explanation(name, self.name, "decompose", DECOMPOSE, "",
                               "decomposes: its CompositeImplicitAutograd kernel runs and its pieces are counted")
        for family, resolver in self.resolvers:
            try:
                rule = resolver(op)
            except Exception as error:  # a broken resolver must not break the user's run
                warnings.warn(f"dispatchcount: resolver {family} failed on {op}: {error!r}", stacklevel=2)
                continue
            if rule is None:
                continue
            if rule is ZERO:
                reason = f"zero by {family}"
            else:
                reason = f"{family}: formula {_qualified_name(rule)}"
            return Explanation(name, self.name, "resolver", rule, family, reason)
        return Explanation(name, self.name, "unsupported", UNSUPPORTED, "",
                           "no rule: the op is reported by unsupported_ops(), never counted as 0")

    def overlay(self, formulas: Mapping[Any, Optional[Formula]]) -> "RuleOverlay":
        """This table with ``formulas`` taking precedence (None: count 0), for one counter."""
        overlay = RuleOverlay(self, formulas)
        self._overlays.add(overlay)
        return overlay


class RuleOverlay:
    """A convention's rules with per-counter formulas on top (``FlopMode(formulas=...)``)."""

    def __init__(self, base: RuleTable, formulas: Mapping[Any, Optional[Formula]]) -> None:
        ops = _as_ops(list(formulas))
        self.name = base.name
        self.base = base
        self.formulas: dict[Any, Formula] = {}
        for op in ops:
            formula = formulas[op]
            if formula is not None and not callable(formula):
                raise TypeError(f"formulas[{op}] must be callable or None, got {type(formula).__name__}")
            self.formulas[op] = _count_zero if formula is None else formula
        self.cache: dict[int, Any] = {}
        self._ops: dict[int, Any] = {}

    def resolve(self, op: Any) -> Any:
        rule = self.cache.get(id(op))
        if rule is None:
            rule = self.formulas.get(op)
            if rule is None and not isinstance(op, HigherOrderOperator):
                rule = self.formulas.get(op._overloadpacket)
            if rule is None:
                rule = self.base.resolve(op)
            else:
                rule = _checked_unless_builtin(rule)
            self._ops[id(op)] = op
            self.cache[id(op)] = rule
        return rule


def _count_zero(*args: Any, out: Any = None, **kwargs: Any) -> int:
    return 0


@dataclass(frozen=True)
class Convention:
    """A counting convention: its rules and how a FlopMode counts and reports with it.

    ``rule_modules``: the modules that register its built-in rules, imported on first use.
    ``hook``: ``"module:Class"`` of the dispatch hook (a subclass of
    ``dispatchcount.dispatch.CountingDispatch``), imported when a FlopMode first uses it.
    ``beyond``: ``"module:function"``, a predicate on operator names ("aten.baddbmm") for ops
    counted here that the convention's reference tool leaves out, or "" for none.
    """

    name: str
    unit: str
    description: str
    rule_modules: tuple[str, ...] = ()
    hook: str = "dispatchcount.dispatch:CountingDispatch"
    beyond: str = ""
    beyond_label: str = ""
    counts_flops: bool = True
    rules: RuleTable = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", RuleTable(self.name))

    def load(self) -> RuleTable:
        """The rule table, with the built-in rules registered."""
        table = self.rules
        if not table.loaded:
            table.loaded = True  # set first: the modules register through this very table
            for module in self.rule_modules:
                importlib.import_module(module)
        return table

    def hook_class(self) -> type:
        return _load(self.hook)

    def beyond_reference(self) -> Optional[Callable[[str], bool]]:
        return _load(self.beyond) if self.beyond else None


_loaded: dict[str, Any] = {}


def _load(target: str) -> Any:
    found = _loaded.get(target)
    if found is None:
        module, _, attr = target.partition(":")
        found = _loaded[target] = getattr(importlib.import_module(module), attr)
    return found


CONVENTIONS: dict[str, Convention] = {
    c.name: c
    for c in (
        Convention(
            "flop",
            unit="FLOPs",
            description="a multiply-add is 2 FLOPs; matmul, convolution and attention as "
            "torch.utils.flop_counter.FlopCounterMode, plus every other floating-point op",
            rule_modules=("dispatchcount.formulas",),
        ),
        Convention(
            "fvcore",
            unit="MACs",  # fvcore's "flop" is one multiply-add
            description="fvcore's FlopCountAnalysis rules: a multiply-add is 1 flop, elementwise ops are free",
            rule_modules=("dispatchcount.formulas", "dispatchcount.fvcore.rules"),
            hook="dispatchcount.fvcore.hook:FvcoreDispatch",
            beyond="dispatchcount.fvcore.rules:is_beyond_fvcore",
            beyond_label="counted beyond fvcore (fvcore has no handle for them)",
        ),
    )
}


def convention(name: str) -> Convention:
    """The declared convention called ``name``; a ValueError names the choices otherwise."""
    found = CONVENTIONS.get(name) if isinstance(name, str) else None
    if found is None:
        raise ValueError(f"convention must be one of {tuple(CONVENTIONS)}, got {name!r}")
    return found


def _as_ops(op: Union[Op, Iterable[Op]]) -> list[Op]:
    ops = list(op) if isinstance(op, (list, tuple, set, frozenset)) else [op]
    for o in ops:
        if not isinstance(o, (OpOverload, OpOverloadPacket, HigherOrderOperator)):
            raise TypeError(
                "op must be a torch OpOverload (torch.ops.ns.name.overload), "
                f"OpOverloadPacket (torch.ops.ns.name) or HigherOrderOperator, got {type(o).__name__}: {o!r}"
            )
    return ops


def _is_builtin(fn: Any) -> bool:
    while hasattr(fn, "__wrapped__"):
        fn = fn.__wrapped__
    return (getattr(fn, "__module__", None) or "").startswith("dispatchcount.")


def _checked_unless_builtin(rule: Any) -> Any:
    """A formula from outside dispatchcount, its results checked (negative, fractional ...
    counts are formula errors); markers and dispatchcount's own formulas as they are."""
    if isinstance(rule, _Marker) or not callable(rule) or _is_builtin(rule):
        return rule
    return checked(rule)


def _overloads(op: Op) -> list[Any]:
    if isinstance(op, OpOverloadPacket):
        return [getattr(op, name) for name in op.overloads()]
    return [op]


def _warn_if_replacing(table: RuleTable, ops: list[Op], formula: Formula) -> None:
    """Warn when a user's formula replaces a built-in rule (formula, zero or family rule)."""
    if _is_builtin(formula):
        return
    replaced = []
    for o in ops:
        for overload in _overloads(o):
            found = table.explain(overload)
            if found.kind in ("formula", "zero", "resolver") and (found.kind != "formula" or _is_builtin(found.rule)):
                replaced.append(f"{overload} ({found.reason})")
    if replaced:
        warnings.warn(
            f"dispatchcount: register_formula replaces the built-in rule of convention "
            f"{table.name!r} for " + "; ".join(replaced),
            stacklevel=3,
        )


def register_formula(op: Union[Op, Iterable[Op]], convention: str = "flop") -> Callable[[Formula], Formula]:
    """Register ``formula(*args, out=None, **kwargs) -> int`` as the cost of ``op``.

    ``op`` is an ``OpOverload`` (one overload), an ``OpOverloadPacket`` (all its overloads) or a
    list of them. The formula receives the op's arguments as dispatched, in schema order, and
    the op's result as ``out``. It applies to ``convention`` only. Registering again replaces;
    replacing one of dispatchcount's built-in rules warns.
    """
    table = _table(convention)
    ops = _as_ops(op)

    def register(formula: Formula) -> Formula:
        if not callable(formula):
            raise TypeError(f"formula must be callable, got {type(formula).__name__}")
        _warn_if_replacing(table, ops, formula)
        for o in ops:
            table.formulas[o] = formula
        table.invalidate()
        return formula

    return register


def register_zero(*ops: Op, conventions: Optional[Iterable[str]] = None) -> None:
    """Declare that ``ops`` do no floating-point arithmetic: 0 in ``conventions`` (default:
    every convention that counts FLOPs)."""
    names = list(conventions) if conventions is not None else [c.name for c in CONVENTIONS.values() if c.counts_flops]
    checked = _as_ops(list(ops))
    for name in names:
        table = _table(name)
        table.zeros.update(checked)
        table.invalidate()


def register_resolver(convention: str, resolver: Resolver, family: Optional[str] = None) -> None:
    """Add a resolver: ``resolver(op)`` returns a rule for ops it knows (by tag, by family), else None.

    Resolvers are asked in registration order, after formulas, zeros and decomposition.
    ``family`` names it in :func:`explain` (default: the resolver's module and name).
    """
    table = _table(convention)
    table.resolvers.append((family or _qualified_name(resolver), resolver))
    table.invalidate()


def _table(name: str) -> RuleTable:
    return convention(name).load()


def resolve(op: Any, convention: str = "flop") -> Any:
    """The rule for ``op`` under ``convention`` (a formula, ZERO, DECOMPOSE, HIGHER_ORDER or UNSUPPORTED)."""
    return _table(convention).resolve(op)


def explain(op: Op, convention: str = "flop") -> Union[Explanation, list[Explanation]]:
    """Which rule ``op`` gets under ``convention``, and why: a formula and its module, an
    explicit zero, a decomposition, a family resolver, or none. A packet gives one
    :class:`Explanation` per overload."""
    table = _table(convention)
    (checked,) = _as_ops(op)
    if isinstance(checked, OpOverloadPacket):
        return [table.explain(o) for o in _overloads(checked)]
    return table.explain(checked)
