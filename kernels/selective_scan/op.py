"""The ops ``torch.ops.dispatchcount.selective_scan`` and ``...selective_scan_backward``.

Both are ``torch.library`` custom ops: a PyTorch kernel (CPU, and any device without a better
one), a Triton kernel for CUDA (imported lazily), a fake kernel (shapes only, O(1)), and, for
the forward, autograd through the backward op.

Forward outputs: ``out`` (u's shape and dtype), ``last_state`` (batch, dim, N) and ``states``,
the state at the end of every chunk of ``state_chunk(N)`` steps (batch, dim, chunks, N), saved
for the backward when ``save_states`` (else chunks = 0); states are in the compute dtype.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import pytorch_kernel
from .validation import check_inputs, compute_dtype, num_chunks

__all__ = ["selective_scan_fwd", "selective_scan_bwd"]

Grads = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


@torch.library.custom_op("dispatchcount::selective_scan", mutates_args=())
def selective_scan_fwd(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = False,
    save_states: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Selective scan forward: (out, last_state, states). See ``dispatchcount.kernels.selective_scan``."""
    return pytorch_kernel.forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, save_states)


@torch.library.custom_op("dispatchcount::selective_scan_backward", mutates_args=())
def selective_scan_bwd(
    dout: Tensor,
    dlast_state: Optional[Tensor],
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor],
    z: Optional[Tensor],
    delta_bias: Optional[Tensor],
    delta_softplus: bool,
    states: Tensor,
) -> Grads:
    """Gradients (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias); empty for absent D, z, delta_bias."""
    _check_backward_inputs(dout, dlast_state, u, A)
    return pytorch_kernel.backward(dout, dlast_state, u, delta, A, B, C, D, z, delta_bias,
                                   delta_softplus)


def _check_backward_inputs(dout: Tensor, dlast_state: Optional[Tensor], u: Tensor, A: Tensor) -> None:
    if tuple(dout.shape) != tuple(u.shape):
        raise ValueError(f"selective_scan_backward: dout has shape {tuple(dout.shape)}, needs "
                         f"u's shape (batch, dim, L) = {tuple(u.shape)}")
    if dlast_state is not None:
        need = (u.shape[0], u.shape[1], A.shape[1])
        if tuple(dlast_state.shape) != tuple(need):
            raise ValueError(f"selective_scan_backward: dlast_state has shape "
                             f"{tuple(dlast_state.shape)}, needs (batch, dim, N) = {tuple(need)}")


# ---- CUDA: Triton (float64 has no Triton kernel and takes the PyTorch one) ----------------------

@selective_scan_fwd.register_kernel("cuda")
def _fwd_cuda(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
              save_states=False):
    if u.dtype == torch.float64:
        return pytorch_kernel.forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, save_states)
    from . import triton_kernels

    return triton_kernels.forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, save_states)


@selective_scan_bwd.register_kernel("cuda")
def _bwd_cuda(dout, dlast_state, u, delta, A, B, C, D, z, delta_bias, delta_softplus, states):
    _check_backward_inputs(dout, dlast_state, u, A)
    if u.dtype == torch.float64:
        return pytorch_kernel.backward(dout, dlast_state, u, delta, A, B, C, D, z, delta_bias,
                                       delta_softplus)
    from . import triton_kernels

    return triton_kernels.backward(dout, dlast_state, u, delta, A, B, C, D, z, delta_bias,
                                   delta_softplus, states)


# ---- Fake kernels: shapes and dtypes only ---------------------------------------------------

@selective_scan_fwd.register_fake
def _fwd_fake(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
              save_states=False):
    batch, dim, length, n, _ = check_inputs(u, delta, A, B, C, D, z, delta_bias)
    ct = compute_dtype(u.dtype)
    chunks = num_chunks(length, n) if save_states else 0
    return (
        u.new_empty(batch, dim, length),
        u.new_empty(batch, dim, n, dtype=ct),
        u.new_empty(batch, dim, chunks, n, dtype=ct),
    )


@selective_scan_bwd.register_fake
def _bwd_fake(dout, dlast_state, u, delta, A, B, C, D, z, delta_bias, delta_softplus, states):
    check_inputs(u, delta, A, B, C, D, z, delta_bias)
    _check_backward_inputs(dout, dlast_state, u, A)

    def like(t: Optional[Tensor]) -> Tensor:
        return torch.empty_like(t, memory_format=torch.contiguous_format) if t is not None else u.new_empty(0)

    return like(u), like(delta), like(A), like(B), like(C), like(D), like(z), like(delta_bias)


# ---- Autograd -------------------------------------------------------------------------------

def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, _save_states = inputs
    states = output[2]
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states)
    ctx.delta_softplus = delta_softplus
    ctx.mark_non_differentiable(states)
    ctx.set_materialize_grads(False)


def _backward(ctx, dout, dlast_state, _dstates):
    u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(u)
    du, ddelta, dA, dB, dC, dD, dz, dbias = torch.ops.dispatchcount.selective_scan_backward(
        dout, dlast_state, u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, states)
    return (
        du, ddelta, dA, dB, dC,
        dD if D is not None else None,
        dz if z is not None else None,
        dbias if delta_bias is not None else None,
        None, None,
    )


selective_scan_fwd.register_autograd(_backward, setup_context=_setup_context)
