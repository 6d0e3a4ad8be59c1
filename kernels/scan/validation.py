"""Input checks and the few layout facts every kernel (CPU, Triton, fake) must agree on."""

from __future__ import annotations

from numbers import Number
from typing import NamedTuple, Optional

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import FakeTensor
from torch._subclasses.functional_tensor import FunctionalTensor

__all__ = ["MAX_DSTATE", "ScanInputs", "ScanShape", "check_inputs", "check_types", "compute_dtype",
           "is_abstract", "next_pow2", "state_chunk", "num_chunks"]

# The Triton kernels keep (channels x N x time) tiles in registers; mamba_ssm has the same limit.
MAX_DSTATE = 256

_IO_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class ScanInputs(NamedTuple):
    """The scan's tensor arguments in the op's order; None for an absent D, z or delta_bias."""

    u: Tensor
    delta: Tensor
    A: Tensor
    B: Tensor
    C: Tensor
    D: Optional[Tensor] = None
    z: Optional[Tensor] = None
    delta_bias: Optional[Tensor] = None


class ScanShape(NamedTuple):
    """Sizes of a checked problem. ``groups`` is the G of the time-varying B/C (1 if none);
    ``B_const``/``C_const``: B/C is a constant (dim, N) tensor (mamba's is_variable_B/C=False)."""

    batch: int
    dim: int
    length: int
    dstate: int
    groups: int
    B_const: bool = False
    C_const: bool = False

    @property
    def empty(self) -> bool:
        return self.batch == 0 or self.dim == 0 or self.length == 0


def is_abstract(t: Tensor) -> bool:
    """A tensor without data: meta, fake, or functional (torch.compile's tracing)."""
    return t.device.type == "meta" or isinstance(t, (FakeTensor, FunctionalTensor))


def compute_dtype(u_dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels do their arithmetic in: float32, or float64 for float64 inputs."""
    return torch.float64 if u_dtype == torch.float64 else torch.float32


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    p = 1
    while p < n:
        p *= 2
    return p


def state_chunk(dstate: int) -> int:
    """Time steps per chunk: the Triton tile length, and the spacing of the saved states.

    The forward op saves the state at the end of every chunk; the backward starts each chunk's
    recomputation from the saved state before it. Both kernels and the fake kernel use this.
    """
    block_n = next_pow2(max(dstate, 2))
    return 64 if block_n <= 16 else max(16, 1024 // block_n)


def num_chunks(length: int, dstate: int) -> int:
    chunk = state_chunk(dstate)
    return (length + chunk - 1) // chunk


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _fail(name: str, got: str, need: str) -> None:
    raise ValueError(f"selective_scan: {name} {got}, needs {need}")


def check_types(x: ScanInputs) -> None:
    """Every argument a tensor (D, z, delta_bias may be None): ValueError naming the one that is not."""
    for name, t in zip(ScanInputs._fields, x):
        if t is None and name in ("D", "z", "delta_bias"):
            continue
        if not isinstance(t, Tensor):
            need = "a torch.Tensor" + (" or None" if name in ("D", "z", "delta_bias") else "")
            if isinstance(t, Number) and name in ("D", "delta_bias"):
                need += f" (a (dim,) tensor, e.g. torch.full((dim,), {t!r}))"
            _fail(name, f"is a {type(t).__name__}", need)


def _check_bc(name: str, t: Tensor, batch: int, dim: int, length: int, dstate: int) -> Optional[int]:
    """Check B or C; return its group count G, or None when it is constant (dim, N)."""
    forms = (f"(dim, N) = ({dim}, {dstate}) constant, (batch, N, L) = {(batch, dstate, length)} "
             f"or (batch, G, N, L) = {(batch, 'G', dstate, length)}")
    if t.dim() == 2:
        if _shape(t) != (dim, dstate):
            _fail(name, f"has shape {_shape(t)}", forms)
        return None
    if t.dim() == 3 and _shape(t) == (batch, dstate, length):
        return 1
    if t.dim() == 4 and _shape(t)[:1] + _shape(t)[2:] == (batch, dstate, length) and t.shape[1] >= 1:
        groups = t.shape[1]
        if dim % groups != 0:
            _fail(name, f"has shape {_shape(t)} (G = {groups} groups)",
                  f"G dividing dim = {dim} (channel d uses group d // (dim // G))")
        return groups
    _fail(name, f"has shape {_shape(t)}", forms)


def check_inputs(x: ScanInputs) -> ScanShape:
    """Validate types, shapes, dtypes and devices; return the problem's sizes.

    Raises ``ValueError`` naming the argument, what it got and what it needs.
    """
    check_types(x)
    u, delta, A, B, C, D, z, delta_bias = x
    if u.dim() != 3:
        _fail("u", f"has shape {_shape(u)}", "3 dimensions (batch, dim, L)")
    batch, dim, length = _shape(u)
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
    if A.is_complex():
        _fail("A", f"has dtype {A.dtype}", f"a real dtype ({param_need}): complex A (mamba_ssm's "
              "S4D-style variant) is not supported; Mamba and VMamba use a real A = -exp(A_log)")
    if A.dtype not in param_dtypes:
        _fail("A", f"has dtype {A.dtype}", f"a real dtype: {param_need}")

    groups_B = _check_bc("B", B, batch, dim, length, dstate)
    groups_C = _check_bc("C", C, batch, dim, length, dstate)
    if groups_B is not None and groups_C is not None and _shape(C) != _shape(B):
        _fail("C", f"has shape {_shape(C)}", f"the shape of B {_shape(B)} (or (dim, N) = ({dim}, {dstate}) constant)")
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

    for name, t in zip(ScanInputs._fields[1:], x[1:]):
        if t is not None and t.device != u.device:
            _fail(name, f"is on device {t.device}", f"u's device {u.device}")
    groups = groups_B if groups_B is not None else (groups_C if groups_C is not None else 1)
    return ScanShape(batch, dim, length, dstate, groups, groups_B is None, groups_C is None)
