"""Indexed accumulation (embeddings, index_add, scatter reductions) and sorting, by hand."""

import torch
import torch.nn.functional as F

from counting import counted



def test_embedding_lookup_is_free_and_its_gradient_adds_rows():
    weight = torch.randn(10, 4, requires_grad=True)
    idx = torch.tensor([1, 2, 1])
    assert counted(lambda: F.embedding(idx, weight)) == {}
    backward = counted(lambda: F.embedding(idx, weight).backward(torch.ones(3, 4)), "backward")
    assert backward == {"aten.embedding_dense_backward": 3 * 4}  # one add per gradient element


def test_embedding_bag_modes():
    weight = torch.randn(10, 4)
    idx, offsets = torch.tensor([1, 2, 3, 4, 5, 6]), torch.tensor([0, 3])
    op = "aten._embedding_bag_forward_only"
    # 6 rows of 4 looked up: 24 adds (sum), + a divide per result element (mean, 2 bags x 4),
    # 24 comparisons (max); per-sample weights multiply each looked-up element (24 more)
    assert counted(lambda: F.embedding_bag(idx, weight, offsets, mode="sum")) == {op: 24}
    assert counted(lambda: F.embedding_bag(idx, weight, offsets, mode="mean")) == {op: 24 + 8}
    assert counted(lambda: F.embedding_bag(idx, weight, offsets, mode="max")) == {op: 24}
    psw = torch.rand(6)
    assert counted(lambda: F.embedding_bag(idx, weight, offsets, mode="sum", per_sample_weights=psw)) == {op: 48}


def test_index_add_and_scatter_reductions():
    x = torch.zeros(5, 3)
    index, source = torch.tensor([0, 2, 2, 4]), torch.ones(4, 3)
    assert counted(lambda: x.index_add(0, index, source)) == {"aten.index_add": 12}
    assert counted(lambda: x.index_add(0, index, source, alpha=2)) == {"aten.index_add": 24}
    scatter_index = torch.tensor([[0, 1, 2], [4, 3, 2]])
    src = torch.ones(2, 3)
    assert counted(lambda: x.scatter_add(0, scatter_index, src)) == {"aten.scatter_add": 6}
    assert counted(lambda: x.scatter_reduce(0, scatter_index, src, "amax")) == {"aten.scatter_reduce": 6}
    # mean: 6 folds and a divide for each of the 15 destination elements
    assert counted(lambda: x.scatter_reduce(0, scatter_index, src, "mean")) == {"aten.scatter_reduce": 6 + 15}
    assert counted(lambda: x.scatter(0, scatter_index, src)) == {}  # a copy
    assert counted(lambda: x.scatter(0, scatter_index, src, reduce="add")) == {"aten.scatter": 6}
    assert counted(lambda: x.gather(0, scatter_index)) == {}


def test_accumulating_index_put():
    x = torch.zeros(5, 3)
    index = (torch.tensor([0, 2]),)
    assert counted(lambda: x.index_put(index, torch.ones(2, 3), accumulate=True)) == {"aten.index_put": 6}
    assert counted(lambda: x.index_put(index, torch.ones(2, 3))) == {}


def test_gradients_of_overlapping_copies_add():
    # fold (col2im): every column element is added into the image
    cols = torch.randn(1, 3 * 2 * 2, 9)
    assert counted(lambda: F.fold(cols, (4, 4), 2)) == {"aten.col2im": 108}
    leaf = torch.randn(1, 2, 5, requires_grad=True)
    backward = counted(lambda: F.pad(leaf, (2, 2), mode="reflect").backward(torch.ones(1, 2, 9)), "backward")
    assert backward == {"aten.reflection_pad1d_backward": 18}


def test_sorting_and_searching_count_comparisons():
    x = torch.randn(4, 8)
    assert counted(lambda: x.sort(dim=1)) == {"aten.sort": 32 * 3}  # 8 log2 8 per row
    assert counted(lambda: x.topk(3, dim=1)) == {"aten.topk": 32 * 2}  # heap of 3: ceil(log2 4)
    assert counted(lambda: x.kthvalue(2, dim=1)) == {"aten.kthvalue": 2 * 32}
    boundaries = torch.arange(7.0)
    values = torch.randn(5)
    # ceil(log2(7 + 1)) = 3 comparisons per query
    assert counted(lambda: torch.searchsorted(boundaries, values)) == {"aten.searchsorted": 15}
    assert counted(lambda: torch.bucketize(values, boundaries)) == {"aten.bucketize": 15}
    assert counted(lambda: torch.arange(8).sort()) == {}  # integer keys
    # 3 test elements < 10 * 10^0.145: every pair compared
    assert counted(lambda: torch.isin(torch.randn(10), torch.randn(3))) == {"aten.isin": 30}
    # histogram with no range given: min and max (2n), range tests and bin index (5n)
    assert counted(lambda: torch.histc(x, bins=4)) == {"aten.histc": 7 * 32}
    assert counted(lambda: torch.histc(x, bins=4, min=-1, max=1)) == {"aten.histc": 5 * 32}
