"""Drop-in replacements for ``fvcore.nn.FlopCountAnalysis`` and ``fvcore.nn.flop_count_table``.

Migrating is one changed import::

    # from fvcore.nn import FlopCountAnalysis, flop_count_table
    from dispatchcount.fvcore import FlopCountAnalysis, flop_count_table

    flops = FlopCountAnalysis(model, inputs)
    flops.total(), flops.by_module(), flops.by_operator()
    print(flop_count_table(flops))

The model runs once, eagerly, under ``FlopMode(model, convention="fvcore")``: no JIT trace, no
tracer warnings, no "Unsupported operator" gaps. Counts follow fvcore's rules (one multiply-add
is one flop; elementwise ops are free), so totals and per-module counts equal fvcore's on models
fvcore can trace. Matmul-like ops fvcore has no handle for (``scaled_dot_product_attention``,
``baddbmm``, convolutions with ``padding="same"`` ...) are counted too; :meth:`beyond_fvcore`
lists them. See docs/conventions.md for the differences that remain (modules whose output is
unused, modules without ops).
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections import Counter, defaultdict
from typing import Any, Callable, Iterable, Optional, Union

import torch
from torch import nn
from torch._ops import OpOverload

from dispatchcount.formulas.fvcore_rules import FVCORE_OP_NAMES, is_beyond_fvcore
from dispatchcount.mode import FlopMode
from dispatchcount.report import op_name

__all__ = ["FlopCountAnalysis", "flop_count", "flop_count_table", "parameter_count"]

Handle = Optional[Callable[..., Any]]
_logger = logging.getLogger(__name__)


def fvcore_name(operator: str) -> str:
    """The name fvcore's ``by_operator()`` uses for a dispatchcount operator name."""
    name = FVCORE_OP_NAMES.get(operator)
    if name is not None:
        return name
    namespace, _, op = operator.partition(".")
    return op if namespace == "aten" and op else operator


# ---------------------------------------------------------------------------------------------
# set_op_handle: fvcore names -> the dispatched ops they stand for
# ---------------------------------------------------------------------------------------------


def _batch_norm_args(training: Any):
    """Arguments of an aten batch-norm variant without ``training`` -> aten::batch_norm's."""

    def adapt(args: list) -> list:
        flag = training(args) if callable(training) else training
        return [*args[:5], flag, *args[5:7], True]

    return adapt


# fvcore name -> [(dispatched op packet name, overload or None for all, argument adapter)].
# The adapter turns the dispatched op's full argument list into the JIT node's, so that a
# handle written for fvcore reads the inputs where it expects them.
_ALIASES: dict[str, list[tuple[str, Optional[str], Optional[Callable[[list], list]]]]] = {
    "aten::batch_norm": [
        ("native_batch_norm", None, lambda a: [*a[:8], True]),
        ("_native_batch_norm_legit", "default", lambda a: [*a[:8], True]),
        ("_native_batch_norm_legit", "no_stats", lambda a: [*a[:3], None, None, *a[3:6], True]),
        ("_native_batch_norm_legit_no_training", None, _batch_norm_args(False)),
        ("_native_batch_norm_legit_functional", None, lambda a: [*a[:8], True]),
        ("_batch_norm_with_update", None, _batch_norm_args(True)),
        ("_batch_norm_no_update", None, _batch_norm_args(lambda a: a[3] is None and a[4] is None)),
        ("cudnn_batch_norm", None, lambda a: [*a[:8], True]),
        ("miopen_batch_norm", None, lambda a: [*a[:8], True]),
    ],
    "aten::layer_norm": [("native_layer_norm", None, lambda a: [*a[:5], True])],
    "aten::group_norm": [("native_group_norm", None, lambda a: [a[0], a[6], a[1], a[2], a[7], True])],
    "aten::_convolution": [
        ("convolution", None, lambda a: [*a[:9], False, False, True, True]),
        ("_convolution", None, None),
    ],
    "aten::adaptive_avg_pool2d": [("adaptive_avg_pool2d", None, None), ("_adaptive_avg_pool2d", None, None)],
    "aten::softmax": [("softmax", None, None), ("_softmax", None, None)],
    "aten::log_softmax": [("log_softmax", None, None), ("_log_softmax", None, None)],
    "aten::grid_sampler": [
        ("grid_sampler", None, None), ("grid_sampler_2d", None, None), ("grid_sampler_3d", None, None),
        ("_grid_sampler_2d_cpu_fallback", None, None),
    ],
}


