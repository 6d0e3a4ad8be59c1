"""The module table (``fm.table()``, ``report.table``): units, "(self)" lines, operator lines,
classes, depth, parameters in K/M/B, and what it says when its numbers are not the whole run.

Every number below is derived by hand from the model (a multiply-add is 2 FLOPs under "flop",
1 MAC under "fvcore"; an elementwise op 1 FLOP per element; a bias gradient sums one element
per input element), never read from a run."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from dispatchcount import FlopMode, count_flops, report
from dispatchcount.report import human_count, human_seconds


class Net(nn.Module):
    """fc1 (4 -> 8), a ReLU, a multiply by 2 in the root's own forward, fc2 (8 -> 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)  # 40 parameters
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(8, 2)  # 18 parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)) * 2.0)


# One (2, 4) input. Forward: fc1 addmm 2*2*4*8 = 128, ReLU 16, the root's mul 16, fc2 addmm
# 2*2*8*2 = 64: 224 in all.
FC1, ACT, MUL, FC2 = 128, 16, 16, 64
FORWARD = FC1 + ACT + MUL + FC2
# Backward: fc2 input gradient 2*2*2*8 = 64, weight gradient 64, bias gradient 2*2 = 4; ReLU's
# threshold_backward 16; the mul's gradient 16; fc1 weight gradient 2*8*2*4 = 128, bias 2*8 = 16
# (the input needs no gradient).
FC2_BWD, ACT_BWD, MUL_BWD, FC1_BWD = 64 + 64 + 4, 16, 16, 128 + 16
BACKWARD = FC2_BWD + ACT_BWD + MUL_BWD + FC1_BWD


def rows(text: str, first: int = 3) -> list[list[str]]:
    """The table's cells, split on spaces, from its first body line on."""
    return [line.split() for line in text.splitlines()[first:]]


def pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%"


def forward_run(**options) -> FlopMode:
    model = Net()
    with FlopMode(model, **options) as fm, torch.no_grad():
        model(torch.randn(2, 4))
    return fm


def test_units_in_the_headers_and_a_self_line_for_the_roots_own_ops():
    text = forward_run().table()
    lines = text.splitlines()
    assert lines[0] == "convention: flop (FLOPs: a multiply-add is 2)"
    assert lines[1].split() == ["module", "params", "forward", "FLOPs", "%"]
    assert rows(text) == [
        ["model", "58", str(FORWARD), "100.0%"],
        ["(self)", str(MUL), pct(MUL, FORWARD)],   # the children add up to 208 of 224
        ["fc1", "40", str(FC1), pct(FC1, FORWARD)],
        ["act", "0", str(ACT), pct(ACT, FORWARD)],
        ["fc2", "18", str(FC2), pct(FC2, FORWARD)],
    ]


