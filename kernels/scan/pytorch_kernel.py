"""The selective scan in plain PyTorch: the CPU kernel of the op (and a fallback on any device).

Math (per batch b, channel d, state n, time t; g = d // (dim // G)):

    delta = softplus(delta + delta_bias)              (bias and softplus when asked)
    a_t   = exp(delta_t * A[d, n])
    h_t   = a_t * h_{t-1} + delta_t * u_t * B[g, n, t]     (h_{-1} = 0)
    y_t   = sum_n C[g, n, t] * h_t
    out   = (y + D * u) * silu(z)

(a constant B or C of shape (dim, N) reads B[d, n] / C[d, n] at every step).

The recurrence runs over segments of the sequence (memory stays bounded), time-major, so a
step is one contiguous vectorised op over (batch, dim, N); when that is small, as a two-level
scan (all blocks of ~sqrt(S) steps at once, then one carry per block).

Backward: the adjoint g_t = dL/dh_t obeys g_t = dy_t * C_t + a_{t+1} * g_{t+1}, a scan in
reverse time; the states h are recomputed segment by segment from saved segment starts.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .validation import ScanInputs, check_inputs, compute_dtype, num_chunks, state_chunk

__all__ = ["forward", "backward", "linear_scan", "reverse_linear_scan"]

# Elements of one (segment, batch, G, dim/G, N) temporary; a few of them live at once.
_SEGMENT_ELEMENTS = 1 << 22
# Below this many elements per time step, the two-level scan saves Python-loop overhead.
_SMALL_STEP = 8192


def linear_scan(a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
    """All states of ``h_t = a_t * h_{t-1} + b_t`` along dim 0, with ``h_{-1} = h0``.

    ``a`` and ``b`` have shape (S, ...), ``h0`` (...); returns (S, ...). Time-major, so each
    step is one contiguous vectorised op. When a step is small, the steps are cut into ~sqrt(S)
    blocks scanned all at once, plus one carry per block (2*sqrt(S) steps instead of S).
    """
    steps = a.shape[0]
    per_step = a[0].numel()
    block = steps if per_step >= _SMALL_STEP else max(1, math.isqrt(steps))
    nblocks = steps // block
    main = nblocks * block
    out = torch.empty_like(b)
    if nblocks == 1:
        h = h0
        for t in range(main):
            h = torch.addcmul(b[t], a[t], h, out=out[t])
    else:
        ab = a[:main].unflatten(0, (nblocks, block))
        bb = b[:main].unflatten(0, (nblocks, block))
        local = out[:main].unflatten(0, (nblocks, block))
        # Level 1: every block scanned at once from 0; decay = products of a inside a block.
        local[:, 0] = bb[:, 0]
        for t in range(1, block):
            torch.addcmul(bb[:, t], ab[:, t], local[:, t - 1], out=local[:, t])
        decay = torch.cumprod(ab, dim=1)
        # Level 2: the state entering each block.
        starts = torch.empty_like(local[:, 0])
        h = h0
        for k in range(nblocks):
            starts[k] = h
            h = torch.addcmul(local[k, -1], decay[k, -1], h)
        local.addcmul_(decay, starts.unsqueeze(1))
        h = local[-1, -1]
    for t in range(main, steps):  # the ragged tail
        h = torch.addcmul(b[t], a[t], h, out=out[t])
    return out


def reverse_linear_scan(a: Tensor, x: Tensor, g_next: Tensor, a_next: Tensor) -> Tensor:
    """All ``g_t = x_t + a_{t+1} * g_{t+1}`` along dim 0 (time-major), going backwards from
    ``g_S = g_next`` with ``a_S = a_next``: the adjoint recurrence of ``linear_scan``."""
    steps = a.shape[0]
    if a[0].numel() < _SMALL_STEP:
        a_shift = torch.cat([a[1:], a_next.unsqueeze(0)], dim=0)
        return linear_scan(a_shift.flip(0), x.flip(0), g_next).flip(0)
    out = torch.empty_like(x)
    g = torch.addcmul(x[-1], a_next, g_next, out=out[-1])
    for t in range(steps - 2, -1, -1):
        g = torch.addcmul(x[t], a[t + 1], g, out=out[t])
    return out


class _Prepared:
    """Inputs cast to the compute dtype and viewed by group: u etc. (batch, G, dim/G, L); A and
    a constant B/C (G, dim/G, N); a time-varying B/C (batch, G, N, L)."""

    def __init__(self, x: ScanInputs, delta_softplus: bool):
        shape = self.shape = check_inputs(x)
        ct = self.dtype = compute_dtype(x.u.dtype)
        bsz, dim, length, n, groups = shape[:5]
        dg = dim // groups
        self.groups_view = (bsz, groups, dg, length)
        self.u = x.u.to(ct).view(self.groups_view)
        raw = x.delta.to(ct)
        if x.delta_bias is not None:
            raw = raw + x.delta_bias.to(ct)[:, None]
        self.delta_raw = raw.view(self.groups_view)
        self.delta = F.softplus(self.delta_raw) if delta_softplus else self.delta_raw
        self.du = self.delta * self.u
        self.A = x.A.to(ct).view(groups, dg, n)
        self.B = x.B.to(ct).view((groups, dg, n) if shape.B_const else (bsz, groups, n, length))
        self.C = x.C.to(ct).view((groups, dg, n) if shape.C_const else (bsz, groups, n, length))
        # einsum subscripts of B and C: constant (g, d, n) or time-varying (b, g, n, s)
        self.B_sub = "gdn" if shape.B_const else "bgns"
        self.C_sub = "gdn" if shape.C_const else "bgns"
        self.D = None if x.D is None else x.D.to(ct).view(groups, dg, 1)
        self.z = None if x.z is None else x.z.to(ct).view(self.groups_view)
        self.segment = self._segment_length()

    def _segment_length(self) -> int:
        bsz, dim, length, n = self.shape[:4]
        chunk = state_chunk(n)
        per_step = max(1, bsz * dim * n)
        chunks = max(1, _SEGMENT_ELEMENTS // (per_step * chunk))
        return min(length, chunks * chunk)

    def segments(self):
        length, seg = self.shape.length, self.segment
        return [(s, min(s + seg, length)) for s in range(0, length, seg)]

    def B_at(self, s0: int, s1: int) -> Tensor:
        """B for steps s0..s1-1, as its einsum subscript ``B_sub`` reads it."""
        return self.B if self.shape.B_const else self.B[..., s0:s1]

    def C_at(self, s0: int, s1: int) -> Tensor:
        return self.C if self.shape.C_const else self.C[..., s0:s1]

    @staticmethod
    def time_major(t: Tensor, const: bool) -> Tensor:
        """B or C (from ``B_at``/``C_at``) broadcastable to (S, batch, G, dim/G, N)."""
        return t if const else t.permute(3, 0, 1, 2).unsqueeze(3)

    def a_and_bx(self, s0: int, s1: int) -> tuple[Tensor, Tensor]:
        """a = exp(delta*A) and bx = delta*u*B, time-major: (S, batch, G, dim/G, N)."""
        bsz, dim, _, n, groups = self.shape[:5]
        shape = (s1 - s0, bsz, groups, dim // groups, n)
        delta = self.delta[..., s0:s1].permute(3, 0, 1, 2).unsqueeze(-1)
        a = torch.mul(delta, self.A, out=self.u.new_empty(shape)).exp_()
        du = self.du[..., s0:s1].permute(3, 0, 1, 2).unsqueeze(-1)
        Bt = self.time_major(self.B_at(s0, s1), self.shape.B_const)
        bx = torch.mul(du, Bt, out=self.u.new_empty(shape))
        return a, bx

    def zero_state(self) -> Tensor:
        bsz, dim, _, n, groups = self.shape[:5]
        return self.u.new_zeros(bsz, groups, dim // groups, n)


def forward(x: ScanInputs, delta_softplus: bool, save_states: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(out, last_state, states): out in u's dtype; states at the end of every state chunk."""
    p = _Prepared(x, delta_softplus)
    bsz, dim, length, n = p.shape[:4]
    chunk = state_chunk(n)
    y = torch.empty(p.groups_view, dtype=p.dtype, device=x.u.device)
    saved = []
    h = p.zero_state()
    for s0, s1 in p.segments():
        a, bx = p.a_and_bx(s0, s1)
        hs = linear_scan(a, bx, h)
        y[..., s0:s1] = torch.einsum(f"sbgdn,{p.C_sub}->bgds", hs, p.C_at(s0, s1))
        h = hs[-1]
        if save_states:
            ends = list(range(chunk - 1 - s0 % chunk, s1 - s0, chunk))
            if s1 == length and length % chunk:
                ends.append(s1 - s0 - 1)
            saved.append(hs[ends])
    out = y
    if p.D is not None:
        out = out + p.D * p.u
    if p.z is not None:
        out = out * F.silu(p.z)
    out = out.reshape(bsz, dim, length).to(x.u.dtype)
    last_state = h.reshape(bsz, dim, n).clone()
    if save_states and saved:
        states = torch.cat(saved, dim=0).permute(1, 2, 3, 0, 4).reshape(bsz, dim, -1, n).contiguous()
        assert states.shape[2] == num_chunks(length, n)
    else:
        states = p.u.new_zeros(bsz, dim, num_chunks(length, n) if save_states else 0, n)
    return out, last_state, states


