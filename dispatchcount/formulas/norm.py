"""Normalization layers, forward and backward: batch, layer, group, RMS and weight norm.

With ``n`` elements normalized in ``G`` groups (G = rows for layer/RMS norm, N*groups for
group norm, channels for batch norm), see docs/conventions.md, "Normalization":

- statistics: mean (1 add per element, 1 divide per group) and variance (subtract, square,
  add per element, 1 divide per group), then rsqrt(var + eps) (2 per group): 4n + 4G;
- normalize: (x - mean) * rstd: 2n; affine: weight 1n, bias 1n, when given;
- batch norm in eval mode uses the running statistics: rsqrt(var + eps) per channel (2C);
  the running-stat update in training costs 3C for the mean and 4C for the (unbiased) var;
- RMS norm: mean of squares (2n + G), rsqrt(ms + eps) (2G), x * rstd (n), weight (n).

Backward (per element, ĝ = g * weight): x̂ = (x - mean) * rstd (2n, RMS: 1n); grad_input =
rstd * (ĝ - mean(ĝ) - x̂ * mean(ĝ x̂)): sums 3n, product, two subtractions and the scaling 4n,
two means per group (2G), plus n for ĝ; grad_weight = sum(g x̂): 2n; grad_bias = sum(g): n.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch._ops import OpOverload

from dispatchcount.formulas._helpers import Tensor, arg_reader, fixed, mul_factor, register_family
from dispatchcount.formulas.reduction import norm_cost
from dispatchcount.registry import register_formula

__all__ = [
    "normalize_forward_cost",
    "normalize_backward_cost",
    "batch_norm_forward_cost",
]


def normalize_forward_cost(n: int, groups: int, weight: bool, bias: bool) -> int:
    """Statistics, normalization and affine transform of ``n`` elements in ``groups`` groups."""
    return 4 * n + 4 * groups + 2 * n + weight * n + bias * n


def normalize_backward_cost(n: int, groups: int, weight: bool, mask: Any) -> int:
    """Gradients of a mean/variance normalization; ``mask`` = (input, weight, bias) wanted."""
    want_input, want_weight, want_bias = _mask3(mask)
    flops = 2 * n if (want_input or want_weight) else 0  # x̂
    if want_input:
        flops += weight * n + 7 * n + 2 * groups
    if want_weight:
        flops += 2 * n
    if want_bias:
        flops += n
    return flops


def batch_norm_forward_cost(
    x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], training: bool, update: bool
) -> int:
    """Batch norm over channel dim 1: batch statistics in training, running ones in eval."""
    n = x.numel()
    channels = x.shape[1] if x.dim() > 1 else 1
    affine = (weight is not None) * n + (bias is not None) * n
    if not training:
        return 2 * channels + 2 * n + affine
    return normalize_forward_cost(n, channels, weight is not None, bias is not None) + (
        7 * channels if update else 0
    )


def _mask3(mask: Any) -> tuple[bool, bool, bool]:
    if mask is None:
        return True, True, True
    return bool(mask[0]), bool(mask[1]), bool(mask[2]) if len(mask) > 2 else False


def _native_batch_norm(input, weight, bias, running_mean, running_var, training, *args, out=None, **kwargs):
    f = mul_factor(input)
    return f and f * batch_norm_forward_cost(input, weight, bias, training, running_mean is not None)


def _bn_legit(op: OpOverload) -> Callable[..., int]:
    if op._overloadname.startswith("no_stats"):
        def no_stats(input, weight, bias, training, *args, out=None, **kwargs):
            f = mul_factor(input)
            return f and f * batch_norm_forward_cost(input, weight, bias, training, False)
        return no_stats
    return _native_batch_norm


def _bn_legit_no_training(input, weight, bias, *args, out=None, **kwargs):
    f = mul_factor(input)
    return f and f * batch_norm_forward_cost(input, weight, bias, False, False)


def _bn_with_update(input, weight, bias, *args, out=None, **kwargs):
    f = mul_factor(input)
    return f and f * batch_norm_forward_cost(input, weight, bias, True, True)


def _bn_no_update(input, weight, bias, running_mean, *args, out=None, **kwargs):
    # Without running statistics the batch's own are computed; with them, eval mode.
    f = mul_factor(input)
    return f and f * batch_norm_forward_cost(input, weight, bias, running_mean is None, False)


def _accelerator_bn(input, weight, bias, running_mean, running_var, training, *args, out=None, **kwargs):
    f = mul_factor(input)
    return f and f * batch_norm_forward_cost(input, weight, bias, training, running_mean is not None)


def _bn_backward_cost(grad_out: Tensor, input: Tensor, weight: Any, train: bool, mask: Any) -> int:
    n = input.numel()
    channels = input.shape[1] if input.dim() > 1 else 1
    if train:
        return normalize_backward_cost(n, channels, weight is not None, mask)
    # Eval: statistics are constants; grad_input = g * (weight * rstd): n (+C for the scale).
    want_input, want_weight, want_bias = _mask3(mask)
    return (want_input * (n + channels) + want_weight * (2 * n + 2 * n) + want_bias * n)


def _native_bn_backward(grad_out, input, weight, running_mean, running_var, save_mean, save_invstd,
                        train, eps, output_mask=None, *args, out=None, **kwargs):
    f = mul_factor(input)
    return f and f * _bn_backward_cost(grad_out, input, weight, train, output_mask)


def _bn_backward(grad_out, input, weight, running_mean, running_var, save_mean, save_var,
                 update, eps, output_mask=None, *args, out=None, **kwargs):
    # batch_norm_backward: saved batch statistics are present when the forward trained.
    f = mul_factor(input)
    return f and f * _bn_backward_cost(grad_out, input, weight, save_mean is not None, output_mask)


def _accelerator_bn_backward(input, grad_output, weight, *args, out=None, **kwargs):
    # cudnn/miopen backward runs only after a training forward, all three gradients.
    f = mul_factor(input)
    return f and f * _bn_backward_cost(grad_output, input, weight, True, None)


def _bn_stats(input, *args, out=None, **kwargs):
    # Per-channel mean and invstd of the batch: the statistics part (4n + 4C).
    f = mul_factor(input)
    channels = input.shape[1] if input.dim() > 1 else 1
    return f and f * (4 * input.numel() + 4 * channels)


def _bn_elemt(input, weight, bias, *args, out=None, **kwargs):
    f = mul_factor(input)
    n = input.numel()
    return f and f * (2 * n + (weight is not None) * n + (bias is not None) * n)


def _bn_gather_stats(input, mean, invstd, running_mean, *args, out=None, **kwargs):
    # Combine per-device (count, mean, invstd) into global ones: ~8 per device and channel,
    # then the running-stat update (7C) when running stats are given.
    f = mul_factor(input)
    channels = mean.shape[-1]
    return f and f * (8 * mean.numel() + (7 * channels if running_mean is not None else 0))


def _bn_update_stats(input, running_mean, running_var, *args, out=None, **kwargs):
    # Batch mean and variance (4n + 2C, no rsqrt), then the running-stat update (7C).
    f = mul_factor(input)
    channels = input.shape[1] if input.dim() > 1 else 1
    return f and f * (4 * input.numel() + 2 * channels + 7 * channels)


def _bn_backward_reduce(grad_out, input, mean, invstd, *args, out=None, **kwargs):
    # sum(g) (n) and sum(g (x - mean)) (3n); grad_weight = the latter * invstd (C).
    f = mul_factor(input)
    return f and f * (4 * input.numel() + mean.numel())


def _bn_backward_elemt(grad_out, input, mean, *args, out=None, **kwargs):
    # (g - mean_dy - (x - mean) invstd^2 mean_dy_xmu) * invstd * w: 6 per element, ~5 per channel.
    f = mul_factor(input)
    return f and f * (6 * input.numel() + 5 * mean.numel())


def _groups_of(x: Tensor, normalized_shape: Any) -> int:
    m = 1
    for s in normalized_shape:
        m *= s
    return x.numel() // m if m else 0


def _layer_norm(input, normalized_shape, weight=None, bias=None, *args, out=None, **kwargs):
    f = mul_factor(input)
    n = input.numel()
    return f and f * normalize_forward_cost(
        n, _groups_of(input, normalized_shape), weight is not None, bias is not None
    )


def _layer_norm_backward(grad_out, input, normalized_shape, mean, rstd, weight=None, bias=None,
                         output_mask=None, *args, out=None, **kwargs):
    f = mul_factor(input)
    groups = _groups_of(input, normalized_shape)
    return f and f * normalize_backward_cost(input.numel(), groups, weight is not None, output_mask)


def _group_norm(input, weight, bias, N, C, HxW, group, *args, out=None, **kwargs):
    f = mul_factor(input)
    return f and f * normalize_forward_cost(
        input.numel(), N * group, weight is not None, bias is not None
    )


def _group_norm_backward(grad_out, input, mean, rstd, weight, N, C, HxW, group, output_mask=None,
                         *args, out=None, **kwargs):
    f = mul_factor(input)
    return f and f * normalize_backward_cost(input.numel(), N * group, weight is not None, output_mask)


def _rms_norm(input, normalized_shape, weight=None, *args, out=None, **kwargs):
    # mean of squares (2n + G), rsqrt(ms + eps) (2G), x * rstd (n), weight (n).
    f = mul_factor(input)
    n, groups = input.numel(), _groups_of(input, normalized_shape)
    return f and f * (3 * n + 3 * groups + (weight is not None) * n)


def _rms_norm_backward(grad_out, input, normalized_shape, rstd, weight=None, output_mask=None,
                       *args, out=None, **kwargs):
    # x̂ = x * rstd (n); grad_input = rstd (ĝ - x̂ mean(ĝ x̂)): ĝ (n if weight), ĝ x̂ and its sum
    # (2n), one mean per row, x̂ * mean, subtract, scale (3n); grad_weight = sum(g x̂) (2n).
    f = mul_factor(input)
    n, groups = input.numel(), _groups_of(input, normalized_shape)
    want_input = output_mask is None or output_mask[0]
    want_weight = output_mask is None or output_mask[1]
    flops = n
    if want_input:
        flops += (weight is not None) * n + 5 * n + groups
    if want_weight and weight is not None:
        flops += 2 * n
    return f and f * flops


def _weight_norm(v, g, *args, out=None, **kwargs):
    # ||v|| over all dims but ``dim`` (2n + K, K = g.numel()), then v * (g / ||v||) (n + K).
    f = mul_factor(v)
    return f and f * (3 * v.numel() + 2 * g.numel())


def _weight_norm_backward(grad_w, saved_v, saved_g, saved_norms, *args, out=None, **kwargs):
    # grad_g = sum(grad_w v) / ||v|| (2n + K); grad_v = (g/||v||)(grad_w - v grad_g/||v||): 3n + 3K.
    f = mul_factor(saved_v)
    k = saved_g.numel()
    return f and f * (5 * saved_v.numel() + 4 * k)


def _renorm(op: OpOverload) -> Callable[..., int]:
    read_p, read_dim = arg_reader(op, "p", 2), arg_reader(op, "dim", 0)

    def renorm_flops(self, *args, out=None, **kwargs):
        # Norm of each slice along ``dim`` (K slices), compare with maxnorm and form the scale
        # (2K), rescale every element (n).
        f = mul_factor(self)
        if not f:
            return 0
        full = (self,) + args
        k = self.shape[read_dim(full, kwargs)] if self.dim() else 1
        n = self.numel()
        return f * (norm_cost(read_p(full, kwargs), n, k) + n + 2 * k)

    return renorm_flops


def _embedding_renorm(self, indices, max_norm, norm_type, *args, out=None, **kwargs):
    # Each looked-up row (upper bound: one per index; duplicates are data) is normed, compared
    # and rescaled: norm_cost + D + 2 per row.
    f = mul_factor(self)
    if not f:
        return 0
    rows = indices.numel()
    d = self.shape[-1] if self.dim() else 1
    return f * (norm_cost(norm_type, rows * d, rows) + rows * d + 2 * rows)


FAMILY: dict[str, Callable[[OpOverload], Any]] = {
    "native_batch_norm": fixed(_native_batch_norm),
    "_native_batch_norm_legit": _bn_legit,
    "_native_batch_norm_legit_functional": fixed(_native_batch_norm),
    "_native_batch_norm_legit_no_training": fixed(_bn_legit_no_training),
    "_batch_norm_with_update": fixed(_bn_with_update),
    "_batch_norm_with_update_functional": fixed(_bn_with_update),
    "_batch_norm_no_update": fixed(_bn_no_update),
    "cudnn_batch_norm": fixed(_accelerator_bn),
    "miopen_batch_norm": fixed(_accelerator_bn),
    "native_batch_norm_backward": fixed(_native_bn_backward),
    "batch_norm_backward": fixed(_bn_backward),
    "cudnn_batch_norm_backward": fixed(_accelerator_bn_backward),
    "miopen_batch_norm_backward": fixed(_accelerator_bn_backward),
    "batch_norm_stats": fixed(_bn_stats),
    "batch_norm_elemt": fixed(_bn_elemt),
    "batch_norm_gather_stats": fixed(_bn_gather_stats),
    "batch_norm_gather_stats_with_counts": fixed(_bn_gather_stats),
    "batch_norm_update_stats": fixed(_bn_update_stats),
    "batch_norm_backward_reduce": fixed(_bn_backward_reduce),
    "batch_norm_backward_elemt": fixed(_bn_backward_elemt),
    "native_layer_norm": fixed(_layer_norm),
    "native_layer_norm_backward": fixed(_layer_norm_backward),
    "native_group_norm": fixed(_group_norm),
    "native_group_norm_backward": fixed(_group_norm_backward),
    "_fused_rms_norm_backward": fixed(_rms_norm_backward),
    "_weight_norm_interface": fixed(_weight_norm),
    "_weight_norm_interface_backward": fixed(_weight_norm_backward),
    "renorm": _renorm,
    "embedding_renorm": fixed(_embedding_renorm),
}

register_family(FAMILY)

# _fused_rms_norm is CompositeImplicit with CUDA, MPS and XPU kernels: a rule of its own keeps
# the counter from running the decomposition where the kernel would run.
register_formula(torch.ops.aten._fused_rms_norm.default)(_rms_norm)
