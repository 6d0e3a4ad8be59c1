"""Renderers: the module table and the JSON dict, each from a :class:`~dispatchcount.records.Counts`.

A renderer takes a snapshot and returns text or data; it never reads a FlopMode. A new one
(HTML, CSV) is a function of a ``Counts`` in a module of its own.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional

from dispatchcount.records import BYTES_READ, BYTES_WRITTEN, CALLS, FLOPS, FORWARD, RECOMPUTE, SECONDS, Counts, Row

if TYPE_CHECKING:
    from dispatchcount.roofline import Roofline

__all__ = ["human", "human_count", "human_seconds", "table", "tabulate", "roofline_table", "to_dict",
           "Line", "Tally", "Column", "check_depth"]


def human(number: float) -> str:
    """3 significant digits with K/M/G/T/P units: 5_612_000_000 -> '5.61G'."""
    for unit in ("", "K", "M", "G", "T"):
        if abs(number) < 1000:
            return f"{number:.3g}{unit}" if unit else f"{number:.0f}"
        number /= 1000
    return f"{number:.3g}P"


def human_seconds(seconds: float) -> str:
    """3 significant digits with s/ms/us/ns: 0.00123 -> '1.23 ms'."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(seconds) >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns" if seconds else "0"


def human_count(number: float) -> str:
    """3 significant digits with K/M/B/T units, for counts of things: 6_738_415_616 -> '6.74B'."""
    for unit in ("", "K", "M", "B"):
        if abs(number) < 1000:
            return f"{number:.3g}{unit}" if unit else f"{number:.0f}"
        number /= 1000
    return f"{number:.3g}T"


def _depth(name: str) -> int:
    return 0 if name == "" else name.count(".") + 1


def tabulate(rows: list, header: list) -> str:
    """``rows`` under ``header`` as text: the first column left-aligned, the others right."""
    import tabulate

    colalign = ("left",) + ("right",) * (len(header) - 1)
    options: dict[str, Any] = {"headers": header, "colalign": colalign, "disable_numparse": True}
    if "preserve_whitespace" in inspect.signature(tabulate.tabulate).parameters:  # tabulate >= 0.10
        return tabulate.tabulate(rows, preserve_whitespace=True, **options)
    preserve, tabulate.PRESERVE_WHITESPACE = tabulate.PRESERVE_WHITESPACE, True
    try:
        return tabulate.tabulate(rows, **options)
    finally:
        tabulate.PRESERVE_WHITESPACE = preserve


MAX_SECTION_COLUMNS = 8
SELF = "(self)"  # the label of what a module ran outside its children
# What one unit of each convention's count is, for the table's first line.
UNIT_NOTES = {
    "FLOPs": "a multiply-add is 2",
    "MACs": "multiply-adds, fvcore's flops; elementwise ops free",
}


def check_depth(depth: Optional[int]) -> Optional[int]:
    """``depth`` if it is a non-negative int or None (every module); else a ValueError."""
    if depth is None or (isinstance(depth, int) and not isinstance(depth, bool) and depth >= 0):
        return depth
    raise ValueError(f"depth must be a non-negative int (0: the model alone) or None (every module), got {depth!r}")


# -- the lines of a module table and the quantities summed per line ------------------------


@dataclass(frozen=True)
class Line:
    """One line of a module table: a module (inclusive of its children), or with ``own`` what
    it ran itself outside any child (the "(self)" line); with ``operator``, that operator's
    share of either."""

    name: str
    label: str
    own: bool = False
    operator: Optional[str] = None

    @property
    def is_module(self) -> bool:
        return not self.own and self.operator is None


class Tally:
    """One quantity summed per :class:`Line`, over ``items`` that carry ``names`` (every module
    charged, inclusive), ``module`` (the innermost) and ``operator``: snapshot rows, or a
    roofline's op estimates. ``operators``: also per operator (for operator lines)."""

    __slots__ = ("inclusive", "own", "per_operator", "own_per_operator")

    def __init__(self, items: Iterable[Any], value: Callable[[Any], float], operators: bool = False) -> None:
        inclusive: dict[str, float] = {}
        own: dict[str, float] = {}
        per_operator: dict[str, dict[str, float]] = {}  # module -> operator -> value
        own_per_operator: dict[str, dict[str, float]] = {}
        for item in items:
            v = value(item)
            if not v:
                continue
            for name in item.names:
                inclusive[name] = inclusive.get(name, 0) + v
            own[item.module] = own.get(item.module, 0) + v
            if operators:
                op = item.operator
                for per_op in [per_operator.setdefault(name, {}) for name in item.names] + \
                        [own_per_operator.setdefault(item.module, {})]:
                    per_op[op] = per_op.get(op, 0) + v
        self.inclusive, self.own = inclusive, own
        self.per_operator, self.own_per_operator = per_operator, own_per_operator

    def __call__(self, line: Line) -> float:
        if line.operator is None:
            return (self.own if line.own else self.inclusive).get(line.name, 0)
        per_op = (self.own_per_operator if line.own else self.per_operator).get(line.name, {})
        return per_op.get(line.operator, 0)

    def operators(self, name: str, own: bool, order: Optional["Tally"] = None) -> list[str]:
        """The operators with a value in module ``name`` (or in its own ops), largest first
        by ``order``'s values (default: this tally's), then by this tally's."""
        source = (self.own_per_operator if own else self.per_operator).get(name, {})
        first = source if order is None else (order.own_per_operator if own else order.per_operator).get(name, {})
        return [op for *_, op in sorted((-first.get(op, 0), -value, op) for op, value in source.items())]


