"""The roofline estimate of a counted run on a named device, and utilization figures.

Per op (all calls of one operator in one module call path, phase and section), the estimated
time is ``max(sum over dtypes of FLOPs / peak(dtype, unit), bytes / bandwidth)``: the tensor-core
peak for matmul, convolution and attention (:func:`compute_unit`), the vector peak for the rest.
The op is "compute"-bound when the first term is the larger, else "memory"-bound. A module's time
is the sum of its ops' (no overlap between kernels); it is "compute"-bound when its compute-bound
ops take at least half of that time. See docs/conventions.md, "Roofline".

``mfu``/``hfu``: the seconds the counted FLOPs take at the device's dense tensor-core peak of
their dtype (the vector peak for a dtype without one), divided by the measured seconds; model
FLOPs leave out activation-checkpointing recomputation, hardware FLOPs include it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional, Union

from dispatchcount.devices import DeviceSpec, device_spec
from dispatchcount.records import BACKWARD, FLOPS, FORWARD, RECOMPUTE, Counts, Row

__all__ = ["Roofline", "OpEstimate", "compute_unit", "mfu", "hfu", "achieved", "TENSOR_CORE_OPERATORS"]

# Products that run on tensor (matrix) cores; with every convolution and attention operator.
TENSOR_CORE_OPERATORS = frozenset({
    "aten.mm", "aten.addmm", "aten.addmm_", "aten._addmm_activation", "aten.bmm", "aten.baddbmm",
    "aten.baddbmm_", "aten.addbmm", "aten.addbmm_", "aten._scaled_mm", "aten._scaled_mm_v2",
    "aten._scaled_grouped_mm", "aten._grouped_mm", "aten._int_mm", "aten._weight_int4pack_mm",
    "aten._weight_int4pack_mm_for_cpu", "aten._weight_int8pack_mm", "aten.mkldnn_linear",
    "aten.linear", "aten.matmul", "aten.einsum", "aten.tensordot", "aten._cudnn_rnn",
    "aten._cudnn_rnn_backward", "aten.miopen_rnn", "aten.miopen_rnn_backward",
    "aten.mkldnn_rnn_layer", "aten.mkldnn_rnn_layer_backward",
})
_MODEL_PHASES = frozenset({FORWARD, BACKWARD})  # model FLOPs: no recompute
_HARDWARE_PHASES = frozenset({FORWARD, BACKWARD, RECOMPUTE})
Device = Union[str, DeviceSpec]


def compute_unit(operator: str) -> str:
    """"tensor" for matmul, convolution and attention operators ("aten.mm", "aten.convolution",
    "aten._scaled_dot_product_flash_attention" ...), "vector" for every other."""
    if operator in TENSOR_CORE_OPERATORS or "attention" in operator or "convolution" in operator:
        return "tensor"
    return "tensor" if operator.startswith(("aten.conv", "aten._conv")) else "vector"


def _is_floating(label: str) -> bool:
    return label == "tf32" or label.startswith(("float", "bfloat", "complex"))


def _require_flops(counts: Counts, what: str) -> None:
    if counts.unit != "FLOPs":
        raise ValueError(
            f"{what} needs FLOPs; this run counted {counts.unit!r} (convention {counts.convention!r}): "
            "count with FlopMode(..., convention='flop')"
        )


@dataclass(frozen=True)
class OpEstimate:
    """The roofline of one op: every call of ``operator`` in one module path, phase and section."""

    names: tuple[str, ...]
    module: str
    operator: str
    phase: str
    section: Optional[str]
    flops: float
    bytes: float
    compute_seconds: float
    memory_seconds: float

    @property
    def seconds(self) -> float:
        return max(self.compute_seconds, self.memory_seconds)

    @property
    def bound(self) -> str:
        return "compute" if self.compute_seconds >= self.memory_seconds else "memory"


class Roofline:
    """Estimated seconds per op and module of a counted run on ``device`` (``fm.roofline``).

    ``tf32=True`` counts float32 FLOPs of tensor-core operators at the TF32 peak (what CUDA
    runs when TF32 is allowed; a run on meta or CPU records them as float32).
    """

    def __init__(self, counts: Counts, device: Device, *, tf32: bool = False) -> None:
        _require_flops(counts, "a roofline")
        counts.slots("bytes")  # a clear error when bytes were not recorded
        self.counts = counts
        self.device = device_spec(device)
        self.tf32 = tf32
        self._ops: dict[Optional[str], list[OpEstimate]] = {}

    # -- per op --------------------------------------------------------------------------

    def ops(self, phase: Optional[str] = None) -> list[OpEstimate]:
        """The estimate of every op of ``phase`` (None: all)."""
        found = self._ops.get(phase)
        if found is None:
            found = self._ops[phase] = self._estimate(self.counts.select(phase))
        return found

    def _estimate(self, rows: Iterable[Row]) -> list[OpEstimate]:
        device = self.device
        byte_slots = self.counts.slots("bytes")
        groups: dict[tuple, list] = {}
        for row in rows:
            key = (row.names, row.module, row.operator, row.phase, row.section)
            group = groups.get(key)
            if group is None:
                group = groups[key] = [0, 0, 0.0]
            flops, moved = row.values[FLOPS], row.value(byte_slots)
            group[0] += flops
            group[1] += moved
            if flops and _is_floating(row.dtype):
                unit = compute_unit(row.operator)
                label = "tf32" if self.tf32 and unit == "tensor" and row.dtype == "float32" else row.dtype
                group[2] += flops / device.peak(label, unit)
        return [
            OpEstimate(*key, flops=f, bytes=b, compute_seconds=c, memory_seconds=b / device.bandwidth)
            for key, (f, b, c) in groups.items()
        ]

    # -- results -------------------------------------------------------------------------

    def seconds(self, phase: Optional[str] = None) -> float:
        """Total estimated seconds (the sum over ops)."""
        return sum(op.seconds for op in self.ops(phase))

    def by_module(self, phase: Optional[str] = None, inclusive: bool = True) -> dict[str, float]:
        """{module: estimated seconds}, inclusive of children unless ``inclusive=False``."""
        result = dict.fromkeys(self.counts.modules, 0.0)
        for op in self.ops(phase):
            for name in op.names if inclusive else (op.module,):
                result[name] = result.get(name, 0.0) + op.seconds
        return result

    def by_operator(self, phase: Optional[str] = None) -> dict[str, float]:
        """{operator: estimated seconds}, largest first."""
        result: dict[str, float] = {}
        for op in self.ops(phase):
            if op.seconds:
                result[op.operator] = result.get(op.operator, 0.0) + op.seconds
        return dict(sorted(result.items(), key=lambda item: -item[1]))

    def bound(self, phase: Optional[str] = None) -> dict[str, str]:
        """{module: "compute" | "memory"} for every module with estimated time."""
        compute: dict[str, float] = {}
        total: dict[str, float] = {}
        for op in self.ops(phase):
            for name in op.names:
                total[name] = total.get(name, 0.0) + op.seconds
                if op.bound == "compute":
                    compute[name] = compute.get(name, 0.0) + op.seconds
        return {name: ("compute" if 2 * compute.get(name, 0.0) >= t else "memory")
                for name, t in total.items() if t > 0}

    def intensity(self, phase: Optional[str] = None) -> dict[str, float]:
        """{module: FLOPs per byte moved} for every module that moved bytes."""
        flops = self.counts.by_module(phase)
        moved = self.counts.by_module(phase, metric="bytes")
        return {name: flops.get(name, 0) / b for name, b in moved.items() if b}

    def table(self, depth: Optional[int] = 3, *, operators: bool = False) -> str:
        """Module tree (None: every module) with FLOPs, bytes, intensity, estimated time, bound
        and share of time (and the measured time and its share of the roofline, when time was
        recorded); ``operators``: a line per operator (see ``dispatchcount.report.table``)."""
        from dispatchcount import report

        return report.roofline_table(self, depth, operators=operators)

    def device_summary(self) -> dict[str, Any]:
        """{name, peak_flops, peak_dtype, bandwidth, peaks}: ``peak_flops`` is the dense tensor
        peak of the dtype with the most FLOPs (bfloat16 when none has a peak)."""
        return device_summary(self.device, self.counts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device_summary(),
            "seconds": self.seconds(),
            "by_module": self.by_module(),
            "bound": self.bound(),
            "by_operator": self.by_operator(),
        }


def device_summary(device: DeviceSpec, counts: Counts) -> dict[str, Any]:
    """{name, peak_flops, peak_dtype, bandwidth, peaks}: ``peak_flops`` is the dense tensor peak
    of the dtype with the most FLOPs in ``counts`` (bfloat16 when none has a peak)."""
    dtype = next((d for d in counts.by_dtype() if _is_floating(d) and _has_peak(device, d)), "bfloat16")
    return {"name": device.name, "peak_flops": device.peak(dtype, "tensor"), "peak_dtype": dtype,
            "bandwidth": device.bandwidth, "peaks": device.to_dict()["peaks"]}


def _has_peak(device: DeviceSpec, dtype: str) -> bool:
    try:
        device.peak(dtype)
    except ValueError:
        return False
    return True


def _peak_seconds(row: Row, device: DeviceSpec) -> float:
    """Seconds of the row's FLOPs at the dense tensor-core peak of their dtype."""
    flops = row.values[FLOPS]
    return flops / device.peak(row.dtype, "tensor") if flops and _is_floating(row.dtype) else 0.0


