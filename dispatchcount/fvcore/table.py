"""fvcore's ``flop_count_table``, ``flop_count_str`` and ``parameter_count``, in fvcore's layout.

The steps are fvcore's (fvcore/nn/print_model_statistics.py), each a small function with
fvcore's name, so that the text is the same: statistics grouped by module, all-zero rows
dropped, numbers written with K/M/G/T/P suffixes, uncalled modules marked, and a row whose
only child shows the same figures merged into the child's.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Optional

from torch import nn

__all__ = ["flop_count_table", "flop_count_str", "parameter_count"]

Stats = dict[str, dict[str, Any]]


def parameter_count(model: nn.Module) -> Counter:
    """{name: parameters} for every parameter and every module prefix; "" is the whole model."""
    counts: Counter = Counter()
    for name, param in model.named_parameters():
        parts = name.split(".")
        for k in range(len(parts) + 1):
            counts[".".join(parts[:k])] += param.numel()
    return counts


# -- preparing the statistics ----------------------------------------------------------------


def _format_size(x: float, sig_figs: int = 3, hide_zero: bool = False) -> str:
    """fvcore's units: K above 1e2, M above 1e5, G above 1e8, T above 1e11, P above 1e14; smaller
    numbers as they are."""
    if hide_zero and x == 0:
        return ""
    for threshold, scale, unit in ((1e14, 1e15, "P"), (1e11, 1e12, "T"), (1e8, 1e9, "G"),
                                   (1e5, 1e6, "M"), (1e2, 1e3, "K")):
        if abs(x) > threshold:
            return f"{x / scale:.{sig_figs}f}".rstrip("0").rstrip(".") + unit
    return str(x)


def _pretty_statistics(statistics: Stats, sig_figs: int = 3, hide_zero: bool = False) -> dict[str, dict[str, str]]:
    """Every number of ``{module: {statistic: number}}`` written by :func:`_format_size`."""
    return {module: {name: _format_size(value, sig_figs, hide_zero) for name, value in stats.items()}
            for module, stats in statistics.items()}


def _group_by_module(statistics: Stats) -> Stats:
    """{statistic: {module: value}} -> {module: {statistic: value}}."""
    grouped: Stats = {}
    for name, per_module in statistics.items():
        for module, value in per_module.items():
            grouped.setdefault(module, {})[name] = value
    return grouped


def _indicate_uncalled_modules(statistics: dict[str, dict[str, str]], stat_name: str,
                               uncalled_modules: Iterable[str], uncalled_indicator: str = "N/A") -> dict[str, dict[str, str]]:
    """A copy with ``stat_name`` of every uncalled module replaced by ``uncalled_indicator``."""
    marked = {module: dict(stats) for module, stats in statistics.items()}
    for module in uncalled_modules:
        marked.setdefault(module, {})[stat_name] = uncalled_indicator
    return marked


def _children(name: str, names: Iterable[str]) -> list[str]:
    prefix = name + "." if name else ""
    depth = prefix.count(".")
    return [n for n in names if n and n.count(".") == depth and n.startswith(prefix)]


def _remove_zero_statistics(statistics: Stats, force_keep: Optional[set[str]] = None,
                            require_trivial_children: bool = False) -> Stats:
    """Drop the modules whose statistics are all zero, except those in ``force_keep`` (by default
    the root; as in fvcore, a given ``force_keep`` replaces the root) and, with
    ``require_trivial_children``, those with a kept descendant. Kept rows come children first."""
    keep = force_keep if force_keep else {""}
    kept: Stats = {}

    def visit(name: str) -> None:
        child_kept = False
        for child in _children(name, statistics):
            visit(child)
            child_kept |= child in kept
        if (any(value != 0 for value in statistics[name].values()) or name in keep
                or (require_trivial_children and child_kept)):
            kept[name] = dict(statistics[name])

    visit("")
    return kept


def _fill_missing_statistics(model: nn.Module, statistics: Stats) -> Stats:
    """Each statistic gets a 0 for every module of the model it lacks."""
    filled = {name: dict(per_module) for name, per_module in statistics.items()}
    for module, _ in model.named_modules():
        for per_module in filled.values():
            per_module.setdefault(module, 0)
    return filled


def _quiet(*analyses: Any) -> None:
    for analysis in analyses:
        if analysis is not None:
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")


def _model_of(flops: Any) -> nn.Module:
    model = getattr(flops, "_model", None)
    if not isinstance(model, nn.Module):
        raise TypeError(f"flops must be a dispatchcount.fvcore.FlopCountAnalysis, got {type(flops).__name__}")
    return model


# -- the model printed with its statistics ----------------------------------------------------


def _indent(text: str, spaces: int) -> str:
    first, *rest = text.split("\n")
    return "\n".join([first] + [" " * spaces + line for line in rest])


def _model_stats_str(model: nn.Module, statistics: dict[str, dict[str, str]]) -> str:
    """``str(model)`` with each module's statistics as an extra line of its representation."""

    def module_str(module: nn.Module, name: str) -> str:
        extra = module.extra_repr().split("\n") if module.extra_repr() else []
        if statistics.get(name):
            extra.append(", ".join(f"{k}: {v}" for k, v in statistics[name].items()))
        children = []
        for key, child in module._modules.items():
            if child is None:
                continue
            child_name = f"{name}.{key}" if name else key
            children.append(f"({key}): " + _indent(module_str(child, child_name), 2))
        lines = extra + children
        if not lines:
            return module._get_name() + "()"
        if len(extra) == 1 and not children:
            return f"{module._get_name()}({extra[0]})"
        return module._get_name() + "(\n  " + "\n  ".join(lines) + "\n)"

    return module_str(model, "")


