"""Tensor subclasses: which ops the hook counts itself, and which a subclass runs.

A dispatch mode sees an op on tensor subclasses (DTensor, a jagged NestedTensor, a wrapper such
as ``TwoTensor``) before the subclass's own ``__torch_dispatch__``. The hook returns
``NotImplemented`` for them, as ``FakeTensorMode`` does for subclasses it does not know and
``torch.utils._debug_mode.DebugMode`` does for DTensor: the subclass then runs the op, with
the mode still active, and the ops it runs on the tensors it holds come back to the hook and
are counted on the shapes they really run (a DTensor's local shard, a NestedTensor's values,
each of a wrapper's tensors). Nothing is counted twice, and nothing recurses: the op the
subclass runs is on its inner tensors, never on itself.

Two things the subclass machinery runs are no part of the program and are not counted:

- DTensor's sharding propagation runs each op once more, on fake tensors of the *global*
  shape, to learn its output's metadata (on a cache miss only, so counting it would also make
  the first step differ from the next). :func:`watch_dtensor_propagation` marks that call.
- The C++ (strided) nested tensors (``torch.nested`` strided layout, and what the jagged
  layout's attention uses on CPU) are plain ``torch.Tensor``s to a mode, have no shape and run
  kernels of their own: an op on them is counted as the sum of the same op on each component's
  shape (:func:`nested_flops` for a formula that needs shapes, :func:`count_per_component` for
  an op that would otherwise decompose).
"""

from __future__ import annotations

import functools
import sys
import threading
import warnings
from typing import Any, Optional

import torch
import torch.utils._pytree as pytree

__all__ = ["subclass_runs", "propagating", "watch_dtensor_propagation", "has_nested", "nested_flops", "count_per_component"]

# Tensor types the hook counts itself; every other type in ``types`` is a tensor subclass
# with a __torch_dispatch__ of its own.
_COUNTED_HERE: dict[type, bool] = {torch.Tensor: True, torch.nn.Parameter: True}
_state = threading.local()


def subclass_runs(types: Any) -> bool:
    """Whether a tensor subclass among ``types`` (never empty) handles the op itself.

    Plain tensors never appear in ``types``. The subclasses that belong to a mode of PyTorch's
    own (FakeTensor, FunctionalTensor: they carry ``_mode_key``) are counted here, as they are
    by FakeTensorMode; any other subclass runs the op itself.
    """
    for t in types:
        here = _COUNTED_HERE.get(t)
        if here is None:
            here = _COUNTED_HERE[t] = _counted_here(t)
        if not here:
            return True
    return False


def _counted_here(t: type) -> bool:
    if getattr(t, "_mode_key", None) is not None:
        return True
    dtensor = sys.modules.get("torch.distributed.tensor")  # imported wherever a DTensor exists
    if dtensor is not None and issubclass(t, dtensor.DTensor):
        watch_dtensor_propagation()  # before DTensor first propagates an op under a counter
    return False


def propagating() -> bool:
    """Whether this thread is inside DTensor's sharding propagation."""
    return getattr(_state, "depth", 0) > 0


def watch_dtensor_propagation() -> None:
    """Mark DTensor's sharding propagation (``ShardingPropagator._propagate_tensor_meta_non_cached``,
    in torch 2.11 and 2.13 the one place it runs ops on fake tensors), once per process."""
    try:
        from torch.distributed.tensor._sharding_prop import ShardingPropagator

        original = ShardingPropagator._propagate_tensor_meta_non_cached
    except (ImportError, AttributeError):
        warnings.warn(
            "dispatchcount: DTensor's sharding propagation is not where this version of torch was "
            "expected to have it; the ops it runs on fake tensors may be counted",
            stacklevel=3,
        )
        return
    if getattr(original, "_dispatchcount_watched", False):
        return

    @functools.wraps(original)
    def propagate_tensor_meta(self: Any, op_schema: Any) -> Any:
        _state.depth = getattr(_state, "depth", 0) + 1
        try:
            return original(self, op_schema)
        finally:
            _state.depth -= 1

    propagate_tensor_meta._dispatchcount_watched = True  # type: ignore[attr-defined]
    ShardingPropagator._propagate_tensor_meta_non_cached = propagate_tensor_meta


# -- C++ nested tensors ------------------------------------------------------------------------


def _is_nested(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_nested


def has_nested(args: tuple, out: Any = None) -> bool:
    """Whether a C++ nested tensor is among ``args`` (or their lists) or ``out``."""
    for value in (*args, out):
        if _is_nested(value) or (isinstance(value, (list, tuple)) and any(_is_nested(v) for v in value)):
            return True
    return False


def _components(tree: Any) -> Optional[list]:
    """``tree`` once per component of its nested tensors, each nested tensor replaced by a
    meta tensor of that component's shape and each dense tensor by a meta tensor of its own;
    None when the nested tensors disagree on their number of components."""
    sizes = {id(t): t._nested_tensor_size().tolist() for t in pytree.tree_leaves(tree) if _is_nested(t)}
    counts = {len(s) for s in sizes.values()}
    if len(counts) != 1:
        return None

    def component(value: Any, i: int) -> Any:
        if _is_nested(value):
            return torch.empty(sizes[id(value)][i], dtype=value.dtype, device="meta")
        if isinstance(value, torch.Tensor):  # a dense operand, broadcast against each component
            return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device="meta")
        return value

    return [pytree.tree_map(lambda v: component(v, i), tree) for i in range(counts.pop())]


def nested_flops(rule: Any, args: tuple, kwargs: dict, out: Any) -> Optional[int]:
    """``rule``'s count of an op on C++ nested tensors, as the sum of its counts on each
    component's shape; None when it cannot be had (the caller reports the op)."""
    try:
        total = 0
        for component_args, component_kwargs, component_out in _components((args, kwargs, out)) or ():
            component_kwargs.pop("out", None)
            flops = rule(*component_args, out=component_out, **component_kwargs)
            if not isinstance(flops, int) or isinstance(flops, bool) or flops < 0:
                return None
            total += flops
        return total or None
    except Exception:
        return None


def count_per_component(mode: Any, func: Any, args: tuple, kwargs: dict) -> bool:
    """Count ``func`` (an op without a formula) on C++ nested tensors as the same op run on
    each component's shape, on meta tensors, under ``mode``: what the nested kernel computes,
    component by component. False when that cannot be done (the caller reports the op)."""
    calls = _components((args, kwargs))  # built before the mode is entered: not counted
    if calls is None:
        return False
    try:
        with mode, torch.no_grad():
            for component_args, component_kwargs in calls:
                func(*component_args, **component_kwargs)
    except Exception:  # e.g. an op without a meta kernel
        return False
    return True
