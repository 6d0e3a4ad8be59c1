"""Triton kernels for the selective scan (forward and backward) and their launchers.

This module imports triton (an optional dependency: ``pip install 'dispatchcount[triton]'``);
without it, importing this module raises an ImportError that says so, and the op runs its
PyTorch kernel instead. Kernels are launched through ``torch.library.wrap_triton`` so that
``torch.compile`` can trace the launches (see op.py).

Layout idea: a program owns BLOCK_D channels of one group, each channel's N-vector state in
registers, and walks time sequentially in steps of T (T time steps of u, delta, z, B, C are
loaded per row as one short vector, so loads stay coalesced per row and the steps are
extracted in-thread for free). The recurrence is then a plain multiply-add per (d, n, t): no
parallel scan across lanes (a ``tl.associative_scan`` over time costs ~6x more instructions
per element here, measured on the sm_90 SASS), one exp2 per element.

Forward: one pass over L; every input read once, out written once; the state at the end of
every chunk of ``state_chunk(N)`` steps saved (fp32) for the backward.

Backward, chunks in reverse: pass 1 recomputes the states at the start of each T-step
sub-chunk of the chunk (from the saved state before the chunk) into a small scratch buffer;
pass 2 takes the sub-chunks in reverse, recomputes their T states into registers, and runs
the adjoint g_t = dy_t C_t + a_{t+1} g_{t+1} step by step backwards. dB and dC are summed over
the program's channels and written as one partial per program and time step (summed over the
group's programs afterwards: deterministic, no atomics); dA, dD, ddelta_bias are accumulated
per (batch, channel) in registers and summed over the batch afterwards.

A constant B or C (dim, N) is loaded once per program as a (channels x N) tile; its gradient
is accumulated per (batch, channel) in registers like dA's.

All arithmetic is fp32; u, delta, z, B, C, out and gradients are read/written in their own
dtype (fp32, fp16 or bf16).
"""

from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError as error:
    raise ImportError("the selective scan's Triton kernels need triton: "
                      "pip install 'dispatchcount[triton]'") from error

from .validation import ScanInputs, check_inputs, is_abstract, next_pow2, num_chunks, state_chunk

try:
    from torch.library import wrap_triton as _torch_wrap_triton
except ImportError:  # torch < 2.6
    _torch_wrap_triton = None

__all__ = ["forward", "backward", "forward_config", "backward_config"]

LOG2E = tl.constexpr(1.4426950408889634)


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
def _pick(tile, sel):
    """Column ``sel`` (a one-hot mask over the last axis) of a 2D tile.

    With the last axis held in-thread the selects are compile-time constants and x + -0.0 == x,
    so this folds to a register move.
    """
    return tl.sum(tl.where(sel[None, :], tile, -0.0), axis=1)


@triton.jit
def _pick3(tile, sel):
    return tl.sum(tl.where(sel[None, None, :], tile, -0.0), axis=2)


@triton.jit
def _at_step(tile, sel, CONST: tl.constexpr):
    """B or C at step ``sel``, broadcastable to (BLOCK_D, BLOCK_N): a constant's (d, n) tile as
    it is, else column ``sel`` of the (N, T) tile loaded for the time-varying one."""
    if CONST:
        return tile
    else:
        return _pick(tile, sel)[None, :]


@triton.jit
def _load_step(ptrs, mask, tile, CONST: tl.constexpr):
    """B or C at one step, broadcastable to (BLOCK_D, BLOCK_N): a constant's (d, n) tile as it
    is, else the step's N values loaded from ``ptrs``."""
    if CONST:
        return tile
    else:
        return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)[None, :]


