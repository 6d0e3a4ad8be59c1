"""FlopMode: attribution to modules, phases, rules, unsupported ops, strictness, reports."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dispatchcount import FlopMode, FormulaError, UnsupportedOperatorError, count_flops, register_formula


def linear_flops(rows, n_in, n_out):
    return 2 * rows * n_in * n_out


@torch.library.custom_op("dctest::twice", mutates_args=())
def twice(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@twice.register_fake
def _(x):
    return torch.empty_like(x)


@torch.library.custom_op("dctest::uncounted", mutates_args=())
def uncounted(x: torch.Tensor) -> torch.Tensor:
    return x + 1


@uncounted.register_fake
def _(x):
    return torch.empty_like(x)


@torch.library.custom_op("dctest::broken", mutates_args=())
def broken(x: torch.Tensor) -> torch.Tensor:
    return x - 1


@broken.register_fake
def _(x):
    return torch.empty_like(x)


@register_formula(torch.ops.dctest.twice.default)
def _(x, *, out=None):
    return x.numel()  # one multiply per element


@register_formula(torch.ops.dctest.broken)
def _(x, *, out=None):
    raise ZeroDivisionError("deliberately broken formula")


@torch.library.custom_op("dctest::negative", mutates_args=())
def negative(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


@negative.register_fake
def _(x):
    return torch.empty_like(x)


@register_formula(torch.ops.dctest.negative.default)
def _(x, *, out=None):
    return -x.numel()  # a broken formula: a negative count


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16, bias=False)
        self.fc2 = nn.Linear(16, 4, bias=False)

    def forward(self, x):
        return self.fc2(self.fc1(x))


class BorrowsWeights(nn.Module):
    """Uses its child's weight directly and calls another child twice."""

    def __init__(self):
        super().__init__()
        self.dt_proj = nn.Linear(8, 8, bias=False)
        self.shared = nn.Linear(8, 8, bias=False)

    def forward(self, x):
        x = F.linear(x, self.dt_proj.weight)  # dt_proj never runs as a module
        return self.shared(self.shared(x))


def test_forward_counts_by_module_by_hand():
    model = Mlp()
    x = torch.randn(5, 8)
    with FlopMode(model) as mode:
        model(x)
    fc1, fc2 = linear_flops(5, 8, 16), linear_flops(5, 16, 4)
    assert mode.by_module() == {"": fc1 + fc2, "fc1": fc1, "fc2": fc2}
    assert mode.by_operator() == {"aten.mm": fc1 + fc2}
    assert mode.total() == mode.total(phase="forward") == fc1 + fc2
    assert mode.total(phase="backward") == 0
    assert mode.by_module_and_operator()["fc2"] == {"aten.mm": fc2}


def test_backward_is_charged_to_the_module_whose_forward_made_it():
    model = Mlp()
    x = torch.randn(5, 8)  # no grad for x: fc1's backward only computes its weight gradient
    with FlopMode(model) as mode:
        model(x).sum().backward()
    fc1, fc2 = linear_flops(5, 8, 16), linear_flops(5, 16, 4)
    backward = mode.by_module(phase="backward")
    assert backward["fc1"] == fc1  # grad of weight only
    assert backward["fc2"] == 2 * fc2  # grad of input and of weight
    assert mode.by_module(phase="forward")["fc1"] == fc1
    assert mode.total() == mode.total("forward") + mode.total("backward")


def test_weights_used_directly_and_repeated_calls():
    model = BorrowsWeights()
    x = torch.randn(3, 8)
    with FlopMode(model) as mode:
        model(x)
    one = linear_flops(3, 8, 8)
    flops = mode.by_module()
    assert flops[""] == 3 * one
    assert flops["shared"] == 2 * one  # called twice: accumulates
    assert flops["dt_proj"] == 0  # its weight was used by the parent, which is charged
    assert mode.by_module(inclusive=False) == {"": one, "dt_proj": 0, "shared": 2 * one}
    assert mode.by_module_and_operator(inclusive=False)[""] == {"aten.mm": one}
    assert mode.uncalled_modules() == {"dt_proj"}
    assert mode.module_calls()["shared"] == 2


def test_module_list_container_includes_its_children():
    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(4, 4, bias=False) for _ in range(3))

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    model = Stack()
    with FlopMode(model) as mode:
        model(torch.randn(2, 4))
    one = linear_flops(2, 4, 4)
    assert mode.by_module()["layers"] == 3 * one
    assert mode.by_module()["layers.1"] == one
    assert "layers" in mode.uncalled_modules()  # a ModuleList is never called itself


def test_without_a_model_modules_are_named_by_class_and_attribute():
    model = Mlp()
    with FlopMode() as mode:
        model(torch.randn(1, 8))
    flops = mode.by_module()
    assert flops["Mlp.fc1"] == linear_flops(1, 8, 16)
    assert flops[""] == mode.total()


def test_inference_mode_counts_equal_grad_mode():
    # Under inference_mode, CompositeImplicit ops such as aten.linear reach the mode undecomposed.
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 2))
    x = torch.randn(4, 8)
    with FlopMode(model) as grad_mode:
        model(x)
    with torch.inference_mode(), FlopMode(model) as inference:
        model(x)
    assert inference.total() == grad_mode.total() > 0
    assert inference.by_operator() == grad_mode.by_operator()
    assert inference.by_module() == grad_mode.by_module()


def test_registered_custom_op_formula_is_used():
    x = torch.randn(3, 5)
    with FlopMode() as mode:
        y = torch.ops.dctest.twice(x)
    assert torch.equal(y, x * 2)
    assert mode.by_operator() == {"dctest.twice": 15}


