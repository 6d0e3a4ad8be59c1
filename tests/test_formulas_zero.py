"""Explicit zeros: data movement, factories, random numbers, metadata and integer logic."""

import pytest
import torch

from dispatchcount.formulas import zero
from dispatchcount.registry import DECOMPOSE, ZERO, resolve
from counting import counted_total

aten = torch.ops.aten



@pytest.mark.parametrize(
    "op",
    [
        aten.view.default, aten.permute.default, aten.expand.default, aten.transpose.int,
        aten.t_.default, aten.clone.default, aten._to_copy.default, aten.copy_.default,
        aten.cat.default, aten.index_select.default, aten.gather.default, aten.where.self,
        aten.masked_fill.Scalar, aten.empty.memory_format, aten.zeros.default, aten.arange.start,
        aten.fill_.Scalar, aten.uniform_.default, aten.randn.default, aten.bernoulli_.float,
        aten.bitwise_and.Tensor, aten.logical_not.default, aten.nonzero.default,
        aten.permute_copy.default, aten.constant_pad_nd.default, aten.upsample_nearest2d.default,
        aten._local_scalar_dense.default, aten.set_.source_Tensor, aten.resize_.default,
        torch.ops.profiler._record_function_exit._RecordFunction,
    ],
    ids=str,
)
def test_listed_ops_are_explicit_zeros(op):
    assert resolve(op, "flop") is ZERO


def test_zeros_hold_in_the_fvcore_convention_too():
    # (where fvcore has a rule of its own, e.g. upsample_nearest2d at 1 per output, it wins)
    for op in (aten.view.default, aten.cat.default, torch.ops.profiler._record_function_enter_new.default):
        assert resolve(op, "fvcore") is ZERO


def test_a_composite_overload_of_a_listed_op_still_decomposes():
    # reshape is CompositeImplicit; the pieces it runs are what get counted
    assert resolve(aten.reshape.default) is DECOMPOSE


def test_a_model_of_only_data_movement_counts_nothing():
    x = torch.randn(2, 3, 4)

    def movement():
        y = x.permute(2, 0, 1).contiguous().view(4, 6)
        z = torch.cat([y, y.flip(0)], 1)[:, ::2].to(torch.float64)
        torch.zeros(3).uniform_()
        torch.randperm(5)
        return z.index_select(0, torch.tensor([1, 2]))

    assert counted_total(movement) == 0


def test_zero_groups_are_disjoint_and_named():
    seen = {}
    for group, names in zero.ZERO_GROUPS.items():
        for name in names:
            assert name not in seen, f"{name} listed in {seen.get(name)} and {group}"
            seen[name] = group
    assert {"views", "copies", "indexing", "factories", "random", "metadata", "integer"} == set(zero.ZERO_GROUPS)
