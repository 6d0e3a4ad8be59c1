"""FlopMode: count the FLOPs of every op that runs, per module, forward and backward."""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Optional, Union

import torch

from dispatchcount import report, report_html, sdpa
from dispatchcount.compile_stance import force_eager, unchanged
from dispatchcount.dispatch import leave
from dispatchcount.problems import FormulaError, Notes, Problems, UnsupportedOperatorError
from dispatchcount.records import RECORDABLE, Counts, Records, op_name, snapshot_rows
from dispatchcount.registry import Formula, convention as find_convention
from dispatchcount.tracker import ModuleTracker, module_index

if TYPE_CHECKING:
    from dispatchcount.devices import DeviceSpec
    from dispatchcount.meters import OpTimer
    from dispatchcount.roofline import Roofline

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
        metrics: what to record besides FLOPs and calls (``"flops"`` is always recorded):
            ``"bytes"`` (read and written by each op, see ``dispatchcount.traffic``),
            ``"time"`` (measured seconds of each op, see ``dispatchcount.meters``).
        formulas: ``{op: formula or None}`` for this counter only, ahead of the registered
            rules of ``convention`` (None counts the op as 0).
        timer: the :class:`~dispatchcount.meters.OpTimer` measuring ``"time"`` (default:
            ``OpTimer()``, CUDA events on CUDA); giving one implies ``"time"``.
        attention: ``"dense"`` (every (query, key) score, as FlopCounterMode and fvcore) or
            ``"effective"`` (only the pairs the mask keeps: causal, sliding windows, packed
            sequences, boolean/additive masks read from the tensor, flex BlockMasks); what could
            only be estimated (a mask on the meta device) is listed by :meth:`notes`.

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
        timer: Optional["OpTimer"] = None,
        attention: str = "dense",
    ) -> None:
        if model is not None and not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
        self._convention = find_convention(convention)
        metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
        unknown = [m for m in metrics if m not in RECORDABLE]
        if unknown:
            raise ValueError(f"metrics must be among {tuple(RECORDABLE)}, got {unknown[0]!r}")
        if timer is not None and "time" not in metrics:
            metrics += ("time",)
        self.model = model
        self.convention = convention
        self.strict = strict
        self.display = display
        self.metrics = ("flops",) + tuple(dict.fromkeys(m for m in metrics if m != "flops"))
        if attention not in ("dense", "effective"):
            raise ValueError(f"attention must be 'dense' or 'effective', got {attention!r}")
        self.attention = attention
        self._notes = Notes()
        if attention == "effective":
            from dispatchcount.formulas.attention_effective import effective_formulas

            formulas = {**effective_formulas(convention, self._notes), **(formulas or {})}
        table = self._convention.load()
        self._rules = table.overlay(formulas) if formulas else table
        self._records = Records()
        self._problems = Problems(convention, strict)
        self._modules = module_index(model)  # built once, shared by every with block's tracker
        self._tracker = ModuleTracker(model, self._modules)
        self._hook: Any = None
        self._snapshot: Optional[Counts] = None
        self._timer = timer
        if "time" in self.metrics and timer is None:
            from dispatchcount.meters import OpTimer

            self._timer = OpTimer()
        self._restore_stance: Callable[[], None] = unchanged

    # -- context ---------------------------------------------------------------------------

    def __enter__(self) -> "FlopMode":
        if self._hook is not None:
            raise RuntimeError("this FlopMode is already active; nest a new FlopMode instead")
        self._records.clear()
        self._problems.clear()
        self._notes.clear()
        self._snapshot = None
        if self._tracker.calls or self._tracker.params:  # a fresh one for every with block
            self._tracker = ModuleTracker(self.model, self._modules)
        self._tracker.start()
        hook_class = self._convention.hook_class()
        self._hook = hook_class(self._rules, self._records, self._tracker, self._problems,
                                meters=self._meters(), timer=self._timer)
        sdpa.acquire()
        self._restore_stance = force_eager()  # torch.compile'd code runs eagerly, and is counted
        try:
            self._hook.__enter__()
        except BaseException:
            sdpa.release()
            self._tracker.stop()
            self._hook = None
            self._restore_stance()
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        hook, self._hook = self._hook, None
        try:
            if hook is not None:
                leave(hook, exc_type, exc, tb)  # never leaves the hook installed
        finally:
            if hook is not None:
                sdpa.release()
            self._tracker.stop()
            restore, self._restore_stance = self._restore_stance, unchanged
            restore()
        if exc_type is None:
            self._warn_uncounted()
            self._warn_model_never_ran()
            if self.display:
                print(self.table())

    def _meters(self) -> tuple:
        meters: list = []
        if "bytes" in self.metrics:
            from dispatchcount.meters import bytes_meter

            meters.append(bytes_meter(self._problems))
        if self._timer is not None:
            self._timer.pending.clear()
            meters.append(self._timer)
        return tuple(meters)

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

    def _warn_model_never_ran(self) -> None:
        if self.model is None or "" in self._tracker.calls:
            return
        calls = self._tracker.calls
        if any(name in calls for _, name in self._modules.values()):
            return  # part of the model ran (a backbone called alone): the tables say so
        warnings.warn(
            f"dispatchcount: no module of the model given to FlopMode ({type(self.model).__name__}) "
            "ran inside the block: the counts are of what ran, not of that model",
            stacklevel=3,
        )

    def run_backward(self, output: Any) -> None:
        """Run, inside this FlopMode's block, the backward of the sum of ``output``'s floating
        (or complex) tensors that require grad: ``torch.autograd.backward`` seeded with ones,
        the seeds made uncounted, so that only the model's backward is counted (what
        ``sum(t.sum() for t in outputs).backward()`` differentiates, without counting the sums).
        A ValueError when no output requires grad."""
        tensors = [t for t in torch.utils._pytree.tree_leaves(output)
                   if isinstance(t, torch.Tensor) and t.requires_grad and (t.is_floating_point() or t.is_complex())]
        if not tensors:
            raise ValueError("no floating-point output of the model requires grad "
                             "(is it run under torch.no_grad(), or are all its parameters frozen?)")
        suspended = self._hook.counting_suspended() if self._hook is not None else contextlib.nullcontext()
        with suspended:
            seeds = [torch.ones_like(t) for t in tensors]
        torch.autograd.backward(tensors, seeds)

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
        if self._timer is not None:
            self._timer.flush()
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
            extras={"notes": dict(self._notes.messages)} if self._notes.messages else {},
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
        """Every counted FLOP; ``phase`` "forward" or "backward" (which includes recompute).

        ``metric``: "flops", "calls", or a recorded metric's "bytes", "bytes_read",
        "bytes_written", "seconds"."""
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
        """{dtype: FLOPs}, by the dtype each op computed in ("float32", "bfloat16" ...):
        matmul-like ops the dtype they multiply in ("float8_e4m3fn" for ``_scaled_mm``, "tf32"
        for float32 products on CUDA with TF32 allowed). ``metric``: another recorded metric
        (``"int_ops"``: the integer operations of quantized kernels, by their dtype)."""
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

    def notes(self) -> dict[str, int]:
        """{what was only estimated: calls}, e.g. an attention mask without data under
        ``attention="effective"`` (counted dense)."""
        return dict(self.counts().notes)

    def formula_errors(self) -> dict[str, str]:
        """{operator: first error message} of formulas that raised."""
        return dict(self.counts().errors)

    def uncalled_modules(self) -> set[str]:
        """Names of the model's modules whose forward never ran."""
        return set(self.counts().uncalled)

    def module_calls(self) -> dict[str, int]:
        """{module name: forward calls}."""
        return dict(self.counts().calls)

    # -- beyond FLOPs: roofline and utilization (need convention="flop") -----------------

    def roofline(self, device: Union[str, "DeviceSpec"], *, tf32: bool = False) -> "Roofline":
        """The roofline estimate on ``device`` (a name in ``dispatchcount.devices`` or a
        :class:`~dispatchcount.DeviceSpec`): ``.seconds()``, ``.by_module()``, ``.bound()``,
        ``.table(depth)``. Needs ``metrics=(..., "bytes")``. ``tf32=True``: float32 products at
        the TF32 peak (a meta or CPU run records them as float32)."""
        from dispatchcount.roofline import Roofline

        return Roofline(self.counts(), device, tf32=tf32)

    def mfu(self, seconds: float, device: Union[str, "DeviceSpec"]) -> float:
        """Model FLOPs utilization of a run that took ``seconds``: the time forward and backward
        FLOPs (no recompute) take at ``device``'s dense tensor peak of their dtype, / ``seconds``."""
        from dispatchcount.roofline import mfu

        return mfu(self.counts(), seconds, device)

    def hfu(self, seconds: float, device: Union[str, "DeviceSpec"]) -> float:
        """Hardware FLOPs utilization: as :meth:`mfu`, with recomputation's FLOPs."""
        from dispatchcount.roofline import hfu

        return hfu(self.counts(), seconds, device)

    def achieved(self, device: Union[str, "DeviceSpec"]) -> dict[str, dict[str, float]]:
        """Per module, from the measured time (``metrics=(..., "time")``): seconds, FLOP/s and
        fraction of peak; with bytes, bytes/s and the roofline estimate over the measured time."""
        from dispatchcount.roofline import achieved

        return achieved(self.counts(), device)

    def table(self, depth: Optional[int] = 3, device: Union[None, str, "DeviceSpec"] = None, *,
              classes: bool = False, operators: bool = False) -> str:
        """A table by module up to ``depth`` (None: all): parameters, forward, backward and
        total in the convention's unit, share of the total, and a "(self)" line where a module
        ran ops outside its children; with bytes and time recorded, their columns; with
        ``device``, intensity, estimated time and bound. ``classes``: each module's class;
        ``operators``: one line per operator (see :func:`dispatchcount.report.table`).
        Inside the ``with`` block the table says its counts are partial."""
        return report.table(self.counts(), depth, self._estimate(device), classes=classes, operators=operators)

    def to_dict(self, device: Union[None, str, "DeviceSpec"] = None) -> dict[str, Any]:
        """Everything above as a JSON-serializable dict (with ``device``, the roofline too)."""
        return report.to_dict(self.counts(), self._estimate(device))

    def _estimate(self, device: Union[None, str, "DeviceSpec"]) -> Optional["Roofline"]:
        return None if device is None else self.roofline(device)

    def to_html(self, path: str | os.PathLike, device: Union[None, str, "DeviceSpec"] = None) -> None:
        """Write the self-contained HTML report (module icicle, operators, conventions; with
        ``device``, the roofline estimate) to ``path``."""
        Path(path).write_text(report_html.page(self.counts(), estimate=self._estimate(device)), encoding="utf-8")

    def _repr_html_(self) -> str:
        return report_html.notebook(self.counts())


def count_flops(
    model: Callable[..., Any],
    *inputs: Any,
    convention: str = "flop",
    strict: bool = False,
    backward: bool = False,
    **model_kwargs: Any,
) -> FlopMode:
    """Run ``model(*inputs, **model_kwargs)`` under a FlopMode and return the FlopMode.

    ``backward=True``: then the backward of the sum of the floating outputs that require grad
    (:meth:`FlopMode.run_backward`), counted in the backward phase; gradients accumulate in
    the parameters' ``.grad`` as after ``loss.backward()``."""
    if not callable(model):
        raise TypeError(f"model must be a torch.nn.Module or a callable, got {type(model).__name__}")
    named = model if isinstance(model, torch.nn.Module) else None
    with FlopMode(named, convention=convention, strict=strict) as mode:
        output = model(*inputs, **model_kwargs)
        if backward:
            mode.run_backward(output)
    return mode
