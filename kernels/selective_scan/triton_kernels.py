"""Triton kernels for the selective scan (forward and backward) and their launchers.

This module imports triton; nothing imports it until a Triton kernel is about to run.

Forward: one program per (batch, block of BLOCK_D channels of one group). The sequence is cut
into chunks of CHUNK steps; per chunk the program loads (BLOCK_D x CHUNK) tiles of u, delta, z
and (N x CHUNK) tiles of B, C once, builds a = exp(delta*A) and b = delta*u*B as
(BLOCK_D x N x CHUNK) register tiles, and solves h_t = a_t h_{t-1} + b_t inside the chunk with
``tl.associative_scan``; the state entering the chunk is carried in registers. One pass over L,
every input read once, out written once, and the state at the end of each chunk saved (fp32)
for the backward.

Backward: one program per (batch, N_SUB blocks of BLOCK_D channels of one group), chunks in
reverse. Each chunk recomputes its states from the saved state before it, then solves the
adjoint g_t = dy_t C_t + a_{t+1} g_{t+1} with a reverse associative scan; the adjoint entering
from the next chunk is carried in registers for all N_SUB blocks. dB and dC are summed over the
program's channels in registers and written as one partial per program (summed over the
group's programs afterwards: deterministic, no atomics); dA, dD, ddelta_bias are accumulated
per (batch, channel) in registers and summed over the batch afterwards.

All arithmetic is fp32; u, delta, z, B, C, out and gradients are read/written in their own
dtype (fp32, fp16 or bf16).
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from .validation import check_inputs, num_chunks, state_chunk

__all__ = ["forward", "backward", "forward_config", "backward_config"]

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _combine(a_l, b_l, a_r, b_r):
    # Apply step (a_l, b_l) then (a_r, b_r): h -> a_r * (a_l * h + b_l) + b_r.
    return a_l * a_r, b_l * a_r + b_r


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _softplus(x):
    # log(1 + e^x) (torch's threshold 20); log1p by its series where e^x is tiny.
    e = tl.exp(tl.minimum(x, 20.0))
    log1p_e = tl.where(e < 1e-4, e * (1.0 - 0.5 * e), tl.log(1.0 + e))
    return tl.where(x > 20.0, x, log1p_e)


@triton.jit
def _load_delta(ptrs, mask, bias, SOFTPLUS: tl.constexpr):
    """delta (+ bias, softplus) as fp32, exactly 0 where masked; also the pre-softplus value."""
    raw = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32) + bias[:, None]
    delta = raw
    if SOFTPLUS:
        delta = _softplus(raw)
    return tl.where(mask, delta, 0.0), raw


@triton.jit
def _fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
    out_ptr, last_ptr, states_ptr,
    dim, L, N, Dg, n_dblocks, n_chunks,
    su_b, su_d, su_l,
    sdt_b, sdt_d, sdt_l,
    sA_d, sA_n,
    sB_b, sB_g, sB_n, sB_l,
    sC_b, sC_g, sC_n, sC_l,
    sD, sbias,
    sz_b, sz_d, sz_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, SAVE_STATES: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    grp = pid // n_dblocks
    offs_dg = (pid % n_dblocks) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_dg < Dg
    d = (grp * Dg + offs_dg).to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    mask_dn = mask_d[:, None] & mask_n[None, :]
    offs_t = tl.arange(0, CHUNK)

    A2 = tl.load(A_ptr + d[:, None] * sA_d + offs_n[None, :] * sA_n, mask=mask_dn, other=0.0)
    A2 = A2.to(tl.float32) * LOG2E  # exp(x) = exp2(x * log2(e))
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d * sbias, mask=mask_d, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + d * sD, mask=mask_d, other=0.0).to(tl.float32)

    u_row = u_ptr + b * su_b + d[:, None] * su_d
    dt_row = delta_ptr + b * sdt_b + d[:, None] * sdt_d
    z_row = z_ptr + b * sz_b + d[:, None] * sz_d
    out_row = out_ptr + (b * dim + d[:, None]) * L
    B_row = B_ptr + b * sB_b + grp * sB_g + offs_n[:, None] * sB_n
    C_row = C_ptr + b * sC_b + grp * sC_g + offs_n[:, None] * sC_n
    state_off = (b * dim + d[:, None]) * n_chunks * N + offs_n[None, :]

    h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    for c in range(n_chunks):
        t = c * CHUNK + offs_t
        mask_t = t < L
        m2 = mask_d[:, None] & mask_t[None, :]
        mnt = mask_n[:, None] & mask_t[None, :]
        delta, raw = _load_delta(dt_row + t[None, :] * sdt_l, m2, bias, SOFTPLUS)
        u = tl.load(u_row + t[None, :] * su_l, mask=m2, other=0.0).to(tl.float32)
        Bt = tl.load(B_row + t[None, :] * sB_l, mask=mnt, other=0.0).to(tl.float32)
        Ct = tl.load(C_row + t[None, :] * sC_l, mask=mnt, other=0.0).to(tl.float32)

        # (BLOCK_D, BLOCK_N, CHUNK); padded steps have a = 1, b = 0 and leave h unchanged.
        a = tl.exp2(delta[:, None, :] * A2[:, :, None])
        bx = (delta * u)[:, None, :] * Bt[None, :, :]
        a_cum, b_cum = tl.associative_scan((a, bx), axis=2, combine_fn=_combine)
        hs = a_cum * h[:, :, None] + b_cum
        y = tl.sum(hs * Ct[None, :, :], axis=1)
        h = tl.sum(tl.where(offs_t[None, None, :] == CHUNK - 1, hs, 0.0), axis=2)

        if HAS_D:
            y += Dv[:, None] * u
        if HAS_Z:
            zz = tl.load(z_row + t[None, :] * sz_l, mask=m2, other=0.0).to(tl.float32)
            y = y * zz * _sigmoid(zz)
        tl.store(out_row + t[None, :], y.to(out_ptr.dtype.element_ty), mask=m2)
        if SAVE_STATES:
            tl.store(states_ptr + state_off + c * N, h, mask=mask_dn)

    tl.store(last_ptr + (b * dim + d[:, None]) * N + offs_n[None, :], h, mask=mask_dn)


@triton.jit
def _bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, dlast_ptr,
    states_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    dim, L, N, Dg, n_dblocks, n_chunks,
    su_b, su_d, su_l,
    sdt_b, sdt_d, sdt_l,
    sA_d, sA_n,
    sB_b, sB_g, sB_n, sB_l,
    sC_b, sC_g, sC_n, sC_l,
    sD, sbias,
    sz_b, sz_d, sz_l,
    sdo_b, sdo_d, sdo_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_DLAST: tl.constexpr,
    BLOCK_D: tl.constexpr, N_SUB: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    grp = pid // n_dblocks
    dblk = pid % n_dblocks
    first_dg = dblk * (BLOCK_D * N_SUB)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_t = tl.arange(0, CHUNK)
    offs_bd = tl.arange(0, BLOCK_D)
    sub = tl.arange(0, N_SUB)

    # Per-channel values of all N_SUB blocks live in (N_SUB, BLOCK_D, BLOCK_N) registers.
    dg3 = first_dg + sub[:, None, None] * BLOCK_D + offs_bd[None, :, None]
    mask3 = (dg3 < Dg) & mask_n[None, None, :]
    d3 = (grp * Dg + dg3).to(tl.int64)
    vec_off3 = (b * dim + d3) * N + offs_n[None, None, :]  # into (batch, dim, N) buffers
    if HAS_DLAST:
        g_carry = tl.load(dlast_ptr + vec_off3, mask=mask3, other=0.0).to(tl.float32)
    else:
        g_carry = tl.zeros([N_SUB, BLOCK_D, BLOCK_N], dtype=tl.float32)
    dA_acc = tl.zeros([N_SUB, BLOCK_D, BLOCK_N], dtype=tl.float32)
    dD_acc = tl.zeros([N_SUB, BLOCK_D], dtype=tl.float32)
    dbias_acc = tl.zeros([N_SUB, BLOCK_D], dtype=tl.float32)

    B_row = B_ptr + b * sB_b + grp * sB_g + offs_n[:, None] * sB_n
    C_row = C_ptr + b * sC_b + grp * sC_g + offs_n[:, None] * sC_n
    part_row = ((b * (n_dblocks * (dim // Dg)) + pid) * N + offs_n[:, None]) * L

    for ci in range(n_chunks):
        c = n_chunks - 1 - ci
        t = c * CHUNK + offs_t
        mask_t = t < L
        mask_t1 = (t + 1) < L
        mnt = mask_n[:, None] & mask_t[None, :]
        Bt = tl.load(B_row + t[None, :] * sB_l, mask=mnt, other=0.0).to(tl.float32)
        Ct = tl.load(C_row + t[None, :] * sC_l, mask=mnt, other=0.0).to(tl.float32)
        dB_acc = tl.zeros([BLOCK_N, CHUNK], dtype=tl.float32)
        dC_acc = tl.zeros([BLOCK_N, CHUNK], dtype=tl.float32)

        for s in range(N_SUB):
            offs_dg = first_dg + s * BLOCK_D + offs_bd
            mask_d = offs_dg < Dg
            d = (grp * Dg + offs_dg).to(tl.int64)
            mask_dn = mask_d[:, None] & mask_n[None, :]
            m2 = mask_d[:, None] & mask_t[None, :]
            m2_next = mask_d[:, None] & mask_t1[None, :]
            is_s = sub[:, None, None] == s
            is_s2 = sub[:, None] == s

            A = tl.load(A_ptr + d[:, None] * sA_d + offs_n[None, :] * sA_n, mask=mask_dn,
                        other=0.0).to(tl.float32)
            A2 = A * LOG2E
            if HAS_BIAS:
                bias = tl.load(bias_ptr + d * sbias, mask=mask_d, other=0.0).to(tl.float32)
            else:
                bias = tl.zeros([BLOCK_D], dtype=tl.float32)
            state_row = (b * dim + d[:, None]) * n_chunks * N + offs_n[None, :]
            h0 = tl.load(states_ptr + state_row + tl.maximum(c - 1, 0) * N, mask=mask_dn,
                         other=0.0)
            h0 = tl.where(c > 0, h0, 0.0)  # the first chunk starts from h = 0

            dt_row = delta_ptr + b * sdt_b + d[:, None] * sdt_d
            delta, raw = _load_delta(dt_row + t[None, :] * sdt_l, m2, bias, SOFTPLUS)
            delta_next, _ = _load_delta(dt_row + (t[None, :] + 1) * sdt_l, m2_next, bias, SOFTPLUS)
            u = tl.load(u_ptr + b * su_b + d[:, None] * su_d + t[None, :] * su_l, mask=m2,
                        other=0.0).to(tl.float32)
            dy = tl.load(dout_ptr + b * sdo_b + d[:, None] * sdo_d + t[None, :] * sdo_l, mask=m2,
                         other=0.0).to(tl.float32)

            # Recompute the chunk's states from the saved state before it.
            a = tl.exp2(delta[:, None, :] * A2[:, :, None])
            du_ = delta * u
            bx = du_[:, None, :] * Bt[None, :, :]
            a_cum, b_cum = tl.associative_scan((a, bx), axis=2, combine_fn=_combine)
            hs = a_cum * h0[:, :, None] + b_cum

            out_off = (b * dim + d[:, None]) * L + t[None, :]
            if HAS_D:
                Dv = tl.load(D_ptr + d * sD, mask=mask_d, other=0.0).to(tl.float32)
            if HAS_Z:
                y = tl.sum(hs * Ct[None, :, :], axis=1)
                if HAS_D:
                    y += Dv[:, None] * u
                zz = tl.load(z_ptr + b * sz_b + d[:, None] * sz_d + t[None, :] * sz_l, mask=m2,
                             other=0.0).to(tl.float32)
                sig = _sigmoid(zz)
                dz = dy * y * sig * (1.0 + zz * (1.0 - sig))
                tl.store(dz_ptr + out_off, dz.to(dz_ptr.dtype.element_ty), mask=m2)
                dy = dy * zz * sig
            if HAS_D:
                dD_acc += tl.where(is_s2, tl.sum(dy * u, axis=1)[None, :], 0.0)

            # Adjoint: g_t = dy_t C_t + a_{t+1} g_{t+1}, reverse scan plus the carry from the
            # next chunk; a_{t+1} past the end of the sequence is exp(0) = 1.
            x = dy[:, None, :] * Ct[None, :, :]
            a_next = tl.exp2(delta_next[:, None, :] * A2[:, :, None])
            gc = tl.sum(tl.where(is_s, g_carry, 0.0), axis=0)
            a_rev, x_rev = tl.associative_scan((a_next, x), axis=2, combine_fn=_combine,
                                               reverse=True)
            g = x_rev + a_rev * gc[:, :, None]
            g_first = tl.sum(tl.where(offs_t[None, None, :] == 0, g, 0.0), axis=2)
            g_carry = tl.where(is_s, g_first[None, :, :], g_carry)

            dC_acc += tl.sum(hs * dy[:, None, :], axis=0)
            dB_acc += tl.sum(g * du_[:, None, :], axis=0)
            gB = tl.sum(g * Bt[None, :, :], axis=1)
            gp = g * (hs - bx)  # g_t * a_t * h_{t-1}
            dA_acc += tl.where(is_s, tl.sum(gp * delta[:, None, :], axis=2)[None, :, :], 0.0)
            ddelta = u * gB + tl.sum(gp * A[:, :, None], axis=1)
            du = delta * gB
            if HAS_D:
                du += Dv[:, None] * dy
            if SOFTPLUS:
                ddelta = ddelta * _sigmoid(raw)
            ddelta = tl.where(m2, ddelta, 0.0)
            dbias_acc += tl.where(is_s2, tl.sum(ddelta, axis=1)[None, :], 0.0)
            tl.store(du_ptr + out_off, du.to(du_ptr.dtype.element_ty), mask=m2)
            tl.store(ddelta_ptr + out_off, ddelta.to(ddelta_ptr.dtype.element_ty), mask=m2)

        tl.store(dB_ptr + part_row + t[None, :], dB_acc, mask=mnt)
        tl.store(dC_ptr + part_row + t[None, :], dC_acc, mask=mnt)

    tl.store(dA_ptr + vec_off3, dA_acc, mask=mask3)
    dg2 = first_dg + sub[:, None] * BLOCK_D + offs_bd[None, :]
    mask2 = dg2 < Dg
    vec_off2 = b * dim + (grp * Dg + dg2).to(tl.int64)
    if HAS_D:
        tl.store(dD_ptr + vec_off2, dD_acc, mask=mask2)
    if HAS_BIAS:
        tl.store(dbias_ptr + vec_off2, dbias_acc, mask=mask2)


# ----------------------------------------------------------------------------------------------
# Launchers


def _next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(1, n))


def _block_n(dstate: int) -> int:
    return max(2, _next_pow2(dstate))


def forward_config(dstate: int, dim_per_group: int) -> dict:
    """Tile sizes of the forward kernel: about 4096 fp32 per (BLOCK_D x BLOCK_N x CHUNK) tile."""
    block_n, chunk = _block_n(dstate), state_chunk(dstate)
    block_d = max(1, min(_next_pow2(dim_per_group), 4096 // (block_n * chunk)))
    return {"BLOCK_D": block_d, "num_warps": 4 if block_d * block_n * chunk <= 2048 else 8}


def backward_config(dstate: int, dim_per_group: int, programs_per_block: int = 1) -> dict:
    """Tile sizes of the backward kernel.

    A program covers N_SUB * BLOCK_D channels: the more, the fewer dB/dC partials to sum, the
    fewer programs. ``programs_per_block`` is batch * groups (programs per channel block).
    """
    block_n, chunk = _block_n(dstate), state_chunk(dstate)
    block_d = max(1, min(_next_pow2(dim_per_group), 2048 // (block_n * chunk)))
    n_sub = max(1, min(_next_pow2(dim_per_group) // block_d, 2048 // (block_d * block_n)))
    # Keep at least ~512 programs (a few per SM) when the problem allows it.
    while n_sub > 1 and programs_per_block * -(-dim_per_group // (block_d * n_sub)) < 512:
        n_sub //= 2
    n_sub = min(n_sub, 16)
    return {"BLOCK_D": block_d, "N_SUB": n_sub, "num_warps": 4 if block_d * block_n * chunk <= 1024 else 8}


def _check_triton_inputs(*tensors: Optional[Tensor]) -> None:
    u = tensors[0]
    if u.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(
            f"selective_scan_triton: u has dtype {u.dtype}, needs float32, float16 or bfloat16 "
            "(the Triton kernels do not support float64; use the CPU kernel)")
    if u.device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise ValueError(
            f"selective_scan_triton: u is on device {u.device}, needs a CUDA device "
            "(or TRITON_INTERPRET=1 set before triton is imported, to run on CPU tensors)")


def _strides(t: Optional[Tensor], n: int) -> tuple[int, ...]:
    return tuple(t.stride()) if t is not None else (0,) * n


def _groups_view(t: Tensor) -> Tensor:
    return t if t.dim() == 4 else t.unsqueeze(1)


class _DeviceGuard:
    def __init__(self, t: Tensor) -> None:
        self._ctx = torch.cuda.device(t.device) if t.is_cuda else None

    def __enter__(self):
        if self._ctx is not None:
            self._ctx.__enter__()

    def __exit__(self, *exc):
        if self._ctx is not None:
            self._ctx.__exit__(*exc)


def forward(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = False,
    save_states: bool = True,
    *,
    block_d: Optional[int] = None,
    num_warps: Optional[int] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the forward kernel: (out, last_state, states), like the PyTorch kernel."""
    bsz, dim, length, n, groups = check_inputs(u, delta, A, B, C, D, z, delta_bias)
    _check_triton_inputs(u)
    dg = dim // groups
    chunk, n_chunks = state_chunk(n), num_chunks(length, n)
    cfg = forward_config(n, dg)
    block_d = block_d or cfg["BLOCK_D"]
    num_warps = num_warps or cfg["num_warps"]
    out = torch.empty(bsz, dim, length, dtype=u.dtype, device=u.device)
    last = torch.empty(bsz, dim, n, dtype=torch.float32, device=u.device)
    states = torch.empty(bsz, dim, n_chunks if save_states else 0, n, dtype=torch.float32,
                         device=u.device)
    Bg, Cg = _groups_view(B), _groups_view(C)
    n_dblocks = triton.cdiv(dg, block_d)
    grid = (groups * n_dblocks, bsz)
    with _DeviceGuard(u):
        _fwd_kernel[grid](
            u, delta, A, Bg, Cg, D if D is not None else u, z if z is not None else u,
            delta_bias if delta_bias is not None else u,
            out, last, states,
            dim, length, n, dg, n_dblocks, n_chunks,
            *u.stride(), *delta.stride(), *A.stride(), *Bg.stride(), *Cg.stride(),
            *_strides(D, 1), *_strides(delta_bias, 1), *_strides(z, 3),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=bool(delta_softplus), SAVE_STATES=bool(save_states),
            BLOCK_D=block_d, BLOCK_N=_block_n(n), CHUNK=chunk, num_warps=num_warps,
        )
    return out, last, states


