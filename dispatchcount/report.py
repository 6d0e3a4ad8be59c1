"""Totals, per-module and per-operator breakdowns, the table and the JSON dict of a FlopMode."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Iterable, Optional

if TYPE_CHECKING:
    from dispatchcount.mode import FlopMode

PHASES = ("forward", "backward", "recompute")
# "backward" includes activation-checkpointing recomputation: it runs during the backward pass.
_SELECTED = {None: frozenset(PHASES), "forward": frozenset({"forward"}),
             "backward": frozenset({"backward", "recompute"}), "recompute": frozenset({"recompute"})}

_op_names: dict[Any, str] = {}

Records = dict


def op_name(func: Any) -> str:
    """``aten.mm`` for ``aten.mm.default``: the operator, overloads merged."""
    name = _op_names.get(func)
    if name is None:
        packet = getattr(func, "_overloadpacket", None)
        name = _op_names[func] = str(packet) if packet is not None else str(getattr(func, "__name__", func))
    return name


def _phases(phase: Optional[str]) -> frozenset:
    try:
        return _SELECTED[phase]
    except KeyError:
        raise ValueError(f"phase must be None, 'forward', 'backward' or 'recompute', got {phase!r}") from None


def total(records: Records, phase: Optional[str] = None) -> int:
    phases = _phases(phase)
    return sum(rec[0] for (_, _, ph), rec in records.items() if ph in phases)


def _charged(frame: Any, inclusive: bool) -> tuple[str, ...]:
    # Inclusive: every module on the call path and enclosing it; else the innermost module.
    return frame.names if inclusive else (frame.name,)


def by_module(
    records: Records, names: Iterable[str], phase: Optional[str] = None, inclusive: bool = True
) -> dict[str, int]:
    phases = _phases(phase)
    result = dict.fromkeys(names, 0)
    for (frame, _, ph), (flops, _) in records.items():
        if ph in phases:
            for name in _charged(frame, inclusive):
                result[name] = result.get(name, 0) + flops
    return result


def by_operator(records: Records, phase: Optional[str] = None) -> dict[str, int]:
    phases = _phases(phase)
    result: dict[str, int] = {}
    for (_, func, ph), (flops, _) in records.items():
        if ph in phases and flops:
            name = op_name(func)
            result[name] = result.get(name, 0) + flops
    return dict(sorted(result.items(), key=lambda item: -item[1]))


def beyond_fvcore(mode: "FlopMode", phase: Optional[str] = None) -> dict[str, int]:
    """{operator: FLOPs} counted under convention "fvcore" for ops fvcore has no handle for."""
    if mode.convention != "fvcore":
        return {}
    from dispatchcount.formulas.fvcore_rules import is_beyond_fvcore

    return {op: flops for op, flops in mode.by_operator(phase).items() if is_beyond_fvcore(op)}


def calls_by_operator(records: Records) -> dict[str, int]:
    result: dict[str, int] = {}
    for (_, func, _), (_, calls) in records.items():
        name = op_name(func)
        result[name] = result.get(name, 0) + calls
    return result


def by_module_and_operator(
    records: Records, names: Iterable[str], phase: Optional[str] = None, inclusive: bool = True
) -> dict[str, dict[str, int]]:
    phases = _phases(phase)
    result: dict[str, dict[str, int]] = {name: {} for name in names}
    for (frame, func, ph), (flops, _) in records.items():
        if ph in phases and flops:
            op = op_name(func)
            for name in _charged(frame, inclusive):
                per_op = result.setdefault(name, {})
                per_op[op] = per_op.get(op, 0) + flops
    return result


def human(number: float) -> str:
    """3 significant digits with K/M/G/T/P units: 5_612_000_000 -> '5.61G'."""
    for unit in ("", "K", "M", "G", "T"):
        if abs(number) < 1000:
            return f"{number:.3g}{unit}" if unit else f"{number:.0f}"
        number /= 1000
    return f"{number:.3g}P"


def _depth(name: str) -> int:
    return 0 if name == "" else name.count(".") + 1


def table(mode: "FlopMode", depth: int = 3) -> str:
    """Module tree (up to ``depth``) with parameters, forward, backward, total and share."""
    import tabulate

    names = mode._module_names()
    forward = mode.by_module("forward")
    backward = mode.by_module("backward")
    recompute = mode.by_module("recompute")
    grand_total = forward.get("", 0) + backward.get("", 0)
    has_backward = any(backward.values())
    has_recompute = any(recompute.values())
    params = mode._tracker.params

    header = ["module", "#params", "forward"]
    if has_backward:
        header += ["backward", "total"]
    if has_recompute:
        header.insert(4, "(recompute)")
    header.append("%")
    rows = []
    for name in names:
        level = _depth(name)
        if level > depth:
            continue
        label = name or ("model" if mode.model is not None else "(all)")
        row = [" " * level + label, human(params[name]) if name in params else "", human(forward.get(name, 0))]
        module_total = forward.get(name, 0)
        if has_backward:
            module_total += backward.get(name, 0)
            row += [human(backward.get(name, 0)), human(module_total)]
        if has_recompute:
            row.insert(4, human(recompute.get(name, 0)))
        row.append(f"{100 * module_total / grand_total:.1f}%" if grand_total else "-")
        rows.append(row)
    colalign = ("left",) + ("right",) * (len(header) - 1)
    options: dict[str, Any] = {"headers": header, "colalign": colalign, "disable_numparse": True}
    if "preserve_whitespace" in inspect.signature(tabulate.tabulate).parameters:  # tabulate >= 0.10
        body = tabulate.tabulate(rows, preserve_whitespace=True, **options)
    else:
        preserve, tabulate.PRESERVE_WHITESPACE = tabulate.PRESERVE_WHITESPACE, True
        try:
            body = tabulate.tabulate(rows, **options)
        finally:
            tabulate.PRESERVE_WHITESPACE = preserve
    text = f"convention: {mode.convention}\n" + body
    beyond = beyond_fvcore(mode)
    if beyond:
        text += "\ncounted beyond fvcore (fvcore has no handle for them): " + ", ".join(
            f"{op} {human(flops)}" for op, flops in beyond.items()
        )
    uncounted = mode.unsupported_ops()
    if uncounted:
        text += "\nnot counted (no rule or failing formula): " + ", ".join(
            f"{op} x{calls}" for op, calls in uncounted.items()
        )
    return text


def to_dict(mode: "FlopMode") -> dict[str, Any]:
    names = mode._module_names()
    forward = mode.by_module("forward")
    backward = mode.by_module("backward")
    return {
        "convention": mode.convention,
        "total": mode.total(),
        "forward": mode.total("forward"),
        "backward": mode.total("backward"),
        "recompute": mode.total("recompute"),
        "by_module": mode.by_module(),
        "modules": {
            name: {
                "params": mode._tracker.params.get(name, 0),
                "calls": mode._tracker.calls.get(name, 0),
                "forward": forward.get(name, 0),
                "backward": backward.get(name, 0),
            }
            for name in names
        },
        "by_operator": mode.by_operator(),
        "operator_calls": calls_by_operator(mode._records),
        "by_module_and_operator": mode.by_module_and_operator(),
        "beyond_fvcore": beyond_fvcore(mode),
        "unsupported_ops": mode.unsupported_ops(),
        "formula_errors": mode.formula_errors(),
        "uncalled_modules": sorted(mode.uncalled_modules()),
    }