@triton.jit
def _load_const(ptr, d, offs_n, N, mask_dn, CONST: tl.constexpr):
    """The (BLOCK_D, BLOCK_N) tile of a constant, contiguous (dim, N) B or C (zeros otherwise)."""
    if CONST:
        return tl.load(ptr + d[:, None] * N + offs_n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
    else:
        return tl.zeros(mask_dn.shape, dtype=tl.float32)


@triton.jit
def _program(Dg, N, n_dblocks, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's place: (pid, batch b, group, its channels d, their mask, offs_n, the
    (channel, state) mask). Program pid owns BLOCK_D channels of group pid // n_dblocks."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    grp = pid // n_dblocks
    offs_dg = (pid % n_dblocks) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_dg < Dg
    d = (grp * Dg + offs_dg).to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    mask_dn = mask_d[:, None] & (offs_n < N)[None, :]
    return pid, b, grp, d, mask_d, offs_n, mask_dn


@triton.jit
def _channel_params(A_ptr, sA_d, sA_n, bias_ptr, sbias, D_ptr, sD, B_ptr, C_ptr, d, offs_n, N,
                    mask_d, mask_dn, HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr,
                    B_CONST: tl.constexpr, C_CONST: tl.constexpr):
    """What a program reads once, in fp32: A (0 where padded), delta_bias and D (0 when
    absent), and the tiles of a constant B and C."""
    A = tl.load(A_ptr + d[:, None] * sA_d + offs_n[None, :] * sA_n, mask=mask_dn,
                other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d * sbias, mask=mask_d, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros(mask_d.shape, dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + d * sD, mask=mask_d, other=0.0).to(tl.float32)
    else:
        Dv = tl.zeros(mask_d.shape, dtype=tl.float32)
    B_dn = _load_const(B_ptr, d, offs_n, N, mask_dn, B_CONST)
    C_dn = _load_const(C_ptr, d, offs_n, N, mask_dn, C_CONST)
    return A, bias, Dv, B_dn, C_dn


@triton.jit
def _put(tile, sel, col):
    """``tile`` with column ``sel`` replaced by ``col``."""
    return tl.where(sel[None, :], col[:, None], tile)


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
    SOFTPLUS: tl.constexpr, SAVE_STATES: tl.constexpr, B_CONST: tl.constexpr, C_CONST: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, T: tl.constexpr,
):
    pid, b, grp, d, mask_d, offs_n, mask_dn = _program(Dg, N, n_dblocks, BLOCK_D, BLOCK_N)
    offs_t = tl.arange(0, T)
    A, bias, Dv, B_dn, C_dn = _channel_params(
        A_ptr, sA_d, sA_n, bias_ptr, sbias, D_ptr, sD, B_ptr, C_ptr, d, offs_n, N, mask_d, mask_dn,
        HAS_BIAS, HAS_D, B_CONST, C_CONST)
    A2 = A * LOG2E  # exp(x) = exp2(x * log2(e)); padded (d, n) get a = 1

    u_row = u_ptr + b * su_b + d[:, None] * su_d
    dt_row = delta_ptr + b * sdt_b + d[:, None] * sdt_d
    z_row = z_ptr + b * sz_b + d[:, None] * sz_d
    out_row = out_ptr + (b * dim + d[:, None]) * L
    B_row = B_ptr + b * sB_b + grp * sB_g + offs_n[:, None] * sB_n
    C_row = C_ptr + b * sC_b + grp * sC_g + offs_n[:, None] * sC_n
    state_ptrs = states_ptr + (b * dim + d[:, None]) * n_chunks * N + offs_n[None, :]

    h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    for t0 in range(0, L, T):
        tt = t0 + offs_t
        mask_t = tt < L
        m2 = mask_d[:, None] & mask_t[None, :]
        mnt = (offs_n < N)[:, None] & mask_t[None, :]
        delta, raw = _load_delta(dt_row + tt[None, :] * sdt_l, m2, bias, SOFTPLUS)
        u = tl.load(u_row + tt[None, :] * su_l, mask=m2, other=0.0).to(tl.float32)
        if B_CONST:
            Bt = B_dn
        else:
            Bt = tl.load(B_row + tt[None, :] * sB_l, mask=mnt, other=0.0).to(tl.float32)
        if C_CONST:
            Ct = C_dn
        else:
            Ct = tl.load(C_row + tt[None, :] * sC_l, mask=mnt, other=0.0).to(tl.float32)
        du = delta * u
        y = tl.zeros([BLOCK_D, T], dtype=tl.float32)
        # Padded steps (t >= L) have delta = 0, so a = 1 and b = 0: h is left unchanged.
        for j in tl.static_range(T):
            sel = offs_t == j
            a = tl.exp2(_pick(delta, sel)[:, None] * A2)
            h = a * h + _pick(du, sel)[:, None] * _at_step(Bt, sel, B_CONST)
            y = _put(y, sel, tl.sum(h * _at_step(Ct, sel, C_CONST), axis=1))
        if HAS_D:
            y += Dv[:, None] * u
        if HAS_Z:
            zz = tl.load(z_row + tt[None, :] * sz_l, mask=m2, other=0.0).to(tl.float32)
            y = y * zz * _sigmoid(zz)
        tl.store(out_row + tt[None, :], y.to(out_ptr.dtype.element_ty), mask=m2)
        if SAVE_STATES:
            t_end = t0 + T
            if (t_end % CHUNK == 0) | (t_end >= L):
                tl.store(state_ptrs + ((t_end - 1) // CHUNK) * N, h, mask=mask_dn)

    tl.store(last_ptr + (b * dim + d[:, None]) * N + offs_n[None, :], h, mask=mask_dn)


@triton.jit
def _bwd_kernel(
    u_ptr, delta_ptr, A_ptr, Bt_ptr, Ct_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, dlast_ptr,
    states_ptr, scratch_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    dim, L, N, Dg, n_dblocks, n_chunks,
    su_b, su_d, su_l,
    sdt_b, sdt_d, sdt_l,
    sA_d, sA_n,
    sz_b, sz_d, sz_l,
    sdo_b, sdo_d, sdo_l,
    sD, sbias,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_DLAST: tl.constexpr, KEEP_DECAY: tl.constexpr,
    B_CONST: tl.constexpr, C_CONST: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, T: tl.constexpr,
):
    # Bt, Ct: contiguous (batch, groups, L, N) copies of B, C: a step's N values are contiguous;
    # a constant B/C: contiguous (dim, N), with its gradient written like dA's (batch, dim, N).
    SUB: tl.constexpr = CHUNK // T  # sub-chunks per chunk
    pid, b, grp, d, mask_d, offs_n, mask_dn = _program(Dg, N, n_dblocks, BLOCK_D, BLOCK_N)
    n_groups = dim // Dg
    offs_t = tl.arange(0, T)
    A, bias, Dv, B_dn, C_dn = _channel_params(
        A_ptr, sA_d, sA_n, bias_ptr, sbias, D_ptr, sD, Bt_ptr, Ct_ptr, d, offs_n, N, mask_d,
        mask_dn, HAS_BIAS, HAS_D, B_CONST, C_CONST)
    A2 = A * LOG2E

    u_row = u_ptr + b * su_b + d[:, None] * su_d
    dt_row = delta_ptr + b * sdt_b + d[:, None] * sdt_d
    z_row = z_ptr + b * sz_b + d[:, None] * sz_d
    do_row = dout_ptr + b * sdo_b + d[:, None] * sdo_d
    grad_row = (b * dim + d[:, None]) * L  # du, ddelta, dz: contiguous (batch, dim, L)
    bc_row = (b * n_groups + grp) * L * N + offs_n  # into Bt, Ct
    # dB, dC partials: (batch, groups, n_dblocks, L, N), one (L, N) slab per program
    part_row = (b * (n_dblocks * n_groups) + pid) * L * N + offs_n
    vec_off = (b * dim + d[:, None]) * N + offs_n[None, :]  # (batch, dim, N) buffers
    state_ptrs = states_ptr + (b * dim + d[:, None]) * n_chunks * N + offs_n[None, :]
    scratch = scratch_ptr + (b * dim + d[:, None]) * SUB * N + offs_n[None, :]

    if HAS_DLAST:
        g = tl.load(dlast_ptr + vec_off, mask=mask_dn, other=0.0).to(tl.float32)
    else:
        g = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    a_next = tl.full([BLOCK_D, BLOCK_N], 1.0, dtype=tl.float32)  # a_{t+1}; 1 past the end
    dA_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dB_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)  # constant B / C only
    dC_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)

    for ci in range(n_chunks):
        c = n_chunks - 1 - ci
        # Pass 1: the state entering each sub-chunk, from the saved state before the chunk.
        h = tl.load(state_ptrs + tl.maximum(c - 1, 0) * N, mask=mask_dn, other=0.0)
        h = tl.where(c > 0, h, 0.0)
        n_sub = tl.minimum(SUB, (L - c * CHUNK + T - 1) // T)  # sub-chunks inside the sequence
        for k in range(n_sub):
            t0 = c * CHUNK + k * T
            tl.store(scratch + k * N, h, mask=mask_dn)
            tt = t0 + offs_t
            m2 = mask_d[:, None] & (tt < L)[None, :]
            delta, raw = _load_delta(dt_row + tt[None, :] * sdt_l, m2, bias, SOFTPLUS)
            du = delta * tl.load(u_row + tt[None, :] * su_l, mask=m2, other=0.0).to(tl.float32)
            for j in tl.static_range(T):
                sel = offs_t == j
                m_j = offs_n < tl.where(t0 + j < L, N, 0)  # n < N at steps inside the sequence
                B_j = _load_step(Bt_ptr + bc_row + (t0 + j) * N, m_j, B_dn, B_CONST)
                a = tl.exp2(_pick(delta, sel)[:, None] * A2)
                h = a * h + _pick(du, sel)[:, None] * B_j
        tl.debug_barrier()  # scratch written by pass 1 is read by other threads in pass 2

        # Pass 2: sub-chunks in reverse; recompute their states, then the adjoint backwards.
        for kk in range(SUB):
            k = SUB - 1 - kk
            t0 = c * CHUNK + k * T
            if t0 < L:
                h = tl.load(scratch + k * N, mask=mask_dn, other=0.0)
                tt = t0 + offs_t
                m2 = mask_d[:, None] & (tt < L)[None, :]
                delta, raw = _load_delta(dt_row + tt[None, :] * sdt_l, m2, bias, SOFTPLUS)
                u = tl.load(u_row + tt[None, :] * su_l, mask=m2, other=0.0).to(tl.float32)
                dy = tl.load(do_row + tt[None, :] * sdo_l, mask=m2, other=0.0).to(tl.float32)
                du = delta * u
                hs = tl.zeros([BLOCK_D, BLOCK_N, T], dtype=tl.float32)
                if KEEP_DECAY:
                    as_ = tl.zeros([BLOCK_D, BLOCK_N, T], dtype=tl.float32)
                y = tl.zeros([BLOCK_D, T], dtype=tl.float32)
                for j in tl.static_range(T):
                    sel = offs_t == j
                    m_j = offs_n < tl.where(t0 + j < L, N, 0)
                    B_j = _load_step(Bt_ptr + bc_row + (t0 + j) * N, m_j, B_dn, B_CONST)
                    a = tl.exp2(_pick(delta, sel)[:, None] * A2)
                    h = a * h + _pick(du, sel)[:, None] * B_j
                    hs = tl.where(sel[None, None, :], h[:, :, None], hs)
                    if KEEP_DECAY:
                        as_ = tl.where(sel[None, None, :], a[:, :, None], as_)
                    if HAS_Z:
                        C_j = _load_step(Ct_ptr + bc_row + (t0 + j) * N, m_j, C_dn, C_CONST)
                        y = _put(y, sel, tl.sum(h * C_j, axis=1))
                if HAS_Z:
                    if HAS_D:
                        y += Dv[:, None] * u
                    zz = tl.load(z_row + tt[None, :] * sz_l, mask=m2, other=0.0).to(tl.float32)
                    sig = _sigmoid(zz)
                    dz = dy * y * sig * (1.0 + zz * (1.0 - sig))
                    tl.store(dz_ptr + grad_row + tt[None, :], dz.to(dz_ptr.dtype.element_ty),
                             mask=m2)
                    dy = dy * zz * sig
                if HAS_D:
                    dD_acc += tl.sum(dy * u, axis=1)

                ddelta = tl.zeros([BLOCK_D, T], dtype=tl.float32)
                du_grad = tl.zeros([BLOCK_D, T], dtype=tl.float32)
                for jj in tl.static_range(T):
                    j = T - 1 - jj
                    sel = offs_t == j
                    m_j = offs_n < tl.where(t0 + j < L, N, 0)
                    B_j = _load_step(Bt_ptr + bc_row + (t0 + j) * N, m_j, B_dn, B_CONST)
                    C_j = _load_step(Ct_ptr + bc_row + (t0 + j) * N, m_j, C_dn, C_CONST)
                    h_j = _pick3(hs, sel)
                    dy_j = _pick(dy, sel)
                    du_j = _pick(du, sel)
                    delta_j = _pick(delta, sel)
                    g = dy_j[:, None] * C_j + a_next * g
                    if C_CONST:
                        dC_acc += dy_j[:, None] * h_j
                    else:
                        tl.store(dC_ptr + part_row + (t0 + j) * N,
                                 tl.sum(dy_j[:, None] * h_j, axis=0), mask=m_j)
                    if B_CONST:
                        dB_acc += g * du_j[:, None]
                    else:
                        tl.store(dB_ptr + part_row + (t0 + j) * N,
                                 tl.sum(g * du_j[:, None], axis=0), mask=m_j)
                    p = g * (h_j - du_j[:, None] * B_j)  # g_t a_t h_{t-1}
                    gB = tl.sum(g * B_j, axis=1)
                    dA_acc += delta_j[:, None] * p
                    ddelta = _put(ddelta, sel, _pick(u, sel) * gB + tl.sum(p * A, axis=1))
                    du_grad = _put(du_grad, sel, delta_j * gB)
                    if KEEP_DECAY:
                        a_next = _pick3(as_, sel)
                    else:
                        a_next = tl.exp2(delta_j[:, None] * A2)

                if HAS_D:
                    du_grad += Dv[:, None] * dy
                if SOFTPLUS:
                    ddelta = ddelta * _sigmoid(raw)
                ddelta = tl.where(m2, ddelta, 0.0)
                if HAS_BIAS:
                    dbias_acc += tl.sum(ddelta, axis=1)
                tl.store(du_ptr + grad_row + tt[None, :], du_grad.to(du_ptr.dtype.element_ty),
                         mask=m2)
                tl.store(ddelta_ptr + grad_row + tt[None, :],
                         ddelta.to(ddelta_ptr.dtype.element_ty), mask=m2)
        tl.debug_barrier()  # pass 2's scratch reads finish before the next pass 1 writes

    tl.store(dA_ptr + vec_off, dA_acc, mask=mask_dn)
    if B_CONST:
        tl.store(dB_ptr + vec_off, dB_acc, mask=mask_dn)
    if C_CONST:
        tl.store(dC_ptr + vec_off, dC_acc, mask=mask_dn)
    if HAS_D:
        tl.store(dD_ptr + b * dim + d, dD_acc, mask=mask_d)
    if HAS_BIAS:
        tl.store(dbias_ptr + b * dim + d, dbias_acc, mask=mask_d)


# ----------------------------------------------------------------------------------------------
# Launchers


def wrap_triton(kernel):
    """``torch.library.wrap_triton(kernel)``, so that torch.compile traces the launch; the kernel
    itself under TRITON_INTERPRET=1 or before torch 2.6."""
    if _torch_wrap_triton is None or os.environ.get("TRITON_INTERPRET", "0") == "1":
        return kernel
    return _torch_wrap_triton(kernel)


def _block_n(dstate: int) -> int:
    return max(2, next_pow2(dstate))


def _tiles(dstate: int, dim_per_group: int, max_block_d: int) -> tuple[int, int]:
    """(BLOCK_D, num_warps): about 16 state values per thread (16 x 32 x warps = BLOCK_D x N)."""
    block_n = _block_n(dstate)
    num_warps = 1 if block_n <= 32 else min(4, block_n // 32)
    block_d = min(max_block_d, max(1, 512 * num_warps // block_n))
    return max(1, min(next_pow2(dim_per_group), block_d)), num_warps


def forward_config(dstate: int, dim_per_group: int, itemsize: int = 4) -> dict:
    """Tile sizes of the forward kernel: channels per program, time steps per load (16 bytes)."""
    block_d, num_warps = _tiles(dstate, dim_per_group, 128)
    return {"BLOCK_D": block_d, "T": 16 // itemsize, "num_warps": num_warps}


def backward_config(dstate: int, dim_per_group: int, itemsize: int = 4) -> dict:
    """Tile sizes of the backward kernel. Two steps per sub-chunk and the decays recomputed in
    the reverse sweep (one more exp2) keep it within the register file."""
    block_d, num_warps = _tiles(dstate, dim_per_group, 64)
    return {"BLOCK_D": block_d, "T": 2, "num_warps": num_warps, "KEEP_DECAY": False}


def _check_triton_inputs(u: Tensor) -> None:
    if u.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(
            f"selective_scan (Triton): u has dtype {u.dtype}, needs float32, float16 or bfloat16 "
            "(the Triton kernels do not support float64; the op runs the PyTorch kernel for it)")
    if u.device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise ValueError(
            f"selective_scan (Triton): u is on device {u.device}, needs a CUDA device "
            "(or TRITON_INTERPRET=1 set before triton is imported, to run on CPU tensors)")


def _strides(t: Optional[Tensor], n: int) -> tuple[int, ...]:
    return tuple(t.stride()) if t is not None else (0,) * n


def _groups_view(t: Tensor) -> Tensor:
    """A time-varying B/C as (batch, G, N, L); a constant one as a contiguous (dim, N)."""
    return t.contiguous() if t.dim() == 2 else (t if t.dim() == 4 else t.unsqueeze(1))


def _bc_strides(t: Tensor) -> tuple[int, ...]:
    """(batch, group, n, time) strides of a time-varying B/C view; unused (0) for a constant."""
    return tuple(t.stride()) if t.dim() == 4 else (0, 0, 0, 0)


def _device(t: Tensor):
    """The CUDA device of a launch (nothing to select on CPU under the interpreter, or in tracing)."""
    return torch.cuda.device(t.device) if t.is_cuda and not is_abstract(t) else contextlib.nullcontext()


def forward(
    x: ScanInputs,
    delta_softplus: bool = False,
    save_states: bool = True,
    *,
    block_d: Optional[int] = None,
    steps: Optional[int] = None,
    num_warps: Optional[int] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the forward kernel: (out, last_state, states), like the PyTorch kernel."""
    bsz, dim, length, n, groups, B_const, C_const = check_inputs(x)
    u, delta, A, B, C, D, z, delta_bias = x
    _check_triton_inputs(u)
    dg = dim // groups
    chunk, n_chunks = state_chunk(n), num_chunks(length, n)
    cfg = forward_config(n, dg, u.element_size())
    block_d = block_d or cfg["BLOCK_D"]
    steps = steps or cfg["T"]
    num_warps = num_warps or cfg["num_warps"]
    out = torch.empty(bsz, dim, length, dtype=u.dtype, device=u.device)
    last = torch.empty(bsz, dim, n, dtype=torch.float32, device=u.device)
    states = torch.empty(bsz, dim, n_chunks if save_states else 0, n, dtype=torch.float32,
                         device=u.device)
    Bg, Cg = _groups_view(B), _groups_view(C)
    n_dblocks = triton.cdiv(dg, block_d)
    grid = (groups * n_dblocks, bsz)
    with _device(u):
        wrap_triton(_fwd_kernel)[grid](
            u, delta, A, Bg, Cg, D if D is not None else u, z if z is not None else u,
            delta_bias if delta_bias is not None else u,
            out, last, states,
            dim, length, n, dg, n_dblocks, n_chunks,
            *u.stride(), *delta.stride(), *A.stride(), *_bc_strides(Bg), *_bc_strides(Cg),
            *_strides(D, 1), *_strides(delta_bias, 1), *_strides(z, 3),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=bool(delta_softplus), SAVE_STATES=bool(save_states),
            B_CONST=B_const, C_CONST=C_const,
            BLOCK_D=block_d, BLOCK_N=_block_n(n), CHUNK=chunk, T=steps, num_warps=num_warps,
        )
    return out, last, states


def backward(
    dout: Tensor,
    dlast_state: Optional[Tensor],
    x: ScanInputs,
    delta_softplus: bool,
    states: Optional[Tensor] = None,
    *,
    block_d: Optional[int] = None,
    steps: Optional[int] = None,
    num_warps: Optional[int] = None,
    keep_decay: Optional[bool] = None,
) -> tuple[Tensor, ...]:
    """Run the backward kernel: (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias).

    ``states`` are the forward's saved chunk states; when absent (or empty) they are recomputed.
    Gradients of absent optional inputs are empty tensors.
    """
    bsz, dim, length, n, groups, B_const, C_const = check_inputs(x)
    u, delta, A, B, C, D, z, delta_bias = x
    _check_triton_inputs(u)
    dg = dim // groups
    chunk, n_chunks = state_chunk(n), num_chunks(length, n)
    if states is None or states.shape[2] == 0:
        states = forward(x, delta_softplus, True)[2]
    if tuple(states.shape) != (bsz, dim, n_chunks, n) or not states.is_contiguous():
        raise ValueError(f"selective_scan backward: states has shape {tuple(states.shape)}, needs "
                         f"contiguous {(bsz, dim, n_chunks, n)} fp32 chunk states")
    states = states.to(torch.float32)
    cfg = backward_config(n, dg, u.element_size())
    block_d = block_d or cfg["BLOCK_D"]
    steps = steps or cfg["T"]
    num_warps = num_warps or cfg["num_warps"]
    keep_decay = cfg["KEEP_DECAY"] if keep_decay is None else keep_decay
    if chunk % steps:
        raise ValueError(f"selective_scan backward: steps={steps} must divide the chunk {chunk}")
    n_dblocks = triton.cdiv(dg, block_d)
    dev, f32 = u.device, torch.float32

    def grad_buffer(const: bool) -> Tensor:
        # constant B/C: one (dim, N) partial per batch element; time-varying: one (L, N) partial
        # per program, each time step's N values written contiguously
        if const:
            return torch.empty(bsz, dim, n, dtype=f32, device=dev)
        return torch.empty(bsz, groups, n_dblocks, length, n, dtype=f32, device=dev)

    def grad_of(part: Tensor, t: Tensor, const: bool) -> Tensor:
        full = part.sum(0) if const else part.sum(2).transpose(-1, -2).reshape(t.shape)
        return full.to(t.dtype).contiguous()

    du = torch.empty(bsz, dim, length, dtype=u.dtype, device=dev)
    ddelta = torch.empty(bsz, dim, length, dtype=delta.dtype, device=dev)
    dz = torch.empty(bsz, dim, length, dtype=z.dtype, device=dev) if z is not None else None
    dA_part = torch.empty(bsz, dim, n, dtype=f32, device=dev)
    dB_part, dC_part = grad_buffer(B_const), grad_buffer(C_const)
    scratch = torch.empty(bsz, dim, chunk // steps, n, dtype=f32, device=dev)
    dD_part = torch.empty(bsz, dim, dtype=f32, device=dev) if D is not None else None
    dbias_part = torch.empty(bsz, dim, dtype=f32, device=dev) if delta_bias is not None else None
    dlast = dlast_state.contiguous() if dlast_state is not None else None
    # (batch, G, L, N) copies: a time step's N values of B and C are then contiguous
    Bt = B.contiguous() if B_const else _groups_view(B).transpose(-1, -2).contiguous()
    Ct = C.contiguous() if C_const else _groups_view(C).transpose(-1, -2).contiguous()
    grid = (groups * n_dblocks, bsz)
    with _device(u):
        wrap_triton(_bwd_kernel)[grid](
            u, delta, A, Bt, Ct, D if D is not None else u, z if z is not None else u,
            delta_bias if delta_bias is not None else u, dout, dlast if dlast is not None else u,
            states, scratch,
            du, ddelta, dz if dz is not None else du, dA_part, dB_part, dC_part,
            dD_part if dD_part is not None else dA_part,
            dbias_part if dbias_part is not None else dA_part,
            dim, length, n, dg, n_dblocks, n_chunks,
            *u.stride(), *delta.stride(), *A.stride(), *_strides(z, 3), *dout.stride(),
            *_strides(D, 1), *_strides(delta_bias, 1),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=bool(delta_softplus), HAS_DLAST=dlast is not None, KEEP_DECAY=keep_decay,
            B_CONST=B_const, C_CONST=C_const,
            BLOCK_D=block_d, BLOCK_N=_block_n(n), CHUNK=chunk, T=steps, num_warps=num_warps,
        )

    def empty() -> Tensor:
        return u.new_empty(0)

    return (
        du,
        ddelta,
        dA_part.sum(0).to(A.dtype),
        grad_of(dB_part, B, B_const),
        grad_of(dC_part, C, C_const),
        dD_part.sum(0).to(D.dtype) if D is not None else empty(),
        dz if dz is not None else empty(),
        dbias_part.sum(0).to(delta_bias.dtype) if delta_bias is not None else empty(),
    )
