"""The dispatch hook: one cached rule lookup per op, the op, then at most one formula call.

:class:`CountingDispatch` is given what it writes to (the :class:`~dispatchcount.records.Records`,
the module tracker, the :class:`~dispatchcount.problems.Problems` sink) and the rules it counts
with; it knows nothing of ``FlopMode``. Every convention's hook is this class or a subclass,
and all of them charge an op through :meth:`CountingDispatch.charge`.

This runs for every op of the user's program: no schema parsing, no string formatting, and
dictionaries keyed by ``id(op)`` (an ``OpOverload`` hashes in Python).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Optional

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode_stack, _pop_mode, _push_mode

from dispatchcount.formula_result import IntegerWork, as_count
from dispatchcount.problems import Problems
from dispatchcount.records import BACKWARD, COMM_BYTES, FORWARD, INT_OPS, RECOMPUTE, Records
from dispatchcount.registry import DECOMPOSE, HIGHER_ORDER, UNSUPPORTED, ZERO, Cost, Transfer
from dispatchcount.subclasses import count_per_component, has_nested, nested_flops, propagating, subclass_runs
from dispatchcount.tracker import ModuleTracker

__all__ = ["CountingDispatch", "as_count", "leave"]

_current_node = torch._C._current_autograd_node
_grad_enabled = torch.is_grad_enabled
_COMPOSITE_IMPLICIT = torch._C.DispatchKey.CompositeImplicitAutograd
_COMPOSITE_EXPLICIT = torch._C.DispatchKey.CompositeExplicitAutograd
# Control-flow operators whose eager kernel calls their body functions: run under the hook,
# each iteration's ops are counted (what runs, as for cond's branch taken). Not scan and
# associative_scan: their eager kernels assert that no dispatch mode is active.
_LOOPS = tuple(op for op in (getattr(torch.ops.higher_order, name, None) for name in ("while_loop", "map_impl")) if op)
_Tensor = torch.Tensor
# The dtypes FLOPs are computed in; a result in any other (bool, integer) with FLOPs > 0 comes
# from arithmetic on its floating-point operands (comparisons, argmax, searchsorted ...).
_FLOATING = frozenset(
    d for d in vars(torch).values() if isinstance(d, torch.dtype) and (d.is_floating_point or d.is_complex)
)


class CountingDispatch(TorchDispatchMode):
    """Counts every op with ``rules`` (a rule table: ``.cache`` by op id and ``.resolve(op)``)."""

    supports_higher_order_operators = True

    def __init__(
        self,
        rules: Any,
        records: Records,
        tracker: ModuleTracker,
        problems: Problems,
        meters: tuple = (),
        timer: Any = None,
    ) -> None:
        super().__init__()
        self.rules = rules.cache
        self.resolve = rules.resolve
        self.records = records
        self.tracker = tracker
        self.problems = problems
        # Metrics beyond FLOPs: each meter is called as meter(slots, func, args, kwargs, out)
        # after the op ran, and writes its slots; ``timer.run(func, args, kwargs)`` runs the op
        # when time is measured. Without them, ops with a ZERO rule are not recorded at all;
        # with meters only (no timer), neither are the ZERO ops that every meter ``ignores``
        # (views: no FLOPs, no bytes), decided once per op in ``quiet``.
        self.meters = meters
        self.timer = timer
        self.quiet: dict[int, bool] = {}
        self.suspended = 0  # > 0 while ops run uncounted (subclasses may suspend in their own way)
        self._swapped: list = []  # what each suspend() replaced

    # -- suspension: ops run uncounted while an enclosing call is charged as one ------------

    def suspend(self, unless_grad: bool = False) -> None:
        """Run ops uncounted (no FLOPs, no other metric) until the matching :meth:`resume` (nests).

        ``unless_grad``: ops run while grad mode is enabled are still counted (inside a backward
        node, those are a recomputation, e.g. activation checkpointing's, not the node's own
        work), and :attr:`suspended` is left alone. The rule lookup and the meters themselves
        are swapped, so the per-op path carries no test for any of this."""
        self._swapped.append((self.rules, self.resolve, self.meters, self.timer))
        if unless_grad:
            rules, resolve = self.rules, self.resolve
            self.rules = _ZeroUnlessGrad(rules)
            self.resolve = lambda func: resolve(func) if _grad_enabled() else ZERO
            if self.meters:
                self.meters = _WhileGrad(self.meters)
            return
        self.suspended += 1
        self.rules, self.resolve, self.meters, self.timer = _ALL_ZERO, _zero_rule, (), None

    def resume(self) -> None:
        """Undo the last :meth:`suspend`."""
        if self._swapped:
            if self.rules is _ALL_ZERO:
                self.suspended -= 1
            self.rules, self.resolve, self.meters, self.timer = self._swapped.pop()

    @contextmanager
    def counting_suspended(self) -> Iterator[None]:
        """Ops dispatched inside run uncounted (the caller charges what they stand for)."""
        self.suspend()
        try:
            yield
        finally:
            self.resume()

    def rule(self, func: Any) -> Any:
        rule = self.rules.get(id(func))
        return self.resolve(func) if rule is None else rule

    def is_quiet(self, func: Any) -> bool:
        """True when no meter records anything for ZERO op ``func`` (and time is not measured)."""
        quiet = self.quiet.get(id(func))
        if quiet is None:
            quiet = self.quiet[id(func)] = self.timer is None and all(
                getattr(meter, "ignores", _never)(func) for meter in self.meters
            )
        return quiet

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        if types:  # tensor subclasses (plain tensors never appear in types): dispatchcount.subclasses
            if subclass_runs(types):
                return NotImplemented  # it runs the op; the ops it runs on its tensors come back here
            if propagating():  # DTensor's sharding propagation on fake tensors: not the program's compute
                return func(*args, **(kwargs or {}))
        rule = self.rules.get(id(func))
        if rule is None:
            rule = self.resolve(func)
        if rule is ZERO:  # most ops (views, metadata): run them, nothing else
            if not self.meters:
                return func(*args, **kwargs) if kwargs else func(*args)
            quiet = self.quiet.get(id(func))
            if quiet or (quiet is None and self.is_quiet(func)):
                return func(*args, **kwargs) if kwargs else func(*args)
        if kwargs is None:
            kwargs = {}
        if rule is DECOMPOSE:
            if has_nested(args):  # C++ nested tensors run their own kernel, not the composite
                return self.run_nested(func, args, kwargs)
            # Run the C++ CompositeImplicit kernel, as a plain run does. (func.decompose() would
            # prefer a Python decomposition where torch._decomp registered one, e.g. for
            # upsample_bilinear2d.vec under inference_mode, which rounds differently.)
            with self:
                return func._op_dk(_COMPOSITE_IMPLICIT, *args, **kwargs)
        if rule is UNSUPPORTED:
            self.problems.no_rule(func)
            if not self.meters:
                return func(*args, **kwargs)
        elif rule is HIGHER_ORDER:
            return self.run_higher_order(func, args, kwargs)
        out = func(*args, **kwargs) if self.timer is None else self.timer.run(func, args, kwargs)
        self.charge(func, rule, args, kwargs, out)
        return out

    def charge(self, func: Any, rule: Any, args: tuple, kwargs: dict, out: Any) -> None:
        """Charge ``rule(*args, out=out, **kwargs)`` to the running module and phase as a call
        of ``func``; a formula that fails goes to the problems sink. ZERO and UNSUPPORTED rules
        (charged only when meters record other metrics) cost 0 FLOPs."""
        dtype = None
        sent = 0
        if rule is ZERO or rule is UNSUPPORTED:
            flops = 0
        else:
            try:
                if not kwargs:  # the common case, and the cheapest call
                    flops = rule(*args, out=out)
                elif "out" in kwargs:  # an ``.out`` overload: its out= tensor is the result, passed once
                    flops = rule(*args, out=out, **{k: v for k, v in kwargs.items() if k != "out"})
                else:
                    flops = rule(*args, out=out, **kwargs)
                if type(flops) is not int:
                    if type(flops) is Cost:  # the rare path: FLOPs in a dtype the result lacks
                        flops, dtype = as_count(flops.flops), flops.dtype
                    elif type(flops) is Transfer:  # a collective: no FLOPs, bytes handed to it
                        flops, sent = 0, flops.nbytes
                    elif type(flops) is IntegerWork:  # products in integer arithmetic
                        return self.charge_integer_work(func, flops, args, kwargs, out)
                    else:
                        flops = as_count(flops)
            except Exception as error:
                # A formula that needs shapes, on C++ nested tensors: the sum over the components.
                flops = nested_flops(rule, args, kwargs, out) if has_nested(args, out) else None
                if flops is None:
                    self.problems.formula_failed(func, error)
                    if not self.meters:
                        return
                    flops = 0
        node = _current_node()
        if node is None:
            frame, phase = self.tracker.current, FORWARD
        else:
            frame, recompute = self.tracker.backward_frame(node)
            if frame is None:  # a node another thread's forward built: neither phase is counted
                return
            phase = RECOMPUTE if recompute else BACKWARD
        if dtype is None:
            dtype = out.dtype if type(out) is _Tensor else _dtype_of(out, args)
            if flops and dtype not in _FLOATING:
                dtype = _operand_dtype(args, dtype)
        key = (frame, id(func), phase, dtype)
        slots = self.records.data.get(key)
        if slots is None:
            slots = self.records.new(key, func)
        slots[0] += flops
        slots[1] += 1
        if sent:
            slots[COMM_BYTES] += sent
        if self.meters:
            for meter in self.meters:
                meter(slots, func, args, kwargs, out)

    def run_nested(self, func: Any, args: tuple, kwargs: dict) -> Any:
        """Run an op without a rule of its own on C++ nested tensors as a plain run does (their
        nested kernel), and count it per component."""
        out = func(*args, **kwargs)
        if not count_per_component(self, func, args, kwargs):
            self.problems.no_rule(func)
        return out

    def charge_integer_work(self, func: Any, work: IntegerWork, args: tuple, kwargs: dict, out: Any) -> None:
        """Charge an op whose products ran in integer arithmetic: its FLOPs as any op's, its
        integer operations into the ``int_ops`` slot of the same record (a meter for one call)."""
        flops, int_ops = as_count(work.flops), as_count(work.int_ops)

        def add_int_ops(slots: list, *_: Any) -> None:
            slots[INT_OPS] += int_ops

        meters = self.meters
        self.meters = (add_int_ops,) + meters
        try:
            self.charge(func, lambda *_, **__: flops, args, kwargs, out)
        finally:
            self.meters = meters

    def run_higher_order(self, func: Any, args: tuple, kwargs: dict) -> Any:
        """Run a higher-order op's body under this mode, so that the ops inside are counted."""
        if func is torch.ops.higher_order.cond:
            pred, true_fn, false_fn, operands = args
            if not isinstance(pred, torch.Tensor) or _has_data(pred):
                with self:  # what runs is counted: the branch taken
                    return (true_fn if bool(pred) else false_fn)(*operands)
        if func is torch.ops.higher_order.invoke_subgraph:
            subgraph, _, *operands = args
            with self:
                return subgraph(*operands)
        if func in _LOOPS:  # run eagerly: PyTorch's own eager kernel, its body's ops counted as they run
            with self:
                return func.dispatch(_COMPOSITE_EXPLICIT, *args, **kwargs)
        self.problems.no_rule(func)
        return func(*args, **kwargs)