@dataclass(frozen=True)
class Column:
    """A table column: its header and the text of its cell on each line."""

    title: str
    cell: Callable[[Line], str]


def _recorded(row: Row) -> float:
    """Anything a row recorded besides calls, every slot (it decides which lines are shown)."""
    return sum(row.values) - row.values[CALLS]


def _lines(counts: Counts, depth: Optional[int], activity: Tally, flops: Optional[Tally]) -> Iterator[Line]:
    """The lines of a module table, in the model's order: each module up to ``depth``; below
    a module whose children are shown, a "(self)" line when it ran ops itself; with
    ``flops`` (a per-operator tally), one line per operator, most FLOPs first, below each leaf of
    the shown tree and each "(self)" line, so that the operator lines add up to the total."""
    shown = [name for name in counts.modules if depth is None or _depth(name) <= depth]
    parents = {name.rpartition(".")[0] for name in shown if name}
    root = "model" if counts.has_model and counts.model_ran else "(all)"
    for name in shown:
        level = _depth(name)
        yield Line(name, " " * level + (name or root))
        if name in parents:
            if activity(Line(name, "", own=True)):
                yield Line(name, " " * (level + 1) + SELF, own=True)
                if flops is not None:
                    for op in activity.operators(name, True, flops):
                        yield Line(name, " " * (level + 2) + op, own=True, operator=op)
        elif flops is not None:
            for op in activity.operators(name, False, flops):
                yield Line(name, " " * (level + 1) + op, operator=op)


def _render(counts: Counts, depth: Optional[int], columns: list[Column], operators: bool) -> str:
    activity = Tally(counts.rows, _recorded, operators)
    flops = Tally(counts.rows, lambda r: r.values[FLOPS], operators=True) if operators else None
    lines = _lines(counts, check_depth(depth), activity, flops)
    rows = [[column.cell(line) for column in columns] for line in lines]
    return tabulate(rows, [column.title for column in columns])


def _number(tally: Tally, fmt: Callable[[float], str] = human) -> Callable[[Line], str]:
    return lambda line: fmt(tally(line))


def _share(tally: Tally, total: float) -> Callable[[Line], str]:
    return lambda line: f"{100 * tally(line) / total:.1f}%" if total else "-"


def _module_only(cell: Callable[[str], str]) -> Callable[[Line], str]:
    return lambda line: cell(line.name) if line.is_module else ""


def _flop_columns(counts: Counts, operators: bool) -> list[Column]:
    """Forward, backward (of which recompute), total, one column per section and the share."""
    unit = counts.unit
    rows = counts.rows
    forward = Tally((r for r in rows if r.phase == FORWARD), lambda r: r.values[FLOPS], operators)
    backward = Tally((r for r in rows if r.phase != FORWARD), lambda r: r.values[FLOPS], operators)
    total = Tally(rows, lambda r: r.values[FLOPS], operators)
    columns = [Column(f"forward {unit}", _number(forward))]
    if backward.inclusive:
        recompute = Tally((r for r in rows if r.phase == RECOMPUTE), lambda r: r.values[FLOPS], operators)
        columns.append(Column(f"backward {unit}", _number(backward)))
        if recompute.inclusive:
            columns.append(Column("(recompute)", _number(recompute)))
        columns.append(Column(f"total {unit}", _number(total)))
    for section in _section_columns(counts):
        per_section = Tally((r for r in rows if r.section == section), lambda r: r.values[FLOPS], operators)
        columns.append(Column(f"{_section_label(section)} {unit}", _number(per_section)))
    columns.append(Column("%", _share(total, counts.total())))
    return columns


def _sections(counts: Counts) -> list:
    sections = [s for s in counts.sections() if s is not None]
    if sections and None in counts.sections():
        sections.append(None)  # what ran outside any section, last
    return sections


