"""dispatchcount.fvcore: fvcore's FlopCountAnalysis API (handles, settings, names, tables).

fvcore itself is the reference wherever it can count; the documented differences (ops whose
results are unused, modules without ops) are asserted as such.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn

from dispatchcount.fvcore import FlopCountAnalysis, flop_count_table
from fvcore_reference import fvcore_nn, quiet  # noqa: F401 (quiet: an autouse fixture)
from fvcore.nn.jit_handles import elementwise_flop_counter, generic_activation_jit  # noqa: E402


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.bn = nn.BatchNorm1d(8)

    def forward(self, x):
        return (self.bn(self.fc(x)) * 2).softmax(-1) + x


X = torch.randn(4, 8)


def both(setup):
    """(fvcore's, ours) analyses of Net on X, each configured by ``setup``."""
    torch.manual_seed(0)
    model = Net()
    return setup(fvcore_nn.FlopCountAnalysis(model, (X,))), setup(FlopCountAnalysis(model, (X,)))


def test_defaults():
    ref, ours = both(lambda a: a)
    # linear 4*8*8 = 256; batch norm in training, affine: 4*8*5 = 160
    assert ours.total() == ref.total() == 416
    assert ours.by_operator() == ref.by_operator() == Counter({"linear": 256, "batch_norm": 160})
    assert ours.by_module() == ref.by_module()
    assert ours.by_module_and_operator() == ref.by_module_and_operator()
    assert ours.total("fc") == 256 and ours.by_operator("bn") == Counter({"batch_norm": 160})


@pytest.mark.parametrize("setup", [
    # fvcore's own handles for ops it leaves out, run on the dispatched arguments
    lambda a: a.set_op_handle("aten::mul", elementwise_flop_counter(1, 0),
                              "aten::softmax", elementwise_flop_counter(0, 5)),
    # replacing a default handle, keyword form
    lambda a: a.set_op_handle(**{"aten::linear": lambda inputs, outputs: 7}),
    # a handle reading shapes and constants as fvcore's do
    lambda a: a.set_op_handle("aten::batch_norm",
                              lambda i, o: (10 if i[5].toIValue() else 1) * i[0].type().sizes()[1]),
    # None does not remove an existing handle in fvcore: batch norm is still counted
    lambda a: a.set_op_handle("aten::batch_norm", None),
    # after clear_op_handles only the handles set afterwards count
    lambda a: a.clear_op_handles().set_op_handle("aten::add", generic_activation_jit("add")),
], ids=["new-ops", "replace-linear", "read-inputs", "none-keeps-handle", "clear"])
def test_set_op_handle_like_fvcore(setup):
    ref, ours = both(setup)
    assert ours.total() == ref.total()
    assert ours.by_operator() == ref.by_operator()


def test_set_op_handle_takes_dispatchcount_formulas():
    _, ours = both(lambda a: a.set_op_handle("aten::mul", lambda x, y, out=None: out.numel()))
    assert ours.by_operator()["mul"] == 4 * 8


def test_set_op_handle_applies_to_that_analysis_only():
    _, with_handle = both(lambda a: a.set_op_handle("aten::mul", lambda i, o: 1000))
    _, plain = both(lambda a: a)
    assert with_handle.total() == plain.total() + 1000


def test_set_op_handle_rejects_bad_arguments():
    analysis = FlopCountAnalysis(Net(), (X,))
    with pytest.raises(TypeError, match="pairs"):
        analysis.set_op_handle("aten::mul")
    with pytest.raises(ValueError, match="aten::mul"):
        analysis.set_op_handle("mul", lambda i, o: 1)
    with pytest.raises(ValueError, match="no operator"):
        analysis.set_op_handle("aten::no_such_op", lambda i, o: 1)
    with pytest.raises(TypeError, match="callable"):
        analysis.set_op_handle("aten::mul", 3)
    with pytest.raises(TypeError, match="nn.Module"):
        FlopCountAnalysis(lambda x: x, (X,))


def test_unsupported_ops_list_what_fvcore_leaves_uncounted():
    ref, ours = both(lambda a: a)
    with pytest.raises(RuntimeError):
        ours.unsupported_ops()  # as fvcore: only after the analysis ran
    ours.total()
    ref.total()
    # the BatchNorm's num_batches_tracked += 1, the * 2, the softmax, the residual +
    expected = Counter({"aten::add_": 1, "aten::mul": 1, "aten::softmax": 1, "aten::add": 1})
    assert ours.unsupported_ops() == ref.unsupported_ops() == expected
    for name in ("bn", "fc"):
        assert ours.unsupported_ops(name) == ref.unsupported_ops(name)
    assert ours.unsupported_ops("bn") == Counter({"aten::add_": 1})


def test_shared_modules_use_their_first_name():
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(8, 8)
            self.b = self.a

        def forward(self, x):
            return self.b(self.a(x))

    model = Shared()
    ref, ours = fvcore_nn.FlopCountAnalysis(model, (X,)), FlopCountAnalysis(model, (X,))
    assert ours.by_module() == ref.by_module() == Counter({"": 512, "a": 512})
    assert ours.canonical_module_name("b") == "a"
    assert ours.total("b") == 512
    with pytest.raises(KeyError):
        ours.total("c")


def test_settings_are_chainable_and_checked():
    analysis = FlopCountAnalysis(Net(), X)  # a single tensor is accepted, as in fvcore
    assert analysis.tracer_warnings("none").unsupported_ops_warnings(False).uncalled_modules_warnings(False) \
        .ancestor_mode("caller") is analysis
    with pytest.raises(ValueError):
        analysis.tracer_warnings("some")
    with pytest.raises(ValueError):
        analysis.ancestor_mode("parent")
    assert analysis.total() == 416
    # copy keeps handles and takes new inputs: twice the rows, twice the flops
    copied = analysis.set_op_handle("aten::mul", lambda i, o: 1).copy(new_inputs=(torch.randn(8, 8),))
    assert copied.total() == 2 * 416 + 1


def test_table_with_activations_matches_fvcore():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Sequential(nn.Conv2d(8, 4, 1)))
    inputs = (torch.randn(1, 3, 12, 12),)
    activations = fvcore_nn.ActivationCountAnalysis(model, inputs)
    ref = fvcore_nn.flop_count_table(fvcore_nn.FlopCountAnalysis(model, inputs), activations=activations)
    ours = flop_count_table(FlopCountAnalysis(model, inputs), activations=activations)
    assert ours == ref


class WithDeadBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.main = nn.Linear(8, 8)
        self.aux = nn.Linear(8, 4)
        self.skip = nn.Identity()

    def forward(self, x):
        self.aux(x)  # computed, then discarded
        return self.skip(self.main(x))


def test_documented_differences_unused_results_and_modules_without_ops():
    model = WithDeadBranch()
    ref, ours = fvcore_nn.FlopCountAnalysis(model, (X,)), FlopCountAnalysis(model, (X,))
    # fvcore's trace drops ops whose results are unused: aux ran (4*8*4 = 128) but costs 0
    assert ref.by_module() == Counter({"": 256, "main": 256, "aux": 0, "skip": 0})
    assert ours.by_module() == Counter({"": 384, "main": 256, "aux": 128, "skip": 0})
    # fvcore calls a module "uncalled" when no op of its own was traced
    assert ref.uncalled_modules() == {"aux", "skip"}
    assert ours.uncalled_modules() == set()


def test_flop_count_function():
    from dispatchcount.fvcore import flop_count

    model = Net()
    ref_gflops, ref_unsupported = fvcore_nn.flop_count(model, (X,))
    ours_gflops, unsupported = flop_count(model, (X,))
    assert ours_gflops == ref_gflops == {"linear": 256e-9, "batch_norm": 160e-9}
    assert unsupported == ref_unsupported == Counter({"aten::add_": 1, "aten::mul": 1, "aten::softmax": 1, "aten::add": 1})
    with_mul, _ = flop_count(model, (X,), supported_ops={"aten::mul": elementwise_flop_counter(1, 0)})
    assert with_mul["mul"] == 32e-9
