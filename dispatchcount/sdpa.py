"""``scaled_dot_product_attention`` counted as one call, whatever backend computes it.

``F.scaled_dot_product_attention`` is CompositeImplicitAutograd: in grad mode and under
``no_grad`` it picks a backend and decomposes before any dispatch mode sees it. What reaches the
counter then depends on the device: the CPU flash kernel, CUDA's flash / efficient / cuDNN
kernels, or, on the meta device and wherever no fused kernel applies (dropout on CPU, unequal
head dims, ``sdpa_kernel(SDPBackend.MATH)``), the math path's ``bmm``, ``_safe_softmax`` and
scaling, whose backward has four products where the fused kernels have five.

While a FlopMode is active, a kernel registered with ``torch.library`` for
``aten::scaled_dot_product_attention`` at the Autograd keys of the usual backends runs the very
same composite kernel, with the counting of what it dispatches suspended, and charges the op's
rule once. Hooks on the autograd nodes that call created do the same for the backward: while
they run, counting is suspended, and the rule of
:data:`~dispatchcount.formulas.attention.SDPA_BACKWARD` is charged once, to the module whose
forward ran the call. Outputs and gradients are the composite's own. Under
``torch.inference_mode()`` the op reaches the dispatch hook whole, and its rule applies there.

The kernel is registered while at least one FlopMode is entered (:func:`acquire`,
:func:`release`); it charges the counters of the calling thread's dispatch-mode stack.
"""

from __future__ import annotations

import threading
from typing import Any, Optional

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

from dispatchcount.dispatch import CountingDispatch

try:
    from torch.utils.checkpoint import _StopRecomputationError as _StopRecomputation
except ImportError:  # pragma: no cover - older PyTorch

    class _StopRecomputation(Exception):  # type: ignore[no-redef]
        pass

__all__ = ["acquire", "release", "SDPA", "SDPA_BACKWARD"]

SDPA = torch.ops.aten.scaled_dot_product_attention.default

# The rule key of the backward of one sdpa call, whichever ops the backend's autograd graph runs
# (a fused backward kernel, or the math path's products and softmax backward). It is never
# executed; its schema is sdpa's with the output's gradient first. register_formula(SDPA_BACKWARD)
# sets what the backward of F.scaled_dot_product_attention costs.
_LIBRARY = torch.library.Library("dispatchcount", "FRAGMENT")
_LIBRARY.define(
    "scaled_dot_product_attention_backward(Tensor grad_out, Tensor query, Tensor key, Tensor value, "
    "Tensor? attn_mask=None, float dropout_p=0., bool is_causal=False, *, float? scale=None, "
    "bool enable_gqa=False) -> ()"
)
SDPA_BACKWARD = torch.ops.dispatchcount.scaled_dot_product_attention_backward.default
_COMPOSITE = torch._C.DispatchKey.CompositeImplicitAutograd
_next_sequence_nr = torch._C._autograd._get_sequence_nr
# The Autograd keys the kernel is registered at. Registering costs about 60 us a key at each
# first acquire(), so the backends of other devices are included only when this process has one.
_ALWAYS = ("AutogradCPU", "AutogradCUDA", "AutogradMeta")  # CUDA also serves fake CUDA tensors
_IF_AVAILABLE = (
    ("AutogradXPU", lambda: hasattr(torch, "xpu") and torch.xpu.is_available()),
    ("AutogradMPS", lambda: torch.backends.mps.is_available()),
    ("AutogradHPU", lambda: hasattr(torch, "hpu")),
    ("AutogradMTIA", lambda: hasattr(torch, "mtia") and torch.mtia.is_available()),
    ("AutogradPrivateUse1", lambda: torch._C._get_privateuse1_backend_name() != "privateuseone"),
)


def _autograd_keys() -> tuple[str, ...]:
    global _KEYS
    if _KEYS is None:
        extra = []
        for key, available in _IF_AVAILABLE:
            try:
                if available():
                    extra.append(key)
            except Exception:  # an odd build: leave that backend out
                pass
        _KEYS = _ALWAYS + tuple(extra)
    return _KEYS


_KEYS: Optional[tuple[str, ...]] = None

_lock = threading.Lock()
_users = 0
_library: Optional[torch.library.Library] = None


def acquire() -> None:
    """Route ``aten::scaled_dot_product_attention`` through :func:`_counted_sdpa` (nests)."""
    global _users, _library
    with _lock:
        _users += 1
        if _library is None:
            library = torch.library.Library("aten", "IMPL")
            for key in _autograd_keys():
                try:
                    library.impl("scaled_dot_product_attention", _counted_sdpa, key)
                except RuntimeError:  # a key this PyTorch build does not know
                    pass
            _library = library


