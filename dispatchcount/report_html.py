"""One self-contained HTML page for a count: an icicle of modules, operators, conventions.

``render_html(data)`` takes the JSON-serializable dict of ``FlopMode.to_dict()`` and returns one
HTML document with its CSS and JavaScript inline (``report_html.css``, ``report_html.js``, written
for it; no library, no network). ``notebook_html(data)`` wraps it in an ``<iframe srcdoc>`` so a
notebook shows it without its styles or ids leaking into the notebook's page.

Keys read (all optional except where said; unknown keys are ignored):

- ``convention`` (str): "flop" or "fvcore", named and explained in the header.
- ``total``, ``forward``, ``backward``, ``recompute`` (numbers): the totals and the
  forward/backward split; ``backward`` includes ``recompute``.
- ``modules`` ({name: entry}, "" the root, names dot-separated; the icicle's hierarchy, in this
  order). Entry keys: ``params``, ``calls``, ``forward``, ``backward`` (FLOPs), and when present
  ``class`` (the module's class name), ``bytes`` and ``estimated_seconds`` (and ``seconds``,
  measured), each a number or ``{"forward": n, "backward": n}`` (then the phase switch applies),
  ``bound`` ("compute" | "memory": a colouring of the icicle).
- ``by_module`` ({name: FLOPs}): used when ``modules`` is absent.
- ``metrics`` (list of str, e.g. ["flops", "bytes", "seconds"]): listed in the header; the icicle
  offers FLOPs and each of ``bytes``, ``estimated_seconds``, ``seconds`` that modules carry.
- ``by_operator`` ({operator: FLOPs}), ``operator_calls`` ({operator: calls}): the operator table.
- ``by_module_and_operator`` ({module: {operator: FLOPs}}, inclusive): a module's top operators.
- ``beyond_fvcore`` ({operator: FLOPs}), ``unsupported_ops`` ({operator: calls}),
  ``formula_errors`` ({operator: message}), ``uncalled_modules`` (list of names).
- ``device`` (dict, e.g. {"name": ..., "peak_flops": ..., "memory_bandwidth": ...}): every
  key shown, numbers with K/M/G/T units, nested dicts (peak FLOP/s per dtype) as nested rows.
- ``sections`` ({section: FLOPs, or {metric: value}}): a table of named sections.

Every string from ``data`` is escaped: HTML-escaped in the markup, and inside the embedded JSON
``<``, ``>``, ``&`` are written as ``\\u003c`` ...; the script sets only text and attributes.
"""

from __future__ import annotations

import html
import json
import math
from importlib import resources
from typing import Any, Iterable, Mapping

from dispatchcount.records import Counts
from dispatchcount.report import human, to_dict

__all__ = ["page", "notebook", "render_html", "notebook_html"]

# Optional per-module metrics, beyond FLOPs, in the order the switch offers them.
EXTRA_METRICS = {"bytes": "bytes", "estimated_seconds": "estimated time", "seconds": "measured time"}

_CONVENTIONS = {
    "flop": ("FLOPs", "a multiply-add is 2 FLOPs; matmul, convolution and attention as "
             "torch.utils.flop_counter.FlopCounterMode, every other floating-point op by the "
             "conventions table"),
    "fvcore": ("MACs", "fvcore's rules: a multiply-add is 1 (fvcore's flop), elementwise ops are "
               "free; totals reproduce fvcore.nn.FlopCountAnalysis and published GFLOPs"),
}

_JSON_IN_SCRIPT = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                                 "\u2028": "\\u2028", "\u2029": "\\u2029"})


