"""Measured time (metrics=(..., "time")): per-op seconds on CPU, none on meta, outputs unchanged.
No timing thresholds: only what must hold whatever the machine's speed."""

import time

import pytest
import torch
from torch import nn

from dispatchcount import FlopMode
from dispatchcount.meters import OpTimer


def model_and_input(device="cpu"):
    torch.manual_seed(0)
    with torch.device(device):
        return nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64)), torch.randn(32, 64)


def test_cpu_ops_are_timed_and_outputs_stay_bit_identical():
    model, x = model_and_input()
    expected = model(x)
    begin = time.perf_counter()
    with FlopMode(model, metrics=("flops", "bytes", "time")) as fm:
        y = model(x)
    wall = time.perf_counter() - begin
    assert torch.equal(y, expected)
    per_op = fm.by_operator(metric="seconds")
    assert per_op["aten.addmm"] > 0 and per_op["aten.gelu"] > 0
    assert 0 < fm.total(metric="seconds") <= wall  # the ops' time is part of the block's
    modules = fm.by_module(metric="seconds")
    assert modules[""] == pytest.approx(modules["0"] + modules["1"] + modules["2"])
    assert fm.by_module() == flops_by_module(model, x)  # FLOPs are unchanged by timing


def flops_by_module(model, x):
    return flops_only_run(model, x).by_module()


def test_meta_tensors_do_no_work_and_take_no_time():
    model, x = model_and_input("meta")
    with FlopMode(model, metrics=("flops", "time")) as fm:
        model(x)
    assert fm.total() > 0 and fm.total(metric="seconds") == 0


def test_achieved_relates_measured_time_to_flops_bytes_and_the_roofline():
    model, x = model_and_input()
    with FlopMode(model, metrics=("flops", "bytes", "time")) as fm:
        model(x)
    achieved = fm.achieved("h100-sxm")["0"]
    seconds = fm.by_module(metric="seconds")["0"]
    assert achieved["seconds"] == seconds
    assert achieved["flops_per_second"] == pytest.approx(fm.by_module()["0"] / seconds)
    assert achieved["bytes_per_second"] == pytest.approx(fm.by_module(metric="bytes")["0"] / seconds)
    assert achieved["roofline"] == pytest.approx(fm.roofline("h100-sxm").by_module()["0"] / seconds)
    assert "measured" in fm.roofline("h100-sxm").table() and "roofline %" in fm.roofline("h100-sxm").table()


def test_timer_argument_implies_time_and_rejects_unknown_modes():
    model, x = model_and_input()
    with FlopMode(model, timer=OpTimer(cuda="sync")) as fm:
        model(x)
    assert fm.counts().metrics == ("flops", "time") and fm.total(metric="seconds") > 0
    with pytest.raises(ValueError, match="'events' or 'sync'"):
        OpTimer(cuda="nvtx")
    with pytest.raises(ValueError, match=r"metrics=\(\.\.\., 'time'\)"):
        flops_only_run(model, x).total(metric="seconds")


def flops_only_run(model, x):
    with FlopMode(model) as fm:
        model(x)
    return fm
