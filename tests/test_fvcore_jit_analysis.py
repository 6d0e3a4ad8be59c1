"""fvcore's tests/test_jit_model_analysis.py, case by case, against dispatchcount.fvcore.

Same models and expected numbers. Two assertions of fvcore's test are JIT limitations and are
asserted here as what dispatchcount does instead (docs/conventions.md, "fvcore's own tests"):
a TracerWarning (nothing is traced here), and a module whose only output feeds ``.item()`` being
"never called" (the trace drops it; here it ran).
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter

import pytest
import torch
from torch import nn

from dispatchcount.fvcore import FlopCountAnalysis, JitModelAnalysis

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from fvcore.nn.jit_handles import addmm_flop_jit, conv_flop_jit, linear_flop_jit  # fvcore's own handles

LIN_OP = "linear"  # what nn.Linear traces to on this PyTorch (tests/test_fvcore_flop_count.py)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class NestedNetInnerModule(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 2, kernel_size=1)
        self.fc = nn.Linear(10, 10)
        fc = Counter({LIN_OP: 10 * 10})
        conv = Counter({"conv": 5 * 1 * 2 * 2})  # 5 positions x kernel 1 x 2 in x 2 out
        self.flops = {"": conv + fc, "fc": fc, "conv": conv}

    def forward(self, x):
        x = self.conv(x.reshape(-1, 2, 5))
        return 3 * self.fc(torch.flatten(x, 1)) + 1


class NestedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.input_size = (4, 5)
        self.submod = NestedNetInnerModule()
        self.fc = nn.Linear(20, 10)
        self.conv = nn.Conv1d(4, 4, kernel_size=3, padding=1)
        fc = Counter({LIN_OP: 20 * 10})
        conv = Counter({"conv": 5 * 3 * 4 * 4})
        inner = self.submod.flops
        self.flops = {"": conv + fc + inner[""], "fc": fc, "conv": conv, "submod": inner[""],
                      "submod.fc": inner["fc"], "submod.conv": inner["conv"]}

    def forward(self, x):
        x = self.fc(torch.flatten(self.conv(x), 1))
        return self.submod(x) ** 2


class UnusedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.unused = nn.Linear(10, 10), nn.Linear(10, 1), nn.Linear(20, 20)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class RepeatedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(10, 10), nn.Linear(10, 10)

    def forward(self, x):
        for _ in range(3):
            x = self.fc1(x)
        for _ in range(2):
            x = self.fc2(x)
        return x


class NonForwardInnerModule(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(10, 1)

    def forward(self, x):
        return x

    def other_func(self, x):
        return self.fc(x)


class NonForwardNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.submod = NonForwardInnerModule()
        self.fc = nn.Linear(10, 10)

    def forward(self, x):
        return self.submod.other_func(self.fc(x))


class SharedInnerModule(nn.Module):
    def __init__(self, submod: nn.Module) -> None:
        super().__init__()
        self.submod = submod

    def forward(self, x):
        return self.submod(x)


class SharedModuleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        inner = nn.Linear(10, 10)
        self.submod1, self.submod2 = SharedInnerModule(inner), SharedInnerModule(inner)
        multiname = nn.Linear(10, 1)
        self.multiname1, self.multiname2 = multiname, multiname

    def forward(self, x):
        x = self.submod1(x) + self.submod2(x)
        return self.multiname1(x) + self.multiname2(x)


class RecursiveScopeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(10, 1)

    def forward(self, x, count: int = 3):
        if count > 0:
            return self(x, count - 1)
        return self.fc(x)


class TraceWarningNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(10, 1), nn.Linear(10, 10)

    def forward(self, x):
        y = self.fc1(x).item()
        warnings.warn("Dummy RuntimeWarning.", RuntimeWarning)
        if y < 0.0:
            x = self.fc2(x)
        return x + 2


def _nested():
    torch.manual_seed(0)
    model = NestedNet()
    return model, (torch.randn(1, *model.input_size),)


def test_total():
    model, inputs = _nested()
    analysis = FlopCountAnalysis(model, inputs).unsupported_ops_warnings(False)
    for name, flops in model.flops.items():
        assert analysis.total(name) == sum(flops.values()), name


def test_by_module():
    model, inputs = _nested()
    analysis = FlopCountAnalysis(model, inputs)
    assert analysis.by_module() == {name: sum(flops.values()) for name, flops in model.flops.items()}


def test_by_operator():
    model, inputs = _nested()
    analysis = FlopCountAnalysis(model, inputs)
    for name, flops in model.flops.items():
        assert analysis.by_operator(name) == flops, name


def test_by_module_and_operator():
    model, inputs = _nested()
    assert FlopCountAnalysis(model, inputs).by_module_and_operator() == model.flops


def test_unused_module():
    analysis = FlopCountAnalysis(UnusedNet(), (torch.randn(1, 10),))
    assert analysis.total("unused") == 0
    assert analysis.by_operator("unused") == Counter()
    assert analysis.total("") == 10 * 10 + 10 * 1
    assert analysis.uncalled_modules() == {"unused"}  # ReLU ran: not uncalled, though 0 flops


def test_repeated_module():
    analysis = FlopCountAnalysis(RepeatedNet(), (torch.randn(1, 10),))
    assert analysis.total("fc1") == 3 * 100
    assert analysis.total("fc2") == 2 * 100
    assert analysis.total("") == 500
    assert analysis.by_operator("fc1") == Counter({LIN_OP: 300})
    assert analysis.uncalled_modules() == set()


def test_non_forward_func_call():
    model, inputs = NonForwardNet(), (torch.randn(1, 10),)
    caller = FlopCountAnalysis(model, inputs).ancestor_mode("caller")
    assert caller.total("submod") == 0          # its other_func is not a call of the module
    assert caller.total("submod.fc") == 10
    assert caller.total("") == 100 + 10
    assert caller.uncalled_modules() == {"submod"}
    owner = FlopCountAnalysis(model, inputs).ancestor_mode("owner")
    assert owner.total("submod") == 10          # it owns submod.fc
    assert owner.total("submod.fc") == 10
    assert owner.total("") == 110
    assert owner.uncalled_modules() == set()


def test_shared_module():
    analysis = FlopCountAnalysis(SharedModuleNet(), (torch.randn(1, 10),)).ancestor_mode("caller")
    # Canonical names only: submod2.submod is submod1.submod, multiname2 is multiname1.
    assert analysis.by_module() == {"": 2 * 100 + 2 * 10, "submod1": 100, "submod1.submod": 200,
                                    "submod2": 100, "multiname1": 20}
    assert analysis.total("submod2.submod") == 200
    assert analysis.total("multiname2") == 20
    assert analysis.canonical_module_name("multiname2") == "multiname1"
    assert analysis.canonical_module_name("multiname1") == "multiname1"
    assert analysis.canonical_module_name("submod2.submod") == "submod1.submod"
    assert analysis.canonical_module_name("submod1.submod") == "submod1.submod"
    assert analysis.uncalled_modules() == set()


def test_recursive_scope():
    analysis = FlopCountAnalysis(RecursiveScopeNet(), (torch.randn(1, 10),))
    assert analysis.total() == 10  # once, although "" is on the call path four times
    assert analysis.total("fc") == 10
    assert analysis.uncalled_modules() == set()


def test_data_parallel():
    model, inputs = _nested()
    flops = {"module" + ("." if name else "") + name: f for name, f in model.flops.items()}
    flops[""] = model.flops[""]
    analysis = FlopCountAnalysis(nn.DataParallel(model).cpu(), inputs)
    for name, f in flops.items():
        assert analysis.total(name) == sum(f.values()), name
    assert analysis.by_module_and_operator() == flops
    assert analysis.uncalled_modules() == set()


@pytest.mark.parametrize("mode", ["caller", "owner"])
def test_data_parallel_root_scope(mode):
    analysis = FlopCountAnalysis(nn.DataParallel(nn.Linear(10, 10)).cpu(), (torch.randn(10, 10),))
    assert analysis.ancestor_mode(mode).total() == 1000


def test_unsupported_ops():
    model, inputs = _nested()
    analysis = JitModelAnalysis(model, inputs).set_op_handle(
        "aten::addmm", addmm_flop_jit, "aten::linear", linear_flop_jit)
    analysis.total()
    conv = Counter({"aten::_convolution": 1})
    inner = Counter({"aten::add": 1, "aten::mul": 1}) + conv       # 3 * fc(x) + 1
    outer = Counter({"aten::pow": 1}) + conv + inner               # submod(x) ** 2
    expected = {"": outer, "conv": conv, "fc": Counter(), "submod": inner,
                "submod.conv": conv, "submod.fc": Counter()}
    for name, ops in expected.items():
        assert analysis.unsupported_ops(name) == ops, name


def test_changing_handles():
    model, inputs = _nested()
    analysis = JitModelAnalysis(model, inputs).set_op_handle(
        **{"aten::addmm": addmm_flop_jit, "aten::linear": linear_flop_jit})
    analysis.unsupported_ops_warnings(False)
    analysis.total("")  # cached, then invalidated by the next handle
    analysis.set_op_handle("aten::_convolution", conv_flop_jit)
    assert analysis.by_module_and_operator() == model.flops

    # a handle replacing one, returning a Counter: filed under its key
    analysis.set_op_handle(f"aten::{LIN_OP}", lambda inputs, outputs: Counter({"dummy_op": 1000}))
    expected = {name: Counter({op: f for op, f in ops.items() if op != LIN_OP}) for name, ops in model.flops.items()}
    expected[""]["dummy_op"] = 2000
    for name in ("fc", "submod", "submod.fc"):
        expected[name]["dummy_op"] = 1000
    assert analysis.by_module_and_operator() == expected

    analysis.clear_op_handles()
    assert analysis.by_module_and_operator() == {name: Counter() for name in model.flops}


def test_copy():
    model = RepeatedNet()
    analysis = (JitModelAnalysis(model, (torch.randn(1, 10),))
                .set_op_handle("aten::addmm", addmm_flop_jit, "aten::linear", linear_flop_jit)
                .unsupported_ops_warnings(False).tracer_warnings("none"))
    copied = analysis.copy()
    assert analysis.by_module_and_operator() == copied.by_module_and_operator()
    assert analysis._enable_warn_unsupported_ops == copied._enable_warn_unsupported_ops
    assert analysis._enable_warn_uncalled_mods == copied._enable_warn_uncalled_mods
    assert analysis._warn_trace == copied._warn_trace
    copied.unsupported_ops_warnings(True)
    assert analysis._enable_warn_unsupported_ops != copied._enable_warn_unsupported_ops

    new_model, batch = NonForwardNet(), 5
    renewed = analysis.copy(new_model=new_model, new_inputs=(torch.randn(batch, 10),))
    assert renewed.total() == (100 + 10) * batch
    assert analysis.total() == 3 * 100 + 2 * 100
    assert analysis._enable_warn_unsupported_ops == renewed._enable_warn_unsupported_ops
    assert analysis._warn_trace == renewed._warn_trace


def test_disable_warnings(caplog):
    model = TraceWarningNet()
    with torch.no_grad():  # fc1's output is 1: fc2 is not called (in fvcore's test, by chance)
        model.fc1.weight.zero_()
        model.fc1.bias.fill_(1.0)
    analysis = FlopCountAnalysis(model, (torch.randn(1, 10),))
    # Warnings the model raises: kept by "all" and "no_tracer_warning", dropped by "none".
    # (fvcore also raises a TracerWarning for .item(): nothing is traced here.)
    for mode, shown in (("all", True), ("none", False), ("no_tracer_warning", True)):
        analysis.tracer_warnings(mode)
        analysis._stats = None  # as fvcore's test does, to run the model again
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            analysis.total()
        categories = [w.category for w in caught]
        assert (RuntimeWarning in categories) == shown, mode
        assert torch.jit.TracerWarning not in categories

    unsupported = "Unsupported operator aten::add encountered 1 time(s)"
    analysis.uncalled_modules_warnings(False).unsupported_ops_warnings(False)
    analysis._stats = None
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        analysis.total()
    assert unsupported not in caplog.text and "never called" not in caplog.text

    analysis.uncalled_modules_warnings(True).unsupported_ops_warnings(True)
    analysis._stats = None
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        analysis.total()
    assert unsupported in caplog.text
    # fvcore names fc1 (its output only feeds .item(), so the trace drops it); fc1 ran here.
    # fc2 runs only if fc1's output is negative.
    assert analysis.uncalled_modules() == {"fc2"}
    assert "never called" in caplog.text and "fc2" in caplog.text


def test_skip_uncalled_containers_warnings(caplog):
    class A(nn.Module):
        def forward(self, x):
            return self.submod[0](x) + 1

    model = A()
    model.submod = nn.ModuleList([nn.Linear(3, 3)])
    analysis = FlopCountAnalysis(model, torch.rand(1, 3)).unsupported_ops_warnings(False)
    with caplog.at_level(logging.WARNING):
        analysis.total()
    assert "never called" not in caplog.text
    assert analysis.uncalled_modules() == set()  # the container owns a called module
