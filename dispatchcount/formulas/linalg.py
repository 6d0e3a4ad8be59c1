"""Dense linear algebra: factorizations, solves, eigen- and singular-value problems, distances.

Standard operation counts (a multiply or an add is 1 FLOP), leading terms, per matrix of the
batch; complex matrices cost 4x (a complex multiply-add is 8 real FLOPs). Sources: LAPACK
Working Note 41 (Blackford & Dongarra, "Installation Guide for LAPACK", operation counts) and
Golub & Van Loan, "Matrix Computations" (4th ed.), sections 3.2, 4.2, 5.2, 7.5, 8.3, 8.6.
With A of m x n, M = max(m, n), k = min(m, n), r right-hand sides (docs/conventions.md,
"Linear algebra"):

  Cholesky n^3/3 · LU M k^2 - k^3/3 · LU/Cholesky/LDL solve 2 n^2 r · triangular solve n^2 r
  inverse (getrf + getri) 2 n^3 · det 2n^3/3 + n · QR (geqrf) 2 M k^2 - 2k^3/3
  forming Q (orgqr, m x n from k reflectors) 4mnk - 2(m+n)k^2 + 4k^3/3
  symmetric eigen 4n^3/3 (values), 9n^3 (with vectors) · general eigen 10n^3 / 25n^3
  SVD (m >= n): values 4mn^2 - 4n^3/3, thin 14mn^2 + 8n^3, full 4m^2n + 8mn^2 + 9n^3

Iterative parts whose length depends on the data (QR sweeps, matrix_exp's squarings) are
charged at these textbook counts, never by reading values.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch._ops import OpOverload

from dispatchcount.formulas._helpers import Tensor, arg_reader, fixed, mul_factor, register_family, size_hint
from dispatchcount.registry import register_formula

__all__ = ["lu_flops", "qr_flops", "orgqr_flops", "svd_flops"]


def _batch(t: Tensor, matrix_dims: int = 2) -> int:
    inner = 1
    for s in t.shape[t.dim() - matrix_dims:]:
        inner *= s
    return t.numel() // inner if inner else 0


def _mn(t: Tensor) -> tuple[int, int]:
    # Size hints: the max/min of symbolic sizes in the formulas below would add guards.
    return size_hint(t.shape[-2]), size_hint(t.shape[-1])


def lu_flops(m: int, n: int) -> int:
    """LU with partial pivoting of an m x n matrix: M k^2 - k^3/3."""
    big, k = max(m, n), min(m, n)
    return big * k * k - k**3 // 3


def qr_flops(m: int, n: int) -> int:
    """Householder QR (geqrf): 2 M k^2 - 2k^3/3."""
    big, k = max(m, n), min(m, n)
    return 2 * big * k * k - 2 * k**3 // 3


def orgqr_flops(m: int, n: int, k: int) -> int:
    """Forming the m x n matrix Q from k Householder reflectors: 4mnk - 2(m+n)k^2 + 4k^3/3."""
    return max(0, 4 * m * n * k - 2 * (m + n) * k * k + 4 * k**3 // 3)


def svd_flops(m: int, n: int, compute_uv: bool, full_matrices: bool) -> int:
    """Golub-Reinsch SVD (Golub & Van Loan, Fig. 8.6.1), with m >= n after transposing."""
    m, n = max(m, n), min(m, n)
    if not compute_uv:
        return 4 * m * n * n - 4 * n**3 // 3
    if full_matrices:
        return 4 * m * m * n + 8 * m * n * n + 9 * n**3
    return 14 * m * n * n + 8 * n**3


def _rhs(a: Tensor, b: Tensor) -> int:
    # Columns of B per matrix of A: B is (..., n, r), or (..., n) for a batch of vectors.
    n = a.shape[-1]
    per_matrix = b.numel() // max(1, _batch(a))
    return per_matrix // n if n else 0


def _square(cost: Callable[[int], int]) -> Callable[..., int]:
    def square_matrix_flops(a, *args, out=None, **kwargs):
        return mul_factor(a) * _batch(a) * cost(a.shape[-1])

    return square_matrix_flops


_cholesky = _square(lambda n: n**3 // 3)
_cholesky_inverse = _square(lambda n: 2 * n**3 // 3)  # potri: trtri + lauum
_inverse = _square(lambda n: 2 * n**3)                # getrf + getri
_det = _square(lambda n: 2 * n**3 // 3 + n)            # LU, then the product of the diagonal
_slogdet = _square(lambda n: 2 * n**3 // 3 + 2 * n)    # LU, then sum of log|u_ii|
_ldl = _square(lambda n: n**3 // 3)                   # sytrf
_eigvals = _square(lambda n: 10 * n**3)
_eig = _square(lambda n: 25 * n**3)


def _eigh(op: OpOverload) -> Callable[..., int]:
    read_v = arg_reader(op, "compute_v", True)

    def eigh_flops(a, *args, out=None, **kwargs):
        n = a.shape[-1]
        cost = 9 * n**3 if read_v((a,) + args, kwargs) else 4 * n**3 // 3
        return mul_factor(a) * _batch(a) * cost

    return eigh_flops


def _lu_factor(a, *args, out=None, **kwargs):
    m, n = _mn(a)
    return mul_factor(a) * _batch(a) * lu_flops(m, n)


def _solve_with_factor(factor, b, *args, out=None, **kwargs):
    # Forward and back substitution with a factor of n x n: 2 n^2 per right-hand side.
    n = factor.shape[-1]
    return mul_factor(factor, b) * _batch(factor) * 2 * n * n * _rhs(factor, b)


def _lu_solve(lu, pivots, b, *args, out=None, **kwargs):
    return _solve_with_factor(lu, b)


def _cholesky_solve(b, factor, *args, out=None, **kwargs):
    return _solve_with_factor(factor, b)


def _solve(a, b, *args, out=None, **kwargs):
    # LU of A, then 2 n^2 per right-hand side.
    n = a.shape[-1]
    return mul_factor(a, b) * _batch(a) * (lu_flops(n, n) + 2 * n * n * _rhs(a, b))


def _triangular(a: Tensor, b: Tensor) -> int:
    n = a.shape[-1]
    return mul_factor(a, b) * _batch(a) * n * n * _rhs(a, b)


def _solve_triangular(a, b, *args, out=None, **kwargs):
    return _triangular(a, b)


def _triangular_solve(b, a, *args, out=None, **kwargs):
    return _triangular(a, b)


def _qr(op: OpOverload) -> Callable[..., int]:
    read_mode = arg_reader(op, "mode", "reduced")

    def qr_flops_(a, *args, out=None, **kwargs):
        m, n = _mn(a)
        k = min(m, n)
        mode = read_mode((a,) + args, kwargs)
        cost = qr_flops(m, n)
        if mode == "reduced":
            cost += orgqr_flops(m, k, k)
        elif mode == "complete":
            cost += orgqr_flops(m, m, k)
        return mul_factor(a) * _batch(a) * cost

    return qr_flops_


def _geqrf(a, *args, out=None, **kwargs):
    m, n = _mn(a)
    return mul_factor(a) * _batch(a) * qr_flops(m, n)


def _householder_product(a, tau, *args, out=None, **kwargs):
    m, n = _mn(a)
    return mul_factor(a) * _batch(a) * orgqr_flops(m, n, size_hint(tau.shape[-1]))


def _ormqr(op: OpOverload) -> Callable[..., int]:
    read_left = arg_reader(op, "left", True)

    def ormqr_flops(a, tau, c, *args, out=None, **kwargs):
        # Applying Q (k reflectors) to C (p x q): left 4pqk - 2qk^2, right 4pqk - 2pk^2.
        p, q = _mn(c)
        k = size_hint(tau.shape[-1])
        left = read_left((a, tau, c) + args, kwargs)
        cost = 4 * p * q * k - 2 * (q if left else p) * k * k
        return mul_factor(c) * _batch(c) * max(0, cost)

    return ormqr_flops


def _svd(op: OpOverload) -> Callable[..., int]:
    read_full, read_uv = arg_reader(op, "full_matrices", False), arg_reader(op, "compute_uv", True)

    def svd_flops_(a, *args, out=None, **kwargs):
        m, n = _mn(a)
        full = (a,) + args
        cost = svd_flops(m, n, read_uv(full, kwargs), read_full(full, kwargs))
        return mul_factor(a) * _batch(a) * cost

    return svd_flops_


def _pinv(op: OpOverload) -> Callable[..., int]:
    read_hermitian = arg_reader(op, "hermitian", False)

    def pinv_flops(a, *args, out=None, **kwargs):
        # Thin SVD (or eigh when hermitian), reciprocals of the k singular values, then the
        # product V diag(1/s) U^H: 2 m n k.
        m, n = _mn(a)
        k = min(m, n)
        if read_hermitian((a,) + args, kwargs):
            cost = 9 * n**3
        else:
            cost = svd_flops(m, n, True, False)
        return mul_factor(a) * _batch(a) * (cost + k + 2 * m * n * k)

    return pinv_flops


def _lstsq(a, b, *args, out=None, **kwargs):
    # QR-based least squares (gels): QR of A, apply Q^H to B (4 M r k - 2 r k^2), solve R.
    # Every driver is charged this count.
    m, n = _mn(a)
    big, k = max(m, n), min(m, n)
    r = b.shape[-1] if b.dim() == a.dim() else 1
    cost = qr_flops(m, n) + max(0, 4 * big * r * k - 2 * r * k * k) + k * k * r
    return mul_factor(a, b) * _batch(a) * cost


def _matrix_exp(a, *args, out=None, **kwargs):
    # PyTorch evaluates a Taylor approximant of degree <= 18 (Bader, Blanes & Casas 2019) with
    # at most 6 matrix products (2 n^3 each); the squarings depend on the norm (data) and are
    # not charged.
    n = a.shape[-1]
    return mul_factor(a) * _batch(a) * 6 * 2 * n**3


def _cross(self, other, *args, out=None, **kwargs):
    # Each of the 3 components: two products and a difference: 3 FLOPs per result element.
    return mul_factor(self, other) * 3 * out.numel()


def _linear_combination(input, coefficients, *args, out=None, **kwargs):
    # out[i] = sum_j c[i, j] input[j]: one multiply-add per coefficient and element.
    m, k = coefficients.shape[-2], coefficients.shape[-1]
    per_term = input.numel() // k if k else 0
    return mul_factor(input, coefficients) * 2 * m * k * per_term


def _use_mm(p: float, rows1: int, rows2: int, compute_mode: Any) -> bool:
    # torch.cdist uses matrix products for p = 2 when asked (mode 1), or by default (mode 0 /
    # None) when either side has more than 25 rows.
    if p != 2 or compute_mode == 2:
        return False
    return compute_mode == 1 or rows1 > 25 or rows2 > 25


def _cdist(x1, x2, p=2.0, compute_mode=None, *args, out=None, **kwargs):
    # Direct: per pair and coordinate a subtraction, |.|^p and an add (3), a root per pair.
    # Matrix-product path: x1 x2^T (2 P R M), the squared norms (2 (P + R) M), and
    # |a|^2 + |b|^2 - 2ab, clamp, sqrt per pair (4).
    p_rows, m = x1.shape[-2], x1.shape[-1]
    r_rows = x2.shape[-2]
    batch = _batch(x1)
    if _use_mm(p, p_rows, r_rows, compute_mode):
        cost = 2 * p_rows * r_rows * m + 2 * (p_rows + r_rows) * m + 4 * p_rows * r_rows
    else:
        cost = p_rows * r_rows * (3 * m + 1)
    return mul_factor(x1, x2) * batch * cost


def _euclidean_dist(x1, x2, *args, out=None, **kwargs):
    return _cdist(x1, x2, 2.0, 1)


def _cdist_backward(grad, x1, x2, p, cdist, *args, out=None, **kwargs):
    # Per pair and coordinate: the difference, its scaling by g |d|^(p-2) / dist^(p-1) and the
    # accumulation: 4 for p = 2 (sub, mul, div, add), 3 for p = 1, 6 otherwise.
    p_rows, m = x1.shape[-2], x1.shape[-1]
    r_rows = x2.shape[-2]
    per = 4 if p == 2 else 3 if p == 1 else 6
    return mul_factor(x1, x2) * _batch(x1) * p_rows * r_rows * m * per


def _pdist(self, p=2.0, *args, out=None, **kwargs):
    # N (N - 1) / 2 pairs, each like cdist's direct path: 3 M + 1.
    n, m = self.shape[-2], self.shape[-1]
    return mul_factor(self) * (n * (n - 1) // 2) * (3 * m + 1)


def _pdist_backward(grad, self, p, pdist, *args, out=None, **kwargs):
    # Per pair and coordinate: difference, scaling, accumulation into both rows: 5.
    n, m = self.shape[-2], self.shape[-1]
    return mul_factor(self) * (n * (n - 1) // 2) * m * 5


def _trilinear(i1, i2, i3, expand1, expand2, expand3, sumdim, *args, out=None, **kwargs):
    # One multiply-add per element of the broadcast product space of the three (unsqueezed)
    # operands (the full contraction of nn.Bilinear: batch x out x in1 x in2).
    shapes = []
    for t, expand in ((i1, expand1), (i2, expand2), (i3, expand3)):
        shape = list(t.shape)
        for d in sorted(expand):
            shape.insert(d, 1)
        shapes.append(shape)
    space = 1
    for sizes in zip(*shapes):
        space *= max(sizes)
    return mul_factor(i1, i2, i3) * 2 * space


def _svdvals(a, *args, out=None, **kwargs):
    m, n = _mn(a)
    return mul_factor(a) * _batch(a) * svd_flops(m, n, False, False)


def _eigvalsh(a, *args, out=None, **kwargs):
    return mul_factor(a) * _batch(a) * (4 * a.shape[-1] ** 3 // 3)


def _matrix_norm_flops(p: Any, n: int) -> int:
    # Frobenius: square and add (2n^2) and a root; nuclear: singular values and their sum;
    # 1/inf norms: abs, column (row) sums, max.
    if p == "fro":
        return 2 * n * n + 1
    if p == "nuc":
        return svd_flops(n, n, False, False) + n
    return 2 * n * n + n


def _cond(a, p=None, *args, out=None, **kwargs):
    # p = 2 / -2 / None: the ratio of extreme singular values; otherwise ||A|| ||A^-1||.
    n = a.shape[-1]
    if p is None or p in (2, -2):
        cost = svd_flops(n, n, False, False) + 1
    else:
        cost = 2 * n**3 + 2 * _matrix_norm_flops(p, n) + 1
    return mul_factor(a) * _batch(a) * cost


FAMILY: dict[str, Callable[[OpOverload], Any]] = {
    "cholesky": fixed(_cholesky),
    "linalg_cholesky_ex": fixed(_cholesky),
    "cholesky_inverse": fixed(_cholesky_inverse),
    "cholesky_solve": fixed(_cholesky_solve),
    "_cholesky_solve_helper": fixed(_cholesky_solve),
    "linalg_lu_factor_ex": fixed(_lu_factor),
    "linalg_lu": fixed(_lu_factor),
    "linalg_lu_solve": fixed(_lu_solve),
    "linalg_ldl_factor_ex": fixed(_ldl),
    "linalg_ldl_solve": fixed(_lu_solve),
    "_linalg_solve_ex": fixed(_solve),
    "linalg_inv_ex": fixed(_inverse),
    "_linalg_det": fixed(_det),
    "_linalg_slogdet": fixed(_slogdet),
    "linalg_solve_triangular": fixed(_solve_triangular),
    "triangular_solve": fixed(_triangular_solve),
    "linalg_qr": _qr,
    "geqrf": fixed(_geqrf),
    "linalg_householder_product": fixed(_householder_product),
    "ormqr": _ormqr,
    "_linalg_eigh": _eigh,
    "linalg_eig": fixed(_eig),
    "linalg_eigvals": fixed(_eigvals),
    "_linalg_eigvals": fixed(_eigvals),
    "_linalg_svd": _svd,
    "linalg_pinv": _pinv,
    "linalg_lstsq": fixed(_lstsq),
    "linalg_matrix_exp": fixed(_matrix_exp),
    "linalg_cross": fixed(_cross),
    "_compute_linear_combination": fixed(_linear_combination),
    "_cdist_forward": fixed(_cdist),
    "_euclidean_dist": fixed(_euclidean_dist),
    "_cdist_backward": fixed(_cdist_backward),
    "_pdist_forward": fixed(_pdist),
    "_pdist_backward": fixed(_pdist_backward),
    "_trilinear": fixed(_trilinear),
}

register_family(FAMILY)

# CompositeImplicit ops that ATen computes differently while a dispatch mode is active (it
# cannot rule out a gradient, so it also computes vectors). They reach the counter whole only
# under torch.inference_mode(); a rule of their own runs them as a plain run does, instead of
# decomposing them with the mode active.
for _op, _formula in (
    (torch.ops.aten.linalg_svdvals.default, _svdvals),
    (torch.ops.aten.linalg_eigvalsh.default, _eigvalsh),
    (torch.ops.aten.linalg_cond.default, _cond),
    (torch.ops.aten.linalg_cond.p_str, _cond),
):
    register_formula(_op)(_formula)