def render_html(data: Mapping[str, Any], *, title: str | None = None) -> str:
    """The whole report as one HTML document (a str), from ``FlopMode.to_dict()``'s dict."""
    if not isinstance(data, Mapping):
        raise TypeError(f"data must be a dict such as FlopMode.to_dict() returns, got {type(data).__name__}")
    data = _jsonable(data)
    modules = _modules(data)
    convention = str(data.get("convention", ""))
    unit, _ = _CONVENTIONS.get(convention, ("FLOPs", ""))
    root_class = modules.get("", {}).get("class")
    heading = title or ("dispatchcount report" + (f": {root_class}" if root_class else ""))
    metrics = ["flops"] + [m for m in EXTRA_METRICS if any(m in entry for entry in modules.values())]
    rest = {key: value for key, value in data.items() if key != "modules"}  # modules: normalized, once
    payload = {"data": rest, "order": list(modules), "modules": modules, "unit": unit, "metrics": metrics}
    body = "\n".join(part for part in (
        _header(data, heading),
        _device(data.get("device")),
        _icicle_controls(metrics, unit, modules),
        _sections(data.get("sections"), unit),
        _operators(data, unit),
        _problems(data, unit),
    ) if part)
    script = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).translate(_JSON_IN_SCRIPT)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{_e(heading)}</title>\n<style>\n{_asset('report_html.css')}</style>\n</head>\n"
        f"<body>\n<main class=\"dc\">\n{body}\n</main>\n"
        f"<script type=\"application/json\" id=\"dc-data\">{script}</script>\n"
        f"<script>\n{_asset('report_html.js')}</script>\n</body>\n</html>\n"
    )


def notebook_html(data: Mapping[str, Any], *, height: int = 720) -> str:
    """``render_html`` inside an ``<iframe srcdoc>``: isolated styles and ids, for ``_repr_html_``."""
    return (f"<iframe srcdoc=\"{_e(render_html(data))}\" style=\"width:100%;height:{int(height)}px;"
            "border:1px solid #ddd\" title=\"dispatchcount report\"></iframe>")


# -- the parts of the page ----------------------------------------------------------------------


def page(counts: Counts, *, title: str | None = None, estimate: Any = None) -> str:
    """The HTML report of a snapshot (see :func:`render_html`), with a roofline ``estimate``."""
    return render_html(to_dict(counts, estimate), title=title)


def notebook(counts: Counts) -> str:
    """The notebook view of a snapshot (see :func:`notebook_html`)."""
    return notebook_html(to_dict(counts))


def _header(data: dict, heading: str) -> str:
    convention = str(data.get("convention", ""))
    unit, explanation = _CONVENTIONS.get(convention, ("FLOPs", ""))
    total = _number(data.get("total"))
    forward, backward = _number(data.get("forward")), _number(data.get("backward"))
    recompute = _number(data.get("recompute"))
    parts = [f"<header>\n<h1>{_e(heading)}</h1>",
             f"<p class=\"dc-convention\">convention: <b>{_e(convention or 'unknown')}</b>"
             + (f" &mdash; {_e(explanation)}" if explanation else "") + "</p>"]
    metrics = data.get("metrics")
    if isinstance(metrics, list) and metrics:
        parts.append(f"<p class=\"dc-metrics\">recorded metrics: {_e(', '.join(map(str, metrics)))}</p>")
    cells = [("total", total), ("forward", forward), ("backward", backward)]
    if recompute:
        cells.append(("of which recompute", recompute))
    parts.append("<dl class=\"dc-totals\">" + "".join(
        f"<div><dt>{name}</dt><dd title=\"{_exact(value)} {_e(unit)}\">{human(value)} <small>{_e(unit)}</small>"
        + (f" <small>({_percent(value, total)})</small>" if name != "total" and total else "")
        + "</dd></div>" for name, value in cells) + "</dl>")
    if total:
        parts.append(
            "<div class=\"dc-split\" title=\"forward / backward\">"
            f"<span class=\"dc-fwd\" style=\"width:{100 * forward / total:.3f}%\">forward</span>"
            f"<span class=\"dc-bwd\" style=\"width:{100 * backward / total:.3f}%\">backward</span></div>")
    unsupported = data.get("unsupported_ops") or {}
    if unsupported:
        parts.append(f"<p class=\"dc-warning\"><a href=\"#dc-unsupported\">{len(unsupported)} operator(s) "
                     "not counted</a> (no rule, or the formula raised): the totals miss them.</p>")
    parts.append("</header>")
    return "\n".join(parts)


def _device(device: Any) -> str:
    if not isinstance(device, dict) or not device:
        return ""
    name = device.get("name")
    rows = _key_values({k: v for k, v in device.items() if k != "name"})
    return ("<section id=\"dc-device\">\n<h2>Device" + (f": {_e(str(name))}" if name else "") + "</h2>\n"
            f"<table class=\"dc-kv\"><tbody>{rows}</tbody></table>\n</section>")


