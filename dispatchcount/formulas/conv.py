"""Convolutions: one multiply-add per (output point, kernel tap, input channel of its group).

Forward: ``2 * batch * prod(spatial) * prod(weight.shape)``, where ``spatial`` is the output's
spatial size for a convolution and the input's for a transposed one (each input point is
scattered through the kernel), and ``weight.shape`` already divides channels by ``groups``.
This is FlopCounterMode's rule; bias is not counted, as there.

Backward: the input gradient is a (transposed) convolution of the output gradient with the same
multiply-adds as the forward, and so is the weight gradient. FlopCounterMode counts the weight
gradient without dividing by ``groups``; here it is divided, so for grouped convolutions the
backward is ``groups - 1`` forward-costs smaller than FlopCounterMode's (equal for groups=1).
"""

from __future__ import annotations

from typing import Sequence

import torch

from dispatchcount.formulas._helpers import conv_macs, cudnn_tf32, macs_to_flops, matmul_cost, prod
from dispatchcount.registry import register_formula

aten = torch.ops.aten


def conv_flops(
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    out_shape: Sequence[int],
    transposed: bool,
    dtype: torch.dtype,
) -> int:
    """FLOPs of one convolution with input ``x_shape`` and weight ``w_shape`` giving ``out_shape``."""
    return macs_to_flops(conv_macs(x_shape, w_shape, out_shape, transposed), dtype)


def _forward(transposed: bool):
    def formula(x, weight, *args, out=None, **kwargs) -> int:
        return matmul_cost(conv_flops(x.shape, weight.shape, out.shape, transposed, x.dtype), x, out, cudnn_tf32)

    return formula


@register_formula([aten.convolution, aten._convolution, aten.convolution_overrideable])
def convolution_flop(x, weight, bias, stride, padding, dilation, transposed, *args, out=None, **kwargs) -> int:
    return matmul_cost(conv_flops(x.shape, weight.shape, out.shape, transposed, x.dtype), x, out, cudnn_tf32)


register_formula(
    [
        aten.cudnn_convolution,
        aten.cudnn_convolution_relu,
        aten.cudnn_convolution_add_relu,
        aten.miopen_convolution,
        aten.miopen_depthwise_convolution,
        aten.miopen_convolution_relu,
        aten.miopen_convolution_add_relu,
        aten.mkldnn_convolution,
        aten._slow_conv2d_forward,
        aten.slow_conv3d,
        aten.slow_conv3d_forward,
        aten.slow_conv_dilated2d,
        aten.slow_conv_dilated3d,
        aten._conv_depthwise2d,
        aten.conv_depthwise3d,
        aten._nnpack_spatial_convolution,
        aten._mps_convolution,
    ]
)(_forward(transposed=False))

register_formula(
    [
        aten.cudnn_convolution_transpose,
        aten.miopen_convolution_transpose,
        aten.slow_conv_transpose2d,
        aten.slow_conv_transpose3d,
        aten._mps_convolution_transpose,
    ]
)(_forward(transposed=True))


@register_formula(aten.conv_tbc)
def conv_tbc_flop(x, weight, bias, *args, out=None, **kwargs) -> int:
    # x: (time, batch, c_in), weight: (kernel, c_in, c_out), out: (time', batch, c_out)
    out_time, batch, _ = out.shape
    return macs_to_flops(out_time * batch * prod(weight.shape), x.dtype)


def conv_backward_flops(grad_out, x, weight, transposed: bool, output_mask: Sequence[bool]) -> int:
    """Input and weight gradients each cost one forward; the bias gradient is not counted."""
    forward = conv_flops(x.shape, weight.shape, grad_out.shape, transposed, grad_out.dtype)
    return matmul_cost(forward * (bool(output_mask[0]) + bool(output_mask[1])), grad_out, None, cudnn_tf32)


@register_formula(aten.convolution_backward)
def convolution_backward_flop(
    grad_out, x, weight, bias_sizes, stride, padding, dilation, transposed, output_padding, groups,
    output_mask, *args, out=None, **kwargs,
) -> int:
    return conv_backward_flops(grad_out, x, weight, transposed, output_mask)


@register_formula(aten.convolution_backward_overrideable)
def convolution_backward_overrideable_flop(
    grad_out, x, weight, stride, padding, dilation, transposed, output_padding, groups,
    output_mask, *args, out=None, **kwargs,
) -> int:
    return conv_backward_flops(grad_out, x, weight, transposed, output_mask)


@register_formula(aten._slow_conv2d_backward)
def slow_conv2d_backward_flop(grad_out, x, weight, kernel_size, stride, padding, output_mask=(True, True, True), *args, out=None, **kwargs) -> int:
    return conv_backward_flops(grad_out, x, weight, False, output_mask)


@register_formula(aten.mps_convolution_backward)
def mps_convolution_backward_flop(x, grad_out, weight, padding, stride, dilation, groups, output_mask, *args, out=None, **kwargs) -> int:
    return conv_backward_flops(grad_out, x, weight, False, output_mask)


@register_formula(aten.mps_convolution_transpose_backward)
def mps_convolution_transpose_backward_flop(x, grad_out, weight, padding, output_padding, stride, dilation, groups, output_mask, *args, out=None, **kwargs) -> int:
    return conv_backward_flops(grad_out, x, weight, True, output_mask)


@register_formula(aten.conv_tbc_backward)
def conv_tbc_backward_flop(grad_out, x, weight, bias, pad, *args, out=None, **kwargs) -> int:
    # Input and weight gradients, each one forward's multiply-adds.
    out_time, batch, _ = grad_out.shape
    return 2 * macs_to_flops(out_time * batch * prod(weight.shape), grad_out.dtype)
