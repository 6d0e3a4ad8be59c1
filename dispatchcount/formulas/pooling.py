"""Pooling, upsampling, grid sampling and affine grids, forward and backward.

See docs/conventions.md, "Pooling and resampling":

- max pooling: one comparison per window element per output (``out * prod(kernel)``); its
  backward adds each gradient into one input position (``grad_out`` adds);
- average pooling: ``prod(kernel)`` adds and one divide per output (border windows are
  charged at full size); backward: one divide and ``prod(kernel)`` adds per grad element;
- adaptive pooling: the exact sum of the window sizes, ``start = floor(i*I/O)``,
  ``end = ceil((i+1)*I/O)`` per dimension;
- interpolation: a weighted sum of ``k`` taps is ``2k - 1`` FLOPs per output (linear k=2,
  bilinear 4, trilinear 8, bicubic 16), its backward ``2k`` per grad element; nearest is a copy
  (zero.py) whose backward adds each gradient once; antialiased (``_aa``) resampling is
  separable: one pass per dimension with ``support * max(1, in/out)`` taps;
- grid_sample: coordinate and weight arithmetic per sampled location, plus the tap arithmetic
  per channel; affine_grid: a (d+1)-term dot product per output coordinate.
The weight tables of interpolation (computed once per output row/column) are not counted.
"""

from __future__ import annotations

from functools import lru_cache
from math import ceil, prod
from typing import Any, Callable

import torch
from torch._ops import OpOverload

from dispatchcount.formulas._helpers import (Tensor, arg_reader, fixed, mul_factor, register_family,
    result_tensor, size_hint)

__all__ = ["adaptive_window_sum", "INTERPOLATION_TAPS"]


def _kernel_volume(kernel: Any, ndim: int) -> int:
    # int[2] arguments may arrive as one value meant for every dimension.
    if isinstance(kernel, int):
        return kernel**ndim
    if len(kernel) == 1:
        return kernel[0] ** ndim
    return prod(kernel)


def _window_pool(ndim: int, per_output_extra: int, kernel_arg: str = "kernel_size") -> Callable[[OpOverload], Callable[..., int]]:
    """Fixed-window pooling forward: (prod(kernel) + extra) per output element."""

    def build(op: OpOverload) -> Callable[..., int]:
        read_kernel = arg_reader(op, kernel_arg)

        def window_pool_flops(self, *args, out=None, **kwargs):
            f = mul_factor(self)
            if not f:
                return 0
            k = _kernel_volume(read_kernel((self,) + args, kwargs), ndim)
            return f * (k + per_output_extra) * result_tensor(out).numel()

        return window_pool_flops

    return build


def _avg_pool_backward(ndim: int) -> Callable[[OpOverload], Callable[..., int]]:
    def build(op: OpOverload) -> Callable[..., int]:
        read_kernel = arg_reader(op, "kernel_size")

        def avg_pool_backward_flops(grad_output, *args, out=None, **kwargs):
            f = mul_factor(grad_output)
            if not f:
                return 0
            k = _kernel_volume(read_kernel((grad_output,) + args, kwargs), ndim)
            return f * (k + 1) * grad_output.numel()

        return avg_pool_backward_flops

    return build


def _max_pool_backward_recompute(ndim: int, kernel_index: int) -> Callable[[OpOverload], Callable[..., int]]:
    # Backward without saved indices (max_pool2d_backward, mkldnn): find each window's max
    # again (prod(kernel) comparisons) and add the gradient there (1).
    def build(op: OpOverload) -> Callable[..., int]:
        def flops(grad_output, *args, out=None, **kwargs):
            f = mul_factor(grad_output)
            if not f:
                return 0
            k = _kernel_volume(args[kernel_index - 1], ndim)
            return f * (k + 1) * grad_output.numel()

        return flops

    return build


def _grad_scatter(grad_output, *args, out=None, **kwargs) -> int:
    # One add per gradient element into the input position it came from.
    return mul_factor(grad_output) * grad_output.numel()


