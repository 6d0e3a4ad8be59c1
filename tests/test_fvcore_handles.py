"""set_op_handle and clear_op_handles as fvcore has them: Counter keys, unsupported ops after
clearing, custom autograd Functions (prim::PythonOp), fvcore's own handle functions.

fvcore (JIT tracing) is the reference wherever it can trace the model.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn

from dispatchcount import FlopMode
from dispatchcount.fvcore import FlopCountAnalysis, JitModelAnalysis
from fvcore_reference import fvcore_nn, quiet  # noqa: F401 (quiet: an autouse fixture)
from fvcore_zoo import ZOO
from fvcore.nn.flop_count import _DEFAULT_SUPPORTED_OPS as FVCORE_HANDLES  # noqa: E402 (fvcore's own handles)


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(2)[..., :8]).sigmoid()


def _convnet():
    torch.manual_seed(0)
    return ConvNet(), (torch.randn(1, 3, 5, 5),)


def test_a_counter_is_filed_under_its_keys():
    # (1, 3, 5, 5) -> 3x3 conv -> (1, 4, 3, 3): 9 positions x 4*3*9 = 972 multiply-adds
    def split(inputs, outputs):
        n = outputs[0].type().sizes()
        return Counter({"conv": 260, "conv_outputs": n[1] * n[2] * n[3]})

    model, inputs = _convnet()
    ours = FlopCountAnalysis(model, inputs).set_op_handle("aten::_convolution", split)
    theirs = fvcore_nn.FlopCountAnalysis(model, inputs).set_op_handle("aten::_convolution", split)
    assert ours.by_operator("conv") == theirs.by_operator("conv") == Counter({"conv": 260, "conv_outputs": 36})
    assert ours.by_module_and_operator() == theirs.by_module_and_operator()
    # a number is filed under the op's name without its namespace
    ours = FlopCountAnalysis(model, inputs).set_op_handle("aten::_convolution", lambda i, o: 7)
    theirs = fvcore_nn.FlopCountAnalysis(model, inputs).set_op_handle("aten::_convolution", lambda i, o: 7)
    assert ours.by_operator("conv") == theirs.by_operator("conv") == Counter({"_convolution": 7})


def test_a_handle_result_that_is_not_a_count_is_reported_not_counted():
    model, inputs = _convnet()
    analysis = FlopCountAnalysis(model, inputs).set_op_handle("aten::_convolution", lambda i, o: "many")
    assert analysis.total() == analysis.total("fc") + analysis.total("bn")  # the conv's call is not counted
    assert analysis.unsupported_ops()["aten::_convolution"] == 1


@pytest.mark.parametrize("build", [_convnet] + [e.build for e in ZOO if e.name in ("norms_train", "resampling", "einsums")],
                         ids=["convnet", "norms_train", "resampling", "einsums"])
def test_after_clear_op_handles_every_op_is_unsupported_as_in_fvcore(build):
    torch.manual_seed(0)
    model, inputs = build()
    ours = FlopCountAnalysis(model, inputs).clear_op_handles()
    theirs = fvcore_nn.FlopCountAnalysis(model, inputs).clear_op_handles()
    assert ours.by_module_and_operator() == theirs.by_module_and_operator()
    assert ours.total() == 0
    ours.total(), theirs.total()
    assert ours.unsupported_ops() == theirs.unsupported_ops()
    for name in ours.by_module():
        assert ours.unsupported_ops(name) == theirs.unsupported_ops(name), name


def test_after_clear_op_handles_the_convolution_is_listed():
    model, inputs = _convnet()
    analysis = FlopCountAnalysis(model, inputs).clear_op_handles()
    analysis.total()
    assert analysis.unsupported_ops("conv") == Counter({"aten::_convolution": 1})
    assert analysis.unsupported_ops()["aten::batch_norm"] == 1 and analysis.unsupported_ops()["aten::linear"] == 1
    # a handle set afterwards counts again
    analysis.set_op_handle("aten::_convolution", FVCORE_HANDLES["aten::_convolution"])
    assert analysis.by_operator() == Counter({"conv": 972})


@pytest.mark.parametrize("entry", [e for e in ZOO if e.fvcore_names], ids=lambda e: e.name)
def test_fvcores_own_handles_work_through_the_jit_value_shim(entry):
    # fvcore's default handle table, handed to set_op_handle: each handle reads the dispatched
    # arguments through the shim (.type().sizes(), .toIValue(), .node().inputs() ...) and
    # gives fvcore's numbers, module by module.
    torch.manual_seed(0)
    model, inputs = entry.build()
    theirs = fvcore_nn.FlopCountAnalysis(model, inputs)
    ours = JitModelAnalysis(model, inputs).set_op_handle(**FVCORE_HANDLES)
    assert ours.by_module_and_operator() == theirs.by_module_and_operator()


# -- custom autograd Functions: prim::PythonOp.<Name> ------------------------------------------


class Project(torch.autograd.Function):
    """A Function whose forward runs a product: x (n, k) @ w (k, m)."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x @ w

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        return grad @ w.t(), x.t() @ grad