def _ops_named(name: str) -> list[tuple[OpOverload, Optional[Callable[[list], list]]]]:
    """The OpOverloads a fvcore op name ("aten::mul") stands for, with argument adapters."""
    if "::" not in name:
        raise ValueError(f"op name must look like 'aten::mul' (fvcore's spelling), got {name!r}")
    namespace, op = name.split("::", 1)
    entries = _ALIASES.get(name) or [(op, None, None)]
    found = []
    for packet_name, overload, adapt in entries:
        try:
            packet = getattr(getattr(torch.ops, namespace), packet_name)
        except (AttributeError, RuntimeError):
            continue
        overloads = [overload] if overload is not None else packet.overloads()
        found += [(getattr(packet, o), adapt) for o in overloads if hasattr(packet, o)]
    return found


class _JitValue:
    """Stands in for a ``torch._C.Value`` so that fvcore-style handles (``handle(inputs,
    outputs)``, reading ``v.type().sizes()``, ``v.toIValue()`` ...) run on dispatched arguments."""

    __slots__ = ("_value",)

    def __init__(self, value: Any) -> None:
        self._value = value

    def isCompleteTensor(self) -> bool:  # noqa: N802 (JIT's spelling)
        return isinstance(self._value, torch.Tensor)

    def type(self) -> "_JitValue":
        return self

    def sizes(self) -> list[int]:
        return [int(s) for s in self._value.shape]

    def dim(self) -> int:
        return self._value.dim()

    def scalarType(self) -> str:  # noqa: N802
        return str(self._value.dtype).replace("torch.", "")

    def toIValue(self) -> Any:  # noqa: N802
        return self._value

    def node(self) -> "_JitValue":
        return self

    def inputs(self) -> list["_JitValue"]:
        return [_JitValue(v) for v in self._value]

    def debugName(self) -> str:  # noqa: N802
        return ""


def _full_args(op: OpOverload, args: tuple, kwargs: dict) -> list:
    """Every schema argument in order, defaults filled in, as a JIT node lists its inputs."""
    values = []
    for i, argument in enumerate(op._schema.arguments):
        if i < len(args) and not argument.kwarg_only:
            values.append(args[i])
        elif argument.name in kwargs:
            values.append(kwargs[argument.name])
        elif argument.has_default_value():
            values.append(argument.default_value)
        else:
            values.append(None)
    return values


def _is_jit_handle(handle: Callable[..., Any]) -> bool:
    """fvcore handles take (inputs, outputs); dispatchcount formulas take (*args, out=...)."""
    try:
        params = inspect.signature(handle).parameters.values()
    except (TypeError, ValueError):
        return True
    if any(p.kind is p.VAR_POSITIONAL for p in params) or any(p.name == "out" for p in params):
        return False
    return True


def _handle_formula(op: OpOverload, adapt: Optional[Callable[[list], list]], handle: Callable[..., Any]):
    """A formula for ``op`` that calls ``handle``, fvcore-style or dispatchcount-style."""
    jit_style = _is_jit_handle(handle)

    def formula(*args: Any, out: Any = None, **kwargs: Any) -> int:
        full = _full_args(op, args, kwargs)
        if adapt is not None:
            full = adapt(full)
        if not jit_style:
            return _as_number(handle(*full, out=out))
        outputs = list(out) if isinstance(out, (tuple, list)) else [out]
        return _as_number(handle([_JitValue(v) for v in full], [_JitValue(v) for v in outputs]))

    return formula


def _as_number(count: Any) -> Any:
    return sum(count.values()) if isinstance(count, Counter) else count


class _AnalysisMode(FlopMode):
    """A FlopMode whose fvcore rules are overridden for some ops (set_op_handle)."""

    def __init__(self, model: nn.Module, overrides: dict) -> None:
        super().__init__(model, convention="fvcore")
        self._overrides = overrides

    def _make_dispatch(self):
        from dispatchcount.fvcore_mode import FvcoreDispatch

        return FvcoreDispatch(self, overrides=self._overrides)


