"""FLOP formulas of the selective-scan ops, in both conventions (see docs/conventions.md).

Sizes: Bt = batch, Dm = dim, L = length, N = state size; "per (b,d,l,n)" terms are multiplied
by Bt*Dm*L*N, "per (b,d,l)" terms by Bt*Dm*L, "per (b,d,n)" terms by Bt*Dm*N.

Convention "flop" (one multiply-add = 2 FLOPs; exp, log1p and a division count 1 each): the
arithmetic of the sequential recurrence, the same whichever kernel runs it (the Triton
kernel's parallel scan does extra work that is not counted, as a matmul's count ignores how
it is tiled).

Forward, per (b,d,l,n): 7
    delta*A 1, exp 1, (delta*u)*B 1, a*h + bx 2, C*h accumulated over n 2
Forward, per (b,d,l): 1, plus optional terms
    delta*u 1; D: D*u + y 2; z: silu(z) = z/(1+exp(-z)) 4 and the product 1 = 5;
    delta_bias: the add 1; softplus: exp and log1p 2

Backward (the states are recomputed, then the adjoint g_t = dy_t C_t + a_{t+1} g_{t+1}),
per (b,d,l,n): 20, plus 2 with z
    recompute delta*A, exp, (delta*u)*B, a*h + bx: 5; x = dy*C 1; g = x + a*g 2;
    dC = sum_d dy*h 2; dB = sum_d g*(delta*u) 2; gB = sum_n g*B 2; p = g*(h - bx) 2;
    ddelta's A-term sum_n A*p 2; dA = sum_{b,l} delta*p 2; with z: recompute y = C.h 2
Backward, per (b,d,l): 4, plus optional terms
    recompute delta*u 1; du = delta*gB 1; ddelta = u*gB + A-term 2;
    D: du += D*dy 2, dD += dy*u 2 (+ D*u + y 2 when z is also given);
    z: silu(z) 4, dy = dout*silu 1, dz = dout*pre*sig*(1 + z(1 - sig)) 6 = 11;
    softplus: recompute 2, sigmoid 3, chain product 1 = 6; delta_bias: add 1, dbias sum 1 = 2
Backward, per (b,d,n): 1 with dlast_state (added to the adjoint at the last step).

Convention "fvcore": VMamba's published count (``flops_selective_scan_fn``,
https://github.com/state-spaces/mamba/issues/110): 9*Bt*L*Dm*N, + Bt*Dm*L with D, + Bt*Dm*L
with z; softplus and the bias are not counted. fvcore traces the forward only and has no rule
for a backward; here the backward counts twice the forward, the usual training-cost rule
(backward ~ 2 x forward, e.g. Kaplan et al. 2020), so fvcore-convention training totals are 3x
the published forward figure.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from dispatchcount import register_formula

from . import op  # noqa: F401  (defines the ops)

__all__ = [
    "selective_scan_flop",
    "selective_scan_backward_flop",
    "selective_scan_fvcore",
    "selective_scan_backward_fvcore",
]

_FWD = torch.ops.dispatchcount.selective_scan.default
_BWD = torch.ops.dispatchcount.selective_scan_backward.default


def _sizes(u: Tensor, A: Tensor) -> tuple[int, int]:
    batch, dim, length = u.shape
    return int(batch * dim * length), int(A.shape[1])


def selective_scan_flop(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                        D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                        delta_bias: Optional[Tensor] = None, delta_softplus: bool = False,
                        save_states: bool = False, *, out: Any = None, **_: Any) -> int:
    """Forward FLOPs, convention "flop"."""
    bdl, n = _sizes(u, A)
    per_bdl = 7 * n + 1
    per_bdl += 2 if D is not None else 0
    per_bdl += 5 if z is not None else 0
    per_bdl += 1 if delta_bias is not None else 0
    per_bdl += 2 if delta_softplus else 0
    return bdl * per_bdl


def selective_scan_backward_flop(dout: Tensor, dlast_state: Optional[Tensor], u: Tensor,
                                 delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                                 D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                                 delta_bias: Optional[Tensor] = None,
                                 delta_softplus: bool = False, states: Any = None, *,
                                 out: Any = None, **_: Any) -> int:
    """Backward FLOPs, convention "flop"."""
    bdl, n = _sizes(u, A)
    per_bdl = 20 * n + 4
    if z is not None:
        per_bdl += 2 * n + 11 + (2 if D is not None else 0)
    per_bdl += 4 if D is not None else 0
    per_bdl += 6 if delta_softplus else 0
    per_bdl += 2 if delta_bias is not None else 0
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