def _add_grad(grad: Tensor, segment: Tensor, const: bool, s0: int, s1: int) -> None:
    """A segment's B or C gradient: summed into a constant's, written into a time-varying one's."""
    if const:
        grad += segment
    else:
        grad[..., s0:s1] = segment


def backward(
    dout: Tensor,
    dlast_state: Optional[Tensor],
    x: ScanInputs,
    delta_softplus: bool,
) -> tuple[Tensor, ...]:
    """Gradients (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias), each in its input's dtype.

    Gradients of absent optional inputs (D, z, delta_bias) are empty tensors.
    """
    p = _Prepared(x, delta_softplus)
    bsz, dim, length, n, groups = p.shape[:5]
    B_const, C_const = p.shape.B_const, p.shape.C_const
    ct, dev = p.dtype, x.u.device
    dout = dout.to(ct).view(p.groups_view)
    segments = p.segments()

    # Forward pass for the state entering each segment.
    starts = []
    h = p.zero_state()
    for s0, s1 in segments:
        starts.append(h)
        a, bx = p.a_and_bx(s0, s1)
        h = linear_scan(a, bx, h)[-1]

    du = torch.empty(p.groups_view, dtype=ct, device=dev)
    ddelta = torch.empty_like(du)
    dz = torch.empty_like(du) if p.z is not None else None
    dA = torch.zeros_like(p.A)
    # a constant B/C sums its gradient over batch and time; a time-varying one is written per step
    dB = torch.zeros_like(p.B) if B_const else torch.empty_like(p.B)
    dC = torch.zeros_like(p.C) if C_const else torch.empty_like(p.C)
    dD = torch.zeros(groups, dim // groups, dtype=ct, device=dev) if p.D is not None else None

    # Adjoint entering from the future: dL/dh_{L-1} gets dlast_state; a_{t+1} past the end is 1.
    g_next = (dlast_state.to(ct).view(bsz, groups, dim // groups, n) if dlast_state is not None
              else p.zero_state())
    a_next = torch.ones_like(g_next)
    for (s0, s1), h0 in zip(reversed(segments), reversed(starts)):
        a, bx = p.a_and_bx(s0, s1)
        hs = linear_scan(a, bx, h0)  # (S, batch, G, dim/G, N)
        Bs, Cs = p.B_at(s0, s1), p.C_at(s0, s1)
        dy = dout[..., s0:s1]
        if p.z is not None:
            y = torch.einsum(f"sbgdn,{p.C_sub}->bgds", hs, Cs)
            pre = y if p.D is None else y + p.D * p.u[..., s0:s1]
            zs = p.z[..., s0:s1]
            sig = torch.sigmoid(zs)
            dz[..., s0:s1] = dy * pre * sig * (1 + zs * (1 - sig))
            dy = dy * zs * sig
        if p.D is not None:
            dD += (dy * p.u[..., s0:s1]).sum(dim=(0, -1))
        dy_tm = dy.permute(3, 0, 1, 2).unsqueeze(-1)  # (S, batch, G, dim/G, 1)
        xs = dy_tm * p.time_major(Cs, C_const)
        g = reverse_linear_scan(a, xs, g_next, a_next)  # g_t = x_t + a_{t+1} g_{t+1}
        g_next, a_next = g[0], a[0]

        d = p.delta[..., s0:s1]
        _add_grad(dC, torch.einsum(f"bgds,sbgdn->{p.C_sub}", dy, hs), C_const, s0, s1)
        _add_grad(dB, torch.einsum(f"bgds,sbgdn->{p.B_sub}", p.du[..., s0:s1], g), B_const, s0, s1)
        gB = torch.einsum(f"sbgdn,{p.B_sub}->bgds", g, Bs)
        gp = hs.sub_(bx).mul_(g)  # g_t * a_t * h_{t-1} (hs is not needed any more)
        dA += torch.einsum("sbgdn,bgds->gdn", gp, d)
        dd = p.u[..., s0:s1] * gB + torch.einsum("sbgdn,gdn->bgds", gp, p.A)
        dui = d * gB
        if p.D is not None:
            dui = dui + p.D * dy
        du[..., s0:s1] = dui
        if delta_softplus:
            dd = dd * torch.sigmoid(p.delta_raw[..., s0:s1])
        ddelta[..., s0:s1] = dd

    u, D, z, delta_bias = x.u, x.D, x.z, x.delta_bias

    def empty() -> Tensor:
        return u.new_empty(0)

    return (
        du.reshape(bsz, dim, length).to(u.dtype),
        ddelta.reshape(bsz, dim, length).to(x.delta.dtype),
        dA.reshape(dim, n).to(x.A.dtype),
        dB.reshape(x.B.shape).to(x.B.dtype),
        dC.reshape(x.C.shape).to(x.C.dtype),
        dD.reshape(dim).to(D.dtype) if D is not None else empty(),
        dz.reshape(bsz, dim, length).to(z.dtype) if z is not None else empty(),
        ddelta.sum(dim=(0, -1)).reshape(dim).to(delta_bias.dtype) if delta_bias is not None else empty(),
    )
