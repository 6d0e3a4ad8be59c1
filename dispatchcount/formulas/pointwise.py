"""Pointwise ops: a fixed number of FLOPs per result element.

Rule (docs/conventions.md, "Pointwise"): each +, -, *, /, comparison or min/max, and each
evaluation of an elementary or special function (exp, log, sqrt, sin, tanh, erf, pow, lgamma,
...) is 1 FLOP. An op costs the operations of its defining formula, per result element; fused
ops (addcmul, lerp, gelu, silu, softplus ...) count all their arithmetic. A scalar factor
(``alpha``, ``value``) counts one multiply only when it is not 1. Integer and bool operands
cost 0. Complex elements cost ``COMPLEX_ADD`` (2) times the real count for additive ops and
``COMPLEX_MUL`` (4) times for the others.

``POINTWISE_FLOPS`` is the table; ops whose cost depends on an argument get a small extra
term built once per overload from its schema. The ``_foreach_*`` variants reuse this table
(see optim.py).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch._ops import OpOverload

from dispatchcount.formulas._helpers import (COMPLEX_ADD, COMPLEX_MUL, Tensor, arg_reader, base_name,
    first_tensor, has_arg, register_family, result_tensor)
from dispatchcount.registry import register_formula

__all__ = ["POINTWISE_FLOPS", "COMPLEX_ADDITIVE", "extra_term", "pointwise_formula"]

# Real FLOPs per result element, the base cost (before the argument-dependent extras below).
POINTWISE_FLOPS: dict[str, int] = {
    # arithmetic
    "add": 1, "sub": 1, "rsub": 1, "mul": 1, "div": 1, "neg": 1, "reciprocal": 1,
    "addcmul": 2,        # self + t1 * t2 (+1 for value != 1)
    "addcdiv": 2,        # self + t1 / t2 (+1 for value != 1)
    "lerp": 3,           # start + weight * (end - start)
    "floor_divide": 2,   # floor(a / b)
    "fmod": 1,           # one libm fmod
    "remainder": 3,      # fmod, sign test, conditional add of the divisor
    "deg2rad": 1, "rad2deg": 1,
    "copysign": 1, "ldexp": 2,  # x * 2^e: exp2, multiply
    "frexp": 1, "nextafter": 1,
    "hypot": 4,          # sqrt(a*a + b*b)
    # rounding, sign, magnitude
    "abs": 1, "sign": 1, "sgn": 1, "ceil": 1, "floor": 1, "trunc": 1,
    "round": 1,          # +2 with decimals != 0: round(x * 10^d) / 10^d
    "frac": 2,           # x - trunc(x)
    "angle": 1,          # real: x < 0 ? pi : 0; complex: atan2(imag, real)
    # comparisons and selections by comparison
    "eq": 1, "ne": 1, "lt": 1, "le": 1, "gt": 1, "ge": 1,
    "maximum": 1, "minimum": 1, "fmax": 1, "fmin": 1,
    "clamp": 0,          # one comparison per bound given
    "clamp_min": 1, "clamp_max": 1,
    "isnan": 1, "isinf": 1, "isposinf": 1, "isneginf": 1, "signbit": 1, "heaviside": 1,
    "nan_to_num": 3,     # nan, +inf, -inf tests
    # elementary and special functions: 1 per evaluation
    "exp": 1, "exp2": 1, "expm1": 1, "log": 1, "log2": 1, "log10": 1, "log1p": 1,
    "sqrt": 1, "rsqrt": 1, "pow": 1,
    "sin": 1, "cos": 1, "tan": 1, "asin": 1, "acos": 1, "atan": 1, "atan2": 1,
    "sinh": 1, "cosh": 1, "tanh": 1, "asinh": 1, "acosh": 1, "atanh": 1,
    "erf": 1, "erfc": 1, "erfinv": 1, "lgamma": 1, "digamma": 1, "polygamma": 1,
    "i0": 1, "igamma": 1, "igammac": 1,
    "special_airy_ai": 1, "special_bessel_j0": 1, "special_bessel_j1": 1,
    "special_bessel_y0": 1, "special_bessel_y1": 1, "special_modified_bessel_i0": 1,
    "special_modified_bessel_i1": 1, "special_modified_bessel_k0": 1,
    "special_modified_bessel_k1": 1, "special_scaled_modified_bessel_k0": 1,
    "special_scaled_modified_bessel_k1": 1, "special_spherical_bessel_j0": 1,
    "special_i0e": 1, "special_i1": 1, "special_i1e": 1, "special_erfcx": 1,
    "special_ndtri": 1, "special_log_ndtr": 1, "special_zeta": 1,
    # reparameterized-sample gradients of Gamma and Dirichlet: one special-function evaluation
    "_standard_gamma_grad": 1, "_dirichlet_grad": 1,
    # orthogonal polynomials: one evaluation each (the degree is data, which formulas never read)
    "special_chebyshev_polynomial_t": 1, "special_chebyshev_polynomial_u": 1,
    "special_chebyshev_polynomial_v": 1, "special_chebyshev_polynomial_w": 1,
    "special_shifted_chebyshev_polynomial_t": 1, "special_shifted_chebyshev_polynomial_u": 1,
    "special_shifted_chebyshev_polynomial_v": 1, "special_shifted_chebyshev_polynomial_w": 1,
    "special_hermite_polynomial_h": 1, "special_hermite_polynomial_he": 1,
    "special_laguerre_polynomial_l": 1, "special_legendre_polynomial_p": 1,
    # composite functions, counted as defined
    "sinc": 3,           # sin(pi x) / (pi x)
    "xlogy": 2,          # x * log(y)
    "special_xlog1py": 2,  # x * log1p(y)
    "special_entr": 3,   # -x * log(x)
    "logaddexp": 6,      # max(a,b) + log1p(exp(-|a-b|)): max, sub, abs, exp, log1p, add
    "logaddexp2": 7,     # the same in base 2, plus the multiply by 1/ln 2
    "logit": 3,          # log(x / (1 - x)); +2 for the eps clamp
    "mvlgamma": 0,       # 3 * p: sum over j < p of lgamma(x - j/2)
    # activations
    "relu": 1,           # max(x, 0)
    "threshold": 1,      # x > t ? x : v
    "_add_relu": 2,      # relu(a + b) (+1 for alpha != 1)
    "hardtanh": 2,       # clamp to [min, max]
    "leaky_relu": 2,     # x > 0 ? x : slope * x
    "_prelu_kernel": 2,  # x > 0 ? x : w * x
    "rrelu_with_noise": 2,  # x > 0 ? x : noise * x (sampling the noise is free)
    "rrelu_with_noise_functional": 2,
    "sigmoid": 4,        # 1 / (1 + exp(-x))
    "silu": 5,           # x * sigmoid(x)
    "gelu": 5,           # x/2 (1 + erf(x/sqrt2)): mul, erf, add, mul, mul; 9 for tanh
    "softplus": 6,       # log(1 + exp(beta x)) / beta, linear above threshold: compare
    "mish": 5,           # x * tanh(log(1 + exp(x)))
    "elu": 6,            # x > 0 ? s x : s a (exp(i x) - 1): compare, 3 muls, exp, sub
    "celu": 7,           # max(0,x) + min(0, a (exp(x/a) - 1))
    "hardsigmoid": 4,    # min(max(x + 3, 0), 6) / 6
    "hardswish": 5,      # x * hardsigmoid(x)
    "hardshrink": 2,     # |x| > l ? x : 0, two comparisons
    "softshrink": 3,     # two comparisons, one add or sub
    "log_sigmoid_forward": 5,  # min(x,0) - log1p(exp(-|x|))
    "glu": 5,            # a * sigmoid(b), per result element
    # gradients of activations (per grad_input element)
    "sigmoid_backward": 3,    # g * y * (1 - y)
    "tanh_backward": 3,       # g * (1 - y * y)
    "threshold_backward": 1,  # x <= t ? 0 : g
    "silu_backward": 9,       # sigmoid (4), then g * s * (1 + x (1 - s)) (5)
    "mish_backward": 14,      # g (t + x s (1 - t^2)), t = tanh(softplus(x)) (4), s = sigmoid (4)
    "gelu_backward": 11,      # cdf (4) + pdf (4) + g (cdf + x pdf) (3); 18 for tanh
    "logit_backward": 3,      # g / (x (1 - x)); +2 for the eps range test
    "elu_backward": 6,        # negative branch: compare, exp of a product, 3 multiplies
    "hardshrink_backward": 2, "softshrink_backward": 2, "hardtanh_backward": 2,
    "hardsigmoid_backward": 3,  # -3 < x < 3 ? g / 6 : 0
    "hardswish_backward": 5,    # two comparisons, g * (x / 3 + 1/2)
    "leaky_relu_backward": 2,   # x > 0 ? g : slope * g
    "rrelu_with_noise_backward": 2,
    "log_sigmoid_backward": 8,  # g * (max_deriv - sign * z / (1 + z)), z = exp(-|x|)
    "softplus_backward": 6,     # z = exp(beta x); beta x > t ? g : g z / (z + 1)
    "_prelu_kernel_backward": 3,  # compare; w * g; x * g
    "glu_backward": 8,        # per grad_output element: sigmoid (4), g s, g s a (1 - s) (3)
    "glu_jvp": 9,             # sigmoid (4), glu (1 - s) db + s da (5)
    "glu_backward_jvp": 16,   # second-order terms of glu_backward, per grad element
    # dropout and masked scaling
    "native_dropout_backward": 2,  # g * mask * scale
    "_masked_scale": 2,            # x * mask * scale
    "_fused_dropout": 2,           # x * mask * scale (sampling the mask is free)
    "native_dropout": 2,           # x * mask * scale in training, 0 otherwise
}

# Additive ops: a complex element costs 2 real ops, not 4.
COMPLEX_ADDITIVE = frozenset({"add", "sub", "rsub", "neg", "eq", "ne"})

aten = torch.ops.aten

Extra = Callable[[tuple, dict], int]


def _scalar_not_one(op: OpOverload, name: str) -> Optional[Extra]:
    if any(a.name == name and a.kwarg_only for a in op._schema.arguments):

        def scalar_not_one(args: tuple, kwargs: dict) -> int:
            return 0 if kwargs.get(name, 1) == 1 else 1

        scalar_not_one.only_kwargs = True  # type: ignore[attr-defined]  (0 without keyword arguments)
        return scalar_not_one
    read = arg_reader(op, name, 1)
    return lambda args, kwargs: 0 if read(args, kwargs) == 1 else 1


def _addc_extra(op: OpOverload) -> Optional[Extra]:
    if has_arg(op, "value"):
        return _scalar_not_one(op, "value")
    if has_arg(op, "scalars"):  # _foreach_addc*.ScalarList / .Tensor: one scale per tensor
        return lambda args, kwargs: 1
    return None


def _clamp_extra(op: OpOverload) -> Extra:
    read_min, read_max = arg_reader(op, "min"), arg_reader(op, "max")
    return lambda args, kwargs: (read_min(args, kwargs) is not None) + (read_max(args, kwargs) is not None)


def _div_extra(op: OpOverload) -> Optional[Extra]:
    if not has_arg(op, "rounding_mode"):
        return None
    read = arg_reader(op, "rounding_mode")
    return lambda args, kwargs: 0 if read(args, kwargs) is None else 1


def _round_extra(op: OpOverload) -> Optional[Extra]:
    if not has_arg(op, "decimals"):
        return None
    read = arg_reader(op, "decimals", 0)
    return lambda args, kwargs: 0 if read(args, kwargs) == 0 else 2


def _eps_extra(op: OpOverload) -> Extra:
    read = arg_reader(op, "eps")
    return lambda args, kwargs: 0 if read(args, kwargs) is None else 2


def _gelu_extra(tanh_extra: int) -> Callable[[OpOverload], Extra]:
    def build(op: OpOverload) -> Extra:
        read = arg_reader(op, "approximate", "none")
        return lambda args, kwargs: tanh_extra if read(args, kwargs) == "tanh" else 0

    return build


def _mvlgamma_extra(op: OpOverload) -> Extra:
    read = arg_reader(op, "p")
    return lambda args, kwargs: 3 * read(args, kwargs)


def _dropout_extra(op: OpOverload) -> Extra:
    # train=None means training; in eval native_dropout returns a copy: remove the base 2.
    read = arg_reader(op, "train")
    return lambda args, kwargs: -2 if read(args, kwargs) is False else 0


_EXTRAS: dict[str, Callable[[OpOverload], Optional[Extra]]] = {
    "add": lambda op: _scalar_not_one(op, "alpha"),
    "sub": lambda op: _scalar_not_one(op, "alpha"),
    "rsub": lambda op: _scalar_not_one(op, "alpha"),
    "_add_relu": lambda op: _scalar_not_one(op, "alpha"),
    "addcmul": _addc_extra,
    "addcdiv": _addc_extra,
    "clamp": _clamp_extra,
    "div": _div_extra,
    "round": _round_extra,
    "logit": _eps_extra,
    "logit_backward": _eps_extra,
    "gelu": _gelu_extra(9 - 5),
    "gelu_backward": _gelu_extra(18 - 11),
    "mvlgamma": _mvlgamma_extra,
    "native_dropout": _dropout_extra,
}


def extra_term(name: str, op: OpOverload) -> Optional[Extra]:
    """The argument-dependent part of ``name``'s per-element cost for overload ``op``, or None."""
    build = _EXTRAS.get(name)
    return None if build is None else build(op)


