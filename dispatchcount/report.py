"""Renderers: the module table and the JSON dict, each from a :class:`~dispatchcount.records.Counts`.

A renderer takes a snapshot and returns text or data; it never reads a FlopMode. A new one
(HTML, CSV) is a function of a ``Counts`` in a module of its own.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Iterator, Optional

from dispatchcount.records import Counts

if TYPE_CHECKING:
    from dispatchcount.roofline import Roofline

__all__ = ["human", "human_seconds", "table", "tabulate", "roofline_table", "to_dict"]


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


def _by_section_and_module(counts: Counts, sections: list) -> dict:
    """{section: {module: FLOPs, forward and backward}}, inclusive of children, in one pass."""
    result: dict = {section: {} for section in sections}
    for row in counts.rows:
        per_module = result.get(row.section)
        if per_module is None:
            continue
        value = row.values[0]
        for name in row.names:
            per_module[name] = per_module.get(name, 0) + value
    return result


def _section_label(section) -> str:
    return "(no section)" if section is None else str(section)


def _modules(counts: Counts, depth: int) -> Iterator[tuple[str, str]]:
    """(name, indented label) of each module up to ``depth``, in the model's order."""
    for name in counts.modules:
        level = _depth(name)
        if level <= depth:
            yield name, " " * level + (name or ("model" if counts.has_model else "(all)"))


def table(counts: Counts, depth: int = 3, estimate: Optional["Roofline"] = None) -> str:
    """Module tree (up to ``depth``) with parameters, forward, backward, total and share; with
    bytes or time recorded their totals; with a roofline ``estimate`` (of these counts),
    intensity, estimated time and bound.

    When sections were used (``fm.section(label)``) each gets a column (forward and backward),
    or, beyond :data:`MAX_SECTION_COLUMNS` labels, a table of its own below the modules'."""
    forward = counts.by_module("forward")
    backward = counts.by_module("backward")
    recompute = counts.by_module("recompute")
    grand_total = forward.get("", 0) + backward.get("", 0)
    has_backward = any(backward.values())
    has_recompute = any(recompute.values())
    params = counts.params
    sections = [s for s in counts.sections() if s is not None]
    if sections and None in counts.sections():
        sections.append(None)  # what ran outside any section, last
    section_columns = sections if len(sections) <= MAX_SECTION_COLUMNS else []
    per_section = _by_section_and_module(counts, section_columns)

    header = ["module", "#params", "forward"]
    if has_backward:
        header += ["backward", "total"]
    if has_recompute:
        header.insert(4, "(recompute)")
    header += [_section_label(s) for s in section_columns]
    header.append("%")
    extra = _extra_columns(counts, estimate)
    header += [title for title, _ in extra]
    rows = []
    for name, label in _modules(counts, depth):
        row = [label, human(params[name]) if name in params else "", human(forward.get(name, 0))]
        module_total = forward.get(name, 0)
        if has_backward:
            module_total += backward.get(name, 0)
            row += [human(backward.get(name, 0)), human(module_total)]
        if has_recompute:
            row.insert(4, human(recompute.get(name, 0)))
        row += [human(per_section[s].get(name, 0)) for s in section_columns]
        row.append(f"{100 * module_total / grand_total:.1f}%" if grand_total else "-")
        row += [cell(name) for _, cell in extra]
        rows.append(row)
    text = f"convention: {counts.convention}\n" + tabulate(rows, header)
    if sections and not section_columns:
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


def _section_table(counts: Counts) -> str:
    forward, backward = counts.by_section("forward"), counts.by_section("backward")
    total = counts.total()
    rows = []
    labels = [s for s in counts.sections() if s is not None]
    for section in labels + ([None] if None in counts.sections() else []):
        value = forward.get(section, 0) + backward.get(section, 0)
        rows.append([_section_label(section), human(forward.get(section, 0)), human(backward.get(section, 0)),
                     human(value), f"{100 * value / total:.1f}%" if total else "-"])
    return tabulate(rows, ["section", "forward", "backward", "total", "%"])


def _extra_columns(counts: Counts, estimate: Optional["Roofline"]) -> list:
    """(title, cell(module name)) of the columns beyond FLOPs: bytes, measured time, roofline."""
    columns = []
    if "bytes" in counts.metrics:
        moved = counts.by_module(metric="bytes")
        columns.append(("bytes", lambda name: human(moved.get(name, 0)) + "B"))
    if "time" in counts.metrics:
        measured = counts.by_module(metric="seconds")
        columns.append(("measured", lambda name: human_seconds(measured.get(name, 0))))
    if estimate is not None:
        intensity, seconds, bound = estimate.intensity(), estimate.by_module(), estimate.bound()
        columns += [
            ("FLOP/B", lambda name: f"{intensity[name]:.3g}" if name in intensity else "-"),
            ("est. time", lambda name: human_seconds(seconds.get(name, 0.0))),
            ("bound", lambda name: bound.get(name, "-")),
        ]
    return columns


def _device_line(estimate: "Roofline") -> str:
    d = estimate.device_summary()
    return (f"{d['name']}, {human(d['bandwidth'])}B/s, {d['peak_dtype']} peak "
            f"{human(d['peak_flops'])}FLOP/s; estimated {human_seconds(estimate.seconds())} "
            "(each op its own kernel, no overlap)")


def roofline_table(estimate: "Roofline", depth: int = 3) -> str:
    """Module tree with FLOPs, bytes, intensity, estimated time, bound and share of time; with
    time recorded, the measured time and the roofline's share of it."""
    counts = estimate.counts
    flops, moved = counts.by_module(), counts.by_module(metric="bytes")
    intensity, seconds, bound = estimate.intensity(), estimate.by_module(), estimate.bound()
    total = estimate.seconds()
    header = ["module", "FLOPs", "bytes", "FLOP/B", "est. time", "bound", "% time"]
    measured = counts.by_module(metric="seconds") if "time" in counts.metrics else None
    if measured is not None:
        header += ["measured", "roofline %"]
    rows = []
    for name, label in _modules(counts, depth):
        row = [label, human(flops.get(name, 0)), human(moved.get(name, 0)) + "B",
               f"{intensity[name]:.3g}" if name in intensity else "-",
               human_seconds(seconds.get(name, 0.0)), bound.get(name, "-"),
               f"{100 * seconds.get(name, 0.0) / total:.1f}%" if total else "-"]
        if measured is not None:
            m = measured.get(name, 0.0)
            row += [human_seconds(m), f"{100 * seconds.get(name, 0.0) / m:.0f}%" if m else "-"]
        rows.append(row)
    return f"roofline: {_device_line(estimate)}\n" + tabulate(rows, header)


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
