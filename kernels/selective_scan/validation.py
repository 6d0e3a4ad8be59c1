"""Input checks and the few layout facts every kernel (CPU, Triton, fake) must agree on."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

__all__ = ["MAX_DSTATE", "ScanShape", "check_inputs", "compute_dtype", "state_chunk", "num_chunks"]

# The Triton kernels keep (channels x N x time) tiles in registers; mamba_ssm has the same limit.
MAX_DSTATE = 256

_IO_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class ScanShape(NamedTuple):
    batch: int
    dim: int
    length: int
    dstate: int
    groups: int


def compute_dtype(u_dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels do their arithmetic in: float32, or float64 for float64 inputs."""
    return torch.float64 if u_dtype == torch.float64 else torch.float32


def state_chunk(dstate: int) -> int:
    """Time steps per chunk: the Triton tile length, and the spacing of the saved states.

    The forward op saves the state at the end of every chunk; the backward starts each chunk's
    recomputation from the saved state before it. Both kernels and the fake kernel use this.
    """
    block_n = _next_pow2(max(dstate, 2))
    return 64 if block_n <= 16 else max(16, 1024 // block_n)


def num_chunks(length: int, dstate: int) -> int:
    chunk = state_chunk(dstate)
    return (length + chunk - 1) // chunk


def _next_pow2(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _fail(name: str, got: str, need: str) -> None:
    raise ValueError(f"selective_scan: {name} {got}, needs {need}")


def check_inputs(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
) -> ScanShape:
    """Validate shapes, dtypes and devices; return the problem's sizes.

    Raises ``ValueError`` naming the argument, what it got and what it needs.
    """
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C),
                    ("D", D), ("z", z), ("delta_bias", delta_bias)):
        if t is not None and not isinstance(t, Tensor):
            _fail(name, f"is a {type(t).__name__}", "a torch.Tensor")
    if u.dim() != 3:
        _fail("u", f"has shape {_shape(u)}", "3 dimensions (batch, dim, L)")
    batch, dim, length = _shape(u)
    if dim < 1 or length < 1:
        _fail("u", f"has shape {_shape(u)}", "(batch, dim, L) with dim >= 1 and L >= 1")
    if u.dtype not in _IO_DTYPES:
        _fail("u", f"has dtype {u.dtype}", "float32, float16, bfloat16 or float64")
    # B, C and the per-channel parameters may also be float32 when u is half/bfloat16/float64.
    param_dtypes = {torch.float32, u.dtype}
    param_need = "float32" if u.dtype == torch.float32 else f"u's dtype {u.dtype} or float32"

    def same_as_u(name: str, t: Tensor) -> None:
        if _shape(t) != (batch, dim, length):
            _fail(name, f"has shape {_shape(t)}", f"the shape of u (batch, dim, L) = {(batch, dim, length)}")
        if t.dtype != u.dtype:
            _fail(name, f"has dtype {t.dtype}", f"u's dtype {u.dtype}")

    same_as_u("delta", delta)
    if z is not None:
        same_as_u("z", z)

    if A.dim() != 2 or A.shape[0] != dim:
        _fail("A", f"has shape {_shape(A)}", f"(dim, N) = ({dim}, N)")
    dstate = A.shape[1]
    if not 1 <= dstate <= MAX_DSTATE:
        _fail("A", f"has shape {_shape(A)}", f"(dim, N) with 1 <= N <= {MAX_DSTATE}")
    if A.dtype not in param_dtypes:
        _fail("A", f"has dtype {A.dtype}", f"a real dtype: {param_need}")

    if B.dim() not in (3, 4):
        _fail("B", f"has shape {_shape(B)}", f"(batch, N, L) = {(batch, dstate, length)} or (batch, G, N, L)")
    groups = 1 if B.dim() == 3 else B.shape[1]
    need = (batch, dstate, length) if B.dim() == 3 else (batch, groups, dstate, length)
    if _shape(B) != need or groups < 1:
        _fail("B", f"has shape {_shape(B)}", f"(batch, N, L) = {(batch, dstate, length)} or (batch, G, N, L) = "
              f"{(batch, 'G', dstate, length)}")
    if dim % groups != 0:
        _fail("B", f"has shape {_shape(B)} (G = {groups} groups)",
              f"G dividing dim = {dim} (channel d uses group d // (dim // G))")
    if _shape(C) != _shape(B):
        _fail("C", f"has shape {_shape(C)}", f"the shape of B {_shape(B)}")
    for name, t in (("B", B), ("C", C)):
        if t.dtype not in param_dtypes:
            _fail(name, f"has dtype {t.dtype}", param_need)

    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is None:
            continue
        if _shape(t) != (dim,):
            _fail(name, f"has shape {_shape(t)}", f"(dim,) = ({dim},)")
        if t.dtype not in param_dtypes:
            _fail(name, f"has dtype {t.dtype}", param_need)

    for name, t in (("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                    ("delta_bias", delta_bias)):
        if t is not None and t.device != u.device:
            _fail(name, f"is on device {t.device}", f"u's device {u.device}")
    return ScanShape(batch, dim, length, dstate, groups)
