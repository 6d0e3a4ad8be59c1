"""Bytes moved: what each op reads from and writes to memory (docs/conventions.md, "Bytes moved").

The model is the unfused upper bound: every op is one kernel that reads each distinct tensor
input once and writes each output once (xformers' ``io_bytes``, Inductor's worst-case input
estimate). Read: the elements of each distinct input tensor (an expanded, stride-0 dimension
counts its underlying elements once), times the element size. Written: the outputs, and the
arguments an in-place or ``out=`` overload mutates. The exceptions, by aten base name:

- views and metadata ops (``view``, ``transpose``, ``expand``, ``detach``, ``size`` queries,
  ``resize_``, ``set_``) and allocations (``empty*``) move nothing;
- factories (``zeros``, ``full``, ``arange``, ``rand``, ``*_like``, ``new_*``) only write;
- in-place ops that overwrite their tensor (``copy_``, ``fill_``, ``zero_``, the random fills,
  ``masked_fill_``) write it without reading it;
- gathers (``index``, ``index_select``, ``gather``, ``take``, ``embedding``, ``masked_select``)
  read the index and the gathered elements, not the whole source; in-place scatters
  (``index_put_``, ``index_copy_``, ``index_add_``, ``scatter_*``, ``put_``) read the index and
  the source and write the updated elements only (accumulating ones also read those).

Ops a mode sees as composites are decomposed by the hook, so they are their pieces. A custom
op (a fused kernel) reads its inputs and writes its outputs once by the same default rule;
:func:`register_bytes` gives any op a rule of its own.

A rule is ``rule(args, kwargs, out) -> (read, written)``, resolved once per op and cached by
``id(op)``: the meter calls it for every op, so it reads shapes, strides and dtypes only.
"""

from __future__ import annotations

from math import prod
from typing import Any, Callable, Iterable, Optional, Union

import torch
from torch._ops import OpOverload, OpOverloadPacket

from dispatchcount.formulas.zero import ZERO_GROUPS

__all__ = ["BytesRule", "bytes_rule", "moves_nothing", "register_bytes", "tensor_bytes"]

Tensor = torch.Tensor
BytesRule = Callable[[tuple, dict, Any], tuple[int, int]]
_SEQUENCE = (list, tuple)

# -- by name: what each group of ops moves -----------------------------------------------------

_NOTHING_NAMES = frozenset(ZERO_GROUPS["views"]) | frozenset(ZERO_GROUPS["metadata"]) | {
    # allocations: no kernel touches the memory
    "empty", "empty_like", "empty_permuted", "empty_quantized", "empty_strided", "new_empty",
    "new_empty_strided", "_empty_affine_quantized", "_empty_per_channel_affine_quantized",
    "_efficientzerotensor",
    # queries of sizes and layout
    "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "sym_is_contiguous", "size",
    "stride", "numel", "dim", "storage_offset", "is_contiguous", "is_strides_like_format",
    "is_non_overlapping_and_dense", "swapdims", "swapaxes",
}
# Produce their output from sizes and constants; a tensor argument only gives its shape.
_WRITE_ONLY_NAMES = frozenset(ZERO_GROUPS["factories"]) - _NOTHING_NAMES | {
    "rand", "randn", "randint", "randperm", "rand_like", "randn_like", "randint_like",
}
# In-place ops that overwrite the tensor they mutate: it is written, not read.
_OVERWRITE_NAMES = frozenset({
    "copy", "fill", "zero", "uniform", "normal", "random", "bernoulli", "exponential",
    "geometric", "log_normal", "cauchy", "masked_fill", "masked_scatter", "_foreach_copy",
    "_foreach_zero",
})


# -- sizes -----------------------------------------------------------------------------------


def tensor_bytes(t: Tensor) -> int:
    """Bytes of the distinct elements ``t`` addresses: an expanded (stride-0) dimension counts
    its underlying elements once; sparse tensors count their values and indices."""
    try:
        if t.is_contiguous():
            return t.nbytes
        n = 1
        for size, stride in zip(t.shape, t.stride()):
            if stride:
                n *= size
            elif not size:
                return 0
        return n * t.element_size()
    except (RuntimeError, NotImplementedError):  # sparse, nested and other layouts
        return _other_layout_bytes(t)