def pointwise_formula(name: str, op: OpOverload) -> Callable[..., int]:
    """The formula of overload ``op`` of pointwise op ``name``: per-element cost x numel."""
    base = POINTWISE_FLOPS[name]
    complex_factor = COMPLEX_ADD if name in COMPLEX_ADDITIVE else COMPLEX_MUL
    extra = extra_term(name, op)
    only_kwargs = getattr(extra, "only_kwargs", False)

    def pointwise_flops(*args: Any, out: Any = None, **kwargs: Any) -> int:
        # Runs for most ops of a model: the common case (a real floating result, a tensor first
        # argument) takes no helper call.
        result = out if isinstance(out, Tensor) else result_tensor(out)
        operand = args[0] if args and isinstance(args[0], Tensor) else first_tensor(args)
        if result is None:
            if operand is None:
                return 0
            result = operand
        if result.dtype.is_floating_point and (operand is None or not operand.dtype.is_complex):
            factor = 1
        else:
            factor = _factor(result, operand, complex_factor)
            if not factor:
                return 0
        if extra is None or (only_kwargs and not kwargs):
            return factor * base * result.numel()
        return factor * (base + extra(args, kwargs)) * result.numel()

    return pointwise_flops


def _factor(result: Tensor, operand: Optional[Tensor], complex_factor: int) -> int:
    # The arithmetic happens in the result's dtype, except for comparisons (bool results) and
    # complex-to-real ops (abs, angle), where the operand says what was computed.
    dtype = result.dtype
    if dtype.is_complex:
        return complex_factor
    if operand is not None:
        operand_dtype = operand.dtype
        if operand_dtype.is_complex:
            return complex_factor
        if dtype.is_floating_point:
            return 1
        return 1 if operand_dtype.is_floating_point else 0
    return 1 if dtype.is_floating_point else 0


