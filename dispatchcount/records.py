"""What a counting run records, and the ``Counts`` snapshot every report reads.

The dispatch hook writes :class:`Records`: for each (module frame, op, phase, dtype) a list of
metric slots (:data:`SLOTS`), in one dict per section label. Only the hook writes them, and
only through integer slot indices, so that a new metric costs the ops that record it and
nothing else.

:class:`Counts` is an immutable snapshot of one run: rows with names instead of frames and
ops, the model's module names, parameters and calls, and what could not be counted. Totals,
per-module, per-operator, per-dtype and per-section breakdowns are its methods; renderers
(``dispatchcount.report``, the fvcore front) take a ``Counts`` and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional

import torch

__all__ = [
    "SLOTS",
    "FLOPS",
    "CALLS",
    "BYTES_READ",
    "BYTES_WRITTEN",
    "SECONDS",
    "COMM_BYTES",
    "INT_OPS",
    "PHASES",
    "FORWARD",
    "BACKWARD",
    "RECOMPUTE",
    "METRICS",
    "Records",
    "Row",
    "Counts",
    "op_name",
    "dtype_name",
]

SLOTS = ("flops", "calls", "bytes_read", "bytes_written", "seconds", "comm_bytes", "int_ops")
FLOPS, CALLS, BYTES_READ, BYTES_WRITTEN, SECONDS, COMM_BYTES, INT_OPS = range(len(SLOTS))

PHASES = ("forward", "backward", "recompute")
FORWARD, BACKWARD, RECOMPUTE = PHASES
# "backward" includes activation-checkpointing recomputation: it runs during the backward pass.
_SELECTED = {
    None: frozenset(PHASES),
    FORWARD: frozenset({FORWARD}),
    BACKWARD: frozenset({BACKWARD, RECOMPUTE}),
    RECOMPUTE: frozenset({RECOMPUTE}),
}

# Metric name -> the slots it sums. "flops", "calls", "comm_bytes" (the bytes this rank hands
# to collectives, docs/conventions.md "Distributed and tensor subclasses") and "int_ops" (the
# integer operations of kernels whose products run in integers, e.g. quantized ones; not FLOPs)
# are always recorded.
METRICS: dict[str, tuple[int, ...]] = {
    "flops": (FLOPS,),
    "calls": (CALLS,),
    "bytes": (BYTES_READ, BYTES_WRITTEN),
    "bytes_read": (BYTES_READ,),
    "bytes_written": (BYTES_WRITTEN,),
    "seconds": (SECONDS,),
    "comm_bytes": (COMM_BYTES,),
    "int_ops": (INT_OPS,),
}
# The metrics a FlopMode may be asked to record -> the metric names they make available.
RECORDABLE = {
    "flops": ("flops", "calls", "comm_bytes", "int_ops"),
    "bytes": ("bytes", "bytes_read", "bytes_written"),
    "time": ("seconds",),
}

_op_names: dict[Any, str] = {}


def op_name(func: Any) -> str:
    """``aten.mm`` for ``aten.mm.default``: the operator, overloads merged."""
    name = _op_names.get(func)
    if name is None:
        packet = getattr(func, "_overloadpacket", None)
        name = _op_names[func] = str(packet) if packet is not None else str(getattr(func, "__name__", func))
    return name


def dtype_name(dtype: Any) -> str:
    """``"bfloat16"`` for ``torch.bfloat16``; other labels (``"tf32"``) as they are; None as ``"-"``."""
    if isinstance(dtype, torch.dtype):
        return str(dtype).replace("torch.", "")
    return "-" if dtype is None else str(dtype)


class Records:
    """Metric slots by (frame, id(op), phase, dtype), one dict per section label.

    The hook writes ``data`` (the current section's dict) directly; :meth:`new` is its path for
    a key seen for the first time.
    """

    __slots__ = ("sections", "section", "data", "ops")

    def __init__(self) -> None:
        self.sections: dict[Optional[str], dict[tuple, list]] = {None: {}}
        self.section: Optional[str] = None
        self.data = self.sections[None]
        self.ops: dict[int, Any] = {}  # id(op) -> op, for the keys

    def clear(self) -> None:
        """Forget everything recorded; the current section label stays."""
        self.sections = {self.section: {}}
        self.data = self.sections[self.section]
        self.ops = {}

    def new(self, key: tuple, func: Any) -> list:
        """The zeroed slots of a new key for ``func``."""
        self.ops[key[1]] = func
        slots = self.data[key] = [0] * len(SLOTS)
        return slots

    def switch(self, section: Optional[str]) -> Optional[str]:
        """Record into ``section`` from now on; returns the previous label."""
        previous = self.section
        data = self.sections.get(section)
        if data is None:
            data = self.sections[section] = {}
        self.section, self.data = section, data
        return previous

    def items(self) -> Iterator[tuple[Optional[str], tuple, list]]:
        for section, data in self.sections.items():
            for key, slots in data.items():
                yield section, key, slots


@dataclass(frozen=True)
class Row:
    """One record of a snapshot: where, what, which phase, dtype and section, and its slots."""

    names: tuple[str, ...]  # every module the row is charged to, inclusive (outermost first)
    module: str  # the innermost module that ran the op
    operator: str
    phase: str
    dtype: str
    section: Optional[str]
    values: tuple[float, ...]
    path: tuple[str, ...] = ()  # the module calls in progress, outermost ("" the root) first

    def value(self, slots: tuple[int, ...]) -> float:
        if len(slots) == 1:
            return self.values[slots[0]]
        return sum(self.values[s] for s in slots)


def _phases(phase: Optional[str]) -> frozenset:
    try:
        return _SELECTED[phase]
    except (KeyError, TypeError):
        raise ValueError(f"phase must be None, 'forward', 'backward' or 'recompute', got {phase!r}") from None


@dataclass(frozen=True)
class Counts:
    """A snapshot of one counting run; every report is rendered from one.

    ``modules`` lists module names in the model's order ("" is the root); ``params``,
    ``calls`` and ``classes`` are per module name; ``partial`` is true for a snapshot taken
    while the FlopMode was still active.
    """

    convention: str
    unit: str
    rows: tuple[Row, ...]
    modules: tuple[str, ...]
    params: Mapping[str, int]
    calls: Mapping[str, int]
    classes: Mapping[str, str]
    has_model: bool
    model_ran: bool
    unsupported: Mapping[str, int]
    errors: Mapping[str, str]
    uncalled: frozenset
    metrics: tuple[str, ...] = ("flops",)
    beyond_ops: frozenset = frozenset()
    beyond_label: str = ""
    partial: bool = False
    extras: Mapping[str, Any] = field(default_factory=dict)

    # -- selection -------------------------------------------------------------------------

    def slots(self, metric: str) -> tuple[int, ...]:
        """The slots of ``metric``; a ValueError says how to record one that was not."""
        slots = METRICS.get(metric)
        if slots is None:
            raise ValueError(f"metric must be one of {tuple(METRICS)}, got {metric!r}")
        available = {name for recorded in self.metrics for name in RECORDABLE.get(recorded, ())}
        if metric not in available:
            needs = next(k for k, names in RECORDABLE.items() if metric in names)
            raise ValueError(
                f"metric {metric!r} was not recorded: count with FlopMode(..., metrics=(..., {needs!r}))"
            )
        return slots

    def select(self, phase: Optional[str] = None, section: Any = ...) -> Iterator[Row]:
        """Rows of ``phase`` (None: all; "backward" includes recompute) and ``section``
        (``...``: every section; None: outside any section)."""
        phases = _phases(phase)
        for row in self.rows:
            if row.phase in phases and (section is ... or row.section == section):
                yield row

    # -- totals and breakdowns -----------------------------------------------------------

    def total(self, phase: Optional[str] = None, metric: str = "flops") -> float:
        slots = self.slots(metric)
        return sum(row.value(slots) for row in self.select(phase))

    def by_module(self, phase: Optional[str] = None, inclusive: bool = True, metric: str = "flops") -> dict[str, float]:
        """{module: value} for every module name, inclusive of children unless ``inclusive=False``."""
        slots = self.slots(metric)
        result = dict.fromkeys(self.modules, 0)
        for row in self.select(phase):
            value = row.value(slots)
            for name in row.names if inclusive else (row.module,):
                result[name] = result.get(name, 0) + value
        return result

    def by_operator(self, phase: Optional[str] = None, metric: str = "flops") -> dict[str, float]:
        """{operator: value}, largest first, operators with a zero value left out."""
        return _sorted(self._grouped(lambda row: row.operator, phase, metric))

    def by_module_and_operator(
        self, phase: Optional[str] = None, inclusive: bool = True, metric: str = "flops"
    ) -> dict[str, dict[str, float]]:
        slots = self.slots(metric)
        result: dict[str, dict[str, float]] = {name: {} for name in self.modules}
        for row in self.select(phase):
            value = row.value(slots)
            if not value:
                continue
            for name in row.names if inclusive else (row.module,):
                per_op = result.setdefault(name, {})
                per_op[row.operator] = per_op.get(row.operator, 0) + value
        return result

    def by_dtype(self, phase: Optional[str] = None, metric: str = "flops") -> dict[str, float]:
        """{dtype: value}: FLOPs by the dtype the op computes in ("bfloat16", "float32" ...)."""
        return _sorted(self._grouped(lambda row: row.dtype, phase, metric))

    def by_section(self, phase: Optional[str] = None, metric: str = "flops") -> dict[Optional[str], float]:
        """{section label: value}; None holds what ran outside any section."""
        return self._grouped(lambda row: row.section, phase, metric, keep_zero=True)

    def operator_calls(self, phase: Optional[str] = None) -> dict[str, int]:
        """{operator: calls} of every counted call (ops with an explicit zero rule are not recorded)."""
        return self._grouped(lambda row: row.operator, phase, "calls")

    def beyond(self, phase: Optional[str] = None) -> dict[str, float]:
        """{operator: FLOPs} counted here that the convention's reference tool leaves out."""
        return {op: v for op, v in self.by_operator(phase).items() if op in self.beyond_ops}

    @property
    def notes(self) -> Mapping[str, int]:
        """{what was only estimated: calls} (e.g. attention masks without data)."""
        return self.extras.get("notes", {})

    def sections(self) -> list[Optional[str]]:
        return list(dict.fromkeys(row.section for row in self.rows))

    def _grouped(self, key: Any, phase: Optional[str], metric: str, keep_zero: bool = False) -> dict:
        slots = self.slots(metric)
        result: dict = {}
        for row in self.select(phase):
            value = row.value(slots)
            if value or keep_zero:
                k = key(row)
                result[k] = result.get(k, 0) + value
        return result


def _sorted(values: dict) -> dict:
    return dict(sorted(values.items(), key=lambda item: -item[1]))


def snapshot_rows(records: Records) -> tuple[Row, ...]:
    """The rows of ``records``, frames and ops replaced by their names."""
    rows = []
    paths: dict[int, tuple[str, ...]] = {}
    for section, (frame, op_id, phase, dtype), slots in records.items():
        path = paths.get(id(frame))
        if path is None:
            path = paths[id(frame)] = _call_path(frame)
        rows.append(Row(frame.names, frame.name, op_name(records.ops[op_id]), phase,
                        dtype_name(dtype), section, tuple(slots), path))
    return tuple(rows)


def _call_path(frame: Any) -> tuple[str, ...]:
    """The names of the frames from the root to ``frame``: the modules actually being called
    (``Frame.names`` also holds the never-called containers that enclose them by name)."""
    names = []
    while frame is not None:
        names.append(frame.name)
        frame = getattr(frame, "parent", None)
    return tuple(reversed(names))
