"""Public entry points: ``selective_scan`` (the op) and ``selective_scan_triton`` (Triton only)."""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from . import op  # noqa: F401  (defines torch.ops.dispatchcount.selective_scan*)
from .validation import check_inputs

__all__ = ["selective_scan", "selective_scan_triton"]

Result = Union[Tensor, tuple[Tensor, Tensor]]


def _needs_grad(*tensors: Optional[Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


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

    Shapes: u, delta, z (batch, dim, L); A (dim, N); B, C (batch, N, L) or (batch, G, N, L)
    with dim % G == 0 (channel d uses group d // (dim // G)); D, delta_bias (dim,). u, delta, z
    in float32, float16, bfloat16 (or float64, PyTorch kernel only); B, C, A, D, delta_bias in
    u's dtype or float32. Math in float32; ``out`` in u's dtype; ``last_state`` (batch, dim, N)
    in float32. Differentiable in u, delta, A, B, C, D, z, delta_bias (and through last_state).

    Runs ``torch.ops.dispatchcount.selective_scan``: Triton on CUDA, PyTorch elsewhere.
    Returns ``out``, or ``(out, last_state)`` with ``return_last_state=True``.
    """
    save = _needs_grad(u, delta, A, B, C, D, z, delta_bias)
    out, last_state, _ = torch.ops.dispatchcount.selective_scan(
        u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), save)
    return (out, last_state) if return_last_state else out


class _TritonScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, save_states):
        from . import triton_kernels

        out, last_state, states = triton_kernels.forward(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, save_states)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states)
        ctx.delta_softplus = delta_softplus
        ctx.set_materialize_grads(False)
        return out, last_state

    @staticmethod
    def backward(ctx, dout, dlast_state):
        from . import triton_kernels

        u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(u)
        du, ddelta, dA, dB, dC, dD, dz, dbias = triton_kernels.backward(
            dout, dlast_state, u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, states)
        return (du, ddelta, dA, dB, dC,
                dD if D is not None else None,
                dz if z is not None else None,
                dbias if delta_bias is not None else None,
                None, None)


def selective_scan_triton(
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
    """``selective_scan`` that always runs the Triton kernels, forward and backward.

    On CUDA tensors, or on CPU tensors when ``TRITON_INTERPRET=1`` was set before triton was
    imported (how CI tests the Triton code). Same signature and results as ``selective_scan``;
    it bypasses the dispatcher, so FLOP counting sees no op: count ``selective_scan`` instead.
    """
    check_inputs(u, delta, A, B, C, D, z, delta_bias)
    save = _needs_grad(u, delta, A, B, C, D, z, delta_bias)
    out, last_state = _TritonScan.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus),
                                        save)
    return (out, last_state) if return_last_state else out
