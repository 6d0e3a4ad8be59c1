"""FlopMode: count the FLOPs of every op that runs, per module, forward and backward."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._python_dispatch import TorchDispatchMode

import dispatchcount.formulas  # noqa: F401  (registers the built-in rules)
from dispatchcount import report
from dispatchcount.registry import CONVENTIONS, DECOMPOSE, HIGHER_ORDER, UNSUPPORTED, ZERO, resolve, rule_cache
from dispatchcount.tracker import Frame, ModuleTracker

__all__ = ["FlopMode", "count_flops", "UnsupportedOperatorError", "FormulaError"]

FORWARD, BACKWARD, RECOMPUTE = "forward", "backward", "recompute"

_current_node = torch._C._current_autograd_node
_COMPOSITE_IMPLICIT = torch._C.DispatchKey.CompositeImplicitAutograd


class UnsupportedOperatorError(RuntimeError):
    """Raised under ``strict=True`` for an op that has no FLOP rule."""


class FormulaError(RuntimeError):
    """Raised under ``strict=True`` when a FLOP formula fails."""


class FlopMode:
    """Counts FLOPs of every op run inside ``with FlopMode(model) as fm:``.

    Args:
        model: optional; names modules as ``model.named_modules()`` ("" is the root).
        convention: ``"flop"`` (a multiply-add is 2 FLOPs; matmul, convolution and attention as
            ``torch.utils.flop_counter.FlopCounterMode``, plus every other floating-point op) or
            ``"fvcore"`` (fvcore's rules: a multiply-add is 1, elementwise ops are free).
        strict: raise on an op with no rule or a formula that fails, instead of reporting it.
        display: print ``table()`` on exit.

    Each ``with`` block starts from zero. Forward FLOPs go to the running module; backward
    FLOPs to the module whose forward created the autograd node being run.
    """

    def __init__(
        self,
        model: Optional[torch.nn.Module] = None,
        *,
        convention: str = "flop",
        strict: bool = False,
        display: bool = False,
    ) -> None:
        if model is not None and not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
        if convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
        self.model = model
        self.convention = convention
        self.strict = strict
        self.display = display
        self._records: dict[tuple[Frame, Any, str], list[int]] = {}
        self._unsupported: dict[Any, int] = {}
        self._errors: dict[Any, list[Any]] = {}
        self._tracker = ModuleTracker(model)
        self._dispatch: Optional[_CountingDispatch] = None

    # -- context ---------------------------------------------------------------------------

    def __enter__(self) -> "FlopMode":
        if self._dispatch is not None:
            raise RuntimeError("this FlopMode is already active; nest a new FlopMode instead")
        self._records.clear()
        self._unsupported.clear()
        self._errors.clear()
        self._tracker = ModuleTracker(self.model)
        self._tracker.start()
        self._dispatch = self._make_dispatch()
        try:
            self._dispatch.__enter__()
        except BaseException:
            self._tracker.stop()
            self._dispatch = None
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        dispatch, self._dispatch = self._dispatch, None
        try:
            if dispatch is not None:
                dispatch.__exit__(exc_type, exc, tb)
        finally:
            self._tracker.stop()
        if exc_type is None:
            self._warn_uncounted()
            if self.display:
                print(self.table())

    def _make_dispatch(self) -> "_CountingDispatch":
        if self.convention == "fvcore":  # fvcore's composite ops are also counted at the Python call
            from dispatchcount.fvcore_mode import FvcoreDispatch

            return FvcoreDispatch(self)
        return _CountingDispatch(self)

    # -- recording (called from the dispatch hook) -----------------------------------------

    def _note_unsupported(self, func: Any) -> None:
        if self.strict:
            raise UnsupportedOperatorError(
                f"dispatchcount: no FLOP rule for {func} (convention {self.convention!r}); "
                "register one with dispatchcount.register_formula"
            )
        self._unsupported[func] = self._unsupported.get(func, 0) + 1

    def _note_error(self, func: Any, error: Exception) -> None:
        if self.strict:
            raise FormulaError(f"dispatchcount: the FLOP formula for {func} raised {error!r}") from error
        entry = self._errors.get(func)
        if entry is None:
            self._errors[func] = [1, f"{type(error).__name__}: {error}"]
        else:
            entry[0] += 1

    def _warn_uncounted(self) -> None:
        uncounted = self.unsupported_ops()
        if not uncounted:
            return
        errors = self.formula_errors()
        parts = [f"{op} ({calls} calls{'; formula raised ' + errors[op] if op in errors else ''})"
                 for op, calls in uncounted.items()]
        warnings.warn(
            "dispatchcount: not counted (no FLOP rule, or the formula raised): " + ", ".join(parts)
            + ". See FlopMode.unsupported_ops(); register a rule with dispatchcount.register_formula.",
            stacklevel=3,
        )

    # -- results ---------------------------------------------------------------------------

    def total(self, phase: Optional[str] = None) -> int:
        """Every counted FLOP; ``phase`` "forward" or "backward" (which includes recompute)."""
        return report.total(self._records, phase)

    def by_module(self, phase: Optional[str] = None, inclusive: bool = True) -> dict[str, int]:
        """{qualified module name: FLOPs}; "" is everything counted.

        Inclusive of children (and of what a module's callees ran); ``inclusive=False``: only
        the ops each module ran itself, outside any child module.
        """
        return report.by_module(self._records, self._module_names(), phase, inclusive)

    def by_operator(self, phase: Optional[str] = None) -> dict[str, int]:
        """{"aten.mm": FLOPs, ...}, overloads of one op summed."""
        return report.by_operator(self._records, phase)

    def by_module_and_operator(
        self, phase: Optional[str] = None, inclusive: bool = True
    ) -> dict[str, dict[str, int]]:
        """{module: {operator: FLOPs}}, inclusive of children unless ``inclusive=False``."""
        return report.by_module_and_operator(self._records, self._module_names(), phase, inclusive)

    def beyond_fvcore(self, phase: Optional[str] = None) -> dict[str, int]:
        """Under ``convention="fvcore"``: {operator: FLOPs} of matmul-like ops fvcore has no
        handle for (attention, baddbmm, ...), counted here but absent from fvcore's total."""
        return report.beyond_fvcore(self, phase)

    def unsupported_ops(self) -> dict[str, int]:
        """{operator: calls} of ops that ran with no rule, or whose formula failed."""
        result: dict[str, int] = {}
        for func, calls in self._unsupported.items():
            name = report.op_name(func)
            result[name] = result.get(name, 0) + calls
        for func, (calls, _) in self._errors.items():
            name = report.op_name(func)
            result[name] = result.get(name, 0) + calls
        return result

    def formula_errors(self) -> dict[str, str]:
        """{operator: first error message} of formulas that raised."""
        return {report.op_name(f): e[1] for f, e in self._errors.items()}

    def uncalled_modules(self) -> set[str]:
        """Names of the model's modules whose forward never ran."""
        if self.model is None:
            return set()
        called = self._tracker.calls
        return {name for name, _ in self.model.named_modules() if name not in called}

    def module_calls(self) -> dict[str, int]:
        """{module name: forward calls}."""
        return dict(self._tracker.calls)

    def table(self, depth: int = 3) -> str:
        """A table by module: parameters, forward, backward and total FLOPs, share of the total."""
        return report.table(self, depth)

    def to_dict(self) -> dict[str, Any]:
        """Everything above as a JSON-serializable dict."""
        return report.to_dict(self)

    def _module_names(self) -> list[str]:
        names = [name for name, _ in self.model.named_modules()] if self.model is not None else [""]
        known = set(names)
        names += [name for name in self._tracker.params if name not in known]
        return names


class _CountingDispatch(TorchDispatchMode):
    """The dispatch hook: one cached rule lookup per op, then at most one formula call."""

    supports_higher_order_operators = True

    def __init__(self, counter: FlopMode) -> None:
        super().__init__()
        self.counter = counter
        self.convention = counter.convention
        self.rules = rule_cache(counter.convention)
        self.records = counter._records
        self.tracker = counter._tracker

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        if kwargs is None:
            kwargs = {}
        rule = self.rules.get(func)
        if rule is None:
            rule = resolve(func, self.convention)
        if rule is ZERO:
            return func(*args, **kwargs)
        if rule is DECOMPOSE:
            # Run the C++ CompositeImplicit kernel, as a plain run does. (func.decompose() would
            # prefer a Python decomposition where torch._decomp registered one, e.g. for
            # upsample_bilinear2d.vec under inference_mode, which rounds differently.)
            with self:
                return func._op_dk(_COMPOSITE_IMPLICIT, *args, **kwargs)
        if rule is UNSUPPORTED:
            self.counter._note_unsupported(func)
            return func(*args, **kwargs)
        if rule is HIGHER_ORDER:
            return self._run_higher_order(func, args, kwargs)

        out = func(*args, **kwargs)
        try:
            if "out" in kwargs:  # an ``.out`` overload: its out= tensor is the result, passed once
                kwargs = {k: v for k, v in kwargs.items() if k != "out"}
            flops = rule(*args, out=out, **kwargs)
            if type(flops) is not int:
                flops = _as_count(flops)
        except Exception as error:
            self.counter._note_error(func, error)
            return out

        self.record(func, flops)
        return out

    def record(self, func: Any, flops: int) -> None:
        """Add ``flops`` and one call to ``func`` in the running module and phase."""
        node = _current_node()
        if node is None:
            key = (self.tracker.current, func, FORWARD)
        else:
            frame, recompute = self.tracker.backward_frame(node)
            if frame is None:  # a node another thread's forward built: neither phase is counted
                return
            key = (frame, func, RECOMPUTE if recompute else BACKWARD)
        record = self.records.get(key)
        if record is None:
            self.records[key] = [flops, 1]
        else:
            record[0] += flops
            record[1] += 1


    def _run_higher_order(self, func: Any, args: tuple, kwargs: dict) -> Any:
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
        self.counter._note_unsupported(func)
        return func(*args, **kwargs)


def _has_data(t: torch.Tensor) -> bool:
    return t.device.type != "meta" and not isinstance(t, FakeTensor)


def _as_count(flops: Any) -> int:
    if isinstance(flops, torch.SymInt):
        flops = int(flops)
    if not isinstance(flops, (int, float)) or isinstance(flops, bool) or flops < 0 or flops != flops:
        raise TypeError(f"a FLOP formula must return a non-negative number, got {flops!r}")
    return int(flops)


def count_flops(
    model: Callable[..., Any],
    *inputs: Any,
    convention: str = "flop",
    strict: bool = False,
    **model_kwargs: Any,
) -> FlopMode:
    """Run ``model(*inputs, **model_kwargs)`` under a FlopMode and return the FlopMode."""
    if not callable(model):
        raise TypeError(f"model must be a torch.nn.Module or a callable, got {type(model).__name__}")
    named = model if isinstance(model, torch.nn.Module) else None
    with FlopMode(named, convention=convention, strict=strict) as mode:
        model(*inputs, **model_kwargs)
    return mode
