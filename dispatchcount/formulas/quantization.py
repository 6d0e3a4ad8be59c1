"""Quantization: converting between floating point and integers is floating-point arithmetic.

Per element (docs/conventions.md, "Quantization"): quantize x / scale + zero_point, round,
clamp to [qmin, qmax]: 5; dynamic quantization also finds min and max: +2; dequantize
(q - zero_point) * scale: 2; fake quantization is both: 7; its learnable-scale backward
(recompute, range mask, gradients of x, scale and zero point and their sums): 14; the fused
moving-average observer + fake quantization: 9 (the observer and fake-quant switches are
tensors, i.e. data: both are charged). Ops on quantized (integer) tensors are in zero.py.
"""

from __future__ import annotations

from typing import Any, Callable

from torch._ops import OpOverload

from dispatchcount.formulas._helpers import Tensor, dtype_factor, fixed, register_family, result_tensor

__all__ = ["QUANTIZATION_FLOPS"]

QUANTIZATION_FLOPS = {
    "quantize_per_tensor": 5,
    "quantize_per_channel": 5,
    "quantize_per_tensor_dynamic": 7,
    "fake_quantize_per_tensor_affine_cachemask": 7,
    "fake_quantize_per_channel_affine_cachemask": 7,
    "_fake_quantize_per_tensor_affine_cachemask_tensor_qparams": 7,
    "_fake_quantize_learnable_per_tensor_affine": 7,
    "_fake_quantize_learnable_per_channel_affine": 7,
    "_fake_quantize_learnable_per_tensor_affine_backward": 14,
    "_fake_quantize_learnable_per_channel_affine_backward": 14,
    "_fused_moving_avg_obs_fq_helper": 9,
    "_fused_moving_avg_obs_fq_helper_functional": 9,
}


def _elements(first: Any) -> list:
    return list(first) if isinstance(first, (list, tuple)) else [first]


def _from_float(per_element: int) -> Callable[..., int]:
    # The input is floating point (a list of tensors for quantize_per_tensor.tensors).
    def from_float_flops(first, *args, out=None, **kwargs):
        return per_element * sum(dtype_factor(1, t) * t.numel() for t in _elements(first))

    return from_float_flops


def _dequantize(first, *args, out=None, **kwargs):
    # The input is an integer (quantized) tensor; the arithmetic happens in the float result.
    results = out if isinstance(out, (list, tuple)) else [result_tensor(out)]
    return 2 * sum(dtype_factor(1, t) * t.numel() for t in results if isinstance(t, Tensor))


FAMILY: dict[str, Callable[[OpOverload], Any]] = {
    name: fixed(_from_float(per_element)) for name, per_element in QUANTIZATION_FLOPS.items()
}
FAMILY["dequantize"] = fixed(_dequantize)

register_family(FAMILY)