def _other_layout_bytes(t: Tensor) -> int:
    layout = t.layout
    if layout is torch.sparse_coo:
        return t._values().nbytes + t._indices().nbytes
    if layout in (torch.sparse_csr, torch.sparse_bsr):
        return t.values().nbytes + t.crow_indices().nbytes + t.col_indices().nbytes
    if layout in (torch.sparse_csc, torch.sparse_bsc):
        return t.values().nbytes + t.ccol_indices().nbytes + t.row_indices().nbytes
    try:
        return t.numel() * t.element_size()
    except (RuntimeError, NotImplementedError):
        return 0


def read_bytes(args: Iterable[Any], kwargs: Optional[dict] = None) -> int:
    """Bytes of the distinct tensors among ``args`` and ``kwargs`` values (lists looked into).

    Runs for every op: one loop, the common case (a contiguous tensor) inline."""
    values = (*args, *kwargs.values()) if kwargs else args
    total = 0
    seen: list = []  # the tensors counted so far: a tensor passed twice is read once
    for a in values:
        if not isinstance(a, Tensor):
            if type(a) in _SEQUENCE and a:
                fresh = [t for t in a if isinstance(t, Tensor) and not any(t is s for s in seen)]
                total += read_bytes(fresh)
                seen += fresh
            continue
        for s in seen:
            if s is a:
                break
        else:
            seen.append(a)
            try:
                contiguous = a.is_contiguous()
            except RuntimeError:  # sparse and other layouts
                contiguous = False
            total += a.nbytes if contiguous else tensor_bytes(a)
    return total


def _output_bytes(t: Tensor) -> int:
    try:
        return t.nbytes  # outputs are dense: no stride-0 dimension to look for
    except RuntimeError:  # sparse and other layouts
        return _other_layout_bytes(t)


def written_bytes(out: Any) -> int:
    """Bytes of the tensors in ``out`` (a tensor, or a list or tuple of tensors or of lists)."""
    if isinstance(out, Tensor):
        return _output_bytes(out)
    total = 0
    if type(out) in _SEQUENCE:
        for o in out:
            if isinstance(o, Tensor):
                total += _output_bytes(o)
            elif type(o) in _SEQUENCE:
                total += sum(_output_bytes(t) for t in o if isinstance(t, Tensor))
    return total


# -- rules -----------------------------------------------------------------------------------


