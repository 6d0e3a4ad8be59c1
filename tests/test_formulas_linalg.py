"""Linear algebra and FFT: the stated textbook counts, evaluated by hand for small sizes.

LAPACK Working Note 41 / Golub & Van Loan counts (a multiply or an add is 1 FLOP, integer
division where a count has a fraction), per matrix; complex 4x. FFT: 5 N log2 N (complex),
2.5 N log2 N (real).
"""

import pytest
import torch

from dispatchcount.registry import resolve
from counting import counted



def spd(n):
    a = torch.randn(n, n, dtype=torch.float64)
    return a @ a.T + n * torch.eye(n, dtype=torch.float64)


A4 = torch.randn(4, 4, dtype=torch.float64) + 4 * torch.eye(4, dtype=torch.float64)


def test_inverse_determinant_cholesky():
    assert counted(lambda: torch.linalg.inv(A4)) == {"aten.linalg_inv_ex": 2 * 4**3}  # getrf + getri
    # LU (2n^3/3 = 128 // 3 = 42) and the product of the diagonal (4)
    assert counted(lambda: torch.linalg.det(A4)) == {"aten._linalg_det": 42 + 4}
    assert counted(lambda: torch.linalg.slogdet(A4)) == {"aten._linalg_slogdet": 42 + 8}
    s = spd(4)
    assert counted(lambda: torch.linalg.cholesky(s)) == {"aten.linalg_cholesky_ex": 64 // 3}
    batch = torch.stack([A4, A4, A4])
    assert counted(lambda: torch.linalg.inv(batch)) == {"aten.linalg_inv_ex": 3 * 128}
    complex_a = A4.to(torch.complex128)
    assert counted(lambda: torch.linalg.inv(complex_a)) == {"aten.linalg_inv_ex": 4 * 128}


def test_solves():
    b = torch.randn(4, 2, dtype=torch.float64)
    # LU of 4x4: M k^2 - k^3/3 = 64 - 21 = 43; substitutions 2 n^2 per column: 2 * 16 * 2 = 64
    assert counted(lambda: torch.linalg.solve(A4, b)) == {"aten._linalg_solve_ex": 43 + 64}
    upper = torch.triu(A4)
    assert counted(lambda: torch.linalg.solve_triangular(upper, b, upper=True)) == {
        "aten.linalg_solve_triangular": 16 * 2  # n^2 per column
    }
    lu, pivots = torch.linalg.lu_factor(A4)
    assert counted(lambda: torch.linalg.lu_solve(lu, pivots, b)) == {"aten.linalg_lu_solve": 64}


def test_qr_svd_eigen():
    a = torch.randn(6, 4, dtype=torch.float64)
    # geqrf 2 M k^2 - 2k^3/3 = 192 - 42 = 150; orgqr (6x4, 4 reflectors)
    # 4*6*4*4 - 2*(6+4)*16 + 4*64/3 = 384 - 320 + 85 = 149
    assert counted(lambda: torch.linalg.qr(a)) == {"aten.linalg_qr": 150 + 149}
    assert counted(lambda: torch.linalg.qr(a, mode="r")) == {"aten.linalg_qr": 150}
    # thin SVD: 14 m n^2 + 8 n^3 = 1344 + 512; full: 4 m^2 n + 8 m n^2 + 9 n^3 = 576 + 768 + 576
    assert counted(lambda: torch.linalg.svd(a, full_matrices=False)) == {"aten._linalg_svd": 1856}
    assert counted(lambda: torch.linalg.svd(a)) == {"aten._linalg_svd": 1920}
    s = spd(4)
    assert counted(lambda: torch.linalg.eigh(s)) == {"aten._linalg_eigh": 9 * 64}
    assert counted(lambda: torch.linalg.eig(A4)) == {"aten.linalg_eig": 25 * 64}
    # Under any TorchDispatchMode ATen's eigvals also computes the vectors (it cannot rule out
    # a gradient): the count follows what ran. The values-only formula, called directly:
    assert counted(lambda: torch.linalg.eigvals(A4)) == {"aten.linalg_eig": 25 * 64}
    meta = torch.empty(4, 4, device="meta")
    assert resolve(torch.ops.aten._linalg_eigvals.default)(meta, out=meta) == 10 * 64


def test_mode_sensitive_composites_under_inference_mode():
    # Reaching the counter whole, they run as in a plain run and cost their own rules.
    a, s = torch.randn(6, 4, dtype=torch.float64), spd(4)
    with torch.inference_mode():
        # values-only SVD: 4 m n^2 - 4 n^3/3 = 384 - 85
        assert counted(lambda: torch.linalg.svdvals(a)) == {"aten.linalg_svdvals": 299}
        assert counted(lambda: torch.linalg.eigvalsh(s)) == {"aten.linalg_eigvalsh": 256 // 3}
        # 2-norm condition number: values-only SVD of 4x4 (256 - 85) and one divide
        assert counted(lambda: torch.linalg.cond(A4)) == {"aten.linalg_cond": 171 + 1}
        # Frobenius: inverse (128) and two norms (2 * 16 + 1 each), one multiply
        assert counted(lambda: torch.linalg.cond(A4, "fro")) == {"aten.linalg_cond": 128 + 2 * 33 + 1}


def test_least_squares_pinv_matrix_exp():
    a, b = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    # QR (150) + Q^T B: 4 M r k - 2 r k^2 = 192 - 64 + back substitution k^2 r = 32
    assert counted(lambda: torch.linalg.lstsq(a, b)) == {"aten.linalg_lstsq": 150 + 128 + 32}
    # thin SVD (1856) + reciprocals (4) + V diag(1/s) U^T (2 m n k = 192)
    assert counted(lambda: torch.linalg.pinv(a)) == {"aten.linalg_pinv": 1856 + 4 + 192}
    assert counted(lambda: torch.linalg.matrix_exp(torch.randn(3, 3))) == {"aten.linalg_matrix_exp": 6 * 2 * 27}


def test_cross_and_distances():
    u = torch.randn(5, 3)
    assert counted(lambda: torch.linalg.cross(u, u)) == {"aten.linalg_cross": 3 * 15}
    x1, x2 = torch.randn(1, 5, 3), torch.randn(1, 4, 3)
    # 20 pairs, each: 3 x (sub, square, add) + sqrt
    assert counted(lambda: torch.cdist(x1, x2)) == {"aten._cdist_forward": 20 * (3 * 3 + 1)}
    # more than 25 rows: the matrix-product path (_euclidean_dist): x1 x2^T (2 P R M), squared
    # norms (2 (P + R) M), and |a|^2 + |b|^2 - 2ab, clamp, sqrt per pair (4)
    big = torch.randn(1, 30, 3)
    assert counted(lambda: torch.cdist(big, x2)) == {
        "aten._euclidean_dist": 2 * 30 * 4 * 3 + 2 * 34 * 3 + 4 * 30 * 4
    }
    assert counted(lambda: torch.pdist(torch.randn(5, 3))) == {"aten._pdist_forward": 10 * 10}


def test_bilinear_contraction():
    x1, x2, w = torch.randn(2, 3), torch.randn(2, 4), torch.randn(5, 3, 4)
    # one multiply-add per (batch, out, in1, in2): 2 * 2*5*3*4
    assert counted(lambda: torch.nn.functional.bilinear(x1, x2, w))["aten._trilinear"] == 2 * 2 * 5 * 3 * 4


@pytest.mark.parametrize(
    "fn, op, flops",
    [
        (lambda: torch.fft.fft(torch.randn(8, dtype=torch.complex64)), "aten._fft_c2c", 5 * 8 * 3),
        (lambda: torch.fft.rfft(torch.randn(8)), "aten._fft_r2c", 60),  # 2.5 N log2 N
        # irfft: N = 8 real outputs (60), and the default norm="backward" divides them by N (8)
        (lambda: torch.fft.irfft(torch.randn(5, dtype=torch.complex64)), "aten._fft_c2r", 60 + 8),
        (lambda: torch.fft.fft2(torch.randn(4, 8, dtype=torch.complex64)), "aten._fft_c2c", 5 * 32 * 5),
        (lambda: torch.fft.fft(torch.randn(3, 8, dtype=torch.complex64)), "aten._fft_c2c", 3 * 120),
        # ortho: one real multiply per real output value (8 complex values: 16)
        (lambda: torch.fft.fft(torch.randn(8, dtype=torch.complex64), norm="ortho"), "aten._fft_c2c", 120 + 16),
        # non-power-of-2: 5 * 6 * log2(6) = 77.55..., rounded
        (lambda: torch.fft.fft(torch.randn(6, dtype=torch.complex64)), "aten._fft_c2c", 78),
    ],
)
def test_fft(fn, op, flops):
    assert counted(fn) == {op: flops}
