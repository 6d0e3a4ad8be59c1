"""Every aten overload has a rule: a formula, an explicit zero, or (CompositeImplicit) decomposition.

The walk covers every ``aten::`` operator the dispatcher knows, i.e. every overload in
``torch.ops.aten`` that can reach a TorchDispatchMode. ``torch.ops.aten`` also lists
TorchScript-only overloads on Python scalars and lists (``aten.add.int``, ``aten.len.t``);
they are not dispatcher ops, never reach a dispatch mode, and are counted apart.

Print the figures with ``python tests/test_coverage.py`` (or ``pytest -s``).
"""

from __future__ import annotations

import importlib
from collections import Counter

import pytest
import torch

import dispatchcount.formulas  # noqa: F401  (registers every rule)
from dispatchcount.formulas import zero
from dispatchcount.formulas._helpers import base_name
from dispatchcount.registry import DECOMPOSE, UNSUPPORTED, ZERO, resolve

FAMILY_MODULES = [
    "pointwise", "reduction", "norm", "pooling", "loss", "indexing", "sorting", "linalg", "fft",
    "optim", "rnn", "products", "sparse", "quantization",
]
# Kernels that would run instead of a CompositeImplicit decomposition.
BACKEND_KEYS = ["CPU", "CUDA", "XPU", "MPS", "HIP", "CompositeExplicitAutograd"]
# Reviewed exceptions: CompositeImplicit ops whose only other kernel is for Apple's MPS. They stay
# decomposed, so that counts under torch.inference_mode() (where composite ops reach the mode
# whole) carry the same operator names as in grad mode on CPU and CUDA.
MPS_ONLY_KERNELS = {"aten.linear.default", "aten.max_pool2d.default"}


def aten_overloads() -> list:
    """Every ``aten::`` dispatcher operator, as OpOverloads."""
    ops = []
    for qualified in sorted(torch._C._dispatch_get_all_op_names()):
        if not qualified.startswith("aten::"):
            continue
        name, _, overload = qualified[len("aten::"):].partition(".")
        ops.append(getattr(getattr(torch.ops.aten, name), overload or "default"))
    return ops


def script_only_overloads() -> list[str]:
    """Overloads listed in torch.ops.aten that are not dispatcher ops (TorchScript builtins)."""
    dispatcher = set(torch._C._dispatch_get_all_op_names())
    names = []
    for attr in dir(torch.ops.aten):
        packet = getattr(torch.ops.aten, attr, None)
        if isinstance(packet, torch._ops.OpOverloadPacket):
            for overload in packet.overloads():
                op = getattr(packet, overload)
                if op.name() not in dispatcher:
                    names.append(str(op))
    return names


def _kind(rule) -> str:
    if rule is ZERO:
        return "zero"
    if rule is DECOMPOSE:
        return "decompose"
    if rule is UNSUPPORTED:
        return "unsupported"
    return "formula"


def coverage() -> tuple[Counter, list[str]]:
    kinds: Counter = Counter()
    missing = []
    for op in aten_overloads():
        kind = _kind(resolve(op, "flop"))
        kinds[kind] += 1
        if kind == "unsupported":
            missing.append(str(op))
    return kinds, missing


def report() -> str:
    kinds, missing = coverage()
    total = sum(kinds.values())
    return (
        f"aten dispatcher overloads: {total}; formula {kinds['formula']}, "
        f"explicit zero {kinds['zero']}, decompose (CompositeImplicitAutograd) "
        f"{kinds['decompose']}, no rule {kinds['unsupported']}; "
        f"TorchScript-only overloads in torch.ops.aten (never dispatched): {len(script_only_overloads())}"
    )


def test_every_aten_overload_resolves_to_a_rule() -> None:
    kinds, missing = coverage()
    print("\n" + report())
    assert sum(kinds.values()) > 2000  # the walk really saw the operator set
    assert not missing, f"{len(missing)} aten overloads have no FLOP rule: {', '.join(missing)}"