def test_fvcore_counts_macs_and_says_so():
    text = forward_run(convention="fvcore").table()
    lines = text.splitlines()
    assert lines[0] == "convention: fvcore (MACs: multiply-adds, fvcore's flops; elementwise ops free)"
    assert lines[1].split() == ["module", "params", "forward", "MACs", "%"]
    # the ReLU and the root's mul are free: no "(self)" line, nothing for act
    assert rows(text) == [
        ["model", "58", str((FC1 + FC2) // 2), "100.0%"],
        ["fc1", "40", str(FC1 // 2), pct(FC1, FC1 + FC2)],
        ["act", "0", "0", "0.0%"],
        ["fc2", "18", str(FC2 // 2), pct(FC2, FC1 + FC2)],
    ]


def test_backward_columns_and_count_flops_backward():
    fm = count_flops(Net(), torch.randn(2, 4), backward=True)
    assert (fm.total("forward"), fm.total("backward")) == (FORWARD, BACKWARD)
    text = fm.table()
    assert text.splitlines()[1].split() == ["module", "params", "forward", "FLOPs", "backward", "FLOPs",
                                            "total", "FLOPs", "%"]
    total = FORWARD + BACKWARD
    assert rows(text) == [
        ["model", "58", str(FORWARD), str(BACKWARD), str(total), "100.0%"],
        ["(self)", str(MUL), str(MUL_BWD), str(MUL + MUL_BWD), pct(MUL + MUL_BWD, total)],
        ["fc1", "40", str(FC1), str(FC1_BWD), str(FC1 + FC1_BWD), pct(FC1 + FC1_BWD, total)],
        ["act", "0", str(ACT), str(ACT_BWD), str(ACT + ACT_BWD), pct(ACT + ACT_BWD, total)],
        ["fc2", "18", str(FC2), str(FC2_BWD), str(FC2 + FC2_BWD), pct(FC2 + FC2_BWD, total)],
    ]


def test_count_flops_backward_counts_only_the_models_backward():
    # The seeds of the backward (ones) are not counted, nor any loss: the backward's operators
    # are the model's own.
    fm = count_flops(Net(), torch.randn(2, 4), backward=True)
    assert fm.by_operator("backward") == {"aten.mm": 64 + 64 + 128, "aten.sum": 4 + 16,
                                          "aten.threshold_backward": ACT_BWD, "aten.mul": MUL_BWD}
    with torch.no_grad(), pytest.raises(ValueError, match="no floating-point output of the model requires grad"):
        count_flops(Net(), torch.randn(2, 4), backward=True)


def test_operator_lines_under_each_leaf_and_self_add_up_to_the_total():
    fm = forward_run()
    text = fm.table(depth=1, operators=True)
    assert rows(text) == [
        ["model", "58", str(FORWARD), "100.0%"],
        ["(self)", str(MUL), pct(MUL, FORWARD)],
        ["aten.mul", str(MUL), pct(MUL, FORWARD)],
        ["fc1", "40", str(FC1), pct(FC1, FORWARD)],
        ["aten.addmm", str(FC1), pct(FC1, FORWARD)],
        ["act", "0", str(ACT), pct(ACT, FORWARD)],
        ["aten.relu", str(ACT), pct(ACT, FORWARD)],
        ["fc2", "18", str(FC2), pct(FC2, FORWARD)],
        ["aten.addmm", str(FC2), pct(FC2, FORWARD)],
    ]
    # operator lines are indented one level below their module's line
    assert "\n  aten.mul " in text and "\n  aten.relu " in text
    # depth 0: the model's operators, most FLOPs first (ties by name)
    assert rows(fm.table(depth=0, operators=True)) == [
        ["model", "58", str(FORWARD), "100.0%"],
        ["aten.addmm", str(FC1 + FC2), pct(FC1 + FC2, FORWARD)],
        ["aten.mul", str(MUL), pct(MUL, FORWARD)],
        ["aten.relu", str(ACT), pct(ACT, FORWARD)],
    ]


def test_class_column():
    text = forward_run().table(classes=True)
    assert text.splitlines()[1].split() == ["module", "class", "params", "forward", "FLOPs", "%"]
    assert [r[:2] for r in rows(text)] == [["model", "Net"], ["(self)", str(MUL)], ["fc1", "Linear"],
                                           ["act", "ReLU"], ["fc2", "Linear"]]


def test_depth_none_is_every_module_and_negative_depth_an_error():
    model = nn.Sequential(nn.Sequential(nn.Sequential(nn.Linear(2, 2, bias=False))))
    with FlopMode(model) as fm, torch.no_grad():
        model(torch.randn(1, 2))
    assert [r[0] for r in rows(fm.table(depth=None))] == ["model", "0", "0.0", "0.0.0"]
    assert [r[0] for r in rows(fm.table(depth=1))] == ["model", "0"]
    for bad in (-1, 1.5, True, "all"):
        with pytest.raises(ValueError, match="depth must be a non-negative int"):
            fm.table(depth=bad)


def test_parameters_in_k_m_b():
    assert [human_count(n) for n in (192, 4_900, 22_893_448, 6_738_415_616, 1_200_000_000_000)] == [
        "192", "4.9K", "22.9M", "6.74B", "1.2T"]
    embedding = nn.Embedding(1_000_000, 4096, device="meta")  # 4,096,000,000 parameters
    fm = count_flops(embedding, torch.zeros(1, 3, dtype=torch.long, device="meta"))
    assert rows(fm.table())[0][:2] == ["model", "4.1B"]


def test_a_model_that_never_ran_is_not_shown_doing_the_work():
    model, other = Net(), nn.Linear(4, 4)
    with pytest.warns(UserWarning, match=r"no module of the model given to FlopMode \(Net\) ran"):
        with FlopMode(model) as fm:
            other(torch.randn(2, 4))
    lines = fm.table().splitlines()
    assert lines[1] == ("warning: the model given to FlopMode never ran its forward in the block; "
                        "(all) is everything counted")
    assert lines[4].split()[0] == "(all)"


def test_running_part_of_the_model_warns_only_in_the_table():
    model, x = Net(), torch.randn(2, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with FlopMode(model) as fm, torch.no_grad():
            model.fc1(x)  # a part alone: deliberate
    assert fm.table().splitlines()[1].startswith("warning: the model given to FlopMode never ran its forward")
    assert rows(fm.table(), 4)[:2] == [["(all)", "58", str(FC1), "100.0%"], ["fc1", "40", str(FC1), "100.0%"]]


def test_a_table_inside_the_block_says_it_is_partial():
    model = Net()
    with FlopMode(model) as fm, torch.no_grad():
        model(torch.randn(2, 4))
        inside = fm.table()
    assert inside.splitlines()[1] == "warning: partial counts, taken inside the FlopMode block (the run is not over)"
    assert "partial" not in fm.table()


def test_self_line_carries_bytes_and_the_roofline():
    model, x = Net(), torch.randn(2, 4)  # made outside the block: its bytes are not the root's
    with FlopMode(model, metrics=("flops", "bytes")) as fm, torch.no_grad():
        model(x)
    estimate = fm.roofline("h100-sxm")
    text = fm.table(device="h100-sxm")
    assert text.splitlines()[1].split()[-6:] == ["%", "bytes", "FLOP/B", "est.", "time", "bound"]
    own = next(line.split() for line in text.splitlines() if line.split()[:1] == ["(self)"])
    # the mul reads and writes 2 x 8 float32 (the 2.0 is a Python scalar): 128 bytes
    assert own[3] == "128B" and own[4] == f"{MUL / 128:.3g}"
    assert " ".join(own[5:7]) == human_seconds(estimate.by_module(inclusive=False)[""])
    assert own[7] == "memory"
    roofline_own = next(line.split() for line in estimate.table().splitlines() if line.split()[:1] == ["(self)"])
    assert roofline_own[1:3] == [str(MUL), "128B"]


def test_report_table_of_a_snapshot_equals_the_modes():
    fm = forward_run()
    counts = fm.counts()
    assert report.table(counts, 1, classes=True, operators=True) == fm.table(1, classes=True, operators=True)