@lru_cache(maxsize=4096)
def adaptive_window_sum(in_size: int, out_size: int) -> int:
    """Sum over the ``out_size`` adaptive windows of their lengths along one dimension."""
    return sum(
        -((-(i + 1) * in_size) // out_size) - (i * in_size) // out_size for i in range(out_size)
    )


def _adaptive_reads(inp: Tensor, out_shape: Any, ndim: int) -> int:
    # Elements read by all windows: batch/channel count times the per-dimension window sums.
    lead = prod(inp.shape[:-ndim]) if inp.dim() > ndim else 1
    reads = lead
    for i in range(ndim):
        in_size = size_hint(inp.shape[inp.dim() - ndim + i])  # ints: cacheable, and no guard
        reads *= adaptive_window_sum(in_size, size_hint(out_shape[len(out_shape) - ndim + i]))
    return reads


def _adaptive_avg(ndim: int) -> Callable[..., int]:
    def adaptive_avg_flops(self, *args, out=None, **kwargs):
        f = mul_factor(self)
        if not f:
            return 0
        result = result_tensor(out)
        return f * (_adaptive_reads(self, result.shape, ndim) + result.numel())

    return adaptive_avg_flops


def _adaptive_avg_backward(ndim: int) -> Callable[..., int]:
    # One divide per gradient element, then an add into every position of its window.
    def adaptive_avg_backward_flops(grad_output, self, *args, out=None, **kwargs):
        f = mul_factor(grad_output)
        if not f:
            return 0
        return f * (_adaptive_reads(self, grad_output.shape, ndim) + grad_output.numel())

    return adaptive_avg_backward_flops


def _adaptive_max(ndim: int) -> Callable[..., int]:
    def adaptive_max_flops(self, *args, out=None, **kwargs):
        f = mul_factor(self)
        return f and f * _adaptive_reads(self, result_tensor(out).shape, ndim)

    return adaptive_max_flops


# Interpolation taps per output element.
INTERPOLATION_TAPS = {"linear1d": 2, "bilinear2d": 4, "trilinear3d": 8, "bicubic2d": 16}


def _interp_forward(taps: int) -> Callable[..., int]:
    def interpolate_flops(self, *args, out=None, **kwargs):
        return mul_factor(self) * (2 * taps - 1) * result_tensor(out).numel()

    return interpolate_flops


def _interp_backward(taps: int) -> Callable[..., int]:
    def interpolate_backward_flops(grad_output, *args, out=None, **kwargs):
        return mul_factor(grad_output) * 2 * taps * grad_output.numel()

    return interpolate_backward_flops


# Antialiased kernels: support (in taps at scale 1) of the filter.
_AA_SUPPORT = {"bilinear": 2, "bicubic": 4, "lanczos": 6}


def _aa_taps(support: int, in_size: int, out_size: int) -> int:
    in_size, out_size = size_hint(in_size), size_hint(out_size)
    return ceil(support * max(1.0, in_size / out_size)) if out_size else 0


def _aa_cost(support: int, lead: int, h_in: int, w_in: int, h_out: int, w_out: int) -> int:
    # Horizontal pass to (h_in, w_out), vertical pass to (h_out, w_out): 2 FLOPs per tap.
    tw, th = _aa_taps(support, w_in, w_out), _aa_taps(support, h_in, h_out)
    return lead * (h_in * w_out * 2 * tw + h_out * w_out * 2 * th)


def _aa_forward(support: int) -> Callable[..., int]:
    def aa_flops(self, *args, out=None, **kwargs):
        f = mul_factor(self)
        if not f:
            return 0
        *lead, h_in, w_in = self.shape
        h_out, w_out = result_tensor(out).shape[-2:]
        return f * _aa_cost(support, prod(lead), h_in, w_in, h_out, w_out)

    return aa_flops


def _aa_backward(support: int) -> Callable[[OpOverload], Callable[..., int]]:
    def build(op: OpOverload) -> Callable[..., int]:
        read_input_size = arg_reader(op, "input_size")

        def aa_backward_flops(grad_output, *args, out=None, **kwargs):
            # The transposed passes: the same multiply-adds as the forward.
            f = mul_factor(grad_output)
            if not f:
                return 0
            input_size = read_input_size((grad_output,) + args, kwargs)
            *lead, h_out, w_out = grad_output.shape
            return f * _aa_cost(support, prod(lead), input_size[-2], input_size[-1], h_out, w_out)

        return aa_backward_flops

    return build


# grid_sample: (per location, per location and channel) FLOPs by interpolation mode
# 0 bilinear, 1 nearest, 2 bicubic; 2-D unnormalization is 2 per coordinate (4), non-zero
# padding modes clip or reflect each coordinate (+4).
_GRID_2D = {0: (4 + 8, 7), 1: (4 + 2, 0), 2: (4 + 40, 35)}
_GRID_3D = {0: (6 + 22, 15), 1: (6 + 3, 0)}
# backward: (per location, per location and channel for grad_input, ... for grad_grid)
_GRID_2D_BACKWARD = {0: (4 + 8 + 2, 8, 20), 1: (4 + 2, 1, 0), 2: (4 + 40 + 2, 32, 80)}
_GRID_3D_BACKWARD = {0: (6 + 22 + 3, 16, 48), 1: (6 + 3, 1, 0)}


def _grid_sampler(table: dict, coords: int) -> Callable[..., int]:
    def grid_sampler_flops(input, grid, interpolation_mode=0, padding_mode=0, *args, out=None, **kwargs):
        f = mul_factor(input)
        if not f:
            return 0
        per_location, per_channel = table.get(interpolation_mode, table[0])
        if padding_mode:
            per_location += 2 * coords
        locations = grid.numel() // coords
        return f * locations * (per_location + input.shape[1] * per_channel)

    return grid_sampler_flops


def _grid_sampler_backward(table: dict, coords: int) -> Callable[..., int]:
    def grid_sampler_backward_flops(grad_output, input, grid, interpolation_mode=0, padding_mode=0,
                                    align_corners=False, output_mask=None, *args, out=None, **kwargs):
        f = mul_factor(input)
        if not f:
            return 0
        per_location, grad_input, grad_grid = table.get(interpolation_mode, table[0])
        if padding_mode:
            per_location += 2 * coords
        want_input = output_mask is None or output_mask[0]
        want_grid = output_mask is None or output_mask[1]
        per_channel = want_input * grad_input + want_grid * grad_grid
        locations = grid.numel() // coords
        return f * locations * (per_location + input.shape[1] * per_channel)

    return grid_sampler_backward_flops


_grid_sampler_2d = _grid_sampler(_GRID_2D, 2)
_grid_sampler_2d_backward = _grid_sampler_backward(_GRID_2D_BACKWARD, 2)


def _cudnn_grid_sampler(self, grid, *args, out=None, **kwargs):
    # cuDNN samples bilinearly with zero padding.
    return _grid_sampler_2d(self, grid, 0, 0)


def _cudnn_grid_sampler_backward(self, grid, grad_output, *args, out=None, **kwargs):
    return _grid_sampler_2d_backward(grad_output, self, grid, 0, 0)


def _affine_grid(theta, *args, out=None, **kwargs):
    # Each output coordinate is a dot product of theta's row with (x, y[, z], 1): 2 (d + 1).
    result = result_tensor(out)
    d = result.shape[-1]
    return mul_factor(theta) * 2 * (d + 1) * result.numel()


def _cudnn_affine_grid(theta, N, C, H, W, *args, out=None, **kwargs):
    return mul_factor(theta) * 2 * 3 * N * H * W * 2


def _cudnn_affine_grid_backward(grad, N, C, H, W, *args, out=None, **kwargs):
    # grad_theta = grad^T @ base grid: the same multiply-adds as the forward.
    return mul_factor(grad) * 2 * 3 * N * H * W * 2


def _make_family() -> dict[str, Callable[[OpOverload], Any]]:
    family: dict[str, Callable[[OpOverload], Any]] = {}
    for nd in (1, 2, 3):
        family[f"max_pool{nd}d_with_indices"] = _window_pool(nd, 0)
        family[f"mkldnn_max_pool{nd}d"] = _window_pool(nd, 0)
        family[f"avg_pool{nd}d"] = _window_pool(nd, 1)
        family[f"fractional_max_pool{nd}d"] = _window_pool(nd, 0)
        family[f"max_pool{nd}d_with_indices_backward"] = fixed(_grad_scatter)
        family[f"adaptive_max_pool{nd}d_backward"] = fixed(_grad_scatter)
        family[f"fractional_max_pool{nd}d_backward"] = fixed(_grad_scatter)
        family[f"avg_pool{nd}d_backward"] = _avg_pool_backward(nd)
        family[f"adaptive_avg_pool{nd}d"] = fixed(_adaptive_avg(nd))
        family[f"_adaptive_avg_pool{nd}d"] = fixed(_adaptive_avg(nd))
        family[f"adaptive_avg_pool{nd}d_backward"] = fixed(_adaptive_avg_backward(nd))
        family[f"_adaptive_avg_pool{nd}d_backward"] = fixed(_adaptive_avg_backward(nd))
        family[f"adaptive_max_pool{nd}d"] = fixed(_adaptive_max(nd))
        family[f"upsample_nearest{nd}d_backward"] = fixed(_grad_scatter)
        family[f"_upsample_nearest_exact{nd}d_backward"] = fixed(_grad_scatter)
    family["max_pool2d_backward"] = _max_pool_backward_recompute(2, 2)
    # mkldnn backward: (grad_output, output, input, kernel_size, ...)
    family["mkldnn_max_pool2d_backward"] = _max_pool_backward_recompute(2, 3)
    family["mkldnn_max_pool3d_backward"] = _max_pool_backward_recompute(3, 3)
    family["mkldnn_adaptive_avg_pool2d"] = fixed(_adaptive_avg(2))
    family["mkldnn_adaptive_avg_pool2d_backward"] = fixed(_adaptive_avg_backward(2))
    for mode, taps in INTERPOLATION_TAPS.items():
        family[f"upsample_{mode}"] = fixed(_interp_forward(taps))
        family[f"upsample_{mode}_backward"] = fixed(_interp_backward(taps))
    for mode, support in _AA_SUPPORT.items():
        family[f"_upsample_{mode}2d_aa"] = fixed(_aa_forward(support))
        family[f"_upsample_{mode}2d_aa_backward"] = _aa_backward(support)
    family["grid_sampler_2d"] = fixed(_grid_sampler_2d)
    family["_grid_sampler_2d_cpu_fallback"] = fixed(_grid_sampler_2d)
    family["grid_sampler_3d"] = fixed(_grid_sampler(_GRID_3D, 3))
    family["grid_sampler_2d_backward"] = fixed(_grid_sampler_2d_backward)
    family["_grid_sampler_2d_cpu_fallback_backward"] = fixed(_grid_sampler_2d_backward)
    family["grid_sampler_3d_backward"] = fixed(_grid_sampler_backward(_GRID_3D_BACKWARD, 3))
    family["cudnn_grid_sampler"] = fixed(_cudnn_grid_sampler)
    family["cudnn_grid_sampler_backward"] = fixed(_cudnn_grid_sampler_backward)
    family["affine_grid_generator"] = fixed(_affine_grid)
    family["cudnn_affine_grid_generator"] = fixed(_cudnn_affine_grid)
    family["cudnn_affine_grid_generator_backward"] = fixed(_cudnn_affine_grid_backward)
    # The loops above name every dimensionality; keep the ops PyTorch defines.
    return {name: rule for name, rule in family.items() if hasattr(torch.ops.aten, name)}


FAMILY = _make_family()
register_family(FAMILY)