class _AllZero(dict):
    """A rule cache in which every op is ZERO (a suspended hook's)."""

    def get(self, key: Any, default: Any = None) -> Any:
        return ZERO


_ALL_ZERO = _AllZero()


class _ZeroUnlessGrad(dict):
    """A rule cache that answers ZERO while grad mode is off, else the rules it wraps."""

    __slots__ = ("wrapped",)

    def __init__(self, wrapped: Any) -> None:
        super().__init__()
        self.wrapped = wrapped

    def get(self, key: Any, default: Any = None) -> Any:
        return self.wrapped.get(key) if _grad_enabled() else ZERO


class _WhileGrad(tuple):
    """Meters that measure only while grad mode is enabled (see ``suspend(unless_grad=True)``)."""

    def __bool__(self) -> bool:
        return _grad_enabled() and len(self) > 0

    def __iter__(self) -> Iterator[Any]:
        return super().__iter__() if _grad_enabled() else iter(())


def _zero_rule(func: Any) -> Any:
    return ZERO
def leave(hook: TorchDispatchMode, exc_type: Any, exc: Any, tb: Any) -> None:
    """Exit ``hook``; whatever happens, it is off this thread's dispatch-mode stack afterwards.

    An exit that fails (a RecursionError hit at the limit, an inner ``with hook:`` whose exit
    never ran) would leave the hook installed, counting everything that runs later. Every
    copy still on the stack is taken off, the modes above it kept in their order, and the
    flags each entry saved restored; then the exit's own error, if any, is raised."""
    try:
        hook.__exit__(exc_type, exc, tb)
    finally:
        while any(mode is hook for mode in _get_current_dispatch_mode_stack()):
            above = []
            while _get_current_dispatch_mode_stack()[-1] is not hook:
                above.append(_pop_mode())
            if getattr(hook, "old_dispatch_mode_flags", None):
                TorchDispatchMode.__exit__(hook, None, None, None)  # pops it and restores its flags
            else:
                _pop_mode()
            for mode in reversed(above):
                _push_mode(mode)


def _dtype_of(out: Any, args: tuple) -> Optional[torch.dtype]:
    """The dtype an op computed in: its (first) result's, else its first tensor argument's."""
    for candidates in (out, args):
        if isinstance(candidates, _Tensor):
            return candidates.dtype
        if isinstance(candidates, (tuple, list)):
            for value in candidates:
                if isinstance(value, _Tensor):
                    return value.dtype
                if isinstance(value, (tuple, list)) and value and isinstance(value[0], _Tensor):
                    return value[0].dtype
    return None


def _operand_dtype(args: tuple, default: Any) -> Any:
    """The first floating-point tensor argument's dtype (what a bool or integer result was
    computed from), else ``default``."""
    for value in args:
        candidates = value if isinstance(value, (tuple, list)) else (value,)
        for t in candidates:
            if isinstance(t, _Tensor) and t.dtype in _FLOATING:
                return t.dtype
    return default


def _never(func: Any) -> bool:
    return False


def _has_data(t: torch.Tensor) -> bool:
    return t.device.type != "meta" and not isinstance(t, FakeTensor)