def release() -> None:
    """Undo one :func:`acquire`; the last one removes the kernel."""
    global _users, _library
    with _lock:
        _users -= 1
        if _users <= 0 and _library is not None:
            _users = 0
            _library._destroy()
            _library = None


def _active_counters() -> list[CountingDispatch]:
    return [m for m in _get_current_dispatch_mode_stack() if isinstance(m, CountingDispatch) and not m.suspended]


def _counted_sdpa(*args: Any, **kwargs: Any) -> Any:
    counters = [(c, c.rule(SDPA)) for c in _active_counters()]
    counters = [(c, rule) for c, rule in counters if callable(rule)]  # else its pieces are counted
    if not counters:
        return SDPA._op_dk(_COMPOSITE, *args, **kwargs)
    start = _next_sequence_nr()
    for counter, _ in counters:
        counter.suspend()
    try:
        out = SDPA._op_dk(_COMPOSITE, *args, **kwargs)
    except _StopRecomputation:
        # Non-reentrant checkpointing stops its recomputation once the last saved tensor is
        # packed, here while the call's autograd node saves them: the call did run.
        _charge(counters, args, kwargs, None)
        raise
    finally:
        for counter, _ in reversed(counters):
            counter.resume()
    _charge(counters, args, kwargs, out)
    if out.grad_fn is not None:
        _BackwardOfCall([c for c, _ in counters], args, kwargs).attach(out.grad_fn, start, _next_sequence_nr())
    return out


def _charge(counters: list, args: tuple, kwargs: dict, out: Any) -> None:
    for counter, rule in counters:
        counter.charge(SDPA, rule, args, kwargs, out)


class _BackwardOfCall:
    """Charges one sdpa call's backward once, and suspends counting while its nodes run."""

    __slots__ = ("counters", "args", "kwargs", "suspended")

    def __init__(self, counters: list[CountingDispatch], args: tuple, kwargs: dict) -> None:
        self.counters = counters
        self.args = args
        self.kwargs = kwargs
        self.suspended: list[list[CountingDispatch]] = []

    def attach(self, root: Any, start: int, end: int) -> None:
        """Hook every node the call created (sequence numbers in [start, end)) reachable from ``root``."""
        root.register_prehook(self._charge_and_suspend)
        root.register_hook(self._resume)
        # Nodes are told apart by sequence number: unique among those one thread creates in
        # [start, end). (Not by id(): before torch 2.13 a node's Python wrapper is made anew each
        # time it is reached and freed after, so two nodes can share an id.)
        seen = {root._sequence_nr()}
        pending = [f for f, _ in root.next_functions]
        while pending:
            node = pending.pop()
            if node is None:
                continue
            seq = node._sequence_nr()
            if seq in seen or not start <= seq < end:
                continue
            seen.add(seq)
            node.register_prehook(self._suspend)
            node.register_hook(self._resume)
            pending.extend(f for f, _ in node.next_functions)

    def _live(self) -> list[tuple[CountingDispatch, Any]]:
        # Counters still entered (a backward run after the FlopMode's exit is not counted) that
        # have a rule for the backward (others count the backward's ops one by one).
        stack = _get_current_dispatch_mode_stack()
        live = [(c, c.rule(SDPA_BACKWARD)) for c in self.counters if any(m is c for m in stack)]
        return [(c, rule) for c, rule in live if callable(rule)]

    def _charge_and_suspend(self, grad_outputs: tuple) -> None:
        if torch.is_grad_enabled():  # create_graph=True: the backward's own ops are counted
            self.suspended.append([])
            return
        live = self._live()
        grad_out = grad_outputs[0] if grad_outputs else None
        for counter, rule in live:
            counter.charge(SDPA, rule, (grad_out, *self.args), self.kwargs, None)
        self._suspend_live(live)

    def _suspend(self, grad_outputs: tuple) -> None:
        self._suspend_live(self._live() if not torch.is_grad_enabled() else [])

    def _suspend_live(self, live: list[tuple[CountingDispatch, Any]]) -> None:
        counters = [c for c, _ in live]
        for counter in counters:
            counter.suspend(unless_grad=True)
        self.suspended.append(counters)

    def _resume(self, grad_inputs: tuple, grad_outputs: tuple) -> None:
        if self.suspended:
            for counter in reversed(self.suspended.pop()):
                counter.resume()