# ---------------------------------------------------------------------------------------------
# FlopCountAnalysis
# ---------------------------------------------------------------------------------------------


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
        self._mode: Optional[FlopMode] = None
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
        mode = self._analyze()
        handled = self._handled_operators()
        result: dict[str, Counter] = {name: Counter() for name in self._module_names()}
        for module, per_op in mode.by_module_and_operator().items():
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
        if self._mode is None:
            raise RuntimeError("Analysis results should be computed before calling unsupported_ops()")
        if self.canonical_module_name(module_name) != "":
            return Counter()
        return Counter({op: calls for op, calls in self._mode.unsupported_ops().items()
                        if _fvcore_spelling(op) not in self._ignored})

    def uncalled_modules(self) -> set[str]:
        """Modules of the model whose forward never ran."""
        self._analyze()
        return {self._aliases[name] for name in self._mode.uncalled_modules() if name in self._aliases}

    def beyond_fvcore(self, module_name: str = "") -> Counter:
        """Counter over operators counted here that fvcore has no handle for (not in fvcore's total)."""
        ops = self.by_module_and_operator()[self.canonical_module_name(module_name)]
        beyond = {fvcore_name(op) for op in self._mode.by_operator() if is_beyond_fvcore(op)}
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
            if not _ops_named(name) and handle is not None:
                raise ValueError(f"set_op_handle: no operator {name!r} in this PyTorch build")
            if handle is None:
                self._ignored.add(name)
            elif not callable(handle):
                raise TypeError(f"set_op_handle: the handle for {name!r} must be callable or None")
            else:
                self._handles[name] = handle
        self._mode = None
        return self

    def clear_op_handles(self) -> "FlopCountAnalysis":
        """Remove every handle, fvcore's defaults included: only handles set afterwards count."""
        self._handles = {}
        self._ignored = set()
        self._defaults = False
        self._mode = None
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

    # -- running -------------------------------------------------------------------------

    def _overrides(self) -> dict:
        overrides = {}
        for name, handle in self._handles.items():
            for op, adapt in _ops_named(name):
                overrides[op] = _handle_formula(op, adapt, handle)
        return overrides

    def _handled_operators(self) -> dict[str, str]:
        """{dispatched operator name: the fvcore name its handle was set for} (set_op_handle)."""
        return {op_name(op): name.split("::", 1)[1]
                for name in self._handles for op, _ in _ops_named(name)}

    def _module_names(self) -> list[str]:
        return list(dict.fromkeys(self._aliases.values()))

    def _analyze(self) -> FlopMode:
        if self._mode is not None:
            return self._mode
        mode = _AnalysisMode(self._model, self._overrides())
        inputs = self._inputs if isinstance(self._inputs, tuple) else (self._inputs,)
        with warnings.catch_warnings():
            if self._warn_trace == "none":
                warnings.simplefilter("ignore")
            if not self._warn_unsupported:
                warnings.filterwarnings("ignore", message="dispatchcount: not counted")
            with mode:
                self._model(*inputs)
        self._mode = mode
        self._report_uncalled()
        return mode

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


# ---------------------------------------------------------------------------------------------
# flop_count_table
# ---------------------------------------------------------------------------------------------


def parameter_count(model: nn.Module) -> Counter:
    """{name: parameters} for every parameter and every module prefix; "" is the whole model."""
    counts: Counter = Counter()
    for name, param in model.named_parameters():
        parts = name.split(".")
        for k in range(len(parts) + 1):
            counts[".".join(parts[:k])] += param.numel()
    return counts


def _format_size(x: float, sig_figs: int = 3) -> str:
    """fvcore's units: K above 1e2, M above 1e5, G above 1e8, T above 1e11, P above 1e14."""
    for threshold, scale, unit in ((1e14, 1e15, "P"), (1e11, 1e12, "T"), (1e8, 1e9, "G"),
                                   (1e5, 1e6, "M"), (1e2, 1e3, "K")):
        if abs(x) > threshold:
            return f"{x / scale:.{sig_figs}f}".rstrip("0").rstrip(".") + unit
    return str(x)


