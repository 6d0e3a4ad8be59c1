"""FFTs: 5 N log2 N real FLOPs per complex transform of N points, half that for real data.

The standard operation count of a radix-2 Cooley-Tukey FFT, used by FFTW's benchmarks to
report speed ("mflops = 5 N log2(N) / time", and 2.5 N log2 N for real-data transforms; see
fftw.org/speed/method.html). A transform over several dims with N = prod(sizes) costs
5 N log2 N as well (the sum over the dims of N log2 n_d). Non-power-of-2 sizes use the same
expression. Normalization (``norm="ortho"`` or ``"forward"``/``"backward"``, whichever
scales) costs one real multiply per real output value. All torch.fft functions reach the
counter as these three ops. See docs/conventions.md, "FFT".
"""

from __future__ import annotations

from math import log2
from typing import Any

from dispatchcount.formulas._helpers import Tensor, fixed, register_family, result_tensor, size_hint

__all__ = ["fft_flops"]


def fft_flops(n: int, real: bool) -> int:
    """Real FLOPs of one FFT of ``n`` points: 5 n log2 n (complex), 2.5 n log2 n (real)."""
    n = size_hint(n)  # log2 of a symbolic size would add a guard
    if n <= 1:
        return 0
    flops = 5 * n * log2(n)
    return round(flops / 2 if real else flops)


def _points(t: Tensor, dim: Any) -> int:
    n = 1
    for d in dim:
        n *= t.shape[d]
    return n


def _transforms(t: Tensor, dim: Any, real: bool, out: Any) -> int:
    if not (t.dtype.is_floating_point or t.dtype.is_complex):
        return 0
    n = _points(t, dim)
    return (t.numel() // n) * fft_flops(n, real) if n else 0


def _scaling(normalization: int, out: Any) -> int:
    # normalization 0: none; 1: by 1/sqrt(n); 2: by 1/n. One multiply per real output value.
    if not normalization:
        return 0
    result = result_tensor(out)
    return result.numel() * (2 if result.dtype.is_complex else 1)


def _c2c(self, dim, normalization, forward, *args, out=None, **kwargs):
    return _transforms(self, dim, False, out) + _scaling(normalization, out)


def _r2c(self, dim, normalization, onesided, *args, out=None, **kwargs):
    # N counts the real input's points; a two-sided output is filled by symmetry (a copy).
    return _transforms(self, dim, True, out) + _scaling(normalization, out)


def _c2r(self, dim, normalization, last_dim_size, *args, out=None, **kwargs):
    # N counts the real output's points (the last dim is last_dim_size).
    result = result_tensor(out)
    return _transforms(result, dim, True, out) + _scaling(normalization, out)


FAMILY = {"_fft_c2c": fixed(_c2c), "_fft_r2c": fixed(_r2c), "_fft_c2r": fixed(_c2r)}
register_family(FAMILY)