def _conj_physical_flops(*args: Any, out: Any = None, **kwargs: Any) -> int:
    # Negating the imaginary parts: 1 FLOP per complex element; a real tensor is only copied.
    t = args[0]
    return t.numel() if t.dtype.is_complex else 0


def _polar_flops(abs_: Tensor, angle: Tensor, *args: Any, out: Any = None, **kwargs: Any) -> int:
    # abs * cos(angle) + i abs * sin(angle): cos, sin, 2 multiplies per complex result element.
    return 4 * out.numel() if abs_.dtype.is_floating_point else 0


def _equal_flops(a: Tensor, b: Tensor, *args: Any, out: Any = None, **kwargs: Any) -> int:
    # One comparison per element when the shapes match (otherwise it returns False at once).
    if a.shape != b.shape:
        return 0
    return _factor(a, b, COMPLEX_ADD) * a.numel()


def _factory(name: str) -> Callable[[OpOverload], Callable[..., int]]:
    return lambda op: pointwise_formula(name, op)


FAMILY: dict[str, Callable[[OpOverload], Any]] = {name: _factory(name) for name in POINTWISE_FLOPS}
FAMILY["conj_physical"] = lambda op: _conj_physical_flops
FAMILY["_conj_physical"] = lambda op: _conj_physical_flops
FAMILY["polar"] = lambda op: _polar_flops
FAMILY["equal"] = lambda op: _equal_flops

register_family(FAMILY)

# These two have a CPU kernel and a CompositeImplicit one: without a rule of their own the
# counter would run the decomposition instead of the kernel (different rounding).
for _op in (aten.silu_backward.default, aten.mish_backward.default):
    register_formula(_op)(pointwise_formula(base_name(_op), _op))
