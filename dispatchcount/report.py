"""Renderers: the module table and the JSON dict, each from a :class:`~dispatchcount.records.Counts`.

A renderer takes a snapshot and returns text or data; it never reads a FlopMode. A new one
(HTML, CSV) is a function of a ``Counts`` in a module of its own.
"""

from __future__ import annotations

import inspect
from typing import Any

from dispatchcount.records import Counts

__all__ = ["human", "table", "tabulate", "to_dict"]


def human(number: float) -> str:
    """3 significant digits with K/M/G/T/P units: 5_612_000_000 -> '5.61G'."""
    for unit in ("", "K", "M", "G", "T"):
        if abs(number) < 1000:
            return f"{number:.3g}{unit}" if unit else f"{number:.0f}"
        number /= 1000
    return f"{number:.3g}P"


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


def table(counts: Counts, depth: int = 3) -> str:
    """Module tree (up to ``depth``) with parameters, forward, backward, total and share.

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
    rows = []
    for name in counts.modules:
        level = _depth(name)
        if level > depth:
            continue
        label = name or ("model" if counts.has_model else "(all)")
        row = [" " * level + label, human(params[name]) if name in params else "", human(forward.get(name, 0))]
        module_total = forward.get(name, 0)
        if has_backward:
            module_total += backward.get(name, 0)
            row += [human(backward.get(name, 0)), human(module_total)]
        if has_recompute:
            row.insert(4, human(recompute.get(name, 0)))
        row += [human(per_section[s].get(name, 0)) for s in section_columns]
        row.append(f"{100 * module_total / grand_total:.1f}%" if grand_total else "-")
        rows.append(row)
    text = f"convention: {counts.convention}\n" + tabulate(rows, header)
    if sections and not section_columns:
        text += "\n\n" + _section_table(counts)
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


def to_dict(counts: Counts) -> dict[str, Any]:
    """Everything a snapshot holds, as a JSON-serializable dict."""
    forward = counts.by_module("forward")
    backward = counts.by_module("backward")
    return {
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
    }
