"""fvcore's tests/test_print_model_statistics.py, case by case, against dispatchcount.fvcore.table.

The same statistics, models and expected text as fvcore's test; the helpers have fvcore's names
and behaviour. Where fvcore can trace the model, the text is also compared with fvcore's own.
"""

from __future__ import annotations


import torch
from torch import nn

from dispatchcount.fvcore import ActivationCountAnalysis, FlopCountAnalysis, flop_count_str, flop_count_table
from dispatchcount.fvcore.table import (
    _fill_missing_statistics,
    _group_by_module,
    _indicate_uncalled_modules,
    _model_stats_str,
    _model_stats_table,
    _pretty_statistics,
    _remove_zero_statistics,
)
from fvcore_reference import fvcore_nn, quiet  # noqa: F401 (quiet: an autouse fixture)


TEST_STATISTICS = {
    "": {"stat1": 4000, "stat2": 600000, "stat3": 0},
    "a1": {"stat1": 20, "stat2": 3000},
    "a1.b1": {"stat1": 20, "stat2": 3000},
    "a1.b1.c1": {"stat1": 20, "stat2": 3000},
    "a1.b1.c1.d1": {"stat1": 0, "stat2": 0},
    "a1.b1.c1.d2": {"stat1": 100},
    "a2": {"stat1": 123456, "stat2": 654321},
    "a2.b1": {"stat1": 0, "stat2": 100, "stat3": 40},
    "a2.b1.c1": {"stat1": 200, "stat2": 300},
    "a2.b1.c2": {"stat1": 0},
}

STRING_STATISTICS = {
    "": {"stat1": "4K", "stat2": "0.6M", "stat3": "0"},
    "a1": {"stat1": "20", "stat2": "3K"},
    "a1.b1": {"stat1": "20", "stat2": "3K"},
    "a1.b1.c1": {"stat1": "20", "stat2": "3K"},
    "a1.b1.c1.d1": {"stat1": "0", "stat2": "0"},
    "a1.b1.c1.d2": {"stat1": "100"},
    "a2": {"stat1": "0.123M", "stat2": "0.654M"},
    "a2.b1": {"stat1": "0", "stat2": "100", "stat3": "40"},
    "a2.b1.c1": {"stat1": "0.2K", "stat2": "0.3K"},
    "a2.b1.c2": {"stat1": "0"},
}

UNGROUPED = {
    "stat1": {"": 4000, "a1": 20, "a1.b1": 20, "a1.b1.c1": 20, "a1.b1.c1.d1": 0, "a1.b1.c1.d2": 100,
              "a2": 123456, "a2.b1": 0, "a2.b1.c1": 200, "a2.b1.c2": 0},
    "stat2": {"": 600000, "a1": 3000, "a1.b1": 3000, "a1.b1.c1": 3000, "a1.b1.c1.d1": 0, "a2": 654321,
              "a2.b1": 100, "a2.b1.c1": 300},
    "stat3": {"": 0, "a2.b1": 40},
}


