"""Losses, forward and backward: a per-element cost plus the reduction.

Per element of the input (see docs/conventions.md, "Losses"), then the reduction: ``none``
costs 0, ``sum`` one add per element, ``mean`` one add per element and one divide. Backward
costs are per grad_input element, +1 for the 1/n scale of ``mean``. ``cross_entropy`` and
``l1_loss`` are CompositeImplicit: they reach the counter as log_softmax + nll_loss and
sub + abs + mean.
"""

from __future__ import annotations

from typing import Any, Callable

from torch._ops import OpOverload

from dispatchcount.formulas._helpers import Tensor, fixed, mul_factor, register_family

__all__ = ["reduction_cost", "LOSS_FLOPS", "LOSS_BACKWARD_FLOPS"]

MEAN, SUM = 1, 2  # torch's Reduction enum: 0 none, 1 mean, 2 sum


def reduction_cost(n: int, reduction: int) -> int:
    """Reducing ``n`` per-element losses: none 0, sum n, mean n + 1."""
    if reduction == MEAN:
        return n + 1
    if reduction == SUM:
        return n
    return 0


# FLOPs per element of the input.
LOSS_FLOPS = {
    "mse_loss": 2,         # (x - y)^2
    "smooth_l1_loss": 6,   # d = x - y, |d|, |d| < beta, then 0.5 d^2 / beta (3) or |d| - beta/2
    "huber_loss": 5,       # d, |d|, |d| < delta, then 0.5 d^2 (2) or delta (|d| - delta/2) (2)
    "soft_margin_loss": 5,  # log(1 + exp(-y x))
}
LOSS_BACKWARD_FLOPS = {
    "mse_loss_backward": 3,         # 2 (x - y) g
    "smooth_l1_loss_backward": 5,   # d, |d| < beta, d / beta or sign(d), times g
    "huber_loss_backward": 4,       # d, |d| < delta, d or delta sign(d), times g
    "soft_margin_loss_backward": 8,  # z = exp(-y x) (3); -y z / (1 + z) g (5)
}


def _elementwise_loss(per_element: int) -> Callable[..., int]:
    def loss_flops(self, target, reduction=MEAN, *args, out=None, **kwargs):
        n = max(self.numel(), target.numel())
        return mul_factor(self) * (per_element * n + reduction_cost(n, reduction))

    return loss_flops


def _elementwise_loss_backward(per_element: int) -> Callable[..., int]:
    def loss_backward_flops(grad_output, self, target, reduction=MEAN, *args, out=None, **kwargs):
        n = max(self.numel(), target.numel())
        return mul_factor(self) * (per_element + (reduction == MEAN)) * n

    return loss_backward_flops


def _bce(self, target, weight=None, reduction=MEAN, *args, out=None, **kwargs):
    # -(y log x + (1 - y) log(1 - x)), logs clamped at -100: 2 logs, 2 clamps, 2 complements,
    # 2 multiplies, add, negate = 10; weight: +1.
    n = self.numel()
    return mul_factor(self) * ((10 + (weight is not None)) * n + reduction_cost(n, reduction))


def _bce_backward(grad_output, self, target, weight=None, reduction=MEAN, *args, out=None, **kwargs):
    # g (x - y) / max(x (1 - x), eps): 2 subtractions, multiply, max, divide, times g = 6.
    n = self.numel()
    return mul_factor(self) * (6 + (weight is not None) + (reduction == MEAN)) * n


def _bce_with_logits(self, target, weight=None, pos_weight=None, reduction=MEAN, *args, out=None, **kwargs):
    # (1 - y) x - log_sigmoid(x): log_sigmoid (5), complement, multiply, subtract = 8;
    # pos_weight: lw = 1 + (pw - 1) y scales log_sigmoid (+4); weight (+1).
    n = max(self.numel(), target.numel())
    per_element = 8 + 4 * (pos_weight is not None) + (weight is not None)
    return mul_factor(self) * (per_element * n + reduction_cost(n, reduction))


def _nll_loss(self, target, weight=None, reduction=MEAN, *args, out=None, **kwargs):
    # Per target: negate the picked log-probability (1), times its class weight (1 if weight);
    # mean also sums the weights (n) and divides once.
    n = target.numel()
    flops = (1 + (weight is not None)) * n
    if reduction == MEAN:
        flops += 2 * n + 1
    elif reduction == SUM:
        flops += n
    return mul_factor(self) * flops


def _nll_loss_backward(grad_output, self, target, weight=None, reduction=MEAN, *args, out=None, **kwargs):
    # Per target: -g (1), times its weight, divided by the total weight for mean.
    n = target.numel()
    return mul_factor(self) * (1 + (weight is not None) + (reduction == MEAN)) * n