def _declared_with_backend_kernels() -> set[str]:
    """CompositeImplicit ops that native_functions.yaml also gives a CPU/CUDA/MPS/XPU/HIP
    kernel: kernels of other builds, which this build's dispatcher cannot show."""
    import yaml  # PyYAML: a dependency of fvcore, in the test extras
    from torchgen import packaged  # shipped with torch

    path = f"{packaged.__path__[0]}/ATen/native/native_functions.yaml"
    names = set()
    with open(path) as f:
        entries = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    for entry in entries:
        keys = {k.strip() for key in (entry.get("dispatch") or {}) for k in key.split(",")}
        if "CompositeImplicitAutograd" in keys and keys & {"CPU", "CUDA", "MPS", "XPU", "HIP"}:
            name = entry["func"].split("(", 1)[0]
            names.add(f"aten.{name}" if "." in name else f"aten.{name}.default")
    return names


def test_decomposition_only_where_no_kernel_would_run_instead() -> None:
    # A CompositeImplicit op that also has a backend kernel runs that kernel in a plain run;
    # decomposing it under the counter would change the numbers. Such ops need their own rule.
    keys = [getattr(torch._C.DispatchKey, k) for k in BACKEND_KEYS if hasattr(torch._C.DispatchKey, k)]
    declared = _declared_with_backend_kernels()
    assert "aten._fused_rms_norm.default" in declared  # the yaml walk works
    offenders = [
        str(op)
        for op in aten_overloads()
        if resolve(op, "flop") is DECOMPOSE
        and str(op) not in MPS_ONLY_KERNELS
        and (
            str(op) in declared
            or any(torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), k) for k in keys)
        )
    ]
    assert not offenders, f"decomposed although a kernel exists: {offenders}"


@pytest.mark.parametrize("tag", [torch.Tag.pointwise, torch.Tag.nondeterministic_seeded])
def test_tagged_families_are_formulas_or_reviewed_zeros(tag) -> None:
    # Families found by tag: each op is counted by a formula, or is zero because zero.py lists
    # it by name (never a zero by accident of another rule).
    reviewed = zero.zero_names()
    bad = []
    for op in aten_overloads():
        if tag not in op.tags:
            continue
        rule = resolve(op, "flop")
        if rule is UNSUPPORTED or (rule is ZERO and base_name(op) not in reviewed):
            bad.append(str(op))
    assert not bad, f"{tag}: {bad}"


def test_script_only_overloads_are_not_dispatcher_ops() -> None:
    names = script_only_overloads()
    assert "aten.add.int" in names and "aten.add.Tensor" not in names


@pytest.mark.parametrize("module", FAMILY_MODULES)
def test_family_tables_name_real_ops(module: str) -> None:
    family = importlib.import_module(f"dispatchcount.formulas.{module}").FAMILY
    missing = [name for name in family if not hasattr(torch.ops.aten, name)]
    assert not missing, f"{module}: no aten op named {missing}"


# Ops that zero.py reviews and that PyTorch releases older than 2.13 lack (the GPU machine runs 2.11).
_NEWER_THAN_2_11 = {"_philox_key_split", "_philox_key_fold_in", "_philox_uniform", "_philox_normal", "_foreach_clone"}


def test_zero_lists_name_real_ops_and_no_op_is_both_zero_and_counted() -> None:
    names = zero.zero_names()
    missing = [n for n in names if not (hasattr(torch.ops.aten, n) or hasattr(torch.ops.aten, n + "_"))]
    if torch.__version__ < "2.13":
        missing = [n for n in missing if n not in _NEWER_THAN_2_11]
    assert not missing, f"zero.py names unknown ops: {missing}"
    counted = set()
    for module in FAMILY_MODULES:
        counted |= set(importlib.import_module(f"dispatchcount.formulas.{module}").FAMILY)
    assert not names & counted, f"listed as zero and given a formula: {sorted(names & counted)}"


if __name__ == "__main__":
    print(report())
    _, missing = coverage()
    if missing:
        print("no rule:", ", ".join(missing))