class UsesFunction(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 4))
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(Project.apply(x, self.w))


def _project_handle(inputs, outputs):
    n, k = inputs[0].type().sizes()
    return Counter({"project": n * k * outputs[0].type().sizes()[1]})


def test_python_op_handle_replaces_the_functions_own_ops():
    model, x = UsesFunction(), torch.randn(3, 6)
    ours = FlopCountAnalysis(model, (x,)).set_op_handle("prim::PythonOp.Project", _project_handle)
    theirs = fvcore_nn.FlopCountAnalysis(model, (x,)).set_op_handle("prim::PythonOp.Project", _project_handle)
    # project 3*6*4 = 72 (the handle), head 3*4*2 = 24: the Function's mm is not counted on top
    assert ours.by_operator() == theirs.by_operator() == Counter({"project": 72, "linear": 24})
    assert ours.by_module() == theirs.by_module()
    assert Project.apply.__func__ is torch.autograd.Function.apply.__func__  # restored after the run


def test_python_op_without_a_handle_counts_the_ops_it_runs():
    # fvcore reports prim::PythonOp.Project unsupported and counts 0 for it; its ops dispatch here
    model, x = UsesFunction(), torch.randn(3, 6)
    theirs = fvcore_nn.FlopCountAnalysis(model, (x,))
    theirs.total()
    assert theirs.unsupported_ops() == Counter({"prim::PythonOp.Project": 1})
    ours = FlopCountAnalysis(model, (x,))
    assert ours.by_operator() == Counter({"matmul": 72, "linear": 24})


def test_python_op_handle_is_charged_to_the_calling_module_and_leaves_backward_alone():
    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = UsesFunction()

        def forward(self, x):
            return self.inner(x)

    model, x = Wrapper(), torch.randn(3, 6, requires_grad=True)
    analysis = FlopCountAnalysis(model, (x,)).set_op_handle("prim::PythonOp.Project", lambda i, o: 5)
    assert analysis.by_module()["inner"] == 5 + 24
    assert analysis.by_operator("inner") == Counter({"PythonOp.Project": 5, "linear": 24})
    # outside the analysis the Function is untouched: a FlopMode counts its ops, forward and backward
    with FlopMode(model, convention="fvcore") as fm:
        model(x).sum().backward()
    assert fm.by_operator("forward")["aten.matmul"] == 72


def test_python_op_handle_restores_apply_when_the_model_raises():
    class Broken(nn.Module):
        def forward(self, x):
            Project.apply(x, torch.randn(6, 4))
            raise RuntimeError("boom")

    analysis = FlopCountAnalysis(Broken(), (torch.randn(3, 6),)).set_op_handle("prim::PythonOp.Project", lambda i, o: 1)
    with pytest.raises(RuntimeError, match="boom"):
        analysis.total()
    assert "apply" not in Project.__dict__