def _key_values(mapping: dict, indent: int = 0) -> str:
    rows = []
    for key, value in mapping.items():
        label = f"<th style=\"padding-left:{0.5 + 1.2 * indent:.1f}em\">{_e(str(key).replace('_', ' '))}</th>"
        if isinstance(value, dict):
            rows.append(f"<tr>{label}<td></td></tr>" + _key_values(value, indent + 1))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append(f"<tr>{label}<td class=\"dc-num\" title=\"{_exact(value)}\">{human(value)}</td></tr>")
        else:
            rows.append(f"<tr>{label}<td>{_e(str(value))}</td></tr>")
    return "".join(rows)


def _icicle_controls(metrics: list[str], unit: str, modules: dict) -> str:
    labels = {"flops": unit, **EXTRA_METRICS}
    metric_inputs = "".join(
        f"<label><input type=\"radio\" name=\"dc-metric\" value=\"{m}\"{' checked' if m == 'flops' else ''}>"
        f" {_e(labels[m])}</label>" for m in metrics)
    phase_inputs = "".join(
        f"<label><input type=\"radio\" name=\"dc-phase\" value=\"{p}\"{' checked' if p == 'total' else ''}>"
        f" {p}</label>" for p in ("total", "forward", "backward"))
    colour = ""
    if any(entry.get("bound") for entry in modules.values()):
        colour = ("<fieldset><legend>colour</legend><label><input type=\"radio\" name=\"dc-colour\" "
                  "value=\"kind\" checked> module kind</label><label><input type=\"radio\" name=\"dc-colour\" "
                  "value=\"bound\"> compute- or memory-bound</label></fieldset>")
    return (
        "<section id=\"dc-modules\">\n<h2>Modules</h2>\n"
        "<p class=\"dc-hint\">Width is the module's share, children under their parent. Click a module "
        "to zoom in and see its operators; click the top bar or the path to zoom out.</p>\n"
        f"<form class=\"dc-controls\"><fieldset><legend>size by</legend>{metric_inputs}</fieldset>"
        f"<fieldset><legend>phase</legend>{phase_inputs}</fieldset>{colour}</form>\n"
        "<nav class=\"dc-path\" id=\"dc-path\" aria-label=\"zoom path\"></nav>\n"
        "<div class=\"dc-icicle\" id=\"dc-icicle\" role=\"tree\"></div>\n"
        "<noscript><p>The module view needs JavaScript; the tables below do not.</p></noscript>\n"
        "<div class=\"dc-details\" id=\"dc-details\" aria-live=\"polite\"></div>\n</section>"
    )


def _sections(sections: Any, unit: str) -> str:
    if not isinstance(sections, dict) or not sections:
        return ""
    columns: list[str] = []
    for value in sections.values():
        for key in (value if isinstance(value, dict) else {"flops": value}):
            if key not in columns:
                columns.append(key)
    header = "".join(f"<th>{_e(unit if c == 'flops' else str(c))}</th>" for c in columns)
    rows = []
    for name, value in sections.items():
        values = value if isinstance(value, dict) else {"flops": value}
        rows.append(f"<tr><td>{_e(str(name))}</td>" + "".join(_number_cell(values.get(c)) for c in columns) + "</tr>")
    return ("<section id=\"dc-sections\">\n<h2>Sections</h2>\n<table class=\"dc-table\"><thead><tr>"
            f"<th>section</th>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>\n</section>")


def _operators(data: dict, unit: str) -> str:
    flops = _dict(data.get("by_operator"))
    calls = _dict(data.get("operator_calls"))
    beyond = _dict(data.get("beyond_fvcore"))
    unsupported = _dict(data.get("unsupported_ops"))
    total = sum(_number(v) for v in flops.values())
    names = sorted(set(flops) | set(calls) | set(unsupported),
                   key=lambda op: (-_number(flops.get(op)), op))
    rows = []
    for op in names:
        value = _number(flops.get(op))
        notes = [n for n, where in (("beyond fvcore", beyond), ("not counted", unsupported)) if op in where]
        zero_class = "" if value or notes else ' class="dc-zero"'
        rows.append(
            f"<tr{zero_class}><td>{_e(op)}</td>"
            f"{_number_cell(calls.get(op, unsupported.get(op)), exact=True)}{_number_cell(value)}"
            f"<td class=\"dc-num\" data-v=\"{value / total if total else 0:.6g}\">{_percent(value, total)}</td>"
            f"<td>{_e(', '.join(notes))}</td></tr>")
    zero = sum(1 for op in names if not _number(flops.get(op)) and op not in unsupported)
    toggle = (f"<label class=\"dc-toggle\"><input type=\"checkbox\" id=\"dc-show-zero\"> show the {zero} "
              "operators that cost nothing (views, copies, integer ops ...)</label>" if zero else "")
    return (
        "<section id=\"dc-operators\">\n<h2>Operators</h2>\n"
        "<p class=\"dc-hint\">Overloads merged, forward and backward together. Click a column to sort.</p>\n"
        f"{toggle}\n<table class=\"dc-table dc-sortable dc-hide-zero\" id=\"dc-ops\"><thead><tr>"
        "<th data-type=\"str\">operator</th><th data-type=\"num\">calls</th>"
        f"<th data-type=\"num\" aria-sort=\"descending\">{_e(unit)}</th><th data-type=\"num\">share</th>"
        f"<th data-type=\"str\">note</th></tr></thead>\n<tbody>{''.join(rows)}</tbody></table>\n</section>"
    )


