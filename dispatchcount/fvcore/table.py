"""fvcore's ``flop_count_table`` and ``parameter_count``, in fvcore's layout and units."""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

from torch import nn

from dispatchcount.fvcore.analysis import FlopCountAnalysis

__all__ = ["flop_count_table", "parameter_count"]



def parameter_count(model: nn.Module) -> Counter:
    """{name: parameters} for every parameter and every module prefix; "" is the whole model."""
    counts: Counter = Counter()
    for name, param in model.named_parameters():
        parts = name.split(".")
        for k in range(len(parts) + 1):
            counts[".".join(parts[:k])] += param.numel()
    return counts


def _format_size(x: float, sig_figs: int = 3) -> str:
    """fvcore's units: K above 1e2, M above 1e5, G above 1e8, T above 1e11, P above 1e14."""
    for threshold, scale, unit in ((1e14, 1e15, "P"), (1e11, 1e12, "T"), (1e8, 1e9, "G"),
                                   (1e5, 1e6, "M"), (1e2, 1e3, "K")):
        if abs(x) > threshold:
            return f"{x / scale:.{sig_figs}f}".rstrip("0").rstrip(".") + unit
    return str(x)


def _children(name: str, names: Iterable[str]) -> list[str]:
    prefix = name + "." if name else ""
    depth = prefix.count(".")
    return [n for n in names if n and n.count(".") == depth and n.startswith(prefix)]


def flop_count_table(
    flops: FlopCountAnalysis,
    max_depth: int = 3,
    activations: Any = None,
    show_param_shapes: bool = True,
) -> str:
    """fvcore's per-module table of parameters and flops, in fvcore's layout.

    ``activations`` may be any object with fvcore's ``by_module()`` and ``uncalled_modules()``.
    """
    import tabulate

    if not isinstance(flops, FlopCountAnalysis):
        raise TypeError(f"flops must be a dispatchcount.fvcore.FlopCountAnalysis, got {type(flops).__name__}")
    params_header = "#parameters" + (" or shape" if show_param_shapes else "")
    columns = [params_header, "#flops"]
    model = flops.model
    flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    per_stat: dict[str, dict[str, int]] = {params_header: dict(parameter_count(model)), "#flops": dict(flops.by_module())}
    uncalled = {"#flops": flops.uncalled_modules()}
    if activations is not None:
        columns.append("#activations")
        per_stat["#activations"] = dict(activations.by_module())
        uncalled["#activations"] = set(activations.uncalled_modules())

    stats: dict[str, dict[str, Any]] = {}
    for column, values in per_stat.items():
        for name, value in values.items():
            stats.setdefault(name, {})[column] = value
    stats = _drop_zero_rows(stats)
    text = {name: {c: _format_size(v) for c, v in row.items()} for name, row in stats.items()}
    for column, names in uncalled.items():
        for name in names & text.keys():
            text[name][column] = ""
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    for name in list(text):
        if name in shapes:
            if show_param_shapes:
                text[name][params_header] = str(shapes[name])
            else:
                del text[name]
    return _layout(text, columns, max_depth, tabulate)


def _drop_zero_rows(stats: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Drop rows whose statistics are all zero, unless a descendant is kept; keep the root."""
    kept: dict[str, dict[str, Any]] = {}

    def visit(name: str) -> bool:
        any_child_kept = False
        for child in _children(name, stats):
            any_child_kept |= visit(child)
        if name == "" or any_child_kept or any(v != 0 for v in stats[name].values()):
            kept[name] = dict(stats[name])
            return True
        return False

    visit("")
    return kept


def _merge_single_child(name: str, rows: dict[str, dict[str, str]]) -> tuple[str, dict[str, str]]:
    """A row whose only child shows the same figures is shown once, under the child's name."""
    while True:
        children = _children(name, rows)
        if len(children) != 1:
            return name, rows[name]
        child = children[0]
        mine, theirs = rows[name], rows[child]
        if mine.keys() != theirs.keys() or any(a != b and a and b for a, b in
                                                ((mine[k], theirs[k]) for k in mine)):
            return name, rows[name]
        rows[child] = {k: mine[k] or theirs[k] for k in mine}
        name = child


def _layout(rows: dict[str, dict[str, str]], columns: list[str], max_depth: int, tabulate: Any) -> str:
    table: list[list[str]] = []

    def add(label: str, row: dict[str, str], level: int) -> None:
        indent = " " * level
        table.append([indent + label] + [indent + row[c] if c in row else "" for c in columns])

    root, row = _merge_single_child("", rows)
    add(root or "model", row, 0)
    root_prefix = root + "." if root else ""

    def descend(prefix: str, level: int) -> None:
        if level > max_depth:
            return
        for name in [n for n in rows if n and n.count(".") == prefix.count(".") and n.startswith(prefix)]:
            name, row = _merge_single_child(name, rows)
            label = name[len(root_prefix):] if root_prefix and name.startswith(root_prefix) else name
            add(label, row, level)
            descend(name + ".", level + 1)

    descend(root_prefix, 1)
    # As fvcore does (so the text is the same as fvcore's with the installed tabulate): the
    # global flag, which tabulate >= 0.10 no longer reads.
    saved, tabulate.PRESERVE_WHITESPACE = tabulate.PRESERVE_WHITESPACE, True
    try:
        return tabulate.tabulate(table, headers=["module"] + columns, tablefmt="pipe")
    finally:
        tabulate.PRESERVE_WHITESPACE = saved
