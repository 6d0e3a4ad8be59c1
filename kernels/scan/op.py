"""The ops ``torch.ops.dispatchcount.selective_scan`` and ``...selective_scan_backward``.

Each op is one function, registered with ``torch.library.triton_op`` (``custom_op`` on torch
< 2.6 or without triton) and used for every device and as its own fake kernel. It picks, in
this order:

- an empty problem (batch, dim or L of 0): zeros, no kernel;
- CUDA tensors (not float64) with triton installed: the Triton kernels, launched through
  ``torch.library.wrap_triton``, so ``torch.compile`` traces into them (the launch code only
  allocates and launches, so it also runs on fake CUDA tensors);
- meta and fake tensors otherwise: shapes and dtypes only, O(1);
- otherwise: the PyTorch kernel (CPU; and CUDA without triton, after a one-time warning).

``triton_op`` makes ``torch.compile`` decompose an op into its body on every device. Off the
Triton path the body is the PyTorch kernel, a Python loop over time, so there the op is kept
whole in the graph, as a ``custom_op`` would be.

Inputs as ``dispatchcount.kernels.selective_scan`` takes them: B and C time-varying or constant
(dim, N); A real (a complex A raises ValueError: mamba_ssm's complex variant is not supported).

Forward outputs: ``out`` (u's shape and dtype), ``last_state`` (batch, dim, N) and ``states``,
the state at the end of every chunk of ``state_chunk(N)`` steps (batch, dim, chunks, N), saved
for the backward when ``save_states`` (else chunks = 0); states are in the compute dtype.
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch
from torch import Tensor
from torch._subclasses.functional_tensor import FunctionalTensorMode

from . import pytorch_kernel
from .validation import ScanInputs, ScanShape, check_inputs, compute_dtype, is_abstract, num_chunks

try:
    from .triton_kernels import backward as triton_backward
    from .triton_kernels import forward as triton_forward
except ImportError:  # triton is optional (pip install 'dispatchcount[triton]')
    triton_backward = triton_forward = None

__all__ = ["selective_scan_fwd", "selective_scan_bwd", "runs_triton", "TRACEABLE"]

Outputs = tuple[Tensor, ...]

# triton_op and wrap_triton: torch >= 2.6; without triton there is nothing to trace into (and
# triton_op would log that it found no Triton).
TRACEABLE = (triton_forward is not None and hasattr(torch.library, "triton_op")
             and hasattr(torch.library, "wrap_triton"))

_warned_no_triton = False


def runs_triton(u: Tensor) -> bool:
    """Whether the op runs its Triton kernels for inputs like ``u``: CUDA, not float64, and
    triton installed (without triton: a one-time warning, and the PyTorch kernel)."""
    global _warned_no_triton
    if u.device.type != "cuda" or u.dtype == torch.float64:
        return False
    if triton_forward is None:
        if not _warned_no_triton:
            _warned_no_triton = True
            warnings.warn("selective_scan: triton is not installed, so CUDA tensors run the "
                          "PyTorch kernel (same results, far slower); for the Triton kernels: "
                          "pip install 'dispatchcount[triton]'", RuntimeWarning, stacklevel=4)
        return False
    return TRACEABLE or not is_abstract(u)  # before torch 2.6 a launch cannot take fake tensors


def _run(u: Tensor, shape: ScanShape, *, triton: Callable[[], Outputs],
         pytorch: Callable[[], Outputs], shapes: Callable[[], Outputs]) -> Outputs:
    if shape.empty:
        return tuple(t.zero_() for t in shapes())
    if runs_triton(u):
        return triton()
    if is_abstract(u):
        return shapes()
    return pytorch()


def _define(name: str, u_index: int):
    """Register ``fn`` as the op ``name``: a triton_op kept whole off the Triton path, or a
    custom_op (before torch 2.6) with ``fn`` as its fake kernel too."""

    def register(fn):
        if not TRACEABLE:
            opdef = torch.library.custom_op(name, fn, mutates_args=())
            opdef.register_fake(fn)
            return opdef
        opdef = torch.library.triton_op(name, fn, mutates_args=())
        # triton_op's own rule decomposes the op under FunctionalTensorMode (AOTAutograd);
        # apply it on the Triton path only (there is no public accessor for it).
        decompose = getattr(opdef, "_torch_dispatch_fns", {}).get(FunctionalTensorMode)
        if decompose is not None:
            def rule(mode, op, types, args, kwargs):
                if runs_triton(args[u_index]):
                    return decompose(mode, op, types, args, kwargs)
                return mode.__torch_dispatch__(op, types, args, kwargs)

            opdef.register_torch_dispatch(FunctionalTensorMode, rule)
        return opdef

    return register


def _forward_shapes(x: ScanInputs, shape: ScanShape, save_states: bool) -> Outputs:
    batch, dim, length, n = shape[:4]
    ct = compute_dtype(x.u.dtype)
    chunks = num_chunks(length, n) if save_states else 0
    return (x.u.new_empty(batch, dim, length), x.u.new_empty(batch, dim, n, dtype=ct),
            x.u.new_empty(batch, dim, chunks, n, dtype=ct))


def _gradient_shapes(x: ScanInputs) -> Outputs:
    """(du, ddelta, dA, dB, dC, dD, dz, ddelta_bias): each like its input, empty if absent."""
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) if t is not None
                 else x.u.new_empty(0) for t in x)


@_define("dispatchcount::selective_scan", u_index=0)
def selective_scan_fwd(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                       D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                       delta_bias: Optional[Tensor] = None, delta_softplus: bool = False,
                       save_states: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Selective scan forward: (out, last_state, states). See ``dispatchcount.kernels.selective_scan``."""
    x = ScanInputs(u, delta, A, B, C, D, z, delta_bias)
    shape = check_inputs(x)
    return _run(u, shape,
                triton=lambda: triton_forward(x, delta_softplus, save_states),
                pytorch=lambda: pytorch_kernel.forward(x, delta_softplus, save_states),
                shapes=lambda: _forward_shapes(x, shape, save_states))


@_define("dispatchcount::selective_scan_backward", u_index=2)
def selective_scan_bwd(dout: Tensor, dlast_state: Optional[Tensor], u: Tensor, delta: Tensor,
                       A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                       z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool,
                       states: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                                Tensor, Tensor]:
    """Gradients (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias); empty for absent D, z, delta_bias.
    ``states``: the forward's saved chunk states (recomputed when it has no chunks)."""
    x = ScanInputs(u, delta, A, B, C, D, z, delta_bias)
    shape = check_inputs(x)
    _check_backward_inputs(dout, dlast_state, shape)
    return _run(u, shape,
                triton=lambda: triton_backward(dout, dlast_state, x, delta_softplus, states),
                pytorch=lambda: pytorch_kernel.backward(dout, dlast_state, x, delta_softplus),
                shapes=lambda: _gradient_shapes(x))


def _check_backward_inputs(dout: Tensor, dlast_state: Optional[Tensor], shape: ScanShape) -> None:
    need = (shape.batch, shape.dim, shape.length)
    if tuple(dout.shape) != need:
        raise ValueError(f"selective_scan_backward: dout has shape {tuple(dout.shape)}, needs "
                         f"u's shape (batch, dim, L) = {need}")
    need = (shape.batch, shape.dim, shape.dstate)
    if dlast_state is not None and tuple(dlast_state.shape) != need:
        raise ValueError(f"selective_scan_backward: dlast_state has shape "
                         f"{tuple(dlast_state.shape)}, needs (batch, dim, N) = {need}")


# ---- Autograd: the backward op, for every input ------------------------------------------------

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
