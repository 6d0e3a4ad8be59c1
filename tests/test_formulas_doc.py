"""docs/conventions.md matches the code: its cost tables are the formula modules' tables."""

import re
from pathlib import Path

import pytest

from dispatchcount.formulas.loss import LOSS_BACKWARD_FLOPS, LOSS_FLOPS
from dispatchcount.formulas.optim import ADAGRAD_FLOPS, ADAM_FLOPS, SGD_FLOPS
from dispatchcount.formulas.pointwise import POINTWISE_FLOPS
from dispatchcount.formulas.quantization import QUANTIZATION_FLOPS
from dispatchcount.formulas.reduction import REDUCTION_FLOPS

DOC = Path(__file__).resolve().parent.parent / "docs" / "conventions.md"


def section(title: str) -> str:
    text = DOC.read_text()
    flop = text[text.index("## `flop` convention"):]
    start = flop.index(f"### {title}")
    end = flop.find("\n### ", start + 1)
    return flop[start:end if end != -1 else None]


def table_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("| `"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def documented(title: str, columns: int) -> dict[str, tuple]:
    costs = {}
    for row in table_rows(section(title)):
        values = tuple(int(row[i]) for i in range(1, 1 + columns))
        for name in re.findall(r"`(\w+)`", row[0]):
            assert name not in costs, f"{name} appears twice in '{title}'"
            costs[name] = values
    return costs


def test_pointwise_table_is_the_code_table():
    doc = documented("Pointwise", 1)
    assert doc == {name: (cost,) for name, cost in POINTWISE_FLOPS.items()}


def test_reduction_table_is_the_code_table():
    doc = documented("Reductions, scans, softmax", 2)
    assert doc == {name: (per_in, per_out) for name, (per_in, per_out, _) in REDUCTION_FLOPS.items()}


def test_loss_table_is_the_code_table():
    assert documented("Losses", 1) == {n: (c,) for n, c in {**LOSS_FLOPS, **LOSS_BACKWARD_FLOPS}.items()}


@pytest.mark.parametrize(
    "op, flops", [("_fused_adam", ADAM_FLOPS), ("_fused_sgd", SGD_FLOPS), ("_fused_adagrad", ADAGRAD_FLOPS)]
)
def test_fused_optimizer_costs_are_documented(op, flops):
    rows = {row[0]: row[1] for row in table_rows(section("Optimizers"))}
    cell = next(cost for ops, cost in rows.items() if f"`{op}`" in ops)
    assert cell.startswith(f"{flops}:")


def test_quantization_costs_are_documented():
    text = section("Sparse, quantization, fused linear cross-entropy")
    assert QUANTIZATION_FLOPS["quantize_per_tensor"] == 5 and "quantize 5 per element" in text
    assert QUANTIZATION_FLOPS["quantize_per_tensor_dynamic"] == 7 and "dynamic quantization 7" in text
    assert QUANTIZATION_FLOPS["fake_quantize_per_tensor_affine_cachemask"] == 7 and "fake quantization 7" in text


def test_coverage_figures_are_the_current_ones():
    import collections

    import torch

    from dispatchcount.registry import DECOMPOSE, UNSUPPORTED, ZERO, resolve

    kinds = collections.Counter()
    for qualified in torch._C._dispatch_get_all_op_names():
        if qualified.startswith("aten::"):
            name, _, overload = qualified[len("aten::"):].partition(".")
            rule = resolve(getattr(getattr(torch.ops.aten, name), overload or "default"), "flop")
            kind = {id(ZERO): "zero", id(DECOMPOSE): "decompose", id(UNSUPPORTED): "none"}
            kinds[kind.get(id(rule), "formula")] += 1
    stated = (
        f"**{sum(kinds.values())} aten dispatcher overloads:\n{kinds['formula']} formulas, "
        f"{kinds['zero']} explicit zeros, {kinds['decompose']} CompositeImplicit decompositions, "
        f"0 without a rule.**"
    )
    text = DOC.read_text()
    version = text[text.index("Coverage (PyTorch ") + len("Coverage (PyTorch "):].split(",", 1)[0]
    if torch.__version__.startswith(version):  # the figures are those of the stated version
        assert stated in text