class A2B1(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Linear(10, 10), nn.Linear(10, 10)

    def forward(self, x):
        return self.c1(self.c2(x))


class A2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.b1 = A2B1()

    def forward(self, x):
        return self.b1(x)


class A1B1C1(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.d1, self.d2 = nn.Linear(10, 10), nn.ReLU()

    def forward(self, x):
        return self.d1(self.d2(x))


class A1B1(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = A1B1C1()

    def forward(self, x):
        return self.c1.forward(x)  # not a call of c1: c1 is "uncalled"


class A1(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.b1 = A1B1()

    def forward(self, x):
        return self.b1(x)


class StatsNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a1, self.a2 = A1(), A2()

    def forward(self, x):
        return self.a1(self.a2(x))


def test_pretty_statistics():
    assert _pretty_statistics(TEST_STATISTICS) == STRING_STATISTICS
    hidden = _pretty_statistics(TEST_STATISTICS, hide_zero=True)
    assert hidden[""]["stat3"] == hidden["a1.b1.c1.d1"]["stat1"] == hidden["a1.b1.c1.d1"]["stat2"] == ""
    assert hidden["a2.b1"]["stat1"] == hidden["a2.b1.c2"]["stat1"] == ""
    assert hidden["a2"]["stat1"] == "0.123M"
    assert _pretty_statistics(TEST_STATISTICS, sig_figs=2)["a2"]["stat1"] == "0.12M"
    assert _pretty_statistics(TEST_STATISTICS, sig_figs=4)["a2"]["stat1"] == "0.1235M"


def test_group_by_module():
    assert _group_by_module(UNGROUPED) == TEST_STATISTICS


def test_indicate_uncalled_modules():
    stats = _indicate_uncalled_modules(STRING_STATISTICS, "stat1", {"", "a2.b1"})
    assert stats[""]["stat1"] == stats["a2.b1"]["stat1"] == "N/A"
    assert stats["a1.b1"]["stat1"] == "20"
    assert stats[""]["stat2"] == "0.6M"
    stats = _indicate_uncalled_modules(STRING_STATISTICS, "stat3", {"", "a1"}, uncalled_indicator="*")
    assert stats[""]["stat3"] == stats["a1"]["stat3"] == "*"
    assert STRING_STATISTICS["a1"] == {"stat1": "20", "stat2": "3K"}  # the input is left alone


def test_remove_zero_statistics():
    stats = _remove_zero_statistics(TEST_STATISTICS)
    assert "a1.b1.c1.d1" not in stats and "a2.b1.c2" not in stats
    assert stats["a2.b1"]["stat1"] == 0  # partial zeros stay

    stats = _remove_zero_statistics(TEST_STATISTICS, force_keep={"a1.b1.c1.d1"})
    assert "a2.b1.c2" not in stats
    assert stats["a1.b1.c1.d1"] == {"stat1": 0, "stat2": 0}

    modified = {name: dict(stats) for name, stats in TEST_STATISTICS.items()}
    modified["a1.b1.c1.d1.e1"] = {"stat1": 40}   # a non-zero child
    modified["a2.b1.c2.d1"] = {"stat1": 0}       # a zero child
    stats = _remove_zero_statistics(modified, require_trivial_children=True)
    assert "a1.b1.c1.d1" in stats and "a1.b1.c1.d1.e1" in stats
    assert "a2.b1.c2" not in stats and "a2.b1.c2.d1" not in stats


def test_fill_missing_statistics():
    names = ["", "a1", "a1.b1", "a1.b1.c1", "a1.b1.c1.d1", "a1.b1.c1.d2", "a2", "a2.b1", "a2.b1.c1", "a2.b1.c2"]
    expected = {stat: {name: UNGROUPED[stat].get(name, 0) for name in names} for stat in UNGROUPED}
    assert _fill_missing_statistics(StatsNet(), UNGROUPED) == expected


def test_model_stats_str():
    text = _model_stats_str(StatsNet(), STRING_STATISTICS)
    assert "stat1: 4K, stat2: 0.6M, stat3: 0" in text
    assert "ReLU(stat1: 100)" in text            # one line of statistics, inline
    assert "stat1: 0\n" in text                  # a single statistic
    assert "      (c1): A1B1C1(\n" in text       # a submodule, indented
    assert text == "\n".join([
        "StatsNet(",
        "  stat1: 4K, stat2: 0.6M, stat3: 0",
        "  (a1): A1(",
        "    stat1: 20, stat2: 3K",
        "    (b1): A1B1(",
        "      stat1: 20, stat2: 3K",
        "      (c1): A1B1C1(",
        "        stat1: 20, stat2: 3K",
        "        (d1): Linear(",
        "          in_features=10, out_features=10, bias=True",
        "          stat1: 0, stat2: 0",
        "        )",
        "        (d2): ReLU(stat1: 100)",
        "      )",
        "    )",
        "  )",
        "  (a2): A2(",
        "    stat1: 0.123M, stat2: 0.654M",
        "    (b1): A2B1(",
        "      stat1: 0, stat2: 100, stat3: 40",
        "      (c1): Linear(",
        "        in_features=10, out_features=10, bias=True",
        "        stat1: 0.2K, stat2: 0.3K",
        "      )",
        "      (c2): Linear(",
        "        in_features=10, out_features=10, bias=True",
        "        stat1: 0",
        "      )",
        "    )",
        "  )",
        ")",
    ])


def _tabulate_keeps_indentation() -> bool:
    """fvcore indents rows by setting tabulate.PRESERVE_WHITESPACE, which tabulate >= 0.10
    no longer reads: there fvcore's own tables (and so these) are not indented."""
    import tabulate

    saved, tabulate.PRESERVE_WHITESPACE = tabulate.PRESERVE_WHITESPACE, True
    try:
        return "|  x |" in tabulate.tabulate([[" x"]], headers=["h"], tablefmt="pipe")
    finally:
        tabulate.PRESERVE_WHITESPACE = saved


def test_model_stats_table():
    from fvcore.nn.print_model_statistics import _model_stats_table as fvcore_model_stats_table

    columns = ["stat1", "stat2", "stat3"]
    for depth in (3, 2):
        table = _model_stats_table(dict(STRING_STATISTICS), stat_columns=columns, max_depth=depth)
        assert table == fvcore_model_stats_table(dict(STRING_STATISTICS), stat_columns=columns, max_depth=depth)
        assert "a1.b1.c1" in table           # the end of a chain of wrappers stays
        assert "| a1.b1 " not in table       # the wrappers are merged into it
        assert "a2" in table and "a2.b1" in table
        if depth == 3 and _tabulate_keeps_indentation():
            assert "   100" in table and "    100" not in table
    assert "a1.b1.c1.d1" in table            # depth 2: skipping wrappers reaches deeper
    assert "a2.b1 " in table and "a2.b1.c1 " not in table


def test_flop_count_table():
    model, inputs = StatsNet(), (torch.randn(1, 10),)
    table = flop_count_table(FlopCountAnalysis(model, inputs))
    assert "| a1 " not in table
    assert "a1.b1.c1.d1.bias" in table
    assert "a2.b1.c1.weight" in table and "(10, 10)" in table
    assert "a2.b1 " in table
    assert "#activations" not in table
    assert " 0.33K" in table and "  0.33K" not in table
    assert "#parameters or shape" in table
    assert table == fvcore_nn.flop_count_table(fvcore_nn.FlopCountAnalysis(model, inputs))

    table = flop_count_table(FlopCountAnalysis(model, inputs), activations=ActivationCountAnalysis(model, inputs),
                             show_param_shapes=False)
    assert "#activations" in table and " 20 |" in table
    if _tabulate_keeps_indentation():
        assert "  20" in table
    assert "#parameters or shape" not in table
    assert "a2.b1.c1.weight" not in table and "(10, 10)" not in table
    assert "a2.b1.c1.d2" not in table
    assert table == fvcore_nn.flop_count_table(
        fvcore_nn.FlopCountAnalysis(model, inputs), activations=fvcore_nn.ActivationCountAnalysis(model, inputs),
        show_param_shapes=False)


def test_flop_count_str():
    model, inputs = StatsNet(), (torch.randn(1, 10),)
    text = flop_count_str(FlopCountAnalysis(model, inputs).ancestor_mode("caller"))
    assert "N/A indicates a possibly missing statistic" in text
    assert "#params: 0.11K, #flops: 100" in text
    assert "ReLU()" in text                                # nothing to report: no statistics
    assert "#params: 0.11K, #flops: N/A" in text           # c1, reached through .forward()
    assert text == fvcore_nn.flop_count_str(fvcore_nn.FlopCountAnalysis(model, inputs).ancestor_mode("caller"))

    text = flop_count_str(FlopCountAnalysis(model, inputs).ancestor_mode("caller"),
                          activations=ActivationCountAnalysis(model, inputs).ancestor_mode("caller"))
    assert "#params: 0.33K, #flops: 0.3K, #acts: 30" in text
    assert "#params: 0.11K, #flops: N/A, #acts: N/A" in text
    assert text == fvcore_nn.flop_count_str(
        fvcore_nn.FlopCountAnalysis(model, inputs).ancestor_mode("caller"),
        activations=fvcore_nn.ActivationCountAnalysis(model, inputs).ancestor_mode("caller"))


def test_flop_count_str_owner_mode():
    # In fvcore's default mode c1 owns the called d1: counted, not N/A, and no note.
    model, inputs = StatsNet(), (torch.randn(1, 10),)
    text = flop_count_str(FlopCountAnalysis(model, inputs))
    assert "N/A" not in text
    assert "      (c1): A1B1C1(\n        #params: 0.11K, #flops: 100\n" in text
    assert text == fvcore_nn.flop_count_str(fvcore_nn.FlopCountAnalysis(model, inputs))


def test_flop_count_empty():
    model, inputs = nn.ReLU(), (torch.randn(1, 10),)
    assert len(flop_count_table(FlopCountAnalysis(model, inputs))) > 0
    assert len(flop_count_str(FlopCountAnalysis(model, inputs))) > 0
    assert flop_count_table(FlopCountAnalysis(model, inputs)) == fvcore_nn.flop_count_table(
        fvcore_nn.FlopCountAnalysis(model, inputs))
