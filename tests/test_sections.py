"""Sections: fm.section(label), by_section(), and the section columns of the table."""

import torch
from torch import nn

from dispatchcount import FlopMode

# Linear(4, 4) + ReLU + Linear(4, 2) on n rows: addmm 2*n*4*4 + relu n*4 + addmm 2*n*4*2.


def per_rows(n):
    return 32 * n + 4 * n + 16 * n


def model():
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))


def test_by_section_and_the_table_columns():
    m = model()
    with FlopMode(m) as fm:
        with fm.section("prefill"):
            m(torch.randn(3, 4))
        with fm.section("decode"):
            m(torch.randn(1, 4))
        m(torch.randn(2, 4))  # outside any section
    assert fm.by_section() == {None: per_rows(2), "prefill": per_rows(3), "decode": per_rows(1)}
    lines = fm.table().splitlines()
    assert lines[1].split() == ["module", "params", "forward", "FLOPs", "prefill", "FLOPs", "decode", "FLOPs",
                                "(no", "section)", "FLOPs", "%"]
    assert lines[3].split() == ["model", "30", str(per_rows(6)), str(per_rows(3)), str(per_rows(1)), str(per_rows(2)), "100.0%"]
    assert lines[4].split()[:3] + lines[4].split()[3:6] == ["0", "20", str(32 * 6), str(32 * 3), str(32 * 1), str(32 * 2)]
    assert fm.to_dict()["sections"] == {"": per_rows(2), "prefill": per_rows(3), "decode": per_rows(1)}


def test_sections_nest_and_restore_the_outer_label():
    m = model()
    with FlopMode(m) as fm:
        with fm.section("outer"):
            with fm.section("inner"):
                m(torch.randn(1, 4))
            m(torch.randn(2, 4))
    assert fm.by_section() == {"inner": per_rows(1), "outer": per_rows(2)}


def test_many_sections_get_a_table_of_their_own_and_stay_small():
    m = model()
    x = torch.randn(1, 4)
    with FlopMode(m) as fm:
        for step in range(40):
            with fm.section(f"token {step}"):
                m(x)
    counts = fm.counts()
    assert counts.by_section()["token 39"] == per_rows(1)
    # one record per (module, operator, phase, dtype) and section: 3 ops x 40 sections
    assert len(counts.rows) == 3 * 40
    text = fm.table()
    module_table, section_table = text.split("\n\n")
    assert "token 0" not in module_table
    rows = section_table.splitlines()
    assert rows[0].split() == ["section", "forward", "FLOPs", "backward", "FLOPs", "total", "FLOPs", "%"]
    assert rows[2].split() == ["token", "0", str(per_rows(1)), "0", str(per_rows(1)), "2.5%"]
    assert len(rows) == 2 + 40
