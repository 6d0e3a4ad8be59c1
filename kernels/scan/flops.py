"""FLOP formulas of the selective-scan ops, in both conventions (see docs/conventions.md).

Sizes: Bt = batch, Dm = dim, L = length, N = state size; "per (b,d,l,n)" terms are multiplied
by Bt*Dm*L*N, "per (b,d,l)" terms by Bt*Dm*L, "per (b,d,n)" terms by Bt*Dm*N.

Convention "flop" (one multiply-add = 2 FLOPs): the arithmetic of the sequential recurrence,
the same whichever kernel runs it (how a kernel organises it, like a matmul's tiling, is not
counted). Elementary functions cost what the pointwise table charges the aten op of the same
name (``POINTWISE_FLOPS``): exp 1, sigmoid 4 (1 / (1 + exp(-x))), silu 5, softplus 6, so a
fused scan and the same math written with aten ops count alike.

Forward, per (b,d,l,n): 7
    delta*A 1, exp 1, (delta*u)*B 1, a*h + bx 2, C*h accumulated over n 2
Forward, per (b,d,l): 1, plus
    delta*u 1; D: D*u + y 2; z: silu(z) 5 and the product 1; delta_bias: the add 1;
    softplus 6

Backward (the states are recomputed, then the adjoint g_t = dy_t C_t + a_{t+1} g_{t+1}),
per (b,d,l,n): 20, plus 2 with z
    recompute delta*A, exp, (delta*u)*B, a*h + bx: 5; x = dy*C 1; g = x + a*g 2;
    dC = sum_d dy*h 2; dB = sum_d g*(delta*u) 2; gB = sum_n g*B 2; p = g*(h - bx) 2;
    ddelta's A-term sum_n A*p 2; dA = sum_{b,l} delta*p 2; with z: recompute y = C.h 2
Backward, per (b,d,l): 4, plus
    recompute delta*u 1; du = delta*gB 1; ddelta = u*gB + A-term 2;
    D: du += D*dy 2, dD += dy*u 2, and with z also the recomputed D*u + y 2;
    z: s = sigmoid(z) 4, dz = dout*pre*s*(1 + z(1 - s)) 6, dy = dout*z*s 2;
    softplus: recompute softplus 6, sigmoid(pre-softplus delta) 4, chain product 1;
    delta_bias: recompute the add 1, ddelta_bias sum 1
Backward, per (b,d,n): 1 with a last-state gradient (added to the adjoint at the last step).

A constant (dim, N) B or C counts the same: the same multiply-adds per (b,d,l,n), its gradient
reduced over (batch, time) instead of the group's channels.

Convention "fvcore": VMamba's published count (``flops_selective_scan_fn``, after
https://github.com/state-spaces/mamba/issues/110): 9*Bt*L*Dm*N, + Bt*Dm*L with D, + Bt*Dm*L
with z, whatever the form of B and C; softplus and the bias are not counted. fvcore traces the forward only; the backward
here counts twice the forward, the usual training-cost rule (backward ~ 2 x forward, as for a
linear layer under this project's fvcore convention, and Kaplan et al. 2020), so a training
step counts 3x the published forward figure.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from dispatchcount import register_formula
from dispatchcount.formulas.pointwise import POINTWISE_FLOPS

from . import op  # noqa: F401  (defines the ops)

__all__ = [
    "selective_scan_flop",
    "selective_scan_backward_flop",
    "selective_scan_fvcore",
    "selective_scan_backward_fvcore",
]

_FWD = torch.ops.dispatchcount.selective_scan.default
_BWD = torch.ops.dispatchcount.selective_scan_backward.default


EXP, SIGMOID, SILU, SOFTPLUS = (POINTWISE_FLOPS[name] for name in ("exp", "sigmoid", "silu", "softplus"))

# Forward
FWD_PER_N = 2 + EXP + 4        # delta*A, (delta*u)*B | exp | a*h + bx, C*h accumulated
FWD_PER_L = 1                  # delta*u
FWD_D = 2                      # D*u + y
FWD_Z = SILU + 1               # silu(z), product
FWD_BIAS = 1                   # delta + delta_bias
FWD_SOFTPLUS = SOFTPLUS
# Backward
BWD_PER_N = 5 + (EXP - 1) + 15  # recompute (5), x, g, dC, dB, gB, p, A-term, dA (1+2+2+2+2+2+2+2)
BWD_PER_N_Z = 2                # recompute y = C.h
BWD_PER_L = 4                  # delta*u, du = delta*gB, ddelta = u*gB + A-term
BWD_D = 4                      # du += D*dy, dD += dy*u
BWD_D_WITH_Z = 2               # recompute D*u + y for dz
BWD_Z = SIGMOID + 6 + 2        # sigmoid(z), dz, dy = dout*z*s
BWD_SOFTPLUS = SOFTPLUS + SIGMOID + 1
BWD_BIAS = 2


def _sizes(u: Tensor, A: Tensor) -> tuple[int, int]:
    batch, dim, length = u.shape
    return int(batch * dim * length), int(A.shape[1])


def selective_scan_flop(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                        D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                        delta_bias: Optional[Tensor] = None, delta_softplus: bool = False,
                        save_states: bool = False, *, out: Any = None, **_: Any) -> int:
    """Forward FLOPs, convention "flop"."""
    bdl, n = _sizes(u, A)
    per_bdl = FWD_PER_N * n + FWD_PER_L
    per_bdl += FWD_D if D is not None else 0
    per_bdl += FWD_Z if z is not None else 0
    per_bdl += FWD_BIAS if delta_bias is not None else 0
    per_bdl += FWD_SOFTPLUS if delta_softplus else 0
    return bdl * per_bdl


def selective_scan_backward_flop(dout: Tensor, dlast_state: Optional[Tensor], u: Tensor,
                                 delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                                 D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                                 delta_bias: Optional[Tensor] = None,
                                 delta_softplus: bool = False, states: Any = None, *,
                                 out: Any = None, **_: Any) -> int:
    """Backward FLOPs, convention "flop"."""
    bdl, n = _sizes(u, A)
    per_bdl = BWD_PER_N * n + BWD_PER_L
    if z is not None:
        per_bdl += BWD_PER_N_Z * n + BWD_Z + (BWD_D_WITH_Z if D is not None else 0)
    per_bdl += BWD_D if D is not None else 0
    per_bdl += BWD_SOFTPLUS if delta_softplus else 0
    per_bdl += BWD_BIAS if delta_bias is not None else 0
    flops = bdl * per_bdl
    if dlast_state is not None:
        flops += int(u.shape[0] * u.shape[1]) * n
    return flops


def selective_scan_fvcore(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                          D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                          *args: Any, out: Any = None, **_: Any) -> int:
    """Forward, convention "fvcore": VMamba's 9*B*L*D*N (+ B*D*L with D, + B*D*L with z)."""
    bdl, n = _sizes(u, A)
    return 9 * bdl * n + (bdl if D is not None else 0) + (bdl if z is not None else 0)


def selective_scan_backward_fvcore(dout: Tensor, dlast_state: Optional[Tensor], u: Tensor,
                                   delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                                   D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                                   *args: Any, out: Any = None, **_: Any) -> int:
    """Backward, convention "fvcore": twice the forward's VMamba count."""
    return 2 * selective_scan_fvcore(u, delta, A, B, C, D, z)


register_formula(_FWD, "flop")(selective_scan_flop)
register_formula(_BWD, "flop")(selective_scan_backward_flop)
register_formula(_FWD, "fvcore")(selective_scan_fvcore)
register_formula(_BWD, "fvcore")(selective_scan_backward_fvcore)
