"""Accelerator specs for the roofline: memory bandwidth and dense peak FLOP/s by dtype and unit.

A peak is given per dtype label (as ``Counts.by_dtype`` names them: "bfloat16", "float32",
"tf32", "float8" for every fp8 format ...) and per unit: ``"tensor"`` (tensor / matrix cores:
matmul, convolution, attention) and ``"vector"`` (CUDA cores / SIMD: everything else). All
figures are dense (no 2:4 sparsity): half of the "with sparsity" figures of the datasheets.
Each built-in spec names its sources; docs/conventions.md ("Roofline") lists them too.

Where a vendor publishes no non-tensor half-precision rate (B200, MI300X), the vector peak of
float16/bfloat16 is the float32 vector rate: PyTorch's elementwise kernels compute half types
in float32 anyway (``opmath_type``), and such ops are memory-bound in practice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Union

__all__ = ["DeviceSpec", "devices", "device_spec", "dtype_label"]

UNITS = ("tensor", "vector")


def dtype_label(dtype: Any) -> str:
    """The peak-table label of a dtype: "float8" for every fp8 format, the real dtype for a
    complex one ("complex64" computes in "float32"), else its name without "torch."."""
    name = str(dtype).replace("torch.", "")
    if name.startswith("float8"):
        return "float8"
    return {"complex32": "float16", "complex64": "float32", "complex128": "float64",
            "half": "float16", "float": "float32", "double": "float64"}.get(name, name)


@dataclass(frozen=True)
class DeviceSpec:
    """An accelerator: ``bandwidth`` in bytes/s and dense ``peaks`` in FLOP/s.

    ``peaks`` maps a dtype (label, or ``torch.dtype``) to ``{"tensor": FLOP/s, "vector":
    FLOP/s}`` (either may be absent), or to one number used for both units.
    ``DeviceSpec("my-gpu", 2e12, peaks={"bfloat16": {"tensor": 400e12, "vector": 50e12}})``.
    """

    name: str
    bandwidth: float
    peaks: Mapping[str, Mapping[str, float]] = field(default_factory=dict, hash=False)
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.bandwidth, (int, float)) or self.bandwidth <= 0:
            raise ValueError(f"bandwidth must be a positive number of bytes/s, got {self.bandwidth!r}")
        if not isinstance(self.peaks, Mapping):
            raise TypeError(f"peaks must be a mapping of dtype to FLOP/s, got {type(self.peaks).__name__}")
        normalized: dict[str, dict[str, float]] = {}
        for dtype, value in self.peaks.items():
            units = dict.fromkeys(UNITS, value) if isinstance(value, (int, float)) else dict(value)
            for unit, flops in units.items():
                if unit not in UNITS:
                    raise ValueError(f"peaks[{dtype!r}]: unit must be 'tensor' or 'vector', got {unit!r}")
                if not isinstance(flops, (int, float)) or flops <= 0:
                    raise ValueError(f"peaks[{dtype!r}][{unit!r}] must be a positive FLOP/s, got {flops!r}")
            normalized[dtype_label(dtype)] = {u: float(f) for u, f in units.items()}
        object.__setattr__(self, "peaks", normalized)
        object.__setattr__(self, "bandwidth", float(self.bandwidth))

    def peak(self, dtype: Any, unit: str = "tensor") -> float:
        """Dense FLOP/s of ``dtype`` on ``unit``; a unit without a figure falls back to the
        other one ("tf32" has only a tensor peak, "float32" on NVIDIA only a vector one)."""
        if unit not in UNITS:
            raise ValueError(f"unit must be 'tensor' or 'vector', got {unit!r}")
        units = self.peaks.get(dtype_label(dtype))
        if not units:
            raise ValueError(
                f"device {self.name!r} has no peak for dtype {dtype_label(dtype)!r} (it has "
                f"{sorted(self.peaks)}); give one with DeviceSpec(..., peaks={{...}})"
            )
        found = units.get(unit)
        return found if found is not None else units["vector" if unit == "tensor" else "tensor"]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "bandwidth": self.bandwidth,
                "peaks": {d: dict(u) for d, u in self.peaks.items()}, "source": self.source}


def _spec(name: str, bandwidth: float, source: str, **peaks: Mapping[str, float]) -> DeviceSpec:
    return DeviceSpec(name, bandwidth, peaks=peaks, source=source)


# NVIDIA H100 Tensor Core GPU Architecture whitepaper, H100 SXM5 column: FP64 33.5, FP64 Tensor
# 66.9, FP32 66.9, TF32 Tensor 494.7, BF16/FP16 Tensor 989.4, FP8 Tensor 1978.9, BF16/FP16
# non-tensor 133.8 TFLOPS dense. The H200 SXM has the same compute (H200 datasheet: FP64 34, FP64
# Tensor 67, FP32 67, TF32 989*, BF16/FP16 1979*, FP8 3958* TFLOPS, * with sparsity).
_H100_SXM_PEAKS = dict(
    float64={"tensor": 66.9e12, "vector": 33.5e12},
    float32={"vector": 66.9e12},
    tf32={"tensor": 494.7e12},
    bfloat16={"tensor": 989.4e12, "vector": 133.8e12},
    float16={"tensor": 989.4e12, "vector": 133.8e12},
    float8={"tensor": 1978.9e12},
)

devices: dict[str, DeviceSpec] = {
    spec.name: spec
    for spec in (
        # NVIDIA A100 Tensor Core GPU datasheet (A100 80GB SXM column): FP64 9.7, FP64 Tensor
        # 19.5, FP32 19.5, TF32 Tensor 156, BF16/FP16 Tensor 312 TFLOPS dense; 2,039 GB/s.
        # Non-tensor FP16 78 and BF16 39 TFLOPS: NVIDIA A100 Tensor Core GPU Architecture
        # whitepaper, Table 1.
        _spec("a100-sxm-80gb", 2039e9,
              "NVIDIA A100 datasheet (80GB SXM); A100 architecture whitepaper, Table 1 (non-tensor FP16/BF16)",
              float64={"tensor": 19.5e12, "vector": 9.7e12},
              float32={"vector": 19.5e12},
              tf32={"tensor": 156e12},
              bfloat16={"tensor": 312e12, "vector": 39e12},
              float16={"tensor": 312e12, "vector": 78e12}),
        # Peaks above; H100 datasheet (SXM): 3.35 TB/s.
        _spec("h100-sxm", 3.35e12,
              "NVIDIA H100 architecture whitepaper (H100 SXM5 peaks); NVIDIA H100 datasheet (SXM bandwidth)",
              **_H100_SXM_PEAKS),
        # NVIDIA H200 Tensor Core GPU datasheet (H200 SXM): 4.8 TB/s HBM3e; the H100's peaks.
        _spec("h200", 4.8e12,
              "NVIDIA H200 datasheet (SXM: bandwidth; compute equal to H100 SXM); H100 architecture whitepaper (peaks)",
              **_H100_SXM_PEAKS),
        # NVIDIA HGX B200 datasheet, per GPU: FP64/FP64 Tensor 37, FP32 75 TFLOPS; TF32 2.2,
        # FP16/BF16 4.5, FP8 9 PFLOPS with sparsity (halved here); 7.7 TB/s HBM3e. No
        # non-tensor half-precision figure is published: the FP32 rate is used.
        _spec("b200", 7.7e12,
              "NVIDIA HGX B200 datasheet (per-GPU figures)",
              float64={"tensor": 37e12, "vector": 37e12},
              float32={"vector": 75e12},
              tf32={"tensor": 1100e12},
              bfloat16={"tensor": 2250e12, "vector": 75e12},
              float16={"tensor": 2250e12, "vector": 75e12},
              float8={"tensor": 4500e12}),
        # NVIDIA L4 Tensor Core GPU datasheet: FP32 30.3 TFLOPS; TF32 120, BF16/FP16 242, FP8
        # 485 TFLOPS with sparsity (halved here); 300 GB/s. Ada runs non-tensor FP16/BF16 at the
        # FP32 rate and FP64 at 1/64 of it (NVIDIA Ada GPU architecture whitepaper).
        _spec("l4", 300e9,
              "NVIDIA L4 datasheet; NVIDIA Ada GPU architecture whitepaper (non-tensor FP16 and FP64 rates)",
              float64={"vector": 30.3e12 / 64},
              float32={"vector": 30.3e12},
              tf32={"tensor": 60e12},
              bfloat16={"tensor": 121e12, "vector": 30.3e12},
              float16={"tensor": 121e12, "vector": 30.3e12},
              float8={"tensor": 242.5e12}),
        # AMD Instinct MI300X datasheet: FP64 vector 81.7, FP64 matrix 163.4, FP32 vector 163.4,
        # FP32 matrix 163.4, TF32 matrix 653.7, FP16/BF16 matrix 1307.4, FP8 matrix 2614.9
        # TFLOPS dense; 5.3 TB/s HBM3. No half-precision vector figure: the FP32 rate is used.
        _spec("mi300x", 5.3e12,
              "AMD Instinct MI300X datasheet",
              float64={"tensor": 163.4e12, "vector": 81.7e12},
              float32={"tensor": 163.4e12, "vector": 163.4e12},
              tf32={"tensor": 653.7e12},
              bfloat16={"tensor": 1307.4e12, "vector": 163.4e12},
              float16={"tensor": 1307.4e12, "vector": 163.4e12},
              float8={"tensor": 2614.9e12}),
    )
}


def device_spec(device: Union[str, DeviceSpec]) -> DeviceSpec:
    """``device`` itself, or the built-in spec of that name; a ValueError names the choices."""
    if isinstance(device, DeviceSpec):
        return device
    found = devices.get(device) if isinstance(device, str) else None
    if found is None:
        raise ValueError(f"device must be a DeviceSpec or one of {sorted(devices)}, got {device!r}")
    return found