def _section_columns(counts: Counts) -> list:
    sections = _sections(counts)
    return sections if len(sections) <= MAX_SECTION_COLUMNS else []


def _section_label(section: Optional[str]) -> str:
    return "(no section)" if section is None else str(section)


def _metric_columns(counts: Counts, estimate: Optional["Roofline"], operators: bool,
                    flops: Optional[Tally] = None) -> list[Column]:
    """Bytes and measured time when recorded; with a roofline ``estimate``, intensity,
    estimated time and bound."""
    columns = []
    moved = None
    if "bytes" in counts.metrics:
        moved = Tally(counts.rows, lambda r: r.values[BYTES_READ] + r.values[BYTES_WRITTEN], operators)
        columns.append(Column("bytes", _number(moved, lambda v: human(v) + "B")))
    if "time" in counts.metrics:
        measured = Tally(counts.rows, lambda r: r.values[SECONDS], operators)
        columns.append(Column("measured", _number(measured, human_seconds)))
    if estimate is not None and moved is not None:
        flops = flops or Tally(counts.rows, lambda r: r.values[FLOPS], operators)
        seconds = Tally(estimate.ops(), lambda op: op.seconds, operators)
        compute = Tally(estimate.ops(), lambda op: op.seconds if op.bound == "compute" else 0.0, operators)
        columns += [
            Column("FLOP/B", lambda line: f"{flops(line) / moved(line):.3g}" if moved(line) else "-"),
            Column("est. time", _number(seconds, human_seconds)),
            Column("bound", lambda line: ("compute" if 2 * compute(line) >= seconds(line) else "memory")
                   if seconds(line) else "-"),
        ]
    return columns


def table(counts: Counts, depth: Optional[int] = 3, estimate: Optional["Roofline"] = None, *,
          classes: bool = False, operators: bool = False) -> str:
    """The module tree up to ``depth`` (None: every module) with parameters, forward, backward
    and total in the convention's unit (``counts.unit``: FLOPs, or MACs under fvcore) and the
    share of the total; with bytes or time recorded their totals; with a roofline
    ``estimate`` (of these counts), intensity, estimated time and bound.

    A module whose children are shown and that ran ops itself gets a "(self)" line with those
    ops, so that a module is its children plus "(self)" (a shared module called from another
    module's forward is counted under both). ``classes``: a column with each module's class;
    ``operators``: one line per operator under each leaf of the shown tree and each "(self)".

    When sections were used (``fm.section(label)``) each gets a column (forward and backward),
    or, beyond :data:`MAX_SECTION_COLUMNS` labels, a table of its own below the modules'."""
    params = counts.params
    columns = [Column("module", lambda line: line.label)]
    if classes:
        columns.append(Column("class", _module_only(lambda name: counts.classes.get(name, ""))))
    columns.append(Column("params", _module_only(lambda name: human_count(params[name]) if name in params else "")))
    columns += _flop_columns(counts, operators)
    columns += _metric_columns(counts, estimate, operators)
    text = "\n".join([_first_line(counts), *_warnings(counts), _render(counts, depth, columns, operators)])
    if _sections(counts) and not _section_columns(counts):
        text += "\n\n" + _section_table(counts)
    if estimate is not None:
        text += f"\nroofline: {_device_line(estimate)}"
    beyond = counts.beyond()
    if beyond:
        text += f"\n{counts.beyond_label}: " + ", ".join(f"{op} {human(flops)}" for op, flops in beyond.items())
    if counts.unsupported:
        text += "\nnot counted (no rule or failing formula): " + ", ".join(
            f"{op} x{calls}" for op, calls in counts.unsupported.items()
        )
    for note, calls in counts.notes.items():
        text += f"\nestimated: {note} (x{calls})"
    return text


def _first_line(counts: Counts) -> str:
    note = UNIT_NOTES.get(counts.unit)
    return f"convention: {counts.convention} ({counts.unit}" + (f": {note})" if note else ")")


def _warnings(counts: Counts) -> list[str]:
    """What makes the numbers below not what they seem: a partial snapshot, a model that never ran."""
    found = []
    if counts.partial:
        found.append("warning: partial counts, taken inside the FlopMode block (the run is not over)")
    if counts.has_model and not counts.model_ran:
        found.append("warning: the model given to FlopMode never ran its forward in the block; "
                     "(all) is everything counted")
    return found


def _section_table(counts: Counts) -> str:
    forward, backward = counts.by_section("forward"), counts.by_section("backward")
    total = counts.total()
    rows = []
    for section in _sections(counts):
        value = forward.get(section, 0) + backward.get(section, 0)
        rows.append([_section_label(section), human(forward.get(section, 0)), human(backward.get(section, 0)),
                     human(value), f"{100 * value / total:.1f}%" if total else "-"])
    unit = counts.unit
    return tabulate(rows, ["section", f"forward {unit}", f"backward {unit}", f"total {unit}", "%"])