def _multi_margin(self, target, p=1, margin=1, weight=None, reduction=MEAN, *args, out=None, **kwargs):
    # Per (sample, class): margin - x_y + x_i, max(0, .), add (4); p=2 squares (+1); weight
    # (+1). Per sample: divide by C.
    n = self.numel()
    samples = self.shape[0] if self.dim() == 2 else 1
    per_element = 4 + (p == 2) + (weight is not None)
    return mul_factor(self) * (per_element * n + samples + reduction_cost(samples, reduction))


def _multi_margin_backward(grad_output, self, target, p=1, margin=1, weight=None, reduction=MEAN,
                           *args, out=None, **kwargs):
    # Per (sample, class): compare, g / C, weight, accumulate into the target column (4);
    # p=2: 2z (+1).
    n = self.numel()
    return mul_factor(self) * (4 + (p == 2) + (weight is not None)) * n


def _multilabel_margin(self, target, reduction=MEAN, *args, out=None, **kwargs):
    # Per (sample, class) and valid target: 1 - (x_y - x_i), max(0, .), add (4). The number of
    # valid targets is data; a shape-only formula charges one per sample. Per sample: / C.
    n = self.numel()
    samples = self.shape[0] if self.dim() == 2 else 1
    return mul_factor(self) * (4 * n + samples + reduction_cost(samples, reduction))


def _multilabel_margin_backward(grad_output, self, target, reduction=MEAN, *args, out=None, **kwargs):
    return mul_factor(self) * 4 * self.numel()


# CTC: a lattice of T x N x (2S + 1) cells (S the padded target length). Each alpha (or beta)
# cell is a logsumexp of up to 3 predecessors plus the emission: 13 FLOPs. The gradient adds
# alpha + beta into the class accumulators (7 per cell) and forms exp(lp) - ... per
# (T, N, C) element (6).
_CTC_CELL, _CTC_GRAD_CELL, _CTC_GRAD_CLASS = 13, 7, 6


def _ctc_sizes(log_probs: Tensor, targets: Tensor) -> tuple[int, int]:
    t, n = (log_probs.shape[0], log_probs.shape[1]) if log_probs.dim() == 3 else (log_probs.shape[0], 1)
    s = targets.shape[-1] if targets.dim() == 2 else (targets.numel() // n if n else 0)
    return t * n * (2 * s + 1), n


def _ctc_forward_cost(log_probs: Tensor, targets: Tensor) -> int:
    cells, n = _ctc_sizes(log_probs, targets)
    return _CTC_CELL * cells + 6 * n  # + the final logaddexp of the two end cells


def _ctc_backward_cost(log_probs: Tensor, targets: Tensor) -> int:
    cells, _ = _ctc_sizes(log_probs, targets)
    return (_CTC_CELL + _CTC_GRAD_CELL) * cells + _CTC_GRAD_CLASS * log_probs.numel()


def _ctc_loss(log_probs, targets, *args, out=None, **kwargs):
    return mul_factor(log_probs) * _ctc_forward_cost(log_probs, targets)


def _ctc_loss_backward(grad, log_probs, targets, *args, out=None, **kwargs):
    return mul_factor(log_probs) * _ctc_backward_cost(log_probs, targets)


def _ctc_loss_with_grad(log_probs, targets, *args, out=None, **kwargs):
    # cuDNN / MIOpen compute the loss and its gradient in one call.
    return mul_factor(log_probs) * (_ctc_forward_cost(log_probs, targets) + _ctc_backward_cost(log_probs, targets))


def _make_family() -> dict[str, Callable[[OpOverload], Any]]:
    family: dict[str, Callable[[OpOverload], Any]] = {}
    for name, per_element in LOSS_FLOPS.items():
        family[name] = fixed(_elementwise_loss(per_element))
    for name, per_element in LOSS_BACKWARD_FLOPS.items():
        family[name] = fixed(_elementwise_loss_backward(per_element))
    family.update(
        binary_cross_entropy=fixed(_bce),
        binary_cross_entropy_backward=fixed(_bce_backward),
        binary_cross_entropy_with_logits=fixed(_bce_with_logits),
        nll_loss_forward=fixed(_nll_loss),
        nll_loss2d_forward=fixed(_nll_loss),
        nll_loss_backward=fixed(_nll_loss_backward),
        nll_loss2d_backward=fixed(_nll_loss_backward),
        multi_margin_loss=fixed(_multi_margin),
        multi_margin_loss_backward=fixed(_multi_margin_backward),
        multilabel_margin_loss_forward=fixed(_multilabel_margin),
        multilabel_margin_loss_backward=fixed(_multilabel_margin_backward),
        _ctc_loss=fixed(_ctc_loss),
        _ctc_loss_backward=fixed(_ctc_loss_backward),
        _cudnn_ctc_loss=fixed(_ctc_loss_with_grad),
        miopen_ctc_loss=fixed(_ctc_loss_with_grad),
    )
    return family


FAMILY = _make_family()
register_family(FAMILY)