def _problems(data: dict, unit: str) -> str:
    unsupported = _dict(data.get("unsupported_ops"))
    errors = _dict(data.get("formula_errors"))
    beyond = _dict(data.get("beyond_fvcore"))
    uncalled = data.get("uncalled_modules") or []
    parts = ["<section id=\"dc-unsupported\">\n<h2>Not counted</h2>"]
    if unsupported:
        parts.append("<table class=\"dc-table\"><thead><tr><th>operator</th><th>calls</th><th>why</th></tr>"
                     "</thead><tbody>" + "".join(
                         f"<tr><td>{_e(op)}</td>{_number_cell(n, exact=True)}"
                         f"<td>{_e(str(errors.get(op, 'no FLOP rule')))}</td></tr>"
                         for op, n in unsupported.items()) + "</tbody></table>")
    else:
        parts.append("<p>None: every operator that ran had a rule.</p>")
    parts.append("</section>")
    if beyond or data.get("convention") == "fvcore":
        parts.append("<section id=\"dc-beyond\">\n<h2>Beyond fvcore</h2>\n<p class=\"dc-hint\">Matmul-like "
                     "work fvcore has no handle for: counted here, absent from fvcore's total.</p>")
        parts.append(_simple_table(("operator", unit), beyond.items()) if beyond else "<p>None.</p>")
        parts.append("</section>")
    if uncalled:
        items = "".join(f"<li>{_e(str(name) or '(root)')}</li>" for name in uncalled)
        parts.append(f"<section id=\"dc-uncalled\">\n<h2>Modules that never ran</h2>\n<details><summary>"
                     f"{len(uncalled)} module(s)</summary><ul>{items}</ul></details>\n</section>")
    return "\n".join(parts)


def _simple_table(header: Iterable[str], rows: Iterable[tuple[Any, Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(f"<tr><td>{_e(str(k))}</td>{_number_cell(v)}</tr>" for k, v in rows)
    return f"<table class=\"dc-table\"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# -- small helpers ------------------------------------------------------------------------------


def _modules(data: dict) -> dict[str, dict]:
    modules = data.get("modules")
    if isinstance(modules, dict) and modules:
        result = {str(name): (entry if isinstance(entry, dict) else {}) for name, entry in modules.items()}
    else:
        result = {str(name): {"forward": flops} for name, flops in _dict(data.get("by_module")).items()}
    if "" not in result:
        result = {"": {"forward": data.get("forward", 0), "backward": data.get("backward", 0)}, **result}
    return result


def _jsonable(value: Any) -> Any:
    """A copy that json.dumps and JSON.parse both accept: str keys, no NaN or infinity."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in (sorted(value, key=str) if isinstance(value, (set, frozenset)) else value)]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> float:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def _number_cell(value: Any, exact: bool = False) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "<td class=\"dc-num\" data-v=\"0\"></td>"
    text = _exact(value) if exact and float(value).is_integer() else human(value)
    return f"<td class=\"dc-num\" data-v=\"{value!r}\" title=\"{_exact(value)}\">{text}</td>"


def _exact(value: float) -> str:
    """Every digit, thousands separated: 989e12 -> '989,000,000,000,000'; 0.00125 -> '0.00125'."""
    return f"{int(value):,}" if float(value).is_integer() else f"{value:,.6g}"


def _percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _asset(name: str) -> str:
    return resources.files("dispatchcount").joinpath(name).read_text(encoding="utf-8")
