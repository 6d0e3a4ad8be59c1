"""fvcore's ``JitModelAnalysis``, ``FlopCountAnalysis`` and ``flop_count``, counted at dispatch.

The model runs once, eagerly, under ``FlopMode(model, convention="fvcore")``: no JIT trace and
no tracer warnings. Results are then attributed as fvcore attributes them (:class:`JitModelAnalysis`):

- an op counts for its module's *owners* (ancestor mode "owner", fvcore's default): the
  innermost module running and every module its (first) name is nested in, or for every module
  in the *call* (mode "caller");
- a handle (``set_op_handle``) returning a number is filed under the op's name, a Counter under
  its keys; ops without a handle are "unsupported" (listed, with their calls, per module),
  unless fvcore ignores them (shape ops, copies ...);
- modules never called, and (mode "owner") not the owner of a module that was, are "uncalled".

``FlopCountAnalysis`` counts with this convention's rules (fvcore's handles, plus the matmul-like
ops fvcore has no handle for, listed by :meth:`JitModelAnalysis.beyond_fvcore`), until
``clear_op_handles()``. See docs/conventions.md for what differs from fvcore and why.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar, Union

import torch
from torch import nn

from dispatchcount.fvcore.handles import (
    PYTHON_OP,
    autograd_function_handles,
    handle_formula,
    jit_name,
    jit_rule_handle,
    key_of,
    ops_named,
)
from dispatchcount.fvcore.rules import fvcore_name, is_uncounted
from dispatchcount.mode import FlopMode
from dispatchcount.records import CALLS, FLOPS, FORWARD, Counts

__all__ = ["JitModelAnalysis", "FlopCountAnalysis", "flop_count", "Statistics", "_DEFAULT_SUPPORTED_OPS",
           "_IGNORED_OPS"]

Handle = Optional[Callable[..., Any]]
T = TypeVar("T", bound="JitModelAnalysis")
_logger = logging.getLogger(__name__)

aten = torch.ops.aten

# fvcore's list of ops that do no arithmetic (shapes, integers, copies): never "unsupported".
_IGNORED_OPS: frozenset[str] = frozenset(f"aten::{name}" for name in (
    "Int", "ScalarImplicit", "__and__", "arange", "bitwise_not", "cat", "chunk", "clamp", "clamp_",
    "constant_pad_nd", "contiguous", "copy_", "detach", "dropout", "empty", "eq", "expand", "flatten",
    "floor", "floor_divide", "full", "full_like", "gather", "ge", "gt", "index", "index_put_",
    "masked_fill", "max", "narrow", "new_empty", "new_full", "new_zeros", "nonzero", "ones", "permute",
    "relu", "relu_", "remainder", "reshape", "roll", "select", "size", "slice", "split",
    "split_with_sizes", "squeeze", "stack", "t", "to", "transpose", "type_as", "unbind", "unsqueeze",
    "unsqueeze_", "view", "zeros", "zeros_like",
))

_DEFAULT_SUPPORTED_OPS: dict[str, Callable[..., Any]] = {
    "aten::addmm": jit_rule_handle(aten.addmm.default),
    "aten::bmm": jit_rule_handle(aten.bmm.default),
    "aten::_convolution": jit_rule_handle(aten._convolution.default, key="conv"),
    "aten::einsum": jit_rule_handle(aten.einsum.default),
    "aten::matmul": jit_rule_handle(aten.matmul.default),
    "aten::mm": jit_rule_handle(aten.mm.default),
    "aten::linear": jit_rule_handle(aten.linear.default),
    "aten::batch_norm": jit_rule_handle(aten.batch_norm.default),
    "aten::group_norm": jit_rule_handle(aten.group_norm.default),
    "aten::layer_norm": jit_rule_handle(aten.layer_norm.default),
    "aten::instance_norm": jit_rule_handle(aten.instance_norm.default),
    "aten::upsample_nearest2d": jit_rule_handle(aten.upsample_nearest2d.vec),
    "aten::upsample_bilinear2d": jit_rule_handle(aten.upsample_bilinear2d.vec),
    "aten::adaptive_avg_pool2d": jit_rule_handle(aten.adaptive_avg_pool2d.default),
    "aten::grid_sampler": jit_rule_handle(aten.grid_sampler.default),
}
"""fvcore's default flop handles, as fvcore-style ``handle(inputs, outputs)`` functions computing
this convention's rules from JIT values (a trace's ``torch._C.Value``, or the JIT-value shim).
``FlopCountAnalysis`` counts with the same rules on the dispatched ops."""


@dataclass
class Statistics:
    """What one analysis found: per module, counts by name and unsupported ops by calls."""

    counts: dict[str, Counter]
    unsupported_ops: dict[str, Counter]
    uncalled_mods: set[str]
    beyond: dict[str, Counter]
    snapshot: Counts


class JitModelAnalysis:
    """fvcore's ``JitModelAnalysis``: per-module statistics from op handles, here counted at
    dispatch instead of from a JIT trace.

    Args:
        model: the module to analyze; it runs once, on the first request for a result.
        inputs: a tensor or a tuple of positional inputs (``model(*inputs)``).

    Only the ops with a handle (``set_op_handle``) count; the others are listed by
    :meth:`unsupported_ops`. Results are cached until a handle changes.
    """

    _counts_by_default = False  # FlopCountAnalysis: this convention's rules count too

    def __init__(self, model: nn.Module, inputs: Union[torch.Tensor, tuple]) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self._model = model
        self._inputs = inputs
        self._op_handles: dict[str, Callable[..., Any]] = {}
        self._ignored_ops: set[str] = set(_IGNORED_OPS)
        self._default_rules = self._counts_by_default
        self._named_modules = dict(model.named_modules(remove_duplicate=False))
        self._aliases = _module_aliases(model)
        self._stats: Optional[Statistics] = None
        self.unsupported_ops_warnings(True)
        self.uncalled_modules_warnings(True)
        self.tracer_warnings("no_tracer_warning")
        self.ancestor_mode("owner")

    # -- results -------------------------------------------------------------------------

    def total(self, module_name: str = "") -> int:
        """Total count of module ``module_name`` ("" is the model)."""
        return sum(self.by_operator(module_name).values())

    def by_operator(self, module_name: str = "") -> Counter:
        """Counter over operators for module ``module_name``."""
        stats = self._analyze()
        return stats.counts[self.canonical_module_name(module_name)]

    def by_module(self) -> Counter:
        """Counter over every module name (children included in their parents)."""
        return Counter({name: sum(ops.values()) for name, ops in self._analyze().counts.items()})

    def by_module_and_operator(self) -> dict[str, Counter]:
        """{module: Counter over operators}, every module of the model included."""
        return self._analyze().counts

    def unsupported_ops(self, module_name: str = "") -> Counter:
        """{op: calls} of the ops that ran in module ``module_name`` without a handle (fvcore's
        spelling, "aten::mul"), except the ops fvcore ignores and those set to None."""
        if self._stats is None:
            raise RuntimeError("Analysis results should be computed before calling unsupported_ops()")
        return self._stats.unsupported_ops[self.canonical_module_name(module_name)]

    def uncalled_modules(self) -> set[str]:
        """Modules never called; in ancestor mode "owner", also not the owner of a called one."""
        return set(self._analyze().uncalled_mods)

    def beyond_fvcore(self, module_name: str = "") -> Counter:
        """The part of :meth:`by_operator` that fvcore's own rules leave out: matmul-like ops
        fvcore has no handle for (attention, baddbmm, recurrent layers, fp8/int8 GEMMs ...)."""
        return self._analyze().beyond[self.canonical_module_name(module_name)]

    # -- settings (fvcore's chainable setters) -------------------------------------------

    def set_op_handle(self: T, *args: Any, **kwargs: Handle) -> T:
        """Set handles for ops named as fvcore names them (``"aten::mul"``), for this analysis.

        A handle is either fvcore-style, ``handle(inputs, outputs)`` with JIT-value-like
        arguments (``v.type().sizes()``, ``v.toIValue()``), or a dispatchcount formula,
        ``formula(*args, out=None, **kwargs)``; it returns a number (filed under the op's name)
        or a Counter (filed under its keys). ``"prim::PythonOp.<Name>"`` sets the handle of
        the custom ``torch.autograd.Function`` called ``Name``. ``None`` marks an op as ignored
        (as in fvcore, that does not remove an existing handle).
        """
        if len(args) % 2:
            raise TypeError("set_op_handle should be called with pairs of names and handles!")
        pairs = dict(zip(args[::2], args[1::2]))
        pairs.update(kwargs)
        for name, handle in pairs.items():
            if handle is None:
                self._ignored_ops.add(name)
                continue
            if not callable(handle):
                raise TypeError(f"set_op_handle: the handle for {name!r} must be callable or None")
            if not name.startswith(PYTHON_OP) and not ops_named(name):
                raise ValueError(f"set_op_handle: no operator {name!r} in this PyTorch build")
            self._op_handles[name] = handle
        self._stats = None
        return self

    def clear_op_handles(self: T) -> T:
        """Remove every handle (this convention's rules included): only handles set afterwards count."""
        self._op_handles = {}
        self._ignored_ops = set(_IGNORED_OPS)
        self._default_rules = False
        self._stats = None
        return self

    def tracer_warnings(self: T, mode: str) -> T:
        """'all', 'no_tracer_warning' (default; nothing is traced here, so the same as 'all') or
        'none' (silence the warnings the model raises while it runs)."""
        if mode not in ("all", "no_tracer_warning", "none"):
            raise ValueError(f"Unrecognized tracer warning mode {mode}.")
        self._warn_trace = mode
        return self

    def ancestor_mode(self: T, mode: str) -> T:
        """Which modules an op counts for: "owner" (default), the innermost running module and
        every module its name is nested in; "caller", every module being called."""
        if mode not in ("owner", "caller"):
            raise ValueError(f"Unrecognized ancestor mode: {mode}")
        self._ancestor_mode = mode
        if self._stats is not None:
            self._stats = self._statistics(self._stats.snapshot)
        return self

    def unsupported_ops_warnings(self: T, enabled: bool) -> T:
        """Log "Unsupported operator ... encountered N time(s)" after the run (default True)."""
        self._enable_warn_unsupported_ops = enabled
        return self

    def uncalled_modules_warnings(self: T, enabled: bool) -> T:
        """Log the modules that were never called after the run (default True)."""
        self._enable_warn_uncalled_mods = enabled
        return self

    def canonical_module_name(self, name: str) -> str:
        """The name results use for module ``name`` (a shared module's first name)."""
        if not isinstance(name, str):
            raise TypeError(f"module name must be a string, got {type(name).__name__}")
        try:
            return self._aliases[name]
        except KeyError:
            raise KeyError(f"Requested module name {name!r} is not among the descendants of the analyzed model.") from None

    def copy(self: T, new_model: Optional[nn.Module] = None, new_inputs: Any = None) -> T:
        """A new analysis with the same handles and settings, on ``new_model`` / ``new_inputs``."""
        other = type(self)(self._model if new_model is None else new_model,
                           self._inputs if new_inputs is None else new_inputs)
        other._op_handles, other._ignored_ops = dict(self._op_handles), set(self._ignored_ops)
        other._default_rules = self._default_rules
        other.unsupported_ops_warnings(self._enable_warn_unsupported_ops)
        other.uncalled_modules_warnings(self._enable_warn_uncalled_mods)
        other.tracer_warnings(self._warn_trace).ancestor_mode(self._ancestor_mode)
        return other

    @property
    def model(self) -> nn.Module:
        """The analyzed model."""
        return self._model

    # -- running ---------------------------------------------------------------------------

    def _analyze(self) -> Statistics:
        if self._stats is None:
            self._stats = self._statistics(self._run())
            self._warn_unsupported_ops(self._stats.unsupported_ops[""], self._stats.snapshot.errors)
            self._warn_uncalled_mods(self._stats.uncalled_mods)
        return self._stats

    def _run(self) -> Counts:
        formulas, functions = {}, {}
        for name, handle in self._op_handles.items():
            if name.startswith(PYTHON_OP):
                functions[name] = handle
                continue
            for op, adapt in ops_named(name):
                formulas[op] = handle_formula(op, adapt, handle, name)
        mode = FlopMode(self._model, convention="fvcore", formulas=formulas)
        inputs = self._inputs if isinstance(self._inputs, tuple) else (self._inputs,)
        with warnings.catch_warnings():
            if self._warn_trace == "none":
                warnings.simplefilter("ignore")
            # reported as fvcore reports them, by unsupported_ops() and its log
            warnings.filterwarnings("ignore", message="dispatchcount: not counted")
            with autograd_function_handles(functions), mode:
                self._model(*inputs)
        return mode.counts()

    def _statistics(self, snapshot: Counts) -> Statistics:
        names = list(dict.fromkeys(self._aliases.values()))
        known = set(names)
        counts = {name: Counter() for name in names}
        unsupported = {name: Counter() for name in names}
        beyond = {name: Counter() for name in names}
        kinds: dict[str, tuple[str, str, bool]] = {}
        for row in snapshot.rows:
            if row.phase != FORWARD:
                continue
            kind = kinds.get(row.operator)
            if kind is None:
                kind = kinds[row.operator] = self._kind(row.operator, snapshot)
            what, name, is_beyond = kind
            if what == "ignored":
                continue
            ancestors = self._ancestors(row, known)
            if what == "counted":
                value = Counter({name: row.values[FLOPS]})
                for module in ancestors:
                    counts[module] += value  # Counter addition keeps positive counts only, as fvcore
                    if is_beyond:
                        beyond[module] += value
            else:
                calls = Counter({name: int(row.values[CALLS])})
                for module in ancestors:
                    unsupported[module] += calls
        for operator, calls in snapshot.unsupported.items():  # formulas that raised: the model only
            if operator in snapshot.errors:
                key = key_of(operator)
                unsupported[""][jit_name(operator) if key is None else f"prim::{key}"] += calls
        return Statistics(counts, unsupported, self._uncalled(snapshot, names), beyond, snapshot)

    def _kind(self, operator: str, snapshot: Counts) -> tuple[str, str, bool]:
        """("counted", fvcore's name, beyond fvcore) or ("unsupported" | "ignored", the JIT name)."""
        key = key_of(operator)
        if key is not None:
            return "counted", key, False
        without_rule = operator in snapshot.unsupported and operator not in snapshot.errors
        if self._default_rules and not is_uncounted(operator) and not without_rule:
            return "counted", fvcore_name(operator), operator in snapshot.beyond_ops
        name = jit_name(operator)
        return ("ignored" if name in self._ignored_ops else "unsupported"), name, False

    def _ancestors(self, row: Any, known: set[str]) -> set[str]:
        if self._ancestor_mode == "caller":
            return {name for name in row.path if name in known}
        return {name for name in _prefixes(row.module) if name in known}

    def _uncalled(self, snapshot: Counts, names: list[str]) -> set[str]:
        called = {name for name in snapshot.calls if name in self._aliases}
        if self._ancestor_mode == "owner":
            called |= {prefix for name in called for prefix in _prefixes(name)}
        return {name for name in names if name not in called}

    def _warn_unsupported_ops(self, ops: Counter, errors: dict[str, str]) -> None:
        if not self._enable_warn_unsupported_ops:
            return
        for op, calls in ops.items():
            _logger.warning("Unsupported operator %s encountered %d time(s)", op, calls)
        for op, message in errors.items():
            _logger.warning("The rule or handle for %s raised (those calls are not counted): %s", op, message)

    def _warn_uncalled_mods(self, uncalled: set[str]) -> None:
        if not self._enable_warn_uncalled_mods:
            return
        shown = sorted(name for name in uncalled if _has_forward(self._named_modules.get(name)))
        if shown:
            _logger.warning(
                "The following submodules of the model were never called: they are unused, or "
                "were run through .forward() or other methods (their counts then go to the "
                "calling module).\n" + ", ".join(shown)
            )


class FlopCountAnalysis(JitModelAnalysis):
    """fvcore's ``FlopCountAnalysis``: flops per module and operator, one multiply-add = 1.

    Counts with this convention's rules (fvcore's default handles, and the matmul-like ops
    fvcore has none for: see :meth:`beyond_fvcore`); handles set with ``set_op_handle`` take
    precedence, and ``clear_op_handles()`` leaves only the handles set afterwards.
    ``by_operator`` keys are fvcore's names ("conv", "linear", "batch_norm" ...).
    """

    _counts_by_default = True


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


def _prefixes(name: str) -> list[str]:
    """"a.b.c" -> ["", "a", "a.b", "a.b.c"]."""
    if not name:
        return [""]
    parts = name.split(".")
    return [""] + [".".join(parts[: k + 1]) for k in range(len(parts))]


def _module_aliases(model: nn.Module) -> dict[str, str]:
    """Every name of every module (shared modules have several) -> its first name."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        aliases[name] = first.setdefault(id(module), name)
    return aliases


def _has_forward(module: Optional[nn.Module]) -> bool:
    """Containers and Identity are not expected to be called: no warning for them."""
    if module is None:
        return False
    forward = type(module).forward
    return all(forward is not base.forward for base in (nn.ModuleList, nn.ModuleDict, nn.Module, nn.Identity))
