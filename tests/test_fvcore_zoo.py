"""convention="fvcore" and the drop-in front against fvcore's own FlopCountAnalysis, on the zoo.

The reference is fvcore itself (JIT tracing, its default handles). dispatchcount must agree to
the flop, in total and for every module, except for the attention fvcore has no handle for,
whose multiply-adds each zoo entry derives by hand (``Entry.beyond``).
"""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

from dispatchcount import FlopMode
from dispatchcount.fvcore import FlopCountAnalysis, flop_count_table
from fvcore_zoo import ZOO, Entry

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # fvcore scripts helpers at import
    import fvcore.nn as fvcore_nn  # the reference; the test extra installs it


@pytest.fixture(autouse=True)
def _quiet():
    logging.disable(logging.WARNING)  # fvcore logs its unsupported/uncalled warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings raised by fvcore's JIT trace
        yield
    logging.disable(logging.NOTSET)


_references: dict[str, object] = {}


def _build(entry: Entry):
    torch.manual_seed(0)
    return entry.build()


def _reference(entry: Entry):
    """fvcore's analysis of the entry (traced once per test session)."""
    if entry.name not in _references:
        model, inputs = _build(entry)
        analysis = fvcore_nn.FlopCountAnalysis(model, inputs)
        analysis.total()
        _references[entry.name] = analysis
    return _references[entry.name]


def _beyond_by_module(mode: FlopMode) -> dict[str, int]:
    beyond = mode.beyond_fvcore()
    return {module: sum(f for op, f in per_op.items() if op in beyond)
            for module, per_op in mode.by_module_and_operator().items()}


def test_zoo_is_large_enough():
    assert len(ZOO) >= 12
    assert sum(1 for e in ZOO if e.beyond) >= 2  # models with scaled_dot_product_attention


@pytest.mark.parametrize("entry", ZOO, ids=[e.name for e in ZOO])
def test_flopmode_fvcore_equals_fvcore(entry: Entry):
    ref = _reference(entry)
    model, inputs = _build(entry)
    with FlopMode(model, convention="fvcore") as fm:
        model(*inputs)

    assert fm.unsupported_ops() == {}
    assert sum(fm.beyond_fvcore().values()) == entry.beyond
    assert fm.total() == ref.total() + entry.beyond
    beyond = _beyond_by_module(fm)
    ours = fm.by_module()
    for name, flops in ref.by_module().items():
        assert ours.get(name, 0) - beyond.get(name, 0) == flops, name


@pytest.mark.parametrize("entry", ZOO, ids=[e.name for e in ZOO])
def test_fvcore_convention_keeps_outputs_and_inference_mode_agrees(entry: Entry):
    model, inputs = _build(entry)
    torch.manual_seed(1)
    plain = model(*inputs)
    torch.manual_seed(1)
    with FlopMode(model, convention="fvcore") as fm:
        counted = model(*inputs)
    assert torch.equal(plain, counted)
    # In inference mode the composite ops (linear, einsum, instance_norm ...) reach the
    # dispatch hook undecomposed: the count must not change.
    with torch.inference_mode(), FlopMode(model, convention="fvcore") as fm_inference:
        model(*inputs)
    assert fm_inference.total() == fm.total()
    assert fm_inference.by_module() == fm.by_module()


@pytest.mark.parametrize("entry", ZOO, ids=[e.name for e in ZOO])
def test_drop_in_front_equals_fvcore(entry: Entry):
    ref = _reference(entry)
    model, inputs = _build(entry)
    ours = FlopCountAnalysis(model, inputs)

    assert ours.total() == ref.total() + entry.beyond
    assert sum(ours.beyond_fvcore().values()) == entry.beyond
    by_module = ours.by_module()
    assert set(by_module) == set(ref.by_module())
    for name, flops in ref.by_module().items():
        assert ours.total(name) - sum(ours.beyond_fvcore(name).values()) == flops, name
    assert ours.uncalled_modules() == ref.uncalled_modules()
    # The unsupported operators are fvcore's, but for what only its trace sees: padding (no
    # arithmetic: not recorded here), arithmetic on traced shapes (Python ints here), attention
    # (counted here, beyond fvcore) and the calls inside F.multi_head_attention_forward.
    if entry.fvcore_names:
        assert set(ours.unsupported_ops() - ref.unsupported_ops()) == set()
        assert set(ref.unsupported_ops() - ours.unsupported_ops()) <= {
            "aten::pad", "aten::pow", "aten::scaled_dot_product_attention"}
    if entry.fvcore_names:
        without_beyond = {op: f for op, f in ours.by_operator().items() if op not in ours.beyond_fvcore()}
        assert without_beyond == dict(ref.by_operator())
    if not entry.beyond:
        assert flop_count_table(ours, max_depth=4) == fvcore_nn.flop_count_table(ref, max_depth=4)
        assert (flop_count_table(ours, max_depth=1, show_param_shapes=False)
                == fvcore_nn.flop_count_table(ref, max_depth=1, show_param_shapes=False))