def flop_count_str(flops: Any, activations: Any = None) -> str:
    """The model printed as ``str(model)``, with the parameters and flops (and, given an
    activation analysis, activations) of each module; "N/A" for uncalled modules."""
    model = _model_of(flops)
    _quiet(flops, activations)
    stats = {"#params": dict(parameter_count(model)), "#flops": dict(flops.by_module())}
    if activations is not None:
        stats["#acts"] = dict(activations.by_module())
    uncalled = set(flops.uncalled_modules())
    all_uncalled = uncalled | (set(activations.uncalled_modules()) if activations is not None else set())
    stats = _group_by_module(_fill_missing_statistics(model, stats))
    stats = _remove_zero_statistics(stats, force_keep=all_uncalled)
    text = _indicate_uncalled_modules(_pretty_statistics(stats, sig_figs=2), "#flops", uncalled)
    if activations is not None:
        text = _indicate_uncalled_modules(text, "#acts", activations.uncalled_modules())
    note = ("N/A indicates a possibly missing statistic due to how the module was called. "
            "Missing values are still included in the parent's total.\n") if all_uncalled else ""
    return note + _model_stats_str(model, text)


# -- the table --------------------------------------------------------------------------------


def _fastforward(name: str, statistics: dict[str, dict[str, str]]) -> tuple[str, dict[str, str]]:
    """A row whose only child shows the same figures (or blanks) is shown once, as the child."""
    while True:
        children = _children(name, statistics)
        if len(children) != 1:
            return name, statistics[name]
        child = children[0]
        mine, theirs = statistics[name], statistics[child]
        if mine.keys() != theirs.keys() or any(a != b and a and b for a, b in
                                                ((mine[k], theirs[k]) for k in mine)):
            return name, statistics[name]
        statistics[child] = {k: mine[k] or theirs[k] for k in mine}
        name = child


def _model_stats_table(statistics: dict[str, dict[str, str]], max_depth: int = 3,
                       stat_columns: Optional[list[str]] = None) -> str:
    """fvcore's pipe table of ``{module: {statistic: text}}`` down to ``max_depth``."""
    import tabulate

    if stat_columns is None:
        stat_columns = list(dict.fromkeys(k for stats in statistics.values() for k in stats))
    table: list[list[str]] = []

    def add(label: str, row: dict[str, str], level: int) -> None:
        indent = " " * level
        table.append([indent + label] + [indent + row[c] if c in row else "" for c in stat_columns])

    root, row = _fastforward("", statistics)
    add(root or "model", row, 0)
    root_prefix = root + "." if root else ""

    def descend(prefix: str, level: int) -> None:
        if level > max_depth:
            return
        for name in [n for n in statistics if n and n.count(".") == prefix.count(".") and n.startswith(prefix)]:
            name, row = _fastforward(name, statistics)
            label = name[len(root_prefix):] if root_prefix and name.startswith(root_prefix) else name
            add(label, row, level)
            descend(name + ".", level + 1)

    descend(root_prefix, 1)
    # As fvcore does (so the text is the same as fvcore's with the installed tabulate): the
    # global flag, which tabulate >= 0.10 no longer reads.
    saved, tabulate.PRESERVE_WHITESPACE = tabulate.PRESERVE_WHITESPACE, True
    try:
        return tabulate.tabulate(table, headers=["module"] + stat_columns, tablefmt="pipe")
    finally:
        tabulate.PRESERVE_WHITESPACE = saved


def flop_count_table(flops: Any, max_depth: int = 3, activations: Any = None, show_param_shapes: bool = True) -> str:
    """fvcore's per-module table of parameters and flops (and activations), in fvcore's layout.

    ``activations`` may be any object with fvcore's ``by_module()`` and ``uncalled_modules()``.
    """
    model = _model_of(flops)
    params_header = "#parameters" + (" or shape" if show_param_shapes else "")
    columns = [params_header, "#flops"]
    _quiet(flops, activations)
    stats: Stats = {params_header: dict(parameter_count(model)), "#flops": dict(flops.by_module())}
    uncalled = {"#flops": set(flops.uncalled_modules())}
    if activations is not None:
        columns.append("#activations")
        stats["#activations"] = dict(activations.by_module())
        uncalled["#activations"] = set(activations.uncalled_modules())
    grouped = _remove_zero_statistics(_group_by_module(stats), require_trivial_children=True)
    text = _pretty_statistics(grouped)
    for column, names in uncalled.items():
        text = _indicate_uncalled_modules(text, column, names & text.keys(), uncalled_indicator="")
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    for name in list(text):
        if name in shapes:
            if show_param_shapes:
                text[name][params_header] = str(shapes[name])
            else:
                del text[name]
    return _model_stats_table(text, max_depth, columns)
