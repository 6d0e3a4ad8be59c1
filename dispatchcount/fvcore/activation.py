"""fvcore's ``ActivationCountAnalysis`` and ``activation_count``, counted at dispatch.

An activation is an element of the output of a convolution or a matrix product (fvcore's
``generic_activation_jit``): convolutions are filed under "conv", the products under their op's
name ("linear", "addmm", "bmm", "matmul", "einsum"). Every other op is unsupported, as in fvcore.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from dispatchcount.fvcore.analysis import JitModelAnalysis
from dispatchcount.fvcore.handles import output_elements

__all__ = ["ActivationCountAnalysis", "activation_count", "_DEFAULT_SUPPORTED_OPS"]

_DEFAULT_SUPPORTED_OPS: dict[str, Callable[..., Any]] = {
    "aten::_convolution": output_elements("conv"),
    "aten::addmm": output_elements(),
    "aten::bmm": output_elements(),
    "aten::einsum": output_elements(),
    "aten::matmul": output_elements(),
    "aten::linear": output_elements(),
}
"""fvcore's default activation handles: the elements of the op's (first) output."""


class ActivationCountAnalysis(JitModelAnalysis):
    """fvcore's ``ActivationCountAnalysis``: output elements of convolutions and products, per
    module and operator (``set_op_handle`` adds or replaces handles, as in fvcore)."""

    def __init__(self, model: nn.Module, inputs: Union[torch.Tensor, tuple]) -> None:
        super().__init__(model, inputs)
        self.set_op_handle(**_DEFAULT_SUPPORTED_OPS)


def activation_count(
    model: nn.Module, inputs: tuple, supported_ops: Optional[dict[str, Callable[..., Any]]] = None
) -> tuple[defaultdict, Counter]:
    """fvcore's ``activation_count``: ({operator: millions of activations}, Counter of
    unsupported operators)."""
    analysis = ActivationCountAnalysis(model, inputs).set_op_handle(**(supported_ops or {}))
    mega = defaultdict(float)
    for operator, count in analysis.by_operator().items():
        mega[operator] = count / 1e6
    return mega, analysis.unsupported_ops()
