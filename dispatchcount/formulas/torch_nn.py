"""PyTorch's own custom ops outside aten: ``torch_nn::_linear_cross_entropy_batch_chunked*``.

``F.linear_cross_entropy(..., options=...)`` (torch >= 2.13) runs a fused, batch-chunked
linear + cross-entropy as one ``torch.library`` custom op; its inner aten ops never reach the
counter, so the op is counted as what it computes (docs/conventions.md, "Fused linear
cross-entropy"). With N rows, D input features and C classes:

- logits x W^T (2 N D C) and the bias (N C);
- cross-entropy: log_softmax (5 N C + N) and nll_loss (N, +N with class weights, +2N + 1 for
  mean, +N for sum), as reduction.py and loss.py count them;
- the scalar-reduction op precomputes gradients in the forward: softmax - one-hot and its
  scaling (2 N C + N), grad_input (2 N D C), grad_weight (2 N D C), grad_bias (N C), each when
  its compute_*_grad flag is set. Its backward only scales them (aten ops, counted there).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from torch._ops import OpOverload

from dispatchcount.formulas._helpers import Tensor, dtype_factor
from dispatchcount.formulas.loss import reduction_cost
from dispatchcount.registry import register_resolver

__all__ = ["linear_cross_entropy_flops"]

_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}


def linear_cross_entropy_flops(rows: int, in_features: int, classes: int, bias: bool,
                               class_weights: bool, reduction: int,
                               grads: tuple[bool, bool, bool] = (False, False, False)) -> int:
    """Real FLOPs of the fused linear + cross-entropy (see the module docstring)."""
    logits = rows * classes
    flops = 2 * rows * in_features * classes + (logits if bias else 0)
    flops += 5 * logits + rows                                   # log_softmax
    flops += rows * (1 + class_weights) + reduction_cost(rows, reduction) + (
        rows if reduction == 1 else 0                             # mean also sums the weights
    )
    want_input, want_weight, want_bias = grads
    if want_input or want_weight or want_bias:
        flops += 2 * logits + rows
        flops += 2 * rows * in_features * classes * (want_input + want_weight)
        flops += logits if want_bias else 0
    return flops


def _sizes(input: Tensor, linear_weight: Tensor) -> tuple[int, int, int]:
    classes, in_features = linear_weight.shape[0], linear_weight.shape[-1]
    rows = input.numel() // in_features if in_features else 0
    return rows, in_features, classes


def _chunked(input, linear_weight, target, linear_bias, weight, reduction, *args, out=None, **kwargs):
    # args after reduction: ignore_index, label_smoothing, batch_chunk_size, acc_policy,
    # acc_dtype, allow_retain_graph, compute_input_grad, compute_linear_weight_grad,
    # compute_linear_bias_grad
    rows, in_features, classes = _sizes(input, linear_weight)
    grads = tuple(bool(g) for g in args[6:9]) if len(args) >= 9 else (False, False, False)
    return dtype_factor(4, input) * linear_cross_entropy_flops(
        rows, in_features, classes, linear_bias is not None, weight is not None,
        _REDUCTIONS.get(reduction, 1), grads,
    )


def _chunked_no_reduction(input, linear_weight, target, linear_bias, weight, *args, out=None, **kwargs):
    rows, in_features, classes = _sizes(input, linear_weight)
    return dtype_factor(4, input) * linear_cross_entropy_flops(
        rows, in_features, classes, linear_bias is not None, weight is not None, 0
    )


_FORMULAS = {
    "_linear_cross_entropy_batch_chunked": _chunked,
    "_linear_cross_entropy_batch_chunked_no_reduction": _chunked_no_reduction,
}


def _resolve(op: OpOverload) -> Optional[Callable[..., Any]]:
    # By name, so that the op need not be registered (it is, lazily, on first use) at import.
    if op.namespace != "torch_nn":
        return None
    return _FORMULAS.get(op._schema.name.split("::", 1)[-1])


register_resolver("flop", _resolve)
