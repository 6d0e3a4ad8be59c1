"""PyTorch's OpInfo database under FlopMode: same outputs, nothing raised, nothing unsupported.

For every op in ``torch.testing._internal.common_methods_invocations.op_db`` that supports
float32 on CPU: two samples of the functional variant, one under ``torch.inference_mode()``
(where CompositeImplicit ops reach the mode whole and are decomposed by it), one of the in-place
variant, one with ``out=``, and one forward + backward (gradients compared too). Each run is reseeded, so random
ops draw the same numbers in both runs. The in-place, ``out=`` and forward + backward runs also
record bytes and time (``metrics=METERED``): their rules must never fail, nor change an output.

"Bit-identical" allows these documented exceptions, each checked rather than assumed:
- ops that return uninitialized memory (``UNINITIALIZED``), and any op whose two plain runs
  already differ, are compared on shapes and dtypes only;
- an op whose output changes under *any* TorchDispatchMode (ATen picks another algorithm when
  a dispatch mode is active, e.g. ``linalg.svdvals`` computes singular vectors) must match a
  run under a do-nothing TorchDispatchMode bit for bit.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any, Callable

import pytest
import torch
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils._python_dispatch import TorchDispatchMode

from dispatchcount import FlopMode

common_methods_invocations = pytest.importorskip(
    "torch.testing._internal.common_methods_invocations",
    reason="PyTorch's OpInfo database needs the test extras (expecttest)",
)
OP_DB = [op for op in common_methods_invocations.op_db if torch.float32 in op.supported_dtypes("cpu")]

FUNCTION_SAMPLES = 2
METERED = ("flops", "bytes", "time")

# OpInfos whose outputs are uninitialized memory: their bits are whatever the allocator had.
UNINITIALIZED = {"empty", "empty_like", "empty_strided", "empty_permuted", "new_empty", "new_empty_strided"}


class _PassThrough(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def _clone(tree: Any) -> Any:
    def clone(t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return t
        return t.detach().clone().requires_grad_(t.requires_grad)

    return tree_map(clone, tree)


def _identical(a: Any, b: Any) -> bool:
    """Same structure, shapes, dtypes and bits (NaN equal to NaN)."""
    leaves_a, spec_a = tree_flatten(a)
    leaves_b, spec_b = tree_flatten(b)
    if spec_a != spec_b:
        return False
    for x, y in zip(leaves_a, leaves_b):
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
                return False
            if x.shape != y.shape or x.dtype != y.dtype or x.layout != y.layout:
                return False
            x, y = x.detach(), y.detach()
            if x.layout != torch.strided:
                x, y = x.to_dense(), y.to_dense()
            if x.is_complex():
                x = torch.view_as_real(x.resolve_conj().resolve_neg())
                y = torch.view_as_real(y.resolve_conj().resolve_neg())
            if x.dtype.is_floating_point:
                if not bool(((x == y) | (x.isnan() & y.isnan())).all()):
                    return False
            elif not torch.equal(x, y):
                return False
        elif x != y and not (x != x and y != y):
            return False
    return True


def _same_metadata(a: Any, b: Any) -> bool:
    leaves_a, spec_a = tree_flatten(a)
    leaves_b, spec_b = tree_flatten(b)
    return spec_a == spec_b and all(
        (x.shape, x.dtype) == (y.shape, y.dtype) if isinstance(x, torch.Tensor) else True
        for x, y in zip(leaves_a, leaves_b)
    )


def _run(fn: Callable[..., Any], args: tuple, kwargs: dict, backward: bool, inference: bool = False) -> Any:
    args, kwargs = _clone(args), _clone(kwargs)
    torch.manual_seed(0)
    if inference:
        with torch.inference_mode():
            return fn(*args, **kwargs)
    out = fn(*args, **kwargs)
    if not backward:
        return out
    outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) and t.grad_fn is not None]
    inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor) and t.requires_grad]
    if not outputs or not inputs:
        return out, None
    loss = sum((t.real if t.is_complex() else t).sum() for t in outputs)
    return out, torch.autograd.grad(loss, inputs, allow_unused=True)


def _check(fn: Callable[..., Any], args: tuple, kwargs: dict, what: str, problems: list,
           backward: bool = False, uninitialized: bool = False, inference: bool = False,
           metrics: tuple = ("flops",)) -> None:
    try:
        reference = _run(fn, args, kwargs, backward, inference)
    except Exception:
        return  # the op itself rejects this sample: nothing to compare
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with FlopMode(metrics=metrics) as mode:
                counted = _run(fn, args, kwargs, backward, inference)
        except Exception as error:
            problems.append(f"{what}: raised under FlopMode but not without it: {error!r}")
            return
    if mode.unsupported_ops():
        problems.append(f"{what}: unsupported {mode.unsupported_ops()} {mode.formula_errors()}")
    if _identical(reference, counted):
        return
    if uninitialized or not _identical(reference, _run(fn, args, kwargs, backward, inference)):
        if not _same_metadata(reference, counted):
            problems.append(f"{what}: nondeterministic op, and shapes/dtypes differ under FlopMode")
        return
    with _PassThrough():
        under_any_mode = _run(fn, args, kwargs, backward, inference)
    if _identical(reference, under_any_mode) or not _identical(under_any_mode, counted):
        problems.append(f"{what}: output differs under FlopMode")


def _samples(op: Any, requires_grad: bool, n: int) -> list:
    # islice: the first n samples without making the rest (some generators make thousands, and
    # reseeding for each one formats a stack trace; that was most of this file's time)
    try:
        return list(itertools.islice(op.sample_inputs("cpu", torch.float32, requires_grad=requires_grad), n))
    except Exception:  # an OpInfo whose sample generator fails on this build
        return []


@pytest.mark.parametrize("op", OP_DB, ids=lambda op: f"{op.name}.{op.variant_test_name}".rstrip("."))
def test_opinfo_sample_is_unchanged_and_counted(op: Any) -> None:
    problems: list = []
    uninitialized = op.name in UNINITIALIZED
    samples = _samples(op, False, FUNCTION_SAMPLES)
    for i, sample in enumerate(samples):
        args = (sample.input, *sample.args)
        _check(op.op, args, sample.kwargs, f"functional sample {i}", problems, uninitialized=uninitialized)
    if samples:
        s = samples[0]
        _check(op.op, (s.input, *s.args), s.kwargs, "inference_mode", problems,
               uninitialized=uninitialized, inference=True)
    if samples and op.inplace_variant is not None:
        s = samples[0]
        _check(op.inplace_variant, (s.input, *s.args), s.kwargs, "in-place", problems,
               uninitialized=uninitialized, metrics=METERED)
    if samples and op.supports_out:
        s = samples[0]
        try:
            out = tree_map(
                lambda t: torch.empty_like(t) if isinstance(t, torch.Tensor) else t,
                op.op(*_clone((s.input, *s.args)), **_clone(s.kwargs)),
            )
        except Exception:
            out = None
        if out is not None:
            _check(lambda *a, **k: op.op(*a, out=_clone(out), **k), (s.input, *s.args), s.kwargs,
                   "out=", problems, uninitialized=uninitialized, metrics=METERED)
    if op.supports_autograd and torch.float32 in op.supported_backward_dtypes("cpu"):
        for s in _samples(op, True, 1):
            _check(op.op, (s.input, *s.args), s.kwargs, "forward+backward", problems, backward=True,
                   uninitialized=uninitialized, metrics=METERED)
    assert not problems, f"{op.name} ({op.variant_test_name}): " + "; ".join(problems)