def _utilization(counts: Counts, seconds: float, device: Device, phases: frozenset, what: str) -> float:
    _require_flops(counts, what)
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds <= 0:
        raise ValueError(f"seconds must be a positive number (the measured time of the counted run), got {seconds!r}")
    spec = device_spec(device)
    return sum(_peak_seconds(row, spec) for row in counts.rows if row.phase in phases) / seconds


def mfu(counts: Counts, seconds: float, device: Device) -> float:
    """Model FLOPs utilization: forward and backward FLOPs, without recompute."""
    return _utilization(counts, seconds, device, _MODEL_PHASES, "mfu")


def hfu(counts: Counts, seconds: float, device: Device) -> float:
    """Hardware FLOPs utilization: every FLOP that ran, recompute included."""
    return _utilization(counts, seconds, device, _HARDWARE_PHASES, "hfu")


def achieved(counts: Counts, device: Device) -> dict[str, dict[str, float]]:
    """Per module, from measured time: seconds, FLOP/s and the fraction of the device's peak;
    with bytes recorded also bytes/s, the estimated seconds and ``roofline`` = estimated / measured
    (1.0: the module runs at its roofline)."""
    _require_flops(counts, "achieved()")
    measured = counts.by_module(metric="seconds")
    flops = counts.by_module()
    has_bytes = "bytes" in counts.metrics
    moved = counts.by_module(metric="bytes") if has_bytes else {}
    estimate = Roofline(counts, device).by_module() if has_bytes else {}
    spec = device_spec(device)
    ideal: dict[str, float] = {}
    for row in counts.rows:
        seconds = _peak_seconds(row, spec)
        for name in row.names:
            ideal[name] = ideal.get(name, 0.0) + seconds
    result = {}
    for name, seconds in measured.items():
        if not seconds:
            continue
        entry = {"seconds": seconds, "flops_per_second": flops.get(name, 0) / seconds,
                 "peak_fraction": ideal.get(name, 0.0) / seconds}
        if has_bytes:
            entry["bytes_per_second"] = moved.get(name, 0) / seconds
            entry["bandwidth_fraction"] = moved.get(name, 0) / seconds / spec.bandwidth
            entry["estimated_seconds"] = estimate.get(name, 0.0)
            entry["roofline"] = estimate.get(name, 0.0) / seconds
        result[name] = entry
    return result