def backward(
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
    states: Optional[Tensor] = None,
    *,
    block_d: Optional[int] = None,
    n_sub: Optional[int] = None,
    num_warps: Optional[int] = None,
) -> tuple[Tensor, ...]:
    """Run the backward kernel: (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias).

    ``states`` are the forward's saved chunk states; when absent (or empty) they are recomputed.
    Gradients of absent optional inputs are empty tensors.
    """
    bsz, dim, length, n, groups = check_inputs(u, delta, A, B, C, D, z, delta_bias)
    _check_triton_inputs(u)
    if tuple(dout.shape) != (bsz, dim, length):
        raise ValueError(f"selective_scan backward: dout has shape {tuple(dout.shape)}, needs "
                         f"{(bsz, dim, length)}")
    if dlast_state is not None and tuple(dlast_state.shape) != (bsz, dim, n):
        raise ValueError(f"selective_scan backward: dlast_state has shape "
                         f"{tuple(dlast_state.shape)}, needs {(bsz, dim, n)}")
    dg = dim // groups
    chunk, n_chunks = state_chunk(n), num_chunks(length, n)
    if states is None or states.shape[2] == 0:
        states = forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, True)[2]
    if tuple(states.shape) != (bsz, dim, n_chunks, n) or not states.is_contiguous():
        raise ValueError(f"selective_scan backward: states has shape {tuple(states.shape)}, needs "
                         f"contiguous {(bsz, dim, n_chunks, n)} fp32 chunk states")
    states = states.to(torch.float32)
    cfg = backward_config(n, dg, bsz * groups)
    block_d = block_d or cfg["BLOCK_D"]
    n_sub = n_sub or cfg["N_SUB"]
    num_warps = num_warps or cfg["num_warps"]
    n_dblocks = triton.cdiv(dg, block_d * n_sub)
    dev, f32 = u.device, torch.float32

    du = torch.empty(bsz, dim, length, dtype=u.dtype, device=dev)
    ddelta = torch.empty(bsz, dim, length, dtype=delta.dtype, device=dev)
    dz = torch.empty(bsz, dim, length, dtype=z.dtype, device=dev) if z is not None else None
    dA_part = torch.empty(bsz, dim, n, dtype=f32, device=dev)
    dB_part = torch.empty(bsz, groups, n_dblocks, n, length, dtype=f32, device=dev)
    dC_part = torch.empty_like(dB_part)
    dD_part = torch.empty(bsz, dim, dtype=f32, device=dev) if D is not None else None
    dbias_part = torch.empty(bsz, dim, dtype=f32, device=dev) if delta_bias is not None else None
    dlast = dlast_state.contiguous() if dlast_state is not None else None
    Bg, Cg = _groups_view(B), _groups_view(C)
    grid = (groups * n_dblocks, bsz)
    with _DeviceGuard(u):
        _bwd_kernel[grid](
            u, delta, A, Bg, Cg, D if D is not None else u, z if z is not None else u,
            delta_bias if delta_bias is not None else u, dout, dlast if dlast is not None else u,
            states,
            du, ddelta, dz if dz is not None else du, dA_part, dB_part, dC_part,
            dD_part if dD_part is not None else dA_part,
            dbias_part if dbias_part is not None else dA_part,
            dim, length, n, dg, n_dblocks, n_chunks,
            *u.stride(), *delta.stride(), *A.stride(), *Bg.stride(), *Cg.stride(),
            *_strides(D, 1), *_strides(delta_bias, 1), *_strides(z, 3), *dout.stride(),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=bool(delta_softplus), HAS_DLAST=dlast is not None,
            BLOCK_D=block_d, N_SUB=n_sub, BLOCK_N=_block_n(n), CHUNK=chunk, num_warps=num_warps,
        )

    def empty() -> Tensor:
        return u.new_empty(0)

    return (
        du,
        ddelta,
        dA_part.sum(0).to(A.dtype),
        dB_part.sum(2).reshape(B.shape).to(B.dtype),
        dC_part.sum(2).reshape(C.shape).to(C.dtype),
        dD_part.sum(0).to(D.dtype) if D is not None else empty(),
        dz if dz is not None else empty(),
        dbias_part.sum(0).to(delta_bias.dtype) if delta_bias is not None else empty(),
    )
