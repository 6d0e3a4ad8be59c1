"""The package's shape: no import cycles, one hook for every convention, renderers over a snapshot."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest
import torch

import dispatchcount
from dispatchcount import FlopMode, explain, register_formula
from dispatchcount.registry import CONVENTIONS, DECOMPOSE, UNSUPPORTED, ZERO, resolve

PACKAGE = Path(dispatchcount.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """Modules of the package that ``module`` imports anywhere (functions included), except
    under ``if TYPE_CHECKING``. ``from pkg import name`` counts pkg.name when it is a module."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            submodules = {f"{base}.{alias.name}" for alias in node.names} & known
            # ``from pkg import module`` imports the submodule (its package is only a parent)
            found.update(submodules if len(submodules) == len(node.names) else submodules | {base})
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {name for name in found if name in known and name != module}


def import_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(paths)
    return {
        name: _imports(ast.parse(path.read_text()), name, path.name == "__init__.py", known)
        for name, path in paths.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` as a path that starts and ends at the same module, or []."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "dispatchcount.dispatch" in graph and "dispatchcount.fvcore.hook" in graph
    assert find_cycle(graph) == []


def test_the_hook_and_the_renderers_do_not_import_the_mode():
    graph = import_graph()
    for module in ("dispatchcount.dispatch", "dispatchcount.report", "dispatchcount.records",
                   "dispatchcount.registry", "dispatchcount.fvcore.hook"):
        assert "dispatchcount.mode" not in graph[module], module


def test_mode_names_no_convention():
    tree = ast.parse((PACKAGE / "mode.py").read_text())
    compared = [
        node.value
        for compare in ast.walk(tree) if isinstance(compare, ast.Compare)
        for node in ast.walk(compare) if isinstance(node, ast.Constant)
    ]
    assert not set(compared) & set(CONVENTIONS)
    assert "dispatchcount.fvcore" not in import_graph()["dispatchcount.mode"]
    assert not any(isinstance(n, ast.ImportFrom) and "fvcore" in (n.module or "") for n in ast.walk(tree))


def test_every_convention_hook_derives_from_the_one_counting_hook():
    from dispatchcount.dispatch import CountingDispatch

    for convention in CONVENTIONS.values():
        assert issubclass(convention.hook_class(), CountingDispatch)


def test_explicit_zeros_belong_to_the_flop_conventions_only():
    from dispatchcount.registry import RuleTable

    clone = torch.ops.aten.clone.default
    assert resolve(clone, "flop") is ZERO and resolve(clone, "fvcore") is ZERO
    other = RuleTable("bytes")  # a table that is not a FLOP convention inherits no zero
    assert other.resolve(clone) is UNSUPPORTED


def test_explain_names_the_rule_and_why():
    mm = explain(torch.ops.aten.mm.default)
    assert mm.kind == "formula" and mm.source == "dispatchcount.formulas.matmul.mm_flop"
    assert explain(torch.ops.aten.view.default).kind == "resolver"
    assert explain(torch.ops.aten.view.default).rule is ZERO
    linear = explain(torch.ops.aten.linear.default)
    assert linear.kind == "decompose" and linear.rule is DECOMPOSE
    assert "pointwise" in explain(torch.ops.aten.add.Tensor).source
    fvcore_add = explain(torch.ops.aten.add.Tensor, convention="fvcore")
    assert fvcore_add.kind == "resolver" and fvcore_add.source.startswith("fvcore's default")
    assert fvcore_add.rule(torch.ones(3), torch.ones(3), out=torch.ones(3)) == 0
    assert explain(torch.ops.aten.mm.default, convention="fvcore").source == "dispatchcount.fvcore.rules._mm"
    assert "aten.mm.default" in str(mm) and "mm_flop" in str(mm)
    overloads = explain(torch.ops.aten.add)
    assert {e.op for e in overloads} >= {"aten.add.Tensor", "aten.add.Scalar"}
    with pytest.raises(ValueError, match="convention must be one of"):
        explain(torch.ops.aten.mm.default, convention="nope")


_LIB = torch.library.Library("dctest_arch", "DEF")
_LIB.define("twice(Tensor x) -> Tensor")
_LIB.impl("twice", lambda x: x * 2, "CompositeExplicitAutograd")


def test_register_formula_warns_only_when_it_replaces_a_built_in_rule():
    twice = torch.ops.dctest_arch.twice.default
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        register_formula(twice)(lambda x, out=None: 5)  # nothing to replace: no warning
        register_formula(twice)(lambda x, out=None: 6)  # replaces the user's own: no warning
    with FlopMode() as fm:
        torch.ops.dctest_arch.twice(torch.ones(3))
    assert fm.total() == 6

    from dispatchcount.formulas.matmul import mm_flop

    mm = torch.ops.aten.mm.default
    try:
        with pytest.warns(UserWarning, match=r"replaces the built-in rule .* aten\.mm\.default .*mm_flop"):
            register_formula(mm)(lambda a, b, out=None: 1)
        with FlopMode() as fm:
            torch.mm(torch.ones(2, 3), torch.ones(3, 4))
        assert fm.total() == 1
    finally:
        register_formula(torch.ops.aten.mm)(mm_flop)  # restore the built-in (a built-in: no warning)
        del CONVENTIONS["flop"].rules.formulas[mm]
    with FlopMode() as fm:
        torch.mm(torch.ones(2, 3), torch.ones(3, 4))
    assert fm.total() == 2 * 2 * 3 * 4


def test_per_counter_formulas_apply_to_that_counter_only():
    mm = torch.ops.aten.mm.default
    a, b = torch.ones(2, 3), torch.ones(3, 4)
    with FlopMode(formulas={mm: lambda a, b, out=None: 7}) as mine, FlopMode() as other:
        torch.mm(a, b)
    assert mine.total() == 7 and other.total() == 48
    with FlopMode(formulas={torch.ops.aten.mm: None}) as zeroed:
        torch.mm(a, b)
    assert zeroed.total() == 0 and zeroed.unsupported_ops() == {}


def test_reports_are_rendered_from_a_snapshot():
    from dispatchcount import report

    model = torch.nn.Linear(3, 2)
    with FlopMode(model) as fm:
        model(torch.ones(4, 3))
        inside = fm.counts()
    counts = fm.counts()
    assert inside.partial and not counts.partial
    assert counts is fm.counts()  # taken once after the block
    assert report.table(counts) == fm.table()
    assert report.to_dict(counts) == fm.to_dict()
    assert counts.total() == 2 * 4 * 3 * 2  # addmm: 4x3 @ 3x2



def test_every_subpackage_is_installed():
    """pyproject's explicit package list names every folder of the package (a wheel or a
    non-editable install leaves out the ones it misses: dispatchcount.fvcore once was)."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    config = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {".".join(p.parent.relative_to(PACKAGE.parent).parts) for p in PACKAGE.rglob("__init__.py")}
    assert folders <= set(config["packages"]), folders - set(config["packages"])
