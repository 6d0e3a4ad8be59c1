"""FlopMode: count the FLOPs of every op that runs, per module, forward and backward."""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

import torch

from dispatchcount import report, report_html
from dispatchcount.compile_stance import force_eager, unchanged
from dispatchcount.problems import FormulaError, Problems, UnsupportedOperatorError
from dispatchcount.records import RECORDABLE, Counts, Records, op_name, snapshot_rows
from dispatchcount.registry import Formula, convention as find_convention
from dispatchcount.tracker import ModuleTracker, module_index

__all__ = ["FlopMode", "count_flops", "UnsupportedOperatorError", "FormulaError"]


class FlopMode:
    """Counts FLOPs of every op run inside ``with FlopMode(model) as fm:``.

    Args:
        model: optional; names modules as ``model.named_modules()`` ("" is the root).
        convention: ``"flop"`` (a multiply-add is 2 FLOPs; matmul, convolution and attention as
            ``torch.utils.flop_counter.FlopCounterMode``, plus every other floating-point op) or
            ``"fvcore"`` (fvcore's rules: a multiply-add is 1, elementwise ops are free).
        strict: raise on an op with no rule or a formula that fails, instead of reporting it.
        display: print ``table()`` on exit.
        metrics: what to record besides FLOPs and calls (``"flops"`` is always recorded).
        formulas: ``{op: formula or None}`` for this counter only, ahead of the registered
            rules of ``convention`` (None counts the op as 0).

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
        metrics: tuple[str, ...] = ("flops",),
        formulas: Optional[Mapping[Any, Optional[Formula]]] = None,
    ) -> None:
        if model is not None and not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
        self._convention = find_convention(convention)
        metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
        unknown = [m for m in metrics if m not in RECORDABLE]
        if unknown:
            raise ValueError(f"metrics must be among {tuple(RECORDABLE)}, got {unknown[0]!r}")
        if "bytes" in metrics or "time" in metrics:
            raise NotImplementedError(f"metrics {metrics}: only 'flops' is recorded in this version")
        self.model = model
        self.convention = convention
        self.strict = strict
        self.display = display
        self.metrics = ("flops",) + tuple(m for m in metrics if m != "flops")
        table = self._convention.load()
        self._rules = table.overlay(formulas) if formulas else table
        self._records = Records()
        self._problems = Problems(convention, strict)
        self._modules = module_index(model)  # built once, shared by every with block's tracker
        self._tracker = ModuleTracker(model, self._modules)
        self._hook: Any = None
        self._snapshot: Optional[Counts] = None
        self._restore_stance: Callable[[], None] = unchanged

    # -- context ---------------------------------------------------------------------------

    def __enter__(self) -> "FlopMode":
        if self._hook is not None:
            raise RuntimeError("this FlopMode is already active; nest a new FlopMode instead")
        self._records.clear()
        self._problems.clear()
        self._snapshot = None
        self._tracker = ModuleTracker(self.model, self._modules)
        self._tracker.start()
        hook_class = self._convention.hook_class()
        self._hook = hook_class(self._rules, self._records, self._tracker, self._problems)
        self._restore_stance = force_eager()  # torch.compile'd code runs eagerly, and is counted
        try:
            self._hook.__enter__()
        except BaseException:
            self._tracker.stop()
            self._hook = None
            self._restore_stance()
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        hook, self._hook = self._hook, None
        try:
            if hook is not None:
                hook.__exit__(exc_type, exc, tb)
        finally:
            self._tracker.stop()
            restore, self._restore_stance = self._restore_stance, unchanged
            restore()
        if exc_type is None:
            self._warn_uncounted()
            if self.display:
                print(self.table())

    @contextlib.contextmanager
    def section(self, label: str) -> Iterator[None]:
        """Label what runs inside (``with fm.section("prefill"): ...``); see :meth:`by_section`."""
        if not isinstance(label, str):
            raise TypeError(f"section label must be a string, got {type(label).__name__}")
        previous = self._records.switch(label)
        try:
            yield
        finally:
            self._records.switch(previous)

    def _warn_uncounted(self) -> None:
        if not (self._problems.unsupported or self._problems.errors):
            return
        uncounted = self.unsupported_ops()
        errors = self.formula_errors()
        parts = [f"{op} ({calls} calls{'; formula raised ' + errors[op] if op in errors else ''})"
                 for op, calls in uncounted.items()]
        warnings.warn(
            "dispatchcount: not counted (no FLOP rule, or the formula raised): " + ", ".join(parts)
            + ". See FlopMode.unsupported_ops(); register a rule with dispatchcount.register_formula.",
            stacklevel=3,
        )

    # -- the snapshot ----------------------------------------------------------------------

    def counts(self) -> Counts:
        """A snapshot of everything counted so far; every result below is read from it.

        Taken inside the ``with`` block it is ``partial`` (the run is not over)."""
        if self._snapshot is not None:
            return self._snapshot
        counts = self._take_snapshot()
        if self._hook is None:
            self._snapshot = counts
        return counts

    def _take_snapshot(self) -> Counts:
        tracker = self._tracker
        modules = list(self.model.named_modules()) if self.model is not None else []
        names = [name for name, _ in modules] if modules else [""]
        params = {name: sum(p.numel() for p in module.parameters()) for name, module in modules}
        params.update((name, count) for name, count in tracker.params.items() if name not in params)
        known = set(names)
        names += [name for name in tracker.params if name not in known]
        classes = {name: type(module).__name__ for name, module in modules}
        beyond = self._convention.beyond_reference()
        rows = snapshot_rows(self._records)
        return Counts(
            convention=self.convention,
            unit=self._convention.unit,
            rows=rows,
            modules=tuple(names),
            params=params,
            calls=dict(tracker.calls),
            classes=classes,
            has_model=self.model is not None,
            model_ran=self.model is None or "" in tracker.calls,
            unsupported=self._merged_problems(),
            errors={op_name(f): e[1] for f, e in self._problems.errors.items()},
            uncalled=frozenset(self._uncalled()),
            metrics=self.metrics,
            beyond_ops=frozenset(r.operator for r in rows if beyond(r.operator)) if beyond else frozenset(),
            beyond_label=self._convention.beyond_label,
            partial=self._hook is not None,
        )

    def _merged_problems(self) -> dict[str, int]:
        result: dict[str, int] = {}
        for func, calls in self._problems.unsupported.items():
            name = op_name(func)
            result[name] = result.get(name, 0) + calls
        for func, (calls, _) in self._problems.errors.items():
            name = op_name(func)
            result[name] = result.get(name, 0) + calls
        return result

    def _uncalled(self) -> set[str]:
        if self.model is None:
            return set()
        called = self._tracker.calls
        return {name for name, _ in self.model.named_modules() if name not in called}

    # -- results ---------------------------------------------------------------------------

    def total(self, phase: Optional[str] = None, *, metric: str = "flops") -> int:
        """Every counted FLOP; ``phase`` "forward" or "backward" (which includes recompute)."""
        return self.counts().total(phase, metric)

    def by_module(self, phase: Optional[str] = None, inclusive: bool = True, *, metric: str = "flops") -> dict[str, int]:
        """{qualified module name: FLOPs}; "" is everything counted.

        Inclusive of children (and of what a module's callees ran); ``inclusive=False``: only
        the ops each module ran itself, outside any child module.
        """
        return self.counts().by_module(phase, inclusive, metric)

    def by_operator(self, phase: Optional[str] = None, *, metric: str = "flops") -> dict[str, int]:
        """{"aten.mm": FLOPs, ...}, overloads of one op summed, largest first."""
        return self.counts().by_operator(phase, metric)

    def by_module_and_operator(
        self, phase: Optional[str] = None, inclusive: bool = True, *, metric: str = "flops"
    ) -> dict[str, dict[str, int]]:
        """{module: {operator: FLOPs}}, inclusive of children unless ``inclusive=False``."""
        return self.counts().by_module_and_operator(phase, inclusive, metric)

    def by_dtype(self, phase: Optional[str] = None, *, metric: str = "flops") -> dict[str, int]:
        """{dtype: FLOPs}, by the dtype each op computed in ("float32", "bfloat16" ...);
        ``metric="int_ops"``: the integer operations of quantized kernels ("quint8" ...)."""
        return self.counts().by_dtype(phase, metric)

    def by_section(self, phase: Optional[str] = None, *, metric: str = "flops") -> dict[Optional[str], int]:
        """{section label: FLOPs} (see :meth:`section`); None holds what ran outside any section."""
        return self.counts().by_section(phase, metric)

    def beyond_fvcore(self, phase: Optional[str] = None) -> dict[str, int]:
        """Under ``convention="fvcore"``: {operator: FLOPs} of matmul-like ops fvcore has no
        handle for (attention, baddbmm, ...), counted here but absent from fvcore's total."""
        return self.counts().beyond(phase)

    def unsupported_ops(self) -> dict[str, int]:
        """{operator: calls} of ops that ran with no rule, or whose formula failed."""
        return dict(self.counts().unsupported)

    def formula_errors(self) -> dict[str, str]:
        """{operator: first error message} of formulas that raised."""
        return dict(self.counts().errors)

    def uncalled_modules(self) -> set[str]:
        """Names of the model's modules whose forward never ran."""
        return set(self.counts().uncalled)

    def module_calls(self) -> dict[str, int]:
        """{module name: forward calls}."""
        return dict(self.counts().calls)

    def table(self, depth: int = 3) -> str:
        """A table by module: parameters, forward, backward and total FLOPs, share of the total."""
        return report.table(self.counts(), depth)

    def to_dict(self) -> dict[str, Any]:
        """Everything above as a JSON-serializable dict."""
        return report.to_dict(self.counts())

    def to_html(self, path: str | os.PathLike) -> None:
        """Write the self-contained HTML report (module icicle, operators, conventions) to ``path``."""
        Path(path).write_text(report_html.page(self.counts()), encoding="utf-8")

    def _repr_html_(self) -> str:
        return report_html.notebook(self.counts())


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
