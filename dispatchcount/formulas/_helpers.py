"""Helpers for the per-family formulas: dtypes, results, argument readers, name-based resolvers,
and the multiply-add counts that both conventions share (convolution, attention).

Formulas run for every op call, so everything here is cheap: shapes, numel and dtypes only,
never tensor data (arguments may be meta or fake tensors).
"""

from __future__ import annotations

from math import prod
from typing import Any, Callable, Optional, Sequence

import torch
from torch._ops import OpOverload
from torch._subclasses.fake_tensor import FakeTensor
from torch._subclasses.functional_tensor import FunctionalTensor

from dispatchcount.formula_result import size_hint
from dispatchcount.registry import Cost, register_resolver

__all__ = [
    "COMPLEX_ADD",
    "COMPLEX_MUL",
    "Tensor",
    "add_factor",
    "arg_reader",
    "argument",
    "attention_backward_macs",
    "attention_macs",
    "base_name",
    "bind",
    "conv_macs",
    "dtype_factor",
    "fixed",
    "macs_to_flops",
    "matmul_cost",
    "mul_factor",
    "prod",
    "first_tensor",
    "first_tensor_list",
    "grouped_mm_macs",
    "has_arg",
    "has_data",
    "out_argument_names",
    "register_family",
    "without_out_arguments",
    "result_tensor",
    "schema_arguments",
    "size_hint",
]

Tensor = torch.Tensor

# A complex add is 2 real adds; a complex multiply is 4 real multiplies and 2 adds, a complex
# multiply-add 8 real FLOPs against 2 for a real one. Additive ops cost COMPLEX_ADD times their
# real count on complex elements, everything else (products, functions) COMPLEX_MUL times.
COMPLEX_ADD = 2
COMPLEX_MUL = 4

ArgReader = Callable[[tuple, dict], Any]


def macs_to_flops(macs: int, dtype: torch.dtype) -> int:
    """FLOPs of ``macs`` multiply-adds in ``dtype``.

    A real multiply-add is 2 FLOPs (FlopCounterMode's convention). A complex multiply-add is
    8 real FLOPs: (a+bi)(c+di) takes 4 multiplies and 2 adds, and accumulating it 2 more adds.
    Integer and bool dtypes are not floating point: 0.
    """
    if dtype.is_complex:
        return 8 * macs
    if dtype.is_floating_point:
        return 2 * macs
    return 0


_F32 = torch.float32
_cublas_tf32 = torch._C._get_cublas_allow_tf32
cudnn_tf32 = torch._C._get_cudnn_allow_tf32


def matmul_cost(flops: int, operand: Tensor, out: Any = None, tf32_allowed: Callable[[], bool] = _cublas_tf32) -> Any:
    """``flops`` of a product of ``operand``-typed matrices, labelled with the dtype they are
    multiplied in when it is not the result's (docs/conventions.md, "FLOPs by dtype"):
    ``"tf32"`` for float32 operands on CUDA while ``tf32_allowed()`` (cuBLAS's flag, or
    ``cudnn_tf32`` for convolutions), the operands' dtype when the result has another one
    (``mm`` with ``out_dtype``). Otherwise the plain int, so the hook keys it by the result."""
    dtype = operand.dtype
    if dtype is _F32:
        if operand.is_cuda and tf32_allowed():
            return Cost(flops, "tf32")
    elif isinstance(out, Tensor) and out.dtype is not dtype:
        return Cost(flops, dtype)
    return flops


def dtype_factor(complex_factor: int, *tensors: Optional[Tensor]) -> int:
    """0 when no tensor is floating point, ``complex_factor`` when one is complex, else 1."""
    factor = 0
    for t in tensors:
        if t is None:
            continue
        dtype = t.dtype
        if dtype.is_complex:
            return complex_factor
        if dtype.is_floating_point:
            factor = 1
    return factor


def mul_factor(*tensors: Optional[Tensor]) -> int:
    """The dtype factor of a product or function: 0 for integers, COMPLEX_MUL for complex."""
    return dtype_factor(COMPLEX_MUL, *tensors)


def add_factor(*tensors: Optional[Tensor]) -> int:
    """The dtype factor of an addition: 0 for integers, COMPLEX_ADD for complex."""
    return dtype_factor(COMPLEX_ADD, *tensors)