def test_unsupported_op_is_reported_once_never_silent():
    x = torch.randn(4)
    with pytest.warns(UserWarning, match=r"dctest.uncounted \(2 calls\)") as caught:
        with FlopMode() as mode:
            y = torch.ops.dctest.uncounted(torch.ops.dctest.uncounted(x))
    assert torch.equal(y, x + 2)
    assert mode.unsupported_ops() == {"dctest.uncounted": 2}
    assert sum("dispatchcount" in str(w.message) for w in caught) == 1


def test_strict_raises_on_unsupported_op():
    x = torch.randn(2)
    with pytest.raises(UnsupportedOperatorError, match="dctest.uncounted"):
        with FlopMode(strict=True):
            torch.ops.dctest.uncounted(x)


def test_failing_formula_is_reported_and_run_goes_on():
    x = torch.randn(4)
    with pytest.warns(UserWarning, match="deliberately broken"):
        with FlopMode() as mode:
            y = torch.ops.dctest.broken(x)
    assert torch.equal(y, x - 1)
    assert mode.unsupported_ops() == {"dctest.broken": 1}
    assert "ZeroDivisionError" in mode.formula_errors()["dctest.broken"]


def test_failing_formula_raises_under_strict():
    x = torch.randn(4)
    with pytest.raises(FormulaError, match="dctest.broken"):
        with FlopMode(strict=True):
            torch.ops.dctest.broken(x)


def test_outputs_and_gradients_are_bit_identical():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    x = torch.randn(2, 3, 8, 8)
    plain = model(x)
    plain.sum().backward()
    plain_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with FlopMode(model):
        counted = model(x)
        counted.sum().backward()
    assert torch.equal(plain, counted)
    for expected, param in zip(plain_grads, model.parameters()):
        assert torch.equal(expected, param.grad)


def test_each_with_block_starts_from_zero():
    model = Mlp()
    mode = FlopMode(model)
    for _ in range(2):
        with mode:
            model(torch.randn(5, 8))
        assert mode.total() == linear_flops(5, 8, 16) + linear_flops(5, 16, 4)


def test_count_flops_runs_the_model():
    model = Mlp()
    mode = count_flops(model, torch.randn(5, 8))
    assert mode.total() == linear_flops(5, 8, 16) + linear_flops(5, 16, 4)
    with pytest.raises(TypeError, match="model must be"):
        count_flops(42, torch.randn(1))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="convention"):
        FlopMode(convention="flops")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        FlopMode("resnet")
    with pytest.raises(ValueError, match="phase"):
        FlopMode().total(phase="fwd")
    with pytest.raises(TypeError, match="OpOverload"):
        register_formula("aten.mm")


def test_reports_table_and_json():
    model = Mlp()
    with FlopMode(model) as mode:
        model(torch.randn(5, 8)).sum().backward()
    data = json.loads(json.dumps(mode.to_dict()))
    assert data["total"] == mode.total()
    assert data["forward"] + data["backward"] == data["total"]
    assert data["modules"]["fc1"]["params"] == 8 * 16
    assert data["by_module"]["fc2"] == mode.by_module()["fc2"]
    # forward: fc1 2*5*8*16 = 1280, fc2 2*5*16*4 = 640, the loss's sum 20 (the root's own);
    # backward: fc2's input and weight gradients 640 + 640, fc1's weight gradient 1280.
    lines = mode.table(depth=1).splitlines()
    assert lines[0] == "convention: flop (FLOPs: a multiply-add is 2)"
    assert lines[1].split() == ["module", "params", "forward", "FLOPs", "backward", "FLOPs", "total", "FLOPs", "%"]
    assert [line.split() for line in lines[3:]] == [
        ["model", "192", "1.94K", "2.56K", "4.5K", "100.0%"],
        ["(self)", "20", "0", "20", "0.4%"],
        ["fc1", "128", "1.28K", "1.28K", "2.56K", "56.9%"],
        ["fc2", "64", "640", "1.28K", "1.92K", "42.7%"],
    ]


def test_display_prints_the_table(capsys):
    model = Mlp()
    with FlopMode(model, display=True):
        model(torch.randn(1, 8))
    assert "convention: flop (FLOPs" in capsys.readouterr().out


@pytest.mark.parametrize("result", [-5, 2.5, float("nan"), float("inf"), True, "12", None])
def test_a_formula_result_that_is_not_a_count_is_a_formula_error(result):
    x = torch.randn(3)
    formulas = {torch.ops.aten.sin.default: lambda *args, out=None, **kwargs: result}
    with pytest.warns(UserWarning, match="aten.sin"):
        with FlopMode(formulas=formulas) as mode:
            y = x.sin()
    assert torch.equal(y, torch.sin(x))
    assert mode.total() == 0
    assert mode.unsupported_ops() == {"aten.sin": 1}
    assert "non-negative integer" in mode.formula_errors()["aten.sin"]
    with pytest.raises(FormulaError, match="aten.sin"):
        with FlopMode(formulas=formulas, strict=True):
            x.sin()


def test_an_integral_float_result_is_that_count():
    formulas = {torch.ops.aten.sin.default: lambda *args, out=None, **kwargs: 12.0}
    with FlopMode(formulas=formulas) as mode:
        torch.randn(3).sin()
    assert mode.total() == 12 and type(mode.total()) is int


def test_a_registered_formula_returning_a_negative_int_is_a_formula_error():
    with pytest.warns(UserWarning, match="dctest.negative"):
        with FlopMode() as mode:
            torch.ops.dctest.negative(torch.randn(5))
    assert mode.total() == 0
    assert mode.formula_errors() == {"dctest.negative": "TypeError: a FLOP formula must return a non-negative integer, got -5"}