def _device_line(estimate: "Roofline") -> str:
    d = estimate.device_summary()
    return (f"{d['name']}, {human(d['bandwidth'])}B/s, {d['peak_dtype']} peak "
            f"{human(d['peak_flops'])}FLOP/s; estimated {human_seconds(estimate.seconds())} "
            "(each op its own kernel, no overlap)")


def roofline_table(estimate: "Roofline", depth: Optional[int] = 3, *, operators: bool = False) -> str:
    """Module tree with FLOPs, bytes, intensity, estimated time, bound and share of time; with
    time recorded, the measured time and the roofline's share of it. "(self)" and operator
    lines as in :func:`table`."""
    counts = estimate.counts
    flops = Tally(counts.rows, lambda r: r.values[FLOPS], operators)
    columns = [Column("module", lambda line: line.label), Column("FLOPs", _number(flops))]
    metric_columns = _metric_columns(counts, estimate, operators, flops)
    measured_column = next((c for c in metric_columns if c.title == "measured"), None)
    columns += [c for c in metric_columns if c is not measured_column]
    seconds = Tally(estimate.ops(), lambda op: op.seconds, operators)
    columns.append(Column("% time", _share(seconds, estimate.seconds())))
    if measured_column is not None:
        measured = Tally(counts.rows, lambda r: r.values[SECONDS], operators)
        columns += [measured_column, Column("roofline %", lambda line: f"{100 * seconds(line) / measured(line):.0f}%"
                                            if measured(line) else "-")]
    return f"roofline: {_device_line(estimate)}\n" + _render(counts, depth, columns, operators)


def to_dict(counts: Counts, estimate: Optional["Roofline"] = None) -> dict[str, Any]:
    """Everything a snapshot holds, as a JSON-serializable dict; with a roofline ``estimate``
    (of these counts) that too: top-level ``device`` and ``estimated_seconds``, per module
    ``estimated_seconds``, ``bound`` and ``intensity``."""
    forward = counts.by_module("forward")
    backward = counts.by_module("backward")
    result = {
        "convention": counts.convention,
        "unit": counts.unit,
        "partial": counts.partial,
        "total": counts.total(),
        "forward": counts.total("forward"),
        "backward": counts.total("backward"),
        "recompute": counts.total("recompute"),
        "by_module": counts.by_module(),
        "modules": {
            name: {
                "params": counts.params.get(name, 0),
                "calls": counts.calls.get(name, 0),
                "forward": forward.get(name, 0),
                "backward": backward.get(name, 0),
                **({"class": counts.classes[name]} if name in counts.classes else {}),
            }
            for name in counts.modules
        },
        "by_operator": counts.by_operator(),
        "operator_calls": counts.operator_calls(),
        "by_module_and_operator": counts.by_module_and_operator(),
        "by_dtype": counts.by_dtype(),
        "sections": {("" if k is None else k): v for k, v in counts.by_section().items()},
        "beyond_fvcore": counts.beyond(),
        "unsupported_ops": dict(counts.unsupported),
        "formula_errors": dict(counts.errors),
        "uncalled_modules": sorted(counts.uncalled),
        "notes": dict(counts.notes),
        "metrics": list(counts.metrics),
    }
    modules = result["modules"]
    if "bytes" in counts.metrics:
        read, written = counts.by_module(metric="bytes_read"), counts.by_module(metric="bytes_written")
        for name, entry in modules.items():
            entry.update(bytes=read.get(name, 0) + written.get(name, 0), bytes_read=read.get(name, 0),
                         bytes_written=written.get(name, 0))
        result["bytes"] = {"total": counts.total(metric="bytes"), "read": counts.total(metric="bytes_read"),
                           "written": counts.total(metric="bytes_written"),
                           "by_operator": counts.by_operator(metric="bytes")}
    if "time" in counts.metrics:
        measured = counts.by_module(metric="seconds")
        for name, entry in modules.items():
            entry["seconds"] = measured.get(name, 0.0)
        result["seconds"] = {"total": counts.total(metric="seconds"),
                             "by_operator": counts.by_operator(metric="seconds")}
    if estimate is not None:
        seconds, bound, intensity = estimate.by_module(), estimate.bound(), estimate.intensity()
        for name, entry in modules.items():
            entry.update(estimated_seconds=seconds.get(name, 0.0), bound=bound.get(name),
                         intensity=intensity.get(name))
        result["device"] = estimate.device_summary()
        result["estimated_seconds"] = estimate.seconds()
        result["estimated_by_operator"] = estimate.by_operator()
    return result
