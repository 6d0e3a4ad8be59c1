"""Optimizer steps: the ``_foreach_*`` ops and the fused Adam/AdamW/SGD/Adagrad kernels.

An optimizer step is compute like any other. ``_foreach_<op>`` costs what ``<op>`` costs on
each tensor of its list (the pointwise table, the norms of reduction.py). Fused optimizers
cost, per parameter element (docs/conventions.md, "Optimizers"):

  Adam/AdamW 13: m lerp (3), v = b2 v + (1 - b2) g^2 (4), sqrt(v) / sqrt(bc2) + eps (3),
                 p -= step * m / denom (3); weight decay: Adam g += wd p (+2), AdamW
                 p *= 1 - lr wd (+1); amsgrad max (+1)
  SGD 2:         p -= lr g; weight decay (+2); momentum buf = mu buf + (1 - d) g (+3, not on
                 the first step), nesterov g += mu buf (+2)
  Adagrad 7:     sum += g^2 (2), sqrt(sum) + eps (2), p -= clr g / std (3); weight decay (+2)
  all:           grad_scale unscaling (+1), maximize negation (+1)
Per-tensor scalar bookkeeping (bias corrections, step counts) is not counted.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from torch._ops import OpOverload

from dispatchcount.formulas._helpers import (COMPLEX_ADD, COMPLEX_MUL, dtype_factor, first_tensor_list,
    fixed, register_family, without_out_arguments)
from dispatchcount.formulas.pointwise import COMPLEX_ADDITIVE, POINTWISE_FLOPS, extra_term
from dispatchcount.formulas.reduction import norm_cost
from dispatchcount.registry import register_resolver

__all__ = ["ADAM_FLOPS", "SGD_FLOPS", "ADAGRAD_FLOPS"]

ADAM_FLOPS, SGD_FLOPS, ADAGRAD_FLOPS = 13, 2, 7

_FOREACH = "_foreach_"


def _foreach_pointwise(name: str, op: OpOverload) -> Callable[..., int]:
    base = POINTWISE_FLOPS[name]
    complex_factor = COMPLEX_ADD if name in COMPLEX_ADDITIVE else COMPLEX_MUL
    extra = extra_term(name, op)

    def foreach_flops(*args: Any, out: Any = None, **kwargs: Any) -> int:
        per_element = base if extra is None else base + extra(args, kwargs)
        total = 0
        for t in first_tensor_list(args):
            total += dtype_factor(complex_factor, t) * t.numel()
        return per_element * total

    return foreach_flops


def _foreach_norm(root: bool) -> Callable[..., int]:
    def foreach_norm_flops(tensors, ord=2, *args, out=None, **kwargs):
        return sum(dtype_factor(COMPLEX_MUL, t) * norm_cost(ord, t.numel(), 1, root) for t in tensors)

    return foreach_norm_flops


def _foreach_max(tensors, *args, out=None, **kwargs):
    return sum(dtype_factor(1, t) * t.numel() for t in tensors)


def _foreach_mm(tensors, others, *args, out=None, **kwargs):
    # One multiply-add (2 FLOPs, 8 for complex) per (m, n, k) of each product.
    total = 0
    for a, b in zip(tensors, others):
        macs = a.shape[-2] * a.shape[-1] * b.shape[-1]
        total += (8 if a.dtype.is_complex else 2 if a.dtype.is_floating_point else 0) * macs
    return total


_FOREACH_OTHER: dict[str, Callable[..., int]] = {
    "norm": _foreach_norm(True),
    "powsum": _foreach_norm(False),
    "max": _foreach_max,
    "mm": _foreach_mm,
}


def _resolve_foreach(op: OpOverload) -> Optional[Callable[..., int]]:
    if op.namespace != "aten":
        return None
    name = op._schema.name.split("::", 1)[-1]
    if not name.startswith(_FOREACH):
        return None
    name = name[len(_FOREACH):].rstrip("_")
    if name in POINTWISE_FLOPS:
        return without_out_arguments(op, _foreach_pointwise(name, op))
    return without_out_arguments(op, _FOREACH_OTHER.get(name))


def _params(params: list) -> int:
    return sum(dtype_factor(COMPLEX_MUL, p) * p.numel() for p in params)


def _common_extra(kwargs: dict) -> int:
    return (kwargs.get("grad_scale") is not None) + bool(kwargs.get("maximize", False))


def _adam(decoupled: bool) -> Callable[..., int]:
    def adam_flops(params, *args, out=None, **kwargs):
        per_element = ADAM_FLOPS + _common_extra(kwargs) + bool(kwargs.get("amsgrad", False))
        if kwargs.get("weight_decay", 0) != 0:
            per_element += 1 if decoupled else 2
        return per_element * _params(params)

    return adam_flops


def _sgd(params, *args, out=None, **kwargs):
    per_element = SGD_FLOPS + _common_extra(kwargs)
    if kwargs.get("weight_decay", 0) != 0:
        per_element += 2
    if kwargs.get("momentum", 0) != 0:
        per_element += 0 if kwargs.get("is_first_step", False) else 3
        per_element += 2 if kwargs.get("nesterov", False) else 0
    return per_element * _params(params)


def _adagrad(params, *args, out=None, **kwargs):
    per_element = ADAGRAD_FLOPS + _common_extra(kwargs)
    if kwargs.get("weight_decay", 0) != 0:
        per_element += 2
    return per_element * _params(params)


def _amp_unscale(tensors, found_inf, inv_scale, *args, out=None, **kwargs):
    # An isfinite test and a multiply by 1/scale per gradient element.
    return 2 * _params(tensors)


def _amp_update_scale(self, *args, out=None, **kwargs):
    # The scale (one element) is multiplied by the growth or backoff factor.
    return dtype_factor(1, self)


FAMILY = {
    "_fused_adam": fixed(_adam(decoupled=False)),
    "_fused_adamw": fixed(_adam(decoupled=True)),
    "_fused_sgd": fixed(_sgd),
    "_fused_adagrad": fixed(_adagrad),
    "_amp_foreach_non_finite_check_and_unscale": fixed(_amp_unscale),
    "_amp_update_scale": fixed(_amp_update_scale),
}

register_family(FAMILY)
register_resolver("flop", _resolve_foreach)
