"""fvcore's ``FlopCountAnalysis`` and ``flop_count``, counted at dispatch instead of by JIT tracing.

The model runs once, eagerly, under ``FlopMode(model, convention="fvcore")``: no JIT trace, no
tracer warnings, no "Unsupported operator" gaps. Counts follow fvcore's rules (one multiply-add
is one flop; elementwise ops are free), so totals and per-module counts equal fvcore's on models
fvcore can trace. Matmul-like ops fvcore has no handle for (``scaled_dot_product_attention``,
``baddbmm``, convolutions with ``padding="same"`` ...) are counted too; :meth:`beyond_fvcore`
lists them. See docs/conventions.md for the differences that remain (modules whose output is
unused, modules without ops).
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter, defaultdict
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from dispatchcount.fvcore.handles import handle_formula, ops_named
from dispatchcount.fvcore.rules import fvcore_name
from dispatchcount.mode import FlopMode
from dispatchcount.records import Counts, op_name

__all__ = ["FlopCountAnalysis", "flop_count"]

Handle = Optional[Callable[..., Any]]
_logger = logging.getLogger(__name__)


class FlopCountAnalysis:
    """fvcore's ``FlopCountAnalysis`` API, counted at dispatch instead of by JIT tracing.

    Args:
        model: the module to analyze; it runs once, on the first request for a result.
        inputs: a tensor or a tuple of positional inputs (``model(*inputs)``).

    Counts are fvcore's (one multiply-add = 1) and ints. ``by_operator`` keys follow fvcore's
    names ("conv", "linear", "batch_norm" ...) where the dispatched op maps to one.
    """

    def __init__(self, model: nn.Module, inputs: Union[torch.Tensor, tuple]) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self._model = model
        self._inputs = inputs
        self._handles: dict[str, Callable[..., Any]] = {}
        self._ignored: set[str] = set()
        self._defaults = True
        self._aliases = _module_aliases(model)
        self._counts: Optional[Counts] = None
        self._warn_unsupported = True
        self._warn_uncalled = True
        self._warn_trace = "no_tracer_warning"
        self._ancestor_mode = "owner"

    # -- results -------------------------------------------------------------------------

    def total(self, module_name: str = "") -> int:
        """Total count of module ``module_name`` ("" is the model)."""
        return sum(self.by_operator(module_name).values())

    def by_operator(self, module_name: str = "") -> Counter:
        """Counter over operators for module ``module_name``."""
        return self.by_module_and_operator()[self.canonical_module_name(module_name)]

    def by_module(self) -> Counter:
        """Counter over every module name (children included in their parents)."""
        return Counter({name: sum(ops.values()) for name, ops in self.by_module_and_operator().items()})

    def by_module_and_operator(self) -> dict[str, Counter]:
        """{module: Counter over operators}, every module of the model included."""
        counts = self._analyze()
        handled = self._handled_operators()
        result: dict[str, Counter] = {name: Counter() for name in self._module_names()}
        for module, per_op in counts.by_module_and_operator().items():
            if module not in result:
                continue
            for operator, flops in per_op.items():
                name = handled.get(operator)
                if name is not None:
                    result[module][name] += flops
                elif self._defaults:
                    result[module][fvcore_name(operator)] += flops
        return result

    def unsupported_ops(self, module_name: str = "") -> Counter:
        """Ops that ran with no rule ({name: calls}); aten ops always have one under fvcore's
        rules. Only known for the whole model: other module names get an empty Counter."""
        if self._counts is None:
            raise RuntimeError("Analysis results should be computed before calling unsupported_ops()")
        if self.canonical_module_name(module_name) != "":
            return Counter()
        return Counter({op: calls for op, calls in self._counts.unsupported.items()
                        if _fvcore_spelling(op) not in self._ignored})

    def uncalled_modules(self) -> set[str]:
        """Modules of the model whose forward never ran."""
        counts = self._analyze()
        return {self._aliases[name] for name in counts.uncalled if name in self._aliases}

    def beyond_fvcore(self, module_name: str = "") -> Counter:
        """Counter over operators counted here that fvcore has no handle for (not in fvcore's total)."""
        ops = self.by_module_and_operator()[self.canonical_module_name(module_name)]
        beyond = {fvcore_name(op) for op in self._counts.beyond_ops}
        return Counter({op: flops for op, flops in ops.items() if op in beyond})

    # -- settings (fvcore's chainable setters) -------------------------------------------

    def set_op_handle(self, *args: Any, **kwargs: Handle) -> "FlopCountAnalysis":
        """Set handles for ops named as fvcore names them (``"aten::mul"``), for this analysis.

        A handle is either fvcore-style, ``handle(inputs, outputs)`` with JIT-value-like
        arguments (``v.type().sizes()``, ``v.toIValue()``), or a dispatchcount formula,
        ``formula(*args, out=None, **kwargs)``; it returns a number or a Counter. ``None`` marks
        an op as ignored (as in fvcore, that does not remove an existing handle). For a rule
        that applies everywhere, use ``dispatchcount.register_formula(op, convention="fvcore")``.
        """
        if len(args) % 2:
            raise TypeError("set_op_handle should be called with pairs of names and handles!")
        pairs = dict(zip(args[::2], args[1::2]))
        pairs.update(kwargs)
        for name, handle in pairs.items():
            if not ops_named(name) and handle is not None:
                raise ValueError(f"set_op_handle: no operator {name!r} in this PyTorch build")
            if handle is None:
                self._ignored.add(name)
            elif not callable(handle):
                raise TypeError(f"set_op_handle: the handle for {name!r} must be callable or None")
            else:
                self._handles[name] = handle
        self._counts = None
        return self

    def clear_op_handles(self) -> "FlopCountAnalysis":
        """Remove every handle, fvcore's defaults included: only handles set afterwards count."""
        self._handles = {}
        self._ignored = set()
        self._defaults = False
        self._counts = None
        return self

    def tracer_warnings(self, mode: str) -> "FlopCountAnalysis":
        """'all', 'no_tracer_warning' (default) or 'none' (silence warnings raised by the model)."""
        if mode not in ("all", "no_tracer_warning", "none"):
            raise ValueError(f"Unrecognized tracer warning mode {mode}.")
        self._warn_trace = mode
        return self

    def ancestor_mode(self, mode: str) -> "FlopCountAnalysis":
        """Accepted for compatibility: ops count for the running module and its owners."""
        if mode not in ("owner", "caller"):
            raise ValueError(f"Unrecognized ancestor mode: {mode}")
        self._ancestor_mode = mode
        return self

    def unsupported_ops_warnings(self, enabled: bool) -> "FlopCountAnalysis":
        self._warn_unsupported = enabled
        return self

    def uncalled_modules_warnings(self, enabled: bool) -> "FlopCountAnalysis":
        self._warn_uncalled = enabled
        return self

    def canonical_module_name(self, name: str) -> str:
        """The name results use for module ``name`` (a shared module's first name)."""
        if not isinstance(name, str):
            raise TypeError(f"module name must be a string, got {type(name).__name__}")
        try:
            return self._aliases[name]
        except KeyError:
            raise KeyError(f"Requested module name {name!r} is not among the descendants of the analyzed model.") from None

    def copy(self, new_model: Optional[nn.Module] = None, new_inputs: Any = None) -> "FlopCountAnalysis":
        """A new analysis with the same settings, on ``new_model`` / ``new_inputs`` if given."""
        other = FlopCountAnalysis(self._model if new_model is None else new_model,
                                  self._inputs if new_inputs is None else new_inputs)
        other._handles, other._ignored, other._defaults = dict(self._handles), set(self._ignored), self._defaults
        other._warn_unsupported, other._warn_uncalled = self._warn_unsupported, self._warn_uncalled
        other._warn_trace, other._ancestor_mode = self._warn_trace, self._ancestor_mode
        return other

    @property
    def model(self) -> nn.Module:
        """The analyzed model."""
        return self._model

    # -- running -------------------------------------------------------------------------

    def _overrides(self) -> dict:
        overrides = {}
        for name, handle in self._handles.items():
            for op, adapt in ops_named(name):
                overrides[op] = handle_formula(op, adapt, handle)
        return overrides

    def _handled_operators(self) -> dict[str, str]:
        """{dispatched operator name: the fvcore name its handle was set for} (set_op_handle)."""
        return {op_name(op): name.split("::", 1)[1]
                for name in self._handles for op, _ in ops_named(name)}

    def _module_names(self) -> list[str]:
        return list(dict.fromkeys(self._aliases.values()))

    def _analyze(self) -> Counts:
        if self._counts is not None:
            return self._counts
        mode = FlopMode(self._model, convention="fvcore", formulas=self._overrides())
        inputs = self._inputs if isinstance(self._inputs, tuple) else (self._inputs,)
        with warnings.catch_warnings():
            if self._warn_trace == "none":
                warnings.simplefilter("ignore")
            if not self._warn_unsupported:
                warnings.filterwarnings("ignore", message="dispatchcount: not counted")
            with mode:
                self._model(*inputs)
        self._counts = mode.counts()
        self._report_uncalled()
        return self._counts

    def _report_uncalled(self) -> None:
        if not self._warn_uncalled:
            return
        uncalled = sorted(name for name in self.uncalled_modules() if _has_forward(self._model, name))
        if uncalled:
            _logger.warning(
                "The following submodules of the model were never called: they are unused, or "
                "were run through .forward() or other methods (their counts then go to the "
                "calling module).\n" + ", ".join(uncalled)
            )


def flop_count(
    model: nn.Module, inputs: tuple, supported_ops: Optional[dict[str, Callable[..., Any]]] = None
) -> tuple[defaultdict, Counter]:
    """fvcore's ``flop_count``: ({operator: GFlops}, Counter of unsupported operators).

    ``supported_ops`` adds or replaces handles, as ``FlopCountAnalysis.set_op_handle``.
    """
    analysis = FlopCountAnalysis(model, inputs).set_op_handle(**(supported_ops or {}))
    giga = defaultdict(float)
    for operator, flops in analysis.by_operator().items():
        giga[operator] = flops / 1e9
    return giga, analysis.unsupported_ops()


def _fvcore_spelling(operator: str) -> str:
    namespace, _, op = operator.partition(".")
    return f"{namespace}::{op}" if op else operator


def _module_aliases(model: nn.Module) -> dict[str, str]:
    """Every name of every module (shared modules have several) -> its first name."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        canonical = first.setdefault(id(module), name)
        aliases[name] = canonical
    return aliases


def _has_forward(model: nn.Module, name: str) -> bool:
    """Containers and Identity are not expected to be called: no warning for them."""
    module = model.get_submodule(name) if name else model
    forward = type(module).forward
    return all(forward is not base.forward for base in (nn.ModuleList, nn.ModuleDict, nn.Module, nn.Identity))