def result_tensor(out: Any) -> Optional[Tensor]:
    """The op's (first) result tensor; None for ops that return nothing."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for o in out:
            if isinstance(o, Tensor):
                return o
    return None


def has_data(t: Tensor) -> bool:
    """Whether ``t`` holds values a formula may read (not meta, fake or functional)."""
    return t.device.type != "meta" and not isinstance(t, (FakeTensor, FunctionalTensor))


def first_tensor(args: tuple) -> Optional[Tensor]:
    """The first tensor argument (looking into lists), or None."""
    for a in args:
        if isinstance(a, Tensor):
            return a
        if isinstance(a, (list, tuple)):
            for t in a:
                if isinstance(t, Tensor):
                    return t
    return None


def first_tensor_list(args: tuple) -> list:
    """The first list-of-tensors argument (``_foreach_*`` ops), or []."""
    for a in args:
        if isinstance(a, (list, tuple)) and a and isinstance(a[0], Tensor):
            return a
    return []


def argument(args: Sequence[Any], kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    """Argument ``name`` at position ``index``: positional, keyword, or ``default``."""
    if index < len(args):
        return args[index]
    return kwargs.get(name, default)


def bind(args: Sequence[Any], kwargs: dict, names: Sequence[str], defaults: Optional[dict] = None) -> list:
    """The values of the arguments ``names``, in order (see :func:`argument`)."""
    defaults = defaults or {}
    return [argument(args, kwargs, i, name, defaults.get(name)) for i, name in enumerate(names)]


def arg_reader(op: OpOverload, name: str, default: Any = None) -> ArgReader:
    """A reader ``read(args, kwargs)`` of argument ``name`` of ``op`` as dispatched.

    Built once per overload at resolution time (it inspects the schema), so that the formula
    itself does one index or dict lookup. Absent arguments read as ``default``.
    """
    for index, argument in enumerate(op._schema.arguments):
        if argument.name != name:
            continue
        if argument.kwarg_only:
            return lambda args, kwargs: kwargs.get(name, default)

        def read(args: tuple, kwargs: dict) -> Any:
            if len(args) > index:
                return args[index]
            return kwargs.get(name, default)

        return read
    return lambda args, kwargs: default


def schema_arguments(op: OpOverload, args: tuple, kwargs: dict) -> list:
    """Every schema argument of ``op`` in order, defaults filled in (as a JIT node lists its inputs)."""
    values = []
    for i, argument_ in enumerate(op._schema.arguments):
        if i < len(args) and not argument_.kwarg_only:
            values.append(args[i])
        elif argument_.name in kwargs:
            values.append(kwargs[argument_.name])
        elif argument_.has_default_value():
            values.append(argument_.default_value)
        else:
            values.append(None)
    return values


def has_arg(op: OpOverload, name: str) -> bool:
    return any(a.name == name for a in op._schema.arguments)


def base_name(op: OpOverload) -> str:
    """The op's name without namespace and without the trailing ``_`` of in-place variants."""
    name = op._schema.name.split("::", 1)[-1]
    if name.endswith("_") and not name.endswith("__"):
        name = name[:-1]
    return name


RuleFactory = Callable[[OpOverload], Any]


def fixed(formula: Callable[..., int]) -> RuleFactory:
    """A family-table entry whose formula is the same for every overload of the op."""
    return lambda op: formula


def register_family(table: dict[str, RuleFactory], convention: str = "flop") -> None:
    """Resolve ops by base name: ``table[base_name(op)](op)`` builds the op's rule.

    One entry covers the functional, in-place (``abs_``) and ``out=`` overloads of an op; the
    factory may inspect the overload's schema to build a cheap formula.
    """

    def resolve_by_name(op: OpOverload) -> Any:
        if op.namespace != "aten":
            return None
        factory = table.get(base_name(op))
        return None if factory is None else without_out_arguments(op, factory(op))

    module = next(iter(table.values())).__module__ if table else __name__
    register_resolver(convention, resolve_by_name, family=f"the family table of {module}")


def out_argument_names(op: OpOverload) -> tuple[str, ...]:
    """Names of the keyword-only tensors an ``out=`` overload writes (``out``, ``values``, ...)."""
    return tuple(
        a.name
        for a in op._schema.arguments
        if a.kwarg_only and a.alias_info is not None and a.alias_info.is_write
    )


def without_out_arguments(op: OpOverload, rule: Any) -> Any:
    """``rule`` for ``op``; for out= overloads, a wrapper that drops the written tensors from the
    kwargs (they are the result, which the formula gets as ``out``), so that their names
    (``a``, ``values``, ``output`` ...) never collide with a formula's own parameters."""
    names = out_argument_names(op)
    if not names or not callable(rule):
        return rule

    def formula_without_out_arguments(*args: Any, out: Any = None, **kwargs: Any) -> int:
        for name in names:
            kwargs.pop(name, None)
        return rule(*args, out=out, **kwargs)

    formula_without_out_arguments.__wrapped__ = rule  # type: ignore[attr-defined]
    return formula_without_out_arguments


# -- multiply-adds shared by both conventions ------------------------------------------------


def conv_macs(x_shape: Sequence[int], w_shape: Sequence[int], out_shape: Sequence[int], transposed: bool) -> int:
    """Multiply-adds of one convolution: ``batch * prod(spatial) * prod(weight.shape)``.

    ``spatial`` is the output's spatial size for a convolution and the input's for a
    transposed one (each input point is scattered through the kernel); ``weight.shape``
    already divides channels by ``groups``. Bias is not counted (FlopCounterMode, fvcore).
    """
    spatial = x_shape[2:] if transposed else out_shape[2:]
    return x_shape[0] * prod(spatial) * prod(w_shape)


def grouped_mm_macs(a: Sequence[int], b: Sequence[int], out: Sequence[int]) -> int:
    """Multiply-adds of ``_grouped_mm(a, b, offs)`` (MoE experts): ``out.numel() * K`` for every
    layout but 2-D x 2-D with offsets, where the groups split K (the weight gradient of a
    2-D x 3-D product): out (G, M, N) then sums M N K_total products."""
    k = a[-1]
    if len(a) == 2 and len(b) == 2 and len(out) == 3:
        return prod(out[1:]) * k
    return prod(out) * k


def attention_macs(q: Sequence[int], k: Sequence[int], v: Sequence[int]) -> int:
    """Multiply-adds of ``softmax(Q K^T) V`` for q (..., h_q, s_q, d), k (..., h_kv, s_k, d),
    v (..., h_kv, s_k, d_v): ``Q K^T`` and ``P V`` per query head (grouped-query heads broadcast)."""
    return prod(q[:-1]) * k[-2] * (q[-1] + v[-1])


def attention_backward_macs(q: Sequence[int], k: Sequence[int], v: Sequence[int]) -> int:
    """Backward multiply-adds: ``Q K^T`` recomputed, then dP and dV (d_v each), dQ and dK (d each)."""
    return prod(q[:-1]) * k[-2] * (3 * q[-1] + 2 * v[-1])
