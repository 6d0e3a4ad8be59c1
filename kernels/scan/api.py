"""The public entry point ``selective_scan``: argument checks, then the op."""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from . import op  # noqa: F401  (defines torch.ops.dispatchcount.selective_scan*)
from .validation import ScanInputs, check_types

__all__ = ["selective_scan"]

Result = Union[Tensor, tuple[Tensor, Tensor]]


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> Result:
    """The selective scan of Mamba (mamba_ssm's ``selective_scan_fn`` semantics).

    With ``delta = softplus(delta + delta_bias)`` (bias and softplus when given/asked)::

        h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t,   y_t = C_t . h_t
        out = (y + D * u) * silu(z)

    Shapes: u, delta, z (batch, dim, L); A (dim, N), real; B and C each either time-varying,
    (batch, N, L) or (batch, G, N, L) with dim % G == 0 (channel d uses group d // (dim // G);
    both time-varying: the same shape), or constant, (dim, N) (mamba's is_variable_B/C=False);
    D, delta_bias (dim,). u, delta, z in float32, float16, bfloat16 (or float64, PyTorch kernel
    only); B, C, A, D, delta_bias in u's dtype or float32. A complex A raises ValueError (not
    supported: Mamba and VMamba use a real A = -exp(A_log)). Empty inputs (batch, dim or L of 0)
    give empty outputs, a zero last state and zero gradients. Math in float32; ``out`` in u's
    dtype; ``last_state`` (batch, dim, N) in float32. Differentiable in u, delta, A, B, C, D, z,
    delta_bias (and through last_state).

    Runs ``torch.ops.dispatchcount.selective_scan``: the Triton kernels on CUDA (torch.compile
    traces into them), the PyTorch kernel elsewhere, and on CUDA without triton after a one-time
    warning. An argument of the wrong type, shape, dtype or device raises ``ValueError`` naming
    it. Returns ``out``, or ``(out, last_state)`` with ``return_last_state=True``.
    """
    x = ScanInputs(u, delta, A, B, C, D, z, delta_bias)
    check_types(x)
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in x)
    out, last_state, _ = torch.ops.dispatchcount.selective_scan(*x, bool(delta_softplus), save)
    return (out, last_state) if return_last_state else out