def moves_nothing(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    """Views, metadata ops and allocations."""
    return 0, 0


def io_bytes(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    """The default: every distinct input read once, every output written once."""
    return read_bytes(args, kwargs), written_bytes(out)


def write_only(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    """Factories: the output is written; tensor arguments only give their shape."""
    return 0, written_bytes(out)


def _is_write(argument: Any) -> bool:
    return argument.alias_info is not None and argument.alias_info.is_write


def _mutating(op: OpOverload, reads_mutated: bool) -> BytesRule:
    """An op that mutates arguments: they are written (and read, unless it overwrites them, or
    they are ``out=`` tensors); fresh outputs are written too."""
    arguments = op._schema.arguments
    positional = [i for i, a in enumerate(arguments) if _is_write(a) and not a.kwarg_only]
    keywords = frozenset(a.name for a in arguments if _is_write(a) and a.kwarg_only)
    names = {i: arguments[i].name for i in positional}
    fresh = [i for i, r in enumerate(op._schema.returns) if r.alias_info is None]
    single = len(op._schema.returns) == 1

    def mutating_bytes(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
        mutated = [args[i] if i < len(args) else kwargs.get(names[i]) for i in positional]
        mutated += [kwargs[name] for name in keywords if name in kwargs]
        others = {k: v for k, v in kwargs.items() if k not in keywords} if kwargs else kwargs
        if reads_mutated:
            read = read_bytes(args, others)
        else:
            read = read_bytes([a for i, a in enumerate(args) if i not in names], others)
        written = written_bytes(mutated)
        if fresh:
            written += written_bytes(out) if single else sum(written_bytes(out[i]) for i in fresh)
        return read, written

    return mutating_bytes


def _without_out(op: OpOverload) -> frozenset:
    return frozenset(a.name for a in op._schema.arguments if _is_write(a) and a.kwarg_only)


def _gather(op: OpOverload) -> BytesRule:
    """Reads the index tensors and the gathered elements (as many as it writes)."""
    skip = _without_out(op)

    def gather_bytes(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
        others = {k: v for k, v in kwargs.items() if k not in skip} if skip and kwargs else kwargs
        gathered = written_bytes(out)
        return read_bytes(args[1:], others) + gathered, gathered

    return gather_bytes


def _embedding_bag(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    # (weight, indices, offsets, ..., per_sample_weights, ...): one weight row per index.
    weight, indices = args[0], args[1]
    rows = indices.numel() * weight.shape[-1] * weight.element_size()
    return read_bytes(args[1:], kwargs) + rows, written_bytes(out)


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    return args[index] if index < len(args) else kwargs.get(name, default)


def _indexed_elements(t: Tensor, indices: list) -> int:
    """Elements of ``t[indices]`` (advanced indexing; a boolean mask counts as all true)."""
    shapes, kept, dim = [], 1, 0
    for index in indices:
        if index is None:
            kept *= t.shape[dim]
            dim += 1
        elif index.dtype in (torch.bool, torch.uint8):
            shapes.append((index.numel(),))
            dim += index.dim()
        else:
            shapes.append(tuple(index.shape))
            dim += 1
    kept *= prod(t.shape[dim:])
    try:
        return prod(torch.broadcast_shapes(*shapes)) * kept
    except RuntimeError:
        return t.numel()


def _index_put(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    t, indices, values = args[0], args[1], args[2]
    updated = _indexed_elements(t, indices) * t.element_size()
    accumulate = _arg(args, kwargs, 3, "accumulate", False)
    return read_bytes((indices, values)) + (updated if accumulate else 0), updated


def _index_source(accumulates: bool) -> BytesRule:
    # index_copy_ / index_add_ / index_reduce_(self, dim, index, source, ...)
    def index_source_bytes(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
        t, index, source = args[0], args[2], _arg(args, kwargs, 3, "source")
        updated = source.numel() * t.element_size()
        return read_bytes((index, source)) + (updated if accumulates else 0), updated

    return index_source_bytes


def _index_fill(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    t, dim, index = args[0], args[1], args[2]
    rows = t.numel() // t.shape[dim] if t.dim() and t.shape[dim] else 1
    updated = rows * index.numel() * t.element_size()
    return read_bytes(args[2:]), updated


def _scatter(accumulates: bool) -> BytesRule:
    # scatter_ / scatter_add_ / scatter_reduce_(self, dim, index, src or value, ...): one update
    # per index element, reading that many elements of src.
    def scatter_bytes(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
        t, index = args[0], args[2]
        src = _arg(args, kwargs, 3, "src")
        n = index.numel()
        updated = n * t.element_size()
        read = tensor_bytes(index) + (n * src.element_size() if isinstance(src, Tensor) else 0)
        if accumulates or _arg(args, kwargs, 4, "reduce") is not None:
            read += updated
        return read, updated

    return scatter_bytes


def _put(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    t, index, source = args[0], args[1], args[2]
    updated = index.numel() * t.element_size()
    accumulate = _arg(args, kwargs, 3, "accumulate", False)
    return tensor_bytes(index) + index.numel() * source.element_size() + (updated if accumulate else 0), updated


_GATHER_NAMES = frozenset({
    "index", "_unsafe_index", "index_select", "gather", "take", "embedding", "masked_select",
    "_unsafe_masked_index",
})
_IN_PLACE_SCATTERS: dict[str, BytesRule] = {
    "index_put": _index_put,
    "_index_put_impl": _index_put,
    "index_copy": _index_source(accumulates=False),
    "index_add": _index_source(accumulates=True),
    "index_reduce": _index_source(accumulates=True),
    "index_fill": _index_fill,
    "scatter": _scatter(accumulates=False),
    "scatter_add": _scatter(accumulates=True),
    "scatter_reduce": _scatter(accumulates=True),
    "put": _put,
}
_BY_NAME: dict[str, BytesRule] = {
    "_embedding_bag": _embedding_bag,
    "_embedding_bag_forward_only": _embedding_bag,
}

# -- resolution ------------------------------------------------------------------------------

_registered: dict[Any, BytesRule] = {}
_rules: dict[int, BytesRule] = {}  # id(op) -> rule: read by the meter for every op
_ops: dict[int, Any] = {}  # keeps every cached op alive, so that its id stays unique


def bytes_rule(op: Any) -> BytesRule:
    """The bytes rule of ``op`` (cached)."""
    rule = _rules.get(id(op))
    if rule is None:
        rule = _rules[id(op)] = _resolve(op)
        _ops[id(op)] = op
    return rule


def _resolve(op: Any) -> BytesRule:
    if not isinstance(op, OpOverload):  # higher-order ops: their tensor operands and results
        return _registered.get(op, io_bytes)
    for key in (op, op._overloadpacket):
        if key in _registered:
            return _registered[key]
    if op.is_view or op.namespace == "prim":  # prim: the JIT's metadata queries (prim.device)
        return moves_nothing
    if op.namespace != "aten":
        return _mutating(op, reads_mutated=True) if _mutates(op) else io_bytes
    name = op._schema.name.split("::", 1)[-1]
    base = name[:-1] if name.endswith("_") and not name.endswith("__") else name
    if base in _NOTHING_NAMES:
        return moves_nothing
    in_place = bool(op._schema.arguments) and _is_write(op._schema.arguments[0]) and not op._schema.arguments[0].kwarg_only
    if in_place and base in _IN_PLACE_SCATTERS:
        return _IN_PLACE_SCATTERS[base]
    if base in _WRITE_ONLY_NAMES and not in_place:
        return write_only
    if base in _GATHER_NAMES:
        return _gather(op)
    if base in _BY_NAME:
        return _BY_NAME[base]
    if _mutates(op):
        return _mutating(op, reads_mutated=not (in_place and (base in _OVERWRITE_NAMES or base in _WRITE_ONLY_NAMES)))
    return io_bytes


def _mutates(op: OpOverload) -> bool:
    return any(_is_write(a) for a in op._schema.arguments)


Op = Union[OpOverload, OpOverloadPacket]


def register_bytes(op: Union[Op, Iterable[Op]]) -> Callable[[Callable[..., tuple[int, int]]], Callable[..., tuple[int, int]]]:
    """Register ``rule(*args, out=None, **kwargs) -> (bytes_read, bytes_written)`` for ``op``
    (an OpOverload, an OpOverloadPacket, or a list of them), called like a FLOP formula."""
    ops = list(op) if isinstance(op, (list, tuple, set, frozenset)) else [op]
    for o in ops:
        if not isinstance(o, (OpOverload, OpOverloadPacket)) and not isinstance(o, torch._ops.HigherOrderOperator):
            raise TypeError(f"op must be a torch OpOverload or OpOverloadPacket, got {type(o).__name__}: {o!r}")

    def register(rule: Callable[..., tuple[int, int]]) -> Callable[..., tuple[int, int]]:
        if not callable(rule):
            raise TypeError(f"rule must be callable, got {type(rule).__name__}")

        def registered_bytes(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
            if "out" in kwargs:  # an ``.out`` overload: its out= tensor is the result, passed once
                kwargs = {k: v for k, v in kwargs.items() if k != "out"}
            read, written = rule(*args, out=out, **kwargs)
            return int(read), int(written)

        for o in ops:
            _registered[o] = registered_bytes
        _rules.clear()
        return rule

    return register