def _children(name: str, names: Iterable[str]) -> list[str]:
    prefix = name + "." if name else ""
    depth = prefix.count(".")
    return [n for n in names if n and n.count(".") == depth and n.startswith(prefix)]


def flop_count_table(
    flops: FlopCountAnalysis,
    max_depth: int = 3,
    activations: Any = None,
    show_param_shapes: bool = True,
) -> str:
    """fvcore's per-module table of parameters and flops, in fvcore's layout.

    ``activations`` may be any object with fvcore's ``by_module()`` and ``uncalled_modules()``.
    """
    import tabulate

    if not isinstance(flops, FlopCountAnalysis):
        raise TypeError(f"flops must be a dispatchcount.fvcore.FlopCountAnalysis, got {type(flops).__name__}")
    params_header = "#parameters" + (" or shape" if show_param_shapes else "")
    columns = [params_header, "#flops"]
    model = flops._model
    flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    per_stat: dict[str, dict[str, int]] = {params_header: dict(parameter_count(model)), "#flops": dict(flops.by_module())}
    uncalled = {"#flops": flops.uncalled_modules()}
    if activations is not None:
        columns.append("#activations")
        per_stat["#activations"] = dict(activations.by_module())
        uncalled["#activations"] = set(activations.uncalled_modules())

    stats: dict[str, dict[str, Any]] = {}
    for column, values in per_stat.items():
        for name, value in values.items():
            stats.setdefault(name, {})[column] = value
    stats = _drop_zero_rows(stats)
    text = {name: {c: _format_size(v) for c, v in row.items()} for name, row in stats.items()}
    for column, names in uncalled.items():
        for name in names & text.keys():
            text[name][column] = ""
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    for name in list(text):
        if name in shapes:
            if show_param_shapes:
                text[name][params_header] = str(shapes[name])
            else:
                del text[name]
    return _layout(text, columns, max_depth, tabulate)


def _drop_zero_rows(stats: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Drop rows whose statistics are all zero, unless a descendant is kept; keep the root."""
    kept: dict[str, dict[str, Any]] = {}

    def visit(name: str) -> bool:
        any_child_kept = False
        for child in _children(name, stats):
            any_child_kept |= visit(child)
        if name == "" or any_child_kept or any(v != 0 for v in stats[name].values()):
            kept[name] = dict(stats[name])
            return True
        return False

    visit("")
    return kept


def _merge_single_child(name: str, rows: dict[str, dict[str, str]]) -> tuple[str, dict[str, str]]:
    """A row whose only child shows the same figures is shown once, under the child's name."""
    while True:
        children = _children(name, rows)
        if len(children) != 1:
            return name, rows[name]
        child = children[0]
        mine, theirs = rows[name], rows[child]
        if mine.keys() != theirs.keys() or any(a != b and a and b for a, b in
                                                ((mine[k], theirs[k]) for k in mine)):
            return name, rows[name]
        rows[child] = {k: mine[k] or theirs[k] for k in mine}
        name = child


def _layout(rows: dict[str, dict[str, str]], columns: list[str], max_depth: int, tabulate: Any) -> str:
    table: list[list[str]] = []

    def add(label: str, row: dict[str, str], level: int) -> None:
        indent = " " * level
        table.append([indent + label] + [indent + row[c] if c in row else "" for c in columns])

    root, row = _merge_single_child("", rows)
    add(root or "model", row, 0)
    root_prefix = root + "." if root else ""

    def descend(prefix: str, level: int) -> None:
        if level > max_depth:
            return
        for name in [n for n in rows if n and n.count(".") == prefix.count(".") and n.startswith(prefix)]:
            name, row = _merge_single_child(name, rows)
            label = name[len(root_prefix):] if root_prefix and name.startswith(root_prefix) else name
            add(label, row, level)
            descend(name + ".", level + 1)

    descend(root_prefix, 1)
    # As fvcore does (so the text is the same as fvcore's with the installed tabulate): the
    # global flag, which tabulate >= 0.10 no longer reads.
    saved, tabulate.PRESERVE_WHITESPACE = tabulate.PRESERVE_WHITESPACE, True
    try:
        return tabulate.tabulate(table, headers=["module"] + columns, tablefmt="pipe")
    finally:
        tabulate.PRESERVE_WHITESPACE = saved
