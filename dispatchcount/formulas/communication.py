"""Communication: collectives cost 0 FLOPs; the bytes a rank hands to them are recorded.

Every op of the ``c10d``, ``_c10d_functional``, ``_c10d_functional_autograd`` and ``_dtensor``
namespaces, and FSDP2's ``fsdp`` copy ops, has a reviewed rule here (the legacy
``c10d_functional`` ops are CompositeImplicit: they decompose into ``_c10d_functional`` ones) (docs/conventions.md, "Distributed and tensor subclasses"), so that none is ever
unsupported and ``strict=True`` never fires inside DDP's reducer or FSDP's hooks:

- a collective that moves data returns :class:`~dispatchcount.registry.Transfer`: 0 FLOPs and
  its *payload*, the bytes of the tensors this rank contributes (all-reduce: its tensor;
  all-gather: its shard; reduce-scatter and all-to-all: its whole input; broadcast and scatter:
  the root's tensors, 0 elsewhere; send: the tensor; receive: 0), in the ``comm_bytes`` metric.
  The payload is what the program asks to communicate; the traffic on the wire depends on the
  backend's algorithm (a ring all-reduce sends 2 (n - 1) / n times its payload) and is not guessed.
- waits, barriers, autograd wrappers, process-group lookups and FSDP's local copies into and out
  of the communication buffers are explicit zeros: no arithmetic and nothing sent.

An op in these namespaces that a later PyTorch adds is not guessed either: it stays unsupported
(reported) until it is reviewed here; tests/test_distributed.py lists every op PyTorch has.
The rules are matched by namespace and name, so nothing here imports torch.distributed (FSDP
registers its ops only when it is imported).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import torch
from torch._ops import OpOverload

from dispatchcount.registry import CONVENTIONS, ZERO, Transfer, register_resolver

__all__ = ["COLLECTIVE_NAMESPACES", "COMMUNICATION_RULES", "communication_rule"]

COLLECTIVE_NAMESPACES = ("c10d", "_c10d_functional", "_c10d_functional_autograd", "c10d_functional", "_dtensor", "fsdp")


def _nbytes(values: Iterable[Any]) -> int:
    """Bytes of the tensors in ``values`` (tensors, lists of tensors, lists of lists)."""
    total = 0
    for value in values:
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif isinstance(value, (list, tuple)):
            total += _nbytes(value)
    return total


def _payload(index: int) -> Callable[..., Transfer]:
    """The rank contributes the tensor(s) of argument ``index``."""

    def payload(*args: Any, out: Any = None, **kwargs: Any) -> Transfer:
        return Transfer(_nbytes((args[index],)))

    return payload


def _received(*args: Any, out: Any = None, **kwargs: Any) -> Transfer:
    return Transfer(0)


def _group_rank(group: Any) -> Optional[int]:
    """This rank's index in ``group`` (a ProcessGroup or a group name), or None if unknown."""
    try:
        if isinstance(group, str):
            group = torch._C._distributed_c10d._resolve_process_group(group)
        elif isinstance(group, torch.ScriptObject):  # as c10d ops receive it
            group = torch.distributed.ProcessGroup.unbox(group)
        return group.rank()
    except Exception:
        return None


def _from_root(tensors: int, group: int, root: int) -> Callable[..., Transfer]:
    """Broadcast and scatter: the root sends argument ``tensors``; the other ranks receive."""

    def from_root(*args: Any, out: Any = None, **kwargs: Any) -> Transfer:
        rank = _group_rank(args[group])
        if rank is not None and rank != args[root]:
            return Transfer(0)
        return Transfer(_nbytes((args[tensors],)))

    return from_root


def _isends(op_list: list, peers: Any, tags: Any, tensors: list, *args: Any, out: Any = None, **kwargs: Any) -> Transfer:
    return Transfer(_nbytes(t for kind, t in zip(op_list, tensors) if kind == "isend"))


_FUNCTIONAL = {  # the same names in _c10d_functional and _c10d_functional_autograd
    "all_reduce": _payload(0),
    "all_reduce_": _payload(0),
    "all_reduce_coalesced": _payload(0),
    "all_reduce_coalesced_": _payload(0),
    "all_gather_into_tensor": _payload(0),
    "all_gather_into_tensor_out": _payload(0),
    "all_gather_into_tensor_coalesced": _payload(0),
    "reduce_scatter_tensor": _payload(0),
    "reduce_scatter_tensor_out": _payload(0),
    "reduce_scatter_tensor_coalesced": _payload(0),
    "all_to_all_single": _payload(0),
    "broadcast": _from_root(0, 2, 1),
    "broadcast_": _from_root(0, 2, 1),
    "isend": _payload(0),
    "irecv": _received,
    "batch_p2p_ops": _isends,
    # Waiting for a collective and wrapping its result for autograd: nothing computed or sent.
    "wait_tensor": ZERO,
    "_wrap_tensor_autograd": ZERO,
}

COMMUNICATION_RULES: dict[str, dict[str, Any]] = {
    "c10d": {
        "allreduce_": _payload(0),
        "allreduce_coalesced_": _payload(0),
        "_allgather_base_": _payload(1),
        "allgather_": _payload(1),
        "allgather_coalesced_": _payload(1),
        "allgather_into_tensor_coalesced_": _payload(1),
        "_reduce_scatter_base_": _payload(1),
        "reduce_scatter_": _payload(1),
        "reduce_scatter_tensor_coalesced_": _payload(1),
        "alltoall_": _payload(1),
        "alltoall_base_": _payload(1),
        "reduce_": _payload(0),
        "gather_": _payload(1),
        "broadcast_": _from_root(0, 1, 2),
        "scatter_": _payload(1),  # only the root holds inputs to scatter
        "send": _payload(0),
        "recv_": _received,
        "recv_any_source_": _received,
        # Synchronization, and the NaN check PyTorch may run before a collective: no data sent,
        # no arithmetic of the program.
        "barrier": ZERO,
        "monitored_barrier_": ZERO,
        "check_for_nan": ZERO,
    },
    "_c10d_functional": _FUNCTIONAL,
    "_c10d_functional_autograd": _FUNCTIONAL,
    "_dtensor": {
        "shard_dim_alltoall": _payload(0),
        "mesh_get_process_group": ZERO,
    },
    # FSDP2's copies into the all-gather buffer and out of it, and of gradients into the
    # reduce-scatter buffer: local data movement, like aten.cat and aten.copy_.
    "fsdp": {
        "all_gather_copy_in": ZERO,
        "split_with_sizes_copy": ZERO,
        "chunk_cat": ZERO,
        "copy_": ZERO,
    },
}


def communication_rule(op: OpOverload) -> Any:
    """The reviewed rule of a collective or FSDP copy op, else None (a resolver)."""
    table = COMMUNICATION_RULES.get(op.namespace)
    if table is None:
        return None
    return table.get(op._schema.name.split("::", 1)[-1])


for _convention in CONVENTIONS.values():
    if _convention.counts_flops:
        register_resolver(_convention.name, communication_rule, family="communication (dispatchcount.formulas.communication)")
