"""The dispatch hook: one cached rule lookup per op, the op, then at most one formula call.

:class:`CountingDispatch` is given what it writes to (the :class:`~dispatchcount.records.Records`,
the module tracker, the :class:`~dispatchcount.problems.Problems` sink) and the rules it counts
with; it knows nothing of ``FlopMode``. Every convention's hook is this class or a subclass,
and all of them charge an op through :meth:`CountingDispatch.charge`.

This runs for every op of the user's program: no schema parsing, no string formatting, and
dictionaries keyed by ``id(op)`` (an ``OpOverload`` hashes in Python).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._python_dispatch import TorchDispatchMode

from dispatchcount.formula_result import IntegerWork, as_count
from dispatchcount.problems import Problems
from dispatchcount.records import BACKWARD, FORWARD, INT_OPS, RECOMPUTE, Records
from dispatchcount.registry import DECOMPOSE, HIGHER_ORDER, UNSUPPORTED, ZERO
from dispatchcount.tracker import ModuleTracker

__all__ = ["CountingDispatch", "as_count"]

_current_node = torch._C._current_autograd_node
_COMPOSITE_IMPLICIT = torch._C.DispatchKey.CompositeImplicitAutograd
_Tensor = torch.Tensor


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
        # when time is measured. Without them, ops with a ZERO rule are not recorded at all.
        self.meters = meters
        self.timer = timer

    def rule(self, func: Any) -> Any:
        rule = self.rules.get(id(func))
        return self.resolve(func) if rule is None else rule

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        if kwargs is None:
            kwargs = {}
        rule = self.rules.get(id(func))
        if rule is None:
            rule = self.resolve(func)
        if rule is ZERO and not self.meters:
            return func(*args, **kwargs)
        if rule is DECOMPOSE:
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
                    if type(flops) is IntegerWork:
                        return self.charge_integer_work(func, flops, args, kwargs, out)
                    flops = as_count(flops)
            except Exception as error:
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
        dtype = out.dtype if type(out) is _Tensor else _dtype_of(out, args)
        key = (frame, id(func), phase, dtype)
        slots = self.records.data.get(key)
        if slots is None:
            slots = self.records.new(key, func)
        slots[0] += flops
        slots[1] += 1
        for meter in self.meters:
            meter(slots, func, args, kwargs, out)

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
        self.problems.no_rule(func)
        return func(*args, **kwargs)


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


def _has_data(t: torch.Tensor) -> bool:
    return t.device.type != "meta" and not isinstance(t, FakeTensor)

